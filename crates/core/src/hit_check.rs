//! What a hit must match to be passed on: kept with each query's route, so
//! a supernode forwards only files that answer the query they claim to
//! answer (a peer can no longer pass any file, or any number of them, off
//! as an answer).
//!
//! Compact, since every routed query keeps one: the query's first
//! [`CHECKED_WORDS`] keywords and its content id as 32-bit hashes keyed
//! with this process's random key (a peer cannot aim a forged name at a
//! collision it cannot compute), and its size bounds. A file matches when
//! every kept keyword is a word of its name (tokenized as the index does),
//! its content id hashes alike, and its size is within the bounds. Hashing
//! can only let a wrong file through by a 1-in-4-billion accident, never
//! drop a right one.

use std::hash::{BuildHasher, RandomState};

use canopy_proto::SharedFile;

use crate::index::Filter;
use crate::tokenize::tokenize;

/// Keywords of a query checked in its hits; beyond, they are not.
pub const CHECKED_WORDS: usize = 4;

/// The hash key of every [`HitCheck`] a node makes.
#[derive(Debug, Clone, Default)]
pub struct HitKey(RandomState);

impl HitKey {
    /// A fresh random key.
    pub fn new() -> Self {
        Self(RandomState::new())
    }

    fn hash(&self, value: impl std::hash::Hash) -> u32 {
        // The high half: the low bits of some hashers are the weaker ones.
        u32::try_from(self.0.hash_one(value) >> 32).unwrap_or(0)
    }

    /// What hits for a query of `filter` must match.
    pub fn check_for(&self, filter: &Filter) -> HitCheck {
        let mut words = [0; CHECKED_WORDS];
        let mut count = 0;
        for (slot, word) in words.iter_mut().zip(&filter.keywords) {
            *slot = self.hash(word.as_str());
            count += 1;
        }
        HitCheck {
            words,
            word_count: count,
            content: filter.content_id.map_or(0, |id| self.hash(id)),
            has_content: filter.content_id.is_some(),
            min_size: filter.min_size.unwrap_or(0),
            max_size: filter.max_size.unwrap_or(u64::MAX),
        }
    }

    /// True if `file` answers the query `check` was made for.
    pub fn matches(&self, check: &HitCheck, file: &SharedFile) -> bool {
        if file.size < check.min_size || file.size > check.max_size {
            return false;
        }
        if check.has_content && check.content != self.hash(file.content_id) {
            return false;
        }
        let wanted = check
            .words
            .get(..usize::from(check.word_count))
            .unwrap_or_default();
        if wanted.is_empty() {
            return true;
        }
        let have: Vec<u32> = tokenize(&file.name)
            .iter()
            .map(|word| self.hash(word.as_str()))
            .collect();
        wanted.iter().all(|word| have.contains(word))
    }
}

/// See the module documentation: 40 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitCheck {
    words: [u32; CHECKED_WORDS],
    word_count: u8,
    has_content: bool,
    content: u32,
    min_size: u64,
    max_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_proto::ContentId;

    fn file(id: u8, name: &str, size: u64) -> SharedFile {
        SharedFile {
            content_id: ContentId([id; 32]),
            name: name.into(),
            size,
            available: None,
        }
    }

    #[test]
    fn a_hit_must_answer_its_query() {
        let key = HitKey::new();
        let mut filter = Filter::new(&["Blue moon"], None);
        filter.min_size = Some(10);
        let check = key.check_for(&filter);
        assert!(key.matches(&check, &file(1, "BLUE Moon - live.mp3", 10)));
        assert!(
            !key.matches(&check, &file(1, "Blue Sky.mp3", 10)),
            "a word missing"
        );
        assert!(!key.matches(&check, &file(1, "blue moon", 9)), "too small");
        let by_id = key.check_for(&Filter::new::<&str>(&[], Some(ContentId([3; 32]))));
        assert!(key.matches(&by_id, &file(3, "anything", 1)));
        assert!(!key.matches(&by_id, &file(4, "anything", 1)));
        assert!(std::mem::size_of::<HitCheck>() <= 40);
    }
}
