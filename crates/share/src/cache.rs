//! The hash cache: content ids and verification trees by path, valid while
//! the file's size and modification time are unchanged. Saved as JSON in
//! the data directory (a tree as hex: 64 characters per MiB of file),
//! written to a temporary file and renamed, so a crash never leaves half a
//! cache. A cache that can't be read is discarded (it is only a cache). An
//! entry of an older cache without a tree counts as a miss for a file of
//! several groups, so its tree is computed once, at the next scan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use canopy_core::tree::group_count;
use serde::{Deserialize, Serialize};

use crate::{FileHash, ShareError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    modified_ns: u128,
    content_id: String,
    /// The group chaining values as hex; empty for a one-group file.
    #[serde(default)]
    tree: String,
}

/// Cached content ids and trees, keyed by absolute path.
#[derive(Debug, Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    entries: HashMap<PathBuf, Entry>,
    dirty: bool,
}

fn modified_ns(modified: SystemTime) -> u128 {
    modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl HashCache {
    /// A cache kept only in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The cache stored at `path`, or an empty one if it does not exist or
    /// does not parse.
    pub fn load(path: &Path) -> Self {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "hash cache unreadable; starting afresh");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Self {
            path: Some(path.to_owned()),
            entries,
            dirty: false,
        }
    }

    /// The cached id and tree of `file`, if its size and modification time
    /// match and the entry has the tree a file of that size needs.
    pub fn get(&self, file: &Path, size: u64, modified: SystemTime) -> Option<FileHash> {
        let entry = self.entries.get(file)?;
        if entry.size != size || entry.modified_ns != modified_ns(modified) {
            return None;
        }
        let id = entry.content_id.parse().ok()?;
        let tree = hex::decode(&entry.tree).ok()?;
        let groups = group_count(size);
        let expected = if groups == 1 {
            0
        } else {
            usize::try_from(groups).ok()?.checked_mul(32)?
        };
        (tree.len() == expected).then_some(FileHash { id, tree })
    }

    /// Records the id and tree of `file`.
    pub fn insert(&mut self, file: PathBuf, size: u64, modified: SystemTime, hash: &FileHash) {
        let entry = Entry {
            size,
            modified_ns: modified_ns(modified),
            content_id: hash.id.to_hex(),
            tree: hex::encode(&hash.tree),
        };
        if self.entries.get(&file) != Some(&entry) {
            self.entries.insert(file, entry);
            self.dirty = true;
        }
    }

    /// Forgets every path not in `keep`, so the cache does not outgrow the shares.
    pub fn retain(&mut self, keep: &std::collections::HashSet<PathBuf>) {
        let before = self.entries.len();
        self.entries.retain(|path, _| keep.contains(path));
        self.dirty |= self.entries.len() != before;
    }

    /// Number of cached paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache back if it changed and has a file.
    pub fn save(&mut self) -> Result<(), ShareError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let io = |source| ShareError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let bytes = serde_json::to_vec(&self.entries).map_err(|e| io(e.into()))?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, bytes).map_err(io)?;
        std::fs::rename(&temporary, path).map_err(io)?;
        self.dirty = false;
        Ok(())
    }
}
