//! Builds an overlay of real core state machines and runs it in virtual
//! time, with churn. Messages and churn events travel through one event
//! queue ordered by time (then by the order they were scheduled, so ties
//! break the same way every run); each link has a latency drawn once when
//! it opens, and each direction a bandwidth and send queue
//! ([`crate::link`]). Every message sent is counted: with its query when
//! it carries one's id (a dynamic query's steps under their own ids
//! included), otherwise as the overlay's upkeep. Every
//! collection that is iterated is ordered (Vec, BTreeMap, BTreeSet); hash
//! maps are used for lookups only, so runs are deterministic for a seed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use canopy_core::addr_limits::IpNet;
use canopy_core::discovery::{Candidates, Discovery, DiscoveryAction, DiscoveryConfig};
use canopy_core::dynamic::DynamicConfig;
use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession, SearchRequest};
use canopy_core::leaf_set::{LeafSet, LeafSetAction, LeafSetConfig, SessionEnd};
use canopy_core::rng::SplitMix64;
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::{ContentId, Message, MessageId, NodeId, Role, SharedFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{SimConfig, Strategy};
use crate::link::{LinkSpeed, Offered, Pipe, droppable, wire_bytes};
use crate::report::{QueryKind, QueryOutcome, RunReport, Upkeep};
use crate::workload::{Workload, zipf_pick, zipf_table};

/// One end of a link: a supernode's connection, or a leaf's session
/// (leaf, parent slot, and the link's id, so a message in flight on a link
/// that has since closed is never delivered to a newer session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Super(usize, ConnId),
    Leaf(usize, usize, ConnId),
}

/// One end's view of a link: where it leads, and the direction from
/// this end (its speed and queue).
#[derive(Debug, Clone, Copy)]
struct Link {
    to: End,
    latency: u64,
    speed: LinkSpeed,
    pipe: Pipe,
}

#[derive(Debug)]
enum Event {
    /// Boxed: events move around the heap a lot, and messages are large.
    Deliver {
        to: End,
        message: Box<Message>,
    },
    LeafReturns(usize),
    SupernodeReturns(usize),
    /// Leaf, slot, and the supernode it lost: the leaf notices (at once
    /// for a link closed, after the reattach delay for a supernode gone).
    SlotLost(usize, usize, usize),
    /// A leaf's supernode set's deadline (`LeafSet::poll_timeout`).
    LeafWakes(usize),
    /// A supernode's discovery deadline (`Discovery::poll_timeout`).
    SupernodeWakes(usize),
    /// A supernode's protocol deadline (`Supernode::poll_timeout`).
    SupernodeDue(usize),
    /// A leaf session's deadline (`LeafSession::poll_timeout`): leaf,
    /// slot.
    SessionDue(usize, usize),
}

#[derive(Debug)]
struct Tracked {
    kind: QueryKind,
    messages: u64,
    statuses: u64,
    bytes: u64,
    dropped: u64,
    started: u64,
    first_hit: Option<u64>,
    /// Results (sources for a content id, contents for keywords), once
    /// the search was closed (its leaf lost the parent it asked through);
    /// `None` while it runs.
    sources: Option<usize>,
}

impl Tracked {
    fn new(kind: QueryKind, started: u64) -> Self {
        Self {
            kind,
            messages: 0,
            statuses: 0,
            bytes: 0,
            dropped: 0,
            started,
            first_hit: None,
            sources: None,
        }
    }
}

/// A leaf's connection to one parent.
#[derive(Debug)]
struct Slot {
    session: LeafSession,
    /// Our end's link id and the link to the supernode, while connected.
    link: Option<(ConnId, Link)>,
    /// When `session` is due next, as scheduled.
    due: Option<u64>,
}

#[derive(Debug)]
struct LeafNode {
    shares: Vec<SharedFile>,
    slots: Vec<Slot>,
    online: bool,
    /// Searching until then: a user waiting for results stays online.
    busy_until: u64,
    /// Its searches, to harvest when the session that runs them ends.
    searches: Vec<MessageId>,
    /// Which supernodes it keeps: the core's policy, as a real leaf runs it.
    set: LeafSet,
    /// When `set` is due next (a wake event at another time is stale).
    wake: Option<u64>,
}

/// A supernode's links, by connection id. Ids are handed out in
/// increasing order, so appending keeps the list sorted: lookups are a
/// binary search over a short, contiguous list (the hot path of a flood).
#[derive(Debug, Default)]
struct Links(Vec<(ConnId, Link)>);

impl Links {
    fn get(&self, conn: ConnId) -> Option<Link> {
        self.0
            .binary_search_by_key(&conn, |(c, _)| *c)
            .ok()
            .map(|i| self.0[i].1)
    }

    fn get_mut(&mut self, conn: ConnId) -> Option<&mut Link> {
        self.0
            .binary_search_by_key(&conn, |(c, _)| *c)
            .ok()
            .map(|i| &mut self.0[i].1)
    }

    fn insert(&mut self, conn: ConnId, link: Link) {
        match self.0.binary_search_by_key(&conn, |(c, _)| *c) {
            Ok(i) => self.0[i].1 = link,
            Err(i) => self.0.insert(i, (conn, link)),
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if let Ok(i) = self.0.binary_search_by_key(&conn, |(c, _)| *c) {
            self.0.remove(i);
        }
    }
}

#[derive(Debug)]
struct SuperNode {
    machine: Supernode,
    online: bool,
    links: Links,
    /// Whom it dials: the core's peer discovery, as a real supernode runs it.
    discovery: Discovery,
    /// When `discovery` is due next.
    wake: Option<u64>,
    /// When `machine` is due next, as scheduled.
    due: Option<u64>,
}

struct World {
    now: u64,
    supers: Vec<SuperNode>,
    leaves: Vec<LeafNode>,
    /// Events by the millisecond they are due, each millisecond's in the
    /// order they were scheduled (a calendar queue: no heap to sift).
    queue: BTreeMap<u64, Vec<Event>>,
    next_conn: u64,
    rng: StdRng,
    config: SimConfig,
    dynamic: Option<DynamicConfig>,
    tracked: HashMap<MessageId, Tracked>,
    /// The ids a dynamic query's widening steps travel under (a keyed
    /// hash of the leaf's id and the step), to the leaf's id: their
    /// queries and hits are the leaf's query's messages.
    aliases: HashMap<MessageId, MessageId>,
    departures: (u64, u64),
    /// Messages carrying no query id, counted while `counting`.
    upkeep: Upkeep,
    counting: bool,
    workload: Workload,
}

/// When a deadline at `at` is handled, at `now`: then, or the next
/// millisecond if it has passed (a machine due again at once would
/// otherwise loop within one millisecond).
fn due_at(at: Time, now: u64) -> u64 {
    let at = at.as_millis();
    if at > now { at } else { now + 1 }
}

fn supernode_addr(i: usize) -> SocketAddr {
    let b = (i as u32).to_be_bytes();
    SocketAddr::from(([10, b[1], b[2], b[3]], 6346))
}

/// The supernode `supernode_addr` names.
fn supernode_index(addr: SocketAddr) -> Option<usize> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.octets()[0] == 10 => {
            let [_, a, b, c] = ip.octets();
            Some(u32::from_be_bytes([0, a, b, c]) as usize)
        }
        _ => None,
    }
}

/// The simulator's host cache: every supernode online, drawn at random
/// (64 tries), `first` offered before any other while it may be (a
/// configured seed). What the real node's address manager does in its
/// place, without simulating Pongs.
struct Online {
    online: Vec<bool>,
    first: Option<usize>,
}

impl Online {
    fn of(supers: &[SuperNode], first: Option<usize>) -> Self {
        Self {
            online: supers.iter().map(|s| s.online).collect(),
            first,
        }
    }
}

impl Candidates for Online {
    fn select(&mut self, random: u64, skip: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        let ok = |s: usize| self.online[s] && !skip(supernode_addr(s));
        if let Some(first) = self.first.filter(|f| ok(*f)) {
            return Some(supernode_addr(first));
        }
        let mut rng = SplitMix64::new(random);
        let n = self.online.len() as u64;
        (0..64)
            .map(|_| rng.below(n) as usize)
            .find(|s| ok(*s))
            .map(supernode_addr)
    }
}

/// The leaf's policy with `parents` sessions (no bootstrap names: the
/// simulated host cache knows every supernode).
fn leaf_set(parents: usize, seed: u64) -> LeafSet {
    LeafSet::new(LeafSetConfig::new(parents), SplitMix64::new(seed))
}

/// A supernode's discovery: the graph's mean degree as its peers wanted.
fn discovery(i: usize, config: &SimConfig, seed: u64) -> Discovery {
    let config = DiscoveryConfig {
        excluded: vec![supernode_addr(i)],
        ..DiscoveryConfig::new(2 * config.dials_per_supernode + 2)
    };
    Discovery::new(config, SplitMix64::new(seed))
}

fn leaf_addr(i: usize) -> SocketAddr {
    let b = (i as u32).to_be_bytes();
    SocketAddr::from(([11, b[1], b[2], b[3]], 6347))
}

fn node_id(kind: u8, i: usize) -> NodeId {
    let mut id = [0xC0; 16];
    id[0] = kind;
    id[1..9].copy_from_slice(&(i as u64).to_be_bytes());
    NodeId(id)
}

fn query_id(q: usize) -> MessageId {
    let mut id = [0x51; 16];
    id[..8].copy_from_slice(&(q as u64).to_be_bytes());
    MessageId(id)
}

fn content_id(k: usize) -> ContentId {
    let mut id = [0xF1; 32];
    id[..8].copy_from_slice(&(k as u64).to_be_bytes());
    ContentId(id)
}

fn content_file(k: usize, workload: &Workload) -> SharedFile {
    SharedFile {
        content_id: content_id(k),
        name: workload.name(k),
        size: 1000 + k as u64,
        available: None,
    }
}

/// The query a message belongs to, if it carries one's id.
fn message_id(message: &Message) -> Option<MessageId> {
    match message {
        Message::Query(q) => Some(q.message_id),
        Message::QueryHit(h) => Some(h.message_id),
        Message::QueryStatus { message_id, .. } => Some(*message_id),
        _ => None,
    }
}

fn leaf_session(l: usize, shares: &[SharedFile]) -> LeafSession {
    let identity = Identity {
        node_id: node_id(2, l),
        role: Role::Leaf,
        listen_addr: Some(leaf_addr(l)),
        user_agent: "canopy-sim".into(),
    };
    LeafSession::new(identity, shares.to_vec())
}

/// The configuration every simulated supernode runs with: the core's
/// defaults (keepalive pings, idle timeouts and filter publishing
/// included: their messages are counted), except that leaves' queries are
/// not rate-limited (a simulated leaf sends one at a time), no address is
/// limited (the simulated addresses are made up, hundreds to a /24), the
/// TTL cap lets a flood use the TTL it is given, and routing filters are
/// on for dynamic querying only (when `config.routing_filters`).
fn supernode_config(
    i: usize,
    config: &SimConfig,
    dynamic: Option<&DynamicConfig>,
) -> SupernodeConfig {
    let mut c = SupernodeConfig::new(node_id(1, i), Some(supernode_addr(i)));
    c.ttl_cap = 7;
    c.max_leaves = config.leaves();
    c.max_supernode_peers = config.supernodes;
    c.leaf_queries_per_second = 1_000_000;
    c.leaf_query_burst = 1_000_000;
    c.dynamic = dynamic.cloned();
    c.limit_exempt = vec![IpNet::new_assert(IpAddr::from([0, 0, 0, 0]), 0)];
    c.routing_filters = config.routing_filters && dynamic.is_some();
    c
}

impl World {
    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn draw(&mut self, (low, high): (u64, u64)) -> u64 {
        if high > low {
            self.rng.random_range(low..=high)
        } else {
            low
        }
    }

    /// Log-uniform between the configured bounds.
    fn draw_latency(&mut self) -> u64 {
        let (low, high) = self.config.latency_ms;
        let low = low.max(1) as f64;
        let high = (high as f64).max(low);
        let u: f64 = self.rng.random();
        (low * (high / low).powf(u)).round() as u64
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.queue.entry(at).or_default().push(event);
    }

    fn link_mut(&mut self, end: End) -> Option<&mut Link> {
        match end {
            End::Super(s, conn) => self.supers[s].links.get_mut(conn),
            End::Leaf(l, k, conn) => self.leaves[l].slots[k]
                .link
                .as_mut()
                .filter(|(ours, _)| *ours == conn)
                .map(|(_, link)| link),
        }
    }

    fn link_of(&self, end: End) -> Option<Link> {
        match end {
            End::Super(s, conn) => self.supers[s].links.get(conn),
            End::Leaf(l, k, conn) => self.leaves[l].slots[k]
                .link
                .filter(|(ours, _)| *ours == conn)
                .map(|(_, link)| link),
        }
    }

    fn forget_end(&mut self, end: End) {
        match end {
            End::Super(s, conn) => {
                self.supers[s].links.remove(conn);
            }
            End::Leaf(l, k, conn) => {
                let slot = &mut self.leaves[l].slots[k];
                if slot.link.is_some_and(|(ours, _)| ours == conn) {
                    slot.link = None;
                }
            }
        }
    }

    fn send(&mut self, from: End, message: Message) {
        let bytes = wire_bytes(&message);
        self.send_sized(from, message, bytes);
    }

    /// Offers `message` (`bytes` on the wire) to the link at `from`; it is
    /// counted, queued behind what the link is sending, and delivered
    /// after the latency, or dropped if the queue is full.
    fn send_sized(&mut self, from: End, message: Message, bytes: u64) {
        let now = self.now;
        let may_drop = droppable(&message);
        let Some(link) = self.link_mut(from) else {
            return;
        };
        let offered = link.pipe.offer(now, bytes, may_drop, link.speed);
        let (to, latency) = (link.to, link.latency);
        let dropped = offered == Offered::Dropped;
        let id = message_id(&message).map(|id| self.aliases.get(&id).copied().unwrap_or(id));
        if let Some(tracked) = id.and_then(|id| self.tracked.get_mut(&id)) {
            if dropped {
                tracked.dropped += 1;
            } else {
                tracked.messages += 1;
                tracked.bytes += bytes;
                if matches!(message, Message::QueryStatus { .. }) {
                    tracked.statuses += 1;
                }
            }
        } else if self.counting && !dropped {
            let upkeep = &mut self.upkeep;
            match message {
                Message::FilterPatch(_) => {
                    upkeep.filter_messages += 1;
                    upkeep.filter_bytes += bytes;
                }
                Message::Ping { .. } | Message::Pong { .. } => upkeep.pings += 1,
                Message::FileList { .. } | Message::FileDelta { .. } => upkeep.publishes += 1,
                // Nothing but the tracked searches asks: counted apart
                // so that an id the simulator failed to attribute shows.
                Message::Query(_) | Message::QueryHit(_) | Message::QueryStatus { .. } => {
                    upkeep.untracked += 1;
                }
                _ => upkeep.other += 1,
            }
        }
        if dropped {
            if self.counting {
                self.upkeep.dropped += 1;
            }
            return;
        }
        let Offered::Sent(gone) = offered else {
            return;
        };
        let at = gone.max(now) + latency;
        self.schedule(
            at,
            Event::Deliver {
                to,
                message: Box::new(message),
            },
        );
    }

    /// Closes the link at `from`; a supernode at the other end is told.
    fn cut(&mut self, from: End) {
        let Some(link) = self.link_of(from) else {
            return;
        };
        self.forget_end(from);
        self.forget_end(link.to);
        match (from, link.to) {
            (End::Leaf(l, k, _), End::Super(s, _)) | (End::Super(s, _), End::Leaf(l, k, _)) => {
                // The leaf's set hears of it as the events now are done.
                self.schedule(self.now, Event::SlotLost(l, k, s));
            }
            (End::Super(a, _), End::Super(b, _)) => {
                self.supers[a].discovery.handle_left(supernode_addr(b));
                self.supers[b].discovery.handle_left(supernode_addr(a));
                self.schedule(self.now, Event::SupernodeWakes(a));
                self.schedule(self.now, Event::SupernodeWakes(b));
            }
            _ => {}
        }
        if let End::Super(s, conn) = link.to {
            self.supers[s].machine.handle_disconnected(conn);
            self.drain_super(s);
        }
    }

    fn drain_super(&mut self, s: usize) {
        let mut probes = Vec::new();
        while let Some(action) = self.supers[s].machine.poll_action() {
            match action {
                Action::Send { conn, message } => self.send(End::Super(s, conn), message),
                Action::Forward { conns, message } => {
                    let bytes = wire_bytes(&message);
                    for conn in conns {
                        self.send_sized(End::Super(s, conn), message.clone(), bytes);
                    }
                }
                Action::Close { conn, .. } => self.cut(End::Super(s, conn)),
                // Every simulated leaf can be reached.
                Action::Probe { conn, .. } => probes.push(conn),
                Action::Learned { .. }
                | Action::Joined { .. }
                | Action::Rejected { .. }
                | Action::RelayCircuit { .. } => {}
            }
        }
        for conn in probes {
            self.supers[s].machine.handle_probe_result(conn, true);
        }
        self.arm_super(s);
    }

    /// Schedules supernode `s`'s next deadline, unless one as early is
    /// scheduled: the clock advances exactly to it.
    fn arm_super(&mut self, s: usize) {
        if !self.supers[s].online {
            return;
        }
        let Some(at) = self.supers[s].machine.poll_timeout() else {
            return;
        };
        let at = due_at(at, self.now);
        if self.supers[s]
            .due
            .is_none_or(|due| due > at || due < self.now)
        {
            self.supers[s].due = Some(at);
            self.schedule(at, Event::SupernodeDue(s));
        }
    }

    /// Schedules slot `k` of leaf `l`'s session's next deadline, as
    /// [`Self::arm_super`].
    fn arm_session(&mut self, l: usize, k: usize) {
        let slot = &self.leaves[l].slots[k];
        if !self.leaves[l].online || slot.link.is_none() {
            return;
        }
        let Some(at) = slot.session.poll_timeout() else {
            return;
        };
        let at = due_at(at, self.now);
        if slot.due.is_none_or(|due| due > at || due < self.now) {
            self.leaves[l].slots[k].due = Some(at);
            self.schedule(at, Event::SessionDue(l, k));
        }
    }

    fn drain_leaf(&mut self, l: usize, k: usize) {
        while let Some(action) = self.leaves[l].slots[k].session.poll_action() {
            match action {
                LeafAction::Send(message) => {
                    if let Some((conn, _)) = self.leaves[l].slots[k].link {
                        self.send(End::Leaf(l, k, conn), message);
                    }
                }
                LeafAction::Close(_) => {
                    if let Some((conn, _)) = self.leaves[l].slots[k].link {
                        self.cut(End::Leaf(l, k, conn));
                    }
                }
                _ => {}
            }
        }
        self.arm_session(l, k);
    }

    fn handle(&mut self, at: u64, event: Event) {
        self.now = self.now.max(at);
        let now = Time(self.now);
        match event {
            Event::Deliver { to, message } => {
                if self.link_of(to).is_none() {
                    return; // the link closed while the message was in flight
                }
                match to {
                    End::Super(s, conn) => {
                        self.supers[s].machine.handle_message(conn, *message, now);
                        self.drain_super(s);
                    }
                    End::Leaf(l, k, _) => {
                        if let Message::QueryHit(hit) = message.as_ref() {
                            if let Some(tracked) = self.tracked.get_mut(&hit.message_id) {
                                tracked.first_hit.get_or_insert(self.now);
                            }
                        }
                        self.leaves[l].slots[k]
                            .session
                            .handle_message(*message, now);
                        self.drain_leaf(l, k);
                    }
                }
            }
            Event::LeafReturns(l) => self.leaf_returns(l),
            Event::SupernodeReturns(s) => self.supernode_returns(s),
            Event::SlotLost(l, k, s) => self.slot_lost(l, k, s),
            // A stale wake only looks early: the machines act when due.
            Event::LeafWakes(l) => {
                if self.leaves[l].wake == Some(at) {
                    self.leaves[l].wake = None;
                }
                self.drive_leaf_set(l, None);
            }
            Event::SupernodeWakes(s) => {
                if self.supers[s].wake == Some(at) {
                    self.supers[s].wake = None;
                }
                self.drive_discovery(s);
            }
            // A stale deadline (an earlier one replaced it, or the node
            // left) is dropped; the machines act only when due anyway.
            Event::SupernodeDue(s) => {
                if self.supers[s].due == Some(at) {
                    self.supers[s].due = None;
                    if self.supers[s].online {
                        self.supers[s].machine.handle_timeout(now);
                        self.drain_super(s);
                    }
                }
            }
            Event::SessionDue(l, k) => {
                if self.leaves[l].slots[k].due == Some(at) {
                    self.leaves[l].slots[k].due = None;
                    if self.leaves[l].online && self.leaves[l].slots[k].link.is_some() {
                        self.leaves[l].slots[k].session.handle_timeout(now);
                        self.drain_leaf(l, k);
                    }
                }
            }
        }
    }

    fn run_until(&mut self, until: u64) {
        // Events scheduled while a millisecond's are handled are due later
        // (every latency and delay is at least 1 ms), or, if due at the same
        // millisecond, land in a new list handled next: order is preserved.
        while self
            .queue
            .first_key_value()
            .is_some_and(|(at, _)| *at <= until)
        {
            if let Some((at, events)) = self.queue.pop_first() {
                for event in events {
                    self.handle(at, event);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Supernode `a` dials supernode `b`.
    fn join(&mut self, a: usize, b: usize) {
        let (ca, cb) = (self.conn(), self.conn());
        let latency = self.draw_latency();
        let speed = self.config.supernode_link;
        self.supers[a].links.insert(
            ca,
            Link {
                to: End::Super(b, cb),
                latency,
                speed,
                pipe: Pipe::default(),
            },
        );
        self.supers[b].links.insert(
            cb,
            Link {
                to: End::Super(a, ca),
                latency,
                speed,
                pipe: Pipe::default(),
            },
        );
        let now = Time(self.now);
        self.supers[b].machine.handle_connected(
            cb,
            Direction::Inbound,
            supernode_addr(a),
            node_id(1, a),
            now,
        );
        self.supers[a].machine.handle_connected(
            ca,
            Direction::Outbound,
            supernode_addr(b),
            node_id(1, b),
            now,
        );
        self.supers[a].discovery.handle_joined(supernode_addr(b));
        self.supers[b].discovery.handle_joined(supernode_addr(a));
        self.drain_super(b);
        self.drain_super(a);
    }

    /// Leaf `l` connects slot `k` to supernode `s`.
    fn attach(&mut self, l: usize, k: usize, s: usize) {
        let conn = self.conn();
        let latency = self.draw_latency();
        let speed = self.config.leaf_link;
        self.leaves[l].slots[k].link = Some((
            conn,
            Link {
                to: End::Super(s, conn),
                latency,
                speed,
                pipe: Pipe::default(),
            },
        ));
        self.supers[s].links.insert(
            conn,
            Link {
                to: End::Leaf(l, k, conn),
                latency,
                speed,
                pipe: Pipe::default(),
            },
        );
        self.supers[s].machine.handle_connected(
            conn,
            Direction::Inbound,
            leaf_addr(l),
            node_id(2, l),
            Time(self.now),
        );
        // The simulated transport authenticates each side as its own id.
        self.leaves[l].slots[k]
            .session
            .handle_connected(node_id(1, s));
        self.drain_leaf(l, k);
    }

    /// Ends the searches slot 0's session runs, keeping what they found.
    fn harvest(&mut self, l: usize) {
        let ids = std::mem::take(&mut self.leaves[l].searches);
        for id in ids {
            let search = self.leaves[l].slots[0].session.finish_search(&id);
            if let Some(tracked) = self.tracked.get_mut(&id) {
                let results = search.map_or(0, |s| match tracked.kind {
                    QueryKind::Content => s.results().map(|r| r.sources.len()).sum(),
                    QueryKind::Keywords => s.results().count(),
                });
                tracked.sources.get_or_insert(results);
            }
        }
    }

    /// Runs leaf `l`'s supernode set at the current time (offering
    /// `first` before others, as a configured seed): opens the sessions
    /// it asks for in free slots, and schedules its next deadline.
    fn drive_leaf_set(&mut self, l: usize, first: Option<usize>) {
        if !self.leaves[l].online {
            return;
        }
        let now = Time(self.now);
        let mut candidates = Online::of(&self.supers, first);
        self.leaves[l].set.handle_timeout(now, &mut candidates);
        while let Some(action) = self.leaves[l].set.poll_action() {
            let LeafSetAction::Open(addr) = action else {
                continue; // no bootstrap names in the simulator
            };
            match supernode_index(addr) {
                Some(s) => self.open_slot(l, s),
                None => {
                    self.leaves[l]
                        .set
                        .handle_ended(addr, SessionEnd::Unreachable, now);
                }
            }
        }
        if let Some(at) = self.leaves[l].set.poll_timeout() {
            let at = at.as_millis().max(self.now + 1);
            if self.leaves[l].wake.is_none_or(|w| w > at || w < self.now) {
                self.leaves[l].wake = Some(at);
                self.schedule(at, Event::LeafWakes(l));
            }
        }
    }

    /// A fresh session in a free slot of leaf `l`, to supernode `s`.
    fn open_slot(&mut self, l: usize, s: usize) {
        let Some(k) = self.leaves[l]
            .slots
            .iter()
            .position(|slot| slot.link.is_none())
        else {
            return;
        };
        if k == 0 {
            self.harvest(l);
        }
        let session = leaf_session(l, &self.leaves[l].shares);
        self.leaves[l].slots[k].session = session;
        if self.supers[s].online {
            self.attach(l, k, s);
            self.leaves[l]
                .set
                .handle_ready(supernode_addr(s), node_id(1, s));
        } else {
            let now = Time(self.now);
            self.leaves[l]
                .set
                .handle_ended(supernode_addr(s), SessionEnd::Unreachable, now);
        }
    }

    /// Leaf `l` noticed its slot `k`'s supernode `s` is gone: its set
    /// replaces it.
    fn slot_lost(&mut self, l: usize, k: usize, s: usize) {
        if !self.leaves[l].online || self.leaves[l].slots[k].link.is_some() {
            return;
        }
        let lasted = Duration::ZERO;
        let now = Time(self.now);
        self.leaves[l]
            .set
            .handle_ended(supernode_addr(s), SessionEnd::Closed { lasted }, now);
        self.drive_leaf_set(l, None);
    }

    /// Runs supernode `s`'s discovery at the current time: dials what it
    /// asks (a dial to a supernode online joins at once), and schedules
    /// its next deadline.
    fn drive_discovery(&mut self, s: usize) {
        if !self.supers[s].online {
            return;
        }
        let now = Time(self.now);
        let mut candidates = Online::of(&self.supers, None);
        self.supers[s]
            .discovery
            .handle_timeout(now, &mut candidates);
        while let Some(action) = self.supers[s].discovery.poll_action() {
            let DiscoveryAction::Dial(addr) = action else {
                continue;
            };
            if let Some(t) = supernode_index(addr).filter(|t| self.supers[*t].online) {
                self.join(s, t);
            }
            self.supers[s].discovery.handle_dial_ended(addr);
        }
        if let Some(at) = self.supers[s].discovery.poll_timeout() {
            let at = at.as_millis().max(self.now + 1);
            if self.supers[s].wake.is_none_or(|w| w > at || w < self.now) {
                self.supers[s].wake = Some(at);
                self.schedule(at, Event::SupernodeWakes(s));
            }
        }
    }

    fn leaf_leaves(&mut self, l: usize) {
        self.harvest(l);
        for k in 0..self.leaves[l].slots.len() {
            if let Some((conn, _)) = self.leaves[l].slots[k].link {
                self.cut(End::Leaf(l, k, conn));
            }
        }
        self.leaves[l].online = false;
        self.departures.0 += 1;
        let at = self.now + self.draw(self.config.churn.offline_ms);
        self.schedule(at, Event::LeafReturns(l));
    }

    /// Leaf `l` comes back with a fresh supernode set, which opens its
    /// sessions.
    fn leaf_returns(&mut self, l: usize) {
        self.leaves[l].online = true;
        let parents = self.leaves[l].slots.len();
        self.leaves[l].set = leaf_set(parents, self.rng.random());
        self.drive_leaf_set(l, None);
    }

    /// Supernode `s` vanishes: its peers see the connections drop, its
    /// leaves look for another parent.
    fn supernode_leaves(&mut self, s: usize) {
        self.supers[s].online = false;
        let links = std::mem::take(&mut self.supers[s].links);
        for (_, link) in links.0 {
            match link.to {
                End::Super(t, conn) => {
                    self.supers[t].links.remove(conn);
                    self.supers[t].machine.handle_disconnected(conn);
                    self.drain_super(t);
                    self.supers[t].discovery.handle_left(supernode_addr(s));
                    self.schedule(self.now, Event::SupernodeWakes(t));
                }
                End::Leaf(l, k, conn) => {
                    self.forget_end(End::Leaf(l, k, conn));
                    let at = self.now + self.draw(self.config.churn.reattach_ms);
                    self.schedule(at, Event::SlotLost(l, k, s));
                }
            }
        }
        let config = supernode_config(s, &self.config, self.dynamic.as_ref());
        self.supers[s].machine = Supernode::new(config);
        self.supers[s].online = false;
        self.departures.1 += 1;
        let at = self.now + self.draw(self.config.churn.offline_ms);
        self.schedule(at, Event::SupernodeReturns(s));
    }

    /// Supernode `s` comes back with fresh state; its discovery dials
    /// until it has the peers it wants; leaves find it as they look for
    /// parents.
    fn supernode_returns(&mut self, s: usize) {
        self.supers[s].online = true;
        self.supers[s].discovery = discovery(s, &self.config, self.rng.random());
        self.drive_discovery(s);
    }

    /// Churn due in one tick of `tick_ms`: leaves and supernodes leave at
    /// the configured rates (the fractional part carried to the next tick).
    fn churn(&mut self, tick_ms: u64, debt: &mut (f64, f64)) {
        let minutes = tick_ms as f64 / 60_000.0;
        debt.0 += self.config.churn.leaves_per_minute * self.leaves.len() as f64 * minutes;
        debt.1 += self.config.churn.supernodes_per_minute * self.supers.len() as f64 * minutes;
        while debt.0 >= 1.0 {
            debt.0 -= 1.0;
            let now = self.now;
            let pick = (0..16).find_map(|_| {
                let l = self.rng.random_range(0..self.leaves.len());
                (self.leaves[l].online && self.leaves[l].busy_until <= now).then_some(l)
            });
            if let Some(l) = pick {
                self.leaf_leaves(l);
            }
        }
        while debt.1 >= 1.0 {
            debt.1 -= 1.0;
            let pick = (0..16).find_map(|_| {
                let s = self.rng.random_range(0..self.supers.len());
                self.supers[s].online.then_some(s)
            });
            if let Some(s) = pick {
                self.supernode_leaves(s);
            }
        }
    }

    /// A random leaf that can search now: online, its first session ready,
    /// and not searching already.
    fn pick_searcher(&mut self) -> Option<usize> {
        let now = self.now;
        (0..64).find_map(|_| {
            let l = self.rng.random_range(0..self.leaves.len());
            let leaf = &self.leaves[l];
            (leaf.online
                && leaf.busy_until <= now
                && leaf.slots[0].link.is_some()
                && leaf.slots[0].session.is_ready())
            .then_some(l)
        })
    }
}

/// Virtual time between two looks at churn.
const TICK_MS: u64 = 500;

/// Widening steps of one dynamic query whose ids are attributed to it
/// (far more than its horizon allows; a step beyond would show as
/// untracked messages in the report).
const MAX_STEPS: u32 = 256;

/// How long a leaf waits for the hits of one search.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The results a keyword search wants (the dynamic querying target; the
/// leaf stops counting new contents past it).
const KEYWORD_RESULTS: usize = 150;

/// Builds the overlay `config` describes, runs its queries, and reports:
/// one row for content-id queries, and one for keyword queries when the
/// run asks both.
pub fn run(config: &SimConfig) -> Vec<RunReport> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let s_count = config.supernodes.max(2);
    let l_count = config.leaves();
    let dynamic = matches!(config.strategy, Strategy::Dynamic).then(|| config.dynamic.clone());
    let workload = Workload::new(config.contents, config.vocabulary, &mut rng);

    // Place every content on its share of leaves.
    let mut files: Vec<Vec<SharedFile>> = vec![Vec::new(); l_count];
    let copies = ((config.replication * l_count as f64).round() as usize).clamp(1, l_count);
    for k in 0..config.contents {
        let mut holders: BTreeSet<usize> = BTreeSet::new();
        while holders.len() < copies {
            holders.insert(rng.random_range(0..l_count));
        }
        let file = content_file(k, &workload);
        for leaf in holders {
            files[leaf].push(file.clone());
        }
    }
    let parents = config.parents_per_leaf.clamp(1, s_count);
    // The policies' own generators, seeded apart from the world's.
    let mut seeds = SplitMix64::new(config.seed ^ 0x5EED_5EED_5EED_5EED);
    let leaves = files
        .into_iter()
        .enumerate()
        .map(|(l, shares)| LeafNode {
            slots: (0..parents)
                .map(|_| Slot {
                    session: leaf_session(l, &shares),
                    link: None,
                    due: None,
                })
                .collect(),
            shares,
            online: true,
            busy_until: 0,
            searches: Vec::new(),
            set: leaf_set(parents, seeds.next_u64()),
            wake: None,
        })
        .collect();
    let supers = (0..s_count)
        .map(|i| SuperNode {
            machine: Supernode::new(supernode_config(i, config, dynamic.as_ref())),
            online: true,
            links: Links::default(),
            discovery: discovery(i, config, seeds.next_u64()),
            wake: None,
            due: None,
        })
        .collect();
    let mut world = World {
        now: 0,
        supers,
        leaves,
        queue: BTreeMap::new(),
        next_conn: 0,
        rng,
        config: config.clone(),
        dynamic: dynamic.clone(),
        tracked: HashMap::new(),
        aliases: HashMap::new(),
        departures: (0, 0),
        upkeep: Upkeep::default(),
        counting: false,
        workload,
    };

    // Supernode graph: a ring, so it is connected, and each supernode
    // dials distinct others at random.
    let mut neighbours: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); s_count];
    for a in 0..s_count {
        let b = (a + 1) % s_count;
        if neighbours[a].insert(b) {
            neighbours[b].insert(a);
            world.join(a, b);
        }
    }
    let dials = config.dials_per_supernode.min(s_count - 1);
    for a in 0..s_count {
        let mut dialed = 0;
        for _ in 0..dials * 4 {
            if dialed >= dials {
                break;
            }
            let b = world.rng.random_range(0..s_count);
            if a != b && neighbours[a].insert(b) {
                neighbours[b].insert(a);
                world.join(a, b);
                dialed += 1;
            }
        }
    }
    // From here on, each supernode's discovery keeps its peers.
    for s in 0..s_count {
        world.drive_discovery(s);
    }
    // Leaves: their sets choose; the first parent is offered first, in
    // order (an even spread, like a configured seed), the others at random.
    let per_supernode = config.leaves_per_supernode.max(1);
    for l in 0..l_count {
        world.drive_leaf_set(l, Some(l / per_supernode));
    }
    // Settle: handshakes, full lists, first filters (not counted: a
    // running overlay has long passed this).
    let mut clock = Clock {
        next_tick: TICK_MS,
        debt: (0.0, 0.0),
        churn: false,
    };
    clock.advance(&mut world, 10_000);

    // Queries spread over the span, from random leaves, for Zipf-popular
    // contents, alternately by content id and by words of the content's
    // name; churn all along, and every message counted.
    let table = zipf_table(config.contents.max(1), config.zipf);
    let interval = config.query_interval_ms();
    let start = world.now;
    world.counting = true;
    clock.churn = true;
    let mut issued: Vec<(MessageId, usize)> = Vec::with_capacity(config.queries);
    for q in 0..config.queries {
        let at = start + q as u64 * interval;
        clock.advance(&mut world, at);
        let Some(l) = world.pick_searcher() else {
            continue;
        };
        let k = zipf_pick(&table, &mut world.rng);
        let id = query_id(q);
        let ttl = match config.strategy {
            Strategy::Flood(ttl) => ttl,
            Strategy::Dynamic => canopy_core::supernode::DEFAULT_TTL_CAP,
        };
        let kind = if config.keyword_queries && q % 2 == 1 {
            QueryKind::Keywords
        } else {
            QueryKind::Content
        };
        let request = match kind {
            // The leaf wants one content: it asks by content id (target
            // 10 sources).
            QueryKind::Content => SearchRequest::content(content_id(k), ttl, SEARCH_TIMEOUT),
            // The user types words of the name they have in mind (target
            // 150 results).
            QueryKind::Keywords => {
                let words = world.workload.query(k, &mut world.rng);
                SearchRequest::keywords(&words, ttl, SEARCH_TIMEOUT, KEYWORD_RESULTS)
            }
        };
        world.tracked.insert(id, Tracked::new(kind, at));
        let started = world.leaves[l].slots[0]
            .session
            .start_search(id, &request, Time(at));
        if started.is_ok() {
            world.drain_leaf(l, 0);
            world.leaves[l].busy_until = at + SEARCH_TIMEOUT.as_millis() as u64 + 1_000;
            world.leaves[l].searches.push(id);
            issued.push((id, l));
            if let Some((
                _,
                Link {
                    to: End::Super(s, _),
                    ..
                },
            )) = world.leaves[l].slots[0].link
            {
                if dynamic.is_some() {
                    for step in 0..MAX_STEPS {
                        let alias = world.supers[s].machine.step_id(id, step);
                        world.aliases.insert(alias, id);
                    }
                }
            }
        } else {
            world.tracked.remove(&id);
        }
    }
    let end = start + config.queries as u64 * interval + SEARCH_TIMEOUT.as_millis() as u64 + 5_000;
    clock.advance(&mut world, end);
    world.upkeep.window_ms = end - start;

    for l in issued.iter().map(|(_, l)| *l).collect::<BTreeSet<_>>() {
        world.harvest(l);
    }
    let outcomes: Vec<QueryOutcome> = issued
        .iter()
        .filter_map(|(id, _)| world.tracked.remove(id))
        .map(|tracked| {
            let results = tracked.sources.unwrap_or(0);
            QueryOutcome {
                kind: tracked.kind,
                found: results > 0,
                messages: tracked.messages,
                statuses: tracked.statuses,
                bytes: tracked.bytes,
                dropped: tracked.dropped,
                first_result_ms: tracked.first_hit.map(|t| t.saturating_sub(tracked.started)),
                results,
            }
        })
        .collect();
    let mut kinds = vec![QueryKind::Content];
    if config.keyword_queries && config.queries > 1 {
        kinds.push(QueryKind::Keywords);
    }
    kinds
        .into_iter()
        .map(|kind| RunReport::new(config, kind, &outcomes, &world.upkeep, world.departures))
        .collect()
}

/// Ticks of virtual time for churn. The nodes' own timers are not
/// ticked: each machine's deadline (`poll_timeout`) is an event, so
/// dynamic query steps, keepalives, idle limits, filter publishing and
/// status reports happen exactly when due.
struct Clock {
    next_tick: u64,
    debt: (f64, f64),
    churn: bool,
}

impl Clock {
    /// Runs the world to `until`, nodes leaving every [`TICK_MS`] on the
    /// way.
    fn advance(&mut self, world: &mut World, until: u64) {
        while self.next_tick <= until {
            world.run_until(self.next_tick);
            if self.churn {
                world.churn(TICK_MS, &mut self.debt);
            }
            self.next_tick += TICK_MS;
        }
        world.run_until(until);
    }
}
