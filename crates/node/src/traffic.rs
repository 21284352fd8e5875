//! What crosses a node's overlay connections: bytes in and out, and
//! messages dropped because a peer's send queue was full. Shared by every
//! connection of a node; read by the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// A node's traffic counters.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes read from peers.
    pub bytes_in: AtomicU64,
    /// Bytes written to peers.
    pub bytes_out: AtomicU64,
    /// Messages dropped because a peer's send queue was full.
    pub messages_dropped: AtomicU64,
    /// Of those, queries.
    pub queries_dropped: AtomicU64,
}

impl Traffic {
    /// A reading of a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
