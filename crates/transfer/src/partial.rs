//! A partial entry: a download served while it runs.
//!
//! From its first verified 1 MiB group, a download is in the catalog as a
//! partial entry (beside the complete entries, see [`crate::catalog`]): its
//! hidden `.canopy-<id>.partial` file, the file's size, the tree it
//! verified the id with (served at `/tree/<id>`), and `have`, the groups
//! that can be served.
//!
//! Invariant: `have` lists only groups that were verified against the tree
//! AND written to the partial file, and it only ever grows. The download
//! inserts a group after its bytes are written; the server checks a range
//! against `have` before reading the file, so every byte it sends was
//! verified, and a range found inside `have` stays inside it while the
//! body is sent. A download that loses groups (a restart that finds the
//! file changed) must put in a new entry, never shrink this one.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use canopy_core::groups::GroupSet;

/// The longest `X-Available-Ranges` value sent: ranges beyond are dropped
/// (a subset of what we have is never a lie).
pub const MAX_AVAILABLE_RANGES_LEN: usize = 4096;

/// A download served while it runs.
#[derive(Debug, Clone)]
pub struct PartialEntry {
    /// The hidden `.canopy-<id>.partial` file, written in place at its
    /// full size.
    pub path: PathBuf,
    /// The file's size (the partial file's length on disk).
    pub size: u64,
    /// The group chaining values, as served at `/tree/<id>`; empty for a
    /// file of one group.
    pub tree: Bytes,
    /// The groups verified AND written; only ever grows.
    pub have: Arc<RwLock<GroupSet>>,
}

/// What a partial entry can serve, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// The `X-Available-Ranges` value.
    pub ranges: String,
    /// True if the range asked for lies wholly inside served groups.
    pub covers: bool,
}

impl PartialEntry {
    /// An entry for a download of `size` bytes into `path`, having no group
    /// yet.
    pub fn new(path: PathBuf, size: u64, tree: Bytes) -> Self {
        Self {
            path,
            size,
            tree,
            have: Arc::new(RwLock::new(GroupSet::empty(size))),
        }
    }

    /// Notes that `group` is verified and written; true if it is new.
    pub fn add_group(&self, group: u64) -> bool {
        self.have
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group)
    }

    /// The groups that can be served now.
    pub fn have(&self) -> GroupSet {
        self.have
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True if the inclusive byte `range` lies wholly inside served groups.
    pub fn covers(&self, range: RangeInclusive<u64>) -> bool {
        self.have
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .covers(range)
    }

    /// True once every group is verified and written.
    pub fn is_complete(&self) -> bool {
        self.have
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_full()
    }

    /// What can be served at one moment, read under one lock: `None` once
    /// every group is in (the entry serves like a whole file), else the
    /// `X-Available-Ranges` value and whether `range` lies inside it.
    pub fn availability(&self, range: Option<RangeInclusive<u64>>) -> Option<Availability> {
        let have = self.have.read().unwrap_or_else(PoisonError::into_inner);
        if have.is_full() {
            return None;
        }
        Some(Availability {
            ranges: have.to_header(MAX_AVAILABLE_RANGES_LEN),
            covers: range.is_some_and(|range| have.covers(range)),
        })
    }

    /// The `X-Available-Ranges` value: the served groups as inclusive byte
    /// ranges, at most [`MAX_AVAILABLE_RANGES_LEN`] bytes.
    pub fn available_ranges(&self) -> String {
        self.have
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .to_header(MAX_AVAILABLE_RANGES_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::tree::GROUP_LEN;

    #[test]
    fn groups_added_are_covered_and_listed() {
        let entry = PartialEntry::new(PathBuf::from("p"), 3 * GROUP_LEN + 10, Bytes::new());
        assert!(!entry.covers(0..=0));
        assert!(entry.add_group(1));
        assert!(!entry.add_group(1));
        assert!(entry.covers(GROUP_LEN..=2 * GROUP_LEN - 1));
        assert!(!entry.covers(GROUP_LEN..=2 * GROUP_LEN));
        entry.add_group(3);
        assert!(entry.covers(3 * GROUP_LEN..=3 * GROUP_LEN + 9));
        assert!(!entry.is_complete());
        let availability = entry.availability(Some(0..=5)).unwrap();
        assert!(!availability.covers);
        assert_eq!(
            availability.ranges,
            format!(
                "bytes {}-{}, {}-{}",
                GROUP_LEN,
                2 * GROUP_LEN - 1,
                3 * GROUP_LEN,
                3 * GROUP_LEN + 9
            )
        );
        assert!(!entry.availability(None).unwrap().covers);
        // A clone shares `have`: the server sees what the download adds.
        let clone = entry.clone();
        entry.add_group(0);
        entry.add_group(2);
        assert!(clone.is_complete());
        assert_eq!(clone.availability(Some(0..=5)), None);
        assert_eq!(clone.have().count(), 4);
    }
}
