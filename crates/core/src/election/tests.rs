//! The election's rules, each on a fake clock with a fixed seed.

use super::*;

const MIN: Duration = Duration::from_secs(60);

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 6346))
}

/// A node that meets every capability rule (the defaults' numbers).
fn capable(now: Time) -> Election {
    let mut election = Election::new(ElectionConfig::default(), now, SplitMix64::new(7));
    election.handle_reachability(Reachable::Yes);
    election.handle_rates(50_000, 100_000);
    election.handle_memory(1 << 30);
    election
}

/// Runs the policy's timer from `from` to `until`, returning the first
/// action and when it came.
fn run(election: &mut Election, from: Time, until: Time) -> Option<(Time, ElectionAction)> {
    let mut now = from;
    while now <= until {
        election.handle_timeout(now);
        if let Some(action) = election.poll_action() {
            return Some((now, action));
        }
        let next = election.poll_timeout();
        assert!(next > now, "the timer moves on");
        now = next;
    }
    None
}

#[test]
fn promotes_when_needed_and_capable() {
    let start = Time::ZERO;
    let mut election = capable(start);
    let hour = start + Duration::from_secs(3600);
    // Capable but not needed: nothing.
    assert_eq!(run(&mut election, start, hour + 5 * MIN), None);
    let now = election.poll_timeout();
    election.handle_free_slots(addr(1), 0, now);
    election.handle_refused_full(now);
    assert!(election.status(now).needed);
    let (at, action) = run(&mut election, now, now + 5 * MIN).expect("promotes");
    assert_eq!(action, ElectionAction::Promote);
    assert!(at <= now + 2 * MIN);
    assert_eq!(election.mode(), Mode::Supernode);
}

#[test]
fn no_promotion_before_uptime() {
    let start = Time::ZERO;
    let mut election = capable(start);
    election.handle_refused_full(start);
    assert_eq!(election.capable(start + 30 * MIN), Err(Incapable::Uptime));
    assert_eq!(run(&mut election, start, start + 9 * MIN), None);
}

#[test]
fn no_promotion_when_firewalled() {
    let start = Time::ZERO;
    let mut election = capable(start);
    election.handle_reachability(Reachable::No);
    let late = start + Duration::from_secs(2 * 3600);
    let mut now = start;
    while now < late {
        election.handle_refused_full(now);
        election.handle_timeout(now);
        assert_eq!(election.poll_action(), None, "firewalled never promotes");
        now = election.poll_timeout();
    }
    assert_eq!(election.capable(late), Err(Incapable::NotReachable));
    // Unknown reachability is not good enough either.
    election.handle_reachability(Reachable::Unknown);
    assert_eq!(election.capable(late), Err(Incapable::NotReachable));
}

#[test]
fn no_promotion_when_slow_or_short_of_memory() {
    let start = Time::ZERO;
    let late = start + Duration::from_secs(2 * 3600);
    let mut slow = Election::new(ElectionConfig::default(), start, SplitMix64::new(1));
    slow.handle_reachability(Reachable::Yes);
    slow.handle_rates(9_000, 100_000);
    slow.handle_memory(1 << 30);
    assert_eq!(slow.capable(late), Err(Incapable::UploadRate));
    slow.handle_rates(10_000, 0);
    assert_eq!(slow.capable(late), Ok(()), "the best rate seen is kept");
    let mut slow = Election::new(ElectionConfig::default(), start, SplitMix64::new(1));
    slow.handle_reachability(Reachable::Yes);
    slow.handle_rates(10_000, 19_999);
    slow.handle_memory(1 << 30);
    assert_eq!(slow.capable(late), Err(Incapable::DownloadRate));
    slow.handle_rates(0, 20_000);
    assert_eq!(slow.capable(late), Ok(()));
    slow.handle_memory(1 << 20);
    assert_eq!(slow.capable(late), Err(Incapable::Memory));
}

#[test]
fn no_promotion_when_others_have_room() {
    let start = Time::ZERO;
    let mut election = capable(start);
    let late = start + Duration::from_secs(2 * 3600);
    election.handle_free_slots(addr(1), 20, late);
    election.handle_refused_full(late);
    assert!(
        !election.status(late).needed,
        "a refusal with room elsewhere"
    );
    assert_eq!(run(&mut election, late, late + 5 * MIN), None);
}

#[test]
fn refusals_and_free_slots_expire() {
    let start = Time::ZERO;
    let mut election = capable(start);
    election.handle_refused_full(start);
    assert!(election.needed(start));
    assert!(
        !election.needed(start + 11 * MIN),
        "an old refusal is no need"
    );
    election.handle_free_slots(addr(1), 40, start + 5 * MIN);
    election.handle_refused_full(start + 11 * MIN);
    assert!(!election.needed(start + 11 * MIN));
    assert!(
        election.needed(start + 16 * MIN),
        "the room advertised expired"
    );
}

/// A supernode promoted soon after `start` (needed and capable then), and
/// when.
fn promoted_at(start: Time) -> (Election, Time) {
    let config = ElectionConfig {
        min_uptime: Duration::ZERO,
        ..ElectionConfig::default()
    };
    let mut election = Election::new(config, start, SplitMix64::new(3));
    election.handle_reachability(Reachable::Yes);
    election.handle_rates(50_000, 100_000);
    election.handle_memory(1 << 30);
    election.handle_refused_full(start);
    let (at, action) = run(&mut election, start, start + 5 * MIN).expect("promotes");
    assert_eq!(action, ElectionAction::Promote);
    (election, at)
}

fn promoted(start: Time) -> Election {
    promoted_at(start).0
}

#[test]
fn demotes_when_idle_and_plentiful_with_try_list() {
    let start = Time::ZERO;
    let (mut election, promoted) = promoted_at(start);
    let now = election.poll_timeout();
    election.handle_leaves(1, now);
    let mut t = now;
    let (at, action) = loop {
        assert!(t < now + 120 * MIN, "steps down within two hours");
        // Pongs keep the others' free slots fresh.
        election.handle_free_slots(addr(1), 10, t);
        election.handle_free_slots(addr(2), 30, t);
        election.handle_free_slots(addr(3), 0, t);
        election.handle_timeout(t);
        if let Some(action) = election.poll_action() {
            break (t, action);
        }
        t = election.poll_timeout();
    };
    assert!(
        at >= promoted + 60 * MIN && at <= promoted + 62 * MIN,
        "few leaves (since promotion) for the idle time first: {at:?}"
    );
    assert_eq!(
        action,
        ElectionAction::Demote {
            try_list: vec![addr(2), addr(1)]
        },
        "most free slots first, full ones left out"
    );
    assert_eq!(election.mode(), Mode::Leaf);
}

#[test]
fn no_demotion_while_busy_or_scarce() {
    let start = Time::ZERO;
    let mut busy = promoted(start);
    let now = busy.poll_timeout();
    busy.handle_leaves(25, now);
    let mut t = now;
    while t < now + 180 * MIN {
        busy.handle_free_slots(addr(1), 100, t);
        busy.handle_timeout(t);
        assert_eq!(busy.poll_action(), None, "a busy supernode stays");
        t = busy.poll_timeout();
    }

    let mut scarce = promoted(start);
    let now = scarce.poll_timeout();
    scarce.handle_leaves(0, now);
    let mut t = now;
    while t < now + 180 * MIN {
        scarce.handle_free_slots(addr(1), 5, t);
        scarce.handle_timeout(t);
        assert_eq!(scarce.poll_action(), None, "others have no room");
        t = scarce.poll_timeout();
    }
}

#[test]
fn demotes_when_no_longer_reachable() {
    let start = Time::ZERO;
    let mut election = promoted(start);
    election.handle_leaves(40, start);
    election.handle_reachability(Reachable::No);
    let (at, action) = run(&mut election, start, start + 60 * MIN).expect("steps down");
    assert!(matches!(action, ElectionAction::Demote { .. }));
    assert!(at >= start + 30 * MIN, "not before the switch spacing");
}

#[test]
fn switches_are_rate_limited() {
    let start = Time::ZERO;
    let config = ElectionConfig {
        min_uptime: Duration::ZERO,
        idle_for: Duration::ZERO,
        plenty_free_slots: 1,
        few_leaves: 0,
        ..ElectionConfig::default()
    };
    let mut election = Election::new(config, start, SplitMix64::new(9));
    election.handle_reachability(Reachable::Yes);
    election.handle_rates(50_000, 100_000);
    election.handle_memory(1 << 30);
    // Signals that flip every 20 minutes: needed (refusals, no room
    // elsewhere), then plentiful (room elsewhere), then needed...
    let mut switches = Vec::new();
    let mut now = start;
    while now < start + 300 * MIN {
        let phase = now.as_millis() / (20 * 60_000);
        if phase % 2 == 0 {
            election.handle_refused_full(now);
            election.handle_free_slots(addr(1), 0, now);
        } else {
            election.handle_free_slots(addr(1), 50, now);
        }
        election.handle_leaves(0, now);
        election.handle_timeout(now);
        if let Some(action) = election.poll_action() {
            switches.push((now, action));
        }
        now = election.poll_timeout();
    }
    assert!(switches.len() >= 3, "it does switch: {switches:?}");
    for pair in switches.windows(2) {
        assert!(
            pair[1].0.since(pair[0].0) >= 30 * MIN,
            "switches 30 min apart at least: {pair:?}"
        );
    }
}

#[test]
fn evaluation_is_jittered_and_seeded() {
    let a = Election::new(ElectionConfig::default(), Time::ZERO, SplitMix64::new(1));
    let b = Election::new(ElectionConfig::default(), Time::ZERO, SplitMix64::new(2));
    let a2 = Election::new(ElectionConfig::default(), Time::ZERO, SplitMix64::new(1));
    assert_eq!(a.poll_timeout(), a2.poll_timeout(), "same seed, same timer");
    assert_ne!(a.poll_timeout(), b.poll_timeout(), "another seed, another");
    for e in [&a, &b] {
        let t = e.poll_timeout().as_millis();
        assert!((45_000..=75_000).contains(&t), "a minute give or take: {t}");
    }
}

#[test]
fn known_supernodes_are_bounded() {
    let mut election = capable(Time::ZERO);
    for i in 0..1000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        election.handle_free_slots(SocketAddr::from((ip, 6346)), 1, Time(u64::from(i)));
    }
    assert_eq!(election.free_slots.len(), MAX_KNOWN_SUPERNODES);
    for _ in 0..1000 {
        election.handle_refused_full(Time::ZERO);
    }
    assert_eq!(election.refusals.len(), MAX_REFUSALS);
}
