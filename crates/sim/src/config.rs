//! What a simulation run is made of.

/// How leaves' queries travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Plain flooding with this TTL.
    Flood(u8),
    /// Dynamic querying (the core's defaults, target 150 results).
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

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Supernodes.
    pub supernodes: usize,
    /// Supernode neighbours each supernode dials (the graph's degree is
    /// about twice this).
    pub dials_per_supernode: usize,
    /// Leaves attached to each supernode as their first parent.
    pub leaves_per_supernode: usize,
    /// Supernodes each leaf publishes to.
    pub parents_per_leaf: usize,
    /// Link latency range, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Distinct contents placed.
    pub contents: usize,
    /// Fraction of leaves that hold each content (0.01 = 1%).
    pub replication: f64,
    /// Queries run.
    pub queries: usize,
    /// Zipf exponent of content popularity.
    pub zipf: f64,
    /// Milliseconds between queries.
    pub query_interval_ms: u64,
    /// How queries travel.
    pub strategy: Strategy,
    /// Seed of every random choice.
    pub seed: u64,
}

impl SimConfig {
    /// A small overlay, quick to run (tests use it).
    pub fn small(strategy: Strategy, seed: u64) -> Self {
        Self {
            supernodes: 100,
            dials_per_supernode: 4,
            leaves_per_supernode: 10,
            parents_per_leaf: 2,
            latency_ms: (10, 80),
            contents: 50,
            replication: 0.01,
            queries: 100,
            zipf: 1.0,
            query_interval_ms: 50,
            strategy,
            seed,
        }
    }
}
