//! The frames a node task produced for each connection during one batch of
//! events, handed to the connections' send queues together: one lock and
//! one wakeup per connection per batch instead of per frame (a flood sends
//! every query to 32 peers). Frames for one connection keep their order.

use bytes::Bytes;
use canopy_core::ConnId;
use hashbrown::HashMap;

use crate::send_queue::Priority;

/// Connections whose vectors may be kept from one batch to the next.
const KEPT_QUEUES: usize = 64;

/// Frames waiting to be handed over, by connection.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Each connection's frames, in order.
    queues: Vec<(ConnId, Vec<(Bytes, Priority)>)>,
    /// Where each connection's frames are in `queues`.
    slots: HashMap<ConnId, usize>,
    /// The last fan-out's connections and their slots: floods in one batch
    /// go to the same peers, so they are looked up once.
    last_fanout: (Vec<ConnId>, Vec<usize>),
}

impl Outbox {
    fn slot(&mut self, conn: ConnId) -> usize {
        let queues = &mut self.queues;
        *self.slots.entry(conn).or_insert_with(|| {
            queues.push((conn, Vec::with_capacity(64)));
            queues.len() - 1
        })
    }

    /// Adds `frame` for `conn`, after what it already has.
    pub fn add(&mut self, conn: ConnId, frame: Bytes, priority: Priority) {
        let slot = self.slot(conn);
        if let Some((_, frames)) = self.queues.get_mut(slot) {
            frames.push((frame, priority));
        }
    }

    /// Adds `frame` for each of `conns`.
    pub fn add_to_all(&mut self, conns: &[ConnId], frame: &Bytes, priority: Priority) {
        if self.last_fanout.0 != conns {
            let slots = conns.iter().map(|conn| self.slot(*conn)).collect();
            self.last_fanout = (conns.to_vec(), slots);
        }
        for slot in &self.last_fanout.1 {
            if let Some((_, frames)) = self.queues.get_mut(*slot) {
                frames.push((frame.clone(), priority));
            }
        }
    }

    /// Takes `conn`'s frames, if it has any.
    pub fn take(&mut self, conn: ConnId) -> Option<Vec<(Bytes, Priority)>> {
        let slot = *self.slots.get(&conn)?;
        self.queues
            .get_mut(slot)
            .map(|(_, frames)| std::mem::take(frames))
    }

    /// Hands each connection's frames to `send`, which empties them. The
    /// vectors (and the fan-out's lookup) are kept for the next batch when
    /// every connection had frames in this one, as in a steady flood;
    /// otherwise they are let go, so idle connections hold nothing here.
    pub fn flush(&mut self, mut send: impl FnMut(ConnId, &mut Vec<(Bytes, Priority)>)) {
        let mut all_busy = true;
        for (conn, frames) in &mut self.queues {
            if frames.is_empty() {
                all_busy = false;
            } else {
                send(*conn, frames);
                frames.clear();
            }
        }
        if !all_busy || self.queues.len() > KEPT_QUEUES {
            self.queues.clear();
            self.slots.clear();
            self.last_fanout = (Vec::new(), Vec::new());
        }
    }

    /// Takes everything, connection by connection.
    #[cfg(test)]
    fn drain(&mut self) -> Vec<(ConnId, Vec<(Bytes, Priority)>)> {
        let mut taken = Vec::new();
        self.flush(|conn, frames| taken.push((conn, std::mem::take(frames))));
        taken
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|(_, frames)| frames.is_empty())
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
        let rest: Vec<(ConnId, usize)> = outbox
            .drain()
            .into_iter()
            .map(|(c, f)| (c, f.len()))
            .collect();
        assert_eq!(rest, vec![(ConnId(2), 3)]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_fanout_reaches_every_connection_once_in_order() {
        let mut outbox = Outbox::default();
        outbox.add(ConnId(3), Bytes::from_static(b"a"), Priority::Hit);
        for frame in [b"q", b"r"] {
            let frame = Bytes::from_static(frame);
            outbox.add_to_all(&[ConnId(3), ConnId(4)], &frame, Priority::Low);
        }
        outbox.add_to_all(&[ConnId(4)], &Bytes::from_static(b"s"), Priority::Low);
        let mut got: Vec<(u64, Vec<u8>)> = outbox
            .drain()
            .into_iter()
            .map(|(c, f)| (c.0, f.iter().map(|(b, _)| b[0]).collect()))
            .collect();
        got.sort();
        assert_eq!(got, vec![(3, b"aqr".to_vec()), (4, b"qrs".to_vec())]);
        assert!(outbox.is_empty());
    }
}
