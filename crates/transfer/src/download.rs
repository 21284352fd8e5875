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
//! new one before giving up. The caller is told of each source dropped
//! for anything but a lie ([`DownloadControl::dropped`]), and a source
//! given again at the address of such a one is taken again (a seed that
//! restarted); one at the address of a source still in use or a liar is
//! not. A [`CancellationToken`] stops it at once,
//! keeping the partial and state files (a pause: the next run resumes).
//! One download of an id into a folder at a time: see [`crate::partial_lock`].
//!
//! Partial sources and the mesh (with a [`Swarm`] in the control): a source
//! may have part of the file only (a downloader itself). The plan asks it
//! first what it has (a `HEAD`, answered with `X-Available-Ranges`), and
//! every response's ranges update that (a partial source's response
//! without them: it has the whole file now); a 416 for a data request
//! says what it has instead, and if it had claimed those groups it lied
//! and is dropped. A partial source that answers 404 (to the tree
//! request or a probe: one told of before it had a group) stays, and is
//! probed again each probe interval, for up to a minute.
//!
//! A whole file's server may ration its upload among a crowd
//! (super-seeding, [`crate::ration`]): every request to a complete source
//! says which groups the download still needs and is not getting
//! elsewhere (`X-Need`, when it shares), its responses say what it offers
//! (`X-Offer`), and the plan asks it only for groups of the offer (a
//! response without the header: anything again). A 416 with `X-Offer` is
//! such a refusal, not a lie: the groups go to others and the source is
//! asked again within the offer; one that offers nothing the download
//! misses is asked (`HEAD`) for a fresh offer each probe interval.
//!
//! Every request says where this node serves (`X-Listen`); every
//! response's `X-Alt` alternates become new partial sources (up to
//! [`MAX_SOURCES`] in all, less a few kept for what searches find; none
//! twice by address, only addresses of the
//! teller's scope or wider: no loopback or private alternate from a
//! source on the internet), each remembering which source told of it:
//! when a source is dropped for lying (bad bytes, or a 416 for what it
//! claimed), the alternates it told of that have delivered nothing go
//! with it. A direct source that delivers a verified group goes
//! in the node's mesh (which the server tells other downloaders of); a
//! liar, its alternates and a source that cannot be reached go out.
//!
//! The download is served while it runs: from its first verified and
//! written group (at once for groups resumed from disk) a [`PartialEntry`]
//! for the partial file is in the catalog, its groups growing as each is
//! written; it goes when the download fails or is cancelled (the files
//! stay for a resume, not served).
//!
//! When every group is verified the partial file is synced and linked to
//! the target without replacing anything there (a hard link, which fails
//! if the name exists; `--force` links to a temporary name renamed over
//! it). With a [`Swarm`] that says so, the complete file is put in the
//! catalog at the target before the partial entry goes, so it is served
//! without a gap; then the partial name is removed, and the state.
//!
//! If the download is interrupted (Ctrl-C, `kill -9`, power loss), the
//! next run finds the state, checks every group already in the partial
//! file against the tree, keeps those that verify, and fetches only the
//! rest.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use canopy_core::Time;
use canopy_core::addrman::group::{Scope, learnable};
use canopy_core::download::{
    DownloadConfig, DownloadEvent, DownloadPlan, Request, RequestKind, SourceId,
};
use canopy_core::groups::GroupSet;
use canopy_core::mesh::{alternate_allowed, parse_alternates};
use canopy_core::tree::{
    MAX_DOWNLOAD_SIZE, VerifiedTree, group_count, group_len, group_range, group_slot,
};
use canopy_proto::ContentId;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogEntry};
use crate::client::{ConnectFuture, Connector, HttpConn, Sharing, read_limited};
use crate::mesh::{ALT, AVAILABLE_RANGES, OFFER, SharedMesh};
use crate::partial::{MAX_AVAILABLE_RANGES_LEN, PartialEntry};
use crate::partial_lock::{LockError, PartialLock};
use crate::path::TransferPath;

/// A place to get the file from.
#[derive(Debug, Clone)]
pub struct DownloadSource {
    /// How it is named in reports: its address.
    pub label: String,
    /// How to reach it.
    pub connector: Arc<dyn Connector>,
    /// It has part of the file only (a downloader itself, or an alternate
    /// learned from `X-Alt`): what it has is asked (`HEAD`) before any data.
    pub partial: bool,
    /// Its address, for a source dialed directly: it goes in the mesh when
    /// it delivers a verified group and out when it dies or lies, and an
    /// alternate at the same address is the same source. `None` for a
    /// pushed source.
    pub addr: Option<SocketAddr>,
}

/// Serving and meshing while downloading: the download is served from its
/// first verified group on, tells its sources where it serves, learns
/// other sources from theirs (`X-Alt`) and keeps the node's mesh current.
#[derive(Clone)]
pub struct Swarm {
    /// Where the download is served from: a [`PartialEntry`] from its first
    /// verified (and written) group on.
    pub catalog: Catalog,
    /// The node's mesh, which the server tells downloaders of: sources that
    /// delivered a verified group go in, dead and lying ones out.
    pub mesh: SharedMesh,
    /// The port this node serves HTTP on, sent as `X-Listen` (`None`:
    /// firewalled, say nothing).
    pub listen_port: Option<u16>,
    /// Makes a connector for an alternate learned from `X-Alt` (the
    /// caller's rate limit applies).
    pub connect: Arc<dyn Fn(SocketAddr) -> Arc<dyn Connector> + Send + Sync>,
    /// When complete: serve the finished file (a catalog entry at the
    /// target) before the partial entry goes, so there is no gap. Else the
    /// partial entry just goes.
    pub serve_when_done: bool,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("listen_port", &self.listen_port)
            .field("serve_when_done", &self.serve_when_done)
            .finish_non_exhaustive()
    }
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
    /// It had part of the file only when it came (a downloader itself).
    pub partial: bool,
    /// It was learned from another source's `X-Alt`, not given.
    pub alternate: bool,
    /// The ways its connections were made in this run (each once, in
    /// [`TransferPath`]'s order); empty if none was.
    pub paths: Vec<TransferPath>,
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

    /// The ways each source's connections were made, by address, for the
    /// sources that sent verified bytes (one connected to that sent
    /// nothing, an alternate that no longer has the file say, is left
    /// out: the paths are the ways the file came).
    pub fn paths_per_source(&self) -> BTreeMap<String, Vec<TransferPath>> {
        self.sources
            .iter()
            .filter(|s| s.bytes > 0 && !s.paths.is_empty())
            .map(|s| (s.source.clone(), s.paths.clone()))
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

/// The tree (checked, and its bytes) and verified groups of an earlier,
/// interrupted run, if its state is for this id and size.
async fn resume(
    paths: &Paths,
    saved: Option<SavedState>,
    id: ContentId,
    size: u64,
) -> Option<(VerifiedTree, Vec<u8>, Vec<u64>)> {
    let saved = saved.filter(|saved| saved.size == size)?;
    let bytes = hex::decode(saved.tree).ok()?;
    let tree = VerifiedTree::from_bytes(id, size, &bytes).ok()?;
    let partial = paths.partial.clone();
    let check = tree.clone();
    let groups = tokio::task::spawn_blocking(move || verified_on_disk(&partial, &check))
        .await
        .ok()?;
    Some((tree, bytes, groups))
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

/// Puts the complete partial file at the target. Without `force`, never
/// over anything already there (a hard link fails if the name is taken);
/// with it, a link at a fresh temporary name renamed over the target,
/// which replaces a link rather than following it. Returns true if the
/// partial file is still there (the target is a second link to it): the
/// caller removes it once nothing serves it any more, so a download
/// served while it ran is never missing in between. A file system without
/// hard links gets a plain rename (false).
fn move_into_place(paths: &Paths, force: bool) -> Result<bool, DownloadError> {
    let rename = || {
        std::fs::rename(&paths.partial, &paths.target)
            .map(|()| false)
            .map_err(io_error(&paths.target))
    };
    if force {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut temporary = paths.partial.clone().into_os_string();
        temporary.push(format!(".{}-{nanos}.link", std::process::id()));
        let temporary = PathBuf::from(temporary);
        if std::fs::hard_link(&paths.partial, &temporary).is_err() {
            return rename();
        }
        return std::fs::rename(&temporary, &paths.target)
            .map(|()| true)
            .map_err(|error| {
                let _ = std::fs::remove_file(&temporary);
                io_error(&paths.target)(error)
            });
    }
    match std::fs::hard_link(&paths.partial, &paths.target) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(DownloadError::Exists(paths.target.clone()))
        }
        // A file system without hard links: check, then rename.
        Err(_) if something_at(&paths.target) => Err(DownloadError::Exists(paths.target.clone())),
        Err(_) => rename(),
    }
}

/// Tree requests started at once.
const TREE_FETCHES_AT_ONCE: usize = 4;
/// Most tree requests in flight.
const MAX_TREE_FETCHES: usize = 16;
/// Without an answer for this long, one more source is asked.
const TREE_HEDGE: Duration = Duration::from_millis(500);
/// A tree request that has not finished in this long, once connected,
/// has failed.
const TREE_TIMEOUT: Duration = Duration::from_secs(15);
/// A backstop on connecting for a tree request: each connector bounds its
/// own connect (a dial 5 s, a push 15 s, a push then a relay about 30 s).
const TREE_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a tree request failed, and whether it was a 404 (a partial source
/// answers so until its first group is verified).
type TreeFailure = (String, bool);

/// Asks one source for the tree; `Err` says why it failed.
async fn tree_from(
    source: DownloadSource,
    id: ContentId,
    size: u64,
    expected: usize,
    listen_port: Option<u16>,
) -> Result<(VerifiedTree, Vec<u8>), TreeFailure> {
    let connected =
        match tokio::time::timeout(TREE_CONNECT_TIMEOUT, source.connector.connect()).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => {
                let error = crate::client::ClientError::Connect(error);
                return Err((error.to_string(), false));
            }
            Err(_) => return Err(("connecting for the tree timed out".to_owned(), false)),
        };
    let attempt = async {
        let mut conn = HttpConn::handshake(connected.stream).await?;
        let sharing = Sharing {
            listen_port,
            need: None,
        };
        let response = conn
            .request(Method::GET, &format!("/tree/{id}"), None, &sharing)
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            let reason = format!("tree request answered {status}");
            return Ok(Err((reason, status == StatusCode::NOT_FOUND)));
        }
        let bytes = read_limited(response.into_body(), expected).await?;
        Ok::<_, crate::client::ClientError>(
            VerifiedTree::from_bytes(id, size, &bytes)
                .map(|tree| (tree, bytes.to_vec()))
                .map_err(|e| (format!("bad tree: {e}"), false)),
        )
    };
    match tokio::time::timeout(TREE_TIMEOUT, attempt).await {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => Err((error.to_string(), false)),
        Err(_) => Err(("tree request timed out".to_owned(), false)),
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
    let listen_port = control.swarm.as_ref().and_then(|swarm| swarm.listen_port);
    if group_count(size) == 1 {
        // Nothing to fetch: the single group is checked against the id.
        return VerifiedTree::from_bytes(id, size, &[])
            .map(|tree| (tree, Vec::new()))
            .map_err(|e| DownloadError::AllSourcesFailed(e.to_string()));
    }
    let expected = group_slot(group_count(size)).saturating_mul(32);
    let mut running = JoinSet::new();
    // Partial sources that answered 404: kept, but named if all else fails.
    let mut not_serving: Vec<String> = Vec::new();
    let mut next = 0;
    let start = |list: &[DownloadSource], running: &mut JoinSet<_>, next: &mut usize| {
        if *next < list.len() && running.len() < MAX_TREE_FETCHES {
            let (index, source) = (*next, list[*next].clone());
            running.spawn(async move {
                (
                    index,
                    tree_from(source, id, size, expected, listen_port).await,
                )
            });
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
                    // A partial source with no group yet: it stays, to be
                    // probed once the tree comes from another.
                    Err((reason, true)) if sources.list[index].partial => {
                        tracing::debug!(source = %sources.list[index].label, %reason, "partial source serves nothing yet");
                        not_serving.push(format!("{}: {reason}", sources.list[index].label));
                        start(&sources.list, &mut running, &mut next);
                    }
                    Err((reason, _)) => {
                        tracing::warn!(source = %sources.list[index].label, %reason, "dropping source");
                        control.tell_dropped(&sources.list[index].label);
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
        failed
            .values()
            .cloned()
            .chain(not_serving)
            .collect::<Vec<_>>()
            .join("\n"),
    ))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The paths one source's connections took (shared by the clones of its
/// connector).
#[derive(Debug, Default, Clone)]
struct PathLog(Arc<Mutex<BTreeSet<TransferPath>>>);

impl PathLog {
    fn record(&self, path: TransferPath) {
        if let Ok(mut paths) = self.0.lock() {
            paths.insert(path);
        }
    }

    fn paths(&self) -> Vec<TransferPath> {
        self.0
            .lock()
            .map(|paths| paths.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A source's connector that records the path of each connection it
/// opens, and logs it.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Connector>,
    log: PathLog,
    label: String,
}

impl Connector for Recording {
    fn connect(&self) -> ConnectFuture {
        let connecting = self.inner.connect();
        let (log, label) = (self.log.clone(), self.label.clone());
        Box::pin(async move {
            let connected = connecting.await?;
            tracing::debug!(source = %label, path = %connected.path, "connected to source");
            log.record(connected.path);
            Ok(connected)
        })
    }
}

/// Most sources one download takes; later ones are ignored.
pub const MAX_SOURCES: usize = 64;
/// Of those, how many alternates from `X-Alt` may never take: room for
/// sources a search finds later.
const SOURCES_KEPT_FOR_SEARCHES: usize = 8;
/// With every source failed, how long to wait for a new one to arrive
/// before giving up (while more may come).
const NEW_SOURCE_WAIT: Duration = Duration::from_secs(30);
/// How long a partial source may answer 404 to probes before it is
/// dropped. Alternates are told of as soon as they ask (`X-Listen`), before
/// they have a group to serve; in a flash crowd the first group takes a
/// while to come.
const NOT_SERVING_GRACE: Duration = Duration::from_secs(60);
/// A partial source that answered a data request with 404 is asked again
/// after this pause.
const NOT_SERVING_PAUSE: Duration = Duration::from_secs(1);

/// The sources heard of so far, and the feed more arrive on.
struct SourceSet {
    /// Each source's connector records the paths its connections take
    /// in `paths` at the same index.
    list: Vec<DownloadSource>,
    paths: Vec<PathLog>,
    feed: Option<mpsc::Receiver<DownloadSource>>,
}

impl SourceSet {
    fn new(feed: mpsc::Receiver<DownloadSource>) -> Self {
        Self {
            list: Vec::new(),
            paths: Vec::new(),
            feed: Some(feed),
        }
    }

    /// Takes `source` in, its connections' paths recorded; its index.
    fn push(&mut self, mut source: DownloadSource) -> usize {
        let log = PathLog::default();
        source.connector = Arc::new(Recording {
            inner: source.connector,
            log: log.clone(),
            label: source.label.clone(),
        });
        self.list.push(source);
        self.paths.push(log);
        self.list.len() - 1
    }

    /// More sources may still come.
    fn is_open(&self) -> bool {
        self.feed.is_some()
    }

    /// Waits for the next source; returns its index, or `None` once the
    /// feed is closed or when the download has all the sources it takes
    /// (that source is ignored; the feed stays open).
    async fn arrival(&mut self) -> Option<usize> {
        let feed = self.feed.as_mut()?;
        match feed.recv().await {
            Some(source) if self.list.len() < MAX_SOURCES => {
                tracing::debug!(source = %source.label, "new source");
                Some(self.push(source))
            }
            Some(source) => {
                tracing::debug!(source = %source.label, "source list full; ignored");
                None
            }
            None => {
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
    /// Notified each time some missing group comes to have no active
    /// source (the seed left, say, and the partial sources lack it) while
    /// others remain: the moment to look for more, keeping the feed open.
    pub lacking: Option<Arc<tokio::sync::Notify>>,
    /// Told the label of each source the download stops using for any
    /// reason but a lie (it failed, stalled, could not be reached): the
    /// caller may give it again later (a seed that restarted), and a
    /// source at an address whose every source was dropped, none for a
    /// lie, is taken again. Sent without waiting; a channel of
    /// [`MAX_SOURCES`] is never full, as each of the at most that many
    /// sources is told of once.
    pub dropped: Option<mpsc::Sender<String>>,
    /// Serve the download while it runs and take part in the mesh; `None`:
    /// only download.
    pub swarm: Option<Swarm>,
}

impl DownloadControl {
    fn starve(&self) {
        if let Some(starving) = &self.starving {
            starving.notify_one();
        }
    }

    fn lack(&self) {
        if let Some(lacking) = &self.lacking {
            lacking.notify_one();
        }
    }

    fn tell_dropped(&self, label: &str) {
        tell_dropped(self.dropped.as_ref(), label);
    }
}

/// Tells `to` (if anyone listens) that the source `label` was dropped.
fn tell_dropped(to: Option<&mpsc::Sender<String>>, label: &str) {
    if let Some(to) = to {
        let _ = to.try_send(label.to_owned());
    }
}

enum WorkerEvent {
    /// What a response's headers said, before anything else of it: the
    /// source's ranges (`None` when its status carries none), what it
    /// offers (a whole file's server rationing a crowd) and the
    /// alternates it told of.
    Headers {
        source: SourceId,
        available: Option<Availability>,
        offer: OfferSaid,
        alternates: Vec<SocketAddr>,
    },
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
    /// A probe (`HEAD`) answered; its ranges came in `Headers`.
    ProbeDone {
        request: u64,
        conn: Option<HttpConn>,
    },
    /// 404: the source does not serve the file (yet: an alternate may be
    /// told of before its first group is verified; or no longer).
    NotServing {
        request: u64,
        probe: bool,
    },
    /// 416: the source does not have the groups asked for; it has these.
    Unavailable {
        request: u64,
        groups: GroupSet,
    },
    /// 416 with `X-Offer`: a whole file's server rations its upload and
    /// offers these groups instead (super-seeding).
    Offered {
        request: u64,
        offer: GroupSet,
    },
    Failed {
        request: u64,
        reason: String,
        /// The source could not be reached at all (it goes out of the mesh).
        unreachable: bool,
    },
    Busy {
        request: u64,
        retry_after: Duration,
    },
    Disk(std::io::Error),
}

/// What a response says its source has.
#[derive(Debug)]
enum Availability {
    /// No `X-Available-Ranges`: the whole file.
    Whole,
    /// These groups (wholly inside the ranges it listed).
    Groups(GroupSet),
}

/// What a response says of its server's offer (`X-Offer`; see
/// [`crate::ration`]).
#[derive(Debug)]
enum OfferSaid {
    /// Nothing (a status that serves nothing, without the header).
    Nothing,
    /// A 200 or 206 without the header: it serves any range now.
    Anything,
    /// These groups.
    Groups(GroupSet),
}

/// The groups of a response's `X-Offer`, parsed like `X-Available-Ranges`.
fn offer_in(headers: &HeaderMap, size: u64) -> Option<GroupSet> {
    groups_in(headers, OFFER, size)
}

/// The alternates of a response's `X-Alt`, parsed leniently.
fn alternates_in(headers: &HeaderMap) -> Vec<SocketAddr> {
    headers
        .get(ALT)
        .and_then(|value| value.to_str().ok())
        .map(parse_alternates)
        .unwrap_or_default()
}

/// The groups of a response's `X-Available-Ranges` for a file of `size`
/// bytes: `None` if it has none; a value that is not ranges claims nothing.
fn available_in(headers: &HeaderMap, size: u64) -> Option<GroupSet> {
    groups_in(headers, AVAILABLE_RANGES, size)
}

/// The groups of the ranges header `name` for a file of `size` bytes:
/// `None` if absent; a value that is not ranges names none.
fn groups_in(headers: &HeaderMap, name: &str, size: u64) -> Option<GroupSet> {
    let value = headers.get(name)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|value| GroupSet::from_header(value, size))
            .unwrap_or_else(|| GroupSet::empty(size)),
    )
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
    /// Sent as `X-Listen` and `X-Need`.
    sharing: Sharing,
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
        let failed = |reason: String| WorkerEvent::Failed {
            request,
            reason,
            unreachable: false,
        };
        // A relayed path the relay closed at its limit (or had no room
        // for) is not the source's fault: like a 503, its groups go back
        // to the pool and it is asked again shortly, on a new path.
        let path_closed = |error: &(dyn std::error::Error + 'static)| {
            crate::relay::path_closed_in(error).map(|closed| WorkerEvent::Busy {
                request,
                retry_after: closed.retry_after,
            })
        };
        let size = self.tree.size();
        let probe = self.request.kind == RequestKind::Probe;
        // A probe asks for the headers only; a data request for its groups.
        let (method, first, end) = if probe || self.request.groups.is_empty() {
            (Method::HEAD, 0, 0)
        } else {
            let first = group_range(size, self.request.groups.start).start;
            let end = group_range(size, self.request.groups.end - 1).end;
            (Method::GET, first, end)
        };
        let path = format!("/content/{}", self.id);
        let range = (method == Method::GET).then(|| (first, end.saturating_sub(1)));
        let sharing = &self.sharing;
        // A kept connection the source closed while it was idle (its
        // keep-alive limit) fails at once: then dial afresh, once.
        let kept = match self.conn.take().filter(HttpConn::is_open) {
            Some(mut conn) => match conn.request(method.clone(), &path, range, sharing).await {
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
                let connected = self.connector.connect().await.map_err(|e| {
                    path_closed(&e).unwrap_or_else(|| WorkerEvent::Failed {
                        request,
                        reason: format!("cannot connect: {e}"),
                        unreachable: true,
                    })
                })?;
                let mut conn = HttpConn::handshake(connected.stream)
                    .await
                    .map_err(|e| path_closed(&e).unwrap_or_else(|| failed(e.to_string())))?;
                let response = conn
                    .request(method, &path, range, sharing)
                    .await
                    .map_err(|e| path_closed(&e).unwrap_or_else(|| failed(e.to_string())))?;
                (conn, response)
            }
        };
        let status = response.status();
        // Ranges are said on 200/206 (and 416, where they come with the
        // refusal); a status without them says nothing of what it has.
        let available = match status {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Some(
                available_in(response.headers(), size)
                    .map_or(Availability::Whole, Availability::Groups),
            ),
            _ => None,
        };
        let offer = match (status, offer_in(response.headers(), size)) {
            (StatusCode::OK | StatusCode::PARTIAL_CONTENT, None) => OfferSaid::Anything,
            // A 416's offer comes with the refusal.
            (StatusCode::RANGE_NOT_SATISFIABLE, _) | (_, None) => OfferSaid::Nothing,
            (_, Some(groups)) => OfferSaid::Groups(groups),
        };
        let alternates = alternates_in(response.headers());
        if available.is_some() || !alternates.is_empty() || !matches!(offer, OfferSaid::Nothing) {
            let _ = self
                .events
                .send(WorkerEvent::Headers {
                    source: self.request.source,
                    available,
                    offer,
                    alternates,
                })
                .await;
        }
        let busy = |response: &http::Response<hyper::body::Incoming>| {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .unwrap_or(5)
                .clamp(1, 60);
            WorkerEvent::Busy {
                request,
                retry_after: Duration::from_secs(retry_after),
            }
        };
        if probe {
            return match status {
                StatusCode::OK => Ok(WorkerEvent::ProbeDone {
                    request,
                    conn: Some(conn),
                }),
                StatusCode::SERVICE_UNAVAILABLE => Err(busy(&response)),
                StatusCode::NOT_FOUND => Err(WorkerEvent::NotServing {
                    request,
                    probe: true,
                }),
                other => Err(failed(format!("answered HTTP {other} to a probe"))),
            };
        }
        match status {
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
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let headers = response.headers();
                return Err(
                    match (available_in(headers, size), offer_in(headers, size)) {
                        (Some(groups), _) => WorkerEvent::Unavailable { request, groups },
                        (None, Some(offer)) => WorkerEvent::Offered { request, offer },
                        (None, None) => failed("answered 416 without saying what it has".into()),
                    },
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => return Err(busy(&response)),
            StatusCode::NOT_FOUND => {
                return Err(WorkerEvent::NotServing {
                    request,
                    probe: false,
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
                    return Err(path_closed(&error)
                        .unwrap_or_else(|| failed(format!("transfer broke off: {error}"))));
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
                unreachable: false,
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

/// The download as served to others while it runs (see [`Swarm`]): a
/// [`PartialEntry`] in the catalog from the first group verified and
/// written on, taken out when the download ends (if it is still this
/// download's: another download of the id elsewhere may have replaced it).
struct ServedPartial {
    catalog: Catalog,
    id: ContentId,
    entry: PartialEntry,
    inserted: bool,
}

impl ServedPartial {
    fn new(catalog: Catalog, id: ContentId, path: PathBuf, size: u64, tree: Bytes) -> Self {
        Self {
            catalog,
            id,
            entry: PartialEntry::new(path, size, tree),
            inserted: false,
        }
    }

    /// `groups` are verified and written: serve them from now on.
    fn add(&mut self, groups: impl IntoIterator<Item = u64>) {
        let mut added = false;
        for group in groups {
            added |= self.entry.add_group(group);
        }
        if added && !self.inserted {
            self.catalog.insert_partial(self.id, self.entry.clone());
            self.inserted = true;
        }
    }

    /// Stops serving the partial file.
    fn withdraw(&mut self) {
        let ours = |entry: &PartialEntry| Arc::ptr_eq(&entry.have, &self.entry.have);
        if std::mem::take(&mut self.inserted)
            && self.catalog.get_partial(&self.id).is_some_and(|e| ours(&e))
        {
            self.catalog.remove_partial(&self.id);
        }
    }

    /// Waits (at most [`LOOKUP_WAIT`]) until no one holds a copy of the
    /// withdrawn entry: the server holds one from looking a request up
    /// until it has opened the file (not while it sends the body), so once
    /// none is left, the partial file's name can go without a request
    /// that found the entry failing to open it.
    async fn lookups_done(&self) {
        let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
        while Arc::strong_count(&self.entry.have) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Longest wait for requests that found the partial entry to open its
/// file, before its name is removed.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

impl Drop for ServedPartial {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// A running download past its tree: the plan, the sources and what
/// each is doing.
struct Run {
    id: ContentId,
    size: u64,
    plan: DownloadPlan,
    sources: SourceSet,
    /// Plan source ids are indices into `usable`, which holds indices into
    /// `sources.list`.
    usable: Vec<usize>,
    /// Sources that failed while the tree was fetched, or were not taken
    /// (a second source at one address), by list index.
    failed: HashMap<usize, String>,
    dropped: HashMap<SourceId, String>,
    /// Sources dropped for lying (bad bytes, or a 416 for groups they
    /// claimed): nothing more they say is heard.
    liars: HashSet<SourceId>,
    /// Partial sources answering 404 to probes, since when (reset by an
    /// answer with ranges).
    not_serving: HashMap<SourceId, Instant>,
    /// Addresses of every source heard of, so an alternate is taken once.
    known: HashSet<SocketAddr>,
    /// Alternates, by list index: the list index of the source that told of it.
    learned_from: HashMap<usize, usize>,
    idle: Vec<Vec<HttpConn>>,
    workers: HashMap<u64, (SourceId, JoinHandle<()>)>,
    events: mpsc::Sender<WorkerEvent>,
    tree: Arc<VerifiedTree>,
    writer: DiskWriter,
    swarm: Option<Swarm>,
    serving: Option<ServedPartial>,
    /// Told of each source dropped but not for a lie.
    tell_dropped: Option<mpsc::Sender<String>>,
    clock: Instant,
    started: Instant,
    first_byte: Option<Duration>,
}

impl Drop for Run {
    /// A download dropped mid-way (its caller's future dropped: a pause,
    /// an error) stops its requests too: no worker keeps a source's slot
    /// or writes to the partial file once the lock is gone.
    fn drop(&mut self) {
        for (_, (_, handle)) in self.workers.drain() {
            handle.abort();
        }
    }
}

impl Run {
    fn now(&self) -> Time {
        Time(u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// When the plan's `time` comes.
    fn instant(&self, time: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.clock + Duration::from_millis(time.as_millis()))
    }

    fn label(&self, source: SourceId) -> &str {
        &self.sources.list[self.usable[source]].label
    }

    fn addr(&self, source: SourceId) -> Option<SocketAddr> {
        self.sources.list[self.usable[source]].addr
    }

    fn mesh_remove(&self, source: SourceId) {
        if let (Some(swarm), Some(addr)) = (&self.swarm, self.addr(source)) {
            swarm.mesh.remove(&self.id, addr);
        }
    }

    /// Takes the given source at `index` in the list into the plan, unless
    /// a source at its address is there already (learned from `X-Alt`,
    /// say) or lied: one whose every source at the address was dropped
    /// for anything but a lie is taken again (a seed that restarted).
    fn take_in(&mut self, index: usize) {
        if let Some(addr) = self.sources.list[index].addr {
            let held = |(source, at): (usize, &usize)| {
                self.sources.list[*at].addr == Some(addr)
                    && (!self.dropped.contains_key(&source) || self.liars.contains(&source))
            };
            if self.known.contains(&addr) && self.usable.iter().enumerate().any(held) {
                let reason = "another source has this address".to_owned();
                self.failed.insert(index, reason);
                return;
            }
        }
        self.plan_source(index);
    }

    /// Takes the source at `index` in the list into the plan.
    fn plan_source(&mut self, index: usize) {
        let source = &self.sources.list[index];
        if let Some(addr) = source.addr {
            self.known.insert(addr);
        }
        if source.partial {
            self.plan.add_partial_source();
        } else {
            self.plan.add_source();
        }
        self.usable.push(index);
        self.idle.push(Vec::new());
    }

    /// Starts every request the plan has to make now.
    fn start_requests(&mut self) {
        let listen_port = self.swarm.as_ref().and_then(|swarm| swarm.listen_port);
        while let Some(request) = self.plan.next_request(self.now()) {
            let source = request.source;
            // What the download still needs (this request's groups are on
            // their way now), told to complete sources, which may ration
            // a crowd (see `crate::ration`), when it shares.
            let need = (listen_port.is_some() && !self.plan.is_partial(source))
                .then(|| self.plan.needed().to_header(MAX_AVAILABLE_RANGES_LEN));
            let worker = Worker {
                conn: self.idle[source].pop(),
                connector: self.sources.list[self.usable[source]].connector.clone(),
                tree: self.tree.clone(),
                writer: self.writer.clone(),
                id: self.id,
                events: self.events.clone(),
                request: request.clone(),
                sharing: Sharing { listen_port, need },
            };
            self.workers
                .insert(request.id, (source, tokio::spawn(worker.run())));
        }
    }

    /// Carries out what the plan decided. `suspect` is the source whose
    /// lie was just reported: if the plan dropped it, its alternates go
    /// with it.
    fn apply_plan_events(&mut self, suspect: Option<SourceId>) {
        let mut liars = Vec::new();
        while let Some(event) = self.plan.poll_event() {
            match event {
                DownloadEvent::Cancel(request) => {
                    if let Some((_, handle)) = self.workers.remove(&request) {
                        handle.abort();
                    }
                }
                DownloadEvent::SourceDropped { source, reason } => {
                    tracing::warn!(source = %self.label(source), %reason, "dropping source");
                    self.idle[source].clear();
                    self.dropped.insert(source, reason);
                    if suspect == Some(source) {
                        liars.push(source);
                    } else {
                        tell_dropped(self.tell_dropped.as_ref(), self.label(source));
                    }
                }
            }
        }
        for liar in liars {
            self.drop_liar(liar);
        }
    }

    /// `liar` was dropped for lying: it leaves the mesh, and so does every
    /// alternate it told of that has delivered nothing, dropped with it.
    fn drop_liar(&mut self, liar: SourceId) {
        self.liars.insert(liar);
        self.mesh_remove(liar);
        let told = self.usable[liar];
        let reason = format!("learned from {}, which lied", self.label(liar));
        let doomed: Vec<SourceId> = (0..self.usable.len())
            .filter(|&source| {
                self.learned_from.get(&self.usable[source]) == Some(&told)
                    && self.plan.bytes_from(source) == 0
                    && !self.dropped.contains_key(&source)
            })
            .collect();
        for source in doomed {
            self.plan.drop_source(source, reason.clone());
            self.mesh_remove(source);
        }
        self.apply_plan_events(None);
    }

    /// Takes the alternates `teller` told of as new partial sources: at
    /// most [`MAX_SOURCES`] sources in all less the few kept for
    /// searches, none already known by address, and none `teller` may not name: only addresses of its own scope or
    /// wider (a source on the internet can't steer us to dial our own
    /// machine or network; a pushed source, whose address we don't dial,
    /// names only internet addresses).
    fn learn(&mut self, teller: SourceId, alternates: Vec<SocketAddr>) {
        let Some(swarm) = self.swarm.clone() else {
            return;
        };
        let told_by = self.usable[teller];
        let teller_ip = self.addr(teller).map(|addr| addr.ip());
        for addr in alternates
            .into_iter()
            .filter(|alt| teller_ip.is_none_or(|ip| alternate_allowed(*alt, ip)))
        {
            if self.sources.list.len() >= MAX_SOURCES - SOURCES_KEPT_FOR_SEARCHES {
                break;
            }
            let may_name = match teller_ip {
                Some(ip) => learnable(addr, ip),
                None => Scope::of(addr.ip()) == Scope::Global && learnable(addr, addr.ip()),
            };
            if !may_name {
                tracing::debug!(alternate = %addr, told_by = %self.label(teller), "alternate out of the teller's scope; ignored");
                continue;
            }
            if !self.known.insert(addr) {
                continue;
            }
            tracing::debug!(alternate = %addr, told_by = %self.label(teller), "new source from X-Alt");
            let index = self.sources.push(DownloadSource {
                label: addr.to_string(),
                connector: (swarm.connect)(addr),
                partial: true,
                addr: Some(addr),
            });
            self.learned_from.insert(index, told_by);
            self.plan_source(index);
        }
    }

    /// Handles what a worker reported; `Err` for a disk error, which ends
    /// the download.
    fn handle(&mut self, event: WorkerEvent, options: &DownloadOptions) -> std::io::Result<()> {
        let now = self.now();
        match event {
            WorkerEvent::Headers {
                source,
                available,
                offer,
                alternates,
            } => {
                if self.liars.contains(&source) {
                    return Ok(());
                }
                if available.is_some() {
                    self.not_serving.remove(&source);
                }
                match available {
                    Some(Availability::Groups(groups)) => {
                        self.plan.handle_availability(source, groups, now);
                    }
                    // A partial source that no longer lists ranges has
                    // the whole file now.
                    Some(Availability::Whole) if self.plan.is_partial(source) => {
                        let whole = GroupSet::full(self.size);
                        self.plan.handle_availability(source, whole, now);
                    }
                    _ => {}
                }
                match offer {
                    OfferSaid::Nothing => {}
                    OfferSaid::Anything => self.plan.handle_offer(source, None, now),
                    OfferSaid::Groups(groups) => {
                        self.plan.handle_offer(source, Some(groups), now);
                    }
                }
                self.learn(source, alternates);
            }
            WorkerEvent::Receiving { request } => self.plan.handle_data_received(request, now),
            WorkerEvent::Verified { request, group } => {
                self.first_byte
                    .get_or_insert_with(|| self.started.elapsed());
                let source = self.workers.get(&request).map(|(source, _)| *source);
                self.plan.handle_group_verified(request, group, now);
                // Written before it was reported: it can be served.
                if let Some(serving) = &mut self.serving {
                    serving.add([group]);
                }
                if let (Some(swarm), Some(addr)) = (&self.swarm, source.and_then(|s| self.addr(s)))
                {
                    swarm.mesh.add(self.id, addr);
                }
                report_progress(
                    options,
                    &self.plan,
                    self.sources.list.len(),
                    self.first_byte,
                );
            }
            WorkerEvent::Bad { request, group } => {
                let source = self.workers.remove(&request).map(|(source, _)| source);
                self.plan.handle_group_bad(request, group);
                self.apply_plan_events(source);
            }
            WorkerEvent::Done { request, conn } => {
                if let (Some((source, _)), Some(conn)) = (self.workers.remove(&request), conn) {
                    if !self.dropped.contains_key(&source) {
                        self.idle[source].push(conn);
                    }
                }
                self.plan.handle_request_done(request);
            }
            WorkerEvent::ProbeDone { request, conn } => {
                if let (Some((source, _)), Some(conn)) = (self.workers.remove(&request), conn) {
                    if !self.dropped.contains_key(&source) {
                        self.idle[source].push(conn);
                    }
                }
                self.plan.handle_probe_done(request, now);
            }
            WorkerEvent::NotServing { request, probe } => {
                let Some((source, _)) = self.workers.remove(&request) else {
                    return Ok(());
                };
                if !probe && !self.plan.is_partial(source) {
                    let reason = format!("answered HTTP {}", StatusCode::NOT_FOUND);
                    self.plan.handle_request_failed(request, reason);
                    return Ok(());
                }
                let since = *self.not_serving.entry(source).or_insert_with(Instant::now);
                if since.elapsed() < NOT_SERVING_GRACE {
                    if probe {
                        // Nothing yet: asked again after the probe interval.
                        let nothing = GroupSet::empty(self.size);
                        self.plan.handle_availability(source, nothing, now);
                        self.plan.handle_probe_done(request, now);
                    } else {
                        // A partial source between states (its download
                        // just ended, say): its groups go to others, and
                        // it is asked again after a pause.
                        self.plan
                            .handle_request_busy(request, NOT_SERVING_PAUSE, now);
                    }
                } else {
                    self.mesh_remove(source);
                    let secs = NOT_SERVING_GRACE.as_secs();
                    let reason = format!("has not served the file for {secs} s (404)");
                    self.plan.handle_request_failed(request, reason);
                }
            }
            WorkerEvent::Unavailable { request, groups } => {
                let source = self.workers.remove(&request).map(|(source, _)| source);
                self.plan.handle_request_unavailable(request, groups, now);
                self.apply_plan_events(source);
            }
            WorkerEvent::Offered { request, offer } => {
                self.workers.remove(&request);
                self.plan.handle_request_offered(request, offer, now);
            }
            WorkerEvent::Failed {
                request,
                reason,
                unreachable,
            } => {
                if let Some((source, _)) = self.workers.remove(&request) {
                    if unreachable {
                        self.mesh_remove(source);
                    }
                }
                self.plan.handle_request_failed(request, reason);
            }
            WorkerEvent::Busy {
                request,
                retry_after,
            } => {
                self.workers.remove(&request);
                self.plan.handle_request_busy(request, retry_after, now);
            }
            WorkerEvent::Disk(error) => return Err(error),
        }
        Ok(())
    }

    /// Why every source failed, one line each.
    fn reasons(&self) -> String {
        self.failed
            .iter()
            .map(|(i, r)| format!("{}: {r}", self.sources.list[*i].label))
            .chain(
                self.dropped
                    .iter()
                    .map(|(s, r)| format!("{}: {r}", self.label(*s))),
            )
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How each source did, in the order heard of.
    fn reports(&self) -> Vec<SourceReport> {
        self.sources
            .list
            .iter()
            .enumerate()
            .map(|(index, source)| {
                let planned = self.usable.iter().position(|u| *u == index);
                SourceReport {
                    source: source.label.clone(),
                    bytes: planned.map_or(0, |p| self.plan.bytes_from(p)),
                    dropped: self
                        .failed
                        .get(&index)
                        .or_else(|| planned.and_then(|p| self.dropped.get(&p)))
                        .cloned(),
                    partial: source.partial,
                    alternate: self.learned_from.contains_key(&index),
                    paths: self.sources.paths[index].paths(),
                }
            })
            .collect()
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
    let mut sources = SourceSet::new(feed);
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
    let (tree, tree_bytes, resumed) = match resume(&paths, saved, id, size).await {
        Some((tree, bytes, groups)) => {
            tracing::info!(
                groups = groups.len(),
                "resuming: groups already verified on disk"
            );
            (tree, bytes, groups)
        }
        None => {
            let (tree, bytes) = fetch_tree(&mut sources, id, size, &mut failed, &control).await?;
            save_state(&paths, id, size, &bytes).await?;
            (tree, bytes, Vec::new())
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

    let mut config = options.config.clone();
    if config.seed == 0 {
        // Random among equals must differ between downloaders, or a
        // crowd asks for the same groups in the same order.
        config.seed = rand::random();
    }
    let plan = DownloadPlan::new(size, resumed, config);
    let resumed_bytes = plan.verified_bytes();
    let swarm = control.swarm.clone();
    let serving = swarm.as_ref().map(|swarm| {
        let mut serving = ServedPartial::new(
            swarm.catalog.clone(),
            id,
            paths.partial.clone(),
            size,
            Bytes::from(tree_bytes),
        );
        // Groups verified in an earlier run are served at once.
        serving.add(plan.verified_groups());
        serving
    });
    let (events_tx, mut events) = mpsc::channel::<WorkerEvent>(256);
    let mut run = Run {
        id,
        size,
        plan,
        sources,
        usable: Vec::new(),
        failed,
        dropped: HashMap::new(),
        liars: HashSet::new(),
        not_serving: HashMap::new(),
        known: HashSet::new(),
        learned_from: HashMap::new(),
        idle: Vec::new(),
        workers: HashMap::new(),
        events: events_tx,
        tree,
        writer,
        swarm,
        serving,
        tell_dropped: control.dropped.clone(),
        clock: Instant::now(),
        started,
        first_byte: None,
    };
    for index in 0..run.sources.list.len() {
        if !run.failed.contains_key(&index) {
            run.take_in(index);
        } else if let Some(addr) = run.sources.list[index].addr {
            run.known.insert(addr);
        }
    }
    report_progress(&options, &run.plan, run.sources.list.len(), None);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Since when every source is dropped while more may come.
    let mut stuck_since: Option<tokio::time::Instant> = None;
    // Every source failed (stuck), or some group has no source left
    // (only partial sources that lack it): the caller was told to look
    // for more.
    let (mut was_stuck, mut was_lacking) = (false, false);

    let outcome = loop {
        run.start_requests();
        run.apply_plan_events(None);
        if run.plan.is_complete() {
            break Ok(());
        }
        let stuck = run.plan.is_stuck();
        if stuck && !was_stuck {
            control.starve();
        }
        let lacking = !stuck && run.plan.is_starving();
        if lacking && !was_lacking {
            control.lack();
        }
        (was_stuck, was_lacking) = (stuck, lacking);
        if !run.plan.is_stuck() {
            stuck_since = None;
        } else if stuck_since.is_none() {
            stuck_since = Some(tokio::time::Instant::now());
        }
        let waited_out = stuck_since.is_some_and(|since| since.elapsed() >= NEW_SOURCE_WAIT);
        if run.plan.is_stuck() && (!run.sources.is_open() || waited_out) {
            break Err(DownloadError::AllSourcesFailed(run.reasons()));
        }
        let give_up = stuck_since.map(|since| since + NEW_SOURCE_WAIT);
        // A paused source's time, or a partial source's next probe.
        let wakeup = run.plan.next_wakeup(run.now()).map(|at| run.instant(at));
        tokio::select! {
            () = cancel.cancelled() => break Err(DownloadError::Cancelled),
            event = events.recv() => {
                let Some(event) = event else { continue };
                if let Err(error) = run.handle(event, &options) {
                    break Err(io_error(&paths.partial)(error));
                }
            }
            arrived = run.sources.arrival(), if run.sources.is_open() => {
                if let Some(index) = arrived {
                    run.take_in(index);
                    report_progress(&options, &run.plan, run.sources.list.len(), run.first_byte);
                }
            }
            () = sleep_until_some(give_up) => {}
            () = sleep_until_some(wakeup) => {}
            _ = tick.tick() => {
                let now = run.now();
                run.plan.handle_timeout(now);
            }
        }
    };
    for (_, (_, handle)) in run.workers.drain() {
        handle.abort();
    }
    // On an error the partial stops being served as `run` goes.
    outcome?;

    let synced = file.clone();
    tokio::task::spawn_blocking(move || synced.sync_all())
        .await
        .map_err(|_| io_error(&paths.partial)(std::io::Error::other("sync task failed")))?
        .map_err(io_error(&paths.partial))?;
    let partial_left = move_into_place(&paths, options.force)?;
    if let (Some(swarm), Some(serving)) = (&run.swarm, &mut run.serving) {
        // The whole file is served before the partial goes: no gap.
        if swarm.serve_when_done {
            swarm.catalog.insert(
                id,
                CatalogEntry {
                    path: paths.target.clone(),
                    size,
                    tree: serving.entry.tree.clone(),
                },
            );
        }
        serving.withdraw();
        if partial_left {
            serving.lookups_done().await;
        }
    }
    if partial_left {
        let _ = std::fs::remove_file(&paths.partial);
    }
    let _ = tokio::fs::remove_file(&paths.state).await;

    Ok(DownloadReport {
        path: paths.target,
        size,
        resumed_bytes,
        sources: run.reports(),
        elapsed: started.elapsed(),
        first_byte: run.first_byte,
        already_present: false,
    })
}
