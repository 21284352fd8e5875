//! Adversarial tests on real sockets: a scripted hostile peer, bound to
//! its own 127.x address, reproduces an attack on a supernode or a leaf
//! and the test asserts that it fails, with the figure that proves it
//! (connections accepted per address, connections made to a third
//! address, ...). One module per kind of attack.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

#[path = "../common/mod.rs"]
mod common;

mod reflection;
mod slots;
