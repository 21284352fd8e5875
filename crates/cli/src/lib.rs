//! The library half of the `canopy` command: its settings and how they are
//! read from flags and `--config` files.
//!
//! The binary (`src/main.rs`) holds the commands; what it reads lives here
//! so tests and the fuzz targets (`fuzz/`) can parse configuration text
//! without a binary in between.

pub mod config;
pub mod settings;
