//! The leaf service: scans and hashes the shared folders, serves them over
//! HTTP on its listen address (and over pushed connections when it is
//! firewalled), connects to a supernode, publishes, keeps its shares
//! current, and runs searches. The [`canopy_core::leaf::LeafSession`]
//! state machine makes the protocol decisions; this module owns the
//! sockets, the timers and the rescans.
//!
//! `canopy search` is a short-lived leaf: same code, no shares, no retries.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_core::ConnId;
use canopy_core::backoff::Backoff;
use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession, SearchRequest};
use canopy_core::search::SearchResult;
use canopy_proto::{ContentId, MessageId, NodeId, Role, SharedFile};
use canopy_share::{HashCache, LocalFile};
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::server::{ContentServer, DEFAULT_UPLOAD_SLOTS};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeError;
use crate::clock::Clock;
use crate::connection::{self, ConnEvent, Outgoing};
use crate::traffic::Traffic;

/// How often running searches are checked for their deadline.
const TICK: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pushed uploads being set up at once; further push requests are ignored.
const MAX_PUSHES: usize = 16;
/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Name of the hash cache inside the data directory.
pub const HASH_CACHE_FILE: &str = "hash-cache.json";

/// Called with the byte count of each file as it finishes hashing.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How to run a leaf.
#[derive(Clone)]
pub struct LeafOptions {
    /// The supernode to join.
    pub supernode: SocketAddr,
    /// Where to serve files to other peers, if anywhere.
    pub listen: Option<SocketAddr>,
    /// The address to announce instead of the bound one (a port forward).
    pub advertise: Option<SocketAddr>,
    /// Accept no connections at all: serve only by push.
    pub firewalled: bool,
    /// Uploads at once.
    pub upload_slots: usize,
    /// Folders to share.
    pub shares: Vec<PathBuf>,
    /// Where the hash cache lives; no cache if `None`.
    pub data_dir: Option<PathBuf>,
    /// Keep reconnecting (a long-running leaf) or give up at the first
    /// failure (a one-shot search).
    pub reconnect: bool,
    /// How often to look for changes in the shared folders.
    pub rescan_interval: Option<Duration>,
    /// Our node id; random if not given.
    pub node_id: Option<NodeId>,
    /// Hashing progress, for a progress bar.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for LeafOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafOptions")
            .field("supernode", &self.supernode)
            .field("listen", &self.listen)
            .field("shares", &self.shares)
            .field("data_dir", &self.data_dir)
            .field("reconnect", &self.reconnect)
            .field("rescan_interval", &self.rescan_interval)
            .finish_non_exhaustive()
    }
}

impl LeafOptions {
    /// A leaf of `supernode` sharing nothing, not listening, not retrying.
    pub fn new(supernode: SocketAddr) -> Self {
        Self {
            supernode,
            listen: None,
            advertise: None,
            firewalled: false,
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            shares: Vec::new(),
            data_dir: None,
            reconnect: false,
            rescan_interval: None,
            node_id: None,
            progress: None,
        }
    }
}

/// What a leaf is doing, for callers that wait on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafStatus {
    /// The supernode we are attached to, once the handshake completed.
    pub connected_to: Option<SocketAddr>,
    /// Our address as that supernode sees it.
    pub observed_addr: Option<SocketAddr>,
    /// How many files we publish.
    pub shared_files: usize,
    /// Why we stopped trying, for a leaf that does not reconnect.
    pub failure: Option<String>,
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
    Search(
        SearchRequest,
        oneshot::Sender<Result<SearchOutcome, NodeError>>,
    ),
    /// Publish exactly these (no local files behind them).
    Shares(Vec<SharedFile>),
    /// A scan's result: publish and serve these.
    Files(Vec<LocalFile>),
    Push {
        target: NodeId,
        content_id: ContentId,
        callback: SocketAddr,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// A running leaf.
#[derive(Debug)]
pub struct LeafHandle {
    node_id: NodeId,
    listen_addr: Option<SocketAddr>,
    server: ContentServer,
    traffic: Arc<Traffic>,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<LeafStatus>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Search(request, _) => write!(f, "Search({request:?})"),
            Command::Shares(files) => write!(f, "Shares({} files)", files.len()),
            Command::Files(files) => write!(f, "Files({} files)", files.len()),
            Command::Push { target, .. } => write!(f, "Push({target})"),
        }
    }
}

impl LeafHandle {
    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where we accept connections, if anywhere.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
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
        let waited = tokio::time::timeout(
            timeout,
            status.wait_for(|s| s.connected_to.is_some() || s.failure.is_some()),
        )
        .await;
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
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Search(request, tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Replaces the published file list (the next rescan may change it again).
    pub async fn set_shares(&self, files: Vec<SharedFile>) -> Result<(), NodeError> {
        self.commands
            .send(Command::Shares(files))
            .await
            .map_err(|_| NodeError::Stopped)
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
    /// Asks firewalled leaf `target`, through the overlay, to connect to
    /// `callback` and serve `content_id`.
    pub async fn push(
        &self,
        target: NodeId,
        content_id: ContentId,
        callback: SocketAddr,
    ) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Push {
                target,
                content_id,
                callback,
                reply,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }
}

/// The hash cache kept in `data_dir`, or one in memory only.
fn load_cache(data_dir: Option<&std::path::Path>) -> HashCache {
    match data_dir {
        Some(dir) => HashCache::load(&dir.join(HASH_CACHE_FILE)),
        None => HashCache::in_memory(),
    }
}

/// Scans `shares` with `cache`, and writes the cache back if it changed.
fn scan_shares(
    shares: &[PathBuf],
    cache: &mut HashCache,
    progress: Option<&Progress>,
) -> Result<Vec<LocalFile>, NodeError> {
    let report = canopy_share::scan(shares, cache, &|bytes| {
        if let Some(progress) = progress {
            progress(bytes);
        }
    })?;
    if let Err(error) = cache.save() {
        tracing::warn!(%error, "could not save the hash cache");
    }
    tracing::info!(
        files = report.files.len(),
        hashed = report.hashed,
        hashed_bytes = report.hashed_bytes,
        skipped = report.skipped,
        "shares scanned"
    );
    Ok(report.files)
}

/// Scans on a blocking thread; the cache goes there and comes back, so it
/// is read from disk once per leaf, not once per rescan.
async fn scan_in_background(
    options: &LeafOptions,
    mut cache: HashCache,
    with_progress: bool,
) -> Result<(Vec<LocalFile>, HashCache), NodeError> {
    let shares = options.shares.clone();
    let progress = if with_progress {
        options.progress.clone()
    } else {
        None
    };
    tokio::task::spawn_blocking(move || {
        scan_shares(&shares, &mut cache, progress.as_ref()).map(|files| (files, cache))
    })
    .await
    .map_err(|_| NodeError::Stopped)?
}

fn catalog_entries(files: &[LocalFile]) -> impl Iterator<Item = (ContentId, CatalogEntry)> + '_ {
    files.iter().map(|f| {
        let entry = CatalogEntry {
            path: f.path.clone(),
            size: f.shared.size,
        };
        (f.shared.content_id, entry)
    })
}

/// Scans the shares, binds the listener (if any) and starts the leaf.
pub async fn start(options: LeafOptions) -> Result<LeafHandle, NodeError> {
    let cache = load_cache(options.data_dir.as_deref());
    let (local, cache) = scan_in_background(&options, cache, true).await?;
    let catalog = Catalog::new();
    catalog.replace(catalog_entries(&local));
    let server = ContentServer::new(catalog.clone(), options.upload_slots);
    let files: Vec<SharedFile> = local.into_iter().map(|f| f.shared).collect();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let traffic = Arc::new(Traffic::default());
    let listener = match options.listen.filter(|_| !options.firewalled) {
        Some(addr) => Some(
            TcpListener::bind(addr)
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
    let node_id = options.node_id.unwrap_or_else(crate::random_node_id);
    let announced = if options.firewalled {
        None
    } else {
        options.advertise.or(listen_addr)
    };
    let identity = Identity {
        node_id,
        role: Role::Leaf,
        listen_addr: announced,
        user_agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(LeafStatus {
        shared_files: files.len(),
        ..LeafStatus::default()
    });
    if let Some(interval) = options.rescan_interval {
        tracker.spawn(rescan_loop(
            options.clone(),
            cache,
            interval,
            commands_tx.clone(),
            shutdown.clone(),
        ));
    }
    let leaf = LeafTask {
        options,
        identity,
        files,
        status: status_tx,
        commands: commands_rx,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        waiting: HashMap::new(),
        catalog,
        server: server.clone(),
        pushes: Arc::new(Semaphore::new(MAX_PUSHES)),
        traffic: traffic.clone(),
    };
    tracker.spawn(leaf.run());
    Ok(LeafHandle {
        node_id,
        listen_addr,
        server,
        traffic,
        commands: commands_tx,
        status: status_rx,
        shutdown,
        tracker,
    })
}

async fn rescan_loop(
    options: LeafOptions,
    mut cache: HashCache,
    interval: Duration,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match scan_in_background(&options, cache, false).await {
            Ok((files, kept)) => {
                cache = kept;
                if commands.send(Command::Files(files)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "rescan failed");
                cache = load_cache(options.data_dir.as_deref());
            }
        }
    }
}

type SearchWaiter = oneshot::Sender<Result<SearchOutcome, NodeError>>;

struct LeafTask {
    options: LeafOptions,
    identity: Identity,
    files: Vec<SharedFile>,
    status: watch::Sender<LeafStatus>,
    commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    waiting: HashMap<MessageId, SearchWaiter>,
    catalog: Catalog,
    server: ContentServer,
    pushes: Arc<Semaphore>,
    traffic: Arc<Traffic>,
}

/// How a session with one supernode ended.
enum SessionEnd {
    Shutdown,
    Closed { lasted: Duration },
    Rejected(Vec<SocketAddr>),
}

impl LeafTask {
    async fn run(mut self) {
        let mut candidates: VecDeque<SocketAddr> = VecDeque::from([self.options.supernode]);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            let addr = candidates
                .front()
                .copied()
                .unwrap_or(self.options.supernode);
            let connected = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                result = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => result,
            };
            let failure = match connected {
                Ok(Ok(stream)) => match self.session(addr, stream).await {
                    SessionEnd::Shutdown => return,
                    SessionEnd::Closed { lasted } => {
                        // A session that held for a while earns a quick
                        // reconnect; one closed at once keeps backing off.
                        if lasted > STABLE_SESSION {
                            backoff.reset();
                        }
                        format!("supernode {addr} closed the connection")
                    }
                    SessionEnd::Rejected(try_list) => {
                        candidates.pop_front();
                        candidates.extend(try_list.into_iter().filter(|a| *a != addr).take(32));
                        format!("supernode {addr} refused us")
                    }
                },
                Ok(Err(error)) => format!("cannot reach supernode {addr}: {error}"),
                Err(_) => format!("cannot reach supernode {addr}: timed out"),
            };
            self.status.send_modify(|s| s.connected_to = None);
            if !self.options.reconnect {
                self.status.send_modify(|s| s.failure = Some(failure));
                return;
            }
            tracing::info!(reason = %failure, "reconnecting");
            if candidates.len() > 1 {
                candidates.rotate_left(1);
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(&mut self, addr: SocketAddr, stream: TcpStream) -> SessionEnd {
        let clock = Clock::new();
        let (events_tx, mut events) = mpsc::channel::<Event>(256);
        connection::spawn(
            ConnId(0),
            stream,
            events_tx,
            Event::Connected,
            |_, e| Event::Conn(e),
            &self.tracker,
            &self.traffic,
        );
        let closed = |clock: &Clock| SessionEnd::Closed {
            lasted: Duration::from_millis(clock.now().as_millis()),
        };
        let Some(Event::Connected(outgoing)) = events.recv().await else {
            return closed(&clock);
        };
        let mut session = LeafSession::new(self.identity.clone(), self.files.clone());
        session.handle_connected();
        let mut tick = tokio::time::interval(TICK);
        let mut end = None;
        while end.is_none() {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    session.shutdown();
                    end = Some(SessionEnd::Shutdown);
                }
                event = events.recv() => match event {
                    Some(Event::Conn(ConnEvent::Message(message))) => session.handle_message(message, clock.now()),
                    Some(Event::Conn(ConnEvent::FrameError(error))) => {
                        tracing::warn!(%addr, %error, "bad input from supernode");
                        session.handle_frame_error(&error);
                    }
                    Some(Event::Conn(ConnEvent::Closed)) | None => end = Some(closed(&clock)),
                    Some(Event::Connected(_)) => {}
                },
                command = self.commands.recv() => match command {
                    Some(Command::Search(request, reply)) => {
                        let id = crate::random_message_id();
                        match session.start_search(id, &request, clock.now()) {
                            Ok(()) => { self.waiting.insert(id, reply); }
                            Err(error) => { let _ = reply.send(Err(NodeError::Search(error.to_string()))); }
                        }
                    }
                    Some(Command::Shares(files)) => self.publish(&mut session, files),
                    Some(Command::Files(local)) => {
                        self.catalog.replace(catalog_entries(&local));
                        self.publish(&mut session, local.into_iter().map(|f| f.shared).collect());
                    }
                    Some(Command::Push { target, content_id, callback, reply }) => {
                        let sent = session
                            .send_push(crate::random_message_id(), target, content_id, callback)
                            .map_err(|e| NodeError::Search(e.to_string()));
                        let _ = reply.send(sent);
                    }
                    None => {
                        session.shutdown();
                        end = Some(SessionEnd::Shutdown);
                    }
                },
                _ = tick.tick() => {}
            }
            while let Some(action) = session.poll_action() {
                match action {
                    LeafAction::Send(message) => {
                        if !outgoing.try_send(message) {
                            tracing::warn!(%addr, "send queue to supernode full; message dropped");
                        }
                    }
                    LeafAction::Close(bye) => {
                        outgoing.close(bye);
                        end.get_or_insert_with(|| closed(&clock));
                    }
                    LeafAction::Ready {
                        supernode,
                        observed_addr,
                    } => {
                        tracing::info!(%addr, supernode = %supernode.node_id, ?observed_addr, "joined supernode");
                        self.status.send_modify(|s| {
                            s.connected_to = Some(addr);
                            s.observed_addr = observed_addr;
                        });
                    }
                    LeafAction::PushRequested {
                        content_id,
                        callback_addr,
                    } => {
                        self.push_upload(content_id, callback_addr);
                    }
                    LeafAction::Rejected {
                        reason,
                        detail,
                        try_supernodes,
                    } => {
                        tracing::info!(%addr, ?reason, %detail, ?try_supernodes, "supernode refused us");
                        end = Some(SessionEnd::Rejected(try_supernodes));
                    }
                }
            }
            self.answer_finished_searches(&mut session, clock.now());
        }
        for (_, waiter) in self.waiting.drain() {
            let _ = waiter.send(Err(NodeError::Search(
                "the connection to the supernode ended".into(),
            )));
        }
        end.unwrap_or_else(|| closed(&clock))
    }

    /// Publishes `files` (now, or on the next connection).
    fn publish(&mut self, session: &mut LeafSession, files: Vec<SharedFile>) {
        self.status.send_modify(|s| s.shared_files = files.len());
        session.set_shares(files.clone());
        self.files = files;
    }

    /// A downloader asked us by push for `content_id`: connect out to it
    /// and serve HTTP on that connection.
    fn push_upload(&self, content_id: ContentId, callback: SocketAddr) {
        if self.catalog.get(&content_id).is_none() {
            tracing::info!(%content_id, "push for content we do not share; ignored");
            return;
        }
        let Ok(permit) = self.pushes.clone().try_acquire_owned() else {
            tracing::info!(%callback, "too many pushes at once; ignored");
            return;
        };
        let server = self.server.clone();
        let us = self.identity.node_id;
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            match canopy_transfer::push::connect_back(callback, us, CONNECT_TIMEOUT).await {
                Ok(stream) => {
                    tracing::info!(%callback, %content_id, "serving by push");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = server.serve_connection(stream) => {}
                    }
                }
                Err(error) => tracing::info!(%callback, %error, "cannot connect back for a push"),
            }
            drop(permit);
        });
    }

    fn answer_finished_searches(&mut self, session: &mut LeafSession, now: canopy_core::Time) {
        let finished: Vec<MessageId> = self
            .waiting
            .keys()
            .filter(|id| session.search(id).is_none_or(|s| s.is_finished(now)))
            .copied()
            .collect();
        for id in finished {
            let outcome = session.finish_search(&id).map(|s| SearchOutcome {
                hits: s.hits_received(),
                results: s.into_results(),
            });
            if let Some(waiter) = self.waiting.remove(&id) {
                let _ = waiter.send(outcome.ok_or(NodeError::Stopped));
            }
        }
    }
}

enum Event {
    Connected(Outgoing),
    Conn(ConnEvent),
}
