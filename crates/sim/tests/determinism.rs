//! Small runs of the simulator: deterministic (with and without churn),
//! their numbers make sense, and the report writes its three files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canopy_sim::{Churn, SimConfig, Strategy, run, write_report};

#[test]
fn the_same_seed_gives_the_same_report() {
    let config = SimConfig::small(Strategy::Flood(3), 7);
    assert_eq!(run(&config), run(&config));
    let other = SimConfig::small(Strategy::Flood(3), 8);
    assert_ne!(run(&config), run(&other), "the seed matters");
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
    assert!(
        first.departures.0 > 0 && first.departures.1 > 0,
        "{first:?}"
    );
    assert_eq!(first, run(&config));
}

#[test]
fn wider_floods_find_more_and_cost_more_and_dynamic_stops_early() {
    let narrow = run(&SimConfig::small(Strategy::Flood(2), 3));
    let wide = run(&SimConfig::small(Strategy::Flood(5), 3));
    assert!(wide.success_rate >= narrow.success_rate);
    assert!(wide.messages_median > narrow.messages_median);
    assert!(wide.success_rate > 0.5, "{wide:?}");
    let dynamic = run(&SimConfig::small(Strategy::Dynamic, 3));
    assert!(dynamic.success_rate > 0.5, "{dynamic:?}");
    assert!(
        dynamic.messages_median < wide.messages_median,
        "{dynamic:?} vs {wide:?}"
    );
    assert!(
        dynamic.results_mean >= 1.0,
        "sources are counted: {dynamic:?}"
    );
}

#[test]
fn the_report_writes_a_table_a_csv_and_a_plot() {
    let mut config = SimConfig::small(Strategy::Flood(2), 1);
    config.queries = 20;
    let mut rows = vec![run(&config)];
    config.strategy = Strategy::Dynamic;
    rows.push(run(&config));
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), "small", "a test run", &rows).unwrap();
    let markdown = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(markdown.contains("| dynamic | 1% |"), "{markdown}");
    let csv = std::fs::read_to_string(dir.path().join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{svg}");
}

/// Leaves replace lost parents and supernodes keep (and, back, regain)
/// their peers through the core's own policies (`LeafSet`, `Discovery`):
/// under heavy supernode churn, every source stays findable, a flood
/// still reaches about as far, and the run replays exactly.
#[test]
fn lost_parents_and_peers_are_replaced_by_the_core_policies_deterministically() {
    let calm = run(&SimConfig::small(Strategy::Flood(4), 11));
    let mut config = SimConfig::small(Strategy::Flood(4), 11);
    config.churn = Churn {
        leaves_per_minute: 0.0,
        supernodes_per_minute: 0.5,
        offline_ms: (20_000, 40_000),
        reattach_ms: (1_000, 2_000),
    };
    let churned = run(&config);
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
    assert_eq!(churned, run(&config));
}
