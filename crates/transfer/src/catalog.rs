//! The catalog: the content ids a leaf serves, the files behind them and
//! their verification trees. Only files in the catalog are ever read by the
//! server, and they are found by content id, never by a path a peer sent.
//! The trees were computed when the files were hashed, so serving one reads
//! nothing from disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use canopy_proto::ContentId;

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
/// each scan) and the server (which reads it per request).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Arc<RwLock<HashMap<ContentId, CatalogEntry>>>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces everything with `entries`.
    pub fn replace(&self, entries: impl IntoIterator<Item = (ContentId, CatalogEntry)>) {
        let fresh: HashMap<_, _> = entries.into_iter().collect();
        if let Ok(mut map) = self.entries.write() {
            *map = fresh;
        }
    }

    /// The file for `id`, if served.
    pub fn get(&self, id: &ContentId) -> Option<CatalogEntry> {
        self.entries.read().ok()?.get(id).cloned()
    }

    /// How many files are served.
    pub fn len(&self) -> usize {
        self.entries.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when nothing is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
