//! The adversarial suite (issue 9): real nodes on 127.0.0.1 against a
//! scripted hostile peer on real sockets, one module per attack family.
//! Each test reproduces an attack and asserts the figure that shows it
//! failed (connections held, slots held, requests answered).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod downloads;
mod uploads;
