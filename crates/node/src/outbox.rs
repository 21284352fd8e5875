//! The frames a node task produced for each connection during one batch of
//! events, handed to the connections' send queues together: one lock and
//! one wakeup per connection per batch instead of per frame (a flood sends
//! every query to 32 peers). Frames for one connection keep their order.

use bytes::Bytes;
use canopy_core::ConnId;
use hashbrown::HashMap;

use crate::send_queue::Priority;

/// Frames waiting to be handed over, by connection.
#[derive(Debug, Default)]
pub struct Outbox {
    by_conn: HashMap<ConnId, Vec<(Bytes, Priority)>>,
}

impl Outbox {
    /// Adds `frame` for `conn`, after what it already has.
    pub fn add(&mut self, conn: ConnId, frame: Bytes, priority: Priority) {
        self.by_conn
            .entry(conn)
            .or_insert_with(|| Vec::with_capacity(64))
            .push((frame, priority));
    }

    /// Takes `conn`'s frames, if it has any.
    pub fn take(&mut self, conn: ConnId) -> Option<Vec<(Bytes, Priority)>> {
        self.by_conn.remove(&conn)
    }

    /// Takes everything, connection by connection.
    pub fn drain(&mut self) -> impl Iterator<Item = (ConnId, Vec<(Bytes, Priority)>)> + '_ {
        self.by_conn.drain()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_order_per_connection() {
        let mut outbox = Outbox::default();
        for n in 0..3u8 {
            outbox.add(ConnId(1), Bytes::from(vec![n]), Priority::Low);
            outbox.add(ConnId(2), Bytes::from(vec![10 + n]), Priority::Hit);
        }
        let first: Vec<u8> = outbox
            .take(ConnId(1))
            .unwrap_or_default()
            .iter()
            .map(|(frame, _)| frame[0])
            .collect();
        assert_eq!(first, vec![0, 1, 2]);
        let rest: Vec<(ConnId, usize)> = outbox.drain().map(|(c, f)| (c, f.len())).collect();
        assert_eq!(rest, vec![(ConnId(2), 3)]);
        assert!(outbox.is_empty());
    }
}
