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
//!
//! A route may carry data (what a hit must match to be passed on along
//! it). Query routes are kept in [`SharedRoutes`]: one such table for the
//! leaves together (each rate-limited on its own) and one per supernode
//! peer, each with its own capacity, so a peer sending fresh ids as fast as
//! it can only ever rotates its own share: everyone else's routes stay.

use std::hash::Hash;
use std::time::Duration;

use hashbrown::HashMap;

use crate::{ConnId, Time};

#[derive(Debug, Clone, Copy)]
struct Route<V> {
    back_to: ConnId,
    expires: Time,
    data: V,
}

/// Maps keys (query ids, source node ids) to the connection that leads
/// back towards them, with `data` kept beside each route.
#[derive(Debug)]
pub struct RouteTable<K: Hash + Eq, V = ()> {
    current: HashMap<K, Route<V>>,
    previous: HashMap<K, Route<V>>,
    /// Routes per generation: half the capacity.
    generation: usize,
    lifetime: Duration,
    /// When the current generation began.
    started: Option<Time>,
}

impl<K: Hash + Eq> RouteTable<K> {
    /// Remembers that messages for `id` go back to `back_to`.
    pub fn insert(&mut self, id: K, back_to: ConnId, now: Time) {
        self.insert_with(id, back_to, (), now);
    }
}

impl<K: Hash + Eq, V> RouteTable<K, V> {
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

    /// Remembers that messages for `id` go back to `back_to`, with `data`.
    pub fn insert_with(&mut self, id: K, back_to: ConnId, data: V, now: Time) {
        self.started.get_or_insert(now);
        let expires = now + self.lifetime;
        // A route for the same key in the previous generation is shadowed
        // (lookups try the current one first) and goes with it.
        self.current.insert(
            id,
            Route {
                back_to,
                expires,
                data,
            },
        );
        if self.current.len() >= self.generation {
            self.rotate(now);
        }
    }

    /// Where messages for `id` go, if the route is known and has not expired.
    pub fn lookup(&self, id: &K, now: Time) -> Option<ConnId> {
        self.get(id, now).map(|(back_to, _)| back_to)
    }

    /// Where messages for `id` go and the route's data, if the route is
    /// known and has not expired.
    pub fn get(&self, id: &K, now: Time) -> Option<(ConnId, &V)> {
        self.current
            .get(id)
            .or_else(|| self.previous.get(id))
            .filter(|route| route.expires > now)
            .map(|route| (route.back_to, &route.data))
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

    /// When [`RouteTable::expire`] next drops a generation.
    pub fn next_expiry(&self) -> Option<Time> {
        self.started.map(|started| started + self.lifetime)
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

/// Whose share of [`SharedRoutes`] a route is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Share {
    /// All leaves together: each is held to its own query rate.
    Leaves,
    /// One supernode peer.
    Peer(ConnId),
}

/// Route tables with a share each: see the module documentation. A lookup
/// tries every share (one for the leaves, one per supernode peer: a few
/// dozen hash probes for a hit, none more for a query).
#[derive(Debug)]
pub struct SharedRoutes<K: Hash + Eq, V> {
    shares: std::collections::BTreeMap<Share, RouteTable<K, V>>,
    leaves_capacity: usize,
    peer_capacity: usize,
    lifetime: Duration,
}

impl<K: Hash + Eq, V> SharedRoutes<K, V> {
    /// At most `leaves_capacity` routes for the leaves' queries and
    /// `peer_capacity` for each peer's, each kept for `lifetime`.
    pub fn new(leaves_capacity: usize, peer_capacity: usize, lifetime: Duration) -> Self {
        Self {
            shares: std::collections::BTreeMap::new(),
            leaves_capacity,
            peer_capacity,
            lifetime,
        }
    }

    /// Remembers, in `share`, that messages for `id` go back to `back_to`.
    pub fn insert(&mut self, share: Share, id: K, back_to: ConnId, data: V, now: Time) {
        let capacity = match share {
            Share::Leaves => self.leaves_capacity,
            Share::Peer(_) => self.peer_capacity,
        };
        let lifetime = self.lifetime;
        self.shares
            .entry(share)
            .or_insert_with(|| RouteTable::new(capacity, lifetime))
            .insert_with(id, back_to, data, now);
    }

    /// The route for `id` in any share, with its data.
    pub fn get(&self, id: &K, now: Time) -> Option<(ConnId, &V)> {
        self.shares.values().find_map(|table| table.get(id, now))
    }

    /// Forgets a share whole (its peer is gone: its routes lead nowhere).
    pub fn remove_share(&mut self, share: Share) {
        self.shares.remove(&share);
    }

    /// Drops expired generations: call it every second or so.
    pub fn expire(&mut self, now: Time) {
        for table in self.shares.values_mut() {
            table.expire(now);
        }
    }

    /// When [`SharedRoutes::expire`] next drops a generation.
    pub fn next_expiry(&self) -> Option<Time> {
        self.shares
            .values()
            .filter_map(RouteTable::next_expiry)
            .min()
    }

    /// Routes held in `share`.
    pub fn share_len(&self, share: Share) -> usize {
        self.shares.get(&share).map_or(0, RouteTable::len)
    }

    /// Routes held in all.
    pub fn len(&self) -> usize {
        self.shares.values().map(RouteTable::len).sum()
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

    #[test]
    fn a_flooding_share_rotates_only_itself() {
        let mut routes: SharedRoutes<MessageId, u8> =
            SharedRoutes::new(100, 10, Duration::from_secs(60));
        routes.insert(Share::Peer(ConnId(2)), id(200), ConnId(2), 7, Time(0));
        routes.insert(Share::Leaves, id(201), ConnId(3), 8, Time(0));
        for n in 0..150u8 {
            routes.insert(Share::Peer(ConnId(1)), id(n), ConnId(1), 0, Time(1));
            assert!(routes.share_len(Share::Peer(ConnId(1))) <= 10);
        }
        assert_eq!(routes.get(&id(200), Time(2)), Some((ConnId(2), &7)));
        assert_eq!(routes.get(&id(201), Time(2)), Some((ConnId(3), &8)));
        assert_eq!(routes.get(&id(149), Time(2)), Some((ConnId(1), &0)));
        assert_eq!(routes.get(&id(0), Time(2)), None, "pushed out of its share");
        routes.remove_share(Share::Peer(ConnId(2)));
        assert_eq!(routes.get(&id(200), Time(2)), None);
    }
}
