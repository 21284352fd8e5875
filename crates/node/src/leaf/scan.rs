//! A leaf's shares: the shared folders (a list that changes while the leaf
//! runs), files shared one by one (a finished download), the scans and
//! rescans, the catalog the file server serves from, and what is published.
//!
//! Every change (a scan's result, a folder added or removed, one file
//! shared) goes through one lock, which also covers updating the catalog
//! and handing the new list to the coordinator to publish, so changes are
//! published in the order they were made. Scans run one at a time on a
//! blocking thread, holding the hash cache; sharing one file does not wait
//! for a running scan (it hashes without the cache and records the hash in
//! it afterwards). The cache stays in memory across rescans and is written
//! back when changed. Shared folders are only ever read.
//!
//! Downloads still running are published too, as partial files (a
//! `SharedFile` with `available`: the download tells how far it is), and
//! only their entry changes on each update; a whole file of the same
//! content id wins over a partial one. The download serves them itself
//! (its catalog entry is a partial one): the scans here never touch it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use canopy_proto::{ContentId, SharedFile};
use canopy_share::{HashCache, LocalFile, ShareError};
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Command, HASH_CACHE_FILE, Progress};
use crate::NodeError;

/// What is shared, for a status page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareSummary {
    /// Each shared folder, in the order added.
    pub folders: Vec<FolderSummary>,
    /// Files shared in all (folders and files shared one by one).
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// A scan is running.
    pub scanning: bool,
}

/// One shared folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderSummary {
    /// Its absolute path.
    pub path: PathBuf,
    /// Files shared from it.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// The hash cache kept in `data_dir`, or one in memory only.
pub(super) fn load_cache(data_dir: Option<&Path>) -> HashCache {
    match data_dir {
        Some(dir) => HashCache::load(&dir.join(HASH_CACHE_FILE)),
        None => HashCache::in_memory(),
    }
}

fn catalog_entry(file: &LocalFile) -> CatalogEntry {
    CatalogEntry {
        path: file.path.clone(),
        size: file.shared.size,
        tree: file.tree.clone().into(),
    }
}

fn save(cache: &mut HashCache) {
    if let Err(error) = cache.save() {
        tracing::warn!(%error, "could not save the hash cache");
    }
}

/// The list of what is shared.
#[derive(Debug, Default)]
struct State {
    /// Shared folders, canonical where they could be resolved.
    folders: Vec<PathBuf>,
    /// Files shared one by one, outside every shared folder.
    singles: BTreeSet<PathBuf>,
    /// Every file shared, by path.
    files: BTreeMap<PathBuf, LocalFile>,
    /// Counts files shared one by one.
    generation: u64,
    /// When (by `generation`) each file was shared one by one, until a
    /// scan that started later has seen it.
    shared_at: BTreeMap<PathBuf, u64>,
    /// Downloads served while they run, by content id, each as published.
    partials: BTreeMap<ContentId, SharedFile>,
}

impl State {
    fn in_folder(folders: &[PathBuf], path: &Path) -> bool {
        folders.iter().any(|folder| path.starts_with(folder))
    }

    fn summary(&self) -> ShareSummary {
        let folders = self
            .folders
            .iter()
            .map(|folder| {
                let (files, bytes) = self
                    .files
                    .values()
                    .filter(|f| f.path.starts_with(folder))
                    .fold((0, 0), |(n, b), f| (n + 1, b + f.shared.size));
                FolderSummary {
                    path: folder.clone(),
                    files,
                    bytes,
                }
            })
            .collect();
        ShareSummary {
            folders,
            files: self.files.len(),
            bytes: self.files.values().map(|f| f.shared.size).sum(),
            scanning: false,
        }
    }

    /// What is published: every whole file, and each partial one whose
    /// content no whole file has.
    fn shared(&self) -> Vec<SharedFile> {
        let mut shared: Vec<SharedFile> = self.files.values().map(|f| f.shared.clone()).collect();
        shared.extend(
            self.partials
                .values()
                .filter(|partial| !self.has_whole(&partial.content_id))
                .cloned(),
        );
        shared
    }

    /// True when a whole shared file has `id`.
    fn has_whole(&self, id: &ContentId) -> bool {
        self.files.values().any(|f| f.shared.content_id == *id)
    }

    /// True when another shared file has `id`.
    fn serves(&self, id: &ContentId, except: &Path) -> bool {
        self.files
            .values()
            .any(|f| f.shared.content_id == *id && f.path != except)
    }
}

struct Inner {
    state: Mutex<State>,
    /// Held for the length of a scan, or of hashing one file with it.
    cache: Arc<Mutex<HashCache>>,
    summary: std::sync::Mutex<ShareSummary>,
    scans_running: AtomicUsize,
    /// A background rescan is spawned and not started yet.
    rescan_waiting: AtomicBool,
    catalog: Catalog,
    commands: mpsc::Sender<Command>,
    progress: Option<Progress>,
    /// The data directory, canonical: the files directly in it (the node's
    /// key, the control API's token, the caches) are never shared, even
    /// when it lies inside a shared folder. Its subfolders (the downloads
    /// folder may be one) are shared as any other.
    private: Option<PathBuf>,
}

/// The leaf's shares. Cheap to clone.
#[derive(Clone)]
pub(super) struct Shares {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shares")
            .field("summary", &self.summary())
            .finish_non_exhaustive()
    }
}

/// Counts a scan as running while alive.
struct Scanning<'a>(&'a Inner);

impl<'a> Scanning<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.scans_running.fetch_add(1, Ordering::Relaxed);
        Self(inner)
    }
}

impl Drop for Scanning<'_> {
    fn drop(&mut self) {
        self.0.scans_running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shares {
    /// Shares of `folders`, not scanned yet, serving into `catalog` and
    /// publishing through `commands`.
    pub(super) fn new(
        folders: &[PathBuf],
        cache: HashCache,
        catalog: Catalog,
        commands: mpsc::Sender<Command>,
        progress: Option<Progress>,
        data_dir: Option<&Path>,
    ) -> Self {
        let private = data_dir.map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.to_owned()));
        let mut state = State::default();
        for folder in folders {
            let folder = folder.canonicalize().unwrap_or_else(|_| folder.clone());
            if !state.folders.contains(&folder) {
                state.folders.push(folder);
            }
        }
        Self {
            inner: Arc::new(Inner {
                summary: std::sync::Mutex::new(state.summary()),
                state: Mutex::new(state),
                cache: Arc::new(Mutex::new(cache)),
                scans_running: AtomicUsize::new(0),
                rescan_waiting: AtomicBool::new(false),
                catalog,
                commands,
                progress,
                private,
            }),
        }
    }

    /// True for a file of the data directory itself (see `Inner::private`).
    fn is_private(&self, path: &Path) -> bool {
        let real = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        self.inner
            .private
            .as_deref()
            .is_some_and(|dir| real.parent() == Some(dir))
    }

    /// What is shared now.
    pub(super) fn summary(&self) -> ShareSummary {
        let mut summary = self
            .inner
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        summary.scanning = self.inner.scans_running.load(Ordering::Relaxed) > 0;
        summary
    }

    /// The first scan, at start: every folder must be there, progress is
    /// reported, and the list is returned rather than published (no
    /// session is open yet).
    pub(super) async fn first_scan(&self) -> Result<Vec<SharedFile>, NodeError> {
        self.scan(true).await?;
        Ok(self.inner.state.lock().await.shared())
    }

    /// Starts a rescan in the background; the summary returned already
    /// says a scan is running.
    pub(super) fn rescan_in_background(
        &self,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ShareSummary {
        // One background rescan waiting to start is enough: requests that
        // come meanwhile are answered by it, not queued as more tasks.
        if self.inner.rescan_waiting.swap(true, Ordering::AcqRel) {
            return self.summary();
        }
        self.inner.scans_running.fetch_add(1, Ordering::Relaxed);
        let summary = self.summary();
        let shares = self.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                scanned = shares.rescan() => {
                    if let Err(error) = scanned {
                        tracing::warn!(%error, "rescan failed");
                    }
                }
            }
            shares.inner.scans_running.fetch_sub(1, Ordering::Relaxed);
        });
        summary
    }

    /// Scans every folder (and file shared one by one) again, serves and
    /// publishes the result. A folder no longer there is passed over.
    pub(super) async fn rescan(&self) -> Result<ShareSummary, NodeError> {
        self.scan(false).await?;
        Ok(self.summary())
    }

    async fn scan(&self, first: bool) -> Result<(), NodeError> {
        // Shown as scanning while waiting for a scan before this one too.
        let _scanning = Scanning::new(&self.inner);
        let mut cache = self.inner.cache.clone().lock_owned().await;
        // A scan starting now answers every rescan asked for so far; one
        // asked for from here on needs a scan of its own.
        self.inner.rescan_waiting.store(false, Ordering::Release);
        let (folders, singles, generation) = {
            let state = self.inner.state.lock().await;
            let singles: Vec<PathBuf> = state.singles.iter().cloned().collect();
            (state.folders.clone(), singles, state.generation)
        };
        let progress = self.inner.progress.clone().filter(|_| first);
        let scanned_folders = folders.clone();
        let (report, cache_back) = tokio::task::spawn_blocking(move || {
            let report = canopy_share::scan_with(&folders, &singles, &mut cache, &|bytes| {
                if let Some(progress) = &progress {
                    progress(bytes);
                }
            });
            save(&mut cache);
            (report, cache)
        })
        .await
        .map_err(|_| NodeError::Stopped)?;
        drop(cache_back);
        let report = report?;
        if first {
            if let Some(path) = report
                .missing
                .iter()
                .find(|path| scanned_folders.contains(path))
            {
                return Err(ShareError::NotADirectory { path: path.clone() }.into());
            }
        }
        tracing::info!(
            files = report.files.len(),
            hashed = report.hashed,
            hashed_bytes = report.hashed_bytes,
            skipped = report.skipped,
            "shares scanned"
        );
        let mut state = self.inner.state.lock().await;
        let State {
            folders,
            singles,
            files,
            shared_at,
            ..
        } = &mut *state;
        for gone in &report.missing {
            singles.remove(gone);
        }
        // The list may have changed while the scan ran: keep what is still
        // shared, and the files shared one by one since the scan started
        // (it may have walked past them).
        let mut fresh: BTreeMap<PathBuf, LocalFile> = report
            .files
            .into_iter()
            .filter(|f| State::in_folder(folders, &f.path) || singles.contains(&f.path))
            .filter(|f| !self.is_private(&f.path))
            .map(|f| (f.path.clone(), f))
            .collect();
        for (path, file) in std::mem::take(files) {
            let shared_meanwhile = shared_at.get(&path).is_some_and(|at| *at > generation);
            let still_shared = State::in_folder(folders, &path) || singles.contains(&path);
            if shared_meanwhile && still_shared && !fresh.contains_key(&path) {
                fresh.insert(path, file);
            }
        }
        shared_at.retain(|_, at| *at > generation);
        *files = fresh;
        self.inner.catalog.replace(
            files
                .values()
                .map(|f| (f.shared.content_id, catalog_entry(f))),
        );
        self.publish(&state, !first).await;
        Ok(())
    }

    /// Updates the summary and, if `publish`, hands the list to the
    /// coordinator (under the state lock, so in order).
    async fn publish(&self, state: &State, publish: bool) {
        *self
            .inner
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = state.summary();
        if publish {
            // Fails only when the leaf has stopped.
            let _ = self
                .inner
                .commands
                .send(Command::Shares(state.shared()))
                .await;
        }
    }

    /// Shares `folder` too (scanning it before returning).
    pub(super) async fn add(&self, folder: PathBuf) -> Result<ShareSummary, NodeError> {
        let not_a_folder = || ShareError::NotADirectory {
            path: folder.clone(),
        };
        let canonical = tokio::fs::canonicalize(&folder)
            .await
            .map_err(|_| not_a_folder())?;
        if !tokio::fs::metadata(&canonical)
            .await
            .is_ok_and(|meta| meta.is_dir())
        {
            return Err(not_a_folder().into());
        }
        {
            let mut state = self.inner.state.lock().await;
            if state.folders.contains(&canonical) {
                return Ok(self.summary());
            }
            tracing::info!(folder = %canonical.display(), "sharing a folder");
            state.folders.push(canonical);
        }
        self.rescan().await
    }

    /// Stops sharing `folder` (at once: nothing to scan).
    pub(super) async fn remove(&self, folder: PathBuf) -> Result<ShareSummary, NodeError> {
        let canonical = tokio::fs::canonicalize(&folder)
            .await
            .unwrap_or_else(|_| folder.clone());
        let mut state = self.inner.state.lock().await;
        let before = state.folders.len();
        state.folders.retain(|f| *f != canonical && *f != folder);
        if state.folders.len() == before {
            return Err(NodeError::NotShared(folder));
        }
        tracing::info!(folder = %canonical.display(), "no longer sharing a folder");
        let State {
            folders,
            singles,
            files,
            ..
        } = &mut *state;
        files.retain(|path, _| State::in_folder(folders, path) || singles.contains(path));
        self.inner.catalog.replace(
            files
                .values()
                .map(|f| (f.shared.content_id, catalog_entry(f))),
        );
        self.publish(&state, true).await;
        drop(state);
        Ok(self.summary())
    }

    /// Hashes the file at `path` (from the cache if it has it), serves it
    /// and publishes it, without waiting for a rescan.
    pub(super) async fn share_file(&self, path: PathBuf) -> Result<(), NodeError> {
        let io = |source| ShareError::Io {
            path: path.clone(),
            source,
        };
        // A link is not followed: only the file a download wrote is shared.
        let meta = tokio::fs::symlink_metadata(&path).await.map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ))
            .into());
        }
        let path = tokio::fs::canonicalize(&path).await.map_err(io)?;
        if self.is_private(&path) {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "a file of the leaf's own data directory is never shared",
            ))
            .into());
        }
        let file = match self.inner.cache.clone().try_lock_owned() {
            Ok(mut cache) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let file = canopy_share::scan_file(&path, &mut cache);
                    save(&mut cache);
                    file
                })
                .await
                .map_err(|_| NodeError::Stopped)??
            }
            // A scan holds the cache: hash without it, and record the hash
            // in it once the scan is done, so the next scan finds it.
            Err(_) => {
                let hashed = path.clone();
                let (file, modified) = tokio::task::spawn_blocking(move || {
                    let modified = std::fs::metadata(&hashed).and_then(|m| m.modified());
                    let file = canopy_share::scan_file(&hashed, &mut HashCache::in_memory());
                    (file, modified)
                })
                .await
                .map_err(|_| NodeError::Stopped)?;
                let file = file?;
                if let Ok(modified) = modified {
                    let cache = self.inner.cache.clone();
                    let (path, size) = (file.path.clone(), file.shared.size);
                    let hash = canopy_share::FileHash {
                        id: file.shared.content_id,
                        tree: file.tree.clone(),
                    };
                    tokio::spawn(async move {
                        let mut cache = cache.lock().await;
                        cache.insert(path, size, modified, &hash);
                    });
                }
                file
            }
        };
        let mut state = self.inner.state.lock().await;
        if !State::in_folder(&state.folders, &path) {
            state.singles.insert(path.clone());
        }
        state.generation += 1;
        let generation = state.generation;
        state.shared_at.insert(path.clone(), generation);
        let id = file.shared.content_id;
        self.inner.catalog.insert(id, catalog_entry(&file));
        tracing::info!(file = %path.display(), content_id = %id, "sharing a file");
        if let Some(old) = state.files.insert(path.clone(), file) {
            let old_id = old.shared.content_id;
            if old_id != id && !state.serves(&old_id, &path) {
                self.inner.catalog.remove(&old_id);
            }
        }
        self.publish(&state, true).await;
        Ok(())
    }

    /// Publishes (or updates) `file`, a download still running, as a
    /// partial file: `available` is set (0 if not given) and at most the
    /// size. Published only when it changed and no whole file of the same
    /// content is shared.
    pub(super) async fn share_partial(&self, mut file: SharedFile) {
        if !canopy_proto::is_valid_file_name(&file.name) {
            // A supernode would refuse the whole message it went in.
            tracing::warn!(name = ?file.name, "not publishing a partial file under an invalid name");
            return;
        }
        file.available = Some(file.available.unwrap_or(0).min(file.size));
        let mut state = self.inner.state.lock().await;
        let id = file.content_id;
        if state.partials.get(&id) == Some(&file) {
            return;
        }
        let shadowed = state.has_whole(&id);
        state.partials.insert(id, file);
        if !shadowed {
            self.publish(&state, true).await;
        }
    }

    /// Stops publishing the partial file of `id` (the download ended). A
    /// whole file of the same content stays shared.
    pub(super) async fn unshare_partial(&self, id: &ContentId) {
        let mut state = self.inner.state.lock().await;
        if state.partials.remove(id).is_some() && !state.has_whole(id) {
            self.publish(&state, true).await;
        }
    }
}

/// Rescans every `interval` until `shutdown`, whatever the folders are then.
pub(super) async fn rescan_loop(shares: Shares, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = shares.rescan().await {
            tracing::warn!(%error, "rescan failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares() -> (Shares, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(64);
        let shares = Shares::new(&[], HashCache::in_memory(), Catalog::new(), tx, None, None);
        (shares, rx)
    }

    /// The names in the next list handed over for publishing.
    async fn published(rx: &mut mpsc::Receiver<Command>) -> Vec<String> {
        match rx.recv().await {
            Some(Command::Shares(files)) => files.into_iter().map(|f| f.name).collect(),
            other => panic!("expected a list to publish, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rescans_asked_for_while_one_waits_are_answered_by_it() {
        let (shares, _rx) = shares();
        // Hold the cache as a running scan would: nothing can start.
        let held = shares.inner.cache.clone().lock_owned().await;
        let tracker = TaskTracker::new();
        for _ in 0..50 {
            assert!(
                shares
                    .rescan_in_background(&tracker, CancellationToken::new())
                    .scanning
            );
        }
        assert_eq!(tracker.len(), 1, "one waiting rescan, not fifty");
        drop(held);
        tracker.close();
        tracker.wait().await;
        // Once it has started, the next request gets a scan of its own.
        let _ = shares.rescan_in_background(&tracker, CancellationToken::new());
        assert_eq!(tracker.len(), 1);
    }

    #[tokio::test]
    async fn scanning_shows_while_a_scan_waits_or_runs() {
        let (shares, _rx) = shares();
        // Hold the cache as a running scan would.
        let held = shares.inner.cache.clone().lock_owned().await;
        let rescan = tokio::spawn({
            let shares = shares.clone();
            async move { shares.rescan().await }
        });
        while !shares.summary().scanning {
            tokio::task::yield_now().await;
        }
        drop(held);
        let summary = rescan.await.unwrap().unwrap();
        assert!(!summary.scanning);
        assert!(!shares.summary().scanning);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_shared_while_a_scan_runs_is_kept_and_cached_after() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("early.txt"), b"early").unwrap();
        // The scan's progress (called once it has walked the folder and is
        // hashing) says so, then waits for the test to go on.
        let (walked_tx, walked_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let pause = std::sync::Mutex::new(Some((walked_tx, go_rx)));
        let progress: Progress = Arc::new(move |_| {
            if let Some((walked, go)) = pause.lock().unwrap().take() {
                walked.send(()).unwrap();
                go.recv().unwrap();
            }
        });
        let (tx, mut rx) = mpsc::channel(64);
        let shares = Shares::new(
            &[folder.path().to_owned()],
            HashCache::in_memory(),
            Catalog::new(),
            tx,
            Some(progress),
            None,
        );
        let scan = tokio::spawn({
            let shares = shares.clone();
            async move { shares.first_scan().await }
        });
        tokio::task::spawn_blocking(move || walked_rx.recv().unwrap())
            .await
            .unwrap();
        assert!(shares.summary().scanning);
        // A download lands in the folder the scan has already walked.
        let late = folder.path().join("late.txt");
        std::fs::write(&late, b"late").unwrap();
        let sharing = shares.share_file(late);
        tokio::time::timeout(Duration::from_secs(10), sharing)
            .await
            .expect("share_file waited for the scan")
            .unwrap();
        assert_eq!(published(&mut rx).await, ["late.txt"]);
        go_tx.send(()).unwrap();
        let files = scan.await.unwrap().unwrap();
        // The scan missed late.txt, but does not drop it.
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["early.txt", "late.txt"]);
        assert_eq!(shares.inner.catalog.len(), 2);
        // And its hash went into the cache once the scan let go of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shares.inner.cache.lock().await.len() < 2 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
    }

    /// The next list handed over for publishing: (name, available) each.
    async fn published_files(rx: &mut mpsc::Receiver<Command>) -> Vec<(String, Option<u64>)> {
        match rx.recv().await {
            Some(Command::Shares(files)) => {
                files.into_iter().map(|f| (f.name, f.available)).collect()
            }
            other => panic!("expected a list to publish, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn partial_files_are_published_when_changed_and_a_whole_one_wins() {
        let (shares, mut rx) = shares();
        let folder = tempfile::tempdir().unwrap();
        let whole = folder.path().join("whole.txt");
        std::fs::write(&whole, b"whole").unwrap();
        let whole_id = ContentId(*blake3::hash(b"whole").as_bytes());
        let partial = |id: ContentId, name: &str, available| SharedFile {
            content_id: id,
            name: name.into(),
            size: 100,
            available,
        };
        let other = ContentId([9; 32]);
        shares.share_partial(partial(other, "film.mkv", None)).await;
        assert_eq!(
            published_files(&mut rx).await,
            [("film.mkv".into(), Some(0))]
        );
        shares
            .share_partial(partial(other, "film.mkv", Some(0)))
            .await;
        shares
            .share_partial(partial(other, "film.mkv", Some(500)))
            .await;
        assert_eq!(
            published_files(&mut rx).await,
            [("film.mkv".into(), Some(100))],
            "unchanged is not published again; at most the size"
        );
        // A partial of what is already shared whole publishes nothing.
        shares.share_file(whole.clone()).await.unwrap();
        let mut list = published_files(&mut rx).await;
        list.sort();
        assert_eq!(
            list,
            [("film.mkv".into(), Some(100)), ("whole.txt".into(), None)]
        );
        shares
            .share_partial(partial(whole_id, "whole.txt", Some(1)))
            .await;
        shares.unshare_partial(&whole_id).await;
        // Unsharing a partial publishes the list without it.
        shares.unshare_partial(&other).await;
        assert_eq!(published_files(&mut rx).await, [("whole.txt".into(), None)]);
        shares.unshare_partial(&other).await;
        shares
            .share_partial(partial(other, "bad/name", Some(1)))
            .await;
        assert!(rx.try_recv().is_err(), "nothing else was published");
        assert_eq!(shares.summary().files, 1, "partial files are not counted");
    }

    #[tokio::test]
    async fn changes_are_published_in_order() {
        let (shares, mut rx) = shares();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(a.path().join("one.txt"), b"1").unwrap();
        std::fs::write(b.path().join("two.txt"), b"2").unwrap();
        shares.add(a.path().to_owned()).await.unwrap();
        shares.add(b.path().to_owned()).await.unwrap();
        shares.remove(a.path().to_owned()).await.unwrap();
        assert_eq!(published(&mut rx).await, ["one.txt"]);
        assert_eq!(published(&mut rx).await.len(), 2);
        assert_eq!(published(&mut rx).await, ["two.txt"]);
        let summary = shares.summary();
        assert_eq!(summary.folders.len(), 1);
        assert_eq!((summary.files, summary.bytes), (1, 1));

        // A rescan in the background says so at once, and publishes.
        let tracker = TaskTracker::new();
        let started = shares.rescan_in_background(&tracker, CancellationToken::new());
        assert!(started.scanning);
        assert_eq!(published(&mut rx).await, ["two.txt"]);
        tracker.close();
        tracker.wait().await;
        assert!(!shares.summary().scanning);
    }
}
