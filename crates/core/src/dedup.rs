//! Duplicate suppression: remembers the ids of recent queries so a query
//! that arrives again by another path is dropped, not answered twice.
//! Bounded: the least recently seen id is forgotten first.

use canopy_proto::MessageId;
use lru::LruCache;

/// The set of recently seen message ids, capped in size.
#[derive(Debug)]
pub struct SeenMessages {
    seen: LruCache<MessageId, ()>,
    capacity: usize,
}

impl SeenMessages {
    /// Remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        // Unbounded underneath, trimmed by hand: `LruCache::new` would
        // allocate the whole capacity up front, memory an idle node never uses.
        Self {
            seen: LruCache::unbounded(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; true if it is new, false if it was seen before.
    pub fn first_sighting(&mut self, id: MessageId) -> bool {
        let new = self.seen.put(id, ()).is_none();
        if self.seen.len() > self.capacity {
            self.seen.pop_lru();
        }
        new
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_caught_and_the_table_stays_bounded() {
        let mut seen = SeenMessages::new(2);
        assert!(seen.first_sighting(MessageId([1; 16])));
        assert!(!seen.first_sighting(MessageId([1; 16])));
        assert!(seen.first_sighting(MessageId([2; 16])));
        assert!(seen.first_sighting(MessageId([3; 16])));
        assert_eq!(seen.len(), 2);
        // The oldest was forgotten to make room.
        assert!(seen.first_sighting(MessageId([1; 16])));
    }
}
