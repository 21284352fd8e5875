//! Last-hop routing filters: what a supernode tells its peers its leaves
//! share, so a query on its last hop goes only where it may match
//! (Gnutella's Query Routing Protocol between ultrapeers, done as a Bloom
//! filter).
//!
//! A supernode keeps a [`FilterSource`]: every keyword and content id its
//! leaves share, as a public 64-bit hash with a count of the files that
//! have it (so a removal is exact). From it, a [`RoutingFilter`] of any
//! size: a bit table in which each entry sets [`HASHES`] bits. A query
//! *may match* when every one of its keywords (tokenized the way names
//! are) and its content id, if any, has all its bits set; a query the
//! index would answer always may match (no false negatives), and one it
//! wouldn't is let through with the filter's false-positive rate.
//!
//! Sizing is by measurement: [`slots_for`] gives the table
//! [`BITS_PER_ENTRY`] bits per distinct entry, a power of two between
//! [`MIN_LOG2_SLOTS`] and [`MAX_LOG2_SLOTS`] (at most 128 KiB), so its
//! false-positive rate stays near 1% per keyword whatever the leaves
//! share. Changes travel as patches (`crate::filter_patch`).
//!
//! The hashes are public (BLAKE3 in key-derivation mode, a fixed context):
//! both ends must compute them. A peer can learn from a filter only which
//! words are shared, which its queries could learn anyway.

use std::collections::HashMap;

use canopy_proto::ContentId;

use crate::tokenize::tokenize;

/// Bits each entry sets.
pub const HASHES: u32 = 3;
/// Table bits per distinct entry: with 3 hashes, about 1% false positives
/// for a one-word query, 0.01% for two words.
pub const BITS_PER_ENTRY: usize = 10;
/// The largest table: 2^20 bits (128 KiB). Past about 100,000 distinct
/// entries its false-positive rate rises instead.
pub use canopy_proto::limits::MAX_FILTER_LOG2_SLOTS as MAX_LOG2_SLOTS;
/// The smallest table: 1,024 bits (128 bytes).
pub use canopy_proto::limits::MIN_FILTER_LOG2_SLOTS as MIN_LOG2_SLOTS;

/// The BLAKE3 context keyword hashes are derived under.
const WORD_CONTEXT: &str = "canopy 2026-12-02 routing filter keyword";

/// An entry's public hash: a keyword's, or a content id's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryHash(pub u64);

impl EntryHash {
    /// A keyword as [`tokenize`] gives it.
    pub fn keyword(word: &str) -> Self {
        let hash = blake3::derive_key(WORD_CONTEXT, word.as_bytes());
        Self(u64::from_le_bytes(first_eight(&hash)))
    }

    /// A content id (already a BLAKE3 hash: its first bytes are uniform).
    /// The top bit is flipped so that a content id and a keyword whose
    /// hashes agree elsewhere still differ.
    pub fn content(id: &ContentId) -> Self {
        Self(u64::from_le_bytes(first_eight(&id.0)) ^ (1 << 63))
    }

    /// The bits this entry sets in a table of `2^log2_slots` bits (double
    /// hashing: the low and high halves make the [`HASHES`] positions).
    pub fn positions(self, log2_slots: u8) -> impl Iterator<Item = u32> {
        let mask = (1u64 << log2_slots) - 1;
        let (low, high) = (self.0 & 0xffff_ffff, (self.0 >> 32) | 1);
        (0..u64::from(HASHES)).map(move |i| {
            // The mask keeps it below 2^20, so it fits.
            u32::try_from(low.wrapping_add(i.wrapping_mul(high)) & mask).unwrap_or(0)
        })
    }
}

fn first_eight(bytes: &[u8; 32]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

/// The entries of a file: the words of its name (the first `max_words`,
/// as the index keeps them) and its content id.
pub fn file_entries(name: &str, content_id: &ContentId, max_words: usize) -> Vec<EntryHash> {
    tokenize(name)
        .iter()
        .take(max_words)
        .map(|word| EntryHash::keyword(word))
        .chain(std::iter::once(EntryHash::content(content_id)))
        .collect()
}

/// The entries a query needs: each of its keywords (tokenized the way
/// names are) and its content id. Empty: the query can't be judged (the
/// index answers nothing to it either).
pub fn query_entries(keywords: &[String], content_id: Option<&ContentId>) -> Vec<EntryHash> {
    let mut words: Vec<String> = Vec::new();
    for keyword in keywords {
        for word in tokenize(keyword) {
            if !words.contains(&word) {
                words.push(word);
            }
        }
    }
    words
        .iter()
        .map(|word| EntryHash::keyword(word))
        .chain(content_id.map(EntryHash::content))
        .collect()
}

/// The table size for `distinct` entries: `BITS_PER_ENTRY` bits each, a
/// power of two within the bounds.
pub fn slots_for(distinct: usize) -> u8 {
    let wanted = distinct.saturating_mul(BITS_PER_ENTRY).max(1);
    let log2 = usize::BITS - (wanted - 1).leading_zeros();
    u8::try_from(log2)
        .unwrap_or(MAX_LOG2_SLOTS)
        .clamp(MIN_LOG2_SLOTS, MAX_LOG2_SLOTS)
}

/// Everything a supernode's leaves share, counted, to build filters from.
/// Memory: one map entry (about 24 bytes with the map's overhead) per
/// distinct keyword or content id; the index it mirrors is bounded.
#[derive(Debug, Clone, Default)]
pub struct FilterSource {
    counts: HashMap<EntryHash, u32>,
}

impl FilterSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// A file was indexed.
    pub fn add(&mut self, entries: &[EntryHash]) {
        for entry in entries {
            let count = self.counts.entry(*entry).or_insert(0);
            *count = count.saturating_add(1);
        }
    }

    /// A file left the index (the entries it was added with).
    pub fn remove(&mut self, entries: &[EntryHash]) {
        for entry in entries {
            if let Some(count) = self.counts.get_mut(entry) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(entry);
                }
            }
        }
    }

    /// Distinct entries.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True with nothing shared.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The filter of everything here, sized by [`slots_for`].
    pub fn filter(&self) -> RoutingFilter {
        self.filter_of_size(slots_for(self.len()))
    }

    /// The filter of everything here in a table of `2^log2_slots` bits.
    pub fn filter_of_size(&self, log2_slots: u8) -> RoutingFilter {
        let mut filter = RoutingFilter::empty(log2_slots);
        for entry in self.counts.keys() {
            filter.insert(*entry);
        }
        filter
    }
}

/// A bit table: the filter one supernode sends a peer, or holds for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingFilter {
    log2_slots: u8,
    words: Vec<u64>,
}

impl RoutingFilter {
    /// A table of `2^log2_slots` bits, none set (`log2_slots` clamped to
    /// the bounds).
    pub fn empty(log2_slots: u8) -> Self {
        let log2_slots = log2_slots.clamp(MIN_LOG2_SLOTS, MAX_LOG2_SLOTS);
        Self {
            log2_slots,
            words: vec![0; (1usize << log2_slots) / 64],
        }
    }

    /// Its size: `2^log2_slots` bits.
    pub fn log2_slots(&self) -> u8 {
        self.log2_slots
    }

    /// Its bytes in memory.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Sets `entry`'s bits.
    pub fn insert(&mut self, entry: EntryHash) {
        for position in entry.positions(self.log2_slots) {
            self.flip_on(position);
        }
    }

    fn flip_on(&mut self, position: u32) {
        let (word, bit) = split(position);
        if let Some(w) = self.words.get_mut(word) {
            *w |= 1 << bit;
        }
    }

    /// Inverts one bit (a patch's unit); positions past the table are
    /// ignored (a patch is checked against the size before).
    pub fn flip(&mut self, position: u32) {
        let (word, bit) = split(position);
        if let Some(w) = self.words.get_mut(word) {
            *w ^= 1 << bit;
        }
    }

    /// True if bit `position` is set.
    pub fn is_set(&self, position: u32) -> bool {
        let (word, bit) = split(position);
        self.words.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// True if `entry` may be in the set (all its bits set).
    pub fn may_contain(&self, entry: EntryHash) -> bool {
        entry.positions(self.log2_slots).all(|p| self.is_set(p))
    }

    /// True if a query needing `entries` (see [`query_entries`]) may match
    /// a file of the set: every entry may be in it. A query with no
    /// entries may match (nothing to judge it by).
    pub fn may_match(&self, entries: &[EntryHash]) -> bool {
        entries.iter().all(|entry| self.may_contain(*entry))
    }

    /// The share of bits set, in thousandths (a full table lets
    /// everything through; see [`RoutingFilter::fill_per_mille`]).
    pub fn fill_per_mille(&self) -> u32 {
        let set: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        let total = (self.words.len() as u64) * 64;
        u32::try_from(set * 1000 / total.max(1)).unwrap_or(1000)
    }

    /// The positions where `self` and `other` differ, ascending (both of
    /// one size; `None` otherwise).
    pub fn differences(&self, other: &RoutingFilter) -> Option<Vec<u32>> {
        if self.log2_slots != other.log2_slots {
            return None;
        }
        let mut out = Vec::new();
        for (index, (a, b)) in self.words.iter().zip(&other.words).enumerate() {
            let mut diff = a ^ b;
            while diff != 0 {
                let bit = diff.trailing_zeros();
                diff &= diff - 1;
                // Below 2^20 by the size bounds.
                out.push(u32::try_from(index * 64).unwrap_or(u32::MAX) + bit);
            }
        }
        Some(out)
    }
}

/// The word and bit of a position.
fn split(position: u32) -> (usize, u32) {
    ((position / 64) as usize, position % 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn id(n: u64) -> ContentId {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        ContentId(*blake3::hash(&bytes).as_bytes())
    }

    /// A name of 1-5 words from a vocabulary of 2,000.
    fn name(rng: &mut SplitMix64) -> String {
        let words = 1 + rng.below(5);
        (0..words)
            .map(|_| format!("w{}", rng.below(2000)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_query_the_index_would_answer_always_passes() {
        // Property: for random shares and random queries built from a
        // shared file's words (any subset, any order, any case) or its id,
        // the filter never says no.
        let mut rng = SplitMix64::new(7);
        for round in 0..50 {
            let mut source = FilterSource::new();
            let files: Vec<(String, ContentId)> = (0..1 + rng.below(400))
                .map(|n| (name(&mut rng), id(round * 1000 + n)))
                .collect();
            for (name, id) in &files {
                source.add(&file_entries(name, id, 32));
            }
            let filter = source.filter();
            for (name, id) in &files {
                let words: Vec<String> = name
                    .split(' ')
                    .filter(|_| rng.below(2) == 0)
                    .map(str::to_uppercase)
                    .collect();
                let with_id = rng.below(2) == 0;
                let entries = query_entries(&words, with_id.then_some(id));
                assert!(filter.may_match(&entries), "{name} {words:?}");
            }
        }
    }

    #[test]
    fn few_queries_for_what_nobody_shares_pass() {
        let mut rng = SplitMix64::new(11);
        let mut source = FilterSource::new();
        for n in 0..5_000 {
            source.add(&file_entries(&name(&mut rng), &id(n), 32));
        }
        let filter = source.filter();
        let misses = (0..10_000)
            .filter(|n| filter.may_match(&query_entries(&[format!("absent{n}")], None)))
            .count();
        // About 1% by design; 3% would mean the sizing is off.
        assert!(misses < 300, "{misses} of 10,000 absent words passed");
        let ids = (0..10_000)
            .filter(|n| filter.may_match(&query_entries(&[], Some(&id(1_000_000 + n)))))
            .count();
        assert!(ids < 300, "{ids} of 10,000 absent ids passed");
    }

    #[test]
    fn removing_a_file_removes_exactly_what_only_it_had() {
        let mut source = FilterSource::new();
        let a = file_entries("red fox", &id(1), 32);
        let b = file_entries("red hen", &id(2), 32);
        source.add(&a);
        source.add(&b);
        source.remove(&a);
        let filter = source.filter_of_size(MAX_LOG2_SLOTS);
        assert!(filter.may_match(&query_entries(&["red".into()], None)));
        assert!(filter.may_match(&query_entries(&["hen".into()], Some(&id(2)))));
        assert!(!filter.may_match(&query_entries(&["fox".into()], None)));
        assert!(!filter.may_match(&query_entries(&[], Some(&id(1)))));
        assert_eq!(source.len(), 3, "red, hen and id 2");
        source.remove(&b);
        assert!(source.is_empty());
        // Removing what was never added changes nothing.
        source.remove(&a);
        assert!(source.is_empty());
    }

    #[test]
    fn the_table_grows_with_what_is_shared_within_bounds() {
        assert_eq!(slots_for(0), MIN_LOG2_SLOTS);
        assert_eq!(slots_for(100), 10, "1,000 bits: 1,024");
        assert_eq!(slots_for(1_000), 14, "10,000 bits: 16,384");
        assert_eq!(slots_for(10_000_000), MAX_LOG2_SLOTS);
        let filter = RoutingFilter::empty(slots_for(10_000_000));
        assert_eq!(filter.bytes(), 128 * 1024);
    }

    #[test]
    fn differences_are_the_bits_to_flip() {
        let mut source = FilterSource::new();
        source.add(&file_entries("one two", &id(1), 32));
        let old = source.filter_of_size(12);
        source.add(&file_entries("three", &id(2), 32));
        let new = source.filter_of_size(12);
        let mut patched = old.clone();
        for position in old.differences(&new).unwrap() {
            patched.flip(position);
        }
        assert_eq!(patched, new);
        assert!(old.differences(&source.filter_of_size(13)).is_none());
    }
}
