//! A supernode's peer discovery as a state machine: how many supernode
//! peers it wants, whom it dials next (a candidate the host cache offers,
//! passing over those connected, being dialed, configured elsewhere or
//! backing off), per-address backoff with jitter from an injected
//! [`SplitMix64`], when to ask the DNS seeds again, and the next deadline
//! ([`Discovery::poll_timeout`]). The tokio driver and the simulator feed
//! it the same events and carry out the same [`DiscoveryAction`]s.
//!
//! Where candidates come from is the caller's [`Candidates`]: the real
//! node's host cache (the core's [`crate::addrman::AddrMan`], seeds and
//! LAN supernodes first), or the simulator's table of supernodes.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::Time;
use crate::backoff::Retries;
use crate::rng::SplitMix64;
use crate::seeding::Seeding;

/// Offers whom to dial: the first acceptable candidate, passing over what
/// `skip` names; `random` picks among equals.
pub trait Candidates {
    /// A candidate not skipped, if any.
    fn select(&mut self, random: u64, skip: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr>;
}

/// What discovery wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryAction {
    /// Dial this supernode; report back with
    /// [`Discovery::handle_dial_ended`] once the dial failed or its
    /// connection closed.
    Dial(SocketAddr),
    /// Resolve the bootstrap names (DNS seeds) and offer what they name
    /// as candidates; report back with [`Discovery::handle_resolved`].
    Resolve,
}

/// Discovery's settings.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Supernode peers to keep (connected plus being dialed).
    pub peers_wanted: usize,
    /// At most one dial this often.
    pub dial_interval: Duration,
    /// First backoff of an address dialed; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Addresses whose backoff is remembered.
    pub max_backoffs: usize,
    /// There are bootstrap names to resolve.
    pub bootstrap: bool,
    /// They are resolved again at most this often, when no one is left
    /// to dial.
    pub resolve_interval: Duration,
    /// Never dialed by discovery (configured peers with their own
    /// dialers, our own address).
    pub excluded: Vec<SocketAddr>,
}

impl DiscoveryConfig {
    /// The real node's defaults, wanting `peers_wanted` peers.
    pub fn new(peers_wanted: usize) -> Self {
        Self {
            peers_wanted,
            dial_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_backoffs: 2048,
            bootstrap: false,
            resolve_interval: Duration::from_secs(60),
            excluded: Vec::new(),
        }
    }
}

/// Connections we hold or dial are bounded by this, whatever is asked.
const MAX_PEERS_TRACKED: usize = 4096;

/// The peer discovery machine. See the module documentation.
#[derive(Debug)]
pub struct Discovery {
    config: DiscoveryConfig,
    rng: SplitMix64,
    /// Supernodes connected (either direction), by listen address.
    connected: BTreeSet<SocketAddr>,
    /// Dials of ours not ended yet.
    dialing: BTreeSet<SocketAddr>,
    retries: Retries,
    last_dial: Option<Time>,
    /// The bootstrap names, and whether candidates ran dry.
    seeding: Seeding,
    actions: VecDeque<DiscoveryAction>,
}

impl Discovery {
    /// A machine with `config`, its jitter and choices drawn from `rng`.
    pub fn new(config: DiscoveryConfig, rng: SplitMix64) -> Self {
        let retries = Retries::new(
            config.backoff_initial,
            config.backoff_max,
            config.max_backoffs,
        );
        let seeding = Seeding::new(config.bootstrap, config.resolve_interval);
        Self {
            config,
            rng,
            connected: BTreeSet::new(),
            dialing: BTreeSet::new(),
            retries,
            last_dial: None,
            seeding,
            actions: VecDeque::new(),
        }
    }

    /// The supernodes connected now (by their listen addresses), in place
    /// of those told before. One newly connected has joined, as in
    /// [`Self::handle_joined`].
    pub fn set_connected(&mut self, peers: impl IntoIterator<Item = SocketAddr>) {
        let peers: BTreeSet<SocketAddr> = peers.into_iter().take(MAX_PEERS_TRACKED).collect();
        if peers.len() < self.connected.len() {
            self.seeding.fed();
        }
        for joined in peers.difference(&self.connected) {
            self.retries.forget(*joined);
        }
        self.connected = peers;
    }

    /// A supernode at `addr` joined us (either direction): the wait set
    /// when we dialed it is over, and its backoff starts from the
    /// beginning should it fail later.
    pub fn handle_joined(&mut self, addr: SocketAddr) {
        if self.connected.len() < MAX_PEERS_TRACKED {
            self.connected.insert(addr);
        }
        self.retries.forget(addr);
    }

    /// The supernode at `addr` left.
    pub fn handle_left(&mut self, addr: SocketAddr) {
        if self.connected.remove(&addr) {
            self.seeding.fed();
        }
    }

    /// Our dial of `addr` ended: it failed, or its connection closed.
    pub fn handle_dial_ended(&mut self, addr: SocketAddr) {
        self.dialing.remove(&addr);
        self.seeding.fed();
    }

    /// New candidates may be on offer (learned, heard on the LAN): look
    /// again at the next timeout.
    pub fn handle_candidates(&mut self) {
        self.seeding.fed();
    }

    /// The bootstrap names were resolved (their addresses are candidates
    /// now).
    pub fn handle_resolved(&mut self, now: Time) {
        self.seeding.resolved(now);
    }

    /// Peers held or being dialed.
    pub fn peers(&self) -> usize {
        self.connected.union(&self.dialing).count()
    }

    /// True while `addr` is not to be dialed by discovery.
    pub fn skips(&self, addr: SocketAddr, now: Time) -> bool {
        self.connected.contains(&addr)
            || self.dialing.contains(&addr)
            || self.config.excluded.contains(&addr)
            || self.retries.is_waiting(addr, now)
    }

    /// Does what is due at `now`: the first resolution of the bootstrap
    /// names; a dial of the next candidate while peers are wanted (one
    /// per `dial_interval`); a new resolution when no one is left.
    pub fn handle_timeout(&mut self, now: Time, candidates: &mut dyn Candidates) {
        if self.seeding.first_due() {
            self.resolve(now);
        }
        if self.peers() >= self.config.peers_wanted {
            return;
        }
        if self
            .last_dial
            .is_some_and(|last| now < last + self.config.dial_interval)
        {
            return;
        }
        let random = self.rng.next_u64();
        let candidate = candidates.select(random, &|addr| self.skips(addr, now));
        match candidate {
            Some(addr) => {
                self.seeding.fed();
                self.retries.defer(addr, now, &mut self.rng);
                self.last_dial = Some(now);
                self.dialing.insert(addr);
                self.actions.push_back(DiscoveryAction::Dial(addr));
            }
            None => {
                if self.seeding.starve(now) {
                    self.actions.push_back(DiscoveryAction::Resolve);
                }
            }
        }
    }

    fn resolve(&mut self, now: Time) {
        self.seeding.start(now);
        self.actions.push_back(DiscoveryAction::Resolve);
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<DiscoveryAction> {
        self.actions.pop_front()
    }

    /// When [`Discovery::handle_timeout`] has something to do next:
    /// `None` while enough peers are held (an event changes that). With
    /// no candidate at the last look, the end of the soonest backoff or
    /// the next resolution; else the next dial allowed.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.seeding.first_due() {
            return Some(Time::ZERO);
        }
        if self.peers() >= self.config.peers_wanted {
            return None;
        }
        let next_dial = self
            .last_dial
            .map_or(Time::ZERO, |last| last + self.config.dial_interval);
        let Some(starved) = self.seeding.starved() else {
            return Some(next_dial);
        };
        let resolve = self.seeding.next_resolve();
        let backoff = self.retries.next_expiry(starved);
        [resolve, backoff.map(|at| at.max(next_dial))]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 6346))
    }

    /// A fixed list, offered in order.
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

    fn config(wanted: usize) -> DiscoveryConfig {
        DiscoveryConfig {
            dial_interval: Duration::from_millis(100),
            ..DiscoveryConfig::new(wanted)
        }
    }

    /// Runs the machine to `until`, jumping to each deadline; returns
    /// the dials and when they were asked for.
    fn run(d: &mut Discovery, list: &mut List, from: Time, until: Time) -> Vec<(Time, SocketAddr)> {
        let mut dials = Vec::new();
        let mut now = from;
        while now <= until {
            d.handle_timeout(now, list);
            while let Some(action) = d.poll_action() {
                if let DiscoveryAction::Dial(a) = action {
                    dials.push((now, a));
                }
            }
            match d.poll_timeout() {
                Some(next) if next > now => now = next,
                Some(_) => now = now + Duration::from_millis(1),
                None => break,
            }
        }
        dials
    }

    #[test]
    fn peers_wanted_are_reached_and_not_exceeded() {
        let mut d = Discovery::new(config(3), SplitMix64::new(1));
        let mut list = List((1..=10).map(addr).collect());
        let dials = run(&mut d, &mut list, Time(0), Time(10_000));
        let addrs: Vec<SocketAddr> = dials.iter().map(|(_, a)| *a).collect();
        assert_eq!(addrs, vec![addr(1), addr(2), addr(3)]);
        assert_eq!(d.peers(), 3);
        // Paced: one dial per interval.
        assert_eq!(dials[1].0, Time(100));
        assert_eq!(d.poll_timeout(), None, "nothing to do with enough peers");
        // Two join, one fails: a single replacement, not more.
        d.handle_joined(addr(1));
        d.handle_joined(addr(2));
        d.handle_dial_ended(addr(1));
        d.handle_dial_ended(addr(2));
        d.handle_dial_ended(addr(3));
        let dials = run(&mut d, &mut list, Time(20_000), Time(40_000));
        // One replacement: the failed one, its backoff long over.
        assert_eq!(dials, vec![(Time(20_000), addr(3))]);
        assert_eq!(d.peers(), 3);
    }

    #[test]
    fn a_failed_address_backs_off_and_is_dialed_again_at_its_deadline() {
        let mut d = Discovery::new(config(1), SplitMix64::new(9));
        let mut list = List(vec![addr(1)]);
        let mut dials = Vec::new();
        let mut now = Time(0);
        let mut looks = 0;
        while dials.len() < 6 {
            looks += 1;
            assert!(looks < 100, "woken too often: {dials:?}");
            d.handle_timeout(now, &mut list);
            if let Some(action) = d.poll_action() {
                assert_eq!(action, DiscoveryAction::Dial(addr(1)));
                dials.push(now);
                // Every dial fails at once.
                d.handle_dial_ended(addr(1));
            }
            let next = d.poll_timeout().unwrap();
            assert!(next > now, "{next:?} after {now:?}");
            now = next;
        }
        let gaps: Vec<u64> = dials.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for (i, gap) in gaps.iter().enumerate() {
            let full = 1000u64 << i;
            assert!(*gap >= full / 2 && *gap <= full, "{i}: {gap} in {gaps:?}");
        }
        // Jitter: not every gap at the same point of its range.
        let points: Vec<u64> = gaps
            .iter()
            .enumerate()
            .map(|(i, g)| g * 1000 / (1000 << i))
            .collect();
        assert!(points.windows(2).any(|w| w[0] != w[1]), "{points:?}");
        assert!(
            looks <= 2 * dials.len() + 1,
            "a wake per dial and per pacing: {looks}"
        );
    }

    #[test]
    fn a_peer_that_joined_is_dialed_afresh_after_it_leaves() {
        let mut d = Discovery::new(config(1), SplitMix64::new(3));
        let mut list = List(vec![addr(1)]);
        // Wakes at each deadline until a dial: when it came.
        let next_dial = |d: &mut Discovery, list: &mut List, mut now: Time| {
            for _ in 0..100 {
                d.handle_timeout(now, list);
                if let Some(action) = d.poll_action() {
                    assert_eq!(action, DiscoveryAction::Dial(addr(1)));
                    return now;
                }
                now = d.poll_timeout().unwrap();
            }
            panic!("no dial");
        };
        // Four failed dials: the next would wait 8-16 s.
        let mut now = Time(0);
        for _ in 0..4 {
            now = next_dial(&mut d, &mut list, now);
            d.handle_dial_ended(addr(1));
        }
        // The fifth gets through: it joins, stays 2 s, and leaves.
        now = next_dial(&mut d, &mut list, now);
        d.set_connected([addr(1)]);
        now = now + Duration::from_secs(2);
        d.handle_dial_ended(addr(1));
        d.set_connected([]);
        let redial = next_dial(&mut d, &mut list, now);
        assert!(
            redial.0 - now.0 <= 1000,
            "the first interval again, not 16 s: {} ms",
            redial.0 - now.0
        );
    }

    #[test]
    fn the_same_seed_dials_the_same_at_the_same_times() {
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
            let mut d = Discovery::new(config(2), SplitMix64::new(seed));
            let mut list = Random((1..=50).map(addr).collect());
            let mut out = Vec::new();
            let mut now = Time(0);
            for _ in 0..40 {
                d.handle_timeout(now, &mut list);
                while let Some(DiscoveryAction::Dial(a)) = d.poll_action() {
                    out.push((now, a));
                    d.handle_dial_ended(a); // every dial fails
                }
                now = d
                    .poll_timeout()
                    .unwrap_or(now + Duration::from_secs(1))
                    .max(now);
            }
            out
        };
        assert_eq!(trace(5), trace(5));
        assert_ne!(trace(5), trace(6));
    }

    #[test]
    fn bootstrap_names_are_resolved_first_and_again_when_starved() {
        let mut d = Discovery::new(
            DiscoveryConfig {
                bootstrap: true,
                excluded: vec![addr(1)],
                ..config(2)
            },
            SplitMix64::new(2),
        );
        let mut list = List(vec![addr(1)]);
        assert_eq!(d.poll_timeout(), Some(Time::ZERO));
        d.handle_timeout(Time(0), &mut list);
        assert_eq!(d.poll_action(), Some(DiscoveryAction::Resolve));
        assert_eq!(d.poll_action(), None, "the configured peer is excluded");
        d.handle_resolved(Time(500));
        d.handle_timeout(Time(500), &mut list);
        assert_eq!(d.poll_action(), None, "resolved lately");
        assert_eq!(d.poll_timeout(), Some(Time(60_500)));
        d.handle_timeout(Time(60_500), &mut list);
        assert_eq!(d.poll_action(), Some(DiscoveryAction::Resolve));
        // What it found is dialed.
        list.0.push(addr(2));
        d.handle_resolved(Time(61_000));
        assert_eq!(d.poll_timeout(), Some(Time(0)));
        d.handle_timeout(Time(61_000), &mut list);
        assert_eq!(d.poll_action(), Some(DiscoveryAction::Dial(addr(2))));
    }
}
