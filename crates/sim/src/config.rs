//! What a simulation run is made of: topology, workload, churn, strategy.

use canopy_core::dynamic::DynamicConfig;

use crate::link::{LinkSpeed, SEND_QUEUE_BYTES};
use crate::workload::VocabularyModel;

/// How leaves' queries travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Plain flooding with this TTL.
    Flood(u8),
    /// Dynamic querying (the core's defaults), capped at TTL 4 like the
    /// real supernodes.
    Dynamic,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Flood(ttl) => write!(f, "flood ttl {ttl}"),
            Strategy::Dynamic => f.write_str("dynamic"),
        }
    }
}

/// Nodes leaving and joining while the queries run. Rates are shares of
/// the population leaving per minute of virtual time; each node that
/// leaves comes back after an offline time drawn uniformly from
/// `offline_ms`, with fresh state and (for a leaf) new parents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// Share of leaves leaving per minute (0.02 = 2%).
    pub leaves_per_minute: f64,
    /// Share of supernodes leaving per minute; their leaves move to other
    /// supernodes after `reattach_ms`.
    pub supernodes_per_minute: f64,
    /// How long a node that left stays away, in milliseconds.
    pub offline_ms: (u64, u64),
    /// How long a leaf whose supernode left takes to find another.
    pub reattach_ms: (u64, u64),
}

impl Churn {
    /// No churn at all.
    pub const NONE: Churn = Churn {
        leaves_per_minute: 0.0,
        supernodes_per_minute: 0.0,
        offline_ms: (30_000, 120_000),
        reattach_ms: (2_000, 10_000),
    };

    /// A modest rate: 2% of leaves and 0.5% of supernodes leave a minute
    /// (a median Gnutella session lasted about an hour; supernodes, chosen
    /// for their uptime, stay longer).
    pub const MODEST: Churn = Churn {
        leaves_per_minute: 0.02,
        supernodes_per_minute: 0.005,
        ..Churn::NONE
    };
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Supernodes.
    pub supernodes: usize,
    /// Supernode neighbours each supernode dials at random, besides its
    /// two ring neighbours: the graph's mean degree is about
    /// 2 x dials + 2.
    pub dials_per_supernode: usize,
    /// Leaves attached to each supernode as their first parent.
    pub leaves_per_supernode: usize,
    /// Supernodes each leaf connects and publishes to.
    pub parents_per_leaf: usize,
    /// Link latency in milliseconds: log-uniform between the two bounds
    /// (most links short, a long tail; the median is their geometric mean).
    pub latency_ms: (u64, u64),
    /// Distinct contents placed.
    pub contents: usize,
    /// Fraction of leaves that hold each content (0.01 = 1%).
    pub replication: f64,
    /// Queries run.
    pub queries: usize,
    /// Zipf exponent of content popularity (which contents are asked for).
    pub zipf: f64,
    /// Queries each leaf sends an hour: sets the time between queries
    /// (the whole overlay's rate) and the load figures.
    pub queries_per_leaf_hour: f64,
    /// Nodes leaving and joining during the queries.
    pub churn: Churn,
    /// How queries travel.
    pub strategy: Strategy,
    /// Dynamic querying's tunables, when `strategy` is dynamic.
    pub dynamic: DynamicConfig,
    /// Seed of every random choice.
    pub seed: u64,
    /// The queries are spread over at least this long (virtual time), so
    /// churn goes on while they run: when the overlay's query rate would
    /// issue them faster, the simulator issues a sample of that rate's
    /// queries (the load figures use the full rate).
    pub span_ms: u64,
    /// Names and keyword queries.
    pub vocabulary: VocabularyModel,
    /// Every other query asks by keywords (the rest by content id), so
    /// the two kinds get the same share of the run; false: all by id.
    pub keyword_queries: bool,
    /// Each direction of a supernode-to-supernode link.
    pub supernode_link: LinkSpeed,
    /// Each direction of a leaf-to-supernode link.
    pub leaf_link: LinkSpeed,
    /// Routing filters between supernodes for dynamic querying (floods
    /// run without, as plain Gnutella did).
    pub routing_filters: bool,
}

/// A supernode's link: 1 Mbit/s each way (a 2000s broadband uplink of
/// 10-40 Mbit/s shared by its ~32 peers and 30 leaves, at best).
pub const SUPERNODE_LINK: LinkSpeed = LinkSpeed {
    bytes_per_second: 125_000,
    queue_bytes: SEND_QUEUE_BYTES,
};

/// A leaf's link to a parent: 256 kbit/s each way (a DSL uplink, shared by
/// its two parents and its uploads).
pub const LEAF_LINK: LinkSpeed = LinkSpeed {
    bytes_per_second: 32_000,
    queue_bytes: SEND_QUEUE_BYTES,
};

impl SimConfig {
    /// The anchors' shape (LimeWire, gtk-gnutella): supernode degree about
    /// 32, 30 leaves per supernode, 2 parents per leaf, modest churn.
    pub fn anchored(supernodes: usize, strategy: Strategy, seed: u64) -> Self {
        Self {
            supernodes,
            dials_per_supernode: 15,
            leaves_per_supernode: 30,
            parents_per_leaf: 2,
            latency_ms: (10, 300),
            contents: 200,
            replication: 0.01,
            queries: 200,
            zipf: 1.0,
            queries_per_leaf_hour: 6.0,
            churn: Churn::MODEST,
            strategy,
            dynamic: DynamicConfig::default(),
            seed,
            span_ms: 5 * 60_000,
            vocabulary: VocabularyModel::default(),
            keyword_queries: true,
            supernode_link: SUPERNODE_LINK,
            leaf_link: LEAF_LINK,
            routing_filters: true,
        }
    }

    /// A small overlay, quick to run (tests use it).
    pub fn small(strategy: Strategy, seed: u64) -> Self {
        Self {
            supernodes: 100,
            dials_per_supernode: 4,
            leaves_per_supernode: 10,
            contents: 50,
            queries: 100,
            churn: Churn::NONE,
            span_ms: 60_000,
            ..Self::anchored(100, strategy, seed)
        }
    }

    /// Total leaves.
    pub fn leaves(&self) -> usize {
        self.supernodes.max(2) * self.leaves_per_supernode
    }

    /// Queries a second across the overlay.
    pub fn query_rate(&self) -> f64 {
        self.leaves() as f64 * self.queries_per_leaf_hour / 3600.0
    }

    /// Milliseconds between two queries the simulator issues: the
    /// overlay's rate, or slower so they spread over [`Self::span_ms`].
    pub fn query_interval_ms(&self) -> u64 {
        let rate = self.query_rate();
        let at_rate = if rate > 0.0 {
            ((1000.0 / rate).round() as u64).max(1)
        } else {
            1000
        };
        at_rate.max(self.span_ms / self.queries.max(1) as u64)
    }
}
