//! The daemon: one long-running leaf with a download queue, live
//! searches, shares and settings, implementing [`Control`] for the API.
//!
//! [`start`] starts the leaf (sharing the downloads folder unless told
//! not to), reads back `queue.json` and `settings.json`, binds the control
//! port, writes `control.json`, and runs its tasks under one cancellation
//! token and task tracker: the queue driver (starts what the queue says,
//! when it says), one fetch per active download, the queue writer (saves
//! `queue.json` atomically after every change, coalescing bursts), one
//! task per live search, an upload-rate sampler, and the API server.
//! Stopping the daemon, cleanly or not, leaves active downloads active in
//! `queue.json`, so the next start resumes them (the fetch re-verifies
//! the partial file on disk).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use canopy_core::link::Link;
use canopy_core::queue::{
    DownloadQueue, EntryState, NewEntry, QueueConfig, QueueError, SavedQueue, Stop,
};
use canopy_core::save_name::{safe_file_name, unique_name};
use canopy_node::NodeError;
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_proto::ContentId;
use canopy_transfer::download::{partial_name, state_name};
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::backend::{self, FetchError, FetchJob, FetchProgress};
use crate::control::Control;
use crate::downloads::{Live, RateMeter, view};
use crate::model::{
    AddDownload, ApiError, DownloadView, LanNeighbour, SearchSpec, SearchView, Settings,
    SettingsPatch, SharesView, Status, Totals, UploadView,
};
use crate::searches::{Searches, parse_id};
use crate::{control_file, persist, settings};

/// The queue's file in the data directory.
pub const QUEUE_FILE: &str = "queue.json";
/// How long a clean stop waits for tasks.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);
/// Longest name accepted in an [`AddDownload`].
const MAX_NAME_BYTES: usize = 1024;
/// How often the upload counter is sampled for the upload rate.
const UPLOAD_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The leaf; its `data_dir` is required (identity, caches, queue).
    pub leaf: LeafOptions,
    /// Where the control API listens.
    pub control: SocketAddr,
    /// Where downloads are saved (created if missing).
    pub downloads_dir: PathBuf,
    /// Share the downloads folder (and each finished download at once).
    pub share_downloads: bool,
    /// The settings to start with (`settings.json` overrides them).
    pub settings: Settings,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The leaf options name no data directory.
    #[error("the leaf daemon needs a data directory")]
    NoDataDir,
    /// A folder could not be created or a file written.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The control port could not be bound.
    #[error("cannot listen for the control API on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The leaf did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves consistent data behind
    // (every change is one assignment or one queue call), so go on.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn queue_error(error: QueueError) -> ApiError {
    match error {
        QueueError::NotFound(id) => ApiError::NotFound(format!("no download of {id}")),
        QueueError::Full(_) => ApiError::Conflict(error.to_string()),
        QueueError::Conflict { .. } => ApiError::Conflict(error.to_string()),
    }
}

/// The running daemon, as the API sees it.
pub struct Daemon {
    leaf: Arc<LeafHandle>,
    data_dir: PathBuf,
    downloads_dir: PathBuf,
    queue: Mutex<DownloadQueue>,
    /// Downloads in progress, shared by the fetches (progress, many times
    /// a second) and the API (views).
    live: DashMap<ContentId, Live>,
    searches: Searches,
    settings: Mutex<Settings>,
    /// Wakes the queue driver.
    kick: Notify,
    /// Bumped on every queue change; the writer saves the latest.
    queue_version: watch::Sender<u64>,
    /// Upload rate, from the server's byte counter sampled each second.
    upload_meter: Mutex<RateMeter>,
    /// Held while a download's file name is chosen, so two downloads
    /// never pick the same free name.
    naming: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("data_dir", &self.data_dir)
            .field("downloads_dir", &self.downloads_dir)
            .finish_non_exhaustive()
    }
}

/// A running daemon. Dropping it stops its tasks and its leaf as a crash
/// would (the queue stays as last saved, `control.json` stays);
/// [`DaemonHandle::shutdown`] stops cleanly.
#[derive(Debug)]
pub struct DaemonHandle {
    daemon: Arc<Daemon>,
    control_url: String,
    token: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    stop_on_drop: DropGuard,
    stop_leaf_on_drop: DropGuard,
}

impl DaemonHandle {
    /// The control API's base URL (`http://127.0.0.1:PORT`).
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    /// The URL that opens the web UI (it hands the token over once).
    pub fn ui_url(&self) -> String {
        format!("{}/?token={}", self.control_url, self.token)
    }

    /// The daemon itself (what the API calls).
    pub fn control(&self) -> Arc<Daemon> {
        self.daemon.clone()
    }

    /// The leaf.
    pub fn leaf(&self) -> &LeafHandle {
        &self.daemon.leaf
    }

    /// Changes live settings (as `PATCH /api/settings` does), e.g. on a
    /// configuration reload.
    pub async fn update_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        self.daemon.update_settings(patch).await
    }

    /// Stops everything: the API, searches, downloads (kept active in the
    /// queue, to resume at the next start), then the leaf; removes
    /// `control.json`.
    pub async fn shutdown(self) {
        let DaemonHandle {
            daemon,
            shutdown,
            tracker,
            stop_on_drop,
            stop_leaf_on_drop,
            ..
        } = self;
        stop_on_drop.disarm();
        let leaf_token = stop_leaf_on_drop.disarm();
        shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_PATIENCE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some daemon tasks did not stop in time");
        }
        // Whatever finished as the tasks stopped is recorded too.
        let saved = lock(&daemon.queue).save();
        if let Err(error) = persist::write_json(&daemon.data_dir.join(QUEUE_FILE), &saved) {
            tracing::warn!(%error, "cannot save queue.json");
        }
        control_file::remove(&daemon.data_dir);
        // The API's callers may still hold the daemon; the leaf then
        // stops without its goodbyes.
        match Arc::try_unwrap(daemon).map(|daemon| Arc::try_unwrap(daemon.leaf)) {
            Ok(Ok(leaf)) => leaf.shutdown().await,
            _ => leaf_token.cancel(),
        }
    }
}

/// Starts the daemon. See the module documentation.
pub async fn start(options: DaemonOptions) -> Result<DaemonHandle, DaemonError> {
    let data_dir = options
        .leaf
        .data_dir
        .clone()
        .ok_or(DaemonError::NoDataDir)?;
    std::fs::create_dir_all(&data_dir).map_err(io_error(&data_dir))?;
    let downloads_dir = options.downloads_dir.clone();
    std::fs::create_dir_all(&downloads_dir).map_err(io_error(&downloads_dir))?;
    let settings = settings::load(&data_dir, options.settings);
    let mut leaf_options = options.leaf.clone();
    if options.share_downloads && !leaf_options.shares.contains(&downloads_dir) {
        leaf_options.shares.push(downloads_dir.clone());
    }
    leaf_options.server.upload_slots = settings.upload_slots;
    let listener =
        TcpListener::bind(options.control)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: options.control,
                source,
            })?;
    let control_addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: options.control,
        source,
    })?;
    let control_url = format!("http://{control_addr}");
    let token = backend::load_token(&data_dir).map_err(io_error(&data_dir))?;
    let url_token = token.as_str().to_owned();
    let leaf = Arc::new(canopy_node::leaf::start(leaf_options).await?);
    // From here, an early return stops the leaf again.
    let stop_leaf_on_drop = leaf.shutdown_token().drop_guard();
    let shutdown = CancellationToken::new();
    let stop_on_drop = shutdown.clone().drop_guard();
    let tracker = TaskTracker::new();

    let config = QueueConfig {
        max_active: settings.max_active_downloads,
        ..QueueConfig::default()
    };
    let saved: SavedQueue = persist::read_json(&data_dir.join(QUEUE_FILE)).unwrap_or_default();
    let (queue, restarted) = DownloadQueue::restore(saved, config);
    if !restarted.is_empty() {
        tracing::info!(downloads = restarted.len(), "resuming downloads");
    }
    let (queue_version, versions) = watch::channel(0);
    let daemon = Arc::new(Daemon {
        leaf,
        data_dir: data_dir.clone(),
        downloads_dir,
        queue: Mutex::new(queue),
        live: DashMap::new(),
        searches: Searches::new(),
        settings: Mutex::new(settings),
        kick: Notify::new(),
        queue_version,
        upload_meter: Mutex::new(RateMeter::default()),
        naming: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    // The port is bound: clients may connect (and wait) from now on.
    control_file::write(&data_dir, &control_url).map_err(io_error(&data_dir))?;
    daemon.apply_settings(&settings);
    tracker.spawn(daemon.clone().write_queue(versions));
    tracker.spawn(daemon.clone().drive(restarted));
    tracker.spawn(daemon.clone().sample_uploads());
    tracker.spawn(backend::serve_api(
        daemon.clone(),
        listener,
        token,
        shutdown.clone(),
    ));
    tracing::info!(url = %control_url, "control API listening");
    Ok(DaemonHandle {
        daemon,
        control_url,
        token: url_token,
        shutdown,
        tracker,
        stop_on_drop,
        stop_leaf_on_drop,
    })
}

impl Daemon {
    /// The leaf.
    pub fn leaf(&self) -> &LeafHandle {
        &self.leaf
    }

    /// Where downloads are saved.
    pub fn downloads_dir(&self) -> &Path {
        &self.downloads_dir
    }

    fn apply_settings(&self, settings: &Settings) {
        backend::set_upload_rate(&self.leaf, settings.upload_rate_limit);
        backend::set_download_rate(&self.leaf, settings.download_rate_limit);
        backend::set_upload_slots(&self.leaf, settings.upload_slots);
        lock(&self.queue).set_max_active(settings.max_active_downloads);
        self.kick.notify_one();
    }

    /// Says the queue changed: the writer saves it, the driver looks at it.
    fn queue_changed(&self) {
        self.queue_version.send_modify(|v| *v = v.wrapping_add(1));
        self.kick.notify_one();
    }

    /// Saves `queue.json` after each change until shutdown, then once more.
    async fn write_queue(self: Arc<Self>, mut versions: watch::Receiver<u64>) {
        let path = self.data_dir.join(QUEUE_FILE);
        loop {
            let stopping = tokio::select! {
                changed = versions.changed() => changed.is_err(),
                () = self.shutdown.cancelled() => true,
            };
            let dirty = versions.has_changed().unwrap_or(false) || !stopping;
            versions.borrow_and_update();
            if dirty {
                let saved = lock(&self.queue).save();
                let path = path.clone();
                let written =
                    tokio::task::spawn_blocking(move || persist::write_json(&path, &saved)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "cannot save queue.json"),
                    Err(error) => tracing::warn!(%error, "queue writer failed"),
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Samples the bytes uploaded each second, for the upload rate.
    async fn sample_uploads(self: Arc<Self>) {
        let mut every = tokio::time::interval(UPLOAD_SAMPLE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            let bytes = backend::uploaded_bytes(&self.leaf);
            lock(&self.upload_meter).sample(Instant::now(), bytes);
        }
    }

    /// Starts what the queue says, when it says, until shutdown.
    async fn drive(self: Arc<Self>, restarted: Vec<ContentId>) {
        for id in restarted {
            self.spawn_fetch(id);
        }
        loop {
            let now = unix_now();
            let (starts, next_retry) = {
                let mut queue = lock(&self.queue);
                (queue.poll_starts(now), queue.next_retry())
            };
            if !starts.is_empty() {
                self.queue_version.send_modify(|v| *v = v.wrapping_add(1));
            }
            for id in starts {
                self.spawn_fetch(id);
            }
            let wait = next_retry.map_or(Duration::from_secs(3600), |at| {
                Duration::from_secs(at.saturating_sub(now).max(1))
            });
            tokio::select! {
                () = self.kick.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Runs a fetch for `id` (after the previous one, if any, stopped).
    fn spawn_fetch(self: &Arc<Self>, id: ContentId) {
        let cancel = self.shutdown.child_token();
        let (lock_arc, generation) = {
            let mut entry = self.live.entry(id).or_default();
            entry.generation += 1;
            entry.cancel = Some(cancel.clone());
            (entry.lock.clone(), entry.generation)
        };
        self.tracker
            .spawn(self.clone().run_fetch(id, cancel, lock_arc, generation));
    }

    async fn run_fetch(
        self: Arc<Self>,
        id: ContentId,
        cancel: CancellationToken,
        fetch_lock: Arc<tokio::sync::Mutex<()>>,
        generation: u64,
    ) {
        let _running = tokio::select! {
            guard = fetch_lock.lock_owned() => guard,
            () = cancel.cancelled() => return,
        };
        let Some(entry) = lock(&self.queue).get(&id).cloned() else {
            return;
        };
        if entry.state != EntryState::Active || cancel.is_cancelled() {
            return;
        }
        let outcome = match self.already_here(&entry).await {
            Some(skip) => Err(skip),
            None => {
                // A name chosen before (a resumed download) or asked for.
                let name = entry
                    .path
                    .as_deref()
                    .and_then(|p| Path::new(p).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .or_else(|| entry.name.clone());
                tracing::info!(%id, name = ?name, "download started");
                let job = FetchJob {
                    id,
                    size: entry.size,
                    name,
                    target: self.target_fn(id, entry.name.clone(), entry.path.clone()),
                    progress: self.progress_fn(id),
                    cancel: cancel.clone(),
                    // Saved in the downloads folder: shared when it is.
                    share_when_done: self.is_shared_folder(&self.downloads_dir),
                };
                backend::fetch(&self.leaf, job).await
            }
        };
        let now = unix_now();
        let finished_path = match outcome {
            // Paused, cancelled or shut down: whoever stopped it updated the
            // queue (or, at shutdown, left it active to resume).
            Err(FetchError::Cancelled) => {
                tracing::info!(%id, "download stopped (paused, cancelled or shutting down)");
                // The fetch may have been dropped before it withdrew its
                // partial file: it must not stay published while nothing
                // serves it (the fetch lock keeps a newer fetch of this id
                // from having published yet).
                backend::unshare_partial(&self.leaf, id).await;
                return;
            }
            Ok(fetched) => {
                tracing::info!(
                    %id,
                    path = %fetched.path.display(),
                    bytes = fetched.size,
                    paths = ?fetched.paths,
                    "download verified"
                );
                let path = fetched.path.display().to_string();
                let mut queue = lock(&self.queue);
                let _ = queue.set_details(&id, None, Some(fetched.size), None);
                let _ = queue.set_paths(&id, fetched.paths.into_values().flatten());
                queue.finish(&id, path, now).ok().map(|()| fetched.path)
            }
            Err(FetchError::Skipped { path, reason }) => {
                let path = path.display().to_string();
                let mut queue = lock(&self.queue);
                if entry.path.as_ref() == Some(&path) {
                    // Our own file, finished before a crash could record it.
                    let _ = queue.finish(&id, path, now);
                } else {
                    tracing::info!(%id, %reason, "download skipped");
                    let _ = queue.skip(&id, path, reason, now);
                }
                None
            }
            Err(FetchError::Failed { reason, retryable }) => {
                tracing::info!(%id, %reason, retryable, "download failed");
                let _ = lock(&self.queue).fail(&id, reason, retryable, now);
                None
            }
        };
        {
            let state = lock(&self.queue).get(&id).map(|e| e.state);
            let finished = state.is_none_or(|s| s.is_finished());
            // Only if no newer fetch of it started meanwhile.
            let ours = |live: &Live| live.generation == generation;
            if finished {
                self.live.remove_if(&id, |_, live| ours(live));
            } else if let Some(mut live) = self.live.get_mut(&id).filter(|l| ours(l)) {
                live.cancel = None;
            }
        }
        self.queue_changed();
        let share = finished_path
            .as_deref()
            .is_some_and(|path| self.is_shared_folder(path));
        backend::finish_sharing(&self.leaf, id, finished_path.as_deref(), share).await;
    }

    /// True if `path` is inside a folder shared now (the downloads folder
    /// counts while it is shared: a user who stopped sharing it is obeyed).
    fn is_shared_folder(&self, path: &Path) -> bool {
        let real = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        self.leaf
            .share_summary()
            .folders
            .iter()
            .any(|f| real.starts_with(&f.path) || path.starts_with(&f.path))
    }

    /// The content is already shared, or already at the name asked for.
    async fn already_here(&self, entry: &canopy_core::queue::QueueEntry) -> Option<FetchError> {
        if let Some(path) = backend::shared_path(&self.leaf, &entry.id) {
            return Some(FetchError::Skipped {
                reason: format!("already shared: {}", path.display()),
                path,
            });
        }
        let name = entry.name.as_deref()?;
        let path = match &entry.path {
            Some(path) => PathBuf::from(path),
            None => self.downloads_dir.join(safe_file_name(name, &entry.id)),
        };
        same_content(&path, entry.id, entry.size)
            .await
            .then(|| FetchError::Skipped {
                reason: format!("already here: {}", path.display()),
                path,
            })
    }

    /// Progress reports update the live table and the totals.
    fn progress_fn(self: &Arc<Self>, id: ContentId) -> backend::ProgressFn {
        let daemon = Arc::downgrade(self);
        Arc::new(move |progress: &FetchProgress| {
            let Some(daemon) = daemon.upgrade() else {
                return;
            };
            // Gone if cancelled meanwhile.
            let Some(mut entry) = daemon.live.get_mut(&id) else {
                return;
            };
            entry.meter.sample(Instant::now(), progress.verified_bytes);
            entry.progress = progress.clone();
        })
    }

    /// Chooses the file a download is saved to once its name and size
    /// are known: the one chosen before (a resumed download), else the
    /// name asked for or the sources' one, made safe and numbered if
    /// another file (or another download) has it; or a skip if the same
    /// content is already there.
    fn target_fn(
        self: &Arc<Self>,
        id: ContentId,
        wanted: Option<String>,
        chosen: Option<String>,
    ) -> backend::TargetFn {
        let daemon = self.clone();
        Box::new(move |from_sources: String, size: Option<u64>| {
            Box::pin(async move {
                let _naming = daemon.naming.lock().await;
                let dir = daemon.downloads_dir.clone();
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|error| FetchError::Failed {
                        reason: format!("{}: {error}", dir.display()),
                        retryable: false,
                    })?;
                if let Some(chosen) = chosen.map(PathBuf::from) {
                    if !exists(&chosen) {
                        return Ok(chosen);
                    }
                    if same_content(&chosen, id, size).await {
                        return Err(FetchError::Skipped {
                            reason: format!("already here: {}", chosen.display()),
                            path: chosen,
                        });
                    }
                }
                let name = safe_file_name(wanted.as_deref().unwrap_or(&from_sources), &id);
                let first = dir.join(&name);
                if exists(&first) && same_content(&first, id, size).await {
                    return Err(FetchError::Skipped {
                        reason: format!("already here: {}", first.display()),
                        path: first,
                    });
                }
                let reserved: Vec<PathBuf> = lock(&daemon.queue)
                    .entries()
                    .into_iter()
                    .filter(|e| e.id != id)
                    .filter_map(|e| e.path.as_ref().map(PathBuf::from))
                    .collect();
                let unique = unique_name(&name, |candidate| {
                    let path = dir.join(candidate);
                    exists(&path) || reserved.contains(&path)
                })
                .ok_or_else(|| FetchError::Failed {
                    reason: format!("every numbered name of {name} is taken"),
                    retryable: false,
                })?;
                let path = dir.join(&unique);
                // The size is the sources' claim: shown while it runs (the
                // progress carries it), never saved, so a lie can't pin a
                // later attempt to it; the verified size is saved at the end.
                let changed = lock(&daemon.queue).set_details(
                    &id,
                    Some(unique),
                    None,
                    Some(path.display().to_string()),
                );
                if changed.unwrap_or(false) {
                    daemon.queue_changed();
                }
                Ok(path)
            })
        })
    }

    fn views(&self) -> Vec<DownloadView> {
        let now = Instant::now();
        let queue = lock(&self.queue);
        queue
            .entries()
            .into_iter()
            .map(|entry| view(entry, self.live.get(&entry.id).as_deref(), now))
            .collect()
    }

    fn view_of(&self, id: &ContentId) -> Result<DownloadView, ApiError> {
        let queue = lock(&self.queue);
        let entry = queue
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("no download of {id}")))?;
        Ok(view(entry, self.live.get(id).as_deref(), Instant::now()))
    }

    fn stop_fetch(&self, id: &ContentId) {
        let cancel = self.live.get_mut(id).and_then(|mut l| l.cancel.take());
        if let Some(cancel) = cancel {
            cancel.cancel();
        }
    }

    fn parse_add(add: &AddDownload) -> Result<NewEntry, ApiError> {
        let (id, mut name, size) = match (add.id.as_deref(), add.link.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::field("link", "give an id or a link, not both"));
            }
            (None, None) => {
                return Err(ApiError::field("id", "give a content id or a canopy: link"));
            }
            (Some(id), None) => (parse_id("id", id.trim())?, None, None),
            (None, Some(link)) => {
                let link = Link::parse(link).map_err(|e| ApiError::field("link", e.to_string()))?;
                (link.content_id, link.name, link.size)
            }
        };
        if let Some(asked) = &add.name {
            if asked.trim().is_empty() || asked.len() > MAX_NAME_BYTES {
                return Err(ApiError::field("name", "must be 1 to 1024 bytes"));
            }
            name = Some(asked.clone());
        }
        // Saved under a safe name only (a link's name is anyone's claim).
        let name = name.map(|n| safe_file_name(&n, &id));
        Ok(NewEntry {
            id,
            name,
            size,
            priority: add.priority.unwrap_or(0),
        })
    }
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// True if the regular file at `path` is content `id` (its size first,
/// then its BLAKE3).
async fn same_content(path: &Path, id: ContentId, size: Option<u64>) -> bool {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return false;
        };
        if !meta.is_file() || size.is_some_and(|s| s != meta.len()) {
            return false;
        }
        canopy_share::hash_file(&path).is_ok_and(|found| found == id)
    })
    .await
    .unwrap_or(false)
}

/// Removes a cancelled download's partial and state files in `dir`
/// (regular files only: whatever else is there is not ours).
fn remove_partial(dir: &Path, id: ContentId) {
    // Only while nobody downloads this id into `dir`: a download of it
    // added again at once (or a `canopy get` in another process) holds
    // the lock, and its files are its own.
    let Ok(_held) = canopy_transfer::partial_lock::PartialLock::acquire(dir, id) else {
        tracing::info!(%id, "partial files in use by another download of it; kept");
        return;
    };
    for name in [partial_name(id), state_name(id)] {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove");
            }
        }
    }
}

impl Control for Daemon {
    async fn status(&self) -> Status {
        let leaf_status = self.leaf.status();
        let shares = self.leaf.share_summary();
        let counts = lock(&self.queue).counts();
        let download_rate = {
            let now = Instant::now();
            self.live.iter().map(|l| l.meter.rate(now)).sum()
        };
        Status {
            node_id: self.leaf.node_id().to_string(),
            version: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_owned(),
            listen: self.leaf.listen_addr().map(|a| a.to_string()),
            observed_addr: leaf_status.observed_addr.map(|a| a.to_string()),
            supernodes: leaf_status
                .supernodes
                .iter()
                .map(|a| a.to_string())
                .collect(),
            shared_files: shares.files,
            shared_bytes: shares.bytes,
            downloads_dir: self.downloads_dir.display().to_string(),
            totals: Totals {
                uploaded_bytes: backend::uploaded_bytes(&self.leaf),
                downloaded_bytes: backend::downloaded_bytes(&self.leaf),
                upload_rate: lock(&self.upload_meter).rate(Instant::now()),
                download_rate,
                uploads_active: backend::uploads_active(&self.leaf),
                downloads_active: counts.active,
                downloads_queued: counts.queued,
            },
            lan_peers: leaf_status
                .lan_peers
                .iter()
                .map(|peer| LanNeighbour {
                    node_id: peer.node_id.to_string(),
                    role: match peer.role {
                        canopy_proto::Role::Leaf => "leaf",
                        canopy_proto::Role::Supernode => "supernode",
                    }
                    .to_owned(),
                    addr: peer
                        .overlay_addr()
                        .or(peer.http_addr())
                        .map_or_else(|| peer.ip.to_string(), |addr| addr.to_string()),
                })
                .collect(),
            reachability: reachability_view(&leaf_status.reachability),
        }
    }

    async fn start_search(&self, spec: SearchSpec) -> Result<SearchView, ApiError> {
        self.searches
            .start(&self.leaf, &spec, &self.tracker, &self.shutdown)
            .await
    }

    fn watch_search(&self, id: &str) -> Option<watch::Receiver<SearchView>> {
        self.searches.watch(id)
    }

    fn forget_search(&self, id: &str) -> bool {
        self.searches.forget(id)
    }

    fn downloads(&self) -> Vec<DownloadView> {
        self.views()
    }

    fn download(&self, id: &str) -> Result<DownloadView, ApiError> {
        self.view_of(&parse_id("id", id)?)
    }

    async fn add_download(&self, add: AddDownload) -> Result<(DownloadView, bool), ApiError> {
        let new = Self::parse_add(&add)?;
        let id = new.id;
        let added = {
            let mut queue = lock(&self.queue);
            queue.add(new, unix_now()).map_err(queue_error)?.1
        };
        if added {
            self.queue_changed();
        }
        Ok((self.view_of(&id)?, added))
    }

    fn pause(&self, id: &str) -> Result<DownloadView, ApiError> {
        let id = parse_id("id", id)?;
        let stop = lock(&self.queue).pause(&id).map_err(queue_error)?;
        if stop == Stop::Running {
            self.stop_fetch(&id);
        }
        self.queue_changed();
        self.view_of(&id)
    }

    fn resume(&self, id: &str) -> Result<DownloadView, ApiError> {
        let id = parse_id("id", id)?;
        lock(&self.queue).resume(&id).map_err(queue_error)?;
        self.queue_changed();
        self.view_of(&id)
    }

    fn set_priority(&self, id: &str, priority: i32) -> Result<DownloadView, ApiError> {
        let id = parse_id("id", id)?;
        lock(&self.queue)
            .set_priority(&id, priority)
            .map_err(queue_error)?;
        self.queue_changed();
        self.view_of(&id)
    }

    async fn cancel(&self, id: &str) -> Result<(), ApiError> {
        let id = parse_id("id", id)?;
        let entry = lock(&self.queue).cancel(&id).map_err(queue_error)?;
        self.queue_changed();
        let live = self.live.remove(&id);
        if let Some((_, live)) = live {
            if let Some(cancel) = live.cancel {
                cancel.cancel();
            }
            // Wait for the fetch to let go of its files.
            let _stopped = live.lock.lock().await;
        }
        if !entry.state.is_finished() {
            let dir = entry
                .path
                .as_deref()
                .and_then(|p| Path::new(p).parent().map(Path::to_owned))
                .unwrap_or_else(|| self.downloads_dir.clone());
            remove_partial(&dir, id);
        }
        Ok(())
    }

    fn uploads(&self) -> Vec<UploadView> {
        backend::uploads(&self.leaf)
    }

    fn shares(&self) -> SharesView {
        backend::shares(&self.leaf, &self.downloads_dir)
    }

    async fn add_share(&self, path: String) -> Result<SharesView, ApiError> {
        let folder = checked_folder(&path)?;
        backend::add_share(&self.leaf, &folder).await?;
        Ok(self.shares())
    }

    async fn remove_share(&self, path: String) -> Result<SharesView, ApiError> {
        // A folder deleted since it was shared can still be unshared.
        let folder = PathBuf::from(&path);
        if !folder.is_absolute() {
            return Err(ApiError::field("path", "must be an absolute path"));
        }
        backend::remove_share(&self.leaf, &folder).await?;
        Ok(self.shares())
    }

    async fn rescan(&self) -> SharesView {
        backend::rescan(&self.leaf, &self.downloads_dir)
    }

    fn settings(&self) -> Settings {
        *lock(&self.settings)
    }

    async fn update_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        // Applied and saved under the settings lock, so two changes at once
        // end with the leaf, the answer and settings.json all on the last
        // one (the file is a few bytes, written atomically).
        let mut current = lock(&self.settings);
        let next = settings::apply(*current, &patch)?;
        *current = next;
        self.apply_settings(&next);
        if let Err(error) = settings::save(&self.data_dir, &next) {
            tracing::warn!(%error, "cannot save settings.json");
        }
        Ok(next)
    }
}

/// Folders never shared: the whole system, and the kernel's and the
/// devices' pseudo-files (endless, or not files at all).
const NEVER_SHARED: [&str; 5] = ["/", "/proc", "/sys", "/dev", "/run"];

/// A folder path as the API takes it: absolute, an existing directory, not
/// the root or a system pseudo-file tree.
fn checked_folder(path: &str) -> Result<PathBuf, ApiError> {
    let folder = PathBuf::from(path);
    if !folder.is_absolute() {
        return Err(ApiError::field("path", "must be an absolute path"));
    }
    if !folder.is_dir() {
        return Err(ApiError::NotFound(format!("{path}: no such folder")));
    }
    let real = folder.canonicalize().unwrap_or_else(|_| folder.clone());
    let system = NEVER_SHARED
        .iter()
        .any(|never| real == Path::new(never) || (*never != "/" && real.starts_with(never)));
    if system {
        return Err(ApiError::Forbidden(format!(
            "{} is a system folder and is never shared",
            real.display()
        )));
    }
    Ok(folder)
}

/// The leaf's reachability as the API shows it.
fn reachability_view(reach: &canopy_core::reachability::ReachStatus) -> crate::model::Reachability {
    crate::model::Reachability {
        reachable: reach.reachable.name().to_owned(),
        nat: reach.nat.name().to_owned(),
        public_addrs: reach
            .public
            .iter()
            .map(|addr| crate::model::PublicAddr {
                ip: addr.ip.to_string(),
                confirmed: addr.confirmed,
            })
            .collect(),
        announced: reach.announced.map(|addr| addr.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_takes_an_id_or_a_link_and_names_what_is_wrong() {
        let id = "ab".repeat(32);
        let by_id = Daemon::parse_add(&AddDownload {
            id: Some(id.clone()),
            priority: Some(3),
            ..AddDownload::default()
        })
        .unwrap();
        assert_eq!(by_id.id, ContentId([0xab; 32]));
        assert_eq!(by_id.priority, 3);
        let by_link = Daemon::parse_add(&AddDownload {
            link: Some(format!("canopy:{id}?name=..%2Fevil.sh&size=5")),
            ..AddDownload::default()
        })
        .unwrap();
        assert_eq!(by_link.name.as_deref(), Some("_evil.sh"), "made safe");
        assert_eq!(by_link.size, Some(5));
        let field = |add: AddDownload| Daemon::parse_add(&add).err().and_then(|e| e.body().field);
        assert_eq!(field(AddDownload::default()).as_deref(), Some("id"));
        assert_eq!(
            field(AddDownload {
                id: Some("12".into()),
                ..AddDownload::default()
            })
            .as_deref(),
            Some("id")
        );
        assert_eq!(
            field(AddDownload {
                link: Some("magnet:x".into()),
                ..AddDownload::default()
            })
            .as_deref(),
            Some("link")
        );
        assert_eq!(
            field(AddDownload {
                id: Some(id.clone()),
                link: Some(format!("canopy:{id}")),
                ..AddDownload::default()
            })
            .as_deref(),
            Some("link")
        );
        assert_eq!(
            field(AddDownload {
                id: Some(id),
                name: Some(" ".into()),
                ..AddDownload::default()
            })
            .as_deref(),
            Some("name")
        );
    }
}
