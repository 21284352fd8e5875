//! Slot squatting: one address (127.0.0.2, and its /24) opens silent
//! connections, leaf handshakes and supernode handshakes as fast as it can.
//! It gets only its share of each; the supernode still takes a leaf from
//! another network, and still reaches its configured peer through the peer
//! slots kept for its own dials.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::{
    FrameCodec, HandshakeOutcome, Hello, HelloReply, Message, NodeId, RejectReason, Role,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::Framed;

use crate::common::*;

/// A hostile node's link: framed messages over TCP.
pub(crate) type Link = Framed<TcpStream, FrameCodec>;

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A TCP connection to `to` from `from` (any 127.x address: Linux routes
/// all of 127.0.0.0/8 to loopback).
pub(crate) async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// The one way the hostile clients here open a link: connect from `from`
/// to `to` and say `hello`. Returns the link and the answer (`None` if the
/// node closed the connection without one).
pub(crate) async fn hostile_hello(
    from: IpAddr,
    to: SocketAddr,
    hello: Hello,
) -> (Link, Option<HelloReply>) {
    let mut link = Framed::new(connect_from(from, to).await, FrameCodec::default());
    if link.send(Message::Hello(hello)).await.is_err() {
        return (link, None);
    }
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            match link.next().await {
                Some(Ok(Message::HelloReply(reply))) => return Some(reply),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("no answer and no close");
    (link, answer)
}

/// A Hello with a node id made from `id`.
pub(crate) fn hello(role: Role, id: u64, listen_addr: Option<SocketAddr>) -> Hello {
    let mut node_id = [0x5A; 16];
    node_id[..8].copy_from_slice(&id.to_be_bytes());
    Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        node_id: NodeId(node_id),
        listen_addr,
        user_agent: "adversary".into(),
        capabilities: Vec::new(),
    }
}

/// Accepted, or the reason it was refused.
pub(crate) fn outcome(reply: Option<&HelloReply>) -> Result<(), RejectReason> {
    match reply.map(|r| &r.outcome) {
        Some(HandshakeOutcome::Accepted { .. }) => Ok(()),
        Some(HandshakeOutcome::Rejected { reason, .. }) => Err(*reason),
        None => Err(RejectReason::Unknown),
    }
}

/// `count` handshakes of `role` from `from`; returns the links accepted
/// (kept open) and the reasons of the others.
async fn flood(
    from: &str,
    to: SocketAddr,
    role: Role,
    count: u64,
    first_id: u64,
) -> (Vec<Link>, Vec<RejectReason>) {
    let (mut kept, mut refused) = (Vec::new(), Vec::new());
    for id in first_id..first_id + count {
        let listen = SocketAddr::new(ip(from), 1);
        let (link, reply) = hostile_hello(ip(from), to, hello(role, id, Some(listen))).await;
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
    options.limit_exempt = Vec::new(); // `--limit-exempt none`
    options.max_supernode_peers = 6;
    options.reserved_outbound_peers = 2;
    let victim = supernode::start(options).await.unwrap();
    let to = victim.local_addr();

    // 1. Silent connections: 8 held in their handshake, the rest closed
    //    at once.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(connect_from(ip("127.0.0.2"), to).await);
    }
    victim
        .wait_for(PATIENCE, |s| s.handshaking == 8)
        .await
        .expect("8 handshakes held");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while victim.connections_refused() < 42 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(victim.connections_refused(), 42, "50 silent connections");
    // Meanwhile a leaf from another network gets in.
    let (_early_leaf, reply) = hostile_hello(ip("127.0.1.3"), to, hello(Role::Leaf, 1, None)).await;
    assert_eq!(outcome(reply.as_ref()), Ok(()));
    drop(silent);
    victim
        .wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .expect("silent connections let go");

    // 2. Leaves: 4 from one IP.
    let (leaves, refused) = flood("127.0.0.2", to, Role::Leaf, 10, 100).await;
    assert_eq!(leaves.len(), 4, "leaves accepted from 127.0.0.2");
    assert!(refused.iter().all(|r| *r == RejectReason::AddressLimit));

    // 3. Supernode peers: 2 per IP, 4 per /24, and no more than the
    //    inbound share (6 - 2 kept for our own dials) from anywhere.
    let (peers_a, refused_a) = flood("127.0.0.2", to, Role::Supernode, 5, 200).await;
    let (peers_b, refused_b) = flood("127.0.0.3", to, Role::Supernode, 5, 300).await;
    assert_eq!((peers_a.len(), peers_b.len()), (2, 2), "peers per IP");
    assert!(
        refused_a
            .iter()
            .chain(&refused_b)
            .all(|r| *r == RejectReason::AddressLimit)
    );
    let (peers_c, refused_c) = flood("127.0.5.2", to, Role::Supernode, 3, 400).await;
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
    let (_late_leaf, reply) = hostile_hello(ip("127.0.1.3"), to, hello(Role::Leaf, 2, None)).await;
    assert_eq!(outcome(reply.as_ref()), Ok(()));
    let (_, reply) = hostile_hello(
        ip("127.0.6.2"),
        to,
        hello(
            Role::Supernode,
            500,
            Some(SocketAddr::new(ip("127.0.6.2"), 1)),
        ),
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
