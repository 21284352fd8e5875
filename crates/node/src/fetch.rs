//! Fetching one content through a running leaf, without fixed waits: the
//! download starts on the first source the search turns up and takes later
//! hits as new sources while it runs; while it has few sources it asks the
//! network again every [`REASK_INTERVAL`], and at once when every source it
//! has failed (giving up when that search finds nobody new) or some group
//! has no source left. A source the download dropped (a seed that
//! restarted, or timed out) is fed again when a search that started at
//! least [`REFEED_PAUSE`] later lists it (the pause doubling each time),
//! at most [`MAX_REFEEDS`] times.
//!
//! The hits are peers' claims: of the sizes claimed for the id, the one
//! most sources agree on is tried first (the tree proves it or not) and the
//! next one if every source of it fails; the sources of a first batch are
//! tried in random order; a name from the network is made safe
//! ([`canopy_core::save_name`]) before a file is saved under it.
//!
//! Before searching: a target that exists is either the content already
//! (its BLAKE3 is the id: nothing to do) or an error, and the lock on the
//! partial file is taken, so a second fetch of the id into the same folder
//! fails at once.
//!
//! A firewalled source is reached by push; when the leaf is joined to a
//! supernode that relays, by a relay circuit when the push fails
//! ([`crate::relay::fallback`]).
//!
//! Every downloader is a source: the download serves what it has verified
//! through the leaf's file server while it runs (a [`Swarm`]: the leaf's
//! catalog and download mesh, its announced port sent as `X-Listen`,
//! alternates dialled through the leaf's download limit), and the fetch
//! publishes it to the supernodes as a partial file
//! ([`LeafHandle::share_partial`], under the name it will be saved as)
//! from the first verified group, then at most every
//! [`PARTIAL_UPDATE_INTERVAL`] or each tenth of the file. Hits say which
//! sources are partial. When it ends: if the caller will share the
//! finished file ([`FetchRequest::share_when_done`]) it is served from
//! the target at once and the caller shares it, then unpublishes the
//! partial; otherwise (and on failure or cancel) the fetch unpublishes it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_core::download::DownloadConfig;
use canopy_core::leaf::SearchRequest;
use canopy_core::save_name::safe_file_name;
use canopy_core::search::{MAX_SOURCES_PER_RESULT, SearchResult, Source, most_agreed};
use canopy_proto::{ContentId, NodeId, SharedFile, is_valid_file_name};
use canopy_transfer::bandwidth::ThrottledConnector;
use canopy_transfer::client::{Connector, DirectConnector};
use canopy_transfer::download::{
    self, DownloadControl, DownloadError, DownloadOptions, DownloadReport, DownloadSource,
    MAX_SOURCES, Progress, Swarm,
};
use canopy_transfer::partial_lock::PartialLock;
use canopy_transfer::punch::{PunchConfig, PunchConnector, PunchRequester};
use canopy_transfer::push::{PushConnector, PushRequester};
use rand::seq::SliceRandom;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeError;
use crate::leaf::{LeafHandle, LiveSearch, PushWay};

/// How long a dial to a source may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a firewalled source may take to connect back.
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// While a download runs with few sources, the network is asked again
/// this often.
pub const REASK_INTERVAL: Duration = Duration::from_secs(20);
/// Below this many sources, a running download keeps asking for more.
pub const FEW_SOURCES: usize = 8;
/// A running download's partial file is published again at most this
/// often, unless it grew by a tenth of the file since.
pub const PARTIAL_UPDATE_INTERVAL: Duration = Duration::from_secs(5);
/// A source the download dropped is fed again only if a search that
/// started at least this long after the drop lists it; the pause doubles
/// each time it is fed again, so a source that keeps failing is not fed
/// in a loop.
pub const REFEED_PAUSE: Duration = Duration::from_secs(2);
/// Times one source is fed again in one download, at most.
pub const MAX_REFEEDS: u32 = 3;

/// Where to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchTarget {
    /// Exactly this file.
    File(PathBuf),
    /// Into this folder (created if missing), under the request's name or
    /// else the name most sources give, made safe.
    Dir(PathBuf),
}

/// Where a fetch stands, for a progress line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchProgress {
    /// The name it is saved under, once known.
    pub name: Option<String>,
    /// Its size, once a source said.
    pub size: Option<u64>,
    /// Bytes verified and on disk.
    pub verified_bytes: u64,
    /// Sources heard of.
    pub known_sources: usize,
    /// Sources with a request in flight.
    pub active_sources: usize,
    /// When the first verified byte landed, from the fetch's start.
    pub first_byte: Option<Duration>,
}

/// Called as a fetch advances.
pub type FetchProgressFn = Arc<dyn Fn(&FetchProgress) + Send + Sync>;

/// What to fetch, and how.
#[derive(Clone)]
pub struct FetchRequest {
    /// The content.
    pub content_id: ContentId,
    /// Its size, if known (e.g. from a `canopy:` link): only sources
    /// claiming it are used.
    pub size: Option<u64>,
    /// The name to save under (made safe), if known.
    pub name: Option<String>,
    /// Where to save.
    pub target: FetchTarget,
    /// Replace an existing file.
    pub force: bool,
    /// Download tunables.
    pub config: DownloadConfig,
    /// Progress reports.
    pub progress: Option<FetchProgressFn>,
    /// Stops the fetch, keeping the partial and state files (a pause).
    pub cancel: CancellationToken,
    /// How long each search for sources runs (the download does not wait
    /// for it: it starts on the first source).
    pub search_timeout: Duration,
    /// How far the searches may travel.
    pub ttl: u8,
    /// The caller shares the finished file ([`LeafHandle::share_file`])
    /// and then unpublishes the partial
    /// ([`LeafHandle::unshare_partial`]): the download serves the file
    /// from the target the moment it is complete, so it is never
    /// unavailable in between, and its partial file stays published
    /// until then. If false, the fetch unpublishes it when done.
    pub share_when_done: bool,
}

impl std::fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchRequest")
            .field("content_id", &self.content_id)
            .field("size", &self.size)
            .field("name", &self.name)
            .field("target", &self.target)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

impl FetchRequest {
    /// Defaults for fetching `content_id` to `target`.
    pub fn new(content_id: ContentId, target: FetchTarget) -> Self {
        Self {
            content_id,
            size: None,
            name: None,
            target,
            force: false,
            config: DownloadConfig::default(),
            progress: None,
            cancel: CancellationToken::new(),
            search_timeout: Duration::from_secs(5),
            ttl: canopy_core::supernode::DEFAULT_TTL_CAP,
            share_when_done: false,
        }
    }
}

/// Fetches `request.content_id` through `leaf`. See the module docs.
/// A cancelled fetch fails with [`DownloadError::Cancelled`], its partial
/// and state files kept; no source found is [`NodeError::NotFound`].
pub async fn fetch(leaf: &LeafHandle, request: FetchRequest) -> Result<DownloadReport, NodeError> {
    let started = Instant::now();
    let id = request.content_id;
    let report = Reporter::new(request.progress.clone(), started);
    report.update(|_| {});
    // What can be settled before searching.
    let dir = match &request.target {
        FetchTarget::File(path) => parent_of(path),
        FetchTarget::Dir(dir) => {
            create_dir(dir)?;
            dir.clone()
        }
    };
    let early_target = match (&request.target, &request.name) {
        (FetchTarget::File(path), _) => Some(path.clone()),
        (FetchTarget::Dir(dir), Some(name)) => Some(dir.join(safe_file_name(name, &id))),
        (FetchTarget::Dir(_), None) => None,
    };
    if let Some(target) = &early_target {
        if let Some(done) = already_there(target, id, request.size, request.force, started).await? {
            return Ok(done);
        }
    }
    let mut lock = Some(PartialLock::acquire(&dir, id).map_err(DownloadError::from)?);

    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let published = PublishedPartial::default();
    let mut finder = Finder::new(leaf, &request);
    let outcome = async {
        finder.ask().await?;
        let mut tried: Vec<u64> = Vec::new();
        let mut callback = Callback::new(leaf);
        loop {
            let Some(group) = finder
                .wait_for_group(request.size, &tried, &request.cancel)
                .await?
            else {
                return Err(if tried.is_empty() {
                    NodeError::NotFound(id)
                } else {
                    NodeError::Download(DownloadError::AllSourcesFailed(
                        "no source of any size claimed for it delivered it".into(),
                    ))
                });
            };
            tried.push(group.size);
            let target = match &early_target {
                Some(target) => target.clone(),
                None => dir.join(safe_file_name(&group.name, &id)),
            };
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
            report.update(|p| {
                p.name.clone_from(&name);
                p.size = Some(group.size);
            });
            if early_target.is_none() {
                if let Some(done) =
                    already_there(&target, id, Some(group.size), request.force, started).await?
                {
                    return Ok(done);
                }
            }
            let lock = match lock.take() {
                Some(lock) => lock,
                None => PartialLock::acquire(&dir, id).map_err(DownloadError::from)?,
            };
            let attempt = Attempt {
                request: &request,
                size: group.size,
                target,
                report: &report,
                published: &published,
            };
            match attempt.run(&mut finder, &mut callback, lock).await {
                Err(NodeError::Download(
                    DownloadError::AllSourcesFailed(_) | DownloadError::NoSources,
                )) if request.size.is_none() && finder.has_untried(&tried) => {
                    tracing::info!(
                        size = group.size,
                        "every source of this size failed; trying another size"
                    );
                    // Not a source of this size any more.
                    published.withdraw(leaf, id).await;
                }
                Err(error) => return Err(error),
                Ok(mut done) => {
                    done.elapsed = started.elapsed();
                    done.first_byte = report.first_byte();
                    return Ok(done);
                }
            }
        }
    }
    .await;
    shutdown.cancel();
    tracker.close();
    // Done and shared by the caller: it unpublishes the partial once the
    // whole file is published. Otherwise it goes now.
    let shared_by_caller =
        request.share_when_done && outcome.as_ref().is_ok_and(|done| !done.already_present);
    if !shared_by_caller {
        published.withdraw(leaf, id).await;
    }
    outcome
}

/// Whether this fetch published a partial file (so that only then does it
/// unpublish one: a fetch refused for the lock must not withdraw the
/// partial of the fetch holding it).
#[derive(Debug, Default)]
struct PublishedPartial(AtomicBool);

impl PublishedPartial {
    async fn publish(&self, leaf: &LeafHandle, file: SharedFile) {
        self.0.store(true, Ordering::Relaxed);
        leaf.share_partial(file).await;
    }

    async fn withdraw(&self, leaf: &LeafHandle, id: ContentId) {
        if self.0.swap(false, Ordering::Relaxed) {
            leaf.unshare_partial(id).await;
        }
    }
}

/// When a running download's partial file is published again: at the
/// first verified bytes, then at most every [`PARTIAL_UPDATE_INTERVAL`],
/// sooner when it grew by a tenth of the file.
#[derive(Debug)]
struct PartialSchedule {
    size: u64,
    /// When and at how many bytes it was last published.
    last: Option<(tokio::time::Instant, u64)>,
}

impl PartialSchedule {
    fn new(size: u64) -> Self {
        Self { size, last: None }
    }

    /// When to publish `verified` bytes: `None` if there is nothing new.
    fn due(&self, verified: u64) -> Option<tokio::time::Instant> {
        if verified == 0 {
            return None;
        }
        let now = tokio::time::Instant::now();
        match self.last {
            None => Some(now),
            Some((_, bytes)) if verified <= bytes => None,
            Some((_, bytes)) if verified - bytes >= self.size / 10 || verified >= self.size => {
                Some(now)
            }
            Some((at, _)) => Some(at + PARTIAL_UPDATE_INTERVAL),
        }
    }

    fn published(&mut self, verified: u64) {
        self.last = Some((tokio::time::Instant::now(), verified));
    }
}

/// The folder a file target lives in.
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn create_dir(dir: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        NodeError::Download(DownloadError::Io {
            path: dir.to_owned(),
            source,
        })
    })
}

/// If something is at `target`: the content already (a report saying so),
/// or an error unless `force`. `size`, if known, spares hashing a file
/// that can't be it.
async fn already_there(
    target: &Path,
    id: ContentId,
    size: Option<u64>,
    force: bool,
    started: Instant,
) -> Result<Option<DownloadReport>, NodeError> {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return Ok(None);
    };
    // Hashed only if it could be the content (a size we know must match).
    if meta.file_type().is_file() && size.is_none_or(|size| size == meta.len()) {
        let path = target.to_owned();
        let hashed = tokio::task::spawn_blocking(move || canopy_share::hash_file(&path))
            .await
            .ok()
            .and_then(Result::ok);
        if hashed == Some(id) {
            return Ok(Some(DownloadReport {
                path: target.to_owned(),
                size: meta.len(),
                resumed_bytes: meta.len(),
                sources: Vec::new(),
                elapsed: started.elapsed(),
                first_byte: None,
                already_present: true,
            }));
        }
    }
    if force {
        return Ok(None);
    }
    Err(DownloadError::Exists(target.to_owned()).into())
}

/// Builds progress reports from what is known so far.
struct Reporter {
    progress: Option<FetchProgressFn>,
    started: Instant,
    state: Mutex<FetchProgress>,
}

impl Reporter {
    fn new(progress: Option<FetchProgressFn>, started: Instant) -> Arc<Self> {
        Arc::new(Self {
            progress,
            started,
            state: Mutex::new(FetchProgress::default()),
        })
    }

    fn update(&self, change: impl FnOnce(&mut FetchProgress)) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        change(&mut state);
        if state.first_byte.is_none() && state.verified_bytes > 0 {
            state.first_byte = Some(self.started.elapsed());
        }
        if let Some(progress) = &self.progress {
            progress(&state);
        }
    }

    fn first_byte(&self) -> Option<Duration> {
        self.state.lock().ok().and_then(|s| s.first_byte)
    }
}

/// The searches for sources, and everything they found (merged, by size).
struct Finder<'a> {
    leaf: &'a LeafHandle,
    id: ContentId,
    request: SearchRequest,
    live: Option<LiveSearch>,
    /// When the running search started.
    live_since: tokio::time::Instant,
    /// One result per claimed size, sources merged across searches.
    found: Vec<SearchResult>,
    /// For each source found, when the latest search that listed it
    /// started (only sources kept in `found`).
    seen: HashMap<NodeId, tokio::time::Instant>,
}

impl<'a> Finder<'a> {
    fn new(leaf: &'a LeafHandle, fetch: &FetchRequest) -> Self {
        Self {
            leaf,
            id: fetch.content_id,
            request: SearchRequest::content(fetch.content_id, fetch.ttl, fetch.search_timeout),
            live: None,
            live_since: tokio::time::Instant::now(),
            found: Vec::new(),
            seen: HashMap::new(),
        }
    }

    /// Starts a search, unless one runs.
    async fn ask(&mut self) -> Result<(), NodeError> {
        if self.live.is_none() {
            self.live_since = tokio::time::Instant::now();
            self.live = Some(self.leaf.search_live(self.request.clone()).await?);
        }
        Ok(())
    }

    /// Sends a fresh query (a running one is dropped: a new query reaches
    /// sources that joined since the last one went out).
    async fn ask_again(&mut self) -> Result<(), NodeError> {
        self.live = None;
        self.ask().await
    }

    fn searching(&self) -> bool {
        self.live.is_some()
    }

    /// Waits for the running search to change; merges what it found. Never
    /// returns while no search runs.
    async fn next(&mut self) {
        let Some(live) = &mut self.live else {
            return std::future::pending().await;
        };
        let ended = live.updates.changed().await.is_err();
        let snapshot = live.updates.borrow_and_update().clone();
        if ended || snapshot.done {
            self.live = None;
        }
        for result in snapshot.results {
            self.merge(result, self.live_since);
        }
    }

    /// Merges what a search started at `searched` found.
    fn merge(&mut self, mut result: SearchResult, searched: tokio::time::Instant) {
        // Our own partial file, published to every supernode we are
        // attached to, can come back through another: not a source.
        let us = self.leaf.node_id();
        result.sources.retain(|source| source.node_id != us);
        let count = self.found.len();
        match self.found.iter_mut().find(|r| r.size == result.size) {
            Some(known) => {
                for source in result.sources {
                    let full = known.sources.len() >= MAX_SOURCES_PER_RESULT;
                    let node = source.node_id;
                    match known.sources.iter_mut().find(|s| s.node_id == node) {
                        // A partial source heard of with more, or whole,
                        // or a source at a new address (it restarted);
                        // never a whole source made partial by a hit.
                        Some(had)
                            if (had.partial
                                && (!source.partial || source.available > had.available))
                                || ((had.addr != source.addr
                                    || had.firewalled != source.firewalled)
                                    && (had.partial || !source.partial)) =>
                        {
                            *had = source;
                        }
                        Some(_) => {}
                        None if !full => known.sources.push(source),
                        None => continue,
                    }
                    self.seen.insert(node, searched);
                }
                known.name = result.name;
                known.names = result.names;
            }
            None if count < canopy_core::search::MAX_SIZES_PER_CONTENT => {
                for source in &result.sources {
                    self.seen.insert(source.node_id, searched);
                }
                self.found.push(result);
            }
            None => {}
        }
    }

    /// The group to try next: of size `size` if given, else the most agreed
    /// size not yet tried.
    fn best(&self, size: Option<u64>, tried: &[u64]) -> Option<&SearchResult> {
        let candidates: Vec<SearchResult> = self
            .found
            .iter()
            .filter(|r| size.is_none_or(|s| r.size == s) && !tried.contains(&r.size))
            .filter(|r| !r.sources.is_empty())
            .cloned()
            .collect();
        let best = most_agreed(&candidates, self.id)?;
        self.found.iter().find(|r| r.size == best.size)
    }

    fn has_untried(&self, tried: &[u64]) -> bool {
        self.best(None, tried).is_some()
    }

    /// Waits until a group to try exists (searching again if none is
    /// running); `None` once the searches end without one.
    async fn wait_for_group(
        &mut self,
        size: Option<u64>,
        tried: &[u64],
        cancel: &CancellationToken,
    ) -> Result<Option<SearchResult>, NodeError> {
        loop {
            if let Some(best) = self.best(size, tried) {
                return Ok(Some(best.clone()));
            }
            if !self.searching() {
                return Ok(None);
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(DownloadError::Cancelled.into()),
                () = self.next() => {}
            }
        }
    }

    /// The sources of size `size`.
    fn sources_of(&self, size: u64) -> Vec<Source> {
        self.found
            .iter()
            .find(|r| r.size == size)
            .map(|r| r.sources.clone())
            .unwrap_or_default()
    }
}

/// How the sources of a fetch are reached: dialed, or, firewalled, asked
/// through the overlay to connect to us.
struct Callback<'a> {
    leaf: &'a LeafHandle,
}

impl<'a> Callback<'a> {
    fn new(leaf: &'a LeafHandle) -> Self {
        Self { leaf }
    }

    /// Where `source` serves HTTP on our LAN, if LAN discovery heard it
    /// (by node id) with an HTTP port. The IP is the one its datagram came
    /// from (a private or link-local one, see `canopy_core::lan`); the
    /// node id is its claim, and the content is verified like any other.
    fn lan_addr(&self, source: &Source) -> Option<SocketAddr> {
        self.leaf
            .status()
            .lan_peers
            .iter()
            .find(|peer| peer.node_id == source.node_id)
            .and_then(|peer| Some(SocketAddr::new(peer.ip, peer.http_port?)))
    }

    /// How to reach `source`.
    async fn source(
        &mut self,
        source: &Source,
        id: ContentId,
    ) -> Result<DownloadSource, NodeError> {
        // Every source's bytes count against the leaf's download limit.
        let limit = self.leaf.download_limit().clone();
        if let Some(lan) = self.lan_addr(source) {
            // On our own LAN: dialed there (no router in between, and most
            // home routers can't loop a connection back to their own public
            // address), racing the hit's addresses if they accept
            // connections (the LAN's first in its family).
            let mut addrs = vec![lan];
            if !source.firewalled {
                addrs.extend(source.addrs());
            }
            let direct = Arc::new(DirectConnector::racing(&addrs, DIAL_TIMEOUT));
            return Ok(DownloadSource {
                label: format!("{lan} (LAN)"),
                connector: Arc::new(ThrottledConnector::new(direct, limit)),
                partial: source.partial,
                addr: Some(lan),
            });
        }
        if !source.firewalled {
            let direct = Arc::new(DirectConnector::racing(&source.addrs(), DIAL_TIMEOUT));
            return Ok(DownloadSource {
                label: source.addr.to_string(),
                connector: Arc::new(ThrottledConnector::new(direct, limit)),
                partial: source.partial,
                addr: Some(source.addr),
            });
        }
        let connector = self.firewalled(source, id);
        // The last resort: a relay, when the leaf is joined to one.
        let (connector, label) = match self.leaf.status().relays.first() {
            Some(relay) => (
                crate::relay::fallback(self.leaf, connector, source.node_id, id),
                format!("{} (push, else relay via {relay})", source.addr),
            ),
            None => (connector, format!("{} (push)", source.addr)),
        };
        Ok(DownloadSource {
            label,
            connector: Arc::new(ThrottledConnector::new(connector, limit)),
            partial: source.partial,
            addr: None,
        })
    }

    /// How to reach a firewalled source: with a port mapping on our
    /// router, a plain push to our HTTP port at its mapped address (the
    /// server hands the pushed connection over); otherwise a hole punch,
    /// which also works when we are reachable (the source's dial then
    /// simply gets in).
    fn firewalled(&self, source: &Source, id: ContentId) -> Arc<dyn Connector> {
        match self.mapped_callback() {
            Some(callback) => self.push_connector(source, id, callback),
            None => self.punch_connector(source, id),
        }
    }

    /// The address our HTTP server is reached at through the port
    /// mapping on our router, while it is mapped and it is the address we
    /// announced.
    fn mapped_callback(&self) -> Option<SocketAddr> {
        let status = *self.leaf.port_mapping()?.borrow();
        match status {
            canopy_portmap::Status::Mapped(addr) if self.leaf.announced_addr() == Some(addr) => {
                Some(addr)
            }
            _ => None,
        }
    }

    /// A push asking `source` to connect to `callback`, our HTTP port.
    fn push_connector(
        &self,
        source: &Source,
        id: ContentId,
        callback: SocketAddr,
    ) -> Arc<dyn Connector> {
        let (pushes, node) = (self.leaf.push_sender(), source.node_id);
        let requester: PushRequester = Arc::new(move || {
            let pushes = pushes.clone();
            Box::pin(async move {
                pushes
                    .push(node, id, callback, PushWay::Connect, None)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        });
        let inbox = self.leaf.server().doorway().pushes().clone();
        Arc::new(PushConnector::new(node, inbox, requester, PUSH_TIMEOUT))
    }

    /// A hole punch to `source`, from a fresh port per connection.
    fn punch_connector(&self, source: &Source, id: ContentId) -> Arc<dyn Connector> {
        let (pushes, node) = (self.leaf.push_sender(), source.node_id);
        let status = self.leaf.watch_status();
        let requester: PunchRequester = Arc::new(move |port| {
            let pushes = pushes.clone();
            // Our supernode puts the IP it sees us at in the push; the
            // port is ours to say.
            let ip = status
                .borrow()
                .observed_addr
                .map_or(IpAddr::from([0, 0, 0, 0]), |seen| seen.ip());
            let callback = SocketAddr::new(ip, port);
            Box::pin(async move {
                pushes
                    .push(node, id, callback, PushWay::Punch, None)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        });
        Arc::new(
            PunchConnector::new(node, &source.addrs(), requester, PunchConfig::downloader())
                .with_slots(self.leaf.download_punches().clone()),
        )
    }
}

/// Serving and meshing while `leaf` downloads: its catalog serves the
/// partial, its server's mesh is shared, its announced port (if it
/// accepts connections) goes out as `X-Listen`, and alternates are dialled
/// through its download limit.
fn swarm(leaf: &LeafHandle, serve_when_done: bool) -> Swarm {
    let limit = leaf.download_limit().clone();
    Swarm {
        catalog: leaf.catalog().clone(),
        mesh: leaf.server().mesh().clone(),
        listen_port: leaf.announced_addr().map(|addr| addr.port()),
        connect: Arc::new(move |addr: SocketAddr| -> Arc<dyn Connector> {
            let direct = Arc::new(DirectConnector::new(addr, DIAL_TIMEOUT));
            Arc::new(ThrottledConnector::new(direct, limit.clone()))
        }),
        serve_when_done,
    }
}

/// One download of one claimed size.
struct Attempt<'r> {
    request: &'r FetchRequest,
    size: u64,
    target: PathBuf,
    report: &'r Arc<Reporter>,
    published: &'r PublishedPartial,
}

impl Attempt<'_> {
    async fn run(
        self,
        finder: &mut Finder<'_>,
        callback: &mut Callback<'_>,
        lock: PartialLock,
    ) -> Result<DownloadReport, NodeError> {
        let id = self.request.content_id;
        let (feed, sources) = mpsc::channel(MAX_SOURCES);
        let mut feed = Some(feed);
        let mut fed = Fed::default();
        // Each of the at most MAX_SOURCES sources is told of once.
        let (dropped_tx, mut dropped) = mpsc::channel(MAX_SOURCES);
        let starving = Arc::new(Notify::new());
        let lacking = Arc::new(Notify::new());
        let reporter = self.report.clone();
        let (verified_tx, mut verified) = watch::channel(0u64);
        let options = DownloadOptions {
            content_id: id,
            size: self.size,
            target: self.target.clone(),
            force: self.request.force,
            config: self.request.config.clone(),
            progress: Some(Arc::new(move |p: Progress| {
                verified_tx.send_if_modified(|bytes| {
                    let grew = p.verified_bytes > *bytes;
                    *bytes = (*bytes).max(p.verified_bytes);
                    grew
                });
                reporter.update(|state| {
                    state.verified_bytes = p.verified_bytes;
                    state.known_sources = p.known_sources;
                    state.active_sources = p.active_sources;
                });
            })),
        };
        let leaf = finder.leaf;
        let control = DownloadControl {
            cancel: self.request.cancel.clone(),
            lock: Some(lock),
            starving: Some(starving.clone()),
            lacking: Some(lacking.clone()),
            dropped: Some(dropped_tx),
            swarm: Some(swarm(leaf, self.request.share_when_done)),
        };
        // Published under the name it is saved as.
        let partial_file = SharedFile {
            content_id: id,
            name: self
                .target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|name| is_valid_file_name(name))
                // A target named by the user may be no valid name on the
                // wire (a supernode would refuse the whole message).
                .unwrap_or_else(|| safe_file_name(&self.target.to_string_lossy(), &id)),
            size: self.size,
            available: None,
        };
        let mut schedule = PartialSchedule::new(self.size);
        let download = download::download_live(sources, options, control);
        tokio::pin!(download);
        // The first batch in random order: no source is first by where its
        // hit came from.
        let mut first = finder.sources_of(self.size);
        first.shuffle(&mut rand::rng());
        self.feed(&first, finder, &mut feed, &mut fed, callback)
            .await?;
        let mut reask =
            tokio::time::interval_at(tokio::time::Instant::now() + REASK_INTERVAL, REASK_INTERVAL);
        // Every source failed: the search made for it ends the download if
        // it finds nobody new.
        let mut starved_at: Option<usize> = None;
        loop {
            let due = schedule.due(*verified.borrow());
            tokio::select! {
                done = &mut download => return done.map_err(NodeError::from),
                () = sleep_until_some(due) => {
                    let available = *verified.borrow();
                    schedule.published(available);
                    let file = SharedFile {
                        available: Some(available),
                        ..partial_file.clone()
                    };
                    self.published.publish(leaf, file).await;
                }
                // Only wakes the loop: the schedule reads the value.
                Ok(()) = verified.changed() => {}
                // It may be fed again once a later search lists it.
                Some(label) = dropped.recv() => fed.dropped(&label),
                () = finder.next(), if feed.is_some() => {
                    let known = finder.sources_of(self.size);
                    self.feed(&known, finder, &mut feed, &mut fed, callback)
                        .await?;
                    if starved_at.is_some_and(|count| fed.sent > count) {
                        starved_at = None;
                    }
                    if starved_at.is_some() && !finder.searching() {
                        feed = None;
                    }
                }
                () = starving.notified(), if feed.is_some() => {
                    starved_at = Some(fed.sent);
                    // A search refused now (the session reconnecting, too
                    // many at once) leaves the feed open: the download's own
                    // wait for a new source decides.
                    if let Err(error) = finder.ask_again().await {
                        tracing::debug!(%error, "could not search again for sources");
                    }
                }
                // Some group has no source left, though others do: look
                // for more, leaving the feed open (only a download with no
                // source at all gives up).
                () = lacking.notified(), if feed.is_some() => {
                    if let Err(error) = finder.ask_again().await {
                        tracing::debug!(%error, "could not search again for sources");
                    }
                }
                _ = reask.tick(), if feed.is_some() => {
                    if fed.active() < FEW_SOURCES {
                        let _ = finder.ask_again().await;
                    }
                }
            }
        }
    }

    /// Feeds the sources of `known` not fed yet, and those dropped that
    /// a later search listed (see [`Fed::wants`]); a partial one says so,
    /// so the download asks what it has first.
    async fn feed(
        &self,
        known: &[Source],
        finder: &Finder<'_>,
        feed: &mut Option<mpsc::Sender<DownloadSource>>,
        fed: &mut Fed,
        callback: &mut Callback<'_>,
    ) -> Result<(), NodeError> {
        let Some(sender) = feed.as_ref() else {
            return Ok(());
        };
        for source in known {
            if !fed.wants(source.node_id, finder.seen.get(&source.node_id).copied()) {
                continue;
            }
            let source_id = source.node_id;
            let source = callback.source(source, self.request.content_id).await?;
            fed.fed(source_id, source.label.clone());
            if sender.try_send(source).is_err() {
                *feed = None;
                break;
            }
        }
        Ok(())
    }
}

/// The sources fed to one download, by node id, and whether the download
/// still uses each.
#[derive(Debug, Default)]
struct Fed {
    sources: HashMap<NodeId, FedSource>,
    /// Feeds in all, again-feeds included: the download takes at most
    /// [`MAX_SOURCES`], so no more are sent.
    sent: usize,
}

#[derive(Debug)]
struct FedSource {
    /// As the download names it (in its reports and drop notices).
    label: String,
    /// When the download dropped it, if it did since it was last fed.
    dropped_at: Option<tokio::time::Instant>,
    /// Times it was fed again.
    again: u32,
}

impl Fed {
    /// Sources fed and not dropped since.
    fn active(&self) -> usize {
        self.sources
            .values()
            .filter(|s| s.dropped_at.is_none())
            .count()
    }

    /// The download dropped the source it names `label`.
    fn dropped(&mut self, label: &str) {
        let now = tokio::time::Instant::now();
        for source in self.sources.values_mut().filter(|s| s.label == label) {
            source.dropped_at.get_or_insert(now);
        }
    }

    /// Whether to feed the source `node`, last listed by a search started
    /// at `searched`: if it was never fed, or if the download dropped it
    /// and that search started at least [`REFEED_PAUSE`] after (doubled
    /// for each time it was fed again), at most [`MAX_REFEEDS`] times.
    fn wants(&self, node: NodeId, searched: Option<tokio::time::Instant>) -> bool {
        if self.sent >= MAX_SOURCES {
            return false;
        }
        let Some(fed) = self.sources.get(&node) else {
            return true;
        };
        let (Some(dropped_at), Some(searched)) = (fed.dropped_at, searched) else {
            return false;
        };
        fed.again < MAX_REFEEDS && searched >= dropped_at + REFEED_PAUSE * 2u32.pow(fed.again)
    }

    /// `node` was fed, named `label`.
    fn fed(&mut self, node: NodeId, label: String) {
        self.sent += 1;
        match self.sources.entry(node) {
            Entry::Occupied(entry) => {
                let source = entry.into_mut();
                source.label = label;
                source.dropped_at = None;
                source.again += 1;
            }
            Entry::Vacant(entry) => {
                entry.insert(FedSource {
                    label,
                    dropped_at: None,
                    again: 0,
                });
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_is_published_first_then_every_interval_or_tenth() {
        let mut schedule = PartialSchedule::new(100);
        assert_eq!(schedule.due(0), None, "nothing verified yet");
        let first = schedule.due(1).unwrap();
        assert!(first <= tokio::time::Instant::now(), "at once");
        schedule.published(1);
        let (at, _) = schedule.last.unwrap();
        assert_eq!(schedule.due(1), None, "nothing new");
        assert_eq!(schedule.due(5), Some(at + PARTIAL_UPDATE_INTERVAL));
        assert!(
            schedule.due(11).unwrap() <= tokio::time::Instant::now(),
            "a tenth more"
        );
        schedule.published(11);
        let (at, _) = schedule.last.unwrap();
        assert_eq!(schedule.due(12), Some(at + PARTIAL_UPDATE_INTERVAL));
        assert!(
            schedule.due(100).unwrap() <= tokio::time::Instant::now(),
            "complete"
        );
    }

    #[test]
    fn a_dropped_source_is_fed_again_only_when_a_later_search_lists_it_and_not_forever() {
        let node = NodeId([7; 16]);
        let mut fed = Fed::default();
        let before = tokio::time::Instant::now();
        assert!(fed.wants(node, Some(before)), "never fed");
        fed.fed(node, "a:1".into());
        assert!(!fed.wants(node, Some(before)), "in use");
        assert_eq!(fed.active(), 1);
        fed.dropped("b:2");
        assert_eq!(fed.active(), 1, "another source's notice");
        fed.dropped("a:1");
        assert_eq!(fed.active(), 0);
        let dropped_at = fed.sources[&node].dropped_at.unwrap();
        assert!(!fed.wants(node, None), "no search listed it");
        assert!(!fed.wants(node, Some(before)), "listed before the drop");
        assert!(
            !fed.wants(node, Some(dropped_at + REFEED_PAUSE / 2)),
            "too soon"
        );
        let mut pause = REFEED_PAUSE;
        for again in 0..MAX_REFEEDS {
            assert!(fed.wants(node, Some(dropped_at + pause)), "time {again}");
            fed.fed(node, "a:1".into());
            assert!(!fed.wants(node, Some(dropped_at + pause)), "in use again");
            fed.sources.get_mut(&node).unwrap().dropped_at = Some(dropped_at);
            assert!(
                !fed.wants(node, Some(dropped_at + pause)),
                "the pause doubles"
            );
            pause *= 2;
        }
        assert!(
            !fed.wants(node, Some(dropped_at + pause * 16)),
            "at most MAX_REFEEDS times"
        );
        assert_eq!(fed.sent, 1 + MAX_REFEEDS as usize);
    }
}
