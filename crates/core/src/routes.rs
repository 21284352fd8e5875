//! Reverse-path route tables: for each query this node handled, the
//! connection it came from, so hits can travel back the same way; and for
//! each source whose hit it passed on, the connection the hit came from, so
//! a push can travel to the source.
//!
//! Every query inserts a route, so the table is built for that: routes go
//! into the current generation, which becomes the previous one when it
//! holds half the capacity or has run for a route's lifetime; the old
//! previous one is then dropped whole (by then its routes have expired, or
//! the table is full and they are the oldest). A route is found until it
//! expires unless capacity pushed it out; memory stays within the capacity,
//! and no route costs bookkeeping beyond its hash entry. The maps use
//! hashbrown's default hasher, seeded at random per process.

use std::hash::Hash;
use std::time::Duration;

use hashbrown::HashMap;

use crate::{ConnId, Time};

#[derive(Debug, Clone, Copy)]
struct Route {
    back_to: ConnId,
    expires: Time,
}

/// Maps keys (query ids, source node ids) to the connection that leads
/// back towards them.
#[derive(Debug)]
pub struct RouteTable<K: Hash + Eq> {
    current: HashMap<K, Route>,
    previous: HashMap<K, Route>,
    /// Routes per generation: half the capacity.
    generation: usize,
    lifetime: Duration,
    /// When the current generation began.
    started: Option<Time>,
}

impl<K: Hash + Eq> RouteTable<K> {
    /// At most `capacity` routes (at least two), each kept for `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        Self {
            current: HashMap::default(),
            previous: HashMap::default(),
            generation: (capacity / 2).max(1),
            lifetime,
            started: None,
        }
    }

    fn rotate(&mut self, now: Time) {
        self.previous = std::mem::take(&mut self.current);
        self.started = Some(now);
    }

    /// Remembers that messages for `id` go back to `back_to`.
    pub fn insert(&mut self, id: K, back_to: ConnId, now: Time) {
        self.started.get_or_insert(now);
        let expires = now + self.lifetime;
        // A route for the same key in the previous generation is shadowed
        // (lookups try the current one first) and goes with it.
        self.current.insert(id, Route { back_to, expires });
        if self.current.len() >= self.generation {
            self.rotate(now);
        }
    }

    /// Where messages for `id` go, if the route is known and has not expired.
    pub fn lookup(&self, id: &K, now: Time) -> Option<ConnId> {
        self.current
            .get(id)
            .or_else(|| self.previous.get(id))
            .filter(|route| route.expires > now)
            .map(|route| route.back_to)
    }

    /// Drops the previous generation once everything in it has expired:
    /// call it every second or so.
    pub fn expire(&mut self, now: Time) {
        if self
            .started
            .is_some_and(|started| now >= started + self.lifetime)
        {
            // Everything in the previous generation is older than the
            // current one's start, a lifetime ago.
            self.rotate(now);
        }
    }

    /// How many routes are held (expired ones included, until dropped).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when no route is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_proto::MessageId;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn routes_expire() {
        let mut table = RouteTable::new(100, Duration::from_secs(10));
        table.insert(id(1), ConnId(1), Time(0));
        assert_eq!(table.lookup(&id(1), Time(9_999)), Some(ConnId(1)));
        assert_eq!(table.lookup(&id(1), Time(10_000)), None);
        table.insert(id(2), ConnId(2), Time(5_000));
        table.expire(Time(10_000)); // a generation ago: moves, not dropped
        assert_eq!(table.lookup(&id(2), Time(14_999)), Some(ConnId(2)));
        table.expire(Time(20_000));
        assert!(table.is_empty(), "both generations have expired");
    }

    #[test]
    fn the_table_is_capped_and_keeps_the_latest_half() {
        let mut table = RouteTable::new(10, Duration::from_secs(60));
        for n in 0..100u8 {
            table.insert(id(n), ConnId(u64::from(n)), Time(u64::from(n)));
            assert!(table.len() <= 10);
            for back in n.saturating_sub(4)..=n {
                assert_eq!(
                    table.lookup(&id(back), Time(100)),
                    Some(ConnId(u64::from(back)))
                );
            }
        }
        assert_eq!(table.lookup(&id(0), Time(100)), None, "pushed out");
    }

    #[test]
    fn a_newer_route_replaces_an_older_one() {
        let mut table = RouteTable::new(4, Duration::from_secs(60));
        table.insert(id(1), ConnId(1), Time(0));
        table.insert(id(2), ConnId(2), Time(0)); // rotates: 1 and 2 are previous
        table.insert(id(1), ConnId(9), Time(1));
        assert_eq!(table.lookup(&id(1), Time(2)), Some(ConnId(9)));
    }
}
