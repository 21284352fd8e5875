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
    /// Folders, and files given one by one, that were not there (or not
    /// of their kind) when [`scan_with`] looked.
    pub missing: Vec<PathBuf>,
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

/// A file given by path (not found in a folder): shared if it is a regular
/// file (not a link) with a name the protocol can carry.
fn single_candidate(path: &Path, skipped: &mut usize) -> Option<Candidate> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    let Some(name) = name.filter(|n| is_valid_file_name(n)) else {
        tracing::warn!(path = %path.display(), "skipping: name can't be shared");
        *skipped += 1;
        return None;
    };
    Some(Candidate {
        path: path.to_owned(),
        name,
        size: meta.len(),
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

/// Scans `dirs`, hashing what the cache does not cover. `progress` is
/// called with the bytes of each file as it finishes hashing. Every folder
/// must be there.
pub fn scan(
    dirs: &[PathBuf],
    cache: &mut HashCache,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ScanReport, ShareError> {
    let report = scan_with(dirs, &[], cache, progress)?;
    match report.missing.first() {
        Some(path) => Err(ShareError::NotADirectory { path: path.clone() }),
        None => Ok(report),
    }
}

/// Scans `dirs` and the single `files` (absolute paths) together, as
/// [`scan`] does, but passes over (into [`ScanReport::missing`]) a folder
/// or file that is not there: a folder deleted while shared does not stop
/// the others being served. A file found twice is listed once.
pub fn scan_with(
    dirs: &[PathBuf],
    files: &[PathBuf],
    cache: &mut HashCache,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ScanReport, ShareError> {
    let mut report = ScanReport::default();
    let mut all = Vec::new();
    for dir in dirs {
        match candidates(dir, &mut report.skipped) {
            Ok(found) => all.extend(found),
            Err(ShareError::NotADirectory { path }) => {
                tracing::warn!(path = %path.display(), "shared folder missing; passed over");
                report.missing.push(path);
            }
            Err(error) => return Err(error),
        }
    }
    for file in files {
        match single_candidate(file, &mut report.skipped) {
            Some(candidate) => all.push(candidate),
            None => report.missing.push(file.clone()),
        }
    }
    let mut seen = HashSet::new();
    all.retain(|c| seen.insert(c.path.clone()));
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

/// Hashes (or finds in `cache`) the one file at `path`, a regular file
/// with a name the protocol can carry, and records it in `cache`.
pub fn scan_file(path: &Path, cache: &mut HashCache) -> Result<LocalFile, ShareError> {
    let io = |source| ShareError::Io {
        path: path.to_owned(),
        source,
    };
    let mut skipped = 0;
    let candidate = single_candidate(path, &mut skipped).ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            if skipped > 0 {
                "its name can't be shared"
            } else {
                "not a regular file"
            },
        ))
    })?;
    let hash = match cache.get(&candidate.path, candidate.size, candidate.modified) {
        Some(hash) => hash,
        None => {
            let hash = hash_file_with_tree(&candidate.path).map_err(io)?;
            cache.insert(
                candidate.path.clone(),
                candidate.size,
                candidate.modified,
                &hash,
            );
            hash
        }
    };
    Ok(local_file(candidate, hash))
}

fn local_file(candidate: Candidate, hash: FileHash) -> LocalFile {
    LocalFile {
        path: candidate.path,
        shared: SharedFile {
            content_id: hash.id,
            name: candidate.name,
            size: candidate.size,
            available: None,
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

    #[test]
    fn folders_and_single_files_together_missing_ones_passed_over() {
        let share = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(share.path().join("a.txt"), b"alpha").unwrap();
        std::fs::write(elsewhere.path().join("got.bin"), b"downloaded").unwrap();
        let single = elsewhere.path().join("got.bin").canonicalize().unwrap();
        let inside = share.path().canonicalize().unwrap().join("a.txt");
        let gone = PathBuf::from("/no/such/dir");
        let mut cache = HashCache::in_memory();
        let report = scan_with(
            &[share.path().to_owned(), gone.clone()],
            // A file also inside a folder is listed once.
            &[
                single.clone(),
                inside.clone(),
                elsewhere.path().join("none"),
            ],
            &mut cache,
            &no_progress,
        )
        .unwrap();
        let paths: Vec<&Path> = report.files.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(paths.contains(&inside.as_path()) && paths.contains(&single.as_path()));
        assert_eq!(report.missing, vec![gone, elsewhere.path().join("none")]);
        // The single file's hash stays cached across the next scan.
        let again =
            scan_with(&[], std::slice::from_ref(&single), &mut cache, &no_progress).unwrap();
        assert_eq!(again.hashed, 0);
    }

    #[test]
    fn one_file_hashed_then_found_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("song.ogg");
        std::fs::write(&path, b"la la").unwrap();
        let mut cache = HashCache::in_memory();
        let file = scan_file(&path, &mut cache).unwrap();
        assert_eq!(file.shared.name, "song.ogg");
        assert_eq!(file.shared.content_id.0, *blake3::hash(b"la la").as_bytes());
        assert_eq!(cache.len(), 1);
        assert_eq!(scan_file(&path, &mut cache).unwrap(), file);
        assert!(
            scan_file(dir.path(), &mut cache).is_err(),
            "a folder is not a file"
        );
        assert!(scan_file(&dir.path().join("none"), &mut cache).is_err());
    }
}
