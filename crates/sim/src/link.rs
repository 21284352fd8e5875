//! One direction of a simulated link: a bandwidth and a bounded send
//! queue, so a burst costs time and, past the queue, drops.
//!
//! A message offered to a [`Pipe`] waits for what is queued ahead of it,
//! then takes `bytes / bandwidth` to go out, then the link's latency to
//! arrive. The queue holds what has not gone out yet; its bound is the
//! real driver's (`SEND_QUEUE_BYTES` in `crates/node/src/send_queue.rs`,
//! 256 KiB). As there, what a full queue loses depends on the message's
//! priority ([`droppable`]): queries and pings, pongs and hits are lost,
//! file lists, filter patches, handshakes and Byes always go (the real
//! queue evicts lower lanes to make room for them, and the writer sends
//! higher lanes first; the simulator keeps one FIFO and does not model
//! eviction or reordering, so a hit behind queued queries waits for them
//! here where the real writer would send it first: slower, not faster).
//!
//! Times are in microseconds inside the pipe so that small messages on a
//! fast link still add up.

use canopy_proto::Message;

/// Bytes of encoded frames a connection may have queued (the real
/// driver's bound).
pub const SEND_QUEUE_BYTES: u64 = 256 * 1024;

/// What a direction of a link can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpeed {
    /// Bytes a second.
    pub bytes_per_second: u64,
    /// Most bytes waiting to go out.
    pub queue_bytes: u64,
}

/// One direction's state: when the last queued byte will have gone out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pipe {
    busy_until_us: u64,
}

/// What became of a message offered to a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Its last byte leaves at this millisecond (add the latency).
    Sent(u64),
    /// The queue was full and the message may be lost: it is.
    Dropped,
}

impl Pipe {
    /// Bytes queued and not yet sent at `now_ms`.
    pub fn backlog(&self, now_ms: u64, speed: LinkSpeed) -> u64 {
        let waiting_us = self.busy_until_us.saturating_sub(now_ms * 1000);
        waiting_us.saturating_mul(speed.bytes_per_second) / 1_000_000
    }

    /// Offers `bytes` at `now_ms`; a full queue drops it if `may_drop`.
    pub fn offer(&mut self, now_ms: u64, bytes: u64, may_drop: bool, speed: LinkSpeed) -> Offered {
        if may_drop && self.backlog(now_ms, speed) + bytes > speed.queue_bytes {
            return Offered::Dropped;
        }
        let start = self.busy_until_us.max(now_ms * 1000);
        let send_us = (bytes.saturating_mul(1_000_000)).div_ceil(speed.bytes_per_second.max(1));
        self.busy_until_us = start + send_us;
        Offered::Sent(self.busy_until_us.div_ceil(1000))
    }
}

/// Whether a full queue may lose `message` (the real queue's Low, Pong and
/// Hit lanes: pings, queries, pongs, hits, statuses, pushes).
pub fn droppable(message: &Message) -> bool {
    matches!(
        message,
        Message::Ping { .. }
            | Message::Pong { .. }
            | Message::Query(_)
            | Message::QueryHit(_)
            | Message::QueryStatus { .. }
            | Message::Push(_)
    )
}

/// The bytes `message` takes on the wire: its encoded envelope and the
/// 4-byte length before it.
pub fn wire_bytes(message: &Message) -> u64 {
    use prost::Message as _;
    let envelope = canopy_proto::wire::Envelope::from(message);
    envelope.encoded_len() as u64 + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEED: LinkSpeed = LinkSpeed {
        bytes_per_second: 10_000,
        queue_bytes: 5_000,
    };

    #[test]
    fn a_message_on_an_idle_link_takes_its_transmission_time() {
        let mut pipe = Pipe::default();
        // 1,000 bytes at 10,000 B/s: 100 ms.
        assert_eq!(pipe.offer(50, 1_000, true, SPEED), Offered::Sent(150));
        assert_eq!(pipe.backlog(100, SPEED), 500);
        assert_eq!(pipe.backlog(150, SPEED), 0);
        // Idle again later: no memory of the old burst.
        assert_eq!(pipe.offer(1_000, 1_000, true, SPEED), Offered::Sent(1_100));
    }

    #[test]
    fn a_burst_beyond_the_bandwidth_queues_and_beyond_the_queue_drops() {
        let mut pipe = Pipe::default();
        let mut sent = Vec::new();
        let mut dropped = 0;
        // Twenty 500-byte messages at once: 10,000 bytes, twice the queue.
        for _ in 0..20 {
            match pipe.offer(0, 500, true, SPEED) {
                Offered::Sent(at) => sent.push(at),
                Offered::Dropped => dropped += 1,
            }
        }
        // The queue takes 5,000 bytes: ten messages, each 50 ms after the last.
        assert_eq!(sent, (1..=10).map(|i| i * 50).collect::<Vec<_>>());
        assert_eq!(dropped, 10);
        // What may not be lost still goes, behind the queue.
        assert_eq!(pipe.offer(0, 500, false, SPEED), Offered::Sent(550));
        // Once the queue drains, droppable messages go again.
        assert_eq!(pipe.offer(600, 500, true, SPEED), Offered::Sent(650));
    }

    #[test]
    fn priorities_follow_the_real_send_queue() {
        assert!(droppable(&Message::Ping { nonce: 1 }));
        assert!(!droppable(&Message::FileList {
            replace: true,
            files: Vec::new()
        }));
        assert!(!droppable(&Message::Bye {
            reason: canopy_proto::ByeReason::Shutdown,
            detail: String::new(),
            try_supernodes: Vec::new(),
        }));
        assert!(wire_bytes(&Message::Ping { nonce: 1 }) > 4);
    }
}
