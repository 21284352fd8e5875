//! Duplicate suppression: remembers the ids of recent queries so a query
//! that arrives again by another path is dropped, not answered twice.
//!
//! Bounded, and cheap on the hot path of every query: ids go into the
//! current generation; when it holds half the capacity it becomes the
//! previous one and the old previous one is forgotten whole. An id is
//! therefore remembered for at least the last `capacity / 2` ids and at
//! most the last `capacity`, with no per-id bookkeeping (an LRU list costs
//! an unlink and a hash removal for every id once full). The sets use
//! hashbrown's default hasher, seeded at random per process, so ids a peer
//! picks cannot be aimed at one bucket.

use hashbrown::HashSet;

use canopy_proto::MessageId;

/// The set of recently seen message ids, capped in size.
#[derive(Debug)]
pub struct SeenMessages {
    current: HashSet<MessageId>,
    previous: HashSet<MessageId>,
    generation: usize,
}

impl SeenMessages {
    /// Remembers at most `capacity` ids (at least two); always the latest
    /// `capacity / 2`.
    pub fn new(capacity: usize) -> Self {
        Self {
            current: HashSet::default(),
            previous: HashSet::default(),
            generation: (capacity / 2).max(1),
        }
    }

    /// Records `id`; true if it is new, false if it was seen before.
    pub fn first_sighting(&mut self, id: MessageId) -> bool {
        if self.previous.contains(&id) || !self.current.insert(id) {
            return false;
        }
        if self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> MessageId {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        MessageId(bytes)
    }

    #[test]
    fn a_repeat_is_caught_and_the_table_stays_bounded() {
        let mut seen = SeenMessages::new(4);
        assert!(seen.first_sighting(id(1)));
        assert!(!seen.first_sighting(id(1)));
        for n in 2..100 {
            assert!(seen.first_sighting(id(n)));
            assert!(seen.len() <= 4);
            // The latest half of the capacity is always remembered.
            assert!(!seen.first_sighting(id(n)));
            assert!(!seen.first_sighting(id(n - 1)));
        }
        // Long forgotten: new again.
        assert!(seen.first_sighting(id(1)));
    }
}
