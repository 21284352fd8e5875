//! Eclipse through the host cache (issue 9, the first attack): a fake
//! supernode, met the honest way (the leaf's configured supernode names
//! it), floods the leaf with Pongs nobody asked for (32 x 32 addresses),
//! answers the leaf's own Ping with 32 more and refuses its next dial with
//! a try-list of 32. The leaf keeps none of the flood and a few of the
//! answers, and after a restart from its data directory dials its
//! configured supernode first, no attacker address before it. A supernode
//! flooded the same way by a peer counts the Pongs and keeps none.
//!
//! Every attacker address points at one trap listener (0.0.0.0, one port:
//! all of 127.0.0.0/8 reaches it), so every dial to one is counted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use canopy_core::addrman::{MAX_ADDRS_PER_ANSWER, SavedEntry, Snapshot};
use canopy_core::handshake::Identity;
use canopy_node::hosts::HOST_CACHE_FILE;
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{HandshakeOutcome, Hello, HelloReply, Message, RejectReason, Role};
use tokio::net::TcpListener;

use crate::common::*;
use crate::wire::{self, eventually, next, send};

/// The fake supernode's Hello: the id its `key` owns, listening at
/// `listen`.
fn fake_hello(key: &StaticKeypair, listen: SocketAddr) -> Hello {
    Identity {
        node_id: key.node_id(),
        role: Role::Supernode,
        listen_addr: Some(listen),
        user_agent: "eclipse".into(),
    }
    .hello()
}

/// Attacker lists, told apart by the last octet of their addresses.
const FLOOD: u8 = 1;
const PING_ANSWER: u8 = 2;
const TRY_LIST: u8 = 3;

/// 32 addresses in 32 different /16s of 127.0.0.0/8, all at the trap's
/// port: list `index` of kind `tag`.
fn attacker_list(tag: u8, index: u8, port: u16) -> Vec<SocketAddr> {
    (0..32u8)
        .map(|j| SocketAddr::from(([127, 1 + j + 32 * (tag - 1), index, tag], port)))
        .collect()
}

/// The kind of attacker list `addr` came from, if any.
fn attacker_tag(addr: SocketAddr, port: u16) -> Option<u8> {
    match addr.ip() {
        IpAddr::V4(ip) if addr.port() == port && ip.octets()[1] >= 1 => Some(ip.octets()[3]),
        _ => None,
    }
}

/// Counts the connections `listener` accepts, closing each at once.
fn count_dials(listener: TcpListener) -> Arc<AtomicUsize> {
    let dials = Arc::new(AtomicUsize::new(0));
    let counter = dials.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    dials
}

fn read_cache(dir: &std::path::Path) -> Option<Snapshot> {
    serde_json::from_slice(&std::fs::read(dir.join(HOST_CACHE_FILE)).ok()?).ok()
}

fn entries(snapshot: &Snapshot) -> impl Iterator<Item = &SavedEntry> {
    snapshot.tried.iter().chain(&snapshot.new)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pong_flood_does_not_eclipse_a_leaf_and_its_seed_comes_first_after_a_restart() {
    init_logs();
    let honest = supernode(&[]).await;
    let trap = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = trap.local_addr().unwrap().port();
    let trap_dials = count_dials(trap);
    let fake = TcpListener::bind(localhost()).await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    // One key for the fake supernode, on all its links.
    let fake_key = StaticKeypair::generate().unwrap();

    // The fake supernode peers with the honest one, whose Pongs then name it.
    let mut peering = wire::connect(honest.local_addr(), &fake_key).await;
    send(
        &mut peering,
        &Message::Hello(fake_hello(&fake_key, fake_addr)),
    )
    .await;
    assert!(matches!(
        next(&mut peering).await,
        Message::HelloReply(HelloReply {
            outcome: HandshakeOutcome::Accepted { .. },
            ..
        })
    ));
    honest
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    tokio::spawn(async move {
        // A well-behaved peer, as far as the honest supernode can tell.
        while let Some(Ok(message)) = peering.recv().await {
            if let Message::Ping { nonce } = message {
                let pong = Message::Pong {
                    free_leaf_slots: None,
                    nonce,
                    supernodes: Vec::new(),
                };
                let _ = peering.send(&pong).await;
            }
        }
    });

    // A long-running leaf wanting two supernodes, configured with one.
    let data = tempfile::tempdir().unwrap();
    let mut options = leaf_options(&honest, None);
    options.data_dir = Some(data.path().to_owned());
    options.supernodes_wanted = 2;
    options.reconnect = true;
    let first_run = start_leaf(options.clone()).await;

    // It hears of the fake supernode and dials it (the fake answers the
    // Noise handshake as the dialed side).
    let mut victim = wire::accept(&fake, &fake_key).await;
    assert!(matches!(next(&mut victim).await, Message::Hello(h) if h.role == Role::Leaf));
    let welcome = HelloReply {
        free_leaf_slots: None,
        hello: fake_hello(&fake_key, fake_addr),
        outcome: HandshakeOutcome::Accepted {
            observed_addr: None,
        },
    };
    send(&mut victim, &Message::HelloReply(welcome)).await;
    // 32 Pongs of 32 addresses nobody asked for, guessing nonces.
    for index in 0..32u8 {
        let pong = Message::Pong {
            free_leaf_slots: None,
            nonce: u64::from(index),
            supernodes: attacker_list(FLOOD, index, port),
        };
        send(&mut victim, &pong).await;
    }
    // The answer to the leaf's own Ping: 32 more.
    let nonce = loop {
        if let Message::Ping { nonce } = next(&mut victim).await {
            break nonce;
        }
    };
    let answer = Message::Pong {
        free_leaf_slots: None,
        nonce,
        supernodes: attacker_list(PING_ANSWER, 0, port),
    };
    send(&mut victim, &answer).await;
    drop(victim);

    // Its next dial is refused with a try-list of 32.
    let mut redial = wire::accept(&fake, &fake_key).await;
    assert!(matches!(next(&mut redial).await, Message::Hello(_)));
    let refusal = HelloReply {
        free_leaf_slots: None,
        hello: fake_hello(&fake_key, fake_addr),
        outcome: HandshakeOutcome::Rejected {
            reason: RejectReason::Full,
            detail: "full".into(),
            try_supernodes: attacker_list(TRY_LIST, 0, port),
        },
    };
    send(&mut redial, &Message::HelloReply(refusal)).await;
    // Until the try-list shows in the saved cache (or time runs out: the
    // figures below then say what got in instead).
    let try_list_saved =
        |cache: Snapshot| entries(&cache).any(|e| attacker_tag(e.addr, port) == Some(TRY_LIST));
    eventually(|| read_cache(data.path()).is_some_and(try_list_saved)).await;
    drop(redial);
    first_run.shutdown().await;

    // The figures: what the attacker got into the saved cache.
    let cache = read_cache(data.path()).unwrap();
    let kept = |tag| {
        entries(&cache)
            .filter(|e| attacker_tag(e.addr, port) == Some(tag))
            .count()
    };
    let (flood, answered, tried_list) = (kept(FLOOD), kept(PING_ANSWER), kept(TRY_LIST));
    let total = entries(&cache).count();
    tracing::info!(
        flood,
        answered,
        tried_list,
        total,
        dials_in_first_run = trap_dials.load(Ordering::SeqCst),
        "attacker entries in the host cache"
    );
    assert_eq!(flood, 0, "kept {flood} of the 1,024 unsolicited addresses");
    assert!(
        (1..=MAX_ADDRS_PER_ANSWER).contains(&answered),
        "{answered} of 32 from the answered Ping"
    );
    assert!(
        (1..=MAX_ADDRS_PER_ANSWER).contains(&tried_list),
        "{tried_list} of 32 from the try-list"
    );
    // Attacker lists, the fake supernode itself, the honest one: no more.
    assert!(total <= 2 * MAX_ADDRS_PER_ANSWER + 2, "{total} entries");
    assert!(
        cache.tried.iter().any(|e| e.addr == honest.local_addr()),
        "the configured supernode is remembered as tried"
    );

    // Restarted from the same data directory, the leaf dials its
    // configured supernode first: no attacker address before it.
    trap_dials.store(0, Ordering::SeqCst);
    let fake_dials = count_dials(fake);
    options.supernodes_wanted = 1;
    let second_run = start_leaf(options).await;
    assert_eq!(second_run.status().connected_to, Some(honest.local_addr()));
    assert_eq!(
        trap_dials.load(Ordering::SeqCst),
        0,
        "dials to attacker lists"
    );
    assert_eq!(
        fake_dials.load(Ordering::SeqCst),
        0,
        "dials to the fake one"
    );
    honest.wait_for(PATIENCE, |s| s.leaves == 1).await.unwrap();
    second_run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supernode_ignores_pongs_it_never_asked_for() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let mut options = canopy_node::supernode::SupernodeOptions::new(localhost());
    options.data_dir = Some(data.path().to_owned());
    options.peers_wanted = 0;
    let victim = canopy_node::supernode::start(options).await.unwrap();
    let trap = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = trap.local_addr().unwrap().port();
    let trap_dials = count_dials(trap);

    // A fake supernode joins it and floods it: 32 Pongs of 32 addresses.
    let fake = TcpListener::bind(localhost()).await.unwrap();
    let fake_key = StaticKeypair::generate().unwrap();
    let mut link = wire::connect(victim.local_addr(), &fake_key).await;
    let hello = fake_hello(&fake_key, fake.local_addr().unwrap());
    send(&mut link, &Message::Hello(hello)).await;
    assert!(matches!(next(&mut link).await, Message::HelloReply(_)));
    for index in 0..32u8 {
        let pong = Message::Pong {
            free_leaf_slots: None,
            nonce: u64::from(index),
            supernodes: attacker_list(FLOOD, index, port),
        };
        send(&mut link, &pong).await;
    }
    let stats = victim
        .wait_for(PATIENCE, |s| s.pongs_unsolicited == 32)
        .await
        .unwrap();
    assert_eq!(stats.protocol_errors, 0, "ignored, not punished");
    assert_eq!(stats.supernode_peers, 1);
    victim.shutdown().await;

    let cache = read_cache(data.path()).expect("the host cache is saved");
    let kept = entries(&cache)
        .filter(|e| attacker_tag(e.addr, port).is_some())
        .count();
    assert_eq!(kept, 0, "kept {kept} of 1,024 unsolicited addresses");
    assert_eq!(trap_dials.load(Ordering::SeqCst), 0);
}
