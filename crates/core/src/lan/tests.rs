//! LAN discovery on a fake clock: the format's checks, own datagrams,
//! replies and their rate limit, the table's bounds and expiry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

fn config(n: u8, role: Role) -> LanConfig {
    let overlay = if role == Role::Supernode { 6346 } else { 0 };
    LanConfig::new(id(n), role, overlay, 7000 + u16::from(n), u64::from(n), 42)
}

fn lan(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, PORT))
}

fn datagram(n: u8, role: Role, kind: Kind) -> [u8; LEN] {
    Announce {
        kind,
        role,
        overlay_port: if role == Role::Supernode { 6346 } else { 0 },
        http_port: 7000 + u16::from(n),
        nonce: u64::from(n),
        node_id: id(n),
    }
    .encode()
}

fn drain(lan: &mut LanDiscovery) -> Vec<Action> {
    std::iter::from_fn(|| lan.poll_action()).collect()
}

fn sent(actions: &[Action]) -> Vec<Announce> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(bytes) => Some(Announce::decode(bytes).unwrap()),
            Action::PeersChanged => None,
        })
        .collect()
}

#[test]
fn an_announce_round_trips_and_every_field_is_checked() {
    let announce = Announce {
        kind: Kind::Alive,
        role: Role::Supernode,
        overlay_port: 6346,
        http_port: 0,
        nonce: 0xdead_beef,
        node_id: id(9),
    };
    let bytes = announce.encode();
    assert_eq!(Announce::decode(&bytes), Ok(announce));

    let with = |at: usize, value: u8| {
        let mut b = bytes;
        b[at] = value;
        Announce::decode(&b)
    };
    assert_eq!(Announce::decode(&bytes[..34]), Err(Malformed::Length(34)));
    assert_eq!(Announce::decode(&[]), Err(Malformed::Length(0)));
    let mut long = bytes.to_vec();
    long.push(0);
    assert_eq!(Announce::decode(&long), Err(Malformed::Length(36)));
    assert_eq!(with(0, b'X'), Err(Malformed::Magic));
    assert_eq!(with(4, 2), Err(Malformed::Version(2)));
    assert_eq!(with(5, 3), Err(Malformed::Kind(3)));
    assert_eq!(with(6, 2), Err(Malformed::Role(2)));
    // A supernode needs an overlay port; a leaf may not name one.
    let mut no_port = bytes;
    no_port[7..9].copy_from_slice(&[0, 0]);
    assert_eq!(
        Announce::decode(&no_port),
        Err(Malformed::OverlayPort { port: 0 })
    );
    assert_eq!(with(6, 0), Err(Malformed::OverlayPort { port: 6346 }));
    let mut zero_id = bytes;
    zero_id[19..].fill(0);
    assert_eq!(Announce::decode(&zero_id), Err(Malformed::NodeId));
}

#[test]
fn a_malformed_or_foreign_datagram_is_refused_with_a_reason() {
    let mut node = LanDiscovery::new(config(1, Role::Leaf), Time::ZERO);
    let now = Time::ZERO;
    let good = datagram(2, Role::Supernode, Kind::Alive);
    let mut bad_magic = good;
    bad_magic[1] = b'x';
    assert_eq!(
        node.handle_datagram(lan([192, 168, 1, 5]), &bad_magic, now),
        Err(Rejected::Malformed(Malformed::Magic))
    );
    assert_eq!(
        node.handle_datagram(lan([192, 168, 1, 5]), &good[..10], now),
        Err(Rejected::Malformed(Malformed::Length(10)))
    );
    // A public source is no LAN neighbour, whatever it says.
    let public: IpAddr = [203, 0, 113, 7].into();
    assert_eq!(
        node.handle_datagram(SocketAddr::new(public, PORT), &good, now),
        Err(Rejected::NotLan(public))
    );
    let mapped: SocketAddr = "[::ffff:8.8.8.8]:6346".parse().unwrap();
    assert!(matches!(
        node.handle_datagram(mapped, &good, now),
        Err(Rejected::NotLan(_))
    ));
    assert_eq!(node.peers().count(), 0);
    assert_eq!(node.stats().malformed, 2);
    assert_eq!(node.stats().not_lan, 2);
    // Private, link-local and loopback sources are taken.
    for source in [
        "10.1.2.3:1",
        "172.16.0.9:1",
        "169.254.3.4:1",
        "127.0.0.1:1",
        "[fe80::1]:1",
        "[fd00::5]:1",
    ] {
        let source: SocketAddr = source.parse().unwrap();
        assert_eq!(
            node.handle_datagram(source, &good, now),
            Ok(Heard::New),
            "{source}"
        );
    }
}

#[test]
fn the_ports_go_with_the_source_ip() {
    let mut node = LanDiscovery::new(config(1, Role::Leaf), Time::ZERO);
    let source = lan([192, 168, 1, 20]);
    node.handle_datagram(
        source,
        &datagram(2, Role::Supernode, Kind::Alive),
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(
        node.supernodes(),
        vec![SocketAddr::from(([192, 168, 1, 20], 6346))]
    );
    node.handle_datagram(source, &datagram(3, Role::Leaf, Kind::Alive), Time::ZERO)
        .unwrap();
    let leaf = node.peers().find(|p| p.node_id == id(3)).unwrap();
    assert_eq!(
        leaf.http_addr(),
        Some(SocketAddr::from(([192, 168, 1, 20], 7003)))
    );
    assert_eq!(leaf.overlay_addr(), None);
    assert_eq!(node.supernodes().len(), 1, "a leaf is no dial candidate");
}

#[test]
fn our_own_datagrams_are_ignored() {
    let mut node = LanDiscovery::new(config(1, Role::Supernode), Time::ZERO);
    node.handle_timeout(Time::ZERO);
    let own = sent(&drain(&mut node));
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].kind, Kind::Hello);
    let looped = own[0].encode();
    assert_eq!(
        node.handle_datagram(lan([127, 0, 0, 1]), &looped, Time::ZERO),
        Err(Rejected::Own)
    );
    // Another process claiming our node id is ignored too.
    let mut claim = own[0];
    claim.nonce = 999;
    assert_eq!(
        node.handle_datagram(lan([10, 0, 0, 9]), &claim.encode(), Time::ZERO),
        Err(Rejected::Own)
    );
    assert_eq!(node.peers().count(), 0);
    assert_eq!(node.stats().own, 2);
    // Our own hello is not answered.
    assert!(drain(&mut node).is_empty());
    assert_eq!(node.poll_timeout(), Some(Time::ZERO + 3 * SECOND));
}

#[test]
fn hellos_at_start_then_alives_with_jitter_then_a_bye() {
    let mut node = LanDiscovery::new(config(1, Role::Leaf), Time::ZERO);
    assert_eq!(node.poll_timeout(), Some(Time::ZERO));
    let mut kinds = Vec::new();
    let mut times = Vec::new();
    for _ in 0..6 {
        let now = node.poll_timeout().unwrap();
        node.handle_timeout(now);
        for announce in sent(&drain(&mut node)) {
            kinds.push(announce.kind);
            times.push(now);
        }
    }
    assert_eq!(
        kinds,
        [
            Kind::Hello,
            Kind::Hello,
            Kind::Alive,
            Kind::Alive,
            Kind::Alive,
            Kind::Alive
        ]
    );
    assert_eq!(times[1], Time::ZERO + 3 * SECOND);
    let gaps: Vec<Duration> = times.windows(2).skip(1).map(|w| w[1].since(w[0])).collect();
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_secs(240) && *gap <= Duration::from_secs(360),
            "{gap:?}"
        );
    }
    assert!(gaps.windows(2).any(|w| w[0] != w[1]), "jittered: {gaps:?}");
    node.shutdown();
    let bye = sent(&drain(&mut node));
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].kind, Kind::Bye);
    assert_eq!(node.poll_timeout(), None, "nothing more to announce");
    node.shutdown();
    assert!(drain(&mut node).is_empty(), "one bye");
}

#[test]
fn a_hello_is_answered_once_and_a_flood_of_hellos_cannot_make_us_flood() {
    let mut node = LanDiscovery::new(config(1, Role::Supernode), Time::ZERO);
    node.handle_timeout(Time::ZERO);
    node.handle_timeout(Time::ZERO + 3 * SECOND);
    assert_eq!(sent(&drain(&mut node)).len(), 2, "the start's two hellos");
    // A newcomer's hello: answered with an alive within the jitter.
    let start = Time::ZERO + 30 * SECOND;
    node.handle_datagram(
        lan([192, 168, 1, 2]),
        &datagram(2, Role::Leaf, Kind::Hello),
        start,
    )
    .unwrap();
    let due = node.poll_timeout().unwrap();
    assert!(due >= start && due <= start + Duration::from_millis(500));
    node.handle_timeout(due);
    let answer = sent(&drain(&mut node));
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].kind, Kind::Alive, "an answer solicits none");
    assert_eq!(answer[0].overlay_port, 6346);
    // An alive is not answered.
    node.handle_datagram(
        lan([192, 168, 1, 3]),
        &datagram(3, Role::Leaf, Kind::Alive),
        due,
    )
    .unwrap();
    // Hellos from many sources, 10 a second for a minute: at most one
    // answer per 10 s.
    let mut answers = 0;
    let mut now = due;
    for i in 0..600u32 {
        now = due + Duration::from_millis(100 * u64::from(i));
        let n = u8::try_from(10 + i % 200).unwrap();
        let _ = node.handle_datagram(
            lan([10, 0, 1, n]),
            &datagram(n, Role::Leaf, Kind::Hello),
            now,
        );
        node.handle_timeout(now);
        answers += sent(&drain(&mut node))
            .iter()
            .filter(|a| a.kind == Kind::Alive)
            .count();
    }
    assert!((5..=7).contains(&answers), "{answers} answers in a minute");
    assert!(node.peers().count() <= 64, "the table stays bounded");
    assert!(now >= due + Duration::from_secs(59));
}

#[test]
fn a_flood_is_held_to_the_inbound_budget() {
    let mut node = LanDiscovery::new(config(1, Role::Leaf), Time::ZERO);
    let now = Time::ZERO;
    let mut taken = 0;
    for n in 2..200u8 {
        if node
            .handle_datagram(
                lan([10, 0, 0, n]),
                &datagram(n, Role::Leaf, Kind::Alive),
                now,
            )
            .is_ok()
        {
            taken += 1;
        }
    }
    assert_eq!(taken, 64, "the burst");
    assert_eq!(node.stats().over_budget, 198 - 64);
    // A second later, 20 more.
    let later = now + SECOND;
    let more = (2..100u8)
        .filter(|n| {
            node.handle_datagram(
                lan([10, 0, 2, *n]),
                &datagram(*n, Role::Leaf, Kind::Alive),
                later,
            )
            .is_ok()
        })
        .count();
    assert_eq!(more, 20);
}

#[test]
fn the_table_is_bounded_per_ip_and_in_all_least_recently_heard_first() {
    let mut config = config(1, Role::Leaf);
    config.inbound_burst = 10_000;
    config.max_peers = 8;
    let mut node = LanDiscovery::new(config, Time::ZERO);
    // One IP claiming ten node ids keeps only its last four.
    for n in 10..20u8 {
        let now = Time(u64::from(n));
        node.handle_datagram(
            lan([10, 0, 0, 1]),
            &datagram(n, Role::Leaf, Kind::Alive),
            now,
        )
        .unwrap();
    }
    let mut ids: Vec<u8> = node.peers().map(|p| p.node_id.0[0]).collect();
    ids.sort();
    assert_eq!(ids, vec![16, 17, 18, 19]);
    // Others fill the table; the least recently heard go first.
    for n in 20..26u8 {
        node.handle_datagram(
            lan([10, 0, 0, n]),
            &datagram(n, Role::Supernode, Kind::Alive),
            Time(100 + u64::from(n)),
        )
        .unwrap();
    }
    assert_eq!(node.peers().count(), 8);
    let mut ids: Vec<u8> = node.peers().map(|p| p.node_id.0[0]).collect();
    ids.sort();
    assert_eq!(ids, vec![18, 19, 20, 21, 22, 23, 24, 25]);
    assert_eq!(node.stats().evicted, 8);
    // Offered supernodes: the freshest first, at most eight.
    let offered = node.supernodes();
    assert_eq!(offered.len(), 6);
    assert_eq!(offered[0], SocketAddr::from(([10, 0, 0, 25], 6346)));
}

#[test]
fn peers_expire_unless_heard_again_and_a_bye_forgets_at_once() {
    let mut node = LanDiscovery::new(config(1, Role::Leaf), Time::ZERO);
    node.handle_timeout(Time::ZERO);
    drain(&mut node);
    let a = lan([192, 168, 0, 2]);
    let b = lan([192, 168, 0, 3]);
    node.handle_datagram(a, &datagram(2, Role::Supernode, Kind::Alive), Time::ZERO)
        .unwrap();
    node.handle_datagram(b, &datagram(3, Role::Supernode, Kind::Alive), Time::ZERO)
        .unwrap();
    assert!(drain(&mut node).contains(&Action::PeersChanged));
    // b is heard again ten minutes later; a is not.
    let ten = Time::ZERO + Duration::from_secs(600);
    assert_eq!(
        node.handle_datagram(b, &datagram(3, Role::Supernode, Kind::Alive), ten),
        Ok(Heard::Refreshed)
    );
    assert!(drain(&mut node).is_empty(), "nothing changed");
    let ttl = Duration::from_secs(16 * 60);
    assert!(node.poll_timeout().unwrap() <= Time::ZERO + ttl);
    node.handle_timeout(Time::ZERO + ttl);
    assert!(drain(&mut node).contains(&Action::PeersChanged));
    assert_eq!(
        node.supernodes(),
        vec![SocketAddr::from(([192, 168, 0, 3], 6346))]
    );
    assert_eq!(node.stats().expired, 1);
    // A bye with another nonce is not b's; b's own is.
    let mut forged = Announce::decode(&datagram(3, Role::Supernode, Kind::Bye)).unwrap();
    forged.nonce = 77;
    assert_eq!(
        node.handle_datagram(b, &forged.encode(), ten),
        Ok(Heard::Gone)
    );
    assert_eq!(node.peers().count(), 1);
    node.handle_datagram(b, &datagram(3, Role::Supernode, Kind::Bye), ten)
        .unwrap();
    assert_eq!(node.peers().count(), 0);
    assert!(drain(&mut node).contains(&Action::PeersChanged));
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let schedule = |seed: u64| {
        let mut config = config(1, Role::Leaf);
        config.seed = seed;
        let mut node = LanDiscovery::new(config, Time::ZERO);
        (0..5)
            .map(|_| {
                let now = node.poll_timeout().unwrap();
                node.handle_timeout(now);
                drain(&mut node);
                now
            })
            .collect::<Vec<Time>>()
    };
    assert_eq!(schedule(7), schedule(7));
    assert_ne!(schedule(7), schedule(8));
}

#[test]
fn random_and_mutated_datagrams_never_panic_and_never_name_another_ip() {
    // What the `lan` fuzz target checks, over a fixed set of inputs: valid
    // datagrams with a few bytes changed, cut or grown, from several kinds
    // of source.
    let mut rng = SplitMix64::new(0x5eed);
    let sources: [SocketAddr; 4] = [
        lan([192, 168, 7, 7]),
        lan([127, 0, 0, 1]),
        lan([203, 0, 113, 9]),
        "[fe80::7]:6346".parse().unwrap(),
    ];
    for round in 0..2_000u64 {
        let from = sources[usize::try_from(round % 4).unwrap()];
        let mut config = config(1, Role::Supernode);
        config.seed = round;
        let mut node = LanDiscovery::new(config, Time::ZERO);
        for step in 0..20u64 {
            let n = u8::try_from(rng.next_u64() % 8).unwrap() + 2;
            let role = if rng.next_u64() & 1 == 0 {
                Role::Leaf
            } else {
                Role::Supernode
            };
            let mut bytes = datagram(n, role, Kind::Alive).to_vec();
            for _ in 0..rng.next_u64() % 3 {
                let at = usize::try_from(rng.next_u64() % LEN as u64).unwrap();
                bytes[at] = u8::try_from(rng.next_u64() & 0xff).unwrap();
            }
            match rng.next_u64() % 10 {
                0 => bytes.truncate(usize::try_from(rng.next_u64() % LEN as u64).unwrap()),
                1 => bytes.push(0),
                _ => {}
            }
            if let Ok(announce) = Announce::decode(&bytes) {
                assert_eq!(announce.encode().to_vec(), bytes, "round trip");
            }
            let now = Time(step * 100);
            let heard = node.handle_datagram(from, &bytes, now);
            if round % 4 == 2 {
                assert!(matches!(heard, Err(Rejected::NotLan(_))), "{heard:?}");
            }
            node.handle_timeout(now);
            while node.poll_action().is_some() {}
        }
        assert!(node.peers().count() <= 4);
        assert!(node.peers().all(|p| p.ip == from.ip()));
        assert!(node.supernodes().iter().all(|a| a.ip() == from.ip()));
    }
}
