//! What a run measured: per query, then summarised per run, as Markdown
//! and CSV rows.

use crate::config::SimConfig;

/// One query's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOutcome {
    /// At least one result came back.
    pub found: bool,
    /// Messages that carried its id (queries and hits).
    pub messages: u64,
    /// From the query to its first hit.
    pub first_result_ms: Option<u64>,
    /// Results as the leaf's search counts them: for a content-id query,
    /// the distinct sources (leaves) of that content.
    pub results: usize,
}

/// A run's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Strategy, as text.
    pub strategy: String,
    /// Replication ratio.
    pub replication: f64,
    /// Supernodes.
    pub supernodes: usize,
    /// Leaves.
    pub leaves: usize,
    /// Queries run.
    pub queries: usize,
    /// Queries a second across the overlay.
    pub query_rate: f64,
    /// Share of queries with at least one result.
    pub success_rate: f64,
    /// Messages per query: median...
    pub messages_median: u64,
    /// ...and 99th percentile.
    pub messages_p99: u64,
    /// Messages each supernode handles a second at the simulated query
    /// rate (mean messages per query x queries a second / supernodes).
    pub messages_per_supernode_second: f64,
    /// Time to the first result over successful queries: median...
    pub first_result_median_ms: Option<u64>,
    /// ...and 90th percentile.
    pub first_result_p90_ms: Option<u64>,
    /// Mean results (sources) per query.
    pub results_mean: f64,
    /// Nodes that left during the run (leaves, then supernodes).
    pub departures: (u64, u64),
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{ms} ms"))
}

impl RunReport {
    pub(crate) fn new(
        config: &SimConfig,
        outcomes: &[QueryOutcome],
        departures: (u64, u64),
    ) -> Self {
        let n = outcomes.len().max(1) as f64;
        let mut messages: Vec<u64> = outcomes.iter().map(|o| o.messages).collect();
        messages.sort_unstable();
        let mut firsts: Vec<u64> = outcomes.iter().filter_map(|o| o.first_result_ms).collect();
        firsts.sort_unstable();
        let mean_messages = messages.iter().sum::<u64>() as f64 / n;
        let query_rate = config.query_rate();
        Self {
            strategy: config.strategy.to_string(),
            replication: config.replication,
            supernodes: config.supernodes,
            leaves: config.leaves(),
            queries: outcomes.len(),
            query_rate,
            success_rate: outcomes.iter().filter(|o| o.found).count() as f64 / n,
            messages_median: percentile(&messages, 0.5),
            messages_p99: percentile(&messages, 0.99),
            messages_per_supernode_second: mean_messages * query_rate
                / config.supernodes.max(1) as f64,
            first_result_median_ms: (!firsts.is_empty()).then(|| percentile(&firsts, 0.5)),
            first_result_p90_ms: (!firsts.is_empty()).then(|| percentile(&firsts, 0.9)),
            results_mean: outcomes.iter().map(|o| o.results).sum::<usize>() as f64 / n,
            departures,
        }
    }

    /// The Markdown table header.
    pub fn markdown_header() -> &'static str {
        "| strategy | replication | success | msgs/query median | msgs/query p99 | msgs/supernode/s | first result median | first result p90 | sources mean |\n|---|---|---|---|---|---|---|---|---|"
    }

    /// This run as a Markdown table row.
    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {}% | {:.1}% | {} | {} | {:.1} | {} | {} | {:.1} |",
            self.strategy,
            self.replication * 100.0,
            self.success_rate * 100.0,
            self.messages_median,
            self.messages_p99,
            self.messages_per_supernode_second,
            millis(self.first_result_median_ms),
            millis(self.first_result_p90_ms),
            self.results_mean
        )
    }

    /// The CSV header.
    pub fn csv_header() -> &'static str {
        "strategy,replication,supernodes,leaves,queries,query_rate,success_rate,messages_median,messages_p99,messages_per_supernode_second,first_result_median_ms,first_result_p90_ms,sources_mean,leaves_departed,supernodes_departed"
    }

    /// This run as a CSV row.
    pub fn csv_row(&self) -> String {
        let ms = |v: Option<u64>| v.map_or(String::new(), |ms| ms.to_string());
        format!(
            "{},{},{},{},{},{:.2},{:.4},{},{},{:.3},{},{},{:.2},{},{}",
            self.strategy,
            self.replication,
            self.supernodes,
            self.leaves,
            self.queries,
            self.query_rate,
            self.success_rate,
            self.messages_median,
            self.messages_p99,
            self.messages_per_supernode_second,
            ms(self.first_result_median_ms),
            ms(self.first_result_p90_ms),
            self.results_mean,
            self.departures.0,
            self.departures.1
        )
    }
}
