//! The election model (issue 12): deterministic for a seed, a small
//! population reaches the target range of leaf sessions per supernode, a
//! firewalled population never promotes, and no node's election switches
//! its mode twice within the policy's spacing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use canopy_sim::election::{ElectionSimConfig, run};
use canopy_sim::election_report::{WARM_UP_MINUTES, markdown, svg};

fn small(seed: u64) -> ElectionSimConfig {
    ElectionSimConfig::small(3_000, seed)
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let config = ElectionSimConfig {
        duration: Duration::from_secs(90 * 60),
        ..small(7)
    };
    let first = run(&config);
    let again = run(&config);
    assert_eq!(first, again);
    assert_eq!(markdown(&first, "x"), markdown(&again, "x"));
    assert_eq!(svg(&first).unwrap(), svg(&again).unwrap());
    let other = run(&ElectionSimConfig { seed: 8, ..config });
    assert_ne!(first.samples, other.samples, "the seed matters");
}

#[test]
fn a_small_population_reaches_the_target_range_and_keeps_its_leaves_covered() {
    let report = run(&small(3));
    let settled = report.settled_minute();
    assert!(
        settled.is_some_and(|m| m <= 30),
        "settled at {settled:?}: {:?}",
        report.samples.iter().step_by(10).collect::<Vec<_>>()
    );
    // It took elections: one seed has room for 1,000 sessions, the leaves
    // want 6,000.
    let last = report.last().unwrap();
    assert!(last.promotions > 0 && last.supernodes > 1, "{last:?}");
    let (min, _) = report.coverage_from(WARM_UP_MINUTES);
    assert!(min >= 0.95, "coverage fell to {min}");
}

#[test]
fn a_firewalled_population_never_promotes() {
    let report = run(&ElectionSimConfig {
        reachable: 0.0,
        duration: Duration::from_secs(2 * 60 * 60),
        ..small(5)
    });
    let last = report.last().unwrap();
    assert_eq!(last.promotions, 0, "{last:?}");
    assert_eq!(report.switched, 0);
    assert!(
        report.samples.iter().all(|s| s.supernodes == 1),
        "only the seed is a supernode"
    );
    // And the seed refused leaves as full: the need was there.
    assert!(report.samples.iter().any(|s| s.refusals > 0));
}

#[test]
fn no_node_switches_twice_within_the_spacing() {
    // Churn fast, promote early, and count every supernode as holding
    // "few" leaves so it steps down as soon as the policy lets it: nodes
    // switch as often as the spacing allows.
    let mut config = ElectionSimConfig {
        session_median: Duration::from_secs(20 * 60),
        offline_median: Duration::from_secs(5 * 60),
        ..small(11)
    };
    config.election.idle_for = Duration::from_secs(5 * 60);
    config.election.min_uptime = Duration::from_secs(5 * 60);
    config.election.few_leaves = 10_000;
    let report = run(&config);
    let last = report.last().unwrap();
    assert!(
        last.promotions > 0 && last.demotions > 0,
        "both switches happen: {last:?}"
    );
    let spacing = report
        .min_switch_spacing
        .expect("some node switched twice, or the test proves nothing");
    assert!(
        spacing >= config.election.switch_spacing,
        "a node switched again after {spacing:?}"
    );
}
