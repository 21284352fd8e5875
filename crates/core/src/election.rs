//! Automatic supernode election: when a node that runs as a leaf should
//! promote itself to a supernode, and when a supernode it became should step
//! down again (issue 12).
//!
//! Two questions, asked every [`ElectionConfig::evaluate_every`] (jittered
//! by the injected generator so a crowd of leaves doesn't promote at once):
//!
//! - **Capable?** After LimeWire's ultrapeer criteria: not firewalled (the
//!   connect-back verdict of [`crate::reachability`] is `Yes`), up long
//!   enough (1 h), upload and download rates seen of at least 10 KB/s and
//!   20 KB/s, and, after gtk-gnutella's budget of 256 KiB per leaf, the
//!   memory to hold a supernode's worth of leaves.
//! - **Needed?** Leaves are being refused as full (our own leaf's dials
//!   answered `REJECT_REASON_FULL`, [`Election::handle_refused_full`]) while
//!   the supernodes we know advertise few free leaf slots
//!   ([`Election::handle_free_slots`], from `Pong`s and `HelloReply`s).
//!
//! A capable, needed leaf promotes. A supernode steps down when supernodes
//! are plentiful (the others advertise at least
//! [`ElectionConfig::plenty_free_slots`] free slots, and at least as many
//! as the leaves it holds) and it has held few leaves
//! ([`ElectionConfig::few_leaves`] or fewer) for a long time (1 h, as
//! gtk-gnutella steps down an ultrapeer without leaves for an hour); it also
//! steps down when it stops being reachable. Stepping down hands the leaves
//! a try-list of the supernodes with the most free slots, so no leaf is left
//! without a supernode to go to. Mode switches are at least
//! [`ElectionConfig::switch_spacing`] apart (30 min, gtk-gnutella's rule),
//! whatever the signals say.
//!
//! I/O-free and deterministic: no clock (time comes in), no I/O, randomness
//! only from the [`SplitMix64`] passed in. The driver calls
//! [`Election::handle_timeout`] at [`Election::poll_timeout`] and carries
//! out what [`Election::poll_action`] returns.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::Time;
use crate::reachability::Reachable;
use crate::rng::SplitMix64;

/// At most this many supernodes' advertised free slots are remembered; a
/// newcomer beyond replaces the stalest.
const MAX_KNOWN_SUPERNODES: usize = 256;

/// At most this many recent refusals are remembered (more say nothing
/// more).
const MAX_REFUSALS: usize = 64;

/// At most this many supernodes go in a step-down's try-list (the wire's
/// limit for `try_supernodes`).
pub const MAX_TRY_LIST: usize = 32;

/// The policy's settings. Defaults are the anchors' (see the fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Uptime before a node may promote. LimeWire asks 1-2 h of uptime of
    /// an ultrapeer candidate; default 1 h.
    pub min_uptime: Duration,
    /// Upload rate (bytes a second) the node must have been seen to reach.
    /// LimeWire: upstream >= 10 KB/s.
    pub min_upload_rate: u64,
    /// Download rate (bytes a second) the node must have been seen to
    /// reach. LimeWire: downstream >= 20 KB/s.
    pub min_download_rate: u64,
    /// Memory (bytes) available for leaves. gtk-gnutella budgets 256 KiB a
    /// leaf; default room for 300 leaves (its default maximum), 75 MiB.
    pub min_memory: u64,
    /// Mode switches are at least this far apart (gtk-gnutella: 30 min).
    pub switch_spacing: Duration,
    /// How often the policy looks again (jittered by up to a quarter either
    /// way). Default 1 min.
    pub evaluate_every: Duration,
    /// Refusals as full counted for the need are this recent. Default 10 min.
    pub need_window: Duration,
    /// Refusals as full within `need_window` that make a need. Default 1:
    /// a leaf turned away is a leaf the network has no room for.
    pub refusals_to_promote: u32,
    /// Known free leaf slots at or below which the network is short of
    /// supernodes (a refusal says nothing if others have room). LimeWire
    /// keeps 10% of its 30-40 leaf slots back; default 4.
    pub scarce_free_slots: u64,
    /// Advertised free slots are forgotten after this long without news.
    /// Default 10 min.
    pub free_slots_ttl: Duration,
    /// A supernode with this many leaves or fewer holds "few". Default 2.
    pub few_leaves: usize,
    /// A supernode steps down after holding few leaves this long
    /// (gtk-gnutella: an ultrapeer with no leaves for 1 h steps down).
    pub idle_for: Duration,
    /// Free slots the other supernodes must advertise, together, before
    /// this one may step down (and at least as many as it holds leaves).
    /// Default 30, a LimeWire ultrapeer's worth of leaves.
    pub plenty_free_slots: u64,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            min_uptime: Duration::from_secs(60 * 60),
            min_upload_rate: 10_000,
            min_download_rate: 20_000,
            min_memory: 300 * 256 * 1024,
            switch_spacing: Duration::from_secs(30 * 60),
            evaluate_every: Duration::from_secs(60),
            need_window: Duration::from_secs(10 * 60),
            refusals_to_promote: 1,
            scarce_free_slots: 4,
            free_slots_ttl: Duration::from_secs(10 * 60),
            few_leaves: 2,
            idle_for: Duration::from_secs(60 * 60),
            plenty_free_slots: 30,
        }
    }
}

/// What the node runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A leaf only.
    Leaf,
    /// A supernode (the node's own leaf keeps running beside it).
    Supernode,
}

/// Why a node is not capable of being a supernode, the first rule failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incapable {
    /// The connect-back verdict is not `Yes` (firewalled or unknown).
    NotReachable,
    /// Up for less than `min_uptime`.
    Uptime,
    /// Upload rate seen below `min_upload_rate`.
    UploadRate,
    /// Download rate seen below `min_download_rate`.
    DownloadRate,
    /// Memory available unknown or below `min_memory`.
    Memory,
}

impl Incapable {
    /// A short name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Incapable::NotReachable => "not reachable",
            Incapable::Uptime => "uptime",
            Incapable::UploadRate => "upload rate",
            Incapable::DownloadRate => "download rate",
            Incapable::Memory => "memory",
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionAction {
    /// Start a supernode beside the leaf and make it known.
    Promote,
    /// Stop the supernode, first telling its leaves to go to `try_list`
    /// (most free slots first, at most [`MAX_TRY_LIST`]).
    Demote {
        /// Supernodes with room for the leaves.
        try_list: Vec<SocketAddr>,
    },
}

/// What the policy sees, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionStatus {
    /// The node's mode.
    pub mode: Mode,
    /// `Ok` if capable, else the first rule failed.
    pub capable: Result<(), Incapable>,
    /// The network needs another supernode.
    pub needed: bool,
    /// Free leaf slots the known supernodes advertise, together.
    pub free_slots_known: u64,
    /// Refusals as full within the need window.
    pub recent_refusals: usize,
}

/// The election policy of one node.
#[derive(Debug)]
pub struct Election {
    config: ElectionConfig,
    mode: Mode,
    started: Time,
    last_switch: Option<Time>,
    reachable: Reachable,
    upload_rate: u64,
    download_rate: u64,
    memory: Option<u64>,
    refusals: VecDeque<Time>,
    free_slots: BTreeMap<SocketAddr, (u64, Time)>,
    leaves: usize,
    few_since: Option<Time>,
    next_eval: Time,
    rng: SplitMix64,
    pending: Option<ElectionAction>,
}

impl Election {
    /// A node that starts as a leaf at `now`.
    pub fn new(config: ElectionConfig, now: Time, rng: SplitMix64) -> Self {
        let mut election = Self {
            config,
            mode: Mode::Leaf,
            started: now,
            last_switch: None,
            reachable: Reachable::Unknown,
            upload_rate: 0,
            download_rate: 0,
            memory: None,
            refusals: VecDeque::new(),
            free_slots: BTreeMap::new(),
            leaves: 0,
            few_since: None,
            next_eval: now,
            rng,
            pending: None,
        };
        election.schedule(now);
        election
    }

    /// The settings.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// The node's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The leaf's connect-back verdict changed.
    pub fn handle_reachability(&mut self, reachable: Reachable) {
        self.reachable = reachable;
    }

    /// Transfer rates (bytes a second) seen lately; the best seen is kept.
    pub fn handle_rates(&mut self, upload: u64, download: u64) {
        self.upload_rate = self.upload_rate.max(upload);
        self.download_rate = self.download_rate.max(download);
    }

    /// Memory available (bytes), as last measured.
    pub fn handle_memory(&mut self, available: u64) {
        self.memory = Some(available);
    }

    /// Our leaf's dial was refused by a supernode as full.
    pub fn handle_refused_full(&mut self, now: Time) {
        if self.refusals.len() == MAX_REFUSALS {
            self.refusals.pop_front();
        }
        self.refusals.push_back(now);
    }

    /// `supernode` advertised `free` leaf slots (in a `Pong` or a
    /// `HelloReply`). The driver leaves our own supernode out.
    pub fn handle_free_slots(&mut self, supernode: SocketAddr, free: u64, now: Time) {
        if !self.free_slots.contains_key(&supernode)
            && self.free_slots.len() >= MAX_KNOWN_SUPERNODES
        {
            let stalest = self
                .free_slots
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(addr, _)| *addr);
            if let Some(addr) = stalest {
                self.free_slots.remove(&addr);
            }
        }
        self.free_slots.insert(supernode, (free, now));
    }

    /// While a supernode: it now holds `leaves` leaves.
    pub fn handle_leaves(&mut self, leaves: usize, now: Time) {
        self.leaves = leaves;
        if leaves > self.config.few_leaves {
            self.few_since = None;
        } else if self.few_since.is_none() && self.mode == Mode::Supernode {
            self.few_since = Some(now);
        }
    }

    /// When to call [`Election::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Time {
        self.next_eval
    }

    /// Looks again if it is time; a decision waits in
    /// [`Election::poll_action`].
    pub fn handle_timeout(&mut self, now: Time) {
        if now < self.next_eval {
            return;
        }
        self.schedule(now);
        self.expire(now);
        if self.pending.is_some() || !self.may_switch(now) {
            return;
        }
        match self.mode {
            Mode::Leaf => {
                if self.capable(now).is_ok() && self.needed(now) {
                    self.switch(Mode::Supernode, now);
                    self.pending = Some(ElectionAction::Promote);
                }
            }
            Mode::Supernode => {
                let unreachable = self.reachable == Reachable::No;
                if unreachable || self.idle_and_plentiful(now) {
                    let try_list = self.try_list();
                    self.switch(Mode::Leaf, now);
                    self.pending = Some(ElectionAction::Demote { try_list });
                }
            }
        }
    }

    /// The decision to carry out, once.
    pub fn poll_action(&mut self) -> Option<ElectionAction> {
        self.pending.take()
    }

    /// What the policy sees at `now`.
    pub fn status(&self, now: Time) -> ElectionStatus {
        ElectionStatus {
            mode: self.mode,
            capable: self.capable(now),
            needed: self.needed(now),
            free_slots_known: self.free_slots_known(now),
            recent_refusals: self.recent_refusals(now),
        }
    }

    /// `Ok` if the node may be a supernode, else the first rule it fails.
    pub fn capable(&self, now: Time) -> Result<(), Incapable> {
        if self.reachable != Reachable::Yes {
            return Err(Incapable::NotReachable);
        }
        if now.since(self.started) < self.config.min_uptime {
            return Err(Incapable::Uptime);
        }
        if self.upload_rate < self.config.min_upload_rate {
            return Err(Incapable::UploadRate);
        }
        if self.download_rate < self.config.min_download_rate {
            return Err(Incapable::DownloadRate);
        }
        match self.memory {
            Some(memory) if memory >= self.config.min_memory => Ok(()),
            None if self.config.min_memory == 0 => Ok(()),
            _ => Err(Incapable::Memory),
        }
    }

    /// The network needs another supernode: leaves refused as full lately
    /// and few free slots known elsewhere.
    pub fn needed(&self, now: Time) -> bool {
        let refused = self.recent_refusals(now) as u64;
        refused >= u64::from(self.config.refusals_to_promote.max(1))
            && self.free_slots_known(now) <= self.config.scarce_free_slots
    }

    fn recent_refusals(&self, now: Time) -> usize {
        self.refusals
            .iter()
            .filter(|at| now.since(**at) <= self.config.need_window)
            .count()
    }

    fn free_slots_known(&self, now: Time) -> u64 {
        self.free_slots
            .values()
            .filter(|(_, heard)| now.since(*heard) <= self.config.free_slots_ttl)
            .map(|(free, _)| *free)
            .fold(0u64, u64::saturating_add)
    }

    fn idle_and_plentiful(&self, now: Time) -> bool {
        let idle = self
            .few_since
            .is_some_and(|since| now.since(since) >= self.config.idle_for);
        let free = self.free_slots_known(now);
        idle && free >= self.config.plenty_free_slots && free >= self.leaves as u64
    }

    fn may_switch(&self, now: Time) -> bool {
        self.last_switch
            .is_none_or(|at| now.since(at) >= self.config.switch_spacing)
    }

    fn switch(&mut self, mode: Mode, now: Time) {
        self.mode = mode;
        self.last_switch = Some(now);
        self.few_since = match mode {
            Mode::Supernode => Some(now),
            Mode::Leaf => None,
        };
        if mode == Mode::Supernode {
            // A new supernode starts with no leaves.
            self.leaves = 0;
        }
    }

    /// Supernodes with free slots, most first (address order among equals,
    /// so the list is deterministic).
    fn try_list(&self) -> Vec<SocketAddr> {
        let mut known: Vec<(u64, SocketAddr)> = self
            .free_slots
            .iter()
            .filter(|(_, (free, _))| *free > 0)
            .map(|(addr, (free, _))| (*free, *addr))
            .collect();
        known.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        known
            .into_iter()
            .take(MAX_TRY_LIST)
            .map(|(_, addr)| addr)
            .collect()
    }

    fn expire(&mut self, now: Time) {
        while self
            .refusals
            .front()
            .is_some_and(|at| now.since(*at) > self.config.need_window)
        {
            self.refusals.pop_front();
        }
        let ttl = self.config.free_slots_ttl;
        self.free_slots
            .retain(|_, (_, heard)| now.since(*heard) <= ttl);
    }

    /// The next evaluation: `evaluate_every` from `now`, give or take a
    /// quarter, drawn from the injected generator.
    fn schedule(&mut self, now: Time) {
        let every = u64::try_from(self.config.evaluate_every.as_millis()).unwrap_or(u64::MAX);
        let quarter = every / 4;
        let jitter = self.rng.below(quarter.saturating_mul(2).saturating_add(1));
        let delay = every.saturating_sub(quarter).saturating_add(jitter).max(1);
        self.next_eval = Time(now.0.saturating_add(delay));
    }
}

#[cfg(test)]
mod tests;
