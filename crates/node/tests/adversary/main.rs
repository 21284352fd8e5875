//! Adversarial tests on real sockets: a scripted hostile peer (a raw
//! connection speaking the wire protocol from proto/) attacks a supernode
//! on 127.0.0.1, and each test asserts the attack fails, with the figure
//! that proves it (queries forwarded, drops counted, bytes indexed...).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod index_budget;
mod peer_flood;
