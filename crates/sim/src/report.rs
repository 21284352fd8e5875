//! What a run measured: per query, then summarised per run.

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
    /// Distinct results.
    pub results: usize,
}

/// A run's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Strategy, as text.
    pub strategy: String,
    /// Replication ratio.
    pub replication: f64,
    /// Supernodes and leaves.
    pub supernodes: usize,
    /// Leaves.
    pub leaves: usize,
    /// Queries run.
    pub queries: usize,
    /// Share of queries with at least one result.
    pub success_rate: f64,
    /// Messages per query: median and 99th percentile.
    pub messages_median: u64,
    /// 99th percentile.
    pub messages_p99: u64,
    /// Messages each supernode handles a second when the leaves send one
    /// query a second per thousand leaves.
    pub messages_per_supernode_second: f64,
    /// Median time to the first result, over successful queries.
    pub first_result_median_ms: Option<u64>,
    /// Mean results per query.
    pub results_mean: f64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl RunReport {
    pub(crate) fn new(config: &SimConfig, leaves: usize, outcomes: Vec<QueryOutcome>) -> Self {
        let n = outcomes.len().max(1) as f64;
        let mut messages: Vec<u64> = outcomes.iter().map(|o| o.messages).collect();
        messages.sort_unstable();
        let mut firsts: Vec<u64> = outcomes.iter().filter_map(|o| o.first_result_ms).collect();
        firsts.sort_unstable();
        let mean_messages = messages.iter().sum::<u64>() as f64 / n;
        let queries_per_second = leaves as f64 / 1000.0;
        Self {
            strategy: config.strategy.to_string(),
            replication: config.replication,
            supernodes: config.supernodes,
            leaves,
            queries: outcomes.len(),
            success_rate: outcomes.iter().filter(|o| o.found).count() as f64 / n,
            messages_median: percentile(&messages, 0.5),
            messages_p99: percentile(&messages, 0.99),
            messages_per_supernode_second: mean_messages * queries_per_second
                / config.supernodes.max(1) as f64,
            first_result_median_ms: (!firsts.is_empty()).then(|| percentile(&firsts, 0.5)),
            results_mean: outcomes.iter().map(|o| o.results).sum::<usize>() as f64 / n,
        }
    }

    /// The Markdown table header.
    pub fn markdown_header() -> &'static str {
        "| strategy | replication | success | msgs/query median | msgs/query p99 | msgs/supernode/s | first result median | results mean |\n|---|---|---|---|---|---|---|---|"
    }

    /// This run as a Markdown table row.
    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {}% | {:.1}% | {} | {} | {:.1} | {} | {:.1} |",
            self.strategy,
            self.replication * 100.0,
            self.success_rate * 100.0,
            self.messages_median,
            self.messages_p99,
            self.messages_per_supernode_second,
            self.first_result_median_ms
                .map_or("-".into(), |ms| format!("{ms} ms")),
            self.results_mean
        )
    }

    /// The CSV header.
    pub fn csv_header() -> &'static str {
        "strategy,replication,supernodes,leaves,queries,success_rate,messages_median,messages_p99,messages_per_supernode_second,first_result_median_ms,results_mean"
    }

    /// This run as a CSV row.
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{:.4},{},{},{:.3},{},{:.2}",
            self.strategy,
            self.replication,
            self.supernodes,
            self.leaves,
            self.queries,
            self.success_rate,
            self.messages_median,
            self.messages_p99,
            self.messages_per_supernode_second,
            self.first_result_median_ms
                .map_or(String::new(), |ms| ms.to_string()),
            self.results_mean
        )
    }
}
