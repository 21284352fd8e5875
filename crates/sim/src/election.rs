//! Supernode election at scale (issue 12): a population of nodes of mixed
//! capability, each running the real [`Election`] policy and, while a leaf,
//! the real [`LeafSet`] policy of `canopy-core`, in virtual time, with churn.
//!
//! What is modelled, and how:
//!
//! - **Nodes.** Each has a capability drawn once from
//!   [`ElectionSimConfig`]: reachable (the connect-back verdict) or not,
//!   an upload rate tier (download is four times upload), and the memory
//!   available. They are fed to [`Election`] when the node (re)starts, as
//!   if already measured.
//! - **Seeds.** A few supernodes that are always on and never elected
//!   (bootstrap supernodes run as such by their operators).
//! - **Leaf side.** A leaf's [`LeafSet`] asks for sessions; its candidates
//!   are every supernode online (a perfect host cache: a new supernode is
//!   known at once, and a step-down's try-list adds nothing to it). A dial
//!   arrives after a latency of 50-500 ms: a supernode with a free slot
//!   accepts (`handle_ready`), a full one refuses (`SessionEnd::Rejected`
//!   and [`Election::handle_refused_full`]), a node that is no longer a
//!   supernode or is offline is unreachable. The free slots a supernode
//!   answers with, and those its keepalive `Pong`s carry at each of the
//!   leaf's evaluations, go to [`Election::handle_free_slots`].
//! - **Supernode side.** A supernode holds at most the core's default
//!   `max_leaves` leaf sessions and reports how many it holds
//!   ([`Election::handle_leaves`]); at each evaluation it hears the free
//!   slots of a few other supernodes at random (its peers' `Pong`s). The
//!   node's own leaf beside its supernode is not modelled (it counts as
//!   covered). Promoting closes the node's leaf sessions; stepping down
//!   closes its leaves' sessions (they dial again at once) and starts a
//!   fresh leaf.
//! - **Churn.** Session lengths and offline times are log-normal
//!   ([`ElectionSimConfig::session_median`] etc.); a node that returns is a
//!   new process (a new [`Election`]: its uptime starts again, as a leaf).
//!   At the start every node is online and has been up for a uniform share
//!   of its current session, so some have been up for hours.
//!
//! Measured each minute: supernodes, online leaves, leaf sessions held,
//! and the **search coverage**: the share of online leaves with at least
//! one open session to a supernode (a leaf without one cannot search; this
//! is not a query's success). Flaps: nodes whose election switched their
//! mode (a promotion or a step-down; going offline is not a switch) twice
//! within an hour. Deterministic for a seed: one [`SplitMix64`] seeds all.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use canopy_core::Time;
use canopy_core::discovery::Candidates;
use canopy_core::election::{Election, ElectionAction, ElectionConfig, Mode};
use canopy_core::leaf_set::{LeafSet, LeafSetAction, LeafSetConfig, SessionEnd};
use canopy_core::reachability::Reachable;
use canopy_core::rng::SplitMix64;
use canopy_core::supernode::SupernodeConfig;
use canopy_proto::NodeId;

/// Upload rate tiers (bytes a second) and their shares.
pub const UPLOAD_TIERS: [(u64, f64); 3] = [(5_000, 0.3), (50_000, 0.4), (500_000, 0.3)];

/// The run's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionSimConfig {
    /// Nodes (besides the seeds).
    pub nodes: usize,
    /// Seed supernodes, always on.
    pub seeds: usize,
    /// Share of nodes reachable from outside (not firewalled).
    pub reachable: f64,
    /// Share of nodes with little memory (50 MiB, below the policy's
    /// budget); the others have 1 GiB.
    pub low_memory: f64,
    /// Median session length (log-normal).
    pub session_median: Duration,
    /// Spread (sigma of the log) of session lengths.
    pub session_sigma: f64,
    /// Median time offline between sessions (log-normal).
    pub offline_median: Duration,
    /// Spread (sigma of the log) of offline times.
    pub offline_sigma: f64,
    /// Simulated time.
    pub duration: Duration,
    /// Leaf sessions each leaf keeps (the real leaf's default: 2).
    pub sessions_per_leaf: usize,
    /// Leaf slots of a supernode (the core's default `max_leaves`).
    pub max_leaves: usize,
    /// Target mean of leaf sessions held per supernode, inclusive.
    pub target: (f64, f64),
    /// Other supernodes whose free slots a supernode hears at each
    /// evaluation.
    pub peer_pongs: usize,
    /// The election policy's settings.
    pub election: ElectionConfig,
    /// Seed of every random choice.
    pub seed: u64,
}

impl ElectionSimConfig {
    /// The issue's population: 30,000 nodes and 5 seeds.
    pub fn issue(seed: u64) -> Self {
        let max_leaves = SupernodeConfig::new(NodeId([0; 16]), None).max_leaves;
        Self {
            nodes: 30_000,
            seeds: 5,
            reachable: 0.2,
            low_memory: 0.1,
            session_median: Duration::from_secs(60 * 60),
            session_sigma: 1.2,
            offline_median: Duration::from_secs(30 * 60),
            offline_sigma: 1.0,
            duration: Duration::from_secs(6 * 60 * 60),
            sessions_per_leaf: 2,
            max_leaves,
            target: (30.0, max_leaves as f64),
            peer_pongs: 8,
            election: ElectionConfig::default(),
            seed,
        }
    }

    /// A small population, for tests.
    pub fn small(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seeds: 1,
            duration: Duration::from_secs(3 * 60 * 60),
            ..Self::issue(seed)
        }
    }
}

/// One minute's look at the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Minutes since the start.
    pub minute: u64,
    /// Nodes online (seeds included).
    pub online: usize,
    /// Supernodes online (seeds included).
    pub supernodes: usize,
    /// Online nodes running as leaves only.
    pub leaves: usize,
    /// Leaf sessions the supernodes hold.
    pub sessions: usize,
    /// Online leaves with at least one open session.
    pub covered: usize,
    /// Online leaves with every session they want open.
    pub served: usize,
    /// Supernodes holding fewer sessions than the target's low end.
    pub under_target: usize,
    /// Leaf dials refused as full since the previous sample.
    pub refusals: u64,
    /// Promotions so far.
    pub promotions: u64,
    /// Step-downs so far.
    pub demotions: u64,
}

impl Sample {
    /// Leaf sessions held per supernode.
    pub fn per_supernode(&self) -> f64 {
        self.sessions as f64 / self.supernodes.max(1) as f64
    }

    /// Share of online leaves with every session they want.
    pub fn served_share(&self) -> f64 {
        if self.leaves == 0 {
            1.0
        } else {
            self.served as f64 / self.leaves as f64
        }
    }

    /// Share of online leaves with a supernode.
    pub fn coverage(&self) -> f64 {
        if self.leaves == 0 {
            1.0
        } else {
            self.covered as f64 / self.leaves as f64
        }
    }
}

/// A run's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionReport {
    /// The settings.
    pub config: ElectionSimConfig,
    /// One sample a minute.
    pub samples: Vec<Sample>,
    /// Nodes whose election switched their mode twice within an hour.
    pub flapped: usize,
    /// Nodes whose election switched their mode at least once.
    pub switched: usize,
    /// The shortest time between two switches of one node, if any node
    /// switched twice.
    pub min_switch_spacing: Option<Duration>,
    /// Sessions started (joins), besides the initial population.
    pub rejoins: u64,
    /// Nodes (seeds aside) the policy found capable at the start.
    pub capable_at_start: usize,
}

impl ElectionReport {
    /// The first sample (minute) within the target range after which every
    /// sample stays in it, if any.
    pub fn settled_minute(&self) -> Option<u64> {
        let (low, high) = self.config.target;
        let in_range = |s: &Sample| (low..=high).contains(&s.per_supernode());
        let mut settled = None;
        for sample in &self.samples {
            if in_range(sample) {
                settled.get_or_insert(sample.minute);
            } else {
                settled = None;
            }
        }
        settled
    }

    /// The first sample (minute) within the target range, if any.
    pub fn first_in_range_minute(&self) -> Option<u64> {
        let (low, high) = self.config.target;
        self.samples
            .iter()
            .find(|s| (low..=high).contains(&s.per_supernode()))
            .map(|s| s.minute)
    }

    /// Minimum and mean coverage over the samples from `minute` on.
    pub fn coverage_from(&self, minute: u64) -> (f64, f64) {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.minute >= minute)
            .map(Sample::coverage)
            .collect();
        let min = values.iter().copied().fold(1.0, f64::min);
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        (min, mean)
    }

    /// Share of all nodes that flapped.
    pub fn flap_share(&self) -> f64 {
        self.flapped as f64 / self.config.nodes.max(1) as f64
    }

    /// The last sample.
    pub fn last(&self) -> Option<&Sample> {
        self.samples.last()
    }
}

/// What happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A minute's sample.
    Sample,
    /// The node's policies are due (if `wake` still says so).
    Wake(u32),
    /// A leaf's dial reaches the supernode (if the leaf is still the same
    /// leaf: `leaf_epoch`).
    Dial {
        leaf: u32,
        supernode: u32,
        epoch: u32,
    },
    /// The node goes offline.
    Leave(u32),
    /// The node comes back.
    Join(u32),
}

#[derive(Debug)]
struct Node {
    seed: bool,
    reachable: bool,
    upload: u64,
    memory: u64,
    online: bool,
    election: Option<Election>,
    leaf: Option<LeafSet>,
    /// Leaf sessions held while a supernode: (leaf, since).
    held: Vec<(u32, Time)>,
    /// Supernodes this leaf's ready sessions are with.
    parents: Vec<u32>,
    /// Bumped whenever the node's leaf is replaced or stopped.
    leaf_epoch: u32,
    /// The earliest wake-up scheduled.
    wake: Option<Time>,
    last_switch: Option<Time>,
    switched: bool,
    flapped: bool,
}

impl Node {
    fn is_supernode(&self) -> bool {
        self.online
            && (self.seed
                || self
                    .election
                    .as_ref()
                    .is_some_and(|e| e.mode() == Mode::Supernode))
    }
}

fn addr(node: u32) -> SocketAddr {
    let [_, b, c, d] = node.to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, b, c, d), 6346))
}

fn node_of(addr: SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(v4) => {
            let [_, b, c, d] = v4.ip().octets();
            Some(u32::from_be_bytes([0, b, c, d]))
        }
        SocketAddr::V6(_) => None,
    }
}

fn node_id(node: u32) -> NodeId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&node.to_be_bytes());
    NodeId(id)
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The online supernodes, as the leaves' candidates.
#[derive(Debug, Default)]
struct Supernodes {
    list: Vec<u32>,
    /// Position in `list` by node, `u32::MAX` if absent.
    position: Vec<u32>,
}

impl Supernodes {
    fn new(nodes: usize) -> Self {
        Self {
            list: Vec::new(),
            position: vec![u32::MAX; nodes],
        }
    }

    fn insert(&mut self, node: u32) {
        if self.position[node as usize] == u32::MAX {
            self.position[node as usize] = self.list.len() as u32;
            self.list.push(node);
        }
    }

    fn remove(&mut self, node: u32) {
        let at = self.position[node as usize];
        if at == u32::MAX {
            return;
        }
        self.list.swap_remove(at as usize);
        if let Some(moved) = self.list.get(at as usize) {
            self.position[*moved as usize] = at;
        }
        self.position[node as usize] = u32::MAX;
    }
}

impl Candidates for Supernodes {
    fn select(&mut self, random: u64, skip: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        let len = self.list.len();
        if len == 0 {
            return None;
        }
        let start = (random % len as u64) as usize;
        (0..len)
            .map(|i| addr(self.list[(start + i) % len]))
            .find(|a| !skip(*a))
    }
}

/// The population, the clock and the event queue.
#[derive(Debug)]
struct World {
    config: ElectionSimConfig,
    rng: SplitMix64,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64, Event)>>,
    sequence: u64,
    nodes: Vec<Node>,
    supernodes: Supernodes,
    samples: Vec<Sample>,
    refusals: u64,
    promotions: u64,
    demotions: u64,
    min_spacing: Option<Duration>,
    rejoins: u64,
    end: Time,
}

/// A log-normal draw with median `median` and log-spread `sigma`.
fn log_normal(rng: &mut SplitMix64, median: Duration, sigma: f64) -> Duration {
    // Box-Muller.
    let u1 = rng.unit().max(f64::MIN_POSITIVE);
    let u2 = rng.unit();
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let factor = (sigma * normal).exp();
    Duration::from_secs_f64((median.as_secs_f64() * factor).clamp(1.0, 30.0 * 24.0 * 3600.0))
}

impl World {
    fn new(config: &ElectionSimConfig) -> Self {
        let mut rng = SplitMix64::new(config.seed);
        let total = config.seeds + config.nodes;
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            let seed = i < config.seeds;
            let reachable = seed || rng.unit() < config.reachable;
            let pick = rng.unit();
            let mut upload = UPLOAD_TIERS[UPLOAD_TIERS.len() - 1].0;
            let mut acc = 0.0;
            for (rate, share) in UPLOAD_TIERS {
                acc += share;
                if pick < acc {
                    upload = rate;
                    break;
                }
            }
            let memory = if rng.unit() < config.low_memory {
                50 << 20
            } else {
                1 << 30
            };
            nodes.push(Node {
                seed,
                reachable,
                upload,
                memory,
                online: false,
                election: None,
                leaf: None,
                held: Vec::new(),
                parents: Vec::new(),
                leaf_epoch: 0,
                wake: None,
                last_switch: None,
                switched: false,
                flapped: false,
            });
        }
        // The clock starts late enough that nodes can have been up for
        // hours already.
        let start = Time(ms(Duration::from_secs(48 * 3600)));
        Self {
            config: config.clone(),
            rng,
            now: start,
            queue: BinaryHeap::new(),
            sequence: 0,
            nodes,
            supernodes: Supernodes::new(total),
            samples: Vec::new(),
            refusals: 0,
            promotions: 0,
            demotions: 0,
            min_spacing: None,
            rejoins: 0,
            end: start + config.duration,
        }
    }

    fn push(&mut self, at: Time, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, event)));
    }

    fn start_time(&self) -> Time {
        self.end - self.config.duration
    }

    /// Brings `node` online, up since `since`, as a leaf (seeds as
    /// supernodes).
    fn bring_up(&mut self, node: u32, since: Time) {
        let seed = self.rng.next_u64();
        let leaf = self.new_leaf();
        let n = &mut self.nodes[node as usize];
        n.online = true;
        n.held.clear();
        n.parents.clear();
        n.leaf_epoch += 1;
        if n.seed {
            self.supernodes.insert(node);
            return;
        }
        let mut election =
            Election::new(self.config.election.clone(), since, SplitMix64::new(seed));
        election.handle_reachability(if n.reachable {
            Reachable::Yes
        } else {
            Reachable::No
        });
        election.handle_rates(n.upload, n.upload * 4);
        election.handle_memory(n.memory);
        n.election = Some(election);
        n.leaf = Some(leaf);
        self.schedule_wake(node);
    }

    fn new_leaf(&mut self) -> LeafSet {
        LeafSet::new(
            LeafSetConfig::new(self.config.sessions_per_leaf),
            SplitMix64::new(self.rng.next_u64()),
        )
    }

    fn schedule_wake(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        if !n.online || n.seed {
            return;
        }
        let election = n.election.as_ref().map(|e| e.poll_timeout().max(self.now));
        let leaf = n
            .leaf
            .as_ref()
            .and_then(LeafSet::poll_timeout)
            .map(|t| t.max(self.now));
        let Some(at) = [election, leaf].into_iter().flatten().min() else {
            return;
        };
        if n.wake.is_none_or(|w| at < w) {
            self.nodes[node as usize].wake = Some(at);
            self.push(at, Event::Wake(node));
        }
    }

    fn free_slots(&self, supernode: u32) -> u64 {
        let held = self.nodes[supernode as usize].held.len();
        self.config.max_leaves.saturating_sub(held) as u64
    }

    fn wake(&mut self, node: u32) {
        let now = self.now;
        {
            let n = &mut self.nodes[node as usize];
            if !n.online || n.wake != Some(now) {
                return;
            }
            n.wake = None;
        }
        // The election: fresh free slots first (keepalive Pongs from the
        // leaf's supernodes, or a supernode's peers), then a look.
        let due = self.nodes[node as usize]
            .election
            .as_ref()
            .is_some_and(|e| e.poll_timeout() <= now);
        if due {
            let heard: Vec<(u32, u64)> = if self.nodes[node as usize].is_supernode() {
                let len = self.supernodes.list.len() as u64;
                (0..self.config.peer_pongs)
                    .filter_map(|_| {
                        let other = self.supernodes.list[self.rng.below(len) as usize];
                        (other != node).then(|| (other, self.free_slots(other)))
                    })
                    .collect()
            } else {
                self.nodes[node as usize]
                    .parents
                    .iter()
                    .map(|p| (*p, self.free_slots(*p)))
                    .collect()
            };
            let action = self.nodes[node as usize].election.as_mut().and_then(|e| {
                for (other, free) in heard {
                    e.handle_free_slots(addr(other), free, now);
                }
                e.handle_timeout(now);
                e.poll_action()
            });
            match action {
                Some(ElectionAction::Promote) => self.promote(node),
                Some(ElectionAction::Demote { .. }) => self.demote(node),
                None => {}
            }
        }
        self.drive_leaf(node);
        self.schedule_wake(node);
    }

    fn record_switch(&mut self, node: u32) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        if let Some(last) = n.last_switch {
            let spacing = now.since(last);
            if spacing < Duration::from_secs(3600) {
                n.flapped = true;
            }
            self.min_spacing = Some(self.min_spacing.map_or(spacing, |m| m.min(spacing)));
        }
        n.last_switch = Some(now);
        n.switched = true;
    }

    fn promote(&mut self, node: u32) {
        self.promotions += 1;
        self.record_switch(node);
        self.stop_leaf(node);
        self.nodes[node as usize].held.clear();
        self.supernodes.insert(node);
    }

    fn demote(&mut self, node: u32) {
        self.demotions += 1;
        self.record_switch(node);
        self.drop_held(node);
        self.supernodes.remove(node);
        let leaf = self.new_leaf();
        let n = &mut self.nodes[node as usize];
        n.leaf = Some(leaf);
        n.leaf_epoch += 1;
        n.parents.clear();
    }

    /// Ends the node's leaf: its sessions close at their supernodes.
    fn stop_leaf(&mut self, node: u32) {
        let parents = std::mem::take(&mut self.nodes[node as usize].parents);
        for parent in parents {
            self.release(parent, node);
        }
        let n = &mut self.nodes[node as usize];
        n.leaf = None;
        n.leaf_epoch += 1;
    }

    /// `supernode` no longer holds `leaf`.
    fn release(&mut self, supernode: u32, leaf: u32) {
        let now = self.now;
        let s = &mut self.nodes[supernode as usize];
        if let Some(at) = s.held.iter().position(|(l, _)| *l == leaf) {
            s.held.swap_remove(at);
        }
        let count = s.held.len();
        if let Some(e) = s.election.as_mut() {
            e.handle_leaves(count, now);
        }
    }

    /// The supernode's leaf sessions close (it left or stepped down).
    fn drop_held(&mut self, supernode: u32) {
        let now = self.now;
        let held = std::mem::take(&mut self.nodes[supernode as usize].held);
        for (leaf, since) in held {
            let l = &mut self.nodes[leaf as usize];
            l.parents.retain(|p| *p != supernode);
            if let Some(set) = l.leaf.as_mut() {
                set.handle_ended(
                    addr(supernode),
                    SessionEnd::Closed {
                        lasted: now.since(since),
                    },
                    now,
                );
                set.handle_candidates();
            }
            self.schedule_wake(leaf);
        }
    }

    /// Lets the leaf's set act: its dials go out.
    fn drive_leaf(&mut self, node: u32) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let epoch = n.leaf_epoch;
        let Some(set) = n.leaf.as_mut() else { return };
        if set.poll_timeout().is_some_and(|t| t <= now) {
            set.handle_timeout(now, &mut self.supernodes);
        }
        let mut dials = Vec::new();
        while let Some(action) = set.poll_action() {
            if let LeafSetAction::Open(to) = action {
                if let Some(supernode) = node_of(to) {
                    dials.push(supernode);
                }
            }
        }
        for supernode in dials {
            let latency = Duration::from_millis(50 + self.rng.below(451));
            self.push(
                now + latency,
                Event::Dial {
                    leaf: node,
                    supernode,
                    epoch,
                },
            );
        }
    }

    fn dial(&mut self, leaf: u32, supernode: u32, epoch: u32) {
        let now = self.now;
        let l = &self.nodes[leaf as usize];
        if !l.online || l.leaf_epoch != epoch || l.leaf.is_none() {
            return;
        }
        let to = addr(supernode);
        let up = self.nodes[supernode as usize].is_supernode();
        let free = if up { self.free_slots(supernode) } else { 0 };
        if up && free > 0 {
            let s = &mut self.nodes[supernode as usize];
            s.held.push((leaf, now));
            let count = s.held.len();
            if let Some(e) = s.election.as_mut() {
                e.handle_leaves(count, now);
            }
            let l = &mut self.nodes[leaf as usize];
            l.parents.push(supernode);
            if let Some(set) = l.leaf.as_mut() {
                set.handle_ready(to, node_id(supernode));
            }
            if let Some(e) = l.election.as_mut() {
                e.handle_free_slots(to, free - 1, now);
            }
        } else {
            let l = &mut self.nodes[leaf as usize];
            if up {
                self.refusals += 1;
                if let Some(set) = l.leaf.as_mut() {
                    set.handle_ended(to, SessionEnd::Rejected, now);
                }
                if let Some(e) = l.election.as_mut() {
                    e.handle_refused_full(now);
                    e.handle_free_slots(to, 0, now);
                }
            } else if let Some(set) = l.leaf.as_mut() {
                set.handle_ended(to, SessionEnd::Unreachable, now);
            }
            self.drive_leaf(leaf);
        }
        self.schedule_wake(leaf);
    }

    fn leave(&mut self, node: u32) {
        if !self.nodes[node as usize].online {
            return;
        }
        if self.nodes[node as usize].is_supernode() {
            self.drop_held(node);
            self.supernodes.remove(node);
        }
        self.stop_leaf(node);
        let n = &mut self.nodes[node as usize];
        n.online = false;
        n.election = None;
        n.wake = None;
        let off = log_normal(
            &mut self.rng,
            self.config.offline_median,
            self.config.offline_sigma,
        );
        self.push(self.now + off, Event::Join(node));
    }

    fn join(&mut self, node: u32) {
        self.rejoins += 1;
        let now = self.now;
        self.bring_up(node, now);
        let session = log_normal(
            &mut self.rng,
            self.config.session_median,
            self.config.session_sigma,
        );
        self.push(now + session, Event::Leave(node));
    }

    fn sample(&mut self) {
        let mut sample = Sample {
            minute: self.now.since(self.start_time()).as_secs() / 60,
            online: 0,
            supernodes: 0,
            leaves: 0,
            sessions: 0,
            covered: 0,
            served: 0,
            under_target: 0,
            refusals: std::mem::take(&mut self.refusals),
            promotions: self.promotions,
            demotions: self.demotions,
        };
        for n in &self.nodes {
            if !n.online {
                continue;
            }
            sample.online += 1;
            if n.is_supernode() {
                sample.supernodes += 1;
                sample.sessions += n.held.len();
                if (n.held.len() as f64) < self.config.target.0 {
                    sample.under_target += 1;
                }
            } else {
                sample.leaves += 1;
                if !n.parents.is_empty() {
                    sample.covered += 1;
                }
                if n.parents.len() >= self.config.sessions_per_leaf {
                    sample.served += 1;
                }
            }
        }
        self.samples.push(sample);
        let next = self.now + Duration::from_secs(60);
        if next <= self.end {
            self.push(next, Event::Sample);
        }
    }

    fn run(mut self) -> ElectionReport {
        let start = self.now;
        for node in 0..self.nodes.len() as u32 {
            if self.nodes[node as usize].seed {
                self.bring_up(node, start);
                continue;
            }
            // Every node is online at the start, a uniform share into a
            // session drawn length-biased enough to have long-up nodes.
            let session = log_normal(
                &mut self.rng,
                self.config.session_median,
                self.config.session_sigma,
            );
            let into = Duration::from_secs_f64(session.as_secs_f64() * self.rng.unit());
            let since = Time(start.0.saturating_sub(ms(into)));
            self.bring_up(node, since);
            self.push(start + (session - into), Event::Leave(node));
        }
        let capable_at_start = self
            .nodes
            .iter()
            .filter_map(|n| n.election.as_ref())
            .filter(|e| e.capable(start).is_ok())
            .count();
        self.push(start, Event::Sample);
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at > self.end {
                break;
            }
            self.now = at;
            match event {
                Event::Sample => self.sample(),
                Event::Wake(node) => self.wake(node),
                Event::Dial {
                    leaf,
                    supernode,
                    epoch,
                } => self.dial(leaf, supernode, epoch),
                Event::Leave(node) => self.leave(node),
                Event::Join(node) => self.join(node),
            }
        }
        let flapped = self.nodes.iter().filter(|n| n.flapped).count();
        let switched = self.nodes.iter().filter(|n| n.switched).count();
        ElectionReport {
            config: self.config,
            samples: self.samples,
            flapped,
            switched,
            min_switch_spacing: self.min_spacing,
            rejoins: self.rejoins,
            capable_at_start,
        }
    }
}

/// Runs the population for `config.duration` and reports.
pub fn run(config: &ElectionSimConfig) -> ElectionReport {
    World::new(config).run()
}
