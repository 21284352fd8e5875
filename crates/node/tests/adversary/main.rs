//! Adversarial tests on real sockets: a scripted hostile peer reproduces
//! each attack of issue 9 against real nodes on 127.0.0.1 and the test
//! asserts the figure that shows it failed. One module per attack.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

#[path = "../common/mod.rs"]
mod common;

mod eclipse;
