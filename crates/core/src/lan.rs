//! LAN discovery: nodes on one LAN find each other by UDP multicast, so two
//! PCs at home need no configuration (after BitTorrent's Local Service
//! Discovery, BEP 14). This is the policy and the wire format; the driver
//! (`canopy_node::lan`) owns the socket and carries out the actions.
//!
//! - **Format**: one fixed 35-byte datagram ([`Announce`]): magic
//!   `CNPY`, version, kind (hello, alive, bye), role, the overlay port (a
//!   supernode's; zero for a leaf), the HTTP port (zero: not serving), a
//!   random per-process nonce and the node id. Anything else is refused
//!   with a reason ([`Malformed`]): the datagram is hostile input.
//! - **Addresses**: only a datagram whose source IP is loopback, private
//!   or link-local is taken, and the ports it announces go with that source
//!   IP, never an address from the payload, so nobody can make us dial a
//!   third party or the internet.
//! - **Policy**: a *hello* at start and again shortly after (a datagram
//!   can be lost), then an *alive* every [`LanConfig::announce_interval`]
//!   with ±20% jitter, and a *bye* at shutdown. A hello is answered with
//!   an alive after a short jitter, at most once per
//!   [`LanConfig::reply_interval`] whatever arrives, so newcomers learn
//!   everyone at once and a flood of hellos can't make us flood. Incoming
//!   datagrams are held to a token bucket. Our own datagrams (our nonce or
//!   node id) are ignored.
//! - **Table**: at most [`LanConfig::max_peers`] peers, and
//!   [`LanConfig::max_per_ip`] per source IP, the least recently heard
//!   evicted first; a peer not heard for [`LanConfig::peer_ttl`] expires.
//!
//! No I/O, no clock: time comes in as `now`, jitter from a seed the driver
//! draws; [`LanDiscovery::poll_timeout`] says when to call
//! [`LanDiscovery::handle_timeout`] next.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use canopy_proto::{NodeId, Role};

use crate::Time;
use crate::addrman::group::Scope;
use crate::rate::TokenBucket;
use crate::rng::SplitMix64;

/// The IPv4 multicast group (organization-local scope, RFC 2365).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 192, 63, 46);
/// The UDP port of the group.
pub const PORT: u16 = 6346;
/// The datagram's magic.
pub const MAGIC: [u8; 4] = *b"CNPY";
/// The format's version.
pub const VERSION: u8 = 1;
/// A datagram's exact length.
pub const LEN: usize = 35;
/// Supernodes offered as dial candidates at most (the freshest).
pub const MAX_SUPERNODES_OFFERED: usize = 8;

/// What a datagram says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// "I'm here; answer me": a node that just started.
    Hello,
    /// "I'm here": the periodic announce, and the answer to a hello.
    Alive,
    /// "I'm leaving": forget me.
    Bye,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Hello => 0,
            Kind::Alive => 1,
            Kind::Bye => 2,
        }
    }
}

/// One LAN discovery datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Hello, alive or bye.
    pub kind: Kind,
    /// The sender's role.
    pub role: Role,
    /// Where a supernode takes overlay connections (zero for a leaf).
    pub overlay_port: u16,
    /// Where the node serves files over HTTP (zero: it doesn't).
    pub http_port: u16,
    /// Drawn at random once per process.
    pub nonce: u64,
    /// The sender's node id (never all zero).
    pub node_id: NodeId,
}

/// Why a datagram is not an [`Announce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not exactly [`LEN`] bytes.
    #[error("length {0}, expected {LEN}")]
    Length(usize),
    /// Not our magic: some other protocol on the group.
    #[error("bad magic")]
    Magic,
    /// A version we don't speak.
    #[error("unsupported version {0}")]
    Version(u8),
    /// An unknown kind.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// An unknown role.
    #[error("unknown role {0}")]
    Role(u8),
    /// A supernode with no overlay port, or a leaf with one.
    #[error("overlay port {port} does not fit the role")]
    OverlayPort {
        /// The port given.
        port: u16,
    },
    /// An all-zero node id.
    #[error("zero node id")]
    NodeId,
}

impl Announce {
    /// The datagram.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.kind.code();
        out[6] = match self.role {
            Role::Leaf => 0,
            Role::Supernode => 1,
        };
        out[7..9].copy_from_slice(&self.overlay_port.to_be_bytes());
        out[9..11].copy_from_slice(&self.http_port.to_be_bytes());
        out[11..19].copy_from_slice(&self.nonce.to_be_bytes());
        out[19..35].copy_from_slice(self.node_id.as_bytes());
        out
    }

    /// Parses and checks a datagram; every field is checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let bytes: &[u8; LEN] = bytes
            .try_into()
            .map_err(|_| Malformed::Length(bytes.len()))?;
        if bytes[0..4] != MAGIC {
            return Err(Malformed::Magic);
        }
        if bytes[4] != VERSION {
            return Err(Malformed::Version(bytes[4]));
        }
        let kind = match bytes[5] {
            0 => Kind::Hello,
            1 => Kind::Alive,
            2 => Kind::Bye,
            other => return Err(Malformed::Kind(other)),
        };
        let role = match bytes[6] {
            0 => Role::Leaf,
            1 => Role::Supernode,
            other => return Err(Malformed::Role(other)),
        };
        let overlay_port = u16::from_be_bytes([bytes[7], bytes[8]]);
        if (role == Role::Supernode) == (overlay_port == 0) {
            return Err(Malformed::OverlayPort { port: overlay_port });
        }
        let http_port = u16::from_be_bytes([bytes[9], bytes[10]]);
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&bytes[11..19]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[19..35]);
        if id == [0; 16] {
            return Err(Malformed::NodeId);
        }
        Ok(Self {
            kind,
            role,
            overlay_port,
            http_port,
            nonce: u64::from_be_bytes(nonce),
            node_id: NodeId(id),
        })
    }
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// More datagrams than the inbound budget allows.
    #[error("over the inbound budget")]
    OverBudget,
    /// Its source is not on a LAN (nor this machine).
    #[error("source {0} is not a LAN address")]
    NotLan(IpAddr),
    /// Not a valid announce.
    #[error("malformed: {0}")]
    Malformed(#[from] Malformed),
    /// Our own datagram, looped back (or someone claiming our node id).
    #[error("our own")]
    Own,
}

/// What a taken datagram did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A peer we did not know.
    New,
    /// A known peer, heard again.
    Refreshed,
    /// A peer said bye (or was not known: nothing to forget).
    Gone,
}

/// A node heard on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanPeer {
    /// The datagram's source IP: the only address taken.
    pub ip: IpAddr,
    /// Its node id.
    pub node_id: NodeId,
    /// Leaf or supernode.
    pub role: Role,
    /// A supernode's overlay port.
    pub overlay_port: Option<u16>,
    /// Where it serves files over HTTP, if it does.
    pub http_port: Option<u16>,
    /// When it was first heard.
    pub first_heard: Time,
    /// When it was last heard.
    pub last_heard: Time,
    nonce: u64,
}

impl LanPeer {
    /// Where to dial a supernode on the overlay.
    pub fn overlay_addr(&self) -> Option<SocketAddr> {
        self.overlay_port.map(|port| SocketAddr::new(self.ip, port))
    }

    /// Where it serves files over HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_port.map(|port| SocketAddr::new(self.ip, port))
    }
}

/// What the driver does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram to the group.
    Send([u8; LEN]),
    /// The table changed: read [`LanDiscovery::peers`] again.
    PeersChanged,
}

/// Who we are and the policy's numbers.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// Our node id.
    pub node_id: NodeId,
    /// Our role.
    pub role: Role,
    /// Our overlay port (a supernode's; ignored for a leaf).
    pub overlay_port: u16,
    /// Our HTTP port (zero: we don't serve).
    pub http_port: u16,
    /// Drawn at random once per process, so we know our own datagrams.
    pub nonce: u64,
    /// Seeds the jitter.
    pub seed: u64,
    /// Hellos sent at start (the first at once).
    pub hellos: u32,
    /// Between the start's hellos.
    pub hello_gap: Duration,
    /// Between alives, ±20%.
    pub announce_interval: Duration,
    /// Answers to hellos at most this often.
    pub reply_interval: Duration,
    /// An answer waits up to this long (jitter), so a crowd's answers
    /// spread out.
    pub reply_jitter: Duration,
    /// A peer not heard for this long is forgotten.
    pub peer_ttl: Duration,
    /// Peers kept at most.
    pub max_peers: usize,
    /// Peers kept per source IP at most.
    pub max_per_ip: usize,
    /// Datagrams taken a second, on average...
    pub inbound_per_second: u32,
    /// ...and at once.
    pub inbound_burst: u32,
}

impl LanConfig {
    /// The defaults for a node `node_id` of `role`.
    pub fn new(
        node_id: NodeId,
        role: Role,
        overlay_port: u16,
        http_port: u16,
        nonce: u64,
        seed: u64,
    ) -> Self {
        Self {
            node_id,
            role,
            overlay_port,
            http_port,
            nonce,
            seed,
            hellos: 2,
            hello_gap: Duration::from_secs(3),
            announce_interval: Duration::from_secs(5 * 60),
            reply_interval: Duration::from_secs(10),
            reply_jitter: Duration::from_millis(500),
            peer_ttl: Duration::from_secs(16 * 60),
            max_peers: 64,
            max_per_ip: 4,
            inbound_per_second: 20,
            inbound_burst: 64,
        }
    }
}

/// Counters, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanStats {
    /// Datagrams handed to the driver to send.
    pub sent: u64,
    /// Answers to hellos among them.
    pub replies: u64,
    /// Datagrams taken.
    pub accepted: u64,
    /// Our own, ignored.
    pub own: u64,
    /// Refused for the inbound budget.
    pub over_budget: u64,
    /// Refused for a source not on a LAN.
    pub not_lan: u64,
    /// Refused as malformed.
    pub malformed: u64,
    /// Peers evicted to make room.
    pub evicted: u64,
    /// Peers forgotten for silence.
    pub expired: u64,
}

/// The LAN discovery state machine. See the module documentation.
#[derive(Debug)]
pub struct LanDiscovery {
    config: LanConfig,
    rng: SplitMix64,
    /// The next announce; `None` once stopped.
    next_announce: Option<Time>,
    hellos_left: u32,
    /// An answer to a hello, due then.
    reply_at: Option<Time>,
    last_reply: Option<Time>,
    peers: BTreeMap<(IpAddr, NodeId), LanPeer>,
    inbound: TokenBucket,
    actions: VecDeque<Action>,
    stats: LanStats,
}

impl LanDiscovery {
    /// Starts at `now`: the first hello is due at once.
    pub fn new(config: LanConfig, now: Time) -> Self {
        let inbound = TokenBucket::new(config.inbound_per_second, config.inbound_burst, now);
        Self {
            rng: SplitMix64::new(config.seed),
            next_announce: Some(now),
            hellos_left: config.hellos.max(1),
            reply_at: None,
            last_reply: None,
            peers: BTreeMap::new(),
            inbound,
            actions: VecDeque::new(),
            stats: LanStats::default(),
            config,
        }
    }

    /// Our datagram of `kind`.
    fn announce(&self, kind: Kind) -> [u8; LEN] {
        let overlay_port = match self.config.role {
            Role::Supernode => self.config.overlay_port,
            Role::Leaf => 0,
        };
        Announce {
            kind,
            role: self.config.role,
            overlay_port,
            http_port: self.config.http_port,
            nonce: self.config.nonce,
            node_id: self.config.node_id,
        }
        .encode()
    }

    fn send(&mut self, kind: Kind) {
        let datagram = self.announce(kind);
        self.actions.push_back(Action::Send(datagram));
        self.stats.sent += 1;
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Time,
    ) -> Result<Heard, Rejected> {
        let result = self.take(from, bytes, now);
        match result {
            Ok(_) => self.stats.accepted += 1,
            Err(Rejected::OverBudget) => self.stats.over_budget += 1,
            Err(Rejected::NotLan(_)) => self.stats.not_lan += 1,
            Err(Rejected::Malformed(_)) => self.stats.malformed += 1,
            Err(Rejected::Own) => self.stats.own += 1,
        }
        result
    }

    fn take(&mut self, from: SocketAddr, bytes: &[u8], now: Time) -> Result<Heard, Rejected> {
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        // Strangers off the LAN are turned away before they can spend the
        // budget the LAN's own announcements share.
        if Scope::of(ip) == Scope::Global || ip.is_unspecified() || ip.is_multicast() {
            return Err(Rejected::NotLan(ip));
        }
        if !self.inbound.allow(now) {
            return Err(Rejected::OverBudget);
        }
        let announce = Announce::decode(bytes)?;
        if announce.nonce == self.config.nonce || announce.node_id == self.config.node_id {
            return Err(Rejected::Own);
        }
        let key = (ip, announce.node_id);
        if announce.kind == Kind::Bye {
            if self
                .peers
                .get(&key)
                .is_some_and(|peer| peer.nonce == announce.nonce)
            {
                self.peers.remove(&key);
                self.actions.push_back(Action::PeersChanged);
            }
            return Ok(Heard::Gone);
        }
        if announce.kind == Kind::Hello {
            self.schedule_reply(now);
        }
        let nonzero = |port: u16| (port != 0).then_some(port);
        let fresh = LanPeer {
            ip,
            node_id: announce.node_id,
            role: announce.role,
            overlay_port: nonzero(announce.overlay_port),
            http_port: nonzero(announce.http_port),
            first_heard: now,
            last_heard: now,
            nonce: announce.nonce,
        };
        if let Some(known) = self.peers.get_mut(&key) {
            let changed = known.role != fresh.role
                || known.overlay_port != fresh.overlay_port
                || known.http_port != fresh.http_port;
            *known = LanPeer {
                first_heard: known.first_heard,
                ..fresh
            };
            if changed {
                self.actions.push_back(Action::PeersChanged);
            }
            return Ok(Heard::Refreshed);
        }
        self.make_room(ip);
        self.peers.insert(key, fresh);
        self.actions.push_back(Action::PeersChanged);
        Ok(Heard::New)
    }

    /// Evicts the least recently heard peer of `ip` if it has its share,
    /// then the least recently heard of all if the table is full.
    fn make_room(&mut self, ip: IpAddr) {
        let oldest = |peers: &BTreeMap<(IpAddr, NodeId), LanPeer>, same_ip: bool| {
            peers
                .values()
                .filter(|p| !same_ip || p.ip == ip)
                .min_by_key(|p| (p.last_heard, p.node_id))
                .map(|p| (p.ip, p.node_id))
        };
        let of_ip = self.peers.keys().filter(|(i, _)| *i == ip).count();
        if of_ip >= self.config.max_per_ip.max(1) {
            if let Some(key) = oldest(&self.peers, true) {
                self.peers.remove(&key);
                self.stats.evicted += 1;
            }
        }
        while self.peers.len() >= self.config.max_peers.max(1) {
            let Some(key) = oldest(&self.peers, false) else {
                break;
            };
            self.peers.remove(&key);
            self.stats.evicted += 1;
        }
    }

    /// A hello arrived: answer it after a jitter, but no sooner than
    /// `reply_interval` after the last answer; hellos meanwhile share it.
    fn schedule_reply(&mut self, now: Time) {
        if self.reply_at.is_some() || self.next_announce.is_none() {
            return;
        }
        let jitter = self.config.reply_jitter.mul_f64(self.rng.unit());
        let earliest = self
            .last_reply
            .map_or(now, |at| at + self.config.reply_interval);
        self.reply_at = Some((now + jitter).max(earliest));
    }

    /// Carries out what is due at `now`: announces, answers, expiry.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.reply_at.is_some_and(|at| at <= now) {
            self.reply_at = None;
            self.last_reply = Some(now);
            self.stats.replies += 1;
            self.send(Kind::Alive);
        }
        if self.next_announce.is_some_and(|at| at <= now) {
            if self.hellos_left > 0 {
                self.hellos_left -= 1;
                self.send(Kind::Hello);
            } else {
                self.send(Kind::Alive);
            }
            let next = if self.hellos_left > 0 {
                self.config.hello_gap
            } else {
                // ±20%.
                self.config
                    .announce_interval
                    .mul_f64(0.8 + 0.4 * self.rng.unit())
            };
            self.next_announce = Some(now + next);
        }
        let ttl = self.config.peer_ttl;
        let before = self.peers.len();
        self.peers.retain(|_, peer| peer.last_heard + ttl > now);
        let expired = before - self.peers.len();
        if expired > 0 {
            self.stats.expired += expired as u64;
            self.actions.push_back(Action::PeersChanged);
        }
    }

    /// When [`LanDiscovery::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let expiry = self
            .peers
            .values()
            .map(|peer| peer.last_heard + self.config.peer_ttl)
            .min();
        [self.next_announce, self.reply_at, expiry]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Stops: a bye goes out, and nothing more is announced.
    pub fn shutdown(&mut self) {
        if self.next_announce.take().is_some() {
            self.reply_at = None;
            self.send(Kind::Bye);
        }
    }

    /// Every peer heard, by (IP, node id).
    pub fn peers(&self) -> impl Iterator<Item = &LanPeer> {
        self.peers.values()
    }

    /// The supernodes' overlay addresses, the most recently heard first, at
    /// most [`MAX_SUPERNODES_OFFERED`].
    pub fn supernodes(&self) -> Vec<SocketAddr> {
        let mut found: Vec<&LanPeer> = self
            .peers
            .values()
            .filter(|p| p.role == Role::Supernode)
            .collect();
        found.sort_by_key(|p| (std::cmp::Reverse(p.last_heard), p.ip, p.node_id));
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in found.into_iter().filter_map(LanPeer::overlay_addr) {
            if addrs.len() == MAX_SUPERNODES_OFFERED {
                break;
            }
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// Counters.
    pub fn stats(&self) -> &LanStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests;
