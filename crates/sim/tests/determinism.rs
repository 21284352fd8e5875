//! A small run of the simulator: deterministic, and its numbers make sense.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canopy_sim::{SimConfig, Strategy, run};

#[test]
fn the_same_seed_gives_the_same_report() {
    let config = SimConfig::small(Strategy::Flood(3), 7);
    assert_eq!(run(&config), run(&config));
    let other = SimConfig::small(Strategy::Flood(3), 8);
    assert_ne!(run(&config), run(&other), "the seed matters");
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
}
