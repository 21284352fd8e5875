//! What a run measured: per query, then summarised per run and kind of
//! query, with 95% confidence intervals, as Markdown and CSV rows.

use crate::config::SimConfig;
use crate::stats::{mean_ci, median_ci, percentile, wilson};

/// How a query asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueryKind {
    /// By content id (target 10 sources).
    Content,
    /// By keywords (target 150 results).
    Keywords,
}

impl std::fmt::Display for QueryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueryKind::Content => "content id",
            QueryKind::Keywords => "keywords",
        })
    }
}

/// One query's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOutcome {
    /// How it asked.
    pub kind: QueryKind,
    /// At least one result came back.
    pub found: bool,
    /// Messages that carried its id: queries, hits, the leaf's statuses.
    pub messages: u64,
    /// Of those, the leaf's QueryStatus messages.
    pub statuses: u64,
    /// Bytes of those messages on the wire.
    pub bytes: u64,
    /// Its messages a full queue dropped.
    pub dropped: u64,
    /// From the query to its first hit.
    pub first_result_ms: Option<u64>,
    /// Results as the leaf's search counts them: for a content-id query,
    /// the distinct sources of that content; for keywords, the distinct
    /// contents found.
    pub results: usize,
}

/// Messages that carry no query's id, counted over the whole run while
/// the queries ran: the overlay's upkeep, shared by every query.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Upkeep {
    /// Routing filter patches.
    pub filter_messages: u64,
    /// Their bytes.
    pub filter_bytes: u64,
    /// Pings and pongs.
    pub pings: u64,
    /// File lists and deltas (leaves joining, after churn).
    pub publishes: u64,
    /// Handshakes, Byes and the rest.
    pub other: u64,
    /// Messages of any kind a full queue dropped.
    pub dropped: u64,
    /// Queries, hits and statuses of no tracked search (none are
    /// expected: a count here is a message the simulator failed to
    /// attribute to its search).
    pub untracked: u64,
    /// How long they were counted for, in milliseconds.
    pub window_ms: u64,
}

impl Upkeep {
    /// `count` over the window, shared by the queries the overlay issues
    /// in that time at `query_rate` a second.
    pub fn per_query(&self, count: u64, query_rate: f64) -> f64 {
        let seconds = self.window_ms as f64 / 1000.0;
        if seconds <= 0.0 || query_rate <= 0.0 {
            return 0.0;
        }
        count as f64 / seconds / query_rate
    }
}

/// A run's summary for one kind of query.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Strategy, as text.
    pub strategy: String,
    /// How the queries asked.
    pub kind: QueryKind,
    /// Replication ratio.
    pub replication: f64,
    /// Supernodes.
    pub supernodes: usize,
    /// Leaves.
    pub leaves: usize,
    /// Queries of this kind run.
    pub queries: usize,
    /// Queries a second across the overlay.
    pub query_rate: f64,
    /// Share of queries with at least one result...
    pub success_rate: f64,
    /// ...and its 95% interval (Wilson).
    pub success_ci: (f64, f64),
    /// Messages per query carrying its id: median...
    pub messages_median: u64,
    /// ...and 99th percentile...
    pub messages_p99: u64,
    /// ...mean...
    pub messages_mean: f64,
    /// ...and the half-width of the mean's 95% interval.
    pub messages_mean_ci: f64,
    /// QueryStatus messages per query (mean; included above).
    pub statuses_mean: f64,
    /// Bytes per query carrying its id (mean).
    pub bytes_mean: f64,
    /// Routing filter patches per query, amortized over the overlay's
    /// query rate.
    pub filter_per_query: f64,
    /// Filter patch bytes per query, amortized.
    pub filter_bytes_per_query: f64,
    /// Pings and pongs per query, amortized.
    pub pings_per_query: f64,
    /// File lists and deltas per query, amortized.
    pub publishes_per_query: f64,
    /// Every message, each supernode, a second at the overlay's query rate:
    /// (the queries' mean + all upkeep per query) x queries a second /
    /// supernodes.
    pub messages_per_supernode_second: f64,
    /// Messages dropped by full queues, per query: its own (mean) plus the
    /// run's other drops amortized.
    pub dropped_per_query: f64,
    /// Time to the first result over successful queries: median...
    pub first_result_median_ms: Option<u64>,
    /// ...its 95% interval...
    pub first_result_median_ci: Option<(u64, u64)>,
    /// ...and 90th percentile.
    pub first_result_p90_ms: Option<u64>,
    /// Mean results per query.
    pub results_mean: f64,
    /// Queries, hits and statuses no tracked search owned, in the whole
    /// run (expected 0).
    pub untracked: u64,
    /// Nodes that left during the run (leaves, then supernodes).
    pub departures: (u64, u64),
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{ms} ms"))
}

impl RunReport {
    /// The summary of `outcomes`' queries of `kind`.
    pub(crate) fn new(
        config: &SimConfig,
        kind: QueryKind,
        outcomes: &[QueryOutcome],
        upkeep: &Upkeep,
        departures: (u64, u64),
    ) -> Self {
        let outcomes: Vec<&QueryOutcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
        let n = outcomes.len().max(1) as f64;
        let mut messages: Vec<u64> = outcomes.iter().map(|o| o.messages).collect();
        messages.sort_unstable();
        let mut firsts: Vec<u64> = outcomes.iter().filter_map(|o| o.first_result_ms).collect();
        firsts.sort_unstable();
        let (messages_mean, messages_mean_ci) = mean_ci(&messages);
        let query_rate = config.query_rate();
        let found = outcomes.iter().filter(|o| o.found).count();
        let per_query = |count| upkeep.per_query(count, query_rate);
        let filter_per_query = per_query(upkeep.filter_messages);
        let pings_per_query = per_query(upkeep.pings);
        let publishes_per_query = per_query(upkeep.publishes);
        let all_upkeep =
            filter_per_query + pings_per_query + publishes_per_query + per_query(upkeep.other);
        let own_dropped = outcomes.iter().map(|o| o.dropped).sum::<u64>();
        Self {
            strategy: config.strategy.to_string(),
            kind,
            replication: config.replication,
            supernodes: config.supernodes,
            leaves: config.leaves(),
            queries: outcomes.len(),
            query_rate,
            success_rate: found as f64 / n,
            success_ci: wilson(found, outcomes.len()),
            messages_median: percentile(&messages, 0.5),
            messages_p99: percentile(&messages, 0.99),
            messages_mean,
            messages_mean_ci,
            statuses_mean: outcomes.iter().map(|o| o.statuses).sum::<u64>() as f64 / n,
            bytes_mean: outcomes.iter().map(|o| o.bytes).sum::<u64>() as f64 / n,
            filter_per_query,
            filter_bytes_per_query: per_query(upkeep.filter_bytes),
            pings_per_query,
            publishes_per_query,
            messages_per_supernode_second: (messages_mean + all_upkeep) * query_rate
                / config.supernodes.max(1) as f64,
            dropped_per_query: own_dropped as f64 / n
                + per_query(upkeep.dropped.saturating_sub(own_dropped)),
            first_result_median_ms: (!firsts.is_empty()).then(|| percentile(&firsts, 0.5)),
            first_result_median_ci: median_ci(&firsts),
            first_result_p90_ms: (!firsts.is_empty()).then(|| percentile(&firsts, 0.9)),
            results_mean: outcomes.iter().map(|o| o.results).sum::<usize>() as f64 / n,
            untracked: upkeep.untracked,
            departures,
        }
    }

    /// What the goals count per query: the query's own messages (queries,
    /// hits, statuses; mean) and the routing filter patches amortized.
    pub fn goal_messages(&self) -> f64 {
        self.messages_mean + self.filter_per_query
    }

    /// The Markdown table header.
    pub fn markdown_header() -> &'static str {
        "| strategy | query | replication | success (95% CI) | msgs/query median | p99 | mean (95% CI) | of which statuses | filter patches/query | pings/query | publishes/query | msgs/supernode/s | dropped/query | first result median (95% CI) | p90 | results mean |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    /// This run as a Markdown table row.
    pub fn markdown_row(&self) -> String {
        let first_ci = self
            .first_result_median_ci
            .map_or(String::new(), |(lo, hi)| format!(" ({lo}-{hi})"));
        format!(
            "| {} | {} | {}% | {:.1}% ({:.1}-{:.1}) | {} | {} | {:.0} (±{:.0}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {}{} | {} | {:.1} |",
            self.strategy,
            self.kind,
            self.replication * 100.0,
            self.success_rate * 100.0,
            self.success_ci.0 * 100.0,
            self.success_ci.1 * 100.0,
            self.messages_median,
            self.messages_p99,
            self.messages_mean,
            self.messages_mean_ci,
            self.statuses_mean,
            self.filter_per_query,
            self.pings_per_query,
            self.publishes_per_query,
            self.messages_per_supernode_second,
            self.dropped_per_query,
            millis(self.first_result_median_ms),
            first_ci,
            millis(self.first_result_p90_ms),
            self.results_mean
        )
    }

    /// The CSV header.
    pub fn csv_header() -> &'static str {
        "strategy,query,replication,supernodes,leaves,queries,query_rate,success_rate,success_ci_low,success_ci_high,messages_median,messages_p99,messages_mean,messages_mean_ci,statuses_mean,bytes_mean,filter_per_query,filter_bytes_per_query,pings_per_query,publishes_per_query,messages_per_supernode_second,dropped_per_query,first_result_median_ms,first_result_median_ci_low,first_result_median_ci_high,first_result_p90_ms,results_mean,untracked_messages,leaves_departed,supernodes_departed"
    }

    /// This run as a CSV row.
    pub fn csv_row(&self) -> String {
        let ms = |v: Option<u64>| v.map_or(String::new(), |ms| ms.to_string());
        format!(
            "{},{},{},{},{},{},{:.2},{:.4},{:.4},{:.4},{},{},{:.2},{:.2},{:.3},{:.1},{:.3},{:.1},{:.3},{:.3},{:.3},{:.4},{},{},{},{},{:.2},{},{},{}",
            self.strategy,
            self.kind,
            self.replication,
            self.supernodes,
            self.leaves,
            self.queries,
            self.query_rate,
            self.success_rate,
            self.success_ci.0,
            self.success_ci.1,
            self.messages_median,
            self.messages_p99,
            self.messages_mean,
            self.messages_mean_ci,
            self.statuses_mean,
            self.bytes_mean,
            self.filter_per_query,
            self.filter_bytes_per_query,
            self.pings_per_query,
            self.publishes_per_query,
            self.messages_per_supernode_second,
            self.dropped_per_query,
            ms(self.first_result_median_ms),
            ms(self.first_result_median_ci.map(|c| c.0)),
            ms(self.first_result_median_ci.map(|c| c.1)),
            ms(self.first_result_p90_ms),
            self.results_mean,
            self.untracked,
            self.departures.0,
            self.departures.1
        )
    }
}
