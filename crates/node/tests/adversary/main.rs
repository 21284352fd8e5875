//! Adversarial tests on real sockets: a scripted hostile peer reproduces
//! each attack on a node listening on 127.0.0.1 and the test asserts it
//! fails, with the figure that proves it. One module per attack.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod squat;
