//! The library half of the `canopy` command: its configuration files.
//!
//! The binary (`src/main.rs`) holds the commands; what it reads from a
//! `--config` file lives here so tests and the fuzz targets (`fuzz/`) can
//! parse configuration text without a binary in between.

pub mod config;
