//! The goals a set of runs is checked against (issue 12), stated and
//! judged from the measured rows, pass or fail:
//!
//! 1. dynamic querying uses at most a tenth of the messages of the
//!    cheapest flood TTL whose success is at least as high, at every
//!    replication ratio and kind of query (counting the query's own
//!    messages, hits and QueryStatus, and the routing filter patches
//!    amortized per query: [`RunReport::goal_messages`]);
//! 2. its success is at least 95% at the rarest ratio (0.01%);
//! 3. its median time to a first result is at most twice that flood's.
//!
//! When no flood is as successful, the most successful one is the
//! comparison (and the table says so).

use crate::report::RunReport;

/// Messages: at most this share of the flood's.
pub const MESSAGE_SHARE: f64 = 0.1;
/// Success at the rarest ratio.
pub const RARE_SUCCESS: f64 = 0.95;
/// The rarest ratio the success goal applies to (and below).
pub const RARE_RATIO: f64 = 0.0001;
/// First result: at most this many times the flood's median.
pub const FIRST_RESULT_FACTOR: f64 = 2.0;

/// One comparison: a dynamic row and the flood it is held against.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The dynamic querying run.
    pub dynamic: RunReport,
    /// The flood it is compared with, and whether that flood is at least
    /// as successful (false: none was, this is the most successful).
    pub flood: Option<(RunReport, bool)>,
    /// Goal 1.
    pub messages_ok: bool,
    /// Goal 2 (`None` above the rarest ratio).
    pub success_ok: Option<bool>,
    /// Goal 3 (`None` without first results to compare).
    pub first_result_ok: Option<bool>,
}

impl Verdict {
    /// Every goal that applies passed.
    pub fn passed(&self) -> bool {
        self.messages_ok && self.success_ok != Some(false) && self.first_result_ok != Some(false)
    }
}

/// The verdicts for every dynamic row in `rows`.
pub fn judge(rows: &[RunReport]) -> Vec<Verdict> {
    rows.iter()
        .filter(|r| r.strategy == "dynamic")
        .map(|dynamic| {
            let floods: Vec<&RunReport> = rows
                .iter()
                .filter(|r| {
                    r.strategy.starts_with("flood")
                        && r.kind == dynamic.kind
                        && r.replication == dynamic.replication
                })
                .collect();
            let as_good = floods
                .iter()
                .filter(|f| f.success_rate >= dynamic.success_rate)
                .min_by(|a, b| a.goal_messages().total_cmp(&b.goal_messages()));
            let flood = match as_good {
                Some(f) => Some(((*f).clone(), true)),
                None => floods
                    .iter()
                    .max_by(|a, b| {
                        a.success_rate
                            .total_cmp(&b.success_rate)
                            .then(b.goal_messages().total_cmp(&a.goal_messages()))
                    })
                    .map(|f| ((*f).clone(), false)),
            };
            let messages_ok = flood
                .as_ref()
                .is_some_and(|(f, _)| dynamic.goal_messages() <= MESSAGE_SHARE * f.goal_messages());
            let success_ok = (dynamic.replication <= RARE_RATIO * 1.000_001)
                .then_some(dynamic.success_rate >= RARE_SUCCESS);
            let first_result_ok = flood.as_ref().and_then(|(f, _)| {
                let (d, f) = (dynamic.first_result_median_ms?, f.first_result_median_ms?);
                Some(d as f64 <= FIRST_RESULT_FACTOR * f as f64)
            });
            Verdict {
                dynamic: dynamic.clone(),
                flood,
                messages_ok,
                success_ok,
                first_result_ok,
            }
        })
        .collect()
}

fn mark(ok: bool) -> &'static str {
    if ok { "**pass**" } else { "**FAIL**" }
}

/// The verdicts as a Markdown section.
pub fn markdown(rows: &[RunReport]) -> String {
    let verdicts = judge(rows);
    let mut text = String::from(
        "## Goals\n\nDynamic querying (routing filters on) against the cheapest flood at least as \
         successful; messages per query = the query's own (queries, hits, QueryStatus; mean) + \
         routing filter patches amortized over the overlay's query rate. Goals: messages <= 1/10 \
         of that flood's; success >= 95% at 0.01%; first result median <= 2x that flood's.\n\n\
         | query | replication | dynamic msgs/query | dynamic success | flood | flood success | flood msgs/query | ratio | <= 1/10 | success >= 95% | first result (dynamic / flood) | <= 2x | all |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for v in &verdicts {
        let d = &v.dynamic;
        let (flood, flood_success, flood_msgs, ratio, flood_first) = match &v.flood {
            Some((f, as_good)) => (
                if *as_good {
                    f.strategy.clone()
                } else {
                    format!("{} (none as successful)", f.strategy)
                },
                format!("{:.1}%", f.success_rate * 100.0),
                format!("{:.0}", f.goal_messages()),
                format!("{:.3}", d.goal_messages() / f.goal_messages().max(1e-9)),
                f.first_result_median_ms,
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), None),
        };
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        text.push_str(&format!(
            "| {} | {}% | {:.0} | {:.1}% ({:.1}-{:.1}) | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
            d.kind,
            d.replication * 100.0,
            d.goal_messages(),
            d.success_rate * 100.0,
            d.success_ci.0 * 100.0,
            d.success_ci.1 * 100.0,
            flood,
            flood_success,
            flood_msgs,
            ratio,
            mark(v.messages_ok),
            v.success_ok.map_or("n/a", mark),
            ms(d.first_result_median_ms),
            ms(flood_first),
            v.first_result_ok.map_or("n/a", mark),
            mark(v.passed()),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::QueryKind;

    fn row(strategy: &str, replication: f64, success: f64, messages: f64, first: u64) -> RunReport {
        RunReport {
            strategy: strategy.into(),
            kind: QueryKind::Content,
            replication,
            supernodes: 10,
            leaves: 100,
            queries: 100,
            query_rate: 1.0,
            success_rate: success,
            success_ci: (success, success),
            messages_median: messages as u64,
            messages_p99: messages as u64,
            messages_mean: messages,
            messages_mean_ci: 0.0,
            statuses_mean: 0.0,
            bytes_mean: 0.0,
            filter_per_query: 1.0,
            filter_bytes_per_query: 0.0,
            pings_per_query: 50.0,
            publishes_per_query: 0.0,
            messages_per_supernode_second: 0.0,
            dropped_per_query: 0.0,
            first_result_median_ms: Some(first),
            first_result_median_ci: None,
            first_result_p90_ms: None,
            results_mean: 1.0,
            untracked: 0,
            departures: (0, 0),
        }
    }

    #[test]
    fn dynamic_is_held_against_the_cheapest_flood_as_successful() {
        let rows = vec![
            // TTL 2 is cheap but finds less: not the comparison.
            row("flood ttl 2", 0.0001, 0.5, 30.0, 100),
            row("flood ttl 3", 0.0001, 0.99, 1_000.0, 200),
            row("flood ttl 4", 0.0001, 1.0, 5_000.0, 200),
            row("dynamic", 0.0001, 0.98, 89.0, 399),
        ];
        let verdicts = judge(&rows);
        assert_eq!(verdicts.len(), 1);
        let v = &verdicts[0];
        let (flood, as_good) = v
            .flood
            .clone()
            .unwrap_or_else(|| (row("-", 0.0, 0.0, 0.0, 0), false));
        assert_eq!((flood.strategy.as_str(), as_good), ("flood ttl 3", true));
        // 90 (89 + 1 filter) <= 1/10 of 1,001; 98% >= 95%; 399 <= 2 x 200.
        assert!(v.messages_ok && v.success_ok == Some(true) && v.first_result_ok == Some(true));
        assert!(v.passed());
        assert!(markdown(&rows).contains("| content id | 0.01% | 90 |"));
    }

    #[test]
    fn each_goal_can_fail() {
        let rows = vec![
            row("flood ttl 3", 0.0001, 0.90, 1_000.0, 200),
            row("dynamic", 0.0001, 0.94, 100.0, 401),
        ];
        let v = &judge(&rows)[0];
        // No flood as successful: the most successful one, said so.
        assert_eq!(v.flood.as_ref().map(|(_, as_good)| *as_good), Some(false));
        // 101 > 100.1; 94% < 95%; 401 > 400.
        assert!(!v.messages_ok);
        assert_eq!(v.success_ok, Some(false));
        assert_eq!(v.first_result_ok, Some(false));
        assert!(!v.passed());
        assert!(markdown(&rows).contains("(none as successful)"));
        // Above the rarest ratio, success is not judged.
        let rows = vec![
            row("flood ttl 2", 0.01, 1.0, 10.0, 1),
            row("dynamic", 0.01, 0.5, 1.0, 1),
        ];
        assert_eq!(judge(&rows)[0].success_ok, None);
    }
}
