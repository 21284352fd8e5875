//! Dynamic querying: how a supernode runs a query for one of its leaves
//! instead of flooding it blindly (after LimeWire's dynamic querying).
//!
//! The supernode answers from its own index, probes a few supernode peers
//! at TTL 1, then widens step by step, waiting between steps for hits to
//! come back, and stops as soon as the results reach the target, when every
//! peer has been asked, or at the deadline. Each peer is asked once (it
//! would drop the same message id a second time). Results are counted as
//! the files in the hits that come back through this supernode.
//!
//! Each widening step sizes itself from the yield so far: results per
//! supernode reached tell how many more supernodes the target needs, and
//! the step takes the cheapest way to cover them: n peers at TTL t, with
//! the fewest supernodes reached (n x horizon), where the horizon of TTL t
//! over degree d is 1 + (d-1) + ... + (d-1)^(t-1), as gtk-gnutella
//! estimates it. So a need of 150 supernodes at degree 32 is five peers at
//! TTL 2 (160 supernodes), not one at TTL 3 (993). With no yield yet, it
//! reaches one hop further each step through one peer: the content may be
//! rare, or the probe unlucky.
//!
//! Why these numbers: LimeWire aims for 150 results for a keyword query
//! and 10 for a hash query, probes 3 connections at TTL 1 and waits about
//! 2.4 seconds a hop; gtk-gnutella probes 3 ultrapeers and stops at a
//! horizon. Canopy keeps LimeWire's targets (a screenful of results; a
//! handful of sources for a download) and differs on two counts:
//! - it probes 8 peers, not 3: a TTL-1 query to a Canopy supernode is one
//!   message answered from the index of all its leaves (LimeWire's went on
//!   to the leaves through last-hop QRP), so a wider probe is cheap, often
//!   ends popular queries at once, and leaves three quarters of a 32-peer
//!   supernode's connections for widening;
//! - it waits 1.2 s a hop, half of LimeWire's 2.4 s: supernode links are
//!   chosen for bandwidth, one hop's round trip takes well under a second
//!   (the simulator's slowest link is 300 ms each way), and a hit that comes
//!   later is not lost, it still reaches the leaf; at worst the next step is
//!   sized on a partial count and asks a few supernodes more. The wait is
//!   what the leaf waits for a first result when the probe finds nothing.
//!
//! The wait scales with the TTL used, since hits from further away take
//! longer. It gives up once the steps are estimated to have reached 4,000
//! supernodes: LimeWire's horizon of 110,000 hosts at about 30 leaves a
//! supernode (gtk-gnutella's is 500,000 hosts); content that rare is not
//! worth asking everyone for, so a query for it costs what reaching the
//! horizon costs, not every neighbour's flood. A supernode with no more peers than the probe would take (a
//! small or young overlay) floods at the TTL cap instead: each peer can be
//! asked only once, so probing at TTL 1 would leave nothing to widen with.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use canopy_proto::{NodeId, Query};

use crate::{ConnId, Time};

/// Tunables of dynamic querying.
#[derive(Debug, Clone)]
pub struct DynamicConfig {
    /// Stop a keyword query at this many results.
    pub keyword_target: usize,
    /// Stop a content-id query at this many results (sources).
    pub content_target: usize,
    /// Peers probed at TTL 1 first.
    pub probe_peers: usize,
    /// Wait per hop of TTL before the next step.
    pub hop_wait: Duration,
    /// Give up after this long.
    pub deadline: Duration,
    /// Give up once the steps so far are estimated to have reached this
    /// many supernodes.
    pub max_horizon: usize,
    /// What the hits from one supernode peer may count toward the target,
    /// in percent of it: so hits from one peer (forged, or many files
    /// from made-up sources) can never end a query alone.
    pub peer_share_percent: usize,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        Self {
            keyword_target: 150,
            content_target: 10,
            probe_peers: 8,
            hop_wait: Duration::from_millis(1200),
            deadline: Duration::from_secs(60),
            max_horizon: 4_000,
            peer_share_percent: 50,
        }
    }
}

/// One query being run dynamically for a leaf.
#[derive(Debug)]
pub struct DynamicQuery {
    /// The query as it came from the leaf.
    pub query: Query,
    /// Results so far.
    pub results: usize,
    target: usize,
    /// Sources whose hit counted (one hit each).
    sources: BTreeSet<NodeId>,
    /// What each peer's hits counted.
    by_peer: BTreeMap<ConnId, usize>,
    /// Results from our own index.
    local: usize,
    /// Files routed to the leaf, counted or not.
    routed: usize,
    /// What the leaf reported beyond `local + routed` (found elsewhere).
    reported_extra: usize,
    asked: BTreeSet<ConnId>,
    /// Supernodes the steps so far are estimated to have reached.
    reached: f64,
    steps: u32,
    next_step: Time,
    deadline: Time,
}

/// Supernodes a query sent with `ttl` to one neighbour reaches, in a graph
/// of `degree`: 1 + (d-1) + (d-1)^2 + ... (t terms).
fn horizon(ttl: u8, degree: usize) -> f64 {
    let branching = degree.saturating_sub(1).max(1) as f64;
    (0..i32::from(ttl)).map(|i| branching.powi(i)).sum()
}

/// What the next step of a dynamic query is.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not yet: wait.
    Wait,
    /// Send the query to these peers with this TTL.
    Send(Vec<ConnId>, u8),
    /// Finished (target met, nobody left to ask, or out of time).
    Done,
}

impl DynamicQuery {
    /// Starts a dynamic query that already has `local` results.
    pub fn new(query: Query, local: usize, config: &DynamicConfig, now: Time) -> Self {
        let target = if query.content_id.is_some() {
            config.content_target
        } else {
            config.keyword_target
        };
        Self {
            query,
            results: local,
            target,
            sources: BTreeSet::new(),
            by_peer: BTreeMap::new(),
            local,
            routed: 0,
            reported_extra: 0,
            asked: BTreeSet::new(),
            reached: 1.0,
            steps: 0,
            next_step: now,
            deadline: now + config.deadline,
        }
    }

    /// Most results one peer's hits may count for this query.
    pub fn peer_cap(&self, config: &DynamicConfig) -> usize {
        (self.target.saturating_mul(config.peer_share_percent) / 100).max(1)
    }

    /// Counts a hit with `files` matching files from `source`, routed
    /// through `peer`: only the first hit of each source counts, and a
    /// peer's hits count for at most `peer_cap` results. False if the hit
    /// counted for nothing. (The sets stay small: each entry is a result
    /// counted, and the query ends at its target.)
    pub fn count_hit(
        &mut self,
        peer: ConnId,
        source: NodeId,
        files: usize,
        peer_cap: usize,
    ) -> bool {
        self.routed = self.routed.saturating_add(files);
        let counted = self.by_peer.get(&peer).copied().unwrap_or(0);
        let room = peer_cap.saturating_sub(counted).min(files);
        if room == 0 || !self.sources.insert(source) {
            return false;
        }
        self.by_peer.insert(peer, counted + room);
        self.results = self.results.saturating_add(room);
        true
    }

    /// The leaf says it has kept `kept` results. Only what it has beyond
    /// what came through us (its own index's and the hits we routed,
    /// counted or not) raises the count: it found those elsewhere. So
    /// forged hits the leaf kept cannot end its query through its own
    /// report; "enough" (`usize::MAX`) still does.
    pub fn leaf_reports(&mut self, kept: usize) {
        let extra = kept.saturating_sub(self.local.saturating_add(self.routed));
        if extra > self.reported_extra {
            self.results = self.results.saturating_add(extra - self.reported_extra);
            self.reported_extra = extra;
        }
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u32 {
        self.steps
    }

    /// True once the results reach the target.
    pub fn satisfied(&self) -> bool {
        self.results >= self.target
    }

    /// How many peers to ask and with what TTL: the cheapest way (fewest
    /// supernodes reached, n x horizon) to cover the supernodes still needed
    /// at the yield seen so far, with at most `fresh` peers; one hop further
    /// each step, one peer at a time, while nothing has been found.
    fn widen(&self, degree: usize, fresh: usize, cap: u8) -> (usize, u8) {
        let per_host = self.results as f64 / self.reached.max(1.0);
        if per_host <= 0.0 {
            return (1, u8::try_from(1 + self.steps).unwrap_or(u8::MAX).min(cap));
        }
        let hosts_needed = self.target.saturating_sub(self.results) as f64 / per_host;
        (1..=cap)
            .filter_map(|ttl| {
                let reach = horizon(ttl, degree);
                (1..=fresh)
                    .find(|peers| *peers as f64 * reach >= hosts_needed)
                    .map(|peers| (peers, ttl, peers as f64 * reach))
            })
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .map_or((1, cap), |(peers, ttl, _)| (peers, ttl))
    }

    /// When [`DynamicQuery::step`] next has something to do: its next
    /// step, or its deadline if sooner.
    pub fn next_wakeup(&self) -> Time {
        self.next_step.min(self.deadline)
    }

    /// The next step, given the connected supernode `peers` (in a stable
    /// order) and the TTL cap.
    pub fn step(
        &mut self,
        peers: &[ConnId],
        ttl_cap: u8,
        config: &DynamicConfig,
        now: Time,
    ) -> Step {
        if self.satisfied() || now >= self.deadline || self.reached >= config.max_horizon as f64 {
            return Step::Done;
        }
        if now < self.next_step {
            return Step::Wait;
        }
        let fresh: Vec<ConnId> = peers
            .iter()
            .copied()
            .filter(|p| !self.asked.contains(p))
            .collect();
        if fresh.is_empty() {
            return Step::Done;
        }
        // The probe: a few peers, their own indexes only. Then one peer at
        // a time, reaching further each step, up to the cap. A supernode
        // with no more peers than the probe takes has nothing left to widen
        // through (each peer can be asked once): it floods the query just
        // as flooding would (the peers get the TTL less our own hop), which
        // in so small a neighbourhood is where widening would end anyway.
        let (count, ttl) = if self.steps == 0 && fresh.len() <= config.probe_peers {
            if ttl_cap <= 1 {
                return Step::Done;
            }
            (fresh.len(), ttl_cap - 1)
        } else if self.steps == 0 {
            (config.probe_peers.max(1), 1)
        } else {
            self.widen(peers.len(), fresh.len(), ttl_cap.max(1))
        };
        let chosen: Vec<ConnId> = fresh.into_iter().take(count).collect();
        self.reached += chosen.len() as f64 * horizon(ttl, peers.len());
        self.asked.extend(chosen.iter().copied());
        self.steps += 1;
        self.next_step = now + config.hop_wait.saturating_mul(u32::from(ttl));
        Step::Send(chosen, ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_proto::MessageId;

    fn query() -> Query {
        Query {
            message_id: MessageId([1; 16]),
            ttl: 4,
            hops: 0,
            keywords: vec!["x".into()],
            content_id: None,
            min_size: None,
            max_size: None,
        }
    }

    fn config() -> DynamicConfig {
        DynamicConfig {
            keyword_target: 10,
            content_target: 2,
            probe_peers: 2,
            hop_wait: Duration::from_secs(1),
            deadline: Duration::from_secs(30),
            max_horizon: 1_000,
            peer_share_percent: 50,
        }
    }

    #[test]
    fn probes_then_widens_one_peer_at_a_time() {
        let peers: Vec<ConnId> = (1..=5).map(ConnId).collect();
        let mut dq = DynamicQuery::new(query(), 0, &config(), Time(0));
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(0)),
            Step::Send(vec![ConnId(1), ConnId(2)], 1)
        );
        assert_eq!(dq.step(&peers, 4, &config(), Time(999)), Step::Wait);
        // Nothing found by the probe: one hop further each step.
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(1000)),
            Step::Send(vec![ConnId(3)], 2)
        );
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(2999)),
            Step::Wait,
            "waits longer for TTL 2"
        );
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(3000)),
            Step::Send(vec![ConnId(4)], 3)
        );
        assert_eq!(
            dq.step(&peers, 2, &config(), Time(6000)),
            Step::Send(vec![ConnId(5)], 2),
            "capped"
        );
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(99_000)),
            Step::Done,
            "deadline"
        );
    }

    #[test]
    fn the_ttl_follows_the_yield() {
        // Degree 5: horizons 1, 5, 21 for TTL 1, 2, 3.
        let peers: Vec<ConnId> = (1..=5).map(ConnId).collect();
        let mut dq = DynamicQuery::new(query(), 0, &config(), Time(0));
        assert!(matches!(
            dq.step(&peers, 7, &config(), Time(0)),
            Step::Send(_, 1)
        ));
        // Three results from three supernodes (us and two probed): one per
        // host; seven more needed: two peers at TTL 2 (10 hosts) is
        // cheaper than one at TTL 3 (21 hosts); seven at TTL 1 is more
        // peers than are left.
        dq.results = 3;
        assert_eq!(
            dq.step(&peers, 7, &config(), Time(1000)),
            Step::Send(vec![ConnId(3), ConnId(4)], 2)
        );
        // With a single peer left, it reaches further through it.
        let mut last = DynamicQuery::new(query(), 0, &config(), Time(0));
        last.step(&peers[..3], 7, &config(), Time(0));
        last.results = 3;
        assert_eq!(
            last.step(&peers[..3], 7, &config(), Time(1000)),
            Step::Send(vec![ConnId(3)], 3)
        );
        // A rich yield needs only a short reach.
        let mut rich = DynamicQuery::new(query(), 8, &config(), Time(0));
        rich.step(&peers, 7, &config(), Time(0));
        assert_eq!(
            rich.step(&peers, 7, &config(), Time(1000)),
            Step::Send(vec![ConnId(3)], 1)
        );
    }

    #[test]
    fn gives_up_at_the_horizon() {
        let peers: Vec<ConnId> = (1..=50).map(ConnId).collect();
        let config = DynamicConfig {
            max_horizon: 100,
            ..config()
        };
        let mut dq = DynamicQuery::new(query(), 0, &config, Time(0));
        let mut now = 0;
        let mut steps = 0;
        while let Step::Send(..) | Step::Wait = dq.step(&peers, 4, &config, Time(now)) {
            now += 1000;
            steps += 1;
            assert!(steps < 100, "never gave up");
        }
        assert!(dq.reached >= 100.0, "stopped at {}", dq.reached);
        assert!(dq.asked.len() < peers.len(), "peers were left");
    }

    #[test]
    fn stops_at_the_target() {
        let peers: Vec<ConnId> = (1..=5).map(ConnId).collect();
        let mut dq = DynamicQuery::new(query(), 4, &config(), Time(0));
        assert!(matches!(
            dq.step(&peers, 4, &config(), Time(0)),
            Step::Send(..)
        ));
        dq.results += 6;
        assert_eq!(dq.step(&peers, 4, &config(), Time(1000)), Step::Done);
        // Enough locally: nothing is sent at all.
        let mut local = DynamicQuery::new(query(), 10, &config(), Time(0));
        assert_eq!(local.step(&peers, 4, &config(), Time(0)), Step::Done);
    }

    #[test]
    fn a_content_query_has_its_own_target_and_stops_when_no_one_is_left() {
        let mut q = query();
        q.content_id = Some(canopy_proto::ContentId([2; 32]));
        let mut dq = DynamicQuery::new(q, 1, &config(), Time(0));
        // One peer, fewer than the probe takes: a flood, as far as the cap
        // allows (less our own hop), then there is nobody left.
        let peers = [ConnId(7)];
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(0)),
            Step::Send(vec![ConnId(7)], 3)
        );
        assert_eq!(
            dq.step(&peers, 4, &config(), Time(9000)),
            Step::Done,
            "nobody left"
        );
        dq.results += 1;
        assert!(dq.satisfied());
    }

    #[test]
    fn one_hit_per_source_and_a_share_per_peer_count() {
        let mut dq = DynamicQuery::new(query(), 0, &config(), Time(0));
        let cap = dq.peer_cap(&config());
        assert_eq!(cap, 5, "half the keyword target of 10");
        let source = |n: u8| NodeId([n; 16]);
        // A forged hit of 150 files from one peer counts for its share.
        assert!(dq.count_hit(ConnId(1), source(1), 150, cap));
        assert_eq!(dq.results, 5);
        assert!(!dq.satisfied());
        // More from that peer, from any source, counts for nothing.
        assert!(!dq.count_hit(ConnId(1), source(2), 150, cap));
        assert_eq!(dq.results, 5);
        // A second hit of a source that counted, through another peer,
        // counts for nothing either.
        assert!(!dq.count_hit(ConnId(2), source(1), 3, cap));
        assert!(dq.count_hit(ConnId(2), source(3), 3, cap));
        assert!(dq.count_hit(ConnId(2), source(4), 3, cap));
        assert_eq!(dq.results, 10, "3 + 2: the second peer's share is 5 too");
        assert!(dq.satisfied());
    }

    #[test]
    fn the_leaf_counts_only_what_it_found_elsewhere() {
        let mut dq = DynamicQuery::new(query(), 2, &config(), Time(0));
        assert!(dq.count_hit(ConnId(1), NodeId([1; 16]), 150, 5));
        assert_eq!(dq.results, 7);
        // The leaf kept all 152: nothing it did not get from us.
        dq.leaf_reports(152);
        assert_eq!(dq.results, 7);
        // Two more from elsewhere count.
        dq.leaf_reports(154);
        assert_eq!(dq.results, 9);
        dq.leaf_reports(usize::MAX);
        assert!(dq.satisfied());
    }

    #[test]
    fn a_hit_after_the_leaf_said_enough_counts_without_overflow() {
        // "Enough" raises the count to the top; hits still in flight must
        // not wrap it (a panic in a debug build, a query revived in a
        // release one).
        let mut dq = DynamicQuery::new(query(), 0, &config(), Time(0));
        dq.leaf_reports(usize::MAX);
        assert!(dq.count_hit(ConnId(1), NodeId([1; 16]), 3, 5));
        assert!(dq.satisfied());
    }
}
