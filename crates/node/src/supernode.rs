//! The supernode service: binds the port, accepts leaves and supernodes,
//! dials the configured peers (redialing with backoff), and runs the
//! [`canopy_core::supernode::Supernode`] state machine in one task. With
//! LAN discovery on, it announces itself on the LAN ([`crate::lan`]) and
//! its discovery loop dials the supernodes heard there like seeds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_core::ConnId;
use canopy_core::addr_limits::AddressCounter;
use canopy_core::backoff::Backoff;
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig, SupernodeStats};
use canopy_proto::NodeId;
use canopy_proto::secure::{PublicKey, StaticKeypair};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeError;
use crate::clock::Clock;
use crate::clock::wall_time;
use crate::connection::{self, ConnEvent, LinkContext, Outgoing};
use crate::hosts::HostCache;
use crate::outbox::Outbox;
use crate::secure::Side;
use crate::send_queue::Priority;
use crate::traffic::Traffic;
use canopy_proto::ByeReason;

/// How often the driver walks over every connection (stall checks, the
/// peer list discovery follows); between its walks the node task sleeps
/// until the core's next deadline (`Supernode::poll_timeout`).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Capacity of the node task's inbox, shared by all connections.
const EVENT_QUEUE_LEN: usize = 1024;
/// Messages handled (about) before the frames they produced are handed
/// over to the connections.
const MESSAGE_BATCH: usize = 1024;
/// Addresses whose redial backoff discovery remembers, past which the
/// expired ones are forgotten.
const MAX_BACKOFFS: usize = 2048;
/// Connections allowed beyond leaves + peers, for handshakes in progress.
const HANDSHAKE_HEADROOM: usize = 64;
/// Bootstrap names are resolved again at most this often.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
/// A resolution taking longer is given up (it finds nothing).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a supernode: where it listens and whom it dials, and the
/// protocol's settings as the core takes them (one definition, in the
/// core, of each limit and its default).
#[derive(Debug, Clone)]
pub struct SupernodeOptions {
    /// Where to listen, for leaves and supernodes alike.
    pub listen: SocketAddr,
    /// Supernodes to dial and keep dialing.
    pub peers: Vec<SocketAddr>,
    /// Names (DNS seeds) whose every address is offered to discovery like
    /// a seed: resolved at start, and again whenever discovery has no one
    /// left to dial.
    pub bootstrap: Vec<crate::addr::HostPort>,
    /// Our static key, which our node id derives from; if not given, the
    /// one in `data_dir` (created on first start), else an ephemeral one.
    pub key: Option<StaticKeypair>,
    /// The protocol's settings: limits, rates, TTL cap, query strategy,
    /// handshake timeout. [`start`] sets its identity (node id, address)
    /// and its secret keys; whatever they hold here is ignored.
    pub protocol: SupernodeConfig,
    /// First redial delay; doubles up to a minute.
    pub redial_initial: Duration,
    /// A peer whose full send queue has not moved for this long is
    /// disconnected as too slow.
    pub send_stall_timeout: Duration,
    /// Where the host cache is kept; in memory only if `None`.
    pub data_dir: Option<std::path::PathBuf>,
    /// Supernode peers to keep: beyond the configured ones, supernodes
    /// heard of are dialed until there are this many.
    pub peers_wanted: usize,
    /// Map the listen port on the home router (NAT-PMP, UPnP IGD) and
    /// announce the mapped address; `None`: don't. Its `listen` is set to
    /// the bound address; not tried on loopback unless its gateway is named.
    pub port_mapping: Option<canopy_portmap::PortMapConfig>,
    /// Announce ourselves on the LAN by multicast ([`crate::lan`]), so its
    /// leaves find us with no configuration, and dial the supernodes heard
    /// there like seeds.
    pub lan_discovery: bool,
}

impl SupernodeOptions {
    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            peers: Vec::new(),
            bootstrap: Vec::new(),
            key: None,
            // The protocol's defaults live in the core.
            protocol: SupernodeConfig::new(NodeId([0; 16]), None),
            redial_initial: Duration::from_millis(500),
            send_stall_timeout: Duration::from_secs(30),
            data_dir: None,
            peers_wanted: 8,
            port_mapping: Some(canopy_portmap::PortMapConfig::new(listen)),
            lan_discovery: false,
        }
    }
}

/// A running supernode.
#[derive(Debug)]
pub struct SupernodeHandle {
    local_addr: SocketAddr,
    announced_addr: watch::Receiver<SocketAddr>,
    port_mapping: Option<watch::Receiver<canopy_portmap::Status>>,
    node_id: NodeId,
    stats: watch::Receiver<SupernodeStats>,
    traffic: Arc<Traffic>,
    connections_refused: Arc<AtomicU64>,
    relay: crate::relay::RelayService,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Set by [`SupernodeHandle::step_down`]: the try-list the leaves are
    /// sent at shutdown.
    farewell: Farewell,
}

/// The try-list a supernode stepping down hands its leaves, read by the
/// node task when it stops.
type Farewell = Arc<Mutex<Option<Vec<SocketAddr>>>>;

impl SupernodeHandle {
    /// The relay's counters (all zero if it does not relay).
    pub fn relay_stats(&self) -> canopy_core::relay::RelayStats {
        self.relay.stats()
    }

    /// The relay service, for metrics.
    pub(crate) fn relay_service(&self) -> crate::relay::RelayService {
        self.relay.clone()
    }

    /// Connections closed as soon as accepted because their address (or
    /// its network) held its share of handshakes in progress.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// The counter behind [`SupernodeHandle::connections_refused`], for
    /// metrics.
    pub(crate) fn connections_refused_counter(&self) -> Arc<AtomicU64> {
        self.connections_refused.clone()
    }

    /// The address it listens on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address it announces: the one mapped on the home router, else
    /// the bound one. It follows the mapping: one granted late, changed at
    /// a renewal or lost is announced to the supernode peers.
    pub fn announced_addr(&self) -> SocketAddr {
        *self.announced_addr.borrow()
    }

    /// The port mapping on the home router as it changes; `None` when no
    /// mapping is attempted.
    pub fn port_mapping(&self) -> Option<watch::Receiver<canopy_portmap::Status>> {
        self.port_mapping.clone()
    }

    /// Its node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The latest counters.
    pub fn stats(&self) -> SupernodeStats {
        self.stats.borrow().clone()
    }

    /// Follows the counters as they change.
    pub fn watch_stats(&self) -> watch::Receiver<SupernodeStats> {
        self.stats.clone()
    }

    /// Bytes in and out, and messages dropped for full send queues.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// Waits until `condition` holds for the counters, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl FnMut(&SupernodeStats) -> bool,
    ) -> Result<SupernodeStats, SupernodeStats> {
        let mut stats = self.stats.clone();
        match tokio::time::timeout(timeout, stats.wait_for(condition)).await {
            Ok(Ok(found)) => Ok(found.clone()),
            _ => Err(self.stats()),
        }
    }

    /// Says Bye to every peer and stops; returns once connections flushed
    /// (or after a short grace period).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tracker.wait()).await;
    }

    /// Steps down (the supernode election decided it): every leaf is sent
    /// a Bye naming `try_list` (other supernodes with room), then it stops
    /// as [`SupernodeHandle::shutdown`] does.
    pub async fn step_down(self, try_list: Vec<SocketAddr>) {
        if let Ok(mut farewell) = self.farewell.lock() {
            *farewell = Some(try_list);
        }
        self.shutdown().await;
    }

    /// Completes when the supernode has stopped (for example after
    /// [`SupernodeHandle::shutdown_token`] was cancelled).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The token that stops this supernode when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

enum Event {
    Connected {
        conn: ConnId,
        direction: Direction,
        remote: SocketAddr,
        /// Our address as the connection reached it.
        local: Option<SocketAddr>,
        /// The peer's static key, authenticated by the Noise handshake.
        remote_key: PublicKey,
        outgoing: Outgoing,
        /// What letting go of the connection releases.
        on_close: Release,
    },
    Conn(ConnId, ConnEvent),
    /// A reachability probe of a leaf finished.
    Probed {
        conn: ConnId,
        reachable: bool,
    },
    /// We accept connections at this address now (the router's mapping
    /// changed): peers are told.
    ListenAddr(SocketAddr),
}

fn conn_event(conn: ConnId, event: ConnEvent) -> Event {
    Event::Conn(conn, event)
}

struct Registered {
    outgoing: Outgoing,
    on_close: Option<Release>,
    /// Held until the handshake ends, for an accepted connection.
    handshake: Option<HandshakeHold>,
}

/// One handshake in progress counted against its address; dropping it
/// gives it back. The core's counter decides; the driver only holds.
struct HandshakeHold {
    counter: Arc<Mutex<AddressCounter>>,
    ip: IpAddr,
}

impl HandshakeHold {
    fn take(
        counter: &Arc<Mutex<AddressCounter>>,
        ip: IpAddr,
    ) -> Result<Self, canopy_core::addr_limits::LimitExceeded> {
        if let Ok(mut held) = counter.lock() {
            held.acquire(ip)?;
        }
        Ok(Self {
            counter: counter.clone(),
            ip,
        })
    }
}

impl Drop for HandshakeHold {
    fn drop(&mut self) {
        if let Ok(mut held) = self.counter.lock() {
            held.release(self.ip);
        }
    }
}

/// What the node task releases when it lets go of a connection.
enum Release {
    /// Tells the connection's dialer, which redials.
    Dialer(oneshot::Sender<()>),
    /// Frees the connection's slot among inbound connections (dropping it
    /// is the release), and its address's handshake count if still held.
    Slot {
        _permit: OwnedSemaphorePermit,
        handshake: Option<HandshakeHold>,
    },
}

/// Follows the router's mapping of our port: a mapping granted late,
/// moved at a renewal, or lost changes the address we announce (the bound
/// one when unmapped), and the node tells its peers.
async fn follow_mapping(
    mut mapping: watch::Receiver<canopy_portmap::Status>,
    bound: SocketAddr,
    announced: watch::Sender<SocketAddr>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            // Shutdown first: removing the mapping then is not news.
            biased;
            _ = shutdown.cancelled() => return,
            changed = mapping.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let addr = match *mapping.borrow_and_update() {
            canopy_portmap::Status::Mapped(external) => external,
            canopy_portmap::Status::Unmapped => bound,
            canopy_portmap::Status::Pending => continue,
        };
        if announced.send_if_modified(|current| std::mem::replace(current, addr) != addr)
            && events.send(Event::ListenAddr(addr)).await.is_err()
        {
            return;
        }
    }
}

/// Binds `options.listen` and starts the supernode.
pub async fn start(options: SupernodeOptions) -> Result<SupernodeHandle, NodeError> {
    let listener = canopy_transfer::listen::bind(options.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: options.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: options.listen,
        source,
    })?;
    let key = crate::node_key(
        options.key.as_ref(),
        options.data_dir.as_deref(),
        canopy_proto::Role::Supernode,
    )?;
    let node_id = key.node_id();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mapped = crate::portmap::map_listen_port(
        options.port_mapping.as_ref(),
        local_addr,
        &shutdown,
        &tracker,
    )
    .await;
    let announced_addr = mapped.external.unwrap_or(local_addr);
    let mut config = options.protocol.clone();
    config.identity = SupernodeConfig::new(node_id, Some(announced_addr)).identity;
    // Secret, so peers cannot foresee a widening step's query id.
    config.step_id_key = rand::random();
    let handshakes = Arc::new(Mutex::new(config.handshake_counter()));
    let connections_refused = Arc::new(AtomicU64::new(0));
    config.ping_key = rand::random();
    let max_connections = config.max_leaves + config.max_supernode_peers + HANDSHAKE_HEADROOM;

    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_LEN);
    let relay =
        crate::relay::RelayService::new(config.relay.clone(), tracker.clone(), shutdown.clone());
    let core = Supernode::new(config);
    let (stats_tx, stats_rx) = watch::channel(core.stats());
    let traffic = Arc::new(Traffic::default());
    let links = Links {
        events: events_tx.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
        shutdown: shutdown.clone(),
        link: LinkContext {
            tracker: tracker.clone(),
            traffic: traffic.clone(),
            stall_timeout: options.send_stall_timeout,
            key: Arc::new(key),
            handshake_timeout: options.protocol.handshake_timeout,
            shutdown: shutdown.clone(),
        },
    };

    let hosts = Arc::new(Mutex::new(HostCache::load(
        options.data_dir.as_deref(),
        &options.peers,
    )));
    let (peer_addrs_tx, peer_addrs) = watch::channel(Vec::new());
    let farewell = Farewell::default();
    let node = NodeTask {
        core,
        conns: HashMap::new(),
        outbox: Outbox::default(),
        clock: Clock::new(),
        inbox: events_tx.clone(),
        tracker: tracker.clone(),
        traffic: traffic.clone(),
        hosts: hosts.clone(),
        peer_addrs: peer_addrs_tx,
        relay: relay.clone(),
        farewell: farewell.clone(),
    };
    tracker.spawn(node.run(events_rx, stats_tx, shutdown.clone()));
    tracker.spawn(accept_loop(
        listener,
        Admission {
            slots: Arc::new(Semaphore::new(max_connections)),
            handshakes,
            refused: connections_refused.clone(),
            relay: relay.clone(),
            first_byte_timeout: options.protocol.handshake_timeout,
        },
        links.clone(),
    ));
    let lan = options.lan_discovery.then(|| {
        crate::lan::spawn(
            crate::lan::LanOptions::new(node_id, canopy_proto::Role::Supernode, Some(local_addr)),
            shutdown.clone(),
            &tracker,
        )
    });
    let discovery = Discovery {
        hosts,
        lan,
        peer_addrs,
        configured: options.peers.clone(),
        bootstrap: options.bootstrap.clone(),
        local_addr,
        peers_wanted: options.peers_wanted,
        links: links.clone(),
    };
    tracker.spawn(discovery.run());
    for peer in options.peers {
        tracker.spawn(dial_loop(peer, options.redial_initial, links.clone()));
    }
    tracing::info!(%local_addr, %announced_addr, %node_id, "supernode listening");
    let (announced_tx, announced_rx) = watch::channel(announced_addr);
    if let Some(mapping) = mapped.status.clone() {
        tracker.spawn(follow_mapping(
            mapping,
            local_addr,
            announced_tx,
            events_tx.clone(),
            shutdown.clone(),
        ));
    }
    Ok(SupernodeHandle {
        local_addr,
        announced_addr: announced_rx,
        port_mapping: mapped.status,
        node_id,
        stats: stats_rx,
        traffic,
        connections_refused,
        relay,
        shutdown,
        tracker,
        farewell,
    })
}

/// The node task: owns the state machine, feeds it events and the time,
/// and carries out its actions.
struct NodeTask {
    core: Supernode,
    conns: HashMap<ConnId, Registered>,
    /// Frames of the current batch of events, by connection.
    outbox: Outbox,
    clock: Clock,
    /// Its own inbox, for the results of reachability probes.
    inbox: mpsc::Sender<Event>,
    tracker: TaskTracker,
    traffic: Arc<Traffic>,
    hosts: Arc<Mutex<HostCache>>,
    /// Listen addresses of connected supernode peers, for discovery.
    peer_addrs: watch::Sender<Vec<SocketAddr>>,
    /// Told of the circuits our leaves ask for.
    relay: crate::relay::RelayService,
    /// A try-list for the leaves if we step down.
    farewell: Farewell,
}

/// How long a reachability probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl NodeTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        stats: watch::Sender<SupernodeStats>,
        shutdown: CancellationToken,
    ) {
        let mut housekeeping = tokio::time::Instant::now() + HOUSEKEEPING;
        loop {
            // The core's next deadline, or the next walk if sooner.
            let wake = self
                .clock
                .wake_at(self.core.poll_timeout(), HOUSEKEEPING)
                .min(housekeeping);
            tokio::select! {
                // Shutdown first, so a busy inbox can't delay it.
                biased;
                _ = shutdown.cancelled() => {
                    match self.farewell.lock().ok().and_then(|mut f| f.take()) {
                        Some(try_list) => self.core.step_down(try_list),
                        None => self.core.shutdown(),
                    }
                    self.carry_out();
                    self.flush_outbox();
                    break;
                }
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let mut handled = self.handle_event(event);
                    self.carry_out();
                    // Take some more of what is already waiting before
                    // handing frames to the connections, so each gets one
                    // batch (one lock, one wakeup) for many messages.
                    while handled < MESSAGE_BATCH {
                        let Ok(event) = events.try_recv() else { break };
                        handled += self.handle_event(event);
                        self.carry_out();
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.core.handle_timeout(self.clock.now());
                    if tokio::time::Instant::now() >= housekeeping {
                        housekeeping = tokio::time::Instant::now() + HOUSEKEEPING;
                        self.cut_stalled_peers();
                        self.publish_peer_addrs();
                    }
                }
            }
            self.carry_out();
            self.flush_outbox();
            let now = self.core.stats();
            stats.send_if_modified(|current| {
                let changed = *current != now;
                *current = now;
                changed
            });
        }
    }

    /// Feeds `event` to the core; returns how many messages it carried
    /// (at least one, for batching).
    fn handle_event(&mut self, event: Event) -> usize {
        let now = self.clock.now();
        let mut messages = 1;
        match event {
            Event::Connected {
                conn,
                direction,
                remote,
                local,
                remote_key,
                outgoing,
                mut on_close,
            } => {
                let handshake = match &mut on_close {
                    Release::Slot { handshake, .. } => handshake.take(),
                    Release::Dialer(_) => None,
                };
                self.conns.insert(
                    conn,
                    Registered {
                        outgoing,
                        on_close: Some(on_close),
                        handshake,
                    },
                );
                self.core
                    .handle_connected(conn, direction, remote, remote_key.node_id(), now);
                if let Some(local) = local {
                    self.core.handle_local_addr(conn, local);
                }
            }
            Event::Conn(conn, ConnEvent::Messages(batch)) => {
                messages = batch.len().max(1);
                for message in batch {
                    self.core.handle_message(conn, message, now);
                }
                self.end_handshake_hold(conn);
            }
            Event::Conn(conn, ConnEvent::FrameError(error)) => {
                tracing::info!(?conn, %error, "bad input from peer; disconnecting");
                self.core.handle_frame_error(conn, &error);
            }
            Event::Conn(conn, ConnEvent::Closed) => {
                self.core.handle_disconnected(conn);
                forget(&mut self.conns, conn);
            }
            Event::Probed { conn, reachable } => self.core.handle_probe_result(conn, reachable),
            Event::ListenAddr(addr) => {
                tracing::info!(%addr, "our address changed; telling our peers");
                self.core.announce_listen_addr(addr);
            }
        }
        messages
    }

    /// Gives back `conn`'s handshake count once its handshake is over.
    fn end_handshake_hold(&mut self, conn: ConnId) {
        if let Some(registered) = self.conns.get_mut(&conn) {
            if registered.handshake.is_some() && !self.core.is_handshaking(conn) {
                registered.handshake = None;
            }
        }
    }

    /// Tells discovery which supernodes are connected.
    fn publish_peer_addrs(&self) {
        let peers = self.core.known_supernodes();
        self.peer_addrs.send_if_modified(|current| {
            let changed = *current != peers;
            *current = peers;
            changed
        });
    }

    /// Disconnects peers whose send queues have not moved for the stall
    /// timeout: a peer that stays stuck must not keep its queue forever.
    fn cut_stalled_peers(&mut self) {
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, registered)| registered.outgoing.is_stalled())
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stalled {
            tracing::info!(?conn, "peer reads too slowly; disconnecting");
            self.core.handle_too_slow(conn);
        }
    }

    fn carry_out(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send { conn, message } => {
                    if let Some(frame) = connection::encode(&message) {
                        self.outbox.add(conn, frame, Priority::of(&message));
                    }
                }
                Action::Forward { conns, message } => {
                    // Encoded once; every queue shares the frame's bytes.
                    let Some(frame) = connection::encode(&message) else {
                        continue;
                    };
                    self.outbox
                        .add_to_all(&conns, &frame, Priority::of(&message));
                }
                Action::Close { conn, bye } => {
                    if let Some((reason, detail)) = &bye {
                        tracing::info!(?conn, ?reason, %detail, "closing connection");
                    }
                    // What was sent before the close goes first.
                    if let Some(mut frames) = self.outbox.take(conn) {
                        if let Some(registered) = self.conns.get(&conn) {
                            registered.outgoing.send_all(&mut frames);
                        }
                    }
                    if let Some(registered) = self.conns.get(&conn) {
                        if matches!(bye, Some((ByeReason::TooSlow, _))) {
                            // Its queue is stuck: a Bye would never get out.
                            registered.outgoing.abort();
                        } else {
                            registered.outgoing.close(bye);
                        }
                    }
                    forget(&mut self.conns, conn);
                }
                Action::Rejected {
                    conn,
                    reason,
                    detail,
                    try_supernodes,
                } => {
                    tracing::info!(?conn, ?reason, %detail, ?try_supernodes, "peer refused our handshake");
                }
                Action::Learned { from, supernodes } => {
                    if let Ok(mut hosts) = self.hosts.lock() {
                        hosts.learn(from, &supernodes);
                    }
                }
                Action::RelayCircuit { token } => self.relay.register(token),
                Action::Joined { addr } => {
                    if let Ok(mut hosts) = self.hosts.lock() {
                        hosts.mark_good(addr);
                    }
                }
                // The core names only the leaf's own IP, and only so many
                // at once; the driver dials what it is told.
                Action::Probe { conn, addr } => {
                    let inbox = self.inbox.clone();
                    self.tracker.spawn(async move {
                        let attempt = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await;
                        let reachable = matches!(attempt, Ok(Ok(_)));
                        if !reachable {
                            tracing::info!(?conn, %addr, "leaf unreachable; its downloads go by push");
                        }
                        let _ = inbox.send(Event::Probed { conn, reachable }).await;
                    });
                }
            }
        }
    }
}

impl NodeTask {
    /// Hands every connection its frames of this batch, then acts on what
    /// full queues reported (which may close connections: their Closes are
    /// carried out, and flushed, in turn).
    fn flush_outbox(&mut self) {
        while !self.outbox.is_empty() {
            let mut stuck = Vec::new();
            let mut handed = Vec::new();
            let conns = &self.conns;
            self.outbox.flush(|conn, frames| {
                if let Some(registered) = conns.get(&conn) {
                    handed.push((conn, registered.outgoing.send_all(frames)));
                }
            });
            for (conn, losses) in handed {
                if losses.lost > 0 {
                    self.traffic
                        .messages_dropped
                        .fetch_add(losses.lost as u64, Ordering::Relaxed);
                    self.traffic
                        .queries_dropped
                        .fetch_add(losses.low_lost as u64, Ordering::Relaxed);
                    tracing::debug!(
                        ?conn,
                        lost = losses.lost,
                        "send queue full; dropped the least valuable"
                    );
                }
                if losses.stuck {
                    stuck.push(conn);
                }
            }
            for conn in stuck {
                tracing::info!(?conn, "peer reads too slowly; disconnecting");
                self.core.handle_too_slow(conn);
            }
            self.carry_out();
        }
    }
}

fn forget(conns: &mut HashMap<ConnId, Registered>, conn: ConnId) {
    if let Some(mut registered) = conns.remove(&conn) {
        // A connection its peer closed was never told to close: without
        // this its writer (task and socket) would wait forever. (A no-op
        // after a Close action.)
        registered.outgoing.close(None);
        if let Some(Release::Dialer(dialer)) = registered.on_close.take() {
            let _ = dialer.send(());
        }
    }
}

/// What the accept loop and the dialers share to register connections.
#[derive(Debug, Clone)]
struct Links {
    events: mpsc::Sender<Event>,
    next_conn: Arc<AtomicU64>,
    shutdown: CancellationToken,
    link: LinkContext,
}

impl Links {
    /// Starts a dialed connection's tasks; returns a receiver that
    /// completes when the node task has let go of it.
    fn register_outbound(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> (ConnId, oneshot::Receiver<()>) {
        let (on_close, closed) = oneshot::channel();
        let conn = self.register(
            stream,
            remote,
            Direction::Outbound,
            Release::Dialer(on_close),
        );
        (conn, closed)
    }

    /// Starts an accepted connection, holding `slot` until the node task
    /// lets go of it and `handshake` until its handshake ends.
    fn register_inbound(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        slot: OwnedSemaphorePermit,
        handshake: HandshakeHold,
    ) {
        self.register(
            stream,
            remote,
            Direction::Inbound,
            Release::Slot {
                _permit: slot,
                handshake: Some(handshake),
            },
        );
    }

    /// Starts the connection's reader and writer; the node task hears of
    /// it first thing.
    fn register(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        direction: Direction,
        on_close: Release,
    ) -> ConnId {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let local = stream.local_addr().ok();
        let announce = move |outgoing, remote_key| Event::Connected {
            conn,
            direction,
            remote,
            local,
            remote_key,
            outgoing,
            on_close,
        };
        let side = match direction {
            Direction::Outbound => Side::Initiator,
            Direction::Inbound => Side::Responder,
        };
        connection::spawn(
            conn,
            stream,
            side,
            self.events.clone(),
            announce,
            conn_event,
            &self.link,
        );
        conn
    }
}

/// What an accepted connection must get before it is started.
struct Admission {
    /// Connections in all (leaves + peers + handshake headroom).
    slots: Arc<Semaphore>,
    /// Handshakes in progress per address (the core's counter).
    handshakes: Arc<Mutex<AddressCounter>>,
    /// Connections closed for their address's handshake count.
    refused: Arc<AtomicU64>,
    /// Takes connections that open with a relay line.
    relay: crate::relay::RelayService,
    /// How long a new connection may take to say its first byte.
    first_byte_timeout: Duration,
}

async fn accept_loop(listener: TcpListener, admission: Admission, links: Links) {
    let Admission {
        slots,
        handshakes,
        refused,
        relay,
        first_byte_timeout,
    } = admission;
    let shutdown = links.shutdown.clone();
    loop {
        // Wait for a free slot before accepting, so a flood of connections
        // queues in the kernel's backlog rather than exhausting descriptors.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            // A dual-stack listener's IPv4 peers as IPv4.
            Ok((stream, remote)) => (stream, canopy_core::family::canonical(remote)),
            Err(error) => {
                // Typically out of descriptors: back off briefly.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One address may not hold the handshake capacity: beyond its
        // share the connection is closed unread (the others it holds are
        // cut at the handshake timeout if they stay silent).
        match HandshakeHold::take(&handshakes, remote.ip()) {
            Ok(hold) => {
                // The first byte tells a relay half's line from a Noise
                // message, without holding up the accept loop.
                let (links, relay) = (links.clone(), relay.clone());
                links.link.tracker.clone().spawn(async move {
                    let mut first = [0u8; 1];
                    let peeked =
                        tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)).await;
                    match peeked {
                        Ok(Ok(1)) if first[0] == crate::relay::FIRST_BYTE => {
                            drop(permit);
                            relay.accept(stream, remote, hold);
                        }
                        Ok(Ok(1..)) => links.register_inbound(stream, remote, permit, hold),
                        _ => tracing::debug!(%remote, "connection silent or closed at once"),
                    }
                });
            }
            Err(exceeded) => {
                refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, %exceeded, "too many handshakes from one address; closed");
            }
        }
    }
}

async fn dial_loop(peer: SocketAddr, redial_initial: Duration, links: Links) {
    let shutdown = links.shutdown.clone();
    let mut backoff = Backoff::new(redial_initial, Duration::from_secs(60));
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)) => attempt,
        };
        match attempt {
            Ok(Ok(stream)) => {
                let started = tokio::time::Instant::now();
                let (conn, closed) = links.register_outbound(stream, peer);
                tracing::debug!(%peer, ?conn, "connected to peer supernode");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = closed => {}
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                tracing::info!(%peer, "connection to peer supernode ended");
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "dial failed"),
            Err(_) => tracing::debug!(%peer, "dial timed out"),
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Finds more supernode peers by carrying out the core's
/// [`canopy_core::discovery::Discovery`]: it decides whom to dial (from
/// the host cache's address manager: seeds, bootstrap and LAN supernodes
/// first, then the answers to our Pings and try-lists), skipping those
/// connected or configured (they have their own dialers) and backing off
/// from those dialed; this task dials, reports a dial's end (a failed
/// dial, or one that closed without a handshake, counts against the
/// address in the host cache; a handshake, reported by the core, marks it
/// tried), resolves the bootstrap names when told, and keeps the cache
/// saved. It sleeps until the machine's next deadline, woken early by a
/// change of peers, the LAN, or a dial's or resolution's end, and looks
/// again at least every [`DISCOVERY_MAX_SLEEP`] (the node task learns
/// addresses into the cache meanwhile).
struct Discovery {
    hosts: Arc<Mutex<HostCache>>,
    lan: Option<watch::Receiver<crate::lan::LanView>>,
    peer_addrs: watch::Receiver<Vec<SocketAddr>>,
    configured: Vec<SocketAddr>,
    bootstrap: Vec<crate::addr::HostPort>,
    local_addr: SocketAddr,
    peers_wanted: usize,
    links: Links,
}

/// The longest discovery sleeps before looking at the host cache again.
const DISCOVERY_MAX_SLEEP: Duration = Duration::from_secs(1);

/// What discovery's helpers report back.
enum Ended {
    /// A dial (and its connection, if it opened) ended.
    Dial(SocketAddr),
    /// The bootstrap names were resolved (and offered as seeds).
    Resolved,
}

/// The host cache, as discovery's source of candidates.
struct Cache<'a>(&'a Mutex<HostCache>);

impl canopy_core::discovery::Candidates for Cache<'_> {
    fn select(&mut self, random: u64, skip: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        self.0
            .lock()
            .ok()
            .and_then(|hosts| hosts.select_with(random, skip))
    }
}

impl Discovery {
    async fn run(mut self) {
        use canopy_core::discovery::{Discovery as Machine, DiscoveryAction, DiscoveryConfig};
        let shutdown = self.links.shutdown.clone();
        let clock = Clock::new();
        let config = DiscoveryConfig {
            bootstrap: !self.bootstrap.is_empty(),
            resolve_interval: RESOLVE_INTERVAL,
            max_backoffs: MAX_BACKOFFS,
            excluded: self.configured.clone(),
            ..DiscoveryConfig::new(self.peers_wanted)
        };
        let mut machine = Machine::new(config, canopy_core::rng::SplitMix64::new(rand::random()));
        let (ended_tx, mut ended) = mpsc::channel(64);
        loop {
            machine.set_connected(self.peer_addrs.borrow_and_update().iter().copied());
            machine.handle_timeout(clock.now(), &mut Cache(&self.hosts));
            while let Some(action) = machine.poll_action() {
                match action {
                    DiscoveryAction::Dial(addr) => self.dial(addr, ended_tx.clone()),
                    DiscoveryAction::Resolve => self.resolve(ended_tx.clone()),
                }
            }
            self.save();
            let wake = clock.wake_at(machine.poll_timeout(), DISCOVERY_MAX_SLEEP);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {
                    // Addresses may have been learned meanwhile.
                    machine.handle_candidates();
                }
                Some(done) = ended.recv() => match done {
                    Ended::Dial(addr) => machine.handle_dial_ended(addr),
                    Ended::Resolved => machine.handle_resolved(clock.now()),
                },
                Ok(()) = self.peer_addrs.changed() => {}
                Some(supernodes) = next_lan_supernodes(&mut self.lan) => {
                    if let Ok(mut hosts) = self.hosts.lock() {
                        hosts.set_lan(&supernodes);
                    }
                    machine.handle_candidates();
                }
            }
        }
        self.save();
    }

    /// Dials `addr` in the background; reports when the dial, or the
    /// connection it opened, ended.
    fn dial(&self, addr: SocketAddr, ended: mpsc::Sender<Ended>) {
        let (links, hosts) = (self.links.clone(), self.hosts.clone());
        self.links.link.tracker.spawn(async move {
            let started = wall_time();
            if let Ok(Ok(stream)) =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
            {
                tracing::debug!(%addr, "dialing a supernode from the host cache");
                let (_, closed) = links.register_outbound(stream, addr);
                let _ = closed.await;
            }
            // No connection, or one that never completed a handshake.
            if let Ok(mut hosts) = hosts.lock() {
                hosts.dial_ended(addr, started);
            }
            let _ = ended.send(Ended::Dial(addr)).await;
        });
    }

    /// Resolves the bootstrap names in the background and offers their
    /// addresses as seeds.
    fn resolve(&self, ended: mpsc::Sender<Ended>) {
        let (names, own, hosts) = (self.bootstrap.clone(), self.local_addr, self.hosts.clone());
        let shutdown = self.links.shutdown.clone();
        self.links.link.tracker.spawn(async move {
            let resolving = tokio::time::timeout(RESOLVE_TIMEOUT, crate::addr::resolve_all(&names));
            let mut addrs = tokio::select! {
                _ = shutdown.cancelled() => return,
                resolved = resolving => resolved.unwrap_or_default(),
            };
            // Not ourselves, should a seed name us.
            addrs.retain(|addr| {
                !(addr.port() == own.port()
                    && (addr.ip() == own.ip()
                        || own.ip().is_unspecified() && addr.ip().is_loopback()))
            });
            tracing::info!(found = addrs.len(), addrs = ?addrs, "bootstrap names resolved");
            if let Ok(mut hosts) = hosts.lock() {
                hosts.set_bootstrap(&addrs);
            }
            let _ = ended.send(Ended::Resolved).await;
        });
    }

    fn save(&self) {
        if let Ok(mut hosts) = self.hosts.lock() {
            if let Err(error) = hosts.save() {
                tracing::debug!(%error, "could not save the host cache");
            }
        }
    }
}

/// The supernodes LAN discovery hears, when that changes; never, if LAN
/// discovery is off or has stopped.
async fn next_lan_supernodes(
    lan: &mut Option<watch::Receiver<crate::lan::LanView>>,
) -> Option<Vec<SocketAddr>> {
    if let Some(view) = lan {
        if view.changed().await.is_ok() {
            return Some(view.borrow_and_update().supernodes.clone());
        }
    }
    std::future::pending().await
}
