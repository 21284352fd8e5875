//! A leaf's set of supernodes as a state machine: how many sessions it
//! keeps (two for a long-running leaf, so losing one loses no search
//! coverage), whom it dials (candidates the host cache offers, passing
//! over open sessions, supernodes it is joined to at another address and
//! those backing off; a dual-stack leaf's second session in the family
//! its first is not in), replacing a lost session (per-address backoff
//! with jitter from an injected [`SplitMix64`], reset by a session that
//! lasted), when to ask the DNS seeds again, publishing to every session
//! and searching through one ([`LeafSet::search_via`]), and its next
//! deadline ([`LeafSet::poll_timeout`]). The leaf's tokio coordinator and
//! the simulator drive the same machine.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use canopy_proto::NodeId;

use crate::Time;
use crate::backoff::Retries;
use crate::discovery::Candidates;
use crate::family::{Family, missing_family};
use crate::rng::SplitMix64;
use crate::seeding::Seeding;

/// What the leaf's set wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafSetAction {
    /// Open a session with the supernode at this address; report its
    /// handshake with [`LeafSet::handle_ready`] and its end with
    /// [`LeafSet::handle_ended`].
    Open(SocketAddr),
    /// Resolve the bootstrap names (DNS seeds) and offer what they name
    /// as candidates; report back with [`LeafSet::handle_resolved`].
    Resolve,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// We are shutting down.
    Shutdown,
    /// The supernode could not be reached (or the handshake failed).
    Unreachable,
    /// It closed after `lasted`.
    Closed {
        /// How long the session lasted.
        lasted: Duration,
    },
    /// It refused us (full, say): an answer, not a failure to reach.
    Rejected,
}

/// The set's settings.
#[derive(Debug, Clone)]
pub struct LeafSetConfig {
    /// Sessions to keep open (or opening).
    pub wanted: usize,
    /// We listen on both families: a second session goes to the family
    /// the first is not in, when a candidate is there.
    pub dual_stack: bool,
    /// First backoff of a supernode whose session ended; doubles up to
    /// `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// A session that lasted this long resets its supernode's backoff.
    pub stable_session: Duration,
    /// Supernodes whose backoff is remembered.
    pub max_retries: usize,
    /// There are bootstrap names to resolve.
    pub bootstrap: bool,
    /// They are resolved again at most this often, when no one is left.
    pub resolve_interval: Duration,
}

impl LeafSetConfig {
    /// The real leaf's defaults, keeping `wanted` sessions.
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted,
            dual_stack: false,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            stable_session: Duration::from_secs(30),
            max_retries: 2048,
            bootstrap: false,
            resolve_interval: Duration::from_secs(30),
        }
    }
}

/// Sessions a leaf holds, whatever is asked.
const MAX_SESSIONS: usize = 16;
/// LAN supernodes' ids remembered.
const MAX_LAN_IDS: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
struct Member {
    ready: bool,
    node_id: Option<NodeId>,
}

/// The leaf's supernode set. See the module documentation.
#[derive(Debug)]
pub struct LeafSet {
    config: LeafSetConfig,
    rng: SplitMix64,
    sessions: BTreeMap<SocketAddr, Member>,
    retries: Retries,
    /// The node ids of supernodes heard on the LAN, by address: one we
    /// are joined to at another address is not dialed again.
    lan_ids: BTreeMap<SocketAddr, NodeId>,
    /// The bootstrap names, and whether candidates ran dry.
    seeding: Seeding,
    actions: VecDeque<LeafSetAction>,
}

impl LeafSet {
    /// A set with `config`, its jitter and choices drawn from `rng`.
    pub fn new(config: LeafSetConfig, rng: SplitMix64) -> Self {
        let retries = Retries::new(
            config.backoff_initial,
            config.backoff_max,
            config.max_retries,
        );
        let seeding = Seeding::new(config.bootstrap, config.resolve_interval);
        Self {
            config,
            rng,
            sessions: BTreeMap::new(),
            retries,
            lan_ids: BTreeMap::new(),
            seeding,
            actions: VecDeque::new(),
        }
    }

    fn wanted(&self) -> usize {
        self.config.wanted.min(MAX_SESSIONS)
    }

    /// The supernodes heard on the LAN now, with their node ids.
    pub fn set_lan_ids(&mut self, ids: impl IntoIterator<Item = (SocketAddr, NodeId)>) {
        self.lan_ids = ids.into_iter().take(MAX_LAN_IDS).collect();
        self.seeding.fed();
    }

    /// New candidates may be on offer (learned, heard on the LAN): look
    /// again at the next timeout.
    pub fn handle_candidates(&mut self) {
        self.seeding.fed();
    }

    /// The bootstrap names were resolved.
    pub fn handle_resolved(&mut self, now: Time) {
        self.seeding.resolved(now);
    }

    /// The session with `addr` completed its handshake with `node_id`.
    pub fn handle_ready(&mut self, addr: SocketAddr, node_id: NodeId) {
        if let Some(member) = self.sessions.get_mut(&addr) {
            member.ready = true;
            member.node_id = Some(node_id);
            self.retries.forget(addr);
        }
    }

    /// The session with `addr` ended; it is replaced, and `addr` backs
    /// off (from the start again if the session lasted). Returns whether
    /// the end counts against the address in the host cache: it never
    /// joined and did not refuse us.
    pub fn handle_ended(&mut self, addr: SocketAddr, end: SessionEnd, now: Time) -> bool {
        let joined = self.sessions.remove(&addr).is_some_and(|m| m.ready);
        self.seeding.fed();
        if end == SessionEnd::Shutdown {
            return false;
        }
        if let SessionEnd::Closed { lasted } = end {
            if lasted > self.config.stable_session {
                self.retries.reset(addr);
            }
        }
        self.retries.defer(addr, now, &mut self.rng);
        !joined && end != SessionEnd::Rejected
    }

    /// True while `addr` is not to be dialed.
    pub fn skips(&self, addr: SocketAddr, now: Time) -> bool {
        let joined_elsewhere = self.lan_ids.get(&addr).is_some_and(|id| {
            self.sessions
                .values()
                .any(|member| member.node_id == Some(*id))
        });
        self.sessions.contains_key(&addr) || joined_elsewhere || self.retries.is_waiting(addr, now)
    }

    /// Does what is due at `now`: the first resolution of the bootstrap
    /// names, sessions opened until the wanted number are open or
    /// opening, a new resolution when no one is left to dial.
    pub fn handle_timeout(&mut self, now: Time, candidates: &mut dyn Candidates) {
        if self.seeding.first_due() {
            self.resolve(now);
        }
        while self.sessions.len() < self.wanted() {
            let wanted_family = self
                .config
                .dual_stack
                .then(|| missing_family(self.sessions.keys().copied()))
                .flatten();
            let random = self.rng.next_u64();
            let next = wanted_family
                .and_then(|family| {
                    candidates.select(random, &|addr| {
                        self.skips(addr, now) || Family::of(addr) != family
                    })
                })
                .or_else(|| candidates.select(random, &|addr| self.skips(addr, now)));
            let Some(addr) = next else {
                if self.seeding.starve(now) {
                    self.actions.push_back(LeafSetAction::Resolve);
                }
                return;
            };
            self.sessions.insert(addr, Member::default());
            self.actions.push_back(LeafSetAction::Open(addr));
        }
    }

    fn resolve(&mut self, now: Time) {
        self.seeding.start(now);
        self.actions.push_back(LeafSetAction::Resolve);
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<LeafSetAction> {
        self.actions.pop_front()
    }

    /// When [`LeafSet::handle_timeout`] has something to do next: `None`
    /// with every session open (an end changes that); with no candidate
    /// at the last look, the end of the soonest backoff or the next
    /// resolution; else now.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.seeding.first_due() {
            return Some(Time::ZERO);
        }
        if self.sessions.len() >= self.wanted() {
            return None;
        }
        let Some(starved) = self.seeding.starved() else {
            return Some(Time::ZERO);
        };
        let resolve = self.seeding.next_resolve();
        [resolve, self.retries.next_expiry(starved)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Every session, open or opening: what the leaf publishes to.
    pub fn sessions(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.sessions.keys().copied()
    }

    /// The sessions whose handshake completed, in address order.
    pub fn ready(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.sessions
            .iter()
            .filter(|(_, member)| member.ready)
            .map(|(addr, _)| *addr)
    }

    /// The one session searches and pushes go through: the first ready.
    pub fn search_via(&self) -> Option<SocketAddr> {
        self.ready().next()
    }

    /// For a leaf that does not reconnect: is anything open, opening,
    /// being resolved, or among `known` not tried yet?
    pub fn has_prospects(&self, known: impl IntoIterator<Item = SocketAddr>) -> bool {
        !self.sessions.is_empty()
            || self.seeding.resolving()
            || known.into_iter().any(|addr| !self.retries.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 6346))
    }

    fn id(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    struct List(Vec<SocketAddr>);

    impl Candidates for List {
        fn select(
            &mut self,
            _random: u64,
            skip: &dyn Fn(SocketAddr) -> bool,
        ) -> Option<SocketAddr> {
            self.0.iter().copied().find(|a| !skip(*a))
        }
    }

    fn opened(set: &mut LeafSet) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        while let Some(action) = set.poll_action() {
            if let LeafSetAction::Open(a) = action {
                out.push(a);
            }
        }
        out
    }

    #[test]
    fn opens_the_wanted_number_and_searches_through_one() {
        let mut set = LeafSet::new(LeafSetConfig::new(2), SplitMix64::new(1));
        let mut list = List((1..=5).map(addr).collect());
        assert_eq!(set.poll_timeout(), Some(Time::ZERO));
        set.handle_timeout(Time(0), &mut list);
        assert_eq!(opened(&mut set), vec![addr(1), addr(2)]);
        assert_eq!(set.poll_timeout(), None);
        set.handle_timeout(Time(10), &mut list);
        assert!(opened(&mut set).is_empty(), "not more than wanted");
        assert_eq!(set.search_via(), None, "none ready yet");
        set.handle_ready(addr(2), id(2));
        assert_eq!(set.search_via(), Some(addr(2)));
        set.handle_ready(addr(1), id(1));
        assert_eq!(set.search_via(), Some(addr(1)));
        assert_eq!(set.sessions().collect::<Vec<_>>(), vec![addr(1), addr(2)]);
    }

    #[test]
    fn a_lost_parent_is_replaced_and_backs_off() {
        let mut set = LeafSet::new(LeafSetConfig::new(2), SplitMix64::new(3));
        let mut list = List(vec![addr(1), addr(2), addr(3)]);
        set.handle_timeout(Time(0), &mut list);
        assert_eq!(opened(&mut set), vec![addr(1), addr(2)]);
        set.handle_ready(addr(1), id(1));
        set.handle_ready(addr(2), id(2));
        let counts = set.handle_ended(
            addr(1),
            SessionEnd::Closed {
                lasted: Duration::from_secs(5),
            },
            Time(1000),
        );
        assert!(!counts, "it had joined");
        assert_eq!(set.poll_timeout(), Some(Time::ZERO), "a replacement is due");
        set.handle_timeout(Time(1000), &mut list);
        assert_eq!(opened(&mut set), vec![addr(3)], "not the one just lost");
        assert_eq!(set.search_via(), Some(addr(2)));
        // The third never answers: counted, and with no one left the next
        // look is when the first's backoff ends.
        assert!(set.handle_ended(addr(3), SessionEnd::Unreachable, Time(1100)));
        set.handle_timeout(Time(1100), &mut list);
        assert!(opened(&mut set).is_empty());
        let due = set.poll_timeout().unwrap();
        assert!(
            due >= Time(1250) && due <= Time(1500),
            "addr 1 waits 250-500 ms: {due:?}"
        );
        set.handle_timeout(due - Duration::from_millis(1), &mut list);
        assert!(opened(&mut set).is_empty(), "not before its deadline");
        set.handle_timeout(due, &mut list);
        assert_eq!(opened(&mut set), vec![addr(1)]);
        // A refusal is an answer, not a failure to reach.
        assert!(!set.handle_ended(addr(1), SessionEnd::Rejected, due));
    }

    #[test]
    fn a_session_that_joined_starts_its_backoff_afresh() {
        let config = LeafSetConfig::new(1);
        let mut set = LeafSet::new(config, SplitMix64::new(4));
        let mut list = List(vec![addr(1)]);
        let mut now = Time(0);
        let mut waits = Vec::new();
        for _ in 0..5 {
            set.handle_timeout(now, &mut list);
            assert_eq!(opened(&mut set), vec![addr(1)]);
            set.handle_ready(addr(1), id(1));
            let lasted = Duration::from_secs(1);
            now = now + lasted;
            set.handle_ended(addr(1), SessionEnd::Closed { lasted }, now);
            set.handle_timeout(now, &mut list);
            assert!(opened(&mut set).is_empty(), "backing off");
            let due = set.poll_timeout().unwrap();
            waits.push(due.0 - now.0);
            now = due;
        }
        // handle_ready forgets the backoff: each short session starts again.
        assert!(waits.iter().all(|w| (250..=500).contains(w)), "{waits:?}");
    }

    #[test]
    fn a_session_that_lasted_resets_the_backoff_a_short_one_does_not() {
        let mut set = LeafSet::new(LeafSetConfig::new(1), SplitMix64::new(5));
        let mut list = List(vec![addr(1)]);
        let mut now = Time(0);
        let mut wait_after = |set: &mut LeafSet, end: SessionEnd, now: &mut Time| {
            set.handle_timeout(*now, &mut list);
            assert_eq!(opened(set), vec![addr(1)]);
            set.handle_ended(addr(1), end, *now);
            set.handle_timeout(*now, &mut list);
            let due = set.poll_timeout().unwrap();
            let wait = due.0 - now.0;
            *now = due;
            wait
        };
        for _ in 0..3 {
            wait_after(&mut set, SessionEnd::Unreachable, &mut now);
        }
        let short = Duration::from_secs(1);
        let wait = wait_after(&mut set, SessionEnd::Closed { lasted: short }, &mut now);
        assert!((2_000..=4_000).contains(&wait), "grown on: {wait}");
        let long = Duration::from_secs(31);
        let wait = wait_after(&mut set, SessionEnd::Closed { lasted: long }, &mut now);
        assert!((250..=500).contains(&wait), "reset: {wait}");
    }

    #[test]
    fn backoff_grows_for_a_supernode_that_never_answers() {
        let mut set = LeafSet::new(LeafSetConfig::new(1), SplitMix64::new(8));
        let mut list = List(vec![addr(1)]);
        let mut now = Time(0);
        let mut waits = Vec::new();
        for _ in 0..6 {
            set.handle_timeout(now, &mut list);
            assert_eq!(opened(&mut set), vec![addr(1)]);
            assert!(set.handle_ended(addr(1), SessionEnd::Unreachable, now));
            set.handle_timeout(now, &mut list);
            let due = set.poll_timeout().unwrap();
            waits.push(due.0 - now.0);
            now = due;
        }
        for (i, wait) in waits.iter().enumerate() {
            let full = 500u64 << i;
            assert!(*wait >= full / 2 && *wait <= full, "{i}: {waits:?}");
        }
    }

    #[test]
    fn a_dual_stack_leaf_opens_its_second_session_in_the_other_family() {
        let v6 = SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, 9], 6346));
        let mut set = LeafSet::new(
            LeafSetConfig {
                dual_stack: true,
                ..LeafSetConfig::new(2)
            },
            SplitMix64::new(1),
        );
        let mut list = List(vec![addr(1), addr(2), v6]);
        set.handle_timeout(Time(0), &mut list);
        assert_eq!(opened(&mut set), vec![addr(1), v6]);
    }

    #[test]
    fn a_supernode_joined_at_another_address_is_not_dialed_again() {
        let mut set = LeafSet::new(LeafSetConfig::new(2), SplitMix64::new(1));
        let lan = SocketAddr::from(([192, 168, 1, 5], 6346));
        set.set_lan_ids([(lan, id(1))]);
        let mut list = List(vec![addr(1)]);
        set.handle_timeout(Time(0), &mut list);
        assert_eq!(opened(&mut set), vec![addr(1)]);
        set.handle_ready(addr(1), id(1));
        list.0.push(lan);
        set.handle_candidates();
        set.handle_timeout(Time(1), &mut list);
        assert!(opened(&mut set).is_empty());
    }

    #[test]
    fn one_shot_prospects_and_bootstrap() {
        let mut set = LeafSet::new(
            LeafSetConfig {
                bootstrap: true,
                ..LeafSetConfig::new(1)
            },
            SplitMix64::new(1),
        );
        let mut list = List(Vec::new());
        set.handle_timeout(Time(0), &mut list);
        assert_eq!(set.poll_action(), Some(LeafSetAction::Resolve));
        assert_eq!(set.poll_action(), None, "one resolution at a time");
        assert!(set.has_prospects([]), "resolving");
        set.handle_resolved(Time(100));
        assert!(!set.has_prospects([]));
        assert!(set.has_prospects([addr(1)]), "untried");
        list.0.push(addr(1));
        set.handle_timeout(Time(100), &mut list);
        assert_eq!(set.poll_action(), Some(LeafSetAction::Open(addr(1))));
        set.handle_ended(addr(1), SessionEnd::Unreachable, Time(200));
        assert!(!set.has_prospects([addr(1)]), "tried and failed");
        // No one left: the names again once the interval has passed.
        list.0.clear();
        set.handle_timeout(Time(200), &mut list);
        assert_eq!(set.poll_action(), None);
        assert!(set.poll_timeout().unwrap() <= Time(30_100));
        set.handle_timeout(Time(30_099), &mut list);
        assert_eq!(set.poll_action(), None, "not before the interval");
        set.handle_timeout(Time(30_100), &mut list);
        let actions: Vec<_> = std::iter::from_fn(|| set.poll_action()).collect();
        assert!(actions.contains(&LeafSetAction::Resolve), "{actions:?}");
    }

    #[test]
    fn the_same_seed_replaces_the_same_way() {
        struct Random(Vec<SocketAddr>);
        impl Candidates for Random {
            fn select(
                &mut self,
                random: u64,
                skip: &dyn Fn(SocketAddr) -> bool,
            ) -> Option<SocketAddr> {
                let left: Vec<SocketAddr> = self.0.iter().copied().filter(|a| !skip(*a)).collect();
                let i = SplitMix64::new(random).below(left.len() as u64);
                left.get(usize::try_from(i).unwrap_or(0)).copied()
            }
        }
        let trace = |seed| {
            let mut set = LeafSet::new(LeafSetConfig::new(2), SplitMix64::new(seed));
            let mut list = Random((1..=40).map(addr).collect());
            let mut now = Time(0);
            let mut out = Vec::new();
            for _ in 0..30 {
                set.handle_timeout(now, &mut list);
                for a in opened(&mut set) {
                    out.push((now, a));
                    set.handle_ended(a, SessionEnd::Unreachable, now);
                }
                now = set
                    .poll_timeout()
                    .unwrap_or(now + Duration::from_secs(1))
                    .max(now + Duration::from_millis(1));
            }
            out
        };
        assert_eq!(trace(1), trace(1));
        assert_ne!(trace(1), trace(2));
    }
}
