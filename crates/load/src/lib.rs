//! Canopy's load generator: real sockets against a real supernode process.
//!
//! Subcommands (see `canopy-load --help` and `benches/README.md`):
//! - [`leaves`]: many leaves on one supernode: memory per leaf, connect
//!   time, search latency;
//! - [`relay`]: queries a second a supernode takes in and forwards;
//! - [`raw_relay`]: the no-logic reference relay `relay` is compared with;
//! - [`overlay`]: search latency across an overlay under background load.
//!
//! The subcommands print their own results, so printing is allowed here.

#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod fleet;
pub mod frames;
pub mod leaves;
pub mod overlay;
pub mod raw_relay;
pub mod relay;
pub mod search;
pub mod stats;
pub mod workload;
