//! The catalog: the content ids a leaf serves, the files behind them and
//! their verification trees. Only files in the catalog are ever read by the
//! server, and they are found by content id, never by a path a peer sent.
//! The trees were computed when the files were hashed, so serving one reads
//! nothing from disk.
//!
//! A concurrent map (`dashmap`): the server reads it per request, the
//! leaf's rescans replace it, and a finished download adds its file at
//! once, without any of them waiting on a table-wide lock.
//!
//! Downloads still running are served too, from a second map of partial
//! entries ([`PartialEntry`], see [`crate::partial`]). The two are kept
//! apart: a rescan's [`Catalog::replace`] never touches a partial entry,
//! and the server looks up a complete entry first, then a partial one, so
//! a finished download inserted as complete before its partial entry goes
//! is served without a gap.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use canopy_proto::ContentId;
use dashmap::DashMap;

pub use crate::partial::PartialEntry;

/// A served file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Where it is on disk (inside a shared folder).
    pub path: PathBuf,
    /// Its size when it was hashed.
    pub size: u64,
    /// Its group chaining values (see `canopy_core::tree`), as served at
    /// `/tree/<id>`; empty for a file of one group.
    pub tree: Bytes,
}

/// Content ids to files, shared between the leaf (which updates it after
/// each scan) and the server (which reads it per request). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Arc<DashMap<ContentId, CatalogEntry>>,
    partials: Arc<DashMap<ContentId, PartialEntry>>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every complete entry with `entries`: ids no longer in
    /// `entries` are removed, the others inserted or updated. A reader sees
    /// each id either before or after, never missing while it stays
    /// shared. Partial entries are left alone.
    pub fn replace(&self, entries: impl IntoIterator<Item = (ContentId, CatalogEntry)>) {
        let fresh: std::collections::HashMap<_, _> = entries.into_iter().collect();
        self.entries.retain(|id, _| fresh.contains_key(id));
        for (id, entry) in fresh {
            self.entries.insert(id, entry);
        }
    }

    /// Serves `entry` as `id`; returns the entry it replaces, if any.
    pub fn insert(&self, id: ContentId, entry: CatalogEntry) -> Option<CatalogEntry> {
        self.entries.insert(id, entry)
    }

    /// Stops serving `id`; returns its entry, if it was served.
    pub fn remove(&self, id: &ContentId) -> Option<CatalogEntry> {
        self.entries.remove(id).map(|(_, entry)| entry)
    }

    /// The file for `id`, if served.
    pub fn get(&self, id: &ContentId) -> Option<CatalogEntry> {
        self.entries.get(id).map(|entry| entry.value().clone())
    }

    /// True when `id` is served.
    pub fn contains(&self, id: &ContentId) -> bool {
        self.entries.contains_key(id)
    }

    /// How many files are served.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is served.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Serves the download behind `entry` as `id` while it runs (replacing
    /// any partial entry of `id`).
    pub fn insert_partial(&self, id: ContentId, entry: PartialEntry) {
        self.partials.insert(id, entry);
    }

    /// Stops serving the download of `id`; returns its entry, if served.
    pub fn remove_partial(&self, id: &ContentId) -> Option<PartialEntry> {
        self.partials.remove(id).map(|(_, entry)| entry)
    }

    /// The download of `id`, if served. Its `have` is shared with the
    /// download: it keeps growing after this returns.
    pub fn get_partial(&self, id: &ContentId) -> Option<PartialEntry> {
        self.partials.get(id).map(|entry| entry.value().clone())
    }

    /// The ids of the downloads served.
    pub fn partial_ids(&self) -> Vec<ContentId> {
        self.partials.iter().map(|entry| *entry.key()).collect()
    }

    /// True when `id` is served, complete or partial.
    pub fn serves(&self, id: &ContentId) -> bool {
        self.entries.contains_key(id) || self.partials.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> CatalogEntry {
        CatalogEntry {
            path: PathBuf::from(name),
            size: 1,
            tree: Bytes::new(),
        }
    }

    #[test]
    fn insert_remove_and_replace() {
        let catalog = Catalog::new();
        let (a, b, c) = (ContentId([1; 32]), ContentId([2; 32]), ContentId([3; 32]));
        assert!(catalog.insert(a, entry("a")).is_none());
        assert_eq!(catalog.insert(a, entry("a2")), Some(entry("a")));
        catalog.insert(b, entry("b"));
        assert_eq!(catalog.len(), 2);
        assert_eq!(catalog.remove(&b), Some(entry("b")));
        assert!(catalog.remove(&b).is_none());
        catalog.replace([(c, entry("c"))]);
        assert!(!catalog.contains(&a));
        assert_eq!(catalog.get(&c), Some(entry("c")));
        assert_eq!(catalog.len(), 1);
    }

    #[test]
    fn partial_entries_are_apart_and_survive_replace() {
        let catalog = Catalog::new();
        let (a, b) = (ContentId([1; 32]), ContentId([2; 32]));
        let partial = PartialEntry::new(PathBuf::from(".canopy-a.partial"), 10, Bytes::new());
        catalog.insert_partial(a, partial.clone());
        assert!(catalog.get(&a).is_none());
        assert!(!catalog.contains(&a));
        assert!(catalog.serves(&a));
        assert!(catalog.is_empty());
        catalog.replace([(b, entry("b"))]);
        assert_eq!(catalog.partial_ids(), vec![a]);
        // The entry returned shares `have` with the one inserted.
        partial.add_group(0);
        assert!(catalog.get_partial(&a).unwrap().is_complete());
        catalog.replace([]);
        assert!(catalog.get_partial(&a).is_some());
        assert_eq!(
            catalog.remove_partial(&a).map(|entry| entry.path),
            Some(PathBuf::from(".canopy-a.partial"))
        );
        assert!(catalog.remove_partial(&a).is_none());
        assert!(!catalog.serves(&a));
        assert!(catalog.partial_ids().is_empty());
    }
}
