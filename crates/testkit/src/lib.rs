//! Helpers for Canopy's integration tests: overlays of real nodes on
//! 127.0.0.1 ([`overlay`]) and HTTP sources that misbehave on purpose
//! ([`fake_source`]). Test code: it panics on setup failures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

pub mod fake_source;
pub mod overlay;
