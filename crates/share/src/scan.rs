//! Walks the shared folders and produces the list of shared files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use canopy_proto::{SharedFile, is_valid_file_name};
use rayon::prelude::*;
use walkdir::WalkDir;

use crate::{FileHash, HashCache, ShareError, hash_file_with_tree};

/// A shared file and where it lives on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Absolute path, inside one of the shared folders.
    pub path: PathBuf,
    /// What is published.
    pub shared: SharedFile,
    /// Its verification tree (group chaining values; empty for a file of
    /// one group), computed when it was hashed and served as `/tree/<id>`.
    pub tree: Vec<u8>,
}

/// The outcome of a scan.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Every file shared.
    pub files: Vec<LocalFile>,
    /// Files hashed this time (the rest came from the cache).
    pub hashed: usize,
    /// Bytes hashed this time.
    pub hashed_bytes: u64,
    /// Files passed over (unreadable, or a name the protocol can't carry).
    pub skipped: usize,
}

struct Candidate {
    path: PathBuf,
    name: String,
    size: u64,
    modified: SystemTime,
}

fn candidates(dir: &Path, skipped: &mut usize) -> Result<Vec<Candidate>, ShareError> {
    let root = dir.canonicalize().map_err(|_| ShareError::NotADirectory {
        path: dir.to_owned(),
    })?;
    if !root.is_dir() {
        return Err(ShareError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mut found = Vec::new();
    let walk = WalkDir::new(&root)
        .follow_links(false)
        .into_iter()
        // Hidden files and folders (and partial downloads) are not shared.
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "skipping unreadable entry");
                *skipped += 1;
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue; // directories, and links, which could lead outside
        }
        let name = entry.file_name().to_str().map(str::to_owned);
        let Some(name) = name.filter(|n| is_valid_file_name(n)) else {
            tracing::warn!(path = %entry.path().display(), "skipping: name can't be shared");
            *skipped += 1;
            continue;
        };
        match entry.metadata() {
            Ok(meta) => found.push(Candidate {
                path: entry.into_path(),
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Err(error) => {
                tracing::warn!(%error, "skipping unreadable file");
                *skipped += 1;
            }
        }
    }
    Ok(found)
}

/// Scans `dirs`, hashing what the cache does not cover. `progress` is
/// called with the bytes of each file as it finishes hashing.
pub fn scan(
    dirs: &[PathBuf],
    cache: &mut HashCache,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ScanReport, ShareError> {
    let mut report = ScanReport::default();
    let mut all = Vec::new();
    for dir in dirs {
        all.extend(candidates(dir, &mut report.skipped)?);
    }
    let (cached, to_hash): (Vec<_>, Vec<_>) = all
        .into_iter()
        .map(|c| (cache.get(&c.path, c.size, c.modified), c))
        .partition(|(id, _)| id.is_some());

    let hashed_bytes = AtomicU64::new(0);
    let hashed: Vec<(Candidate, Option<FileHash>)> = to_hash
        .into_par_iter()
        .map(|(_, candidate)| {
            let id = match hash_file_with_tree(&candidate.path) {
                Ok(hash) => Some(hash),
                Err(error) => {
                    tracing::warn!(path = %candidate.path.display(), %error, "skipping: hashing failed");
                    None
                }
            };
            hashed_bytes.fetch_add(candidate.size, Ordering::Relaxed);
            progress(candidate.size);
            (candidate, id)
        })
        .collect();

    let mut keep = HashSet::new();
    for (id, candidate) in cached {
        if let Some(id) = id {
            keep.insert(candidate.path.clone());
            report.files.push(local_file(candidate, id));
        }
    }
    for (candidate, id) in hashed {
        let Some(id) = id else {
            report.skipped += 1;
            continue;
        };
        report.hashed += 1;
        cache.insert(
            candidate.path.clone(),
            candidate.size,
            candidate.modified,
            &id,
        );
        keep.insert(candidate.path.clone());
        report.files.push(local_file(candidate, id));
    }
    cache.retain(&keep);
    report.hashed_bytes = hashed_bytes.into_inner();
    report.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

fn local_file(candidate: Candidate, hash: FileHash) -> LocalFile {
    LocalFile {
        path: candidate.path,
        shared: SharedFile {
            content_id: hash.id,
            name: candidate.name,
            size: candidate.size,
        },
        tree: hash.tree,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_progress(_: u64) {}

    #[test]
    fn finds_hashes_and_caches() {
        let share = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(share.path().join("sub")).unwrap();
        std::fs::write(share.path().join("a.txt"), b"alpha").unwrap();
        std::fs::write(share.path().join("sub/b.txt"), b"beta").unwrap();
        std::fs::write(share.path().join(".hidden"), b"secret").unwrap();
        let cache_path = data.path().join("cache.json");

        let mut cache = HashCache::load(&cache_path);
        let first = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        assert_eq!(first.files.len(), 2);
        assert_eq!(first.hashed, 2);
        let a = first
            .files
            .iter()
            .find(|f| f.shared.name == "a.txt")
            .unwrap();
        assert_eq!(a.shared.content_id.0, *blake3::hash(b"alpha").as_bytes());
        cache.save().unwrap();

        // A restart reads the cache and hashes nothing unchanged.
        let mut cache = HashCache::load(&cache_path);
        let second = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        assert_eq!(second.hashed, 0);
        assert_eq!(second.files, first.files);

        // A changed file is hashed again.
        std::fs::write(share.path().join("a.txt"), b"alpha, longer").unwrap();
        let third = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        assert_eq!(third.hashed, 1);
    }

    #[test]
    fn trees_are_cached_and_an_old_cache_without_them_is_upgraded_once() {
        let share = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(share.path().join("big.bin"), &big).unwrap();
        std::fs::write(share.path().join("small.txt"), b"small").unwrap();
        let cache_path = data.path().join("cache.json");
        let mut cache = HashCache::load(&cache_path);
        let first = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        let tree = |report: &ScanReport, name: &str| {
            report
                .files
                .iter()
                .find(|f| f.shared.name == name)
                .unwrap()
                .tree
                .clone()
        };
        assert_eq!(tree(&first, "big.bin"), canopy_core::tree::tree_of(&big));
        assert!(tree(&first, "small.txt").is_empty());
        cache.save().unwrap();

        // Loaded again, the trees come from the cache: nothing is hashed.
        let mut cache = HashCache::load(&cache_path);
        let second = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        assert_eq!(second.hashed, 0);
        assert_eq!(second.files, first.files);

        // A cache written before trees were kept: only the multi-group
        // file is hashed again, once.
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cache_path).unwrap()).unwrap();
        for entry in old.as_object_mut().unwrap().values_mut() {
            entry.as_object_mut().unwrap().remove("tree");
        }
        std::fs::write(&cache_path, serde_json::to_vec(&old).unwrap()).unwrap();
        let mut cache = HashCache::load(&cache_path);
        let upgraded = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        assert_eq!(upgraded.hashed, 1);
        assert_eq!(upgraded.files, first.files);
        cache.save().unwrap();
        let mut cache = HashCache::load(&cache_path);
        let after = scan(&[share.path().to_owned()], &mut cache, &no_progress).unwrap();
        assert_eq!(after.hashed, 0);
    }

    #[cfg(unix)]
    #[test]
    fn links_are_not_followed() {
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("private"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), share.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("private"), share.path().join("p")).unwrap();
        let report = scan(
            &[share.path().to_owned()],
            &mut HashCache::in_memory(),
            &no_progress,
        )
        .unwrap();
        assert!(report.files.is_empty());
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let err = scan(
            &[PathBuf::from("/no/such/dir")],
            &mut HashCache::in_memory(),
            &no_progress,
        );
        assert!(matches!(err, Err(ShareError::NotADirectory { .. })));
    }
}
