//! Canopy's wire protocol.
//!
//! Three layers, each usable alone:
//! - [`wire`]: the Rust types prost generates from `proto/canopy/v1/*.proto`;
//! - [`codec`]: length-prefixed framing with a hard frame-size limit that is
//!   checked before any buffer grows;
//! - [`secure`]: the Noise handshake and encrypted transport messages that
//!   carry the frame stream, and node ids derived from static keys;
//! - [`domain`]: validated types the rest of Canopy works with. Converting a
//!   wire message into a domain message is where every field a peer sent is
//!   checked; nothing past this crate sees an unchecked value.

pub mod codec;
pub mod domain;
pub mod limits;
pub mod secure;

/// Message types generated from the `.proto` files (package `canopy.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/canopy.v1.rs"));
}

pub use codec::{FrameCodec, FrameError};
pub use domain::*;
