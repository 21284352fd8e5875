//! The leaf service: scans and hashes the shared folders, serves them over
//! HTTP on its listen address (and over pushed connections when it is
//! firewalled), keeps sessions with one or more supernodes, publishes to
//! all of them, keeps its shares current, and runs searches. The
//! [`canopy_core::leaf::LeafSession`] state machine makes the protocol
//! decisions; this module owns the sockets, the timers and the rescans.
//!
//! - [`task`]: the coordinator choosing supernodes and fanning out;
//! - [`session`]: one supernode session;
//! - [`scan`]: shared folders (added and removed while running), files
//!   shared one by one, downloads published as partial files while they
//!   run, rescans, the catalog.
//!
//! A leaf with no shares is a valid, download-only leaf. `canopy search`
//! and `canopy get` run a short-lived leaf: same code, no shares, one
//! supernode, no retries. Supernodes come from the configured addresses,
//! the host cache, the `bootstrap` names (DNS seeds), resolved at start
//! and again whenever there is no one left to dial, and (with LAN
//! discovery on) the supernodes heard on the LAN.

mod live;
mod reach;
mod relay;
mod scan;
mod session;
mod task;

pub use live::{LiveSearch, SearchSnapshot};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canopy_core::handshake::Identity;
use canopy_core::leaf::SearchRequest;
use canopy_core::search::SearchResult;
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{ContentId, NodeId, Role, SharedFile};
use canopy_transfer::Catalog;
use canopy_transfer::bandwidth::RateLimit;
use canopy_transfer::server::{ContentServer, ServerConfig};
use tokio::sync::Semaphore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeError;
use crate::addr::HostPort;
use crate::connection::LinkContext;
use crate::hosts::HostCache;
use crate::traffic::Traffic;
pub use scan::{FolderSummary, ShareSummary};
use scan::{Shares, load_cache, rescan_loop};
use session::{ConnectBacks, SessionContext};
use task::LeafTask;

pub use canopy_core::leaf::PushWay;

/// Pushed uploads being set up at once; further push requests are ignored.
const MAX_PUSHES: usize = 16;
/// A supernode whose full send queue has not moved for this long is slow.
const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A Noise handshake with a supernode not complete by then is cut (the
/// supernode's own handshake timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the hash cache inside the data directory.
pub const HASH_CACHE_FILE: &str = "hash-cache.json";

/// Called with the byte count of each file as it finishes hashing.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How to run a leaf.
#[derive(Clone)]
pub struct LeafOptions {
    /// Supernodes to join (seeds; more are learned and cached).
    pub supernodes: Vec<SocketAddr>,
    /// Names (DNS seeds) whose every address is tried like a supernode
    /// above: resolved at start, and again whenever there is no one left
    /// to dial.
    pub bootstrap: Vec<HostPort>,
    /// How many supernodes to stay connected to at once.
    pub supernodes_wanted: usize,
    /// Where to serve files to other peers, if anywhere.
    pub listen: Option<SocketAddr>,
    /// The address to announce instead of the bound one (a port forward).
    pub advertise: Option<SocketAddr>,
    /// Accept no connections at all: serve only by push.
    pub firewalled: bool,
    /// Map the listen port on the home router (NAT-PMP, UPnP IGD) and
    /// announce the mapped address; `None`: don't. Its `listen` is set to
    /// the bound address. Not tried with an `advertise` address, when
    /// firewalled, or on loopback unless its gateway is named.
    pub port_mapping: Option<canopy_portmap::PortMapConfig>,
    /// The file server's limits: upload slots, connections, per-address
    /// shares, timeouts.
    pub server: ServerConfig,
    /// The rate every upload together is held to (unlimited by default;
    /// its rate can be changed while the leaf runs).
    pub upload_limit: RateLimit,
    /// The rate every download together is held to, for the downloads
    /// that go through this leaf (see [`LeafHandle::download_limit`]).
    pub download_limit: RateLimit,
    /// Folders to share.
    pub shares: Vec<PathBuf>,
    /// Where the hash cache lives; no cache if `None`.
    pub data_dir: Option<PathBuf>,
    /// Keep reconnecting (a long-running leaf) or give up at the first
    /// failure (a one-shot search).
    pub reconnect: bool,
    /// How often to look for changes in the shared folders.
    pub rescan_interval: Option<Duration>,
    /// Our static key, which our node id derives from; if not given, the
    /// one in `data_dir` (created on first start), else an ephemeral one.
    pub key: Option<StaticKeypair>,
    /// Hashing progress, for a progress bar.
    pub progress: Option<Progress>,
    /// Find supernodes (and other leaves) on the LAN by multicast
    /// ([`crate::lan`]); the supernodes heard are dialed like seeds.
    pub lan_discovery: bool,
    /// Where the sessions report what the supernode election reads
    /// (refusals as full, free leaf slots advertised); `None`: no election.
    pub election: Option<crate::election::ElectionSignals>,
}

impl std::fmt::Debug for LeafOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafOptions")
            .field("supernodes", &self.supernodes)
            .field("bootstrap", &self.bootstrap)
            .field("listen", &self.listen)
            .field("shares", &self.shares)
            .field("data_dir", &self.data_dir)
            .field("reconnect", &self.reconnect)
            .field("rescan_interval", &self.rescan_interval)
            .field("lan_discovery", &self.lan_discovery)
            .finish_non_exhaustive()
    }
}

impl LeafOptions {
    /// A leaf of `supernode` (one session) sharing nothing, not listening,
    /// not retrying.
    pub fn new(supernode: SocketAddr) -> Self {
        Self {
            supernodes: vec![supernode],
            bootstrap: Vec::new(),
            supernodes_wanted: 1,
            listen: None,
            advertise: None,
            firewalled: false,
            port_mapping: Some(canopy_portmap::PortMapConfig::new(SocketAddr::from((
                [0, 0, 0, 0],
                0,
            )))),
            server: ServerConfig::default(),
            upload_limit: RateLimit::unlimited(),
            download_limit: RateLimit::unlimited(),
            shares: Vec::new(),
            data_dir: None,
            reconnect: false,
            rescan_interval: None,
            key: None,
            progress: None,
            lan_discovery: false,
            election: None,
        }
    }
}

/// What a leaf is doing, for callers that wait on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafStatus {
    /// A supernode we are attached to, once a handshake completed.
    pub connected_to: Option<SocketAddr>,
    /// Every supernode we are attached to.
    pub supernodes: Vec<SocketAddr>,
    /// Our address as that supernode sees it.
    pub observed_addr: Option<SocketAddr>,
    /// How many whole files we publish (downloads published as partial
    /// files are not counted).
    pub shared_files: usize,
    /// Why we stopped trying, for a leaf that does not reconnect.
    pub failure: Option<String>,
    /// Nodes heard on the LAN (with LAN discovery on): supernodes first.
    pub lan_peers: Vec<canopy_core::lan::LanPeer>,
    /// Whether others can connect to us, our NAT's kind and our public
    /// address, as our supernodes show them.
    pub reachability: canopy_core::reachability::ReachStatus,
    /// The supernodes among `supernodes` that relay (their Hello said
    /// so): where a relayed download can meet a source.
    pub relays: Vec<SocketAddr>,
}

/// What a search found.
#[derive(Debug, Clone, Default)]
pub struct SearchOutcome {
    /// Distinct contents, each with its sources.
    pub results: Vec<SearchResult>,
    /// Hit messages received.
    pub hits: usize,
}

enum Command {
    Search(live::LiveStart),
    /// Publish exactly these.
    Shares(Vec<SharedFile>),
    Push(PushRequest),
}

/// A request to send a Push through a ready supernode session.
struct PushRequest {
    target: NodeId,
    content_id: ContentId,
    callback: SocketAddr,
    /// How it is to reach us (a relay circuit: at the `via` supernode).
    way: PushWay,
    /// Through the session with the supernode at this address (else any).
    via: Option<SocketAddr>,
    reply: oneshot::Sender<Result<(), NodeError>>,
}

/// A running leaf.
#[derive(Debug)]
pub struct LeafHandle {
    node_id: NodeId,
    listen_addr: Option<SocketAddr>,
    announced_addr: watch::Receiver<Option<SocketAddr>>,
    port_mapping: Option<watch::Receiver<canopy_portmap::Status>>,
    server: ContentServer,
    download_limit: RateLimit,
    shares: Shares,
    traffic: Arc<Traffic>,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<LeafStatus>,
    connect_backs_refused: Arc<AtomicU64>,
    /// Hole punches this leaf's downloads run at once.
    download_punches: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Search(start) => write!(f, "Search({:?})", start.request),
            Command::Shares(files) => write!(f, "Shares({} files)", files.len()),
            Command::Push(push) => write!(f, "Push({})", push.target),
        }
    }
}

impl LeafHandle {
    /// Pushes ignored because connecting back would go over the rate
    /// (overall, or to that callback address).
    pub fn connect_backs_refused(&self) -> u64 {
        self.connect_backs_refused.load(Ordering::Relaxed)
    }

    /// The hole punches this leaf's downloads may run at once
    /// (`canopy_core::punch::MAX_DOWNLOAD_PUNCHES_AT_ONCE`; more wait
    /// their turn).
    pub(crate) fn download_punches(&self) -> &Arc<Semaphore> {
        &self.download_punches
    }

    /// The counter behind [`LeafHandle::connect_backs_refused`], for metrics.
    pub(crate) fn connect_backs_refused_counter(&self) -> Arc<AtomicU64> {
        self.connect_backs_refused.clone()
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where we accept connections, if anywhere.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// The address we announce to supernodes (the advertised one, else
    /// the one mapped on the home router, else the bound one): `None` when
    /// we accept no connections (firewalled, or not listening), so
    /// downloads from us go by push. Its port is where other downloaders
    /// reach us. It follows the port mapping: a mapping granted after
    /// start-up, renewed to another address or lost is announced to the
    /// supernodes again (`canopy_core::reachability`).
    pub fn announced_addr(&self) -> Option<SocketAddr> {
        *self.announced_addr.borrow()
    }

    /// The port mapping on the home router as it changes (mapped,
    /// renewed to another address, lost, removed at shutdown); `None` when
    /// no mapping is attempted. The announced address follows it.
    pub fn port_mapping(&self) -> Option<watch::Receiver<canopy_portmap::Status>> {
        self.port_mapping.clone()
    }

    /// The file server (for its counters).
    pub fn server(&self) -> &ContentServer {
        &self.server
    }

    /// Traffic on the connection to the supernode.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// Follows the status as it changes.
    pub fn watch_status(&self) -> watch::Receiver<LeafStatus> {
        self.status.clone()
    }

    /// A handle that sends pushes through this leaf's supernode.
    pub fn push_sender(&self) -> PushSender {
        PushSender {
            commands: self.commands.clone(),
        }
    }

    /// The current status.
    pub fn status(&self) -> LeafStatus {
        self.status.borrow().clone()
    }

    /// Waits until the supernode has accepted us. Fails at once if the leaf
    /// gave up (it does not reconnect), or after `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<SocketAddr, NodeError> {
        let mut status = self.status.clone();
        // The guard `wait_for` returns is let go of at once: a second
        // borrow while holding it deadlocks as soon as the coordinator
        // waits to write the status (the lock lets no new reader in then).
        let waited = tokio::time::timeout(
            timeout,
            status.wait_for(|s| s.connected_to.is_some() || s.failure.is_some()),
        )
        .await
        .map(|found| found.map(|_| ()));
        let supernode = self.status.borrow().connected_to;
        let failure = self.status.borrow().failure.clone();
        match (waited, supernode, failure) {
            (_, Some(addr), _) => Ok(addr),
            (_, None, Some(reason)) => Err(NodeError::NotConnected(reason)),
            (Err(_), None, None) => Err(NodeError::NotConnected(format!(
                "no supernode accepted us within {timeout:?}"
            ))),
            (Ok(_), None, None) => Err(NodeError::Stopped),
        }
    }

    /// Runs a search and returns what it found once its timeout passes or
    /// it has `max_results` contents.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchOutcome, NodeError> {
        let last = self.search_live(request).await?.finish().await?;
        Ok(SearchOutcome {
            results: last.results,
            hits: last.hits,
        })
    }

    /// Starts a search whose results are published as hits arrive; it
    /// ends at its timeout, once it has `max_results` contents, or when the
    /// returned [`LiveSearch`] is dropped. Fails if no supernode session is
    /// ready or the search could not start.
    pub async fn search_live(&self, request: SearchRequest) -> Result<LiveSearch, NodeError> {
        let (start, live, started) = live::LiveStart::new(request);
        self.commands
            .send(Command::Search(start))
            .await
            .map_err(|_| NodeError::Stopped)?;
        started.await.map_err(|_| NodeError::Stopped)??;
        Ok(live)
    }

    /// Replaces the published file list (the next rescan may change it again).
    pub async fn set_shares(&self, files: Vec<SharedFile>) -> Result<(), NodeError> {
        self.commands
            .send(Command::Shares(files))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Shares `folder` too: scans it (hashing what the hash cache does not
    /// know) and serves and publishes its files before returning.
    pub async fn add_share(&self, folder: PathBuf) -> Result<ShareSummary, NodeError> {
        self.shares.add(folder).await
    }

    /// Stops sharing `folder` at once (files shared one by one stay).
    pub async fn remove_share(&self, folder: PathBuf) -> Result<ShareSummary, NodeError> {
        self.shares.remove(folder).await
    }

    /// Rescans every shared folder now.
    pub async fn rescan(&self) -> Result<ShareSummary, NodeError> {
        self.shares.rescan().await
    }

    /// Starts a rescan of every shared folder and returns at once; the
    /// summary returned says a scan is running.
    pub fn rescan_in_background(&self) -> ShareSummary {
        self.shares
            .rescan_in_background(&self.tracker, self.shutdown.clone())
    }

    /// The shared folders with their files and bytes, and whether a scan
    /// is running.
    pub fn share_summary(&self) -> ShareSummary {
        self.shares.summary()
    }

    /// Shares the file at `path` at once: hashed (or found in the hash
    /// cache), served, and published to the supernodes before this
    /// returns, without waiting for a rescan. For a file outside the
    /// shared folders (a download saved elsewhere), it stays shared across
    /// rescans while it is there.
    pub async fn share_file(&self, path: PathBuf) -> Result<(), NodeError> {
        self.shares.share_file(path).await
    }

    /// Publishes `file`, a download still running, as a partial source:
    /// `available` says how many of its bytes are verified (0 if not
    /// given, at most the size). Sent to the supernodes as a delta, only
    /// when it changed; a whole shared file of the same content wins over
    /// it. The download serves the bytes itself (its catalog entry). A
    /// name that is not a valid file name on the wire is not published.
    pub async fn share_partial(&self, file: SharedFile) {
        self.shares.share_partial(file).await;
    }

    /// Stops publishing the partial file of `id` (its download ended); a
    /// whole shared file of the same content stays published.
    pub async fn unshare_partial(&self, id: ContentId) {
        self.shares.unshare_partial(&id).await;
    }

    /// The limit every upload goes through: `upload_limit().set_rate(n)`
    /// holds all uploads together to `n` bytes a second (0 = unlimited).
    pub fn upload_limit(&self) -> &RateLimit {
        self.server.upload_limit()
    }

    /// The limit downloads through this leaf share: wrap each source's
    /// connector in a `ThrottledConnector` with it.
    pub fn download_limit(&self) -> &RateLimit {
        &self.download_limit
    }

    /// What the file server serves: `catalog().get(&id)` says whether a
    /// content is shared, and from which file.
    pub fn catalog(&self) -> &Catalog {
        self.server.catalog()
    }

    /// The token that stops this leaf when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Says Bye to the supernode and stops.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tracker.wait()).await;
    }
}

/// Sends pushes through a leaf's supernode; cheap to clone.
#[derive(Debug, Clone)]
pub struct PushSender {
    commands: mpsc::Sender<Command>,
}

impl PushSender {
    /// Asks firewalled leaf `target`, through the overlay, to serve
    /// `content_id`, reaching us the `way` given at `callback`: connecting
    /// to it, punching a hole to it (dialing it again and again from its
    /// listening port while we dial it: `canopy_transfer::punch`), or
    /// meeting us at a relay circuit. `via`: through our session with
    /// that supernode (for a relay, the relaying one: one of
    /// [`LeafStatus::relays`]), else any.
    pub async fn push(
        &self,
        target: NodeId,
        content_id: ContentId,
        callback: SocketAddr,
        way: PushWay,
        via: Option<SocketAddr>,
    ) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Push(PushRequest {
                target,
                content_id,
                callback,
                way,
                via,
                reply,
            }))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }
}

/// Scans the shares, binds the listener (if any) and starts the leaf.
pub async fn start(options: LeafOptions) -> Result<LeafHandle, NodeError> {
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let catalog = Catalog::new();
    let shares = Shares::new(
        &options.shares,
        load_cache(options.data_dir.as_deref()),
        catalog.clone(),
        commands_tx.clone(),
        options.progress.clone(),
        options.data_dir.as_deref(),
    );
    let files = shares.first_scan().await?;
    let server = ContentServer::with_config(catalog.clone(), options.server.clone())
        .with_upload_limit(options.upload_limit.clone());
    let download_limit = options.download_limit.clone();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let traffic = Arc::new(Traffic::default());
    let listener = match options.listen.filter(|_| !options.firewalled) {
        Some(addr) => Some(
            canopy_transfer::listen::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = listener {
        tracker.spawn(
            server
                .clone()
                .serve(listener, shutdown.clone(), tracker.clone()),
        );
    }
    let key = crate::node_key(
        options.key.as_ref(),
        options.data_dir.as_deref(),
        canopy_proto::Role::Leaf,
    )?;
    let node_id = key.node_id();
    let mapped = match (listen_addr, options.advertise) {
        (Some(bound), None) => {
            crate::portmap::map_listen_port(
                options.port_mapping.as_ref(),
                bound,
                &shutdown,
                &tracker,
            )
            .await
        }
        _ => crate::portmap::Mapped::default(),
    };
    let announced = if options.firewalled {
        None
    } else {
        options.advertise.or(mapped.external).or(listen_addr)
    };
    let identity = Identity {
        node_id,
        role: Role::Leaf,
        listen_addr: announced,
        user_agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    let (announced_tx, announced_rx) = watch::channel(announced);
    let reach = reach::ReachDriver::new(
        canopy_core::reachability::ReachConfig {
            bound: listen_addr
                .or(options.advertise)
                .filter(|_| !options.firewalled),
            advertise: options.advertise,
            mapped: mapped.external,
        },
        announced_tx,
        mapped.status.clone(),
    );
    let (status_tx, status_rx) = watch::channel(LeafStatus {
        shared_files: files.len(),
        reachability: reach.status(),
        ..LeafStatus::default()
    });
    if let Some(interval) = options.rescan_interval {
        tracker.spawn(rescan_loop(shares.clone(), interval, shutdown.clone()));
    }
    let connect_backs = ConnectBacks::new();
    let context = SessionContext {
        identity,
        catalog: catalog.clone(),
        server: server.clone(),
        pushes: Arc::new(Semaphore::new(MAX_PUSHES)),
        punches: Arc::new(Semaphore::new(canopy_core::punch::MAX_PUNCHES_AT_ONCE)),
        listen_port: listen_addr.map(|addr| addr.port()),
        connect_backs: connect_backs.clone(),
        tracker: tracker.clone(),
        link: LinkContext {
            tracker: tracker.clone(),
            traffic: traffic.clone(),
            stall_timeout: SEND_STALL_TIMEOUT,
            key: Arc::new(key),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            shutdown: shutdown.clone(),
        },
        shutdown: shutdown.clone(),
        election: options.election.clone(),
    };
    let hosts = HostCache::load(options.data_dir.as_deref(), &options.supernodes);
    let lan = options.lan_discovery.then(|| {
        let serving = listen_addr.filter(|_| !options.firewalled);
        crate::lan::spawn(
            crate::lan::LanOptions::new(node_id, Role::Leaf, serving),
            shutdown.clone(),
            &tracker,
        )
    });
    let leaf = LeafTask {
        options,
        context,
        files,
        status: status_tx,
        commands: commands_rx,
        hosts,
        lan,
        reach,
    };
    tracker.spawn(leaf.run());
    Ok(LeafHandle {
        node_id,
        listen_addr,
        announced_addr: announced_rx,
        port_mapping: mapped.status,
        server,
        download_limit,
        shares,
        traffic,
        commands: commands_tx,
        status: status_rx,
        connect_backs_refused: connect_backs.refused,
        download_punches: Arc::new(Semaphore::new(canopy_core::punch::MAX_PUNCHES_AT_ONCE)),
        shutdown,
        tracker,
    })
}
