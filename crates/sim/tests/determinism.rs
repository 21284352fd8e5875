//! Small runs of the simulator: deterministic (with and without churn),
//! their numbers make sense, every kind of message is counted, and the
//! report writes its three files with its goals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canopy_sim::{Churn, QueryKind, RunReport, SimConfig, Strategy, run, write_report};

fn kind(rows: &[RunReport], kind: QueryKind) -> RunReport {
    rows.iter().find(|r| r.kind == kind).cloned().unwrap()
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let config = SimConfig::small(Strategy::Flood(3), 7);
    let first = run(&config);
    assert_eq!(first.len(), 2, "content-id and keyword rows");
    assert_eq!(first, run(&config));
    let other = SimConfig::small(Strategy::Flood(3), 8);
    assert_ne!(first, run(&other), "the seed matters");
}

#[test]
fn a_run_with_churn_is_deterministic_too() {
    let mut config = SimConfig::small(Strategy::Dynamic, 5);
    // Heavy churn, so a small run sees plenty of it.
    config.churn = Churn {
        leaves_per_minute: 0.2,
        supernodes_per_minute: 0.05,
        ..Churn::MODEST
    };
    let first = run(&config);
    let row = &first[0];
    assert!(row.departures.0 > 0 && row.departures.1 > 0, "{row:?}");
    // Leaves rejoining publish, and filters follow.
    assert!(row.publishes_per_query > 0.0, "{row:?}");
    assert!(row.filter_per_query > 0.0, "{row:?}");
    assert_eq!(first, run(&config));
}

#[test]
fn wider_floods_find_more_and_cost_more_and_dynamic_stops_early() {
    let narrow = kind(
        &run(&SimConfig::small(Strategy::Flood(2), 3)),
        QueryKind::Content,
    );
    let wide = kind(
        &run(&SimConfig::small(Strategy::Flood(5), 3)),
        QueryKind::Content,
    );
    assert!(wide.success_rate >= narrow.success_rate);
    assert!(wide.messages_median > narrow.messages_median);
    assert!(wide.success_rate > 0.5, "{wide:?}");
    let dynamic_rows = run(&SimConfig::small(Strategy::Dynamic, 3));
    let dynamic = kind(&dynamic_rows, QueryKind::Content);
    assert!(dynamic.success_rate > 0.5, "{dynamic:?}");
    assert!(
        dynamic.messages_median < wide.messages_median,
        "{dynamic:?} vs {wide:?}"
    );
    assert!(
        dynamic.results_mean >= 1.0,
        "sources are counted: {dynamic:?}"
    );
    // The leaf's statuses are counted with the query's messages.
    assert!(dynamic.statuses_mean > 0.0, "{dynamic:?}");
    // Keyword queries find many contents (names share words).
    let keywords = kind(&dynamic_rows, QueryKind::Keywords);
    assert!(keywords.success_rate > 0.5, "{keywords:?}");
    assert!(keywords.results_mean > 2.0, "{keywords:?}");
}

#[test]
fn upkeep_is_counted_and_floods_send_no_filters() {
    let mut config = SimConfig::small(Strategy::Flood(3), 4);
    config.churn = Churn::MODEST;
    let flood = kind(&run(&config), QueryKind::Content);
    // Keepalive pings run (links are quiet between sampled queries).
    assert!(flood.pings_per_query > 0.0, "{flood:?}");
    assert!(flood.filter_per_query.abs() < f64::EPSILON, "{flood:?}");
    config.strategy = Strategy::Dynamic;
    let dynamic = kind(&run(&config), QueryKind::Content);
    assert!(dynamic.pings_per_query > 0.0, "{dynamic:?}");
    // Every query and hit is some search's, widening steps (sent under
    // their own ids) included.
    assert_eq!(flood.untracked, 0, "{flood:?}");
    assert_eq!(dynamic.untracked, 0, "{dynamic:?}");
}

#[test]
fn narrow_links_queue_and_drop_a_wide_flood() {
    let mut config = SimConfig::small(Strategy::Flood(5), 6);
    config.queries = 20;
    let roomy = kind(&run(&config), QueryKind::Keywords);
    // 8 kbit/s links with a 2 KiB queue: a flood's burst of hits cannot
    // all go.
    config.supernode_link.bytes_per_second = 1_000;
    config.supernode_link.queue_bytes = 2_048;
    config.leaf_link = config.supernode_link;
    let narrow = kind(&run(&config), QueryKind::Keywords);
    assert!(
        roomy.dropped_per_query < narrow.dropped_per_query,
        "{roomy:?} {narrow:?}"
    );
    assert!(narrow.dropped_per_query > 0.0, "{narrow:?}");
    let (fast, slow) = (
        roomy.first_result_median_ms.unwrap(),
        narrow.first_result_median_ms.unwrap_or(u64::MAX),
    );
    assert!(fast < slow, "{fast} {slow}");
}

#[test]
fn the_report_writes_a_table_a_csv_a_plot_and_its_goals() {
    let mut config = SimConfig::small(Strategy::Flood(2), 1);
    config.queries = 20;
    let mut rows = run(&config);
    config.strategy = Strategy::Dynamic;
    rows.extend(run(&config));
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), "small", "a test run", &rows).unwrap();
    let markdown = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        markdown.contains("| dynamic | content id | 1% |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| dynamic | keywords | 1% |"),
        "{markdown}"
    );
    assert!(markdown.contains("## Goals"), "{markdown}");
    assert!(markdown.contains("| keywords | 1% |"), "{markdown}");
    let csv = std::fs::read_to_string(dir.path().join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{svg}");
}

/// Leaves replace lost parents and supernodes keep (and, back, regain)
/// their peers through the core's own policies (`LeafSet`, `Discovery`):
/// under heavy supernode churn, every source stays findable, a flood
/// still reaches about as far, and the run replays exactly.
#[test]
fn lost_parents_and_peers_are_replaced_by_the_core_policies_deterministically() {
    let calm = kind(
        &run(&SimConfig::small(Strategy::Flood(4), 11)),
        QueryKind::Content,
    );
    let mut config = SimConfig::small(Strategy::Flood(4), 11);
    config.churn = Churn {
        leaves_per_minute: 0.0,
        supernodes_per_minute: 0.5,
        offline_ms: (20_000, 40_000),
        reattach_ms: (1_000, 2_000),
    };
    let churned = kind(&run(&config), QueryKind::Content);
    assert!(churned.departures.1 >= 50, "{churned:?}");
    // Leaves whose parents left publish through new ones (without: about
    // 9.0 sources a query here, against 10).
    assert!(
        churned.results_mean >= calm.results_mean * 0.97,
        "{churned:?} vs {calm:?}"
    );
    // Supernodes that lost peers, or came back, dial until they have the
    // peers they want (without: the graph thins, a flood costs about half).
    assert!(
        churned.messages_median * 4 >= calm.messages_median * 3,
        "{churned:?} vs {calm:?}"
    );
    assert_eq!(churned, kind(&run(&config), QueryKind::Content));
}
