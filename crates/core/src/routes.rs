//! Reverse-path route tables: for each query this node handled, the
//! connection it came from, so hits can travel back the same way; and for
//! each source whose hit it passed on, the connection the hit came from, so
//! a push can travel to the source. Entries expire, and each table is
//! capped; the least recently used entry goes first when it is full.

use std::hash::Hash;
use std::time::Duration;

use lru::LruCache;

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
    routes: LruCache<K, Route>,
    capacity: usize,
    lifetime: Duration,
}

impl<K: Hash + Eq> RouteTable<K> {
    /// At most `capacity` routes, each kept for `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        // Unbounded underneath, trimmed by hand: `LruCache::new` would
        // allocate the whole capacity up front.
        Self {
            routes: LruCache::unbounded(),
            capacity: capacity.max(1),
            lifetime,
        }
    }

    /// Remembers that messages for `id` go back to `back_to`.
    pub fn insert(&mut self, id: K, back_to: ConnId, now: Time) {
        let expires = now + self.lifetime;
        self.routes.put(id, Route { back_to, expires });
        if self.routes.len() > self.capacity {
            self.routes.pop_lru();
        }
    }

    /// Where messages for `id` go, if the route is known and has not expired.
    pub fn lookup(&mut self, id: &K, now: Time) -> Option<ConnId> {
        match self.routes.get(id) {
            Some(route) if route.expires > now => Some(route.back_to),
            Some(_) => {
                self.routes.pop(id);
                None
            }
            None => None,
        }
    }

    /// Drops expired routes, oldest first, until the first live one.
    pub fn expire(&mut self, now: Time) {
        while let Some((_, route)) = self.routes.peek_lru() {
            if route.expires > now {
                break;
            }
            self.routes.pop_lru();
        }
    }

    /// How many routes are held.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route is held.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_proto::MessageId;

    #[test]
    fn routes_expire_and_are_capped() {
        let mut table = RouteTable::new(2, Duration::from_secs(10));
        let (a, b, c) = (MessageId([1; 16]), MessageId([2; 16]), MessageId([3; 16]));
        table.insert(a, ConnId(1), Time(0));
        assert_eq!(table.lookup(&a, Time(9_999)), Some(ConnId(1)));
        assert_eq!(table.lookup(&a, Time(10_000)), None);

        table.insert(a, ConnId(1), Time(0));
        table.insert(b, ConnId(2), Time(5_000));
        table.insert(c, ConnId(3), Time(5_000));
        assert_eq!(table.len(), 2);
        assert_eq!(table.lookup(&a, Time(1)), None, "evicted by capacity");

        table.expire(Time(15_000));
        assert!(table.is_empty());
    }
}
