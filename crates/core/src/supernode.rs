//! The supernode's protocol logic.
//!
//! It accepts leaves and other supernodes, keeps an index of every leaf's
//! files, answers queries from that index and floods them to its other
//! supernodes: TTL clamped to a cap, hops counted, never sent back where it
//! came from, each message id handled once (an LRU of seen ids), hits
//! routed back along the reverse path (an expiring, capped route table),
//! and pushes for firewalled leaves routed towards them the way their hits
//! came.
//!
//! Input comes through `handle_*` with the current [`Time`]; the driver
//! drains [`Action`]s with [`Supernode::poll_action`]. The driver owns the
//! sockets and assigns [`ConnId`]s; this type owns every decision.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use canopy_proto::limits::{HARD_MAX_TTL, MAX_ADDRESSES, MAX_FILES_PER_MESSAGE};
use canopy_proto::{
    ByeReason, FrameError, HandshakeOutcome, Hello, HelloReply, Message, MessageId, NodeId, Push,
    Query, QueryHit, RejectReason, Role, SharedFile,
};

use crate::dedup::SeenMessages;
use crate::dynamic::{DynamicConfig, DynamicQuery, Step};
use crate::handshake::{Identity, Rejection, check_hello, reachable_addr};
use crate::index::{FileIndex, Filter};
use crate::rate::TokenBucket;
use crate::routes::RouteTable;
use crate::{ConnId, Time};

/// Tunables of a supernode. [`SupernodeConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct SupernodeConfig {
    /// Who we are.
    pub identity: Identity,
    /// Incoming TTLs are clamped to this (at most [`HARD_MAX_TTL`]).
    pub ttl_cap: u8,
    /// Most leaves attached at once.
    pub max_leaves: usize,
    /// Most supernode peers at once.
    pub max_supernode_peers: usize,
    /// Most files one leaf may publish.
    pub max_files_per_leaf: usize,
    /// Run leaves' queries dynamically (probe, then widen until enough
    /// results; the default); `None` floods them with their TTL.
    pub dynamic: Option<DynamicConfig>,
    /// Queries a leaf may send a second on average...
    pub leaf_queries_per_second: u32,
    /// ...and at once. Queries beyond are dropped and counted.
    pub leaf_query_burst: u32,
    /// Most files one query is answered with from this node's index.
    pub max_results_per_query: usize,
    /// Message ids remembered for duplicate suppression.
    pub seen_capacity: usize,
    /// Reverse-path routes remembered.
    pub route_capacity: usize,
    /// How long a route is kept.
    pub route_lifetime: Duration,
    /// A connection that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// A peer silent this long is pinged.
    pub keepalive_interval: Duration,
    /// Supernode peers are pinged this often, busy or not, for the
    /// supernodes they know (their Pongs feed the host cache).
    pub peer_refresh_interval: Duration,
    /// A peer silent this long is disconnected.
    pub idle_timeout: Duration,
}

/// Most leaf queries run dynamically at once; beyond, they are flooded.
pub const MAX_DYNAMIC_QUERIES: usize = 1024;

/// The default TTL cap, as in LimeWire and gtk-gnutella.
pub const DEFAULT_TTL_CAP: u8 = 4;

impl SupernodeConfig {
    /// Defaults for a supernode with `node_id` listening on `listen_addr`.
    pub fn new(node_id: NodeId, listen_addr: Option<SocketAddr>) -> Self {
        Self {
            identity: Identity {
                node_id,
                role: Role::Supernode,
                listen_addr,
                user_agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_owned(),
            },
            ttl_cap: DEFAULT_TTL_CAP,
            max_leaves: 1_000,
            max_supernode_peers: 32,
            max_files_per_leaf: 10_000,
            dynamic: Some(DynamicConfig::default()),
            leaf_queries_per_second: 5,
            leaf_query_burst: 20,
            max_results_per_query: 200,
            seen_capacity: 100_000,
            route_capacity: 100_000,
            route_lifetime: Duration::from_secs(5 * 60),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            peer_refresh_interval: Duration::from_secs(5 * 60),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue `message` on `conn`.
    Send {
        /// Where.
        conn: ConnId,
        /// What.
        message: Message,
    },
    /// Queue the same `message` on each of `conns`: a query's fan-out, which
    /// the driver can encode once for all of them.
    Forward {
        /// Where.
        conns: Vec<ConnId>,
        /// What.
        message: Message,
    },
    /// Send what is queued, then a Bye if one is given, then close `conn`.
    /// The core has already forgotten the connection.
    Close {
        /// Which.
        conn: ConnId,
        /// The Bye to send last, if any.
        bye: Option<(ByeReason, String)>,
    },
    /// A supernode we dialed refused us; a Close for `conn` follows.
    Rejected {
        /// The connection.
        conn: ConnId,
        /// Its reason.
        reason: RejectReason,
        /// Its explanation.
        detail: String,
        /// Other supernodes it suggested.
        try_supernodes: Vec<SocketAddr>,
    },
    /// Supernodes heard of (a new peer, a Pong, a try-list): for the host
    /// cache, and for dialing when short of peers.
    Learned(Vec<SocketAddr>),
    /// Try to open a connection to `addr`, the address leaf `conn`
    /// announced, and report with [`Supernode::handle_probe_result`]. A leaf
    /// behind NAT announces an address nobody can reach; its hits must say
    /// it is firewalled, so downloaders push instead of dialing.
    Probe {
        /// The leaf.
        conn: ConnId,
        /// Where it says it can be reached.
        addr: SocketAddr,
    },
}

/// Counters and gauges, for tests, logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupernodeStats {
    /// Leaves attached.
    pub leaves: usize,
    /// Supernode peers connected.
    pub supernode_peers: usize,
    /// Connections still in their handshake.
    pub handshaking: usize,
    /// Files in the index.
    pub index_files: usize,
    /// Queries received (leaves and supernodes, duplicates included).
    pub queries_received: u64,
    /// Copies of queries sent on to other supernodes.
    pub queries_forwarded: u64,
    /// Queries dropped because their id was seen before.
    pub queries_duplicate: u64,
    /// Hits sent from this node's own index.
    pub hits_answered: u64,
    /// Hits passed on along a reverse path.
    pub hits_routed: u64,
    /// Hits dropped for want of a route.
    pub hits_unroutable: u64,
    /// Pushes delivered to a leaf or passed on towards one.
    pub pushes_routed: u64,
    /// Pushes dropped for want of a route.
    pub pushes_unroutable: u64,
    /// Leaves whose announced address could not be reached.
    pub leaves_unreachable: u64,
    /// Peers disconnected for reading too slowly.
    pub peers_too_slow: u64,
    /// Leaf queries dropped for going over the leaf's query rate.
    pub queries_rate_limited: u64,
    /// Handshakes refused.
    pub handshakes_rejected: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
}

#[derive(Debug)]
enum PeerState {
    Handshaking {
        direction: Direction,
        since: Time,
    },
    Leaf {
        node_id: NodeId,
        addr: SocketAddr,
        firewalled: bool,
        queries: TokenBucket,
    },
    Supernode {
        node_id: NodeId,
        listen_addr: Option<SocketAddr>,
    },
}

#[derive(Debug)]
struct Peer {
    remote: SocketAddr,
    /// The node id its authenticated static key owns.
    authenticated: NodeId,
    state: PeerState,
    last_heard: Time,
    pinged_at: Option<Time>,
}

/// How many connections are in each state, kept as they change so reading
/// them costs nothing however many leaves there are.
#[derive(Debug, Default, Clone, Copy)]
struct StateCounts {
    handshaking: usize,
    leaves: usize,
    supernodes: usize,
}

impl StateCounts {
    fn slot(&mut self, state: &PeerState) -> &mut usize {
        match state {
            PeerState::Handshaking { .. } => &mut self.handshaking,
            PeerState::Leaf { .. } => &mut self.leaves,
            PeerState::Supernode { .. } => &mut self.supernodes,
        }
    }
}

/// The supernode state machine. See the module documentation.
#[derive(Debug)]
pub struct Supernode {
    config: SupernodeConfig,
    peers: BTreeMap<ConnId, Peer>,
    /// The supernode peers among them: where queries are flooded.
    supernodes: BTreeSet<ConnId>,
    counts: StateCounts,
    by_node: HashMap<NodeId, ConnId>,
    index: FileIndex,
    seen: SeenMessages,
    /// Leaf queries being run dynamically, with the leaf they are for.
    /// Ordered, so steps run in the same order every time (determinism).
    dynamic: BTreeMap<MessageId, (ConnId, DynamicQuery)>,
    routes: RouteTable<MessageId>,
    push_routes: RouteTable<NodeId>,
    actions: VecDeque<Action>,
    stats: SupernodeStats,
    next_ping_nonce: u64,
    /// When supernode peers are next asked whom they know (set on the
    /// first tick).
    next_peer_refresh: Option<Time>,
}

impl Supernode {
    /// A supernode with no connections.
    pub fn new(mut config: SupernodeConfig) -> Self {
        config.ttl_cap = config.ttl_cap.clamp(1, HARD_MAX_TTL);
        Self {
            seen: SeenMessages::new(config.seen_capacity),
            routes: RouteTable::new(config.route_capacity, config.route_lifetime),
            push_routes: RouteTable::new(config.route_capacity, config.route_lifetime),
            dynamic: BTreeMap::new(),
            config,
            peers: BTreeMap::new(),
            supernodes: BTreeSet::new(),
            counts: StateCounts::default(),
            by_node: HashMap::new(),
            index: FileIndex::new(),
            actions: VecDeque::new(),
            stats: SupernodeStats::default(),
            next_ping_nonce: 1,
            next_peer_refresh: None,
        }
    }

    /// Our configuration.
    pub fn config(&self) -> &SupernodeConfig {
        &self.config
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Current counters.
    pub fn stats(&self) -> SupernodeStats {
        let mut stats = self.stats.clone();
        stats.index_files = self.index.len();
        stats.leaves = self.counts.leaves;
        stats.supernode_peers = self.counts.supernodes;
        stats.handshaking = self.counts.handshaking;
        stats
    }

    /// Listen addresses of the supernodes we are connected to: what we hand
    /// out in Pongs and in rejections.
    pub fn known_supernodes(&self) -> Vec<SocketAddr> {
        self.supernodes
            .iter()
            .filter_map(|conn| match self.peers.get(conn)?.state {
                PeerState::Supernode { listen_addr, .. } => listen_addr,
                _ => None,
            })
            .take(MAX_ADDRESSES)
            .collect()
    }

    /// A new connection, whose peer proved during the transport's
    /// handshake that it holds the key owning node id `authenticated` (its
    /// Hello must claim that id). For an outbound one we open the handshake.
    pub fn handle_connected(
        &mut self,
        conn: ConnId,
        direction: Direction,
        remote: SocketAddr,
        authenticated: NodeId,
        now: Time,
    ) {
        let peer = Peer {
            remote,
            authenticated,
            state: PeerState::Handshaking {
                direction,
                since: now,
            },
            last_heard: now,
            pinged_at: None,
        };
        if let Some(old) = self.peers.insert(conn, peer) {
            // The driver never reuses ids; if it did, keep the counts true.
            *self.counts.slot(&old.state) -= 1;
        }
        self.counts.handshaking += 1;
        if direction == Direction::Outbound {
            self.send(conn, Message::Hello(self.config.identity.hello()));
        }
    }

    /// The connection is gone (closed by the peer or by the driver).
    pub fn handle_disconnected(&mut self, conn: ConnId) {
        self.forget(conn);
    }

    /// The connection's byte stream broke the framing or sent an invalid
    /// message: say why and disconnect.
    pub fn handle_frame_error(&mut self, conn: ConnId, error: &FrameError) {
        let reason = match error {
            FrameError::TooLarge { .. } => ByeReason::FrameTooLarge,
            FrameError::Malformed(_) => ByeReason::MalformedMessage,
            FrameError::Invalid(_) => ByeReason::InvalidField,
            FrameError::Io(_) => {
                self.close(conn, None);
                return;
            }
        };
        self.stats.protocol_errors += 1;
        self.close(conn, Some((reason, error.to_string())));
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, conn: ConnId, message: Message, now: Time) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return; // closed already; a message was in flight
        };
        peer.last_heard = now;
        peer.pinged_at = None;
        if let Message::Bye { .. } = message {
            self.close(conn, None);
            return;
        }
        match (&peer.state, message) {
            (
                PeerState::Handshaking {
                    direction: Direction::Inbound,
                    ..
                },
                Message::Hello(hello),
            ) => {
                self.handle_hello(conn, hello, now);
            }
            (
                PeerState::Handshaking {
                    direction: Direction::Outbound,
                    ..
                },
                Message::HelloReply(reply),
            ) => self.handle_hello_reply(conn, reply),
            (PeerState::Handshaking { .. }, other) => {
                self.violation(
                    conn,
                    format!("{} before the handshake completed", other.kind()),
                );
            }
            (_, Message::Ping { nonce }) => {
                let supernodes = self.known_supernodes();
                self.send(conn, Message::Pong { nonce, supernodes });
            }
            (PeerState::Supernode { .. }, Message::Pong { supernodes, .. }) => {
                self.learned(supernodes);
            }
            (_, Message::Pong { .. }) => {}
            (PeerState::Leaf { .. }, Message::Query(query)) => {
                if self.leaf_may_query(conn, now) {
                    self.handle_query(conn, query, now);
                } else {
                    self.stats.queries_rate_limited += 1;
                }
            }
            (_, Message::Query(query)) => self.handle_query(conn, query, now),
            (PeerState::Leaf { .. }, Message::FileList { replace, files }) => {
                if replace {
                    self.index.remove_owner(conn);
                }
                self.publish(conn, files);
            }
            (PeerState::Leaf { .. }, Message::FileDelta { added, removed }) => {
                for id in &removed {
                    self.index.remove(conn, id);
                }
                self.publish(conn, added);
            }
            (PeerState::Supernode { .. }, Message::QueryHit(hit)) => {
                self.route_hit(conn, hit, now);
            }
            (_, Message::Push(push)) => self.route_push(conn, push, now),
            (
                PeerState::Leaf { .. },
                Message::QueryStatus {
                    message_id,
                    results,
                },
            ) => {
                // The leaf may have more than came through us (hits via its
                // other supernode) or want no more; its count can only raise
                // ours, since hits we routed may still be on their way to it.
                // Statuses for queries it does not own are ignored.
                if let Some((origin, dq)) = self.dynamic.get_mut(&message_id) {
                    if *origin == conn {
                        let reported = usize::try_from(results).unwrap_or(usize::MAX);
                        dq.results = dq.results.max(reported);
                    }
                }
            }
            (PeerState::Leaf { .. }, other) => {
                self.violation(conn, format!("{} is not allowed from a leaf", other.kind()));
            }
            (PeerState::Supernode { .. }, other) => {
                self.violation(
                    conn,
                    format!("{} is not allowed from a supernode", other.kind()),
                );
            }
        }
    }

    /// Periodic housekeeping: handshake deadlines, keepalive pings, idle
    /// disconnects, route expiry. Call it every second or so.
    pub fn handle_timeout(&mut self, now: Time) {
        self.routes.expire(now);
        self.push_routes.expire(now);
        let running: Vec<MessageId> = self.dynamic.keys().copied().collect();
        for id in running {
            self.step_dynamic(id, now);
        }
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        for (conn, peer) in &self.peers {
            match peer.state {
                PeerState::Handshaking { since, .. } => {
                    if now.since(since) >= self.config.handshake_timeout {
                        to_close.push((
                            *conn,
                            ByeReason::HandshakeTimeout,
                            "handshake not completed in time",
                        ));
                    }
                }
                _ => {
                    let silent = now.since(peer.last_heard);
                    if silent >= self.config.idle_timeout {
                        to_close.push((
                            *conn,
                            ByeReason::IdleTimeout,
                            "nothing heard for too long",
                        ));
                    } else if silent >= self.config.keepalive_interval && peer.pinged_at.is_none() {
                        to_ping.push(*conn);
                    }
                }
            }
        }
        for (conn, reason, detail) in to_close {
            self.close(conn, Some((reason, detail.to_owned())));
        }
        for conn in to_ping {
            let nonce = self.next_ping_nonce;
            self.next_ping_nonce += 1;
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.pinged_at = Some(now);
            }
            self.send(conn, Message::Ping { nonce });
        }
        self.refresh_peer_lists(now);
    }

    /// Every few minutes, pings each supernode peer, busy or not: its Pong
    /// lists the supernodes it knows now, so the host cache follows the
    /// overlay as it changes, not only as it was when each peer joined.
    fn refresh_peer_lists(&mut self, now: Time) {
        let due = *self
            .next_peer_refresh
            .get_or_insert(now + self.config.peer_refresh_interval);
        if now < due {
            return;
        }
        self.next_peer_refresh = Some(now + self.config.peer_refresh_interval);
        let peers: Vec<ConnId> = self.supernodes.iter().copied().collect();
        for conn in peers {
            let nonce = self.next_ping_nonce;
            self.next_ping_nonce += 1;
            self.send(conn, Message::Ping { nonce });
        }
    }

    /// Says goodbye to everyone.
    pub fn shutdown(&mut self) {
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            self.close(
                conn,
                Some((ByeReason::Shutdown, "supernode shutting down".into())),
            );
        }
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        self.actions.push_back(Action::Send { conn, message });
    }

    /// Sends a query on to `conns`, if any.
    fn forward(&mut self, conns: Vec<ConnId>, message: Message) {
        if !conns.is_empty() {
            self.stats.queries_forwarded += conns.len() as u64;
            self.actions.push_back(Action::Forward { conns, message });
        }
    }

    fn close(&mut self, conn: ConnId, bye: Option<(ByeReason, String)>) {
        if self.forget(conn) {
            self.actions.push_back(Action::Close { conn, bye });
        }
    }

    fn violation(&mut self, conn: ConnId, detail: String) {
        self.stats.protocol_errors += 1;
        self.close(conn, Some((ByeReason::ProtocolViolation, detail)));
    }

    /// Drops everything we know of `conn`; true if it was known.
    fn forget(&mut self, conn: ConnId) -> bool {
        let Some(peer) = self.peers.remove(&conn) else {
            return false;
        };
        self.dynamic.retain(|_, (origin, _)| *origin != conn);
        *self.counts.slot(&peer.state) -= 1;
        match peer.state {
            PeerState::Leaf { node_id, .. } => {
                self.index.remove_owner(conn);
                self.by_node.remove(&node_id);
            }
            PeerState::Supernode { node_id, .. } => {
                self.by_node.remove(&node_id);
                self.supernodes.remove(&conn);
            }
            PeerState::Handshaking { .. } => {}
        }
        true
    }

    fn our_hello(&self) -> Hello {
        self.config.identity.hello()
    }

    fn admit(&self, authenticated: NodeId, hello: &Hello) -> Result<(), Rejection> {
        check_hello(self.config.identity.node_id, authenticated, hello)?;
        if self.by_node.contains_key(&hello.node_id) {
            return Err(Rejection::new(
                RejectReason::DuplicateConnection,
                "already connected to that node id",
            ));
        }
        let (count, max, what) = match hello.role {
            Role::Leaf => (self.counts.leaves, self.config.max_leaves, "leaves"),
            Role::Supernode => (
                self.counts.supernodes,
                self.config.max_supernode_peers,
                "supernode peers",
            ),
        };
        if count >= max {
            return Err(Rejection::new(
                RejectReason::Full,
                format!("this supernode has its maximum of {max} {what}"),
            ));
        }
        Ok(())
    }

    fn handle_hello(&mut self, conn: ConnId, hello: Hello, now: Time) {
        let Some((remote, authenticated)) =
            self.peers.get(&conn).map(|p| (p.remote, p.authenticated))
        else {
            return;
        };
        if let Err(rejection) = self.admit(authenticated, &hello) {
            self.stats.handshakes_rejected += 1;
            let reply = HelloReply {
                hello: self.our_hello(),
                outcome: HandshakeOutcome::Rejected {
                    reason: rejection.reason,
                    detail: rejection.detail,
                    try_supernodes: self.known_supernodes(),
                },
            };
            self.send(conn, Message::HelloReply(reply));
            self.close(conn, None);
            return;
        }
        let state = match hello.role {
            Role::Leaf => PeerState::Leaf {
                node_id: hello.node_id,
                addr: reachable_addr(hello.listen_addr, remote),
                // A leaf that announces no listening address accepts no
                // connections: downloads from it go by push.
                firewalled: hello.listen_addr.is_none(),
                queries: TokenBucket::new(
                    self.config.leaf_queries_per_second,
                    self.config.leaf_query_burst,
                    now,
                ),
            },
            Role::Supernode => PeerState::Supernode {
                node_id: hello.node_id,
                listen_addr: hello
                    .listen_addr
                    .map(|addr| reachable_addr(Some(addr), remote)),
            },
        };
        let probe = match &state {
            PeerState::Leaf {
                addr,
                firewalled: false,
                ..
            } => Some(*addr),
            _ => None,
        };
        self.establish(conn, hello.node_id, state);
        let reply = HelloReply {
            hello: self.our_hello(),
            outcome: HandshakeOutcome::Accepted {
                observed_addr: Some(remote),
            },
        };
        self.send(conn, Message::HelloReply(reply));
        if let Some(addr) = probe {
            self.actions.push_back(Action::Probe { conn, addr });
        }
    }

    /// `conn`'s send queue stayed full: it reads too slowly for what it is
    /// sent. It is disconnected; one slow peer must not hold up the rest.
    pub fn handle_too_slow(&mut self, conn: ConnId) {
        if self.peers.contains_key(&conn) {
            self.stats.peers_too_slow += 1;
            self.close(
                conn,
                Some((
                    ByeReason::TooSlow,
                    "send queue stayed full; reading too slowly".into(),
                )),
            );
        }
    }

    /// Takes a token from leaf `conn`'s query bucket.
    fn leaf_may_query(&mut self, conn: ConnId, now: Time) -> bool {
        match self.peers.get_mut(&conn).map(|p| &mut p.state) {
            Some(PeerState::Leaf { queries, .. }) => queries.allow(now),
            _ => true,
        }
    }

    /// The result of an [`Action::Probe`]: an unreachable leaf is marked
    /// firewalled from now on.
    pub fn handle_probe_result(&mut self, conn: ConnId, reachable: bool) {
        if let Some(PeerState::Leaf { firewalled, .. }) =
            self.peers.get_mut(&conn).map(|p| &mut p.state)
        {
            *firewalled = !reachable;
            if !reachable {
                self.stats.leaves_unreachable += 1;
            }
        }
    }

    fn handle_hello_reply(&mut self, conn: ConnId, reply: HelloReply) {
        let Some((remote, authenticated)) =
            self.peers.get(&conn).map(|p| (p.remote, p.authenticated))
        else {
            return;
        };
        if let HandshakeOutcome::Rejected {
            reason,
            detail,
            try_supernodes,
        } = reply.outcome
        {
            // The acceptor closes the connection; we just let go of it.
            self.stats.handshakes_rejected += 1;
            self.learned(try_supernodes.clone());
            self.actions.push_back(Action::Rejected {
                conn,
                reason,
                detail,
                try_supernodes,
            });
            self.close(conn, None);
            return;
        }
        if reply.hello.role != Role::Supernode {
            self.violation(conn, "dialed a supernode but a leaf answered".into());
            return;
        }
        if let Err(rejection) = self.admit(authenticated, &reply.hello) {
            self.stats.handshakes_rejected += 1;
            let reason = match rejection.reason {
                RejectReason::Full => ByeReason::LimitExceeded,
                _ => ByeReason::ProtocolViolation,
            };
            self.close(conn, Some((reason, rejection.detail)));
            return;
        }
        let state = PeerState::Supernode {
            node_id: reply.hello.node_id,
            // We dialed it, so the address we used reaches it.
            listen_addr: Some(reachable_addr(reply.hello.listen_addr, remote)),
        };
        self.establish(conn, reply.hello.node_id, state);
        // Ask the supernode we joined which others it knows (the acceptor
        // may not speak first: its HelloReply must come before anything).
        let nonce = self.next_ping_nonce;
        self.next_ping_nonce += 1;
        self.send(conn, Message::Ping { nonce });
    }

    fn establish(&mut self, conn: ConnId, node_id: NodeId, state: PeerState) {
        let new_supernode = match &state {
            PeerState::Supernode { listen_addr, .. } => Some(*listen_addr),
            _ => None,
        };
        if let Some(peer) = self.peers.get_mut(&conn) {
            *self.counts.slot(&peer.state) -= 1;
            *self.counts.slot(&state) += 1;
            peer.state = state;
            self.by_node.insert(node_id, conn);
            if new_supernode.is_some() {
                self.supernodes.insert(conn);
            }
        }
        if let Some(listen_addr) = new_supernode {
            self.learned(listen_addr.into_iter().collect());
        }
    }

    /// Reports supernode addresses heard of (not our own) for the host cache.
    fn learned(&mut self, mut supernodes: Vec<SocketAddr>) {
        let us = self.config.identity.listen_addr;
        supernodes.retain(|addr| Some(*addr) != us && !addr.ip().is_unspecified());
        if !supernodes.is_empty() {
            self.actions.push_back(Action::Learned(supernodes));
        }
    }

    fn publish(&mut self, conn: ConnId, files: Vec<SharedFile>) {
        let limit = self.config.max_files_per_leaf;
        for file in files {
            if self.index.owner_len(conn) >= limit {
                self.stats.protocol_errors += 1;
                self.close(
                    conn,
                    Some((
                        ByeReason::LimitExceeded,
                        format!("more than {limit} files published"),
                    )),
                );
                return;
            }
            if !self.index.insert(conn, file) {
                self.close(
                    conn,
                    Some((
                        ByeReason::LimitExceeded,
                        "this supernode's index is full".into(),
                    )),
                );
                return;
            }
        }
    }

    fn handle_query(&mut self, from: ConnId, query: Query, now: Time) {
        self.stats.queries_received += 1;
        if !self.seen.first_sighting(query.message_id) {
            self.stats.queries_duplicate += 1;
            return;
        }
        self.routes.insert(query.message_id, from, now);
        let ttl = effective_ttl(&query, self.config.ttl_cap);
        let local = self.answer_from_index(from, &query);
        let from_leaf = matches!(
            self.peers.get(&from).map(|p| &p.state),
            Some(PeerState::Leaf { .. })
        );
        if from_leaf && self.config.dynamic.is_some() && self.dynamic.len() < MAX_DYNAMIC_QUERIES {
            self.start_dynamic(from, query, local, now);
            return;
        }
        if ttl > 1 {
            let forwarded = Query {
                ttl: ttl - 1,
                hops: query.hops.saturating_add(1),
                ..query
            };
            let targets: Vec<ConnId> = self
                .supernodes
                .iter()
                .copied()
                .filter(|conn| *conn != from)
                .collect();
            self.forward(targets, Message::Query(forwarded));
        }
    }

    /// Runs a leaf's query dynamically (see [`crate::dynamic`]).
    fn start_dynamic(&mut self, origin: ConnId, query: Query, local: usize, now: Time) {
        let Some(config) = self.config.dynamic.clone() else {
            return;
        };
        let id = query.message_id;
        self.dynamic
            .insert(id, (origin, DynamicQuery::new(query, local, &config, now)));
        self.step_dynamic(id, now);
    }

    /// Takes the next step of dynamic query `id`, if it is due.
    fn step_dynamic(&mut self, id: MessageId, now: Time) {
        let (Some(config), Some((_, dq))) =
            (self.config.dynamic.clone(), self.dynamic.get_mut(&id))
        else {
            return;
        };
        let peers: Vec<ConnId> = self.supernodes.iter().copied().collect();
        let cap = effective_ttl(&dq.query, self.config.ttl_cap);
        match dq.step(&peers, cap, &config, now) {
            Step::Wait => {}
            Step::Done => {
                self.dynamic.remove(&id);
            }
            Step::Send(targets, ttl) => {
                let forwarded = Query {
                    ttl,
                    hops: dq.query.hops.saturating_add(1),
                    ..dq.query.clone()
                };
                self.forward(targets, Message::Query(forwarded));
            }
        }
    }

    /// Returns how many files it answered with.
    fn answer_from_index(&mut self, from: ConnId, query: &Query) -> usize {
        let mut filter = Filter::new(&query.keywords, query.content_id);
        filter.min_size = query.min_size;
        filter.max_size = query.max_size;
        if filter.is_empty() {
            return 0; // keywords of nothing but punctuation
        }
        let mut by_owner: BTreeMap<ConnId, Vec<SharedFile>> = BTreeMap::new();
        for found in self
            .index
            .search(&filter, self.config.max_results_per_query)
        {
            if found.owner != from {
                by_owner
                    .entry(found.owner)
                    .or_default()
                    .push(found.to_shared_file());
            }
        }
        let mut hits = Vec::new();
        for (owner, files) in by_owner {
            let Some(PeerState::Leaf {
                node_id,
                addr,
                firewalled,
                ..
            }) = self.peers.get(&owner).map(|p| &p.state)
            else {
                continue;
            };
            for chunk in files.chunks(MAX_FILES_PER_MESSAGE) {
                hits.push(QueryHit {
                    message_id: query.message_id,
                    source_node_id: *node_id,
                    source_addr: *addr,
                    files: chunk.to_vec(),
                    firewalled: *firewalled,
                });
            }
        }
        let answered = hits.iter().map(|h| h.files.len()).sum();
        for hit in hits {
            self.stats.hits_answered += 1;
            self.send(from, Message::QueryHit(hit));
        }
        answered
    }

    fn route_hit(&mut self, from: ConnId, hit: QueryHit, now: Time) {
        match self.routes.lookup(&hit.message_id, now) {
            Some(back) if back != from && self.peers.contains_key(&back) => {
                self.stats.hits_routed += 1;
                if let Some((_, dq)) = self.dynamic.get_mut(&hit.message_id) {
                    dq.results += hit.files.len();
                }
                // A push for this source will come back this way.
                self.push_routes.insert(hit.source_node_id, from, now);
                self.send(back, Message::QueryHit(hit));
            }
            _ => self.stats.hits_unroutable += 1,
        }
    }

    /// Delivers a push to the target leaf if it is ours, else passes it on
    /// towards the connection its hits came from.
    fn route_push(&mut self, from: ConnId, push: Push, now: Time) {
        if !self.seen.first_sighting(push.message_id) {
            return;
        }
        let is_our_leaf = |conn: &ConnId| {
            matches!(
                self.peers.get(conn).map(|p| &p.state),
                Some(PeerState::Leaf { .. })
            )
        };
        if let Some(leaf) = self
            .by_node
            .get(&push.target_node_id)
            .copied()
            .filter(is_our_leaf)
        {
            self.stats.pushes_routed += 1;
            self.send(leaf, Message::Push(push));
            return;
        }
        match self.push_routes.lookup(&push.target_node_id, now) {
            Some(next)
                if next != from && self.peers.contains_key(&next) && push.hops < HARD_MAX_TTL =>
            {
                self.stats.pushes_routed += 1;
                let hops = push.hops + 1;
                self.send(next, Message::Push(Push { hops, ..push }));
            }
            _ => self.stats.pushes_unroutable += 1,
        }
    }
}

/// The TTL a query is handled with: its own, clamped to our cap and to what
/// its hop count leaves of the hard maximum, and at least 1 (it did arrive).
pub fn effective_ttl(query: &Query, cap: u8) -> u8 {
    let room = HARD_MAX_TTL.saturating_sub(query.hops);
    query.ttl.min(cap).min(room).max(1)
}
