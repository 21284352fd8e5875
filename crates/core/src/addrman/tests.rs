//! The address manager under floods, restarts and failures.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use super::*;

const KEY: [u8; 32] = [42; 32];
const HOUR_MS: u64 = 60 * 60 * 1000;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(a, b, c, d), port))
}

/// Addresses spread over `n` different /16s (and hosts), as an attacker
/// with a long list would name them.
fn spread(n: usize, salt: u8) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            let i = u16::try_from(i).unwrap();
            let [hi, lo] = i.to_be_bytes();
            v4(11 + hi, lo, salt, 1, 6346)
        })
        .collect()
}

/// Floods `manager` from `source` with `answers` answers of `per` fresh
/// addresses each, an hour apart so the budget never stops it.
fn flood(manager: &mut AddrMan, source: SocketAddr, answers: usize, per: usize, start: u64) {
    for answer in 0..answers {
        let salt = u8::try_from(answer % 250).unwrap();
        // Fresh addresses per source and per answer.
        let host = match source.ip() {
            std::net::IpAddr::V4(ip) => ip.octets()[0],
            std::net::IpAddr::V6(_) => 0,
        };
        let addrs: Vec<SocketAddr> = spread(per, salt)
            .into_iter()
            .map(|a| match a.ip() {
                std::net::IpAddr::V4(ip) => {
                    let [a, b, c, _] = ip.octets();
                    v4(a, b, c, host, 1000 + u16::try_from(answer).unwrap())
                }
                std::net::IpAddr::V6(_) => a,
            })
            .collect();
        let now = Time(start + answer as u64 * HOUR_MS);
        manager.add(source, &addrs, answer as u64, now);
    }
}

fn new_buckets_used(manager: &AddrMan) -> BTreeSet<usize> {
    manager
        .addresses()
        .filter_map(|a| manager.position(a))
        .filter(|(table, _)| *table == Table::New)
        .map(|(_, bucket)| bucket)
        .collect()
}

#[test]
fn a_flood_from_one_source_fills_only_its_few_buckets() {
    let mut manager = AddrMan::new(KEY);
    let attacker = v4(198, 51, 100, 7, 6346);
    flood(&mut manager, attacker, 1000, 32, 0);
    let used = new_buckets_used(&manager);
    assert!(
        used.len() <= NEW_BUCKETS_PER_SOURCE,
        "one source reached {} buckets",
        used.len()
    );
    assert!(manager.new_len() <= NEW_BUCKETS_PER_SOURCE * BUCKET_SIZE);
    assert_eq!(manager.tried_len(), 0);
    // Its neighbours in the same /16 are the same source as far as
    // buckets go.
    flood(&mut manager, v4(198, 51, 7, 9, 1), 200, 32, 0);
    assert!(new_buckets_used(&manager).len() <= NEW_BUCKETS_PER_SOURCE);
    // Another network's source still finds room.
    let honest = v4(203, 0, 113, 5, 6346);
    let heard = v4(192, 0, 2, 1, 6346);
    assert_eq!(manager.add(honest, &[heard], 0, Time(0)), 1);
    assert!(manager.addresses().any(|a| a == heard));
}

#[test]
fn one_answer_adds_a_few_and_one_source_a_few_an_hour() {
    let mut manager = AddrMan::new(KEY);
    let source = v4(198, 51, 100, 7, 6346);
    assert_eq!(
        manager.add(source, &spread(32, 0), 0, Time(0)),
        MAX_ADDRS_PER_ANSWER
    );
    assert_eq!(manager.stats().over_answer_cap, 32 - 8);
    let mut total = MAX_ADDRS_PER_ANSWER;
    for salt in 1..20 {
        total += manager.add(source, &spread(32, salt), 0, Time(1000 * u64::from(salt)));
    }
    assert!(
        total <= MAX_ADDRS_PER_SOURCE_WINDOW as usize,
        "{total} in an hour"
    );
    assert!(manager.stats().over_source_budget > 0);
    // An hour later the budget is back.
    assert!(manager.add(source, &spread(32, 99), 0, Time(HOUR_MS + 1)) > 0);
}

#[test]
fn seeds_survive_any_flood_and_are_dialed_first() {
    let mut manager = AddrMan::new(KEY);
    let seed = v4(203, 0, 113, 1, 6346);
    manager.set_seeds([seed]);
    // Many sources, in many /16s, each flooding.
    for s in 0..64u8 {
        flood(&mut manager, v4(100 + s, 7, 0, 1, 6346), 40, 32, 0);
    }
    // The seed's own address in a flood changes nothing.
    manager.add(v4(198, 51, 100, 7, 1), &[seed], 0, Time(0));
    assert!(manager.new_len() > 500, "the flood landed");
    assert_eq!(manager.seeds(), &[seed]);
    assert_eq!(manager.addresses().next(), Some(seed));
    for random in 0..100 {
        assert_eq!(manager.select(random, Time(0), |_| false), Some(seed));
    }
    // Only while the seed is connected (or backing off) does the driver
    // get anything else.
    let other = manager.select(7, Time(0), |a| a == seed);
    assert!(other.is_some_and(|a| a != seed));
}

#[test]
fn tried_entries_are_not_evicted_by_new_ones() {
    let mut manager = AddrMan::new(KEY);
    let honest = v4(203, 0, 113, 5, 6346);
    let good: Vec<SocketAddr> = (0..8).map(|i| v4(192, 0, 2, i + 1, 6346)).collect();
    manager.add(honest, &good, 0, Time(0));
    for addr in &good {
        manager.mark_good(*addr, Time(10));
    }
    assert_eq!(manager.tried_len(), good.len());
    for s in 0..64u8 {
        flood(&mut manager, v4(100 + s, 7, 0, 1, 6346), 40, 32, 20);
    }
    for addr in &good {
        assert_eq!(
            manager.position(*addr).map(|(table, _)| table),
            Some(Table::Tried),
            "{addr} survived"
        );
    }
    // New entries never exceed their table, however long the flood.
    assert!(manager.new_len() <= NEW_BUCKETS * BUCKET_SIZE);
}

#[test]
fn a_full_bucket_gives_way_only_to_terrible_entries() {
    let mut manager = AddrMan::new(KEY);
    let source = v4(198, 51, 100, 7, 6346);
    flood(&mut manager, source, 200, 32, 0);
    let full = manager.new_len();
    let now = Time(200 * HOUR_MS);
    // Still good: a fresh list from the same source finds no room.
    assert_eq!(manager.add(source, &spread(32, 251), 0, now), 0);
    assert!(manager.stats().bucket_full > 0);
    // A month later the old entries are terrible and make room.
    let later = Time(now.0 + 31 * 24 * HOUR_MS);
    assert!(manager.add(source, &spread(32, 252), 0, later) > 0);
    assert_eq!(manager.new_len(), full, "replaced, not grown");
}

#[test]
fn failures_are_dialed_less_and_good_addresses_move_to_tried() {
    let mut manager = AddrMan::new(KEY);
    let source = v4(203, 0, 113, 5, 6346);
    let (bad, fine) = (v4(192, 0, 2, 1, 1), v4(192, 0, 2, 2, 1));
    manager.add(source, &[bad, fine], 0, Time(0));
    for _ in 0..5 {
        manager.mark_failed(bad, Time(0));
    }
    let now = Time(HOUR_MS);
    let picks = (0..200)
        .filter(|r| manager.select(*r, now, |_| false) == Some(bad))
        .count();
    assert!(
        picks < 50,
        "a failing address is picked {picks} times in 200"
    );
    manager.mark_good(fine, now);
    assert_eq!(manager.position(fine).map(|p| p.0), Some(Table::Tried));
    assert_eq!(manager.tried_len(), 1);
    assert_eq!(manager.new_len(), 1);
}

#[test]
fn a_restart_keeps_every_entry_in_its_bucket() {
    let mut manager = AddrMan::new(KEY);
    for s in 0..8u8 {
        flood(&mut manager, v4(100 + s, 7, 0, 1, 6346), 3, 32, 0);
    }
    let tried = v4(192, 0, 2, 9, 6346);
    manager.mark_good(tried, Time(5));
    let before: Vec<(SocketAddr, Option<(Table, usize)>)> = manager
        .addresses()
        .map(|a| (a, manager.position(a)))
        .collect();
    assert!(before.len() > 50);
    let json = serde_json::to_vec(&manager.snapshot()).unwrap();
    let again = AddrMan::restore(serde_json::from_slice(&json).unwrap());
    let after: Vec<(SocketAddr, Option<(Table, usize)>)> =
        again.addresses().map(|a| (a, again.position(a))).collect();
    assert_eq!(before.len(), after.len());
    let before: BTreeSet<_> = before.into_iter().collect();
    let after: BTreeSet<_> = after.into_iter().collect();
    assert_eq!(before, after);
    // Another key would have put them elsewhere: the key is what is kept.
    let mut snapshot = manager.snapshot();
    snapshot.key = [7; 32];
    let rekeyed = AddrMan::restore(snapshot);
    let moved = manager
        .addresses()
        .filter(|a| rekeyed.position(*a) != manager.position(*a))
        .count();
    assert!(moved > 0);
}

#[test]
fn a_damaged_snapshot_cannot_overfill_the_tables() {
    let mut snapshot = AddrMan::new(KEY).snapshot();
    let source = "198.51.100.7".parse().unwrap();
    snapshot.new = spread(5000, 1)
        .into_iter()
        .map(|addr| SavedEntry {
            addr,
            source,
            last_heard: 0,
            last_attempt: None,
            last_success: None,
            attempts: 0,
        })
        .collect();
    snapshot.tried = snapshot.new.clone();
    let manager = AddrMan::restore(snapshot);
    assert!(manager.new_len() <= NEW_BUCKETS_PER_SOURCE * BUCKET_SIZE);
    assert!(manager.tried_len() <= TRIED_BUCKETS * BUCKET_SIZE);
}

#[test]
fn nothing_undialable_and_nothing_local_from_strangers() {
    let mut manager = AddrMan::new(KEY);
    let stranger = v4(198, 51, 100, 7, 6346);
    let added = manager.add(
        stranger,
        &[
            v4(127, 0, 0, 1, 22),
            v4(192, 168, 1, 1, 80),
            v4(0, 0, 0, 0, 6346),
            v4(203, 0, 113, 1, 0),
            stranger,
        ],
        0,
        Time(0),
    );
    assert_eq!(added, 0);
    assert_eq!(manager.stats().unlearnable, 5);
}

#[test]
fn a_mapped_address_is_the_ipv4_one() {
    let mut manager = AddrMan::new([7; 32]);
    let source = v4(198, 51, 100, 1, 6346);
    let plain = v4(203, 0, 113, 9, 6346);
    let mapped = SocketAddr::new(
        std::net::IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped()),
        6346,
    );
    assert_eq!(manager.add(source, &[mapped], 0, Time(0)), 1);
    assert_eq!(
        manager.add(source, &[plain], 0, Time(1)),
        0,
        "already known"
    );
    assert_eq!(manager.addresses().collect::<Vec<_>>(), vec![plain]);
    manager.mark_good(mapped, Time(2));
    assert_eq!(manager.position(plain).map(|(t, _)| t), Some(Table::Tried));
    manager.set_seeds([mapped]);
    assert_eq!(manager.seeds(), &[plain]);
}
