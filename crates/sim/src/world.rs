//! Builds an overlay of real core state machines and runs it in virtual
//! time. Messages travel through one event queue ordered by delivery time
//! (then by a sequence number, so ties break the same way every run); each
//! link has a latency drawn once from the configured range. Hash maps are
//! used for lookups only, never iterated, so runs are deterministic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::dynamic::DynamicConfig;
use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession, SearchRequest};
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::{ContentId, Message, MessageId, NodeId, Role, SharedFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{SimConfig, Strategy};
use crate::report::{QueryOutcome, RunReport};

/// One end of a link: a supernode's connection, or a leaf's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    Super(usize, ConnId),
    Leaf(usize, usize),
}

#[derive(Debug)]
struct Pending {
    at: u64,
    seq: u64,
    to: End,
    message: Message,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Clone, Copy)]
struct Link {
    to: End,
    latency: u64,
}

#[derive(Debug, Default)]
struct Tracked {
    messages: u64,
    started: u64,
    first_hit: Option<u64>,
}

struct World {
    now: u64,
    seq: u64,
    supers: Vec<Supernode>,
    leaves: Vec<Vec<LeafSession>>,
    links: HashMap<End, Link>,
    queue: BinaryHeap<Reverse<Pending>>,
    next_conn: u64,
    rng: StdRng,
    latency: (u64, u64),
    tracked: HashMap<MessageId, Tracked>,
}

fn supernode_addr(i: usize) -> SocketAddr {
    let b = (i as u32).to_be_bytes();
    SocketAddr::from(([10, b[1], b[2], b[3]], 6346))
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

fn content_file(k: usize) -> SharedFile {
    let mut id = [0xF1; 32];
    id[..8].copy_from_slice(&(k as u64).to_be_bytes());
    SharedFile {
        content_id: ContentId(id),
        name: format!("item{k} track.ogg"),
        size: 1000 + k as u64,
    }
}

fn message_id(message: &Message) -> Option<MessageId> {
    match message {
        Message::Query(q) => Some(q.message_id),
        Message::QueryHit(h) => Some(h.message_id),
        _ => None,
    }
}

impl World {
    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn draw_latency(&mut self) -> u64 {
        let (low, high) = self.latency;
        if high > low {
            self.rng.random_range(low..=high)
        } else {
            low
        }
    }

    fn send(&mut self, from: End, message: Message) {
        let Some(link) = self.links.get(&from).copied() else {
            return;
        };
        if let Some(tracked) = message_id(&message).and_then(|id| self.tracked.get_mut(&id)) {
            tracked.messages += 1;
        }
        self.seq += 1;
        self.queue.push(Reverse(Pending {
            at: self.now + link.latency,
            seq: self.seq,
            to: link.to,
            message,
        }));
    }

    fn cut(&mut self, from: End) {
        if let Some(link) = self.links.remove(&from) {
            self.links.remove(&link.to);
            if let End::Super(s, conn) = link.to {
                self.supers[s].handle_disconnected(conn);
                self.drain_super(s);
            }
        }
    }

    fn drain_super(&mut self, s: usize) {
        let mut probes = Vec::new();
        while let Some(action) = self.supers[s].poll_action() {
            match action {
                Action::Send { conn, message } => self.send(End::Super(s, conn), message),
                Action::Forward { conns, message } => {
                    for conn in conns {
                        self.send(End::Super(s, conn), message.clone());
                    }
                }
                Action::Close { conn, .. } => self.cut(End::Super(s, conn)),
                // Every simulated leaf can be reached.
                Action::Probe { conn, .. } => probes.push(conn),
                Action::Learned(_) | Action::Rejected { .. } => {}
            }
        }
        for conn in probes {
            self.supers[s].handle_probe_result(conn, true);
        }
    }

    fn drain_leaf(&mut self, l: usize, k: usize) {
        while let Some(action) = self.leaves[l][k].poll_action() {
            match action {
                LeafAction::Send(message) => self.send(End::Leaf(l, k), message),
                LeafAction::Close(_) => self.cut(End::Leaf(l, k)),
                _ => {}
            }
        }
    }

    fn deliver(&mut self, pending: Pending) {
        self.now = self.now.max(pending.at);
        let now = Time(self.now);
        match pending.to {
            End::Super(s, conn) => {
                self.supers[s].handle_message(conn, pending.message, now);
                self.drain_super(s);
            }
            End::Leaf(l, k) => {
                if let Message::QueryHit(hit) = &pending.message {
                    if let Some(tracked) = self.tracked.get_mut(&hit.message_id) {
                        tracked.first_hit.get_or_insert(self.now);
                    }
                }
                self.leaves[l][k].handle_message(pending.message, now);
                self.drain_leaf(l, k);
            }
        }
    }

    fn run_until(&mut self, until: u64) {
        while self.queue.peek().is_some_and(|Reverse(p)| p.at <= until) {
            if let Some(Reverse(pending)) = self.queue.pop() {
                self.deliver(pending);
            }
        }
        self.now = self.now.max(until);
    }

    fn join(&mut self, a: usize, b: usize) {
        let (ca, cb) = (self.conn(), self.conn());
        let latency = self.draw_latency();
        self.links.insert(
            End::Super(a, ca),
            Link {
                to: End::Super(b, cb),
                latency,
            },
        );
        self.links.insert(
            End::Super(b, cb),
            Link {
                to: End::Super(a, ca),
                latency,
            },
        );
        let now = Time(self.now);
        self.supers[b].handle_connected(cb, Direction::Inbound, supernode_addr(a), now);
        self.supers[a].handle_connected(ca, Direction::Outbound, supernode_addr(b), now);
        self.drain_super(b);
        self.drain_super(a);
    }

    fn attach(&mut self, l: usize, k: usize, s: usize) {
        let conn = self.conn();
        let latency = self.draw_latency();
        self.links.insert(
            End::Leaf(l, k),
            Link {
                to: End::Super(s, conn),
                latency,
            },
        );
        self.links.insert(
            End::Super(s, conn),
            Link {
                to: End::Leaf(l, k),
                latency,
            },
        );
        self.supers[s].handle_connected(conn, Direction::Inbound, leaf_addr(l), Time(self.now));
        self.leaves[l][k].handle_connected();
        self.drain_leaf(l, k);
    }
}

/// Cumulative Zipf weights over `n` ranks.
fn zipf_table(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    (0..n)
        .map(|rank| {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            total
        })
        .collect()
}

fn zipf_pick(table: &[f64], rng: &mut StdRng) -> usize {
    let total = table.last().copied().unwrap_or(1.0);
    let x = rng.random::<f64>() * total;
    table
        .partition_point(|c| *c < x)
        .min(table.len().saturating_sub(1))
}

/// Builds the overlay `config` describes, runs its queries, and reports.
pub fn run(config: &SimConfig) -> RunReport {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let s_count = config.supernodes.max(2);
    let l_count = s_count * config.leaves_per_supernode;
    let dynamic = matches!(config.strategy, Strategy::Dynamic).then(DynamicConfig::default);
    let supers = (0..s_count)
        .map(|i| {
            let mut c = SupernodeConfig::new(node_id(1, i), Some(supernode_addr(i)));
            c.ttl_cap = 7;
            c.max_leaves = l_count;
            c.max_supernode_peers = s_count;
            c.seen_capacity = 4096;
            c.route_capacity = 4096;
            c.keepalive_interval = Duration::from_secs(86_400);
            c.idle_timeout = Duration::from_secs(86_400);
            c.leaf_queries_per_second = 1_000_000;
            c.leaf_query_burst = 1_000_000;
            c.dynamic = dynamic.clone();
            Supernode::new(c)
        })
        .collect();

    // Place every content on its share of leaves.
    let mut files: Vec<Vec<SharedFile>> = vec![Vec::new(); l_count];
    let copies = ((config.replication * l_count as f64).round() as usize).clamp(1, l_count);
    for k in 0..config.contents {
        let mut holders: Vec<usize> = Vec::with_capacity(copies);
        while holders.len() < copies {
            let leaf = rng.random_range(0..l_count);
            if !holders.contains(&leaf) {
                holders.push(leaf);
            }
        }
        for leaf in holders {
            files[leaf].push(content_file(k));
        }
    }
    let parents = config.parents_per_leaf.clamp(1, s_count);
    let leaves: Vec<Vec<LeafSession>> = files
        .into_iter()
        .enumerate()
        .map(|(l, shared)| {
            let identity = Identity {
                node_id: node_id(2, l),
                role: Role::Leaf,
                listen_addr: Some(leaf_addr(l)),
                user_agent: "canopy-sim".into(),
            };
            (0..parents)
                .map(|_| LeafSession::new(identity.clone(), shared.clone()))
                .collect()
        })
        .collect();

    let mut world = World {
        now: 0,
        seq: 0,
        supers,
        leaves,
        links: HashMap::new(),
        queue: BinaryHeap::new(),
        next_conn: 0,
        rng,
        latency: config.latency_ms,
        tracked: HashMap::new(),
    };

    // Supernode graph: each dials a few others at random, plus a ring so
    // the graph is connected.
    for a in 0..s_count {
        world.join(a, (a + 1) % s_count);
        for _ in 1..config.dials_per_supernode {
            let b = world.rng.random_range(0..s_count);
            if b != a {
                world.join(a, b);
            }
        }
    }
    // Leaves: first parent in order, the others at random.
    let first_parent: Vec<usize> = (0..l_count)
        .map(|l| l / config.leaves_per_supernode.max(1))
        .collect();
    for (l, &home) in first_parent.iter().enumerate() {
        world.attach(l, 0, home);
        for k in 1..parents {
            let other = world.rng.random_range(0..s_count);
            world.attach(l, k, other);
        }
    }
    world.run_until(world.now + 10_000);

    // Queries, one every interval, from random leaves, Zipf-popular contents.
    let table = zipf_table(config.contents.max(1), config.zipf);
    let start = world.now;
    let timeout = Duration::from_secs(60);
    let mut issued: Vec<(MessageId, usize)> = Vec::with_capacity(config.queries);
    let mut origins: Vec<usize> = Vec::new();
    for q in 0..config.queries {
        let at = start + q as u64 * config.query_interval_ms;
        advance(&mut world, at, &origins, dynamic.is_some());
        let l = world.rng.random_range(0..l_count);
        let k = zipf_pick(&table, &mut world.rng);
        let id = query_id(q);
        let ttl = match config.strategy {
            Strategy::Flood(ttl) => ttl,
            // The default cap of real supernodes, as the flood it is compared with.
            Strategy::Dynamic => 4,
        };
        // The leaf wants one content: it asks by content id (target 10 sources).
        let request = SearchRequest::content(content_file(k).content_id, ttl, timeout);
        world.tracked.insert(
            id,
            Tracked {
                started: at,
                ..Tracked::default()
            },
        );
        if world.leaves[l][0]
            .start_search(id, &request, Time(at))
            .is_ok()
        {
            world.drain_leaf(l, 0);
            issued.push((id, l));
            if !origins.contains(&first_parent[l]) {
                origins.push(first_parent[l]);
            }
        }
    }
    let end = start
        + config.queries as u64 * config.query_interval_ms
        + timeout.as_millis() as u64
        + 5_000;
    advance(&mut world, end, &origins, dynamic.is_some());

    let mut outcomes = Vec::with_capacity(issued.len());
    for (id, l) in issued {
        let results = world.leaves[l][0]
            .finish_search(&id)
            .map_or(0, |s| s.results().count());
        let tracked = world.tracked.remove(&id).unwrap_or_default();
        outcomes.push(QueryOutcome {
            found: results > 0,
            messages: tracked.messages,
            first_result_ms: tracked.first_hit.map(|t| t.saturating_sub(tracked.started)),
            results,
        });
    }
    RunReport::new(config, l_count, outcomes)
}

/// Runs the world to `until`, ticking the supernodes that run dynamic
/// queries every half second of virtual time on the way.
fn advance(world: &mut World, until: u64, origins: &[usize], dynamic: bool) {
    if !dynamic {
        world.run_until(until);
        return;
    }
    let mut next = world.now - world.now % 500 + 500;
    while next <= until {
        world.run_until(next);
        for &s in origins {
            world.supers[s].handle_timeout(Time(next));
            world.drain_super(s);
        }
        next += 500;
    }
    world.run_until(until);
}
