//! The supernode's defences against strangers, driven message by message
//! with a fake clock: per-address slot limits, reserved outbound peer
//! slots, try-lists, pushes tied to their sender and rate-limited, push
//! routes set once, and bounded reachability probes of observed addresses
//! only. Every test here is deterministic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;

use canopy_core::addr_limits::AddressLimit;
use canopy_core::push_limits::Rate;
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::*;

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn node_id(n: u32) -> NodeId {
    let mut id = [0xBB; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NodeId(id)
}

fn hello(role: Role, id: u32, listen_addr: Option<SocketAddr>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        node_id: node_id(id),
        listen_addr,
        user_agent: "guard-test".into(),
        capabilities: Vec::new(),
    }
}

/// How a handshake went.
#[derive(Debug)]
enum Joined {
    Accepted(ConnId),
    Rejected {
        reason: RejectReason,
        detail: String,
        try_supernodes: Vec<SocketAddr>,
    },
    /// We dialed and closed it ourselves, with this Bye.
    Closed(Option<ByeReason>),
}

impl Joined {
    fn conn(&self) -> ConnId {
        match self {
            Joined::Accepted(conn) => *conn,
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn reason(&self) -> RejectReason {
        match self {
            Joined::Rejected { reason, .. } => *reason,
            other => panic!("not rejected: {other:?}"),
        }
    }
}

/// One supernode and the actions it took.
struct Node {
    core: Supernode,
    now: Time,
    next_conn: u64,
    next_id: u32,
    /// Actions taken but not yet looked at.
    pending: Vec<Action>,
}

impl Node {
    /// A supernode with no address exempt from the limits, configured
    /// further by `configure`.
    fn new(configure: impl FnOnce(&mut SupernodeConfig)) -> Self {
        let mut config = SupernodeConfig::new(node_id(0), Some(sock("10.255.0.1:4000")));
        config.limit_exempt = Vec::new();
        configure(&mut config);
        Self {
            core: Supernode::new(config),
            now: Time(1),
            next_conn: 0,
            next_id: 1,
            pending: Vec::new(),
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.pending);
        actions.extend(std::iter::from_fn(|| self.core.poll_action()));
        actions
    }

    /// A connection whose transport authenticated the owner of id `id`.
    fn connect(&mut self, direction: Direction, remote: SocketAddr, id: u32) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.core
            .handle_connected(conn, direction, remote, node_id(id), self.now);
        conn
    }

    fn fresh_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// A node with `role` dials us from `remote`.
    fn dials_us(&mut self, role: Role, remote: &str, listen: Option<SocketAddr>) -> Joined {
        let id = self.fresh_id();
        let conn = self.connect(Direction::Inbound, sock(remote), id);
        self.core
            .handle_message(conn, Message::Hello(hello(role, id, listen)), self.now);
        let mut reply = None;
        for action in self.actions() {
            match action {
                Action::Send {
                    conn: to,
                    message: Message::HelloReply(answer),
                } if to == conn => reply = Some(answer),
                other => self.pending.push(other),
            }
        }
        let Some(reply) = reply else {
            panic!("no HelloReply");
        };
        match reply.outcome {
            HandshakeOutcome::Accepted { .. } => Joined::Accepted(conn),
            HandshakeOutcome::Rejected {
                reason,
                detail,
                try_supernodes,
            } => Joined::Rejected {
                reason,
                detail,
                try_supernodes,
            },
        }
    }

    fn leaf(&mut self, remote: &str) -> Joined {
        let listen = sock(remote);
        self.dials_us(Role::Leaf, remote, Some(listen))
    }

    fn inbound_peer(&mut self, remote: &str) -> Joined {
        self.dials_us(Role::Supernode, remote, Some(sock(remote)))
    }

    /// We dial a supernode at `addr`, which accepts.
    fn outbound_peer(&mut self, addr: &str) -> Joined {
        let id = self.fresh_id();
        let conn = self.connect(Direction::Outbound, sock(addr), id);
        self.actions(); // our Hello
        let reply = HelloReply {
            free_leaf_slots: None,
            hello: hello(Role::Supernode, id, Some(sock(addr))),
            outcome: HandshakeOutcome::Accepted {
                observed_addr: None,
            },
        };
        self.core
            .handle_message(conn, Message::HelloReply(reply), self.now);
        for action in self.actions() {
            if let Action::Close { conn: closed, bye } = action {
                if closed == conn {
                    return Joined::Closed(bye.map(|(reason, _)| reason));
                }
            }
        }
        Joined::Accepted(conn)
    }

    fn push(&mut self, from: ConnId, target: NodeId, callback: &str, n: u32) {
        let mut message_id = [7; 16];
        message_id[..4].copy_from_slice(&n.to_be_bytes());
        let push = Push {
            message_id: MessageId(message_id),
            target_node_id: target,
            content_id: ContentId([3; 32]),
            callback_addr: sock(callback),
            hops: 0,
            punch: false,
            relay: None,
        };
        self.core
            .handle_message(from, Message::Push(push), self.now);
    }
}

/// Pushes sent out, with where they went.
fn pushes_sent(actions: &[Action]) -> Vec<(ConnId, Push)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send {
                conn,
                message: Message::Push(push),
            } => Some((*conn, push.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn one_ip_and_one_network_get_only_their_share_of_leaf_slots() {
    let mut node = Node::new(|c| c.leaves_per_address = AddressLimit::new(4, 32));
    for _ in 0..4 {
        node.leaf("192.0.2.1:5000").conn();
    }
    let refused = node.leaf("192.0.2.1:5000");
    let Joined::Rejected { reason, detail, .. } = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(*reason, RejectReason::AddressLimit);
    assert!(
        detail.contains("leaf slots") && detail.contains("192.0.2.1 already holds 4"),
        "{detail}"
    );
    // The rest of the /24 fills it up to 32 in all...
    for host in 2..=8 {
        for _ in 0..4 {
            node.leaf(&format!("192.0.2.{host}:5000")).conn();
        }
    }
    let refused = node.leaf("192.0.2.99:5000");
    assert_eq!(refused.reason(), RejectReason::AddressLimit);
    // ...while another network and a freed slot are welcome.
    node.leaf("198.51.100.1:5000").conn();
    let stats = node.core.stats();
    assert_eq!(stats.leaves, 33);
    assert_eq!(stats.handshakes_address_limited, 2);
    assert_eq!(stats.handshakes_rejected, 2);
}

#[test]
fn a_leaf_that_leaves_frees_its_address_slot() {
    let mut node = Node::new(|c| c.leaves_per_address = AddressLimit::new(1, 8));
    let first = node.leaf("192.0.2.1:5000").conn();
    assert_eq!(
        node.leaf("192.0.2.1:5000").reason(),
        RejectReason::AddressLimit
    );
    node.core.handle_disconnected(first);
    node.leaf("192.0.2.1:5000").conn();
}

#[test]
fn exempt_addresses_are_not_limited() {
    // The default: loopback exempt, as for tests and benchmarks.
    let mut node = Node::new(|c| {
        c.limit_exempt = canopy_core::addr_limits::default_exempt();
    });
    for _ in 0..20 {
        node.leaf("127.0.0.2:5000").conn();
    }
    for _ in 0..4 {
        node.leaf("192.0.2.1:5000").conn();
    }
    assert_eq!(
        node.leaf("192.0.2.1:5000").reason(),
        RejectReason::AddressLimit
    );
    // With nothing exempt, loopback is limited like anyone.
    let mut strict = Node::new(|_| {});
    for _ in 0..4 {
        strict.leaf("127.0.0.2:5000").conn();
    }
    assert_eq!(
        strict.leaf("127.0.0.2:5000").reason(),
        RejectReason::AddressLimit
    );
}

#[test]
fn inbound_peers_are_limited_per_ip_and_per_network() {
    let mut node = Node::new(|c| c.peers_per_address = AddressLimit::new(2, 4));
    node.inbound_peer("203.0.113.1:4000").conn();
    node.inbound_peer("203.0.113.1:4001").conn();
    let refused = node.inbound_peer("203.0.113.1:4002");
    let Joined::Rejected { reason, detail, .. } = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(*reason, RejectReason::AddressLimit);
    assert!(detail.contains("supernode peer slots"), "{detail}");
    node.inbound_peer("203.0.113.2:4000").conn();
    node.inbound_peer("203.0.113.3:4000").conn();
    assert_eq!(
        node.inbound_peer("203.0.113.4:4000").reason(),
        RejectReason::AddressLimit,
        "the /24 holds its 4"
    );
    // Supernodes we dial are our choice: not counted against the address.
    node.outbound_peer("203.0.113.1:4009").conn();
    assert_eq!(node.core.stats().supernode_peers, 5);
}

#[test]
fn inbound_peers_cannot_take_the_slots_kept_for_peers_we_dial() {
    let mut node = Node::new(|c| {
        c.max_supernode_peers = 6;
        c.reserved_outbound_peers = 2;
    });
    for n in 1..=4 {
        node.inbound_peer(&format!("198.51.{n}.1:4000")).conn();
    }
    let refused = node.inbound_peer("198.51.9.1:4000");
    let Joined::Rejected { reason, detail, .. } = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(*reason, RejectReason::Full);
    assert!(detail.contains("kept for peers it dials"), "{detail}");
    // Our own dials still get in, up to the real maximum.
    node.outbound_peer("192.0.2.10:4000").conn();
    node.outbound_peer("192.0.2.11:4000").conn();
    assert_eq!(node.core.stats().supernode_peers, 6);
    assert!(matches!(
        node.outbound_peer("192.0.2.12:4000"),
        Joined::Closed(Some(ByeReason::LimitExceeded))
    ));
    // An inbound peer leaving frees an inbound slot, not a reserved one.
    assert_eq!(
        node.inbound_peer("198.51.10.1:4000").reason(),
        RejectReason::Full
    );
}

#[test]
fn try_lists_name_the_peers_we_dialed_first() {
    let mut node = Node::new(|c| c.leaves_per_address = AddressLimit::new(1, 8));
    for n in 1..=3 {
        node.inbound_peer(&format!("198.51.{n}.1:4000")).conn();
    }
    node.outbound_peer("192.0.2.10:4000").conn();
    node.leaf("203.0.113.5:5000").conn();
    let Joined::Rejected { try_supernodes, .. } = node.leaf("203.0.113.5:5000") else {
        panic!("not refused");
    };
    assert_eq!(try_supernodes[0], sock("192.0.2.10:4000"));
    assert_eq!(try_supernodes.len(), 4);
}

#[test]
fn a_leafs_push_calls_back_the_leaf_itself_and_a_peers_passes_as_is() {
    let mut node = Node::new(|_| {});
    let target = node.dials_us(Role::Leaf, "192.0.2.50:1", None).conn();
    let target_id = node_id(node.next_id);
    let sender = node.leaf("192.0.2.7:6000").conn();
    node.actions();
    node.push(sender, target_id, "198.51.100.9:6500", 1);
    let sent = pushes_sent(&node.actions());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, target);
    assert_eq!(
        sent[0].1.callback_addr,
        sock("192.0.2.7:6500"),
        "the sender's IP, its port"
    );
    assert_eq!(node.core.stats().push_callbacks_rewritten, 1);

    // A supernode peer's push was rewritten at its first hop: kept.
    let peer = node.inbound_peer("203.0.113.1:4000").conn();
    node.actions();
    node.push(peer, target_id, "198.51.100.9:6500", 2);
    let sent = pushes_sent(&node.actions());
    assert_eq!(sent[0].1.callback_addr, sock("198.51.100.9:6500"));
    assert_eq!(node.core.stats().push_callbacks_rewritten, 1);
}

/// A push with a relay circuit naming `relay` (a claim the core replaces).
fn relayed(node: &mut Node, from: ConnId, target: NodeId, relay: &str, n: u32) {
    let mut message_id = [8; 16];
    message_id[..4].copy_from_slice(&n.to_be_bytes());
    let push = Push {
        message_id: MessageId(message_id),
        target_node_id: target,
        content_id: ContentId([3; 32]),
        callback_addr: sock("192.0.2.7:6500"),
        hops: 0,
        punch: false,
        relay: Some(RelayCircuit {
            addr: sock(relay),
            token: CircuitToken([n as u8; 16]),
        }),
    };
    node.core
        .handle_message(from, Message::Push(push), node.now);
}

/// Whether the Hello we answer a new leaf with says we relay.
fn says_it_relays(node: &mut Node) -> bool {
    let id = node.fresh_id();
    let conn = node.connect(Direction::Inbound, sock("192.0.2.99:4000"), id);
    node.core
        .handle_message(conn, Message::Hello(hello(Role::Leaf, id, None)), node.now);
    node.actions().iter().any(|a| match a {
        Action::Send {
            message: Message::HelloReply(reply),
            ..
        } => reply.hello.capabilities.contains(&Capability::Relay),
        _ => false,
    })
}

fn circuits_granted(actions: &[Action]) -> Vec<CircuitToken> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::RelayCircuit { token } => Some(*token),
            _ => None,
        })
        .collect()
}

#[test]
fn a_relaying_supernode_names_itself_in_its_leafs_push_and_says_it_relays() {
    let mut node = Node::new(|c| c.relay.slots = 4);
    let target = node.dials_us(Role::Leaf, "192.0.2.50:1", None).conn();
    let target_id = node_id(node.next_id);
    let sender = node.leaf("192.0.2.7:6000").conn();
    // The leaf reached us at this address (a dual-stack socket's form).
    node.core
        .handle_local_addr(sender, sock("[::ffff:10.255.0.1]:4000"));
    node.actions();
    assert!(
        says_it_relays(&mut node),
        "a relaying supernode's Hello says so"
    );
    relayed(&mut node, sender, target_id, "198.51.100.1:9", 1);
    let actions = node.actions();
    let sent = pushes_sent(&actions);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, target);
    let relay = sent[0].1.relay.expect("the relay part is kept");
    assert_eq!(
        relay.addr,
        sock("10.255.0.1:4000"),
        "our own address, canonical"
    );
    assert_eq!(circuits_granted(&actions), vec![CircuitToken([1; 16])]);
    assert_eq!(node.core.stats().push_relays_granted, 1);

    // A peer's push passes as it is, and registers nothing here.
    let peer = node.inbound_peer("203.0.113.1:4000").conn();
    node.actions();
    relayed(&mut node, peer, target_id, "198.51.100.1:9", 2);
    let actions = node.actions();
    let sent = pushes_sent(&actions);
    assert_eq!(
        sent[0].1.relay.map(|r| r.addr),
        Some(sock("198.51.100.1:9"))
    );
    assert!(circuits_granted(&actions).is_empty());
    assert_eq!(node.core.stats().push_relays_passed, 1);
}

#[test]
fn a_supernode_that_does_not_relay_drops_the_relay_part() {
    let mut node = Node::new(|_| {});
    node.dials_us(Role::Leaf, "192.0.2.50:1", None).conn();
    let target_id = node_id(node.next_id);
    let sender = node.leaf("192.0.2.7:6000").conn();
    node.core.handle_local_addr(sender, sock("10.255.0.1:4000"));
    node.actions();
    assert!(!says_it_relays(&mut node));
    relayed(&mut node, sender, target_id, "198.51.100.1:9", 1);
    let actions = node.actions();
    let sent = pushes_sent(&actions);
    assert_eq!(sent.len(), 1, "the push itself goes on");
    assert_eq!(sent[0].1.relay, None);
    assert!(circuits_granted(&actions).is_empty());
    assert_eq!(node.core.stats().push_relays_dropped, 1);

    // Relaying, but without the leaf's local address: dropped too.
    let mut node = Node::new(|c| c.relay.slots = 4);
    node.dials_us(Role::Leaf, "192.0.2.50:1", None).conn();
    let target_id = node_id(node.next_id);
    let sender = node.leaf("192.0.2.7:6000").conn();
    node.actions();
    relayed(&mut node, sender, target_id, "198.51.100.1:9", 1);
    assert_eq!(pushes_sent(&node.actions())[0].1.relay, None);
    assert_eq!(node.core.stats().push_relays_dropped, 1);
}

#[test]
fn pushes_are_limited_per_source_connection() {
    let mut node = Node::new(|c| {
        c.leaf_push_rate = Rate::new(1, 10);
        c.callback_push_rate = Rate::new(1_000, 10_000);
    });
    node.dials_us(Role::Leaf, "192.0.2.50:1", None).conn();
    let target_id = node_id(node.next_id);
    let sender = node.leaf("192.0.2.7:6000").conn();
    let other = node.leaf("192.0.2.8:6000").conn();
    node.actions();
    for n in 0..200 {
        node.push(sender, target_id, "192.0.2.7:6500", n);
    }
    assert_eq!(pushes_sent(&node.actions()).len(), 10, "the burst");
    assert_eq!(node.core.stats().pushes_rate_limited, 190);
    // Another leaf is not held back by the first one's flood.
    node.push(other, target_id, "192.0.2.8:6500", 1_000);
    assert_eq!(pushes_sent(&node.actions()).len(), 1);
    // A second later, one more.
    node.now = Time(1_001);
    node.push(sender, target_id, "192.0.2.7:6500", 2_000);
    node.push(sender, target_id, "192.0.2.7:6500", 2_001);
    assert_eq!(pushes_sent(&node.actions()).len(), 1);
}

#[test]
fn pushes_are_limited_per_callback_address() {
    let mut node = Node::new(|c| {
        c.peer_push_rate = Rate::new(1_000, 10_000);
        c.callback_push_rate = Rate::new(1, 20);
    });
    node.dials_us(Role::Leaf, "192.0.2.50:1", None).conn();
    let target_id = node_id(node.next_id);
    let peers: Vec<ConnId> = (1..=3)
        .map(|n| node.inbound_peer(&format!("198.51.{n}.1:4000")).conn())
        .collect();
    node.actions();
    let mut n = 0;
    for peer in &peers {
        for _ in 0..30 {
            n += 1;
            node.push(*peer, target_id, "203.0.113.66:80", n);
        }
    }
    assert_eq!(
        pushes_sent(&node.actions()).len(),
        20,
        "one callback IP: its burst, whoever asks"
    );
    assert_eq!(node.core.stats().pushes_callback_limited, 70);
    node.push(peers[0], target_id, "203.0.113.67:80", 10_000);
    assert_eq!(pushes_sent(&node.actions()).len(), 1, "another IP");
}

/// A leaf queries `words`; returns the query's id.
fn leaf_queries(node: &mut Node, leaf: ConnId, n: u8, words: &[&str]) -> MessageId {
    let message_id = MessageId([n; 16]);
    let query = Query {
        message_id,
        ttl: 3,
        hops: 0,
        keywords: words.iter().map(|w| (*w).to_owned()).collect(),
        content_id: None,
        min_size: None,
        max_size: None,
    };
    node.core
        .handle_message(leaf, Message::Query(query), node.now);
    node.actions();
    message_id
}

fn hit(message_id: MessageId, source: NodeId) -> Message {
    Message::QueryHit(QueryHit {
        message_id,
        source_node_id: source,
        source_addr: sock("192.0.2.200:7000"),
        files: vec![SharedFile {
            content_id: ContentId([5; 32]),
            name: "song.mp3".into(),
            size: 4_000,
            available: None,
        }],
        firewalled: true,
    })
}

#[test]
fn a_push_route_is_set_once_while_its_connection_lives() {
    let mut node = Node::new(|_| {});
    let first = node.inbound_peer("198.51.1.1:4000").conn();
    let squatter = node.inbound_peer("198.51.2.1:4000").conn();
    let downloader = node.leaf("192.0.2.7:6000").conn();
    node.actions();
    let source = node_id(9_999);

    let query = leaf_queries(&mut node, downloader, 1, &["song"]);
    node.core
        .handle_message(first, hit(query, source), node.now);
    let query = leaf_queries(&mut node, downloader, 2, &["song"]);
    node.core
        .handle_message(squatter, hit(query, source), node.now);
    node.actions();
    assert_eq!(node.core.stats().hits_routed, 2);

    node.push(downloader, source, "192.0.2.7:6500", 1);
    let sent = pushes_sent(&node.actions());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, first, "the later hit did not take the route");

    // Once the first connection is gone, a new hit sets the route again.
    node.core.handle_disconnected(first);
    let query = leaf_queries(&mut node, downloader, 3, &["song"]);
    node.core
        .handle_message(squatter, hit(query, source), node.now);
    node.actions();
    node.push(downloader, source, "192.0.2.7:6500", 2);
    assert_eq!(pushes_sent(&node.actions())[0].0, squatter);
}

fn probes(actions: &[Action]) -> Vec<(ConnId, SocketAddr)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Probe { conn, addr } => Some((*conn, *addr)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_probe_dials_the_leafs_own_ip_never_an_announced_one() {
    let mut node = Node::new(|_| {});
    let leaf = node
        .dials_us(
            Role::Leaf,
            "192.0.2.5:41000",
            Some(sock("198.51.100.9:7000")),
        )
        .conn();
    assert_eq!(
        probes(&node.actions()),
        vec![(leaf, sock("192.0.2.5:7000"))],
        "the observed IP with the announced port"
    );
}

#[test]
fn probes_run_a_bounded_number_at_once_and_per_address() {
    let mut node = Node::new(|c| {
        c.max_probes_in_flight = 4;
        c.probes_per_address = AddressLimit::new(1, 8);
    });
    let mut started = Vec::new();
    let mut leaves = Vec::new();
    // Two leaves on one IP, then eight on their own IPs.
    for remote in ["192.0.2.1:5000", "192.0.2.1:5001"]
        .into_iter()
        .map(String::from)
        .chain((1..=8).map(|n| format!("198.51.{n}.1:5000")))
    {
        leaves.push(node.leaf(&remote).conn());
        started.extend(probes(&node.actions()));
    }
    assert_eq!(started.len(), 4, "at most 4 at once");
    assert_eq!(node.core.stats().probes_in_flight, 4);
    assert_eq!(started[0].0, leaves[0]);
    assert!(
        !started.iter().any(|(conn, _)| *conn == leaves[1]),
        "one probe per IP at once"
    );
    // Each result lets the oldest waiting leaf whose address is free go.
    node.core.handle_probe_result(leaves[0], true);
    assert_eq!(
        probes(&node.actions()),
        vec![(leaves[1], sock("192.0.2.1:5001"))]
    );
    for (conn, _) in &started[1..] {
        node.core.handle_probe_result(*conn, false);
    }
    let next = probes(&node.actions());
    assert_eq!(next.len(), 3);
    assert_eq!(node.core.stats().probes_in_flight, 4);
    assert_eq!(node.core.stats().leaves_unreachable, 3);
}

#[test]
fn a_leaf_waiting_for_its_probe_is_reported_firewalled() {
    let mut node = Node::new(|c| c.max_probes_in_flight = 1);
    let searcher = node.dials_us(Role::Leaf, "192.0.2.1:1", None).conn();
    let probed = node.leaf("192.0.2.2:5000").conn();
    let waiting = node.leaf("192.0.2.3:5000").conn();
    node.actions();
    for owner in [probed, waiting] {
        let files = vec![SharedFile {
            content_id: ContentId([owner.0 as u8; 32]),
            name: "song.mp3".into(),
            size: 4_000,
            available: None,
        }];
        node.core.handle_message(
            owner,
            Message::FileList {
                replace: true,
                files,
            },
            node.now,
        );
    }
    let firewalled_flags = |node: &mut Node, n: u8| {
        let query = Query {
            message_id: MessageId([n; 16]),
            ttl: 1,
            hops: 0,
            keywords: vec!["song".into()],
            content_id: None,
            min_size: None,
            max_size: None,
        };
        node.core
            .handle_message(searcher, Message::Query(query), node.now);
        let mut flags: Vec<(SocketAddr, bool)> = node
            .actions()
            .into_iter()
            .filter_map(|action| match action {
                Action::Send {
                    message: Message::QueryHit(hit),
                    ..
                } => Some((hit.source_addr, hit.firewalled)),
                _ => None,
            })
            .collect();
        flags.sort();
        flags
    };
    assert_eq!(
        firewalled_flags(&mut node, 1),
        vec![
            (sock("192.0.2.2:5000"), true),
            (sock("192.0.2.3:5000"), true)
        ],
        "firewalled until probed, whether the probe runs or waits"
    );
    node.core.handle_probe_result(probed, true);
    assert_eq!(probes(&node.actions()).len(), 1);
    assert_eq!(
        firewalled_flags(&mut node, 3),
        vec![
            (sock("192.0.2.2:5000"), false),
            (sock("192.0.2.3:5000"), true)
        ],
        "the probed one is reachable; the other's probe runs now"
    );
    node.core.handle_probe_result(waiting, true);
    assert_eq!(
        firewalled_flags(&mut node, 2),
        vec![
            (sock("192.0.2.2:5000"), false),
            (sock("192.0.2.3:5000"), false)
        ]
    );
}

#[test]
fn the_handshake_counter_follows_the_config() {
    let mut config = SupernodeConfig::new(node_id(0), None);
    config.handshakes_per_address = AddressLimit::new(2, 3);
    let mut counter = config.handshake_counter();
    let ip = "192.0.2.1".parse().unwrap();
    assert!(counter.acquire(ip).is_ok());
    assert!(counter.acquire(ip).is_ok());
    assert!(counter.acquire(ip).is_err());
    let loopback = "127.0.0.1".parse().unwrap();
    for _ in 0..10 {
        assert!(counter.acquire(loopback).is_ok(), "exempt by default");
    }

    let mut node = Node::new(|_| {});
    let conn = node.connect(Direction::Inbound, sock("192.0.2.1:1"), 77);
    assert!(node.core.is_handshaking(conn));
    node.core
        .handle_message(conn, Message::Hello(hello(Role::Leaf, 77, None)), node.now);
    assert!(!node.core.is_handshaking(conn));
}

#[test]
fn an_inbound_peer_is_passed_on_at_the_ip_it_dialed_from() {
    let mut node = Node::new(|c| c.leaves_per_address = AddressLimit::new(1, 8));
    node.dials_us(
        Role::Supernode,
        "203.0.113.1:41000",
        Some(sock("198.51.100.9:6346")),
    )
    .conn();
    // Its claim is not learned (nobody asked for it)...
    let learned = node
        .actions()
        .into_iter()
        .filter(|action| matches!(action, Action::Learned { .. }))
        .count();
    assert_eq!(learned, 0);
    // ...and others are given it at the IP it dialed from, never the IP
    // it named.
    node.leaf("192.0.2.1:5000").conn();
    let Joined::Rejected { try_supernodes, .. } = node.leaf("192.0.2.1:5000") else {
        panic!("not refused");
    };
    assert_eq!(try_supernodes, vec![sock("203.0.113.1:6346")]);
}
