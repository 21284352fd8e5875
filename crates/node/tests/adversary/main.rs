//! Adversarial tests on real sockets: a scripted hostile peer, bound to
//! its own 127.x address where the attack needs one, completes the Noise
//! handshake under a key of its own (`wire.rs`), speaks the wire protocol
//! from proto/ by hand inside it and reproduces an attack on a supernode or
//! a leaf; each test asserts that the attack fails, with the figure that
//! proves it (connections accepted per address, connections made to a
//! third address, queries forwarded, drops counted, bytes indexed, ...).
//! One module per kind of attack.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

#[path = "../common/mod.rs"]
mod common;

mod downloads;
mod eclipse;
mod index_budget;
mod peer_flood;
mod push_routes;
mod reflection;
mod slots;
mod squat;
mod uploads;
mod wire;
