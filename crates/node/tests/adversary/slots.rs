//! Slot squatting: one address (127.0.0.2, and its /24) opens silent
//! connections, leaf handshakes and supernode handshakes as fast as it can.
//! It gets only its share of each; the supernode still takes a leaf from
//! another network, and still reaches its configured peer through the peer
//! slots kept for its own dials.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{HandshakeOutcome, RejectReason, Role};
use tokio::net::TcpListener;

use crate::common::*;
use crate::wire::{Link, eventually, hostile_hello, ip, outcome, try_connect_from};

/// `count` handshakes of `role` from `from`, each under a key of its own; returns the links accepted
/// (kept open) and the reasons of the others.
async fn flood(
    from: &str,
    to: SocketAddr,
    role: Role,
    count: u64,
) -> (Vec<Link>, Vec<RejectReason>) {
    let (mut kept, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let listen = SocketAddr::new(ip(from), 1);
        let (link, reply) = hostile_hello(ip(from), to, role, Some(listen)).await;
        match outcome(reply.as_ref()) {
            Ok(()) => kept.push(link),
            Err(reason) => refused.push(reason),
        }
    }
    (kept, refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_fill_a_supernode_or_lock_it_out_of_its_network() {
    init_logs();
    // The configured peer is not up yet: the supernode redials it while
    // the flood fills every slot a stranger may take.
    let peer_addr = TcpListener::bind(localhost())
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = SupernodeOptions::new(localhost());
    options.peers = vec![peer_addr];
    options.peers_wanted = 0;
    options.redial_initial = Duration::from_millis(100);
    options.protocol.limit_exempt = Vec::new(); // `--limit-exempt none`
    options.protocol.max_supernode_peers = 6;
    options.protocol.reserved_outbound_peers = 2;
    let victim = supernode::start(options).await.unwrap();
    let to = victim.local_addr();

    // 1. Silent connections: 8 held in their handshake, the rest closed
    //    at once. Each completes the Noise handshake under a key of its
    //    own (any stranger can) and never says Hello, so the 8 held show
    //    in the supernode's handshake count. The per-address count is
    //    taken at accept, before the Noise handshake: the 42 others are
    //    closed unread, their Noise handshake cut.
    let (mut silent, mut cut) = (Vec::new(), 0);
    for _ in 0..50 {
        let key = StaticKeypair::generate().unwrap();
        match try_connect_from(ip("127.0.0.2"), to, &key).await {
            Ok(link) => silent.push(link),
            Err(_) => cut += 1,
        }
    }
    assert_eq!((silent.len(), cut), (8, 42), "sessions held and cut");
    victim
        .wait_for(PATIENCE, |s| s.handshaking == 8)
        .await
        .expect("8 handshakes held");
    eventually(|| victim.connections_refused() >= 42).await;
    assert_eq!(victim.connections_refused(), 42, "50 silent connections");
    // Meanwhile a leaf from another network gets in.
    let (_early_leaf, reply) = hostile_hello(ip("127.0.1.3"), to, Role::Leaf, None).await;
    assert_eq!(outcome(reply.as_ref()), Ok(()));
    drop(silent);
    victim
        .wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .expect("silent connections let go");

    // 2. Leaves: 4 from one IP.
    let (leaves, refused) = flood("127.0.0.2", to, Role::Leaf, 10).await;
    assert_eq!(leaves.len(), 4, "leaves accepted from 127.0.0.2");
    assert!(refused.iter().all(|r| *r == RejectReason::AddressLimit));

    // 3. Supernode peers: 2 per IP, 4 per /24, and no more than the
    //    inbound share (6 - 2 kept for our own dials) from anywhere.
    let (peers_a, refused_a) = flood("127.0.0.2", to, Role::Supernode, 5).await;
    let (peers_b, refused_b) = flood("127.0.0.3", to, Role::Supernode, 5).await;
    assert_eq!((peers_a.len(), peers_b.len()), (2, 2), "peers per IP");
    assert!(
        refused_a
            .iter()
            .chain(&refused_b)
            .all(|r| *r == RejectReason::AddressLimit)
    );
    let (peers_c, refused_c) = flood("127.0.5.2", to, Role::Supernode, 3).await;
    assert!(peers_c.is_empty(), "the inbound share is taken");
    assert!(refused_c.iter().all(|r| *r == RejectReason::Full));
    assert_eq!(victim.stats().supernode_peers, 4);

    // 4. The configured peer comes up: it is dialed into a kept slot.
    let mut peer_options = SupernodeOptions::new(peer_addr);
    peer_options.peers_wanted = 0;
    let peer = supernode::start(peer_options).await.unwrap();
    victim
        .wait_for(PATIENCE, |s| s.supernode_peers == 5)
        .await
        .expect("the configured peer was locked out");
    peer.wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();

    // 5. A leaf from another network still gets in, and a refused dialer
    //    is pointed at the peer we chose first.
    let (_late_leaf, reply) = hostile_hello(ip("127.0.1.3"), to, Role::Leaf, None).await;
    assert_eq!(outcome(reply.as_ref()), Ok(()));
    let (_, reply) = hostile_hello(
        ip("127.0.6.2"),
        to,
        Role::Supernode,
        Some(SocketAddr::new(ip("127.0.6.2"), 1)),
    )
    .await;
    let Some(HandshakeOutcome::Rejected { try_supernodes, .. }) = reply.map(|r| r.outcome) else {
        panic!("not refused");
    };
    assert_eq!(try_supernodes.first(), Some(&peer_addr));

    let stats = victim.stats();
    assert_eq!(stats.leaves, 6, "4 from 127.0.0.2, 2 from 127.0.1.3");
    assert_eq!(stats.handshakes_address_limited, 6 + 3 + 3);
    drop((leaves, peers_a, peers_b));
    peer.shutdown().await;
    victim.shutdown().await;
}
