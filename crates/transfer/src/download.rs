//! Verified multi-source download of one file.
//!
//! The [`canopy_core::download::DownloadPlan`] decides which groups to ask
//! which source for; this module carries it out. Each request runs in its
//! own task: it streams the range, and for every complete 1 MiB group it
//! verifies the bytes against the tree and writes them at their offset,
//! verifying group N while it receives group N + 1. Nothing unverified is
//! ever written.
//!
//! The tree is asked of several sources at once (four, then one more each
//! half second or failure, at most 16 in flight); the first that merges
//! into the id wins, so dead sources cost no more than one wait together.
//!
//! Files on disk, beside the target `dir/name`, named by content id so they
//! never take a user's name:
//! - `dir/.canopy-<id>.partial`: the data, written in place;
//! - `dir/.canopy-<id>.state`: the content id, size and verified tree.
//!
//! Neither is ever followed through a link (`O_NOFOLLOW`), nor taken over
//! if it is not this download's: a partial file with no state for this id
//! beside it, or a state file that is not a state for this id, stops the
//! download with an error instead of being overwritten. The state is
//! written to a fresh temporary file (created exclusively) and renamed into
//! place; a rename replaces a link, never follows it.
//!
//! Sources may arrive while the download runs ([`download_live`]): it
//! starts on the first (the tree, then data) and takes each later one into
//! the plan as it comes; with every source dropped it waits a while for a
//! new one before giving up. A [`CancellationToken`] stops it at once,
//! keeping the partial and state files (a pause: the next run resumes).
//! One download of an id into a folder at a time: see [`crate::partial_lock`].
//!
//! When every group is verified the partial file is synced and moved to the
//! target without replacing anything there (a hard link, which fails if the
//! name exists, then the partial is removed; `--force` renames over it),
//! and the state removed. If the download is interrupted (Ctrl-C,
//! `kill -9`, power loss), the next run finds the state, checks every group
//! already in the partial file against the tree, keeps those that verify,
//! and fetches only the rest.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canopy_core::Time;
use canopy_core::download::{DownloadConfig, DownloadEvent, DownloadPlan, Request, SourceId};
use canopy_core::tree::{
    MAX_DOWNLOAD_SIZE, VerifiedTree, group_count, group_len, group_range, group_slot,
};
use canopy_proto::ContentId;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::client::{Connector, HttpConn, read_limited};
use crate::partial_lock::{LockError, PartialLock};

/// A place to get the file from.
#[derive(Debug, Clone)]
pub struct DownloadSource {
    /// How it is named in reports: its address.
    pub label: String,
    /// How to reach it.
    pub connector: Arc<dyn Connector>,
}

/// Where a download stands, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes verified and on disk.
    pub verified_bytes: u64,
    /// The file's size.
    pub total: u64,
    /// Sources with a request in flight.
    pub active_sources: usize,
    /// Sources heard of so far, failed ones included.
    pub known_sources: usize,
    /// When the first verified byte of this run landed, from its start.
    pub first_byte: Option<Duration>,
}

/// Called as the download advances.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What to download, and where to.
#[derive(Clone)]
pub struct DownloadOptions {
    /// The content.
    pub content_id: ContentId,
    /// Its size, as the hits said (the tree check catches a lie).
    pub size: u64,
    /// The file to create.
    pub target: PathBuf,
    /// Replace the target if it exists.
    pub force: bool,
    /// Request sizes, parallelism, stall timeout.
    pub config: DownloadConfig,
    /// Progress reports.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for DownloadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("content_id", &self.content_id)
            .field("size", &self.size)
            .field("target", &self.target)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

/// How one source did.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Its address.
    pub source: String,
    /// Verified bytes it delivered in this run.
    pub bytes: u64,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    /// Where the file is now.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Bytes found verified on disk from an earlier run.
    pub resumed_bytes: u64,
    /// Every source, in the order given.
    pub sources: Vec<SourceReport>,
    /// How long this run took.
    pub elapsed: Duration,
    /// How long after its start this run verified its first byte (`None`
    /// if everything was on disk already).
    pub first_byte: Option<Duration>,
    /// The file was at the target already (nothing downloaded).
    pub already_present: bool,
}

impl DownloadReport {
    /// Sources that delivered verified bytes in this run.
    pub fn sources_used(&self) -> usize {
        self.sources.iter().filter(|s| s.bytes > 0).count()
    }

    /// Verified bytes by source address.
    pub fn bytes_per_source(&self) -> BTreeMap<String, u64> {
        self.sources
            .iter()
            .map(|s| (s.source.clone(), s.bytes))
            .collect()
    }

    /// Why each dropped source was dropped, by address.
    pub fn dropped_sources(&self) -> BTreeMap<String, String> {
        self.sources
            .iter()
            .filter_map(|s| Some((s.source.clone(), s.dropped.clone()?)))
            .collect()
    }
}

/// Why a download did not complete. The partial state is kept for a
/// later run unless the error says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The target exists and `force` was not given.
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    /// The target has no file name.
    #[error("{0} is not a file path")]
    BadTarget(PathBuf),
    /// Nowhere to get it from.
    #[error("no source has this content")]
    NoSources,
    /// A temporary file's name is taken by something that is not this
    /// download's (a link, or another file); it is left alone.
    #[error("{0} exists and is not this download's; move it away to download here")]
    NotOurs(PathBuf),
    /// The claimed size is beyond what Canopy downloads.
    #[error("the sources claim {0} bytes, over the 1 TiB limit")]
    TooLarge(u64),
    /// Every source failed; the reasons, one per source.
    #[error("every source failed:\n{0}")]
    AllSourcesFailed(String),
    /// Stopped by its cancellation token; the partial and state files are
    /// kept, so the next run resumes.
    #[error("download paused; run it again to resume")]
    Cancelled,
    /// Another download of this content into this folder is running.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// Reading or writing local files failed (disk full, permissions...).
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    content_id: String,
    size: u64,
    tree: String,
}

struct Paths {
    target: PathBuf,
    partial: PathBuf,
    state: PathBuf,
}

impl Paths {
    fn new(target: &Path, id: ContentId) -> Result<Self, DownloadError> {
        if target.file_name().is_none() {
            return Err(DownloadError::BadTarget(target.to_owned()));
        }
        let dir = target.parent().unwrap_or(Path::new("."));
        Ok(Self {
            target: target.to_owned(),
            partial: dir.join(partial_name(id)),
            state: dir.join(state_name(id)),
        })
    }
}

/// The partial file's name for content `id`.
pub fn partial_name(id: ContentId) -> String {
    format!(".canopy-{id}.partial")
}

/// The state file's name for content `id`.
pub fn state_name(id: ContentId) -> String {
    format!(".canopy-{id}.state")
}

/// Largest state file read: the hex of a 1 TiB file's tree, and change.
const MAX_STATE_BYTES: u64 = (64 << 20) + 4096;

/// Opens `path` without following a link in its last component.
fn no_follow() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW);
    options
}

/// True if something (a file, a link, even a dangling one) is at `path`.
fn something_at(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The state at `paths.state`: `None` if there is none, the saved state
/// if it is this download's, and [`DownloadError::NotOurs`] for anything
/// else (a link, a directory, a file that is not a state for `id`).
fn read_state(path: &Path, id: ContentId) -> Result<Option<SavedState>, DownloadError> {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path)(error)),
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(DownloadError::NotOurs(path.to_owned()));
        }
        Ok(_) => {}
    }
    let not_ours = || DownloadError::NotOurs(path.to_owned());
    let file = no_follow().read(true).open(path).map_err(|_| not_ours())?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_STATE_BYTES), &mut text)
        .map_err(io_error(path))?;
    let saved: SavedState = serde_json::from_slice(&text).map_err(|_| not_ours())?;
    if saved.content_id != id.to_hex() {
        return Err(not_ours());
    }
    Ok(Some(saved))
}

/// Checks the groups of an existing partial file against `tree`, on every
/// core; returns those that verify.
fn verified_on_disk(partial: &Path, tree: &VerifiedTree) -> Vec<u64> {
    let Ok(file) = no_follow().read(true).open(partial) else {
        return Vec::new();
    };
    let size = tree.size();
    (0..group_count(size))
        .into_par_iter()
        .filter(|&index| {
            let range = group_range(size, index);
            let mut buffer = vec![0u8; group_len(size, index)];
            file.read_exact_at(&mut buffer, range.start).is_ok()
                && tree.verify_group(index, &buffer).is_ok()
        })
        .collect()
}

/// The tree and verified groups of an earlier, interrupted run, if its
/// state is for this id and size.
async fn resume(
    paths: &Paths,
    saved: Option<SavedState>,
    id: ContentId,
    size: u64,
) -> Option<(VerifiedTree, Vec<u64>)> {
    let saved = saved.filter(|saved| saved.size == size)?;
    let tree = VerifiedTree::from_bytes(id, size, &hex::decode(saved.tree).ok()?).ok()?;
    let partial = paths.partial.clone();
    let check = tree.clone();
    let groups = tokio::task::spawn_blocking(move || verified_on_disk(&partial, &check))
        .await
        .ok()?;
    Some((tree, groups))
}

async fn save_state(
    paths: &Paths,
    id: ContentId,
    size: u64,
    tree_bytes: &[u8],
) -> Result<(), DownloadError> {
    let state = SavedState {
        content_id: id.to_hex(),
        size,
        tree: hex::encode(tree_bytes),
    };
    let bytes = serde_json::to_vec(&state).map_err(|e| io_error(&paths.state)(e.into()))?;
    let state = paths.state.clone();
    tokio::task::spawn_blocking(move || {
        // A name no one else has: created exclusively, never through a link.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut temporary = state.clone().into_os_string();
        temporary.push(format!(".{}-{nanos}.tmp", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let written = no_follow()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io_error(&temporary)(error));
        }
        std::fs::rename(&temporary, &state).map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            io_error(&state)(error)
        })
    })
    .await
    .map_err(|_| io_error(&paths.state)(std::io::Error::other("state task failed")))?
}

/// Moves the complete partial file to the target. Without `force`, never
/// over anything already there (a hard link fails if the name is taken);
/// with it, a rename, which replaces a link rather than following it.
fn move_into_place(paths: &Paths, force: bool) -> Result<(), DownloadError> {
    if force {
        return std::fs::rename(&paths.partial, &paths.target).map_err(io_error(&paths.target));
    }
    match std::fs::hard_link(&paths.partial, &paths.target) {
        Ok(()) => {
            let _ = std::fs::remove_file(&paths.partial);
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(DownloadError::Exists(paths.target.clone()))
        }
        // A file system without hard links: check, then rename.
        Err(_) if something_at(&paths.target) => Err(DownloadError::Exists(paths.target.clone())),
        Err(_) => std::fs::rename(&paths.partial, &paths.target).map_err(io_error(&paths.target)),
    }
}

/// Tree requests started at once.
const TREE_FETCHES_AT_ONCE: usize = 4;
/// Most tree requests in flight.
const MAX_TREE_FETCHES: usize = 16;
/// Without an answer for this long, one more source is asked.
const TREE_HEDGE: Duration = Duration::from_millis(500);
/// A tree request that has not finished in this long has failed.
const TREE_TIMEOUT: Duration = Duration::from_secs(15);

/// Asks one source for the tree; `Err` says why it failed.
async fn tree_from(
    source: DownloadSource,
    id: ContentId,
    size: u64,
    expected: usize,
) -> Result<(VerifiedTree, Vec<u8>), String> {
    let attempt = async {
        let stream = source.connector.connect().await?;
        let mut conn = HttpConn::handshake(stream).await?;
        let response = conn.get(&format!("/tree/{id}"), None).await?;
        if response.status() != StatusCode::OK {
            return Ok(Err(format!("tree request answered {}", response.status())));
        }
        let bytes = read_limited(response.into_body(), expected).await?;
        Ok::<_, crate::client::ClientError>(
            VerifiedTree::from_bytes(id, size, &bytes)
                .map(|tree| (tree, bytes.to_vec()))
                .map_err(|e| format!("bad tree: {e}")),
        )
    };
    match tokio::time::timeout(TREE_TIMEOUT, attempt).await {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("tree request timed out".to_owned()),
    }
}

/// Asks sources for the tree, several at once (see the module docs), until
/// one gives a tree that verifies; takes in sources as they arrive. Returns
/// the tree and its bytes; records the sources that failed. Requests still
/// running when a tree verifies are dropped, and their sources stay usable.
async fn fetch_tree(
    sources: &mut SourceSet,
    id: ContentId,
    size: u64,
    failed: &mut HashMap<usize, String>,
    control: &DownloadControl,
) -> Result<(VerifiedTree, Vec<u8>), DownloadError> {
    let cancel = &control.cancel;
    if group_count(size) == 1 {
        // Nothing to fetch: the single group is checked against the id.
        return VerifiedTree::from_bytes(id, size, &[])
            .map(|tree| (tree, Vec::new()))
            .map_err(|e| DownloadError::AllSourcesFailed(e.to_string()));
    }
    let expected = group_slot(group_count(size)).saturating_mul(32);
    let mut running = JoinSet::new();
    let mut next = 0;
    let start = |list: &[DownloadSource], running: &mut JoinSet<_>, next: &mut usize| {
        if *next < list.len() && running.len() < MAX_TREE_FETCHES {
            let (index, source) = (*next, list[*next].clone());
            running.spawn(async move { (index, tree_from(source, id, size, expected).await) });
            *next += 1;
        }
    };
    for _ in 0..TREE_FETCHES_AT_ONCE {
        start(&sources.list, &mut running, &mut next);
    }
    let mut hedge = tokio::time::interval_at(tokio::time::Instant::now() + TREE_HEDGE, TREE_HEDGE);
    // Since when nothing is running and no source is left to ask.
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        if running.is_empty() {
            start(&sources.list, &mut running, &mut next);
        }
        if !running.is_empty() {
            idle_since = None;
        } else if !sources.is_open() {
            break;
        } else if idle_since.is_none() {
            idle_since = Some(tokio::time::Instant::now());
            control.starve();
        }
        let give_up = idle_since.map(|since| since + NEW_SOURCE_WAIT);
        tokio::select! {
            () = cancel.cancelled() => return Err(DownloadError::Cancelled),
            joined = running.join_next(), if !running.is_empty() => {
                let Some(Ok((index, outcome))) = joined else { continue };
                match outcome {
                    Ok(found) => return Ok(found),
                    Err(reason) => {
                        tracing::warn!(source = %sources.list[index].label, %reason, "dropping source");
                        failed.insert(index, reason);
                        start(&sources.list, &mut running, &mut next);
                    }
                }
            }
            arrived = sources.arrival(), if sources.is_open() => {
                if arrived.is_some() && running.len() < TREE_FETCHES_AT_ONCE {
                    start(&sources.list, &mut running, &mut next);
                }
            }
            _ = hedge.tick() => start(&sources.list, &mut running, &mut next),
            () = sleep_until_some(give_up) => break,
        }
    }
    Err(DownloadError::AllSourcesFailed(
        failed.values().cloned().collect::<Vec<_>>().join("\n"),
    ))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Most sources one download takes; later ones are ignored.
pub const MAX_SOURCES: usize = 64;
/// With every source failed, how long to wait for a new one to arrive
/// before giving up (while more may come).
const NEW_SOURCE_WAIT: Duration = Duration::from_secs(30);

/// The sources heard of so far, and the feed more arrive on.
struct SourceSet {
    list: Vec<DownloadSource>,
    feed: Option<mpsc::Receiver<DownloadSource>>,
}

impl SourceSet {
    /// More sources may still come.
    fn is_open(&self) -> bool {
        self.feed.is_some()
    }

    /// Waits for the next source; returns its index, or `None` once the
    /// feed is closed (or the download has all the sources it takes).
    async fn arrival(&mut self) -> Option<usize> {
        let feed = self.feed.as_mut()?;
        match feed.recv().await {
            Some(source) if self.list.len() < MAX_SOURCES => {
                tracing::debug!(source = %source.label, "new source");
                self.list.push(source);
                Some(self.list.len() - 1)
            }
            _ => {
                self.feed = None;
                None
            }
        }
    }
}

/// What else steers a download besides its options.
#[derive(Debug, Default)]
pub struct DownloadControl {
    /// Stops the download, keeping its partial and state files.
    pub cancel: CancellationToken,
    /// The lock for this id in the target's folder, if the caller took it
    /// already (to fail before searching); taken here otherwise.
    pub lock: Option<PartialLock>,
    /// Notified each time every known source has failed while the feed is
    /// open: the moment to look for more (or close the feed to give up).
    pub starving: Option<Arc<tokio::sync::Notify>>,
}

impl DownloadControl {
    fn starve(&self) {
        if let Some(starving) = &self.starving {
            starving.notify_one();
        }
    }
}

enum WorkerEvent {
    /// Bytes arrived, a group not complete yet (sent at most once a
    /// [`DATA_NOTICE_INTERVAL`]).
    Receiving {
        request: u64,
    },
    Verified {
        request: u64,
        group: u64,
    },
    Bad {
        request: u64,
        group: u64,
    },
    Done {
        request: u64,
        conn: Option<HttpConn>,
    },
    Failed {
        request: u64,
        reason: String,
    },
    Busy {
        request: u64,
        retry_after: Duration,
    },
    Disk(std::io::Error),
}

/// How often a request says its bytes are still coming, so a slow source
/// (a 1 MiB group taking longer than the stall timeout) is not taken for
/// a stalled one.
const DATA_NOTICE_INTERVAL: Duration = Duration::from_millis(250);

struct Worker {
    request: Request,
    conn: Option<HttpConn>,
    connector: Arc<dyn Connector>,
    tree: Arc<VerifiedTree>,
    writer: DiskWriter,
    id: ContentId,
    events: mpsc::Sender<WorkerEvent>,
}

/// Writes verified groups to the partial file from one thread. Concurrent
/// writes to one file contend on its inode lock; profiled on a 1 GiB
/// download, one writer thread was markedly faster than one per request.
///
/// The file is synced before it is renamed into place, so a power cut can
/// never leave unwritten (unverified) blocks under the final name. Syncing
/// a GiB at the end costs about half a second, so a second thread syncs in
/// the background every [`BACKGROUND_SYNC_BYTES`] written, overlapping the
/// disk writeback with the download.
#[derive(Debug, Clone)]
struct DiskWriter {
    jobs: std::sync::mpsc::Sender<WriteJob>,
}

/// Bytes written between background syncs.
const BACKGROUND_SYNC_BYTES: u64 = 16 << 20;

struct WriteJob {
    offset: u64,
    parts: Vec<Bytes>,
    done: std::sync::mpsc::SyncSender<std::io::Result<()>>,
}

impl DiskWriter {
    /// Starts the writer thread (and its syncer); they end when the last
    /// handle is dropped.
    fn start(file: Arc<std::fs::File>) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<WriteJob>();
        // A queue of one: a sync asked for while one waits is the same sync.
        let (sync_now, sync_requests) = std::sync::mpsc::sync_channel::<()>(1);
        let synced = file.clone();
        std::thread::Builder::new()
            .name("canopy-sync".into())
            .spawn(move || {
                for () in sync_requests {
                    if let Err(error) = synced.sync_data() {
                        tracing::debug!(%error, "background sync failed; the final sync will report it");
                    }
                }
            })?;
        std::thread::Builder::new()
            .name("canopy-writer".into())
            .spawn(move || {
                let mut unsynced = 0u64;
                for job in queue {
                    let mut offset = job.offset;
                    let mut result = Ok(());
                    for part in &job.parts {
                        if let Err(error) = file.write_all_at(part, offset) {
                            result = Err(error);
                            break;
                        }
                        offset += part.len() as u64;
                    }
                    unsynced += offset - job.offset;
                    if unsynced >= BACKGROUND_SYNC_BYTES {
                        unsynced = 0;
                        let _ = sync_now.try_send(());
                    }
                    let _ = job.done.send(result);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Writes `parts` consecutively from `offset`; blocks until done.
    fn write(&self, offset: u64, parts: Vec<Bytes>) -> std::io::Result<()> {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(WriteJob {
                offset,
                parts,
                done,
            })
            .map_err(|_| std::io::Error::other("the writer thread stopped"))?;
        wait.recv()
            .map_err(|_| std::io::Error::other("the writer thread stopped"))?
    }
}

impl Worker {
    async fn run(self) {
        let events = self.events.clone();
        let (Ok(event) | Err(event)) = self.fetch().await;
        let _ = events.send(event).await;
    }

    /// Returns the final event; group events are sent as they happen.
    async fn fetch(mut self) -> Result<WorkerEvent, WorkerEvent> {
        let request = self.request.id;
        let failed = |reason: String| WorkerEvent::Failed { request, reason };
        let size = self.tree.size();
        let first = group_range(size, self.request.groups.start).start;
        let end = group_range(size, self.request.groups.end - 1).end;
        let path = format!("/content/{}", self.id);
        let range = Some((first, end.saturating_sub(1)));
        // A kept connection the source closed while it was idle (its
        // keep-alive limit) fails at once: then dial afresh, once.
        let kept = match self.conn.take().filter(HttpConn::is_open) {
            Some(mut conn) => match conn.get(&path, range).await {
                Ok(response) => Some((conn, response)),
                Err(error) => {
                    tracing::debug!(%error, "kept connection failed; dialing again");
                    None
                }
            },
            None => None,
        };
        let (conn, response) = match kept {
            Some(pair) => pair,
            None => {
                let stream = self
                    .connector
                    .connect()
                    .await
                    .map_err(|e| failed(format!("cannot connect: {e}")))?;
                let mut conn = HttpConn::handshake(stream)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                let response = conn
                    .get(&path, range)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                (conn, response)
            }
        };
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let expected = format!("bytes {first}-{}/{size}", end.saturating_sub(1));
                let got = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                if got != Some(expected.as_str()) {
                    return Err(failed(format!(
                        "wrong Content-Range {got:?}, expected {expected}"
                    )));
                }
            }
            StatusCode::OK if first == 0 && end == size => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .unwrap_or(5)
                    .clamp(1, 60);
                return Err(WorkerEvent::Busy {
                    request,
                    retry_after: Duration::from_secs(retry_after),
                });
            }
            other => return Err(failed(format!("answered HTTP {other}"))),
        }

        let mut body = response.into_body();
        let mut group = self.request.groups.start;
        // The current group, as the frames it arrived in (sliced at group
        // boundaries, never copied), and how many bytes of it are here.
        let mut parts: Vec<Bytes> = Vec::new();
        let mut have = 0usize;
        let mut pending: Option<(u64, JoinHandle<std::io::Result<bool>>)> = None;
        let mut noticed: Option<std::time::Instant> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    self.settle(pending.take()).await?;
                    return Err(failed(format!("transfer broke off: {error}")));
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if noticed.is_none_or(|at| at.elapsed() >= DATA_NOTICE_INTERVAL) {
                noticed = Some(std::time::Instant::now());
                // A full queue means notices are pending anyway.
                let _ = self.events.try_send(WorkerEvent::Receiving { request });
            }
            while !data.is_empty() {
                if group >= self.request.groups.end {
                    self.settle(pending.take()).await?;
                    return Err(failed("sent more bytes than asked for".into()));
                }
                let len = group_len(size, group);
                let take = (len - have).min(data.len());
                parts.push(data.split_to(take));
                have += take;
                if have < len {
                    continue;
                }
                let group_parts = std::mem::take(&mut parts);
                have = 0;
                // Settle the previous group, then verify and write this one
                // on a blocking thread while the next one arrives.
                self.settle(pending.take()).await?;
                let (tree, writer) = (self.tree.clone(), self.writer.clone());
                let (index, offset) = (group, group_range(size, group).start);
                pending = Some((
                    index,
                    tokio::task::spawn_blocking(move || {
                        if tree.verify_group_parts(index, &group_parts).is_err() {
                            return Ok(false);
                        }
                        writer.write(offset, group_parts)?;
                        Ok(true)
                    }),
                ));
                group += 1;
            }
        }
        self.settle(pending.take()).await?;
        let complete = group == self.request.groups.end && have == 0;
        Ok(WorkerEvent::Done {
            request,
            conn: complete.then_some(conn),
        })
    }

    /// Waits for a group's verification and reports it; a bad group or a
    /// disk error ends the request.
    async fn settle(
        &self,
        pending: Option<(u64, JoinHandle<std::io::Result<bool>>)>,
    ) -> Result<(), WorkerEvent> {
        let Some((group, handle)) = pending else {
            return Ok(());
        };
        let request = self.request.id;
        match handle.await {
            Ok(Ok(true)) => {
                let _ = self
                    .events
                    .send(WorkerEvent::Verified { request, group })
                    .await;
                Ok(())
            }
            Ok(Ok(false)) => Err(WorkerEvent::Bad { request, group }),
            Ok(Err(error)) => Err(WorkerEvent::Disk(error)),
            Err(_) => Err(WorkerEvent::Failed {
                request,
                reason: "verification task failed".into(),
            }),
        }
    }
}

/// Downloads `options.content_id` from `sources`. See the module docs.
pub async fn download(
    sources: Vec<DownloadSource>,
    options: DownloadOptions,
) -> Result<DownloadReport, DownloadError> {
    let (feed, receiver) = mpsc::channel(sources.len().max(1));
    for source in sources {
        let _ = feed.try_send(source);
    }
    drop(feed);
    download_live(receiver, options, DownloadControl::default()).await
}

/// Reports progress, if anyone listens.
fn report_progress(
    options: &DownloadOptions,
    plan: &DownloadPlan,
    known_sources: usize,
    first_byte: Option<Duration>,
) {
    if let Some(progress) = &options.progress {
        progress(Progress {
            verified_bytes: plan.verified_bytes(),
            total: options.size,
            active_sources: plan.busy_sources(),
            known_sources,
            first_byte,
        });
    }
}

/// Downloads `options.content_id` from sources that arrive on `feed` over
/// time: it starts as soon as the first one is there and takes the others
/// as they come; the feed's closing says no more will. See the module docs.
pub async fn download_live(
    feed: mpsc::Receiver<DownloadSource>,
    options: DownloadOptions,
    mut control: DownloadControl,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let cancel = control.cancel.clone();
    let paths = Paths::new(&options.target, options.content_id)?;
    if !options.force && something_at(&paths.target) {
        return Err(DownloadError::Exists(paths.target));
    }
    if options.size > MAX_DOWNLOAD_SIZE {
        return Err(DownloadError::TooLarge(options.size));
    }
    let _lock = match control.lock.take() {
        Some(lock) => lock,
        None => {
            let dir = paths.partial.parent().unwrap_or(Path::new("."));
            PartialLock::acquire(dir, options.content_id)?
        }
    };
    let (id, size) = (options.content_id, options.size);
    let mut sources = SourceSet {
        list: Vec::new(),
        feed: Some(feed),
    };
    // The first source, before anything is written.
    let first = tokio::select! {
        () = cancel.cancelled() => return Err(DownloadError::Cancelled),
        first = sources.arrival() => first,
    };
    if first.is_none() {
        return Err(DownloadError::NoSources);
    }
    let mut failed: HashMap<usize, String> = HashMap::new();
    // Whatever is at the temporary names must be this download's.
    let saved = read_state(&paths.state, id)?;
    let ours = saved.is_some();
    match std::fs::symlink_metadata(&paths.partial) {
        Ok(meta) if !ours || !meta.file_type().is_file() => {
            return Err(DownloadError::NotOurs(paths.partial));
        }
        _ => {}
    }
    let (tree, resumed) = match resume(&paths, saved, id, size).await {
        Some((tree, groups)) => {
            tracing::info!(
                groups = groups.len(),
                "resuming: groups already verified on disk"
            );
            (tree, groups)
        }
        None => {
            let (tree, bytes) = fetch_tree(&mut sources, id, size, &mut failed, &control).await?;
            save_state(&paths, id, size, &bytes).await?;
            (tree, Vec::new())
        }
    };
    let tree = Arc::new(tree);
    let mut open = no_follow();
    open.read(true).write(true);
    if ours {
        open.create(true).truncate(false);
    } else {
        // Checked above that nothing is there; exclusive all the same.
        open.create_new(true);
    }
    let file = open.open(&paths.partial).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            DownloadError::NotOurs(paths.partial.clone())
        } else {
            io_error(&paths.partial)(error)
        }
    })?;
    file.set_len(size).map_err(io_error(&paths.partial))?;
    let file = Arc::new(file);
    let writer = DiskWriter::start(file.clone()).map_err(io_error(&paths.partial))?;

    let mut plan = DownloadPlan::new(size, resumed, options.config.clone());
    let resumed_bytes = plan.verified_bytes();
    // Plan source ids are indices into `usable`, which holds indices into
    // `sources.list`.
    let mut usable: Vec<usize> = (0..sources.list.len())
        .filter(|i| !failed.contains_key(i))
        .collect();
    for _ in &usable {
        plan.add_source();
    }
    let mut dropped: HashMap<SourceId, String> = HashMap::new();
    let mut idle: Vec<Vec<HttpConn>> = usable.iter().map(|_| Vec::new()).collect();
    let mut workers: HashMap<u64, (SourceId, JoinHandle<()>)> = HashMap::new();
    let (events_tx, mut events) = mpsc::channel::<WorkerEvent>(256);
    let clock = Instant::now();
    let now = || Time(u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut first_byte: Option<Duration> = None;
    report_progress(&options, &plan, sources.list.len(), first_byte);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Since when every source is dropped while more may come.
    let mut stuck_since: Option<tokio::time::Instant> = None;

    let outcome = loop {
        while let Some(request) = plan.next_request(now()) {
            let source = request.source;
            let worker = Worker {
                conn: idle[source].pop(),
                connector: sources.list[usable[source]].connector.clone(),
                tree: tree.clone(),
                writer: writer.clone(),
                id,
                events: events_tx.clone(),
                request: request.clone(),
            };
            workers.insert(request.id, (source, tokio::spawn(worker.run())));
        }
        while let Some(event) = plan.poll_event() {
            match event {
                DownloadEvent::Cancel(request) => {
                    if let Some((_, handle)) = workers.remove(&request) {
                        handle.abort();
                    }
                }
                DownloadEvent::SourceDropped { source, reason } => {
                    tracing::warn!(source = %sources.list[usable[source]].label, %reason, "dropping source");
                    idle[source].clear();
                    dropped.insert(source, reason);
                }
            }
        }
        if plan.is_complete() {
            break Ok(());
        }
        if !plan.is_stuck() {
            stuck_since = None;
        } else if stuck_since.is_none() {
            stuck_since = Some(tokio::time::Instant::now());
            control.starve();
        }
        let waited_out = stuck_since.is_some_and(|since| since.elapsed() >= NEW_SOURCE_WAIT);
        if plan.is_stuck() && (!sources.is_open() || waited_out) {
            let reasons: Vec<String> = failed
                .iter()
                .map(|(i, r)| format!("{}: {r}", sources.list[*i].label))
                .chain(
                    dropped
                        .iter()
                        .map(|(s, r)| format!("{}: {r}", sources.list[usable[*s]].label)),
                )
                .collect();
            break Err(DownloadError::AllSourcesFailed(reasons.join("\n")));
        }
        let give_up = stuck_since.map(|since| since + NEW_SOURCE_WAIT);
        tokio::select! {
            () = cancel.cancelled() => break Err(DownloadError::Cancelled),
            event = events.recv() => {
                let Some(event) = event else { continue };
                match event {
                    WorkerEvent::Receiving { request } => plan.handle_data_received(request, now()),
                    WorkerEvent::Verified { request, group } => {
                        first_byte.get_or_insert_with(|| started.elapsed());
                        plan.handle_group_verified(request, group, now());
                        report_progress(&options, &plan, sources.list.len(), first_byte);
                    }
                    WorkerEvent::Bad { request, group } => {
                        workers.remove(&request);
                        plan.handle_group_bad(request, group);
                    }
                    WorkerEvent::Done { request, conn } => {
                        if let (Some((source, _)), Some(conn)) = (workers.remove(&request), conn) {
                            if !dropped.contains_key(&source) {
                                idle[source].push(conn);
                            }
                        }
                        plan.handle_request_done(request);
                    }
                    WorkerEvent::Failed { request, reason } => {
                        workers.remove(&request);
                        plan.handle_request_failed(request, reason);
                    }
                    WorkerEvent::Busy { request, retry_after } => {
                        workers.remove(&request);
                        plan.handle_request_busy(request, retry_after, now());
                    }
                    WorkerEvent::Disk(error) => break Err(io_error(&paths.partial)(error)),
                }
            }
            arrived = sources.arrival(), if sources.is_open() => {
                if let Some(index) = arrived {
                    usable.push(index);
                    plan.add_source();
                    idle.push(Vec::new());
                    report_progress(&options, &plan, sources.list.len(), first_byte);
                }
            }
            () = sleep_until_some(give_up) => {}
            _ = tick.tick() => plan.handle_timeout(now()),
        }
    };
    for (_, (_, handle)) in workers.drain() {
        handle.abort();
    }
    outcome?;

    let synced = file.clone();
    tokio::task::spawn_blocking(move || synced.sync_all())
        .await
        .map_err(|_| io_error(&paths.partial)(std::io::Error::other("sync task failed")))?
        .map_err(io_error(&paths.partial))?;
    move_into_place(&paths, options.force)?;
    let _ = tokio::fs::remove_file(&paths.state).await;

    let reports = sources
        .list
        .iter()
        .enumerate()
        .map(|(index, source)| {
            let planned = usable.iter().position(|u| *u == index);
            SourceReport {
                source: source.label.clone(),
                bytes: planned.map_or(0, |p| plan.bytes_from(p)),
                dropped: failed
                    .get(&index)
                    .or_else(|| planned.and_then(|p| dropped.get(&p)))
                    .cloned(),
            }
        })
        .collect();
    Ok(DownloadReport {
        path: paths.target,
        size,
        resumed_bytes,
        sources: reports,
        elapsed: started.elapsed(),
        first_byte,
        already_present: false,
    })
}
