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
//! Supernode peers are strangers too: each has token buckets for its
//! queries and hits and its own share of the route table; a hit goes on
//! only with the files that match the query it answers (see
//! [`crate::hit_check`]); a dynamic query counts one hit per source and a
//! capped share per peer; every query's index scan has a budget, and the
//! index a byte budget, kept by refusing the largest publishers first.
//!
//! Strangers get their share and no more: leaf and inbound peer slots are
//! counted per IP and per network, some peer slots are kept for our own
//! dials, a push's callback is the IP of the leaf that sent it, pushes are
//! rate-limited per connection and per callback IP, a push route is set
//! once, and the reachability probe dials only a leaf's own IP, a few at a
//! time. Each probe's verdict is told to the leaf (`Reachability`); a
//! leaf's `Announce` of a new listening address is taken like its Hello's
//! (the port, on the IP it connects from), probed again, at most once per
//! `announce_interval`. A supernode whose own address changes (its router
//! mapped a new port) tells its supernode peers with an `Announce`, taken
//! the same way.
//!
//! Input comes through `handle_*` with the current [`Time`]; the driver
//! drains [`Action`]s with [`Supernode::poll_action`]. The driver owns the
//! sockets and assigns [`ConnId`]s; this type owns every decision.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use canopy_proto::limits::{
    HARD_MAX_TTL, MAX_ADDRESSES, MAX_FILES_PER_MESSAGE, MAX_FREE_LEAF_SLOTS,
};
use canopy_proto::{
    ByeReason, Capability, CircuitToken, ContentId, FrameError, HandshakeOutcome, Hello,
    HelloReply, Message, MessageId, NodeId, Push, Query, QueryHit, RejectReason, Role, SharedFile,
};

use crate::addr_limits::{AddressCounter, AddressLimit, IpNet, default_exempt};
use crate::addrman::solicit::{NonceSource, Outstanding, public_key_for};
use crate::dedup::SeenMessages;
use crate::dynamic::{DynamicConfig, DynamicQuery, Step};
use crate::handshake::{Identity, Rejection, check_hello};
use crate::hit_check::{HitCheck, HitKey};
use crate::index::{FileIndex, Filter, Refused};
use crate::push_limits::{AddressBuckets, Rate};
use crate::rate::TokenBucket;
use crate::relay::RelayConfig;
use crate::routes::{RouteTable, Share, SharedRoutes};
use crate::routing_filter::{EntryHash, query_entries};
use crate::{ConnId, Time};

mod last_hop;
pub use last_hop::{
    FILTER_PATCH_RATE, FILTER_PUBLISH_INTERVAL, FilterStats, LastHopFilters, ReceiveError,
};

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
    /// Queries a supernode peer may send a second on average...
    pub peer_queries_per_second: u32,
    /// ...and at once. Queries beyond are dropped and counted: with the
    /// per-peer route share, what keeps one peer's fresh ids from flushing
    /// the duplicate and route tables for everyone else.
    pub peer_query_burst: u32,
    /// Hits a supernode peer may send a second on average...
    pub peer_hits_per_second: u32,
    /// ...and at once. Hits beyond are dropped and counted.
    pub peer_hit_burst: u32,
    /// Candidate files one query may examine in the index: an honest query
    /// finds its results long before; a query whose filter rejects
    /// everything stops here.
    pub scan_budget: usize,
    /// Candidates a connection's queries may examine on average, per
    /// query its rate allows: a leaf at 5 queries a second may have 2,500
    /// candidates a second examined, in bursts of two full scan budgets.
    pub scan_per_query: u32,
    /// Bytes the index may be charged (see [`FileIndex::bytes`]); over it,
    /// the largest publishers are refused first.
    pub index_budget_bytes: u64,
    /// Words of a file name indexed; a name with more is found by its
    /// first words only.
    pub max_words_per_name: usize,
    /// The key widening steps' query ids are derived with (see
    /// [`Supernode::step_id`]): the driver sets a random one.
    pub step_id_key: [u8; 32],
    /// Message ids remembered for duplicate suppression.
    pub seen_capacity: usize,
    /// Reverse-path routes remembered for the leaves' queries.
    pub route_capacity: usize,
    /// Reverse-path routes remembered for each supernode peer's queries:
    /// its share, which its own queries alone rotate. At the default
    /// 10,000, a peer at its full query rate (2,000 a second) has its
    /// routes kept 2.5 s at least (hits come back well within), and 32
    /// peers' shares take about 40 MB at most (a route and its hit check
    /// are 72 bytes, in two generations of hash tables).
    pub peer_route_capacity: usize,
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
    /// Addresses the per-address limits below do not apply to (loopback by
    /// default, so a whole overlay can run on one machine).
    pub limit_exempt: Vec<IpNet>,
    /// Leaves one IP, and one /24 or /48, may attach.
    pub leaves_per_address: AddressLimit,
    /// Supernode peers that dialed us one IP, and one prefix, may hold
    /// (peers we dial are our choice and not counted).
    pub peers_per_address: AddressLimit,
    /// Handshakes in progress one IP, and one prefix, may hold: the
    /// driver's accept loop enforces it with
    /// [`SupernodeConfig::handshake_counter`].
    pub handshakes_per_address: AddressLimit,
    /// Supernode peer slots only connections we dialed may take, so a
    /// flood of inbound peers can't lock us out of our own network.
    pub reserved_outbound_peers: usize,
    /// Pushes one leaf may send.
    pub leaf_push_rate: Rate,
    /// Pushes one supernode peer may pass us.
    pub peer_push_rate: Rate,
    /// Pushes naming one callback IP, from everyone together.
    pub callback_push_rate: Rate,
    /// Reachability probes running at once; leaves beyond wait, counted
    /// firewalled until probed.
    pub max_probes_in_flight: usize,
    /// Probes to one IP, and one prefix, at once.
    pub probes_per_address: AddressLimit,
    /// Keys the ping nonces. The driver sets it from its RNG; the default
    /// is derived from the node id, so predictable (tests, simulator).
    pub ping_key: [u8; 32],
    /// The relay (off by default: no slots). On, the Hello says
    /// [`Capability::Relay`] and our own leaves' pushes may ask for a
    /// circuit ([`Action::RelayCircuit`]).
    pub relay: RelayConfig,
    /// Send and take last-hop routing filters (see
    /// [`crate::routing_filter`]): a query on its last hop then goes only
    /// to peers whose filter may match.
    pub routing_filters: bool,
    /// How often our routing filter is sent again, if it changed.
    pub filter_publish_interval: Duration,
    /// A leaf's Announces closer together than this are ignored (and
    /// counted): each one costs a probe.
    pub announce_interval: Duration,
}

/// Most leaf queries run dynamically at once; beyond, they are flooded.
pub const MAX_DYNAMIC_QUERIES: usize = 1024;

/// The default TTL cap, as in LimeWire and gtk-gnutella.
pub const DEFAULT_TTL_CAP: u8 = 4;

/// Queries a supernode peer may send a second by default: a busy
/// neighbourhood's share (a thousand leaves at their own limit of five a
/// second is 5,000, far above what they send in practice), and a flood
/// of fresh ids from one peer fills a generation of the duplicate table
/// no faster than every 25 seconds. The relay benchmark, which measures
/// one peer at full speed, raises it.
pub const DEFAULT_PEER_QUERIES_PER_SECOND: u32 = 2_000;

/// The index's default budget: 1 GiB of charged bytes (about 600,000
/// files of typical names; 1,000 leaves at their limit of 10,000 files
/// would be over 10 GiB).
pub const DEFAULT_INDEX_BUDGET_BYTES: u64 = 1 << 30;

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
            peer_queries_per_second: DEFAULT_PEER_QUERIES_PER_SECOND,
            peer_query_burst: 2 * DEFAULT_PEER_QUERIES_PER_SECOND,
            peer_hits_per_second: 2_000,
            peer_hit_burst: 4_000,
            scan_budget: 50_000,
            scan_per_query: 500,
            index_budget_bytes: DEFAULT_INDEX_BUDGET_BYTES,
            max_words_per_name: crate::index::DEFAULT_MAX_WORDS,
            step_id_key: *blake3::hash(&node_id.0).as_bytes(),
            max_results_per_query: 200,
            seen_capacity: 100_000,
            route_capacity: 100_000,
            peer_route_capacity: 10_000,
            route_lifetime: Duration::from_secs(5 * 60),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            peer_refresh_interval: Duration::from_secs(5 * 60),
            idle_timeout: Duration::from_secs(90),
            limit_exempt: default_exempt(),
            leaves_per_address: DEFAULT_LEAVES_PER_ADDRESS,
            peers_per_address: DEFAULT_PEERS_PER_ADDRESS,
            handshakes_per_address: DEFAULT_HANDSHAKES_PER_ADDRESS,
            reserved_outbound_peers: DEFAULT_RESERVED_OUTBOUND_PEERS,
            leaf_push_rate: Rate::new(8, 64),
            peer_push_rate: Rate::new(100, 500),
            callback_push_rate: Rate::new(16, 64),
            max_probes_in_flight: 16,
            probes_per_address: AddressLimit::new(2, 8),
            ping_key: public_key_for(&node_id.0),
            relay: RelayConfig::default(),
            routing_filters: true,
            filter_publish_interval: FILTER_PUBLISH_INTERVAL,
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
        }
    }

    /// A counter of handshakes in progress per address, for the driver's
    /// accept loop: it takes one for each connection it accepts (refusing
    /// the connection if the address holds its share) and gives it back
    /// when the handshake ends either way.
    pub fn handshake_counter(&self) -> AddressCounter {
        AddressCounter::new(self.handshakes_per_address, self.limit_exempt.clone())
    }
}

// The per-address defaults. A home NAT may hold a few leaves and an IPv4
// /24 (or IPv6 /48) is usually one ISP customer block or one hosting
// subnet: one party. Bitcoin Core, the best-studied open overlay, keeps
// 10 of its 125 connections for peers it chose itself and evicts inbound
// peers by network group (Heilman et al. 2015); Tor relays cap concurrent
// connections per IP. Scaled to Canopy's 1,000 leaves and 32 peers:

/// Leaves per IP and per prefix: a household's PCs; a /24 fills at most
/// 3% of the leaf slots.
pub const DEFAULT_LEAVES_PER_ADDRESS: AddressLimit = AddressLimit::new(4, 32);
/// Inbound supernode peers per IP and per prefix: one supernode per host
/// (two across a restart), a few per network.
pub const DEFAULT_PEERS_PER_ADDRESS: AddressLimit = AddressLimit::new(2, 4);
/// Handshakes in progress per IP and per prefix: room for the leaves and
/// peers above to (re)connect at once, not for a handshake flood.
pub const DEFAULT_HANDSHAKES_PER_ADDRESS: AddressLimit = AddressLimit::new(8, 32);
/// Supernode peer slots kept for connections we dial: 8 of 32, the
/// `--peers-wanted` default, as Bitcoin keeps its outbound slots apart.
pub const DEFAULT_RESERVED_OUTBOUND_PEERS: usize = 8;
/// A leaf may announce a new listening address once per this long.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// Leaves waiting for a reachability probe; beyond, a leaf is never probed
/// and counted firewalled (a queue longer than the leaf slots is useless).
const MAX_PROBES_WAITING: usize = 1024;
/// Callback IPs whose push rate is remembered.
const CALLBACK_ADDRESSES_REMEMBERED: usize = 4096;

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
    /// Supernodes that `from` named in answer to our Ping or in refusing
    /// our dial: for the host cache, and for dialing when short of peers.
    /// (Pongs nobody asked for are dropped before this.)
    Learned {
        /// The peer that named them, as we reach it.
        from: SocketAddr,
        /// What it named (not us).
        supernodes: Vec<SocketAddr>,
    },
    /// The supernode we dialed at `addr` accepted us: the host cache
    /// counts it as tried.
    Joined {
        /// The address we dialed.
        addr: SocketAddr,
    },
    /// Try to open a connection to `addr`, the port leaf `conn` announced
    /// on the IP it connected from (never an IP it names), and report with
    /// [`Supernode::handle_probe_result`]. A leaf behind NAT announces an
    /// address nobody can reach; its hits must say it is firewalled, so
    /// downloaders push instead of dialing. At most
    /// [`SupernodeConfig::max_probes_in_flight`] are asked for at once.
    Probe {
        /// The leaf.
        conn: ConnId,
        /// Where it says it can be reached.
        addr: SocketAddr,
    },
    /// Our own leaf asked for relay circuit `token` in a push we passed
    /// on: the relay service registers it (see [`crate::relay::Relay`]),
    /// so the circuit's two halves may dial us.
    RelayCircuit {
        /// The circuit's name.
        token: CircuitToken,
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
    /// Supernode peers' queries dropped for going over the peer's rate.
    pub peer_queries_rate_limited: u64,
    /// Queries whose index scan stopped at the scan budget (or at what
    /// was left of their connection's scan allowance).
    pub queries_scan_exhausted: u64,
    /// Index candidates examined by queries, over all.
    pub scan_candidates: u64,
    /// Hits dropped for going over the sending peer's hit rate.
    pub hits_rate_limited: u64,
    /// Hits dropped for an invalid source (unspecified address, port 0,
    /// zero or our own node id).
    pub hits_invalid: u64,
    /// Files dropped from hits for not matching the query they answer.
    pub hit_files_mismatched: u64,
    /// Hits dropped whole: none of their files matched their query.
    pub hits_mismatched: u64,
    /// Routed hits not counted toward a dynamic query (a second hit from
    /// the same source, or past the sending peer's share).
    pub dynamic_hits_uncounted: u64,
    /// Bytes charged to the index (see `FileIndex::bytes`).
    pub index_bytes: u64,
    /// Leaves refused (disconnected) to keep the index within its budget.
    pub publishers_refused: u64,
    /// Handshakes refused.
    pub handshakes_rejected: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// Handshakes refused because the address or its network held its
    /// share of slots (also counted in `handshakes_rejected`).
    pub handshakes_address_limited: u64,
    /// Leaves refused because every leaf slot was taken (also counted in
    /// `handshakes_rejected`): the need the supernode election reads.
    pub leaves_refused_full: u64,
    /// Pushes dropped for going over their source connection's rate.
    pub pushes_rate_limited: u64,
    /// Pushes dropped for going over their callback address's rate.
    pub pushes_callback_limited: u64,
    /// Pushes from our leaves whose relay part was dropped: we don't
    /// relay, or we don't know the address the leaf reached us at.
    pub push_relays_dropped: u64,
    /// Relay circuits our leaves asked for, passed to the relay service.
    pub push_relays_granted: u64,
    /// Pushes from supernode peers carrying a relay, passed as they are.
    pub push_relays_passed: u64,
    /// Pushes from leaves whose callback IP was not the leaf's own, and
    /// was replaced with it.
    pub push_callbacks_rewritten: u64,
    /// Leaves never probed because too many waited: counted firewalled.
    pub probes_skipped: u64,
    /// Reachability probes running.
    pub probes_in_flight: usize,
    /// Pongs that answered no Ping of ours: ignored.
    pub pongs_unsolicited: u64,
    /// Last-hop routing filters: bytes, memory, queries saved.
    pub filters: FilterStats,
    /// Leaves' Announces taken (a new address, probed again).
    pub announces: u64,
    /// Announces (from leaves or peers) ignored for coming too soon after
    /// the last.
    pub announces_ignored: u64,
    /// Supernode peers' Announces taken (their new listening port).
    pub peer_announces: u64,
    /// Our own new listening addresses announced to our peers.
    pub own_announces: u64,
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
    /// Our address as this connection reached it (canonical), once the
    /// driver said it.
    local: Option<SocketAddr>,
    direction: Direction,
    /// Pushes it may send, once its role is known.
    pushes: Option<TokenBucket>,
    /// The node id its authenticated static key owns.
    authenticated: NodeId,
    state: PeerState,
    last_heard: Time,
    pinged_at: Option<Time>,
    /// Our Pings it has not answered yet.
    pings: Outstanding,
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
    /// Query routes with what their hits must match, a share per peer.
    routes: SharedRoutes<MessageId, HitCheck>,
    /// The widening steps' query ids, to the leaf's own id.
    step_ids: RouteTable<MessageId, MessageId>,
    hit_key: HitKey,
    /// Each supernode peer's query and hit buckets, made at its first
    /// query or hit.
    peer_limits: HashMap<ConnId, PeerLimits>,
    /// Each querying connection's allowance of index candidates examined.
    scan_allowances: HashMap<ConnId, TokenBucket>,
    push_routes: RouteTable<NodeId>,
    actions: VecDeque<Action>,
    stats: SupernodeStats,
    filters: LastHopFilters,
    nonces: NonceSource,
    /// When supernode peers are next asked whom they know (set on the
    /// first tick).
    next_peer_refresh: Option<Time>,
    /// Leaf slots held per address.
    leaf_addrs: AddressCounter,
    /// Inbound supernode peer slots held per address.
    peer_addrs: AddressCounter,
    /// Supernode peers that dialed us.
    inbound_peers: usize,
    /// Push rate per callback IP.
    callback_pushes: AddressBuckets,
    /// Probes running, with the IP each dials.
    probing: BTreeMap<ConnId, IpAddr>,
    /// Probes running per address.
    probe_addrs: AddressCounter,
    /// Leaves waiting for a probe, oldest first.
    probe_waiting: VecDeque<ConnId>,
    /// When each leaf's last Announce was taken.
    announced_at: HashMap<ConnId, Time>,
    /// Leaves whose running probe is of an address they announced since:
    /// its result is dropped and they are probed again.
    stale_probes: BTreeSet<ConnId>,
}

impl Supernode {
    /// A supernode with no connections.
    pub fn new(mut config: SupernodeConfig) -> Self {
        config.ttl_cap = config.ttl_cap.clamp(1, HARD_MAX_TTL);
        let mut index = FileIndex::new();
        index.set_max_words(config.max_words_per_name);
        Self {
            seen: SeenMessages::new(config.seen_capacity),
            routes: SharedRoutes::new(
                config.route_capacity,
                config.peer_route_capacity,
                config.route_lifetime,
            ),
            step_ids: RouteTable::new(MAX_DYNAMIC_QUERIES * 64, config.route_lifetime),
            hit_key: HitKey::new(),
            peer_limits: HashMap::new(),
            scan_allowances: HashMap::new(),
            push_routes: RouteTable::new(config.route_capacity, config.route_lifetime),
            dynamic: BTreeMap::new(),
            nonces: NonceSource::new(config.ping_key),
            peers: BTreeMap::new(),
            supernodes: BTreeSet::new(),
            counts: StateCounts::default(),
            by_node: HashMap::new(),
            index,
            actions: VecDeque::new(),
            stats: SupernodeStats::default(),
            filters: LastHopFilters::new(config.filter_publish_interval),
            next_peer_refresh: None,
            leaf_addrs: AddressCounter::new(config.leaves_per_address, config.limit_exempt.clone()),
            peer_addrs: AddressCounter::new(config.peers_per_address, config.limit_exempt.clone()),
            inbound_peers: 0,
            callback_pushes: AddressBuckets::new(
                config.callback_push_rate,
                CALLBACK_ADDRESSES_REMEMBERED,
            ),
            probing: BTreeMap::new(),
            probe_addrs: AddressCounter::new(
                config.probes_per_address,
                config.limit_exempt.clone(),
            ),
            probe_waiting: VecDeque::new(),
            announced_at: HashMap::new(),
            stale_probes: BTreeSet::new(),
            config,
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
        stats.index_bytes = self.index.bytes();
        stats.leaves = self.counts.leaves;
        stats.supernode_peers = self.counts.supernodes;
        stats.handshaking = self.counts.handshaking;
        stats.probes_in_flight = self.probing.len();
        stats.filters = self.filters.stats();
        stats
    }

    /// True while `conn` is connected and has not completed its handshake:
    /// the driver holds its per-address handshake count until then.
    pub fn is_handshaking(&self, conn: ConnId) -> bool {
        matches!(
            self.peers.get(&conn).map(|p| &p.state),
            Some(PeerState::Handshaking { .. })
        )
    }

    /// Supernodes to offer a dialer we refuse: the peers we dialed first
    /// (our configured and long-known peers), then those that dialed us,
    /// oldest first, so a flood of inbound peers can't make the list its
    /// own.
    fn try_list(&self) -> Vec<SocketAddr> {
        let listed = |direction: Direction| {
            self.supernodes.iter().filter_map(move |conn| {
                let peer = self.peers.get(conn)?;
                match peer.state {
                    PeerState::Supernode { listen_addr, .. } if peer.direction == direction => {
                        listen_addr
                    }
                    _ => None,
                }
            })
        };
        listed(Direction::Outbound)
            .chain(listed(Direction::Inbound))
            .take(MAX_ADDRESSES)
            .collect()
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
    /// `remote` is taken in canonical form (a dual-stack socket's
    /// `::ffff:a.b.c.d` as `a.b.c.d`), so limits, routes, probes and hits
    /// see one address per host.
    pub fn handle_connected(
        &mut self,
        conn: ConnId,
        direction: Direction,
        remote: SocketAddr,
        authenticated: NodeId,
        now: Time,
    ) {
        let remote = crate::family::canonical(remote);
        let peer = Peer {
            remote,
            local: None,
            direction,
            pushes: None,
            authenticated,
            state: PeerState::Handshaking {
                direction,
                since: now,
            },
            last_heard: now,
            pinged_at: None,
            pings: Outstanding::default(),
        };
        if let Some(old) = self.peers.insert(conn, peer) {
            // The driver never reuses ids; if it did, keep the counts true.
            *self.counts.slot(&old.state) -= 1;
        }
        self.counts.handshaking += 1;
        if direction == Direction::Outbound {
            let hello = self.our_hello();
            self.send(conn, Message::Hello(hello));
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
            ) => self.handle_hello_reply(conn, reply, now),
            (PeerState::Handshaking { .. }, other) => {
                self.violation(
                    conn,
                    format!("{} before the handshake completed", other.kind()),
                );
            }
            (_, Message::Ping { nonce }) => {
                let supernodes = self.known_supernodes();
                let free_leaf_slots = Some(self.free_leaf_slots());
                self.send(
                    conn,
                    Message::Pong {
                        nonce,
                        supernodes,
                        free_leaf_slots,
                    },
                );
            }
            (
                _,
                Message::Pong {
                    nonce, supernodes, ..
                },
            ) => self.handle_pong(conn, nonce, supernodes),
            (PeerState::Leaf { .. }, Message::Query(query)) => {
                if self.leaf_may_query(conn, now) {
                    self.handle_query(conn, query, now);
                } else {
                    self.stats.queries_rate_limited += 1;
                }
            }
            (PeerState::Supernode { .. }, Message::Query(query)) => {
                if self.peer_may(conn, Limit::Query, now) {
                    self.handle_query(conn, query, now);
                } else {
                    self.stats.peer_queries_rate_limited += 1;
                }
            }
            (PeerState::Leaf { .. }, Message::FileList { replace, files }) => {
                if replace {
                    self.unindex_owner(conn);
                }
                self.publish(conn, files);
                self.publish_filter(now);
            }
            (PeerState::Leaf { .. }, Message::FileDelta { added, removed }) => {
                for id in &removed {
                    self.unindex(conn, id);
                }
                self.publish(conn, added);
                self.publish_filter(now);
            }
            (PeerState::Supernode { .. }, Message::QueryHit(hit)) => {
                self.route_hit(conn, hit, now);
            }
            (PeerState::Supernode { .. }, Message::FilterPatch(patch)) => {
                if self.config.routing_filters {
                    if let Err(error) = self.filters.receive(conn, &patch, now) {
                        self.violation(conn, error.to_string());
                    }
                }
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
                // ours, since hits we routed may still be on their way to it,
                // and only by what it found elsewhere (see
                // `DynamicQuery::leaf_reports`). Statuses for queries it does
                // not own are ignored.
                if let Some((origin, dq)) = self.dynamic.get_mut(&message_id) {
                    if *origin == conn {
                        let reported = if results == u32::MAX {
                            usize::MAX
                        } else {
                            usize::try_from(results).unwrap_or(usize::MAX)
                        };
                        dq.leaf_reports(reported);
                    }
                }
            }
            (PeerState::Leaf { .. }, Message::Announce { listen_addr }) => {
                self.handle_announce(conn, listen_addr, now);
            }
            (PeerState::Leaf { .. }, other) => {
                self.violation(conn, format!("{} is not allowed from a leaf", other.kind()));
            }
            (PeerState::Supernode { .. }, Message::Announce { listen_addr }) => {
                self.handle_peer_announce(conn, listen_addr, now);
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
        self.publish_filter(now);
        self.routes.expire(now);
        self.step_ids.expire(now);
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
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.pinged_at = Some(now);
            }
            self.ping(conn);
        }
        self.refresh_peer_lists(now);
    }

    /// When [`Supernode::handle_timeout`] has something to do next: the
    /// earliest of every connection's handshake deadline, keepalive ping
    /// and idle timeout, the dynamic queries' next steps, route
    /// generations' expiry, the routing filter's publication and the
    /// refresh of peer lists (due at once before the first timeout). A
    /// driver sleeps until then (or an event) instead of ticking.
    pub fn poll_timeout(&self) -> Option<Time> {
        let refresh = self.next_peer_refresh.unwrap_or(Time::ZERO);
        let peers = self.peers.values().map(|peer| match peer.state {
            PeerState::Handshaking { since, .. } => since + self.config.handshake_timeout,
            _ => {
                let idle = peer.last_heard + self.config.idle_timeout;
                match peer.pinged_at {
                    None => idle.min(peer.last_heard + self.config.keepalive_interval),
                    Some(_) => idle,
                }
            }
        });
        let dynamic = self.dynamic.values().map(|(_, dq)| dq.next_wakeup());
        let filters = self
            .config
            .routing_filters
            .then(|| self.filters.next_publish())
            .flatten();
        [
            Some(refresh),
            peers.min(),
            dynamic.min(),
            filters,
            self.routes.next_expiry(),
            self.step_ids.next_expiry(),
            self.push_routes.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
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
            self.ping(conn);
        }
    }

    /// Pings `conn` with a fresh nonce and remembers it: only a Pong that
    /// echoes it is believed.
    fn ping(&mut self, conn: ConnId) {
        let nonce = self.nonces.next_nonce();
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.pings.sent(nonce);
            self.send(conn, Message::Ping { nonce });
        }
    }

    /// A Pong: its supernodes are learned only if it answers a Ping we
    /// sent on this connection, and only from a supernode. Anything else
    /// is counted and dropped (a peer pushing addresses at us uninvited is
    /// how a host cache gets poisoned).
    fn handle_pong(&mut self, conn: ConnId, nonce: u64, supernodes: Vec<SocketAddr>) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        if !peer.pings.answered(nonce) {
            self.stats.pongs_unsolicited += 1;
            return;
        }
        if let PeerState::Supernode { .. } = peer.state {
            let from = peer.remote;
            self.learned(from, supernodes);
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

    /// Steps down (the supernode election decided it): every leaf is sent
    /// a Bye whose try-list names `try_list` (other supernodes with room),
    /// every peer a plain one, and all are closed.
    pub fn step_down(&mut self, try_list: Vec<SocketAddr>) {
        let try_supernodes: Vec<SocketAddr> = try_list.into_iter().take(MAX_ADDRESSES).collect();
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            let leaf = matches!(
                self.peers.get(&conn).map(|p| &p.state),
                Some(PeerState::Leaf { .. })
            );
            if leaf {
                self.send(
                    conn,
                    Message::Bye {
                        reason: ByeReason::Shutdown,
                        detail: "supernode stepping down; try the supernodes listed".into(),
                        try_supernodes: try_supernodes.clone(),
                    },
                );
                self.close(conn, None);
            } else {
                self.close(
                    conn,
                    Some((ByeReason::Shutdown, "supernode stepping down".into())),
                );
            }
        }
    }

    /// Leaves this supernode takes now, as advertised in HelloReplies and
    /// Pongs (at most the wire's limit).
    pub fn free_leaf_slots(&self) -> u32 {
        let free = self.config.max_leaves.saturating_sub(self.counts.leaves);
        u32::try_from(free)
            .unwrap_or(u32::MAX)
            .min(MAX_FREE_LEAF_SLOTS)
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
        self.filters.peer_left(conn);
        self.routes.remove_share(Share::Peer(conn));
        self.peer_limits.remove(&conn);
        self.scan_allowances.remove(&conn);
        self.forget_announces(conn);
        *self.counts.slot(&peer.state) -= 1;
        match peer.state {
            PeerState::Leaf { node_id, .. } => {
                self.unindex_owner(conn);
                self.by_node.remove(&node_id);
                self.leaf_addrs.release(peer.remote.ip());
            }
            PeerState::Supernode { node_id, .. } => {
                self.by_node.remove(&node_id);
                self.supernodes.remove(&conn);
                if peer.direction == Direction::Inbound {
                    self.peer_addrs.release(peer.remote.ip());
                    self.inbound_peers = self.inbound_peers.saturating_sub(1);
                }
            }
            PeerState::Handshaking { .. } => {}
        }
        true
    }

    fn our_hello(&self) -> Hello {
        let mut hello = self.config.identity.hello();
        if self.config.relay.enabled() {
            hello.capabilities.push(Capability::Relay);
        }
        if self.config.routing_filters && hello.role == Role::Supernode {
            hello.capabilities.push(Capability::RoutingFilter);
        }
        hello
    }

    /// Our address as connection `conn` reached it (the socket's local
    /// address): a push from that leaf asking for a relay names it as the
    /// relay's address. Taken in canonical form.
    pub fn handle_local_addr(&mut self, conn: ConnId, local: SocketAddr) {
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.local = Some(crate::family::canonical(local));
        }
    }

    /// Whether a connection from `remote`, opened in `direction`, saying
    /// `hello` may take a slot.
    fn admit(
        &self,
        authenticated: NodeId,
        hello: &Hello,
        direction: Direction,
        remote: SocketAddr,
    ) -> Result<(), Rejection> {
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
        if direction == Direction::Outbound {
            return Ok(()); // we chose to dial it
        }
        let by_address = match hello.role {
            Role::Leaf => self
                .leaf_addrs
                .check(remote.ip())
                .map_err(|e| (e, "leaf slots", self.config.leaves_per_address)),
            Role::Supernode => self
                .peer_addrs
                .check(remote.ip())
                .map_err(|e| (e, "supernode peer slots", self.config.peers_per_address)),
        };
        by_address.map_err(|(exceeded, what, limit)| {
            Rejection::new(
                RejectReason::AddressLimit,
                format!(
                    "{what}: {exceeded} (at most {} per IP address and {} per /24 or /48 network)",
                    limit.per_ip, limit.per_prefix
                ),
            )
        })?;
        let inbound_max = max.saturating_sub(self.config.reserved_outbound_peers);
        if hello.role == Role::Supernode && self.inbound_peers >= inbound_max {
            return Err(Rejection::new(
                RejectReason::Full,
                format!(
                    "this supernode has its maximum of {inbound_max} supernode peers \
                     that dialed it; its other {} peer slots are kept for peers it dials",
                    max - inbound_max
                ),
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
        if let Err(rejection) = self.admit(authenticated, &hello, Direction::Inbound, remote) {
            self.stats.handshakes_rejected += 1;
            if rejection.reason == RejectReason::AddressLimit {
                self.stats.handshakes_address_limited += 1;
            }
            if rejection.reason == RejectReason::Full && hello.role == Role::Leaf {
                self.stats.leaves_refused_full += 1;
            }
            let reply = HelloReply {
                hello: self.our_hello(),
                outcome: HandshakeOutcome::Rejected {
                    reason: rejection.reason,
                    detail: rejection.detail,
                    try_supernodes: self.try_list(),
                },
                free_leaf_slots: Some(self.free_leaf_slots()),
            };
            self.send(conn, Message::HelloReply(reply));
            self.close(conn, None);
            return;
        }
        let state = match hello.role {
            Role::Leaf => PeerState::Leaf {
                node_id: hello.node_id,
                // Only ever the IP we see it from: an announced IP could be
                // anyone's, and probes and downloads would go there.
                addr: SocketAddr::new(
                    remote.ip(),
                    hello.listen_addr.map_or(remote.port(), |a| a.port()),
                ),
                // Firewalled until the probe says otherwise: a leaf that
                // announces no listening address accepts no connections,
                // and one that does is taken at its word only once we
                // reached it (a hit meanwhile would send downloaders to
                // dial an address that may not answer; a push always
                // works).
                firewalled: true,
                queries: TokenBucket::new(
                    self.config.leaf_queries_per_second,
                    self.config.leaf_query_burst,
                    now,
                ),
            },
            Role::Supernode => PeerState::Supernode {
                node_id: hello.node_id,
                // Its announced port on the IP it dialed from: what we pass
                // on (host caches, try-lists) must not send others to an
                // address of a stranger's choosing.
                listen_addr: hello
                    .listen_addr
                    .map(|addr| SocketAddr::new(remote.ip(), addr.port())),
            },
        };
        let probe = hello.role == Role::Leaf && hello.listen_addr.is_some();
        self.establish(conn, hello.node_id, state, now);
        let reply = HelloReply {
            hello: self.our_hello(),
            outcome: HandshakeOutcome::Accepted {
                observed_addr: Some(remote),
            },
            free_leaf_slots: Some(self.free_leaf_slots()),
        };
        self.send(conn, Message::HelloReply(reply));
        if probe {
            self.request_probe(conn);
        }
        if hello.role == Role::Supernode {
            self.filters_joined(conn, &hello, now);
        }
    }

    /// Probes leaf `conn` now if fewer than the maximum are running (in
    /// all and to its address); else it waits, or, if too many wait, is
    /// never probed. Either way it counts as firewalled until probed.
    fn request_probe(&mut self, conn: ConnId) {
        if self.start_probe(conn) {
            return;
        }
        if let Some(PeerState::Leaf { firewalled, .. }) =
            self.peers.get_mut(&conn).map(|p| &mut p.state)
        {
            *firewalled = true;
        }
        if self.probe_waiting.len() < MAX_PROBES_WAITING {
            self.probe_waiting.push_back(conn);
        } else {
            self.stats.probes_skipped += 1;
        }
    }

    /// Starts the probe of leaf `conn` if there is room; true if started.
    fn start_probe(&mut self, conn: ConnId) -> bool {
        let Some(PeerState::Leaf { addr, .. }) = self.peers.get(&conn).map(|p| &p.state) else {
            return false;
        };
        let addr = *addr;
        if self.probing.len() >= self.config.max_probes_in_flight
            || self.probe_addrs.acquire(addr.ip()).is_err()
        {
            return false;
        }
        self.probing.insert(conn, addr.ip());
        self.actions.push_back(Action::Probe { conn, addr });
        true
    }

    /// Starts waiting probes while there is room, oldest first; those
    /// whose address is busy keep their place.
    fn start_waiting_probes(&mut self) {
        let mut still_waiting = VecDeque::new();
        while let Some(conn) = self.probe_waiting.pop_front() {
            let is_leaf = matches!(
                self.peers.get(&conn).map(|p| &p.state),
                Some(PeerState::Leaf { .. })
            );
            if !is_leaf {
                continue; // gone while it waited
            }
            if self.probing.len() >= self.config.max_probes_in_flight {
                still_waiting.push_back(conn);
                still_waiting.extend(self.probe_waiting.drain(..));
                break;
            }
            if !self.start_probe(conn) {
                still_waiting.push_back(conn);
            }
        }
        self.probe_waiting = still_waiting;
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
    /// firewalled from now on. Results of probes not asked for are ignored.
    pub fn handle_probe_result(&mut self, conn: ConnId, reachable: bool) {
        let Some(ip) = self.probing.remove(&conn) else {
            return;
        };
        self.probe_addrs.release(ip);
        if self.reprobe_if_stale(conn) {
            self.start_waiting_probes();
            return;
        }
        let mut probed = None;
        if let Some(PeerState::Leaf {
            firewalled, addr, ..
        }) = self.peers.get_mut(&conn).map(|p| &mut p.state)
        {
            *firewalled = !reachable;
            probed = Some(*addr);
            if !reachable {
                self.stats.leaves_unreachable += 1;
            }
        }
        if let Some(probed_addr) = probed {
            self.tell_verdict(conn, reachable, probed_addr);
        }
        self.start_waiting_probes();
    }

    fn handle_hello_reply(&mut self, conn: ConnId, reply: HelloReply, now: Time) {
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
            self.learned(remote, try_supernodes.clone());
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
        if let Err(rejection) = self.admit(authenticated, &reply.hello, Direction::Outbound, remote)
        {
            self.stats.handshakes_rejected += 1;
            let reason = match rejection.reason {
                RejectReason::Full | RejectReason::AddressLimit => ByeReason::LimitExceeded,
                _ => ByeReason::ProtocolViolation,
            };
            self.close(conn, Some((reason, rejection.detail)));
            return;
        }
        let state = PeerState::Supernode {
            node_id: reply.hello.node_id,
            // We dialed it, so the address we used reaches it (and is the
            // one to pass on, not one it names).
            listen_addr: Some(remote),
        };
        self.establish(conn, reply.hello.node_id, state, now);
        self.filters_joined(conn, &reply.hello, now);
        self.actions.push_back(Action::Joined { addr: remote });
        // Ask the supernode we joined which others it knows (the acceptor
        // may not speak first: its HelloReply must come before anything).
        self.ping(conn);
    }

    fn establish(&mut self, conn: ConnId, node_id: NodeId, state: PeerState, now: Time) {
        let new_supernode = matches!(state, PeerState::Supernode { .. });
        if let Some(peer) = self.peers.get_mut(&conn) {
            *self.counts.slot(&peer.state) -= 1;
            *self.counts.slot(&state) += 1;
            // Take the address's slot (admit checked there is room) and
            // the role's push budget.
            let push_rate = match (&state, peer.direction) {
                (PeerState::Leaf { .. }, _) => {
                    let _ = self.leaf_addrs.acquire(peer.remote.ip());
                    self.config.leaf_push_rate
                }
                (_, Direction::Inbound) => {
                    let _ = self.peer_addrs.acquire(peer.remote.ip());
                    self.inbound_peers += 1;
                    self.config.peer_push_rate
                }
                _ => self.config.peer_push_rate,
            };
            peer.pushes = Some(push_rate.bucket(now));
            peer.state = state;
            self.by_node.insert(node_id, conn);
            if new_supernode {
                self.supernodes.insert(conn);
            }
        }
        // An inbound peer's own listen address is not learned: it is a
        // claim nobody asked for. Others learn it from our Pongs.
    }

    /// Reports supernode addresses `from` named (not our own) for the
    /// host cache.
    fn learned(&mut self, from: SocketAddr, mut supernodes: Vec<SocketAddr>) {
        let us = self.config.identity.listen_addr;
        supernodes.retain(|addr| Some(*addr) != us && !addr.ip().is_unspecified());
        if !supernodes.is_empty() {
            self.actions.push_back(Action::Learned { from, supernodes });
        }
    }

    fn publish(&mut self, conn: ConnId, files: Vec<SharedFile>) {
        let limit = self.config.max_files_per_leaf;
        for file in files {
            // A file published again (a download's progress) replaces its
            // record: only a new one counts against the limit.
            let new = !self.index.contains(conn, &file.content_id);
            if new && self.index.owner_len(conn) >= limit {
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
            if !self.index_within_budget(conn, file) {
                return;
            }
        }
    }

    /// Indexes `file` for `conn` within the index's byte budget: while it
    /// does not fit, the largest publisher is refused (disconnected with a
    /// Bye, its files dropped), so a leaf that publishes a lot loses its
    /// place before one that publishes a little. False if `conn` itself
    /// was refused.
    fn index_within_budget(&mut self, conn: ConnId, file: SharedFile) -> bool {
        let budget = self.config.index_budget_bytes;
        let replaced = self
            .index
            .owned_name(conn, &file.content_id)
            .filter(|_| self.config.routing_filters)
            .map(str::to_owned);
        loop {
            match self.index.insert_within(conn, &file, budget) {
                Ok(()) => {
                    if self.config.routing_filters {
                        let words = self.index.max_words();
                        if let Some(old) = &replaced {
                            self.filters.file_removed(old, &file.content_id, words);
                        }
                        self.filters.file_added(&file.name, &file.content_id, words);
                    }
                    return true;
                }
                Err(Refused::Full) => {
                    self.close(
                        conn,
                        Some((
                            ByeReason::LimitExceeded,
                            "this supernode's index is full".into(),
                        )),
                    );
                    return false;
                }
                Err(Refused::OverBudget { .. }) => {
                    let largest = match self.index.largest_owner() {
                        Some((owner, bytes)) if bytes > 0 => owner,
                        // Nothing to make room with: the file alone is
                        // over the budget.
                        _ => conn,
                    };
                    let held = self.index.owner_bytes(largest);
                    self.stats.publishers_refused += 1;
                    self.close(
                        largest,
                        Some((
                            ByeReason::LimitExceeded,
                            format!(
                                "this supernode's index is at its budget of {budget} bytes; \
                                 the largest publishers are refused first, and you hold \
                                 {held} bytes of it"
                            ),
                        )),
                    );
                    // Closing a leaf drops its files; the owner is
                    // dropped here too so no stale owner is chosen twice.
                    self.unindex_owner(largest);
                    if largest == conn {
                        return false;
                    }
                }
            }
        }
    }

    /// Takes a token from supernode peer `conn`'s bucket for `limit`.
    fn peer_may(&mut self, conn: ConnId, limit: Limit, now: Time) -> bool {
        let config = &self.config;
        let limits = self.peer_limits.entry(conn).or_insert_with(|| PeerLimits {
            queries: TokenBucket::new(config.peer_queries_per_second, config.peer_query_burst, now),
            hits: TokenBucket::new(config.peer_hits_per_second, config.peer_hit_burst, now),
        });
        match limit {
            Limit::Query => limits.queries.allow(now),
            Limit::Hit => limits.hits.allow(now),
        }
    }

    /// The query id widening step `step` of the leaf's query `id` is sent
    /// with: a keyed hash of both, so a peer that saw one step's id cannot
    /// know the next one's and send it ahead to make other supernodes drop
    /// our copy as a duplicate. Hits for it are sent to the leaf under its
    /// own id.
    pub fn step_id(&self, id: MessageId, step: u32) -> MessageId {
        let mut input = [0; 20];
        input[..16].copy_from_slice(&id.0);
        input[16..].copy_from_slice(&step.to_le_bytes());
        let hash = blake3::keyed_hash(&self.config.step_id_key, &input);
        let mut out = [0; 16];
        out.copy_from_slice(&hash.as_bytes()[..16]);
        MessageId(out)
    }

    fn handle_query(&mut self, from: ConnId, query: Query, now: Time) {
        self.stats.queries_received += 1;
        if !self.seen.first_sighting(query.message_id) {
            self.stats.queries_duplicate += 1;
            return;
        }
        let from_leaf = matches!(
            self.peers.get(&from).map(|p| &p.state),
            Some(PeerState::Leaf { .. })
        );
        let share = if from_leaf {
            Share::Leaves
        } else {
            Share::Peer(from)
        };
        let filter = query_filter(&query);
        let check = self.hit_key.check_for(&filter);
        self.routes
            .insert(share, query.message_id, from, check, now);
        let ttl = effective_ttl(&query, self.config.ttl_cap);
        let local = self.answer_from_index(from, from_leaf, query.message_id, &filter, now);
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
            let mut targets: Vec<ConnId> = self
                .supernodes
                .iter()
                .copied()
                .filter(|conn| *conn != from)
                .collect();
            if forwarded.ttl == 1 {
                if let Some(entries) = self.filter_entries(&forwarded) {
                    targets = self.filters.last_hop(targets, &entries);
                }
            }
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
        let (Some(config), Some((origin, dq))) =
            (self.config.dynamic.clone(), self.dynamic.get_mut(&id))
        else {
            return;
        };
        let mut peers: Vec<ConnId> = self.supernodes.iter().copied().collect();
        // Peers whose filter may match first: a probe at TTL 1 asks those.
        let entries = (self.config.routing_filters && self.filters.any_received())
            .then(|| query_entries(&dq.query.keywords, dq.query.content_id.as_ref()));
        if let Some(entries) = &entries {
            peers.sort_by_key(|conn| !self.filters.may_match(*conn, entries));
        }
        let cap = effective_ttl(&dq.query, self.config.ttl_cap);
        match dq.step(&peers, cap, &config, now) {
            Step::Wait => {}
            Step::Done => {
                self.dynamic.remove(&id);
            }
            Step::Send(mut targets, ttl) => {
                if let (1, Some(entries)) = (ttl, &entries) {
                    targets = self.filters.last_hop(targets, entries);
                }
                let forwarded = Query {
                    ttl,
                    hops: dq.query.hops.saturating_add(1),
                    ..dq.query.clone()
                };
                let (origin, step) = (*origin, dq.steps_taken());
                let message_id = self.step_id(id, step);
                let check = self.hit_key.check_for(&query_filter(&forwarded));
                self.seen.first_sighting(message_id);
                self.routes
                    .insert(Share::Leaves, message_id, origin, check, now);
                self.step_ids.insert_with(message_id, origin, id, now);
                self.forward(
                    targets,
                    Message::Query(Query {
                        message_id,
                        ..forwarded
                    }),
                );
            }
        }
    }

    /// Returns how many files it answered with. The scan is held to the
    /// per-query budget and to what is left of the connection's scan
    /// allowance: its query rate times `scan_per_query` candidates a
    /// second, in bursts of two full budgets. So however its queries are
    /// built, a connection costs the index a bounded share of the node's
    /// time.
    fn answer_from_index(
        &mut self,
        from: ConnId,
        from_leaf: bool,
        message_id: MessageId,
        filter: &Filter,
        now: Time,
    ) -> usize {
        if filter.is_empty() {
            return 0; // keywords of nothing but punctuation
        }
        let config = &self.config;
        let allowance = self.scan_allowances.entry(from).or_insert_with(|| {
            let queries = if from_leaf {
                config.leaf_queries_per_second
            } else {
                config.peer_queries_per_second
            };
            TokenBucket::new(
                queries.saturating_mul(config.scan_per_query),
                u32::try_from(config.scan_budget.saturating_mul(2)).unwrap_or(u32::MAX),
                now,
            )
        });
        let budget = usize::try_from(allowance.available(now))
            .unwrap_or(usize::MAX)
            .min(config.scan_budget);
        let mut by_owner: BTreeMap<ConnId, Vec<SharedFile>> = BTreeMap::new();
        let found = self
            .index
            .search_within(filter, config.max_results_per_query, budget);
        allowance.spend(found.examined as u64);
        self.stats.scan_candidates += found.examined as u64;
        if found.exhausted {
            self.stats.queries_scan_exhausted += 1;
        }
        for found in found.matches {
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
                    message_id,
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

    fn route_hit(&mut self, from: ConnId, mut hit: QueryHit, now: Time) {
        if !self.peer_may(from, Limit::Hit, now) {
            self.stats.hits_rate_limited += 1;
            return;
        }
        if !self.valid_source(&hit) {
            self.stats.hits_invalid += 1;
            return;
        }
        let (back, check) = match self.routes.get(&hit.message_id, now) {
            Some((back, check)) if back != from && self.peers.contains_key(&back) => (back, *check),
            _ => {
                self.stats.hits_unroutable += 1;
                return;
            }
        };
        // Only files that answer the query go on (a peer cannot pass off
        // any file, or any number of them, as an answer).
        let before = hit.files.len();
        let key = &self.hit_key;
        hit.files.retain(|file| key.matches(&check, file));
        self.stats.hit_files_mismatched += (before - hit.files.len()) as u64;
        if hit.files.is_empty() {
            self.stats.hits_mismatched += 1;
            return;
        }
        self.stats.hits_routed += 1;
        // A widening step's hit goes to the leaf under the leaf's own id.
        if let Some((_, original)) = self.step_ids.get(&hit.message_id, now) {
            hit.message_id = *original;
        }
        if let Some((_, dq)) = self.dynamic.get_mut(&hit.message_id) {
            let per_peer = self
                .config
                .dynamic
                .as_ref()
                .map_or(usize::MAX, |config| dq.peer_cap(config));
            if !dq.count_hit(from, hit.source_node_id, hit.files.len(), per_peer) {
                self.stats.dynamic_hits_uncounted += 1;
            }
        }
        // A push for this source will come back this way.
        self.record_push_route(hit.source_node_id, from, now);
        self.send(back, Message::QueryHit(hit));
    }

    /// True if a hit's source could be a real leaf: an address one could
    /// connect or push to, and a node id not zero and not ours.
    fn valid_source(&self, hit: &QueryHit) -> bool {
        let ip = hit.source_addr.ip();
        let bad_ip = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        !bad_ip
            && hit.source_addr.port() != 0
            && hit.source_node_id != NodeId([0; 16])
            && hit.source_node_id != self.config.identity.node_id
    }

    /// Remembers that pushes for `source` go to `from`, unless they go to
    /// another live connection already: push routes are set once, so a
    /// peer can't steal the pushes for any node id by sending a hit naming
    /// it. The same connection refreshes its route; a dead one is replaced.
    fn record_push_route(&mut self, source: NodeId, from: ConnId, now: Time) {
        match self.push_routes.lookup(&source, now) {
            Some(held) if held != from && self.peers.contains_key(&held) => {}
            _ => self.push_routes.insert(source, from, now),
        }
    }

    /// Removes `conn`'s file `id` from the index and from our routing
    /// filter.
    fn unindex(&mut self, conn: ConnId, id: &ContentId) {
        if self.config.routing_filters {
            if let Some(name) = self.index.owned_name(conn, id) {
                let words = self.index.max_words();
                self.filters.file_removed(name, id, words);
            }
        }
        self.index.remove(conn, id);
    }

    /// Removes every file of `conn` from the index and from our routing
    /// filter.
    fn unindex_owner(&mut self, conn: ConnId) {
        if self.config.routing_filters {
            let words = self.index.max_words();
            for (name, id) in self.index.owned_files(conn) {
                self.filters.file_removed(name, &id, words);
            }
        }
        self.index.remove_owner(conn);
    }

    /// A supernode peer finished its handshake: if it speaks routing
    /// filters (and we do), it gets ours and may send its own.
    fn filters_joined(&mut self, conn: ConnId, hello: &Hello, now: Time) {
        if !self.config.routing_filters || !hello.capabilities.contains(&Capability::RoutingFilter)
        {
            return;
        }
        for part in self.filters.peer_joined(conn, now) {
            self.send(conn, Message::FilterPatch(part));
        }
    }

    /// Sends our routing filter's patches that are due (see
    /// [`LastHopFilters::publish`]): additions at once, so a file is in
    /// the peers' copies by the time anyone could search for it; one
    /// encoding for every peer, like a query's fan-out (but not counted
    /// as one).
    fn publish_filter(&mut self, now: Time) {
        if !self.config.routing_filters {
            return;
        }
        for (conns, part) in self.filters.publish(now) {
            self.actions.push_back(Action::Forward {
                conns,
                message: Message::FilterPatch(part),
            });
        }
    }

    /// What a last-hop filter judges `query` by; `None` if no peer sent a
    /// filter (nothing to judge by, so nothing to hash).
    fn filter_entries(&self, query: &Query) -> Option<Vec<EntryHash>> {
        if !self.config.routing_filters || !self.filters.any_received() {
            return None;
        }
        Some(query_entries(&query.keywords, query.content_id.as_ref()))
    }

    /// Delivers a push to the target leaf if it is ours, else passes it on
    /// towards the connection its hits came from. A leaf's push gets the
    /// leaf's own IP as its callback IP (the port is kept): nobody can make
    /// a leaf connect to a third address. A leaf's push asking for a relay
    /// gets our address as the leaf reached it, if we relay (the relay
    /// service is told of its token), else loses the relay part. Pushes
    /// from supernode peers were
    /// rewritten at their first hop and pass as they are. Pushes are
    /// limited per source connection and per callback IP.
    fn route_push(&mut self, from: ConnId, mut push: Push, now: Time) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if !peer.pushes.as_mut().is_some_and(|bucket| bucket.allow(now)) {
            self.stats.pushes_rate_limited += 1;
            return;
        }
        let mut grant = None;
        if matches!(peer.state, PeerState::Leaf { .. }) {
            let own = SocketAddr::new(peer.remote.ip(), push.callback_addr.port());
            if own != push.callback_addr {
                self.stats.push_callbacks_rewritten += 1;
                push.callback_addr = own;
            }
            // Only we say where our relay is, and only if we relay.
            if let Some(relay) = push.relay.as_mut() {
                match peer.local.filter(|_| self.config.relay.enabled()) {
                    Some(local) => {
                        relay.addr = local;
                        grant = Some(relay.token);
                    }
                    None => {
                        self.stats.push_relays_dropped += 1;
                        push.relay = None;
                    }
                }
            }
        } else if push.relay.is_some() {
            self.stats.push_relays_passed += 1;
        }
        if !self.seen.first_sighting(push.message_id) {
            return;
        }
        if !self.callback_pushes.allow(push.callback_addr.ip(), now) {
            self.stats.pushes_callback_limited += 1;
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
            self.grant_relay(grant);
            self.send(leaf, Message::Push(push));
            return;
        }
        match self.push_routes.lookup(&push.target_node_id, now) {
            Some(next)
                if next != from && self.peers.contains_key(&next) && push.hops < HARD_MAX_TTL =>
            {
                self.stats.pushes_routed += 1;
                self.grant_relay(grant);
                let hops = push.hops + 1;
                self.send(next, Message::Push(Push { hops, ..push }));
            }
            _ => self.stats.pushes_unroutable += 1,
        }
    }

    /// Tells the relay service of a circuit our leaf asked for, as its
    /// push goes on.
    fn grant_relay(&mut self, token: Option<CircuitToken>) {
        if let Some(token) = token {
            self.stats.push_relays_granted += 1;
            self.actions.push_back(Action::RelayCircuit { token });
        }
    }
}

/// A supernode peer's buckets.
#[derive(Debug)]
struct PeerLimits {
    queries: TokenBucket,
    hits: TokenBucket,
}

/// Which of a peer's buckets.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Query,
    Hit,
}

/// What `query` asks for, tokenized as the index is.
fn query_filter(query: &Query) -> Filter {
    let mut filter = Filter::new(&query.keywords, query.content_id);
    filter.min_size = query.min_size;
    filter.max_size = query.max_size;
    filter
}

/// The TTL a query is handled with: its own, clamped to our cap and to what
/// its hop count leaves of the hard maximum, and at least 1 (it did arrive).
pub fn effective_ttl(query: &Query, cap: u8) -> u8 {
    let room = HARD_MAX_TTL.saturating_sub(query.hops);
    query.ttl.min(cap).min(room).max(1)
}

// A leaf's reachability: its Announces, and the verdicts it is told.
impl Supernode {
    /// Leaf `conn` listens at `listen_addr` now. As for a Hello, only the
    /// port counts, on the IP we see the leaf connect from (probes and
    /// downloads never go where a leaf points); its hits carry the new
    /// address from now on, and it is probed there (firewalled until the
    /// probe reaches it, as after a Hello). One Announce per
    /// `announce_interval`: the rest are ignored and counted, not a
    /// violation (a leaf's policy spaces them; a clock or a trip may
    /// bring two a little closer).
    fn handle_announce(&mut self, conn: ConnId, listen_addr: SocketAddr, now: Time) {
        if self.announce_too_soon(conn, now) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let remote = peer.remote;
        let PeerState::Leaf {
            addr, firewalled, ..
        } = &mut peer.state
        else {
            return;
        };
        *addr = SocketAddr::new(remote.ip(), listen_addr.port());
        // Firewalled until the new address is probed, as after a Hello.
        *firewalled = true;
        self.announced_at.insert(conn, now);
        self.stats.announces += 1;
        if self.probing.contains_key(&conn) {
            // The running probe is of the old address.
            self.stale_probes.insert(conn);
        } else if !self.probe_waiting.contains(&conn) {
            self.request_probe(conn);
        }
    }

    /// If `conn`'s finished probe was of an address it announced away
    /// from, probes it again; true if so.
    fn reprobe_if_stale(&mut self, conn: ConnId) -> bool {
        if !self.stale_probes.remove(&conn) {
            return false;
        }
        self.request_probe(conn);
        true
    }

    /// Tells leaf `conn` what connecting back to it found.
    fn tell_verdict(&mut self, conn: ConnId, reachable: bool, probed_addr: SocketAddr) {
        self.send(
            conn,
            Message::Reachability {
                reachable,
                probed_addr,
            },
        );
    }

    /// We accept connections at `addr` now (the router mapped a new port,
    /// or lost the mapping): new handshakes say so, and every supernode
    /// peer is told with an `Announce`, so the address they hand out in
    /// Pongs and try-lists is the one that reaches us. Leaves need not
    /// know: they reach us on the connection they have.
    pub fn announce_listen_addr(&mut self, addr: SocketAddr) {
        if self.config.identity.listen_addr == Some(addr) {
            return;
        }
        self.config.identity.listen_addr = Some(addr);
        self.stats.own_announces += 1;
        let peers: Vec<ConnId> = self.supernodes.iter().copied().collect();
        if !peers.is_empty() {
            self.forward(peers, Message::Announce { listen_addr: addr });
        }
    }

    /// Supernode peer `conn` accepts connections at `listen_addr` now.
    /// As in its Hello, the port is taken on the IP it connects from (we
    /// pass the address on and must not send others where a stranger
    /// points), at most once per `announce_interval`; the rest are
    /// ignored and counted.
    fn handle_peer_announce(&mut self, conn: ConnId, listen_addr: SocketAddr, now: Time) {
        if self.announce_too_soon(conn, now) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let remote = peer.remote;
        let PeerState::Supernode {
            listen_addr: known, ..
        } = &mut peer.state
        else {
            return;
        };
        *known = Some(SocketAddr::new(remote.ip(), listen_addr.port()));
        self.announced_at.insert(conn, now);
        self.stats.peer_announces += 1;
    }

    /// True (and counted) if `conn`'s last Announce taken was less than
    /// `announce_interval` ago: this one is ignored.
    fn announce_too_soon(&mut self, conn: ConnId, now: Time) -> bool {
        let too_soon = self
            .announced_at
            .get(&conn)
            .is_some_and(|at| now.since(*at) < self.config.announce_interval);
        if too_soon {
            self.stats.announces_ignored += 1;
        }
        too_soon
    }

    /// Forgets `conn`'s Announce bookkeeping.
    fn forget_announces(&mut self, conn: ConnId) {
        self.announced_at.remove(&conn);
        self.stale_probes.remove(&conn);
    }
}
