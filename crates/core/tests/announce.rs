//! A leaf's reachability on the wire, driven message by message: the
//! supernode tells a leaf each connect-back verdict, takes a leaf's
//! Announce as it takes a Hello's address (the port, on the IP it sees),
//! probes again and carries the new address in hits, at most once per
//! interval; either message from the wrong role is a protocol violation.
//! A supernode tells its peers its own new address the same way, and
//! takes theirs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession};
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::*;

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn node_id(n: u8) -> NodeId {
    NodeId([n; 16])
}

fn hello(role: Role, id: u8, listen_addr: Option<SocketAddr>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        node_id: node_id(id),
        listen_addr,
        user_agent: "announce-test".into(),
        capabilities: Vec::new(),
    }
}

struct Node {
    core: Supernode,
    now: Time,
    next: u8,
}

impl Node {
    fn new() -> Self {
        let mut config = SupernodeConfig::new(node_id(200), Some(sock("10.255.0.1:4000")));
        config.limit_exempt = Vec::new();
        Self {
            core: Supernode::new(config),
            now: Time(1),
            next: 0,
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn joins(&mut self, role: Role, remote: &str, listen: Option<SocketAddr>) -> ConnId {
        self.next += 1;
        let conn = ConnId(u64::from(self.next));
        self.core.handle_connected(
            conn,
            Direction::Inbound,
            sock(remote),
            node_id(self.next),
            self.now,
        );
        self.core.handle_message(
            conn,
            Message::Hello(hello(role, self.next, listen)),
            self.now,
        );
        conn
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        self.core.handle_message(conn, message, self.now);
    }

    fn publish(&mut self, conn: ConnId, name: &str) {
        let files = vec![SharedFile {
            content_id: ContentId([u8::try_from(conn.0).unwrap(); 32]),
            name: name.into(),
            size: 4_000,
            available: None,
        }];
        self.send(
            conn,
            Message::FileList {
                replace: true,
                files,
            },
        );
    }

    /// What a search for `word` from `searcher` finds: address and flag.
    fn hits(&mut self, searcher: ConnId, word: &str, n: u8) -> Vec<(SocketAddr, bool)> {
        self.actions();
        let query = Query {
            message_id: MessageId([n; 16]),
            ttl: 1,
            hops: 0,
            keywords: vec![word.into()],
            content_id: None,
            min_size: None,
            max_size: None,
        };
        self.send(searcher, Message::Query(query));
        self.actions()
            .into_iter()
            .filter_map(|action| match action {
                Action::Send {
                    message: Message::QueryHit(hit),
                    ..
                } => Some((hit.source_addr, hit.firewalled)),
                _ => None,
            })
            .collect()
    }
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

fn verdicts(actions: &[Action]) -> Vec<(ConnId, bool, SocketAddr)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send {
                conn,
                message:
                    Message::Reachability {
                        reachable,
                        probed_addr,
                    },
            } => Some((*conn, *reachable, *probed_addr)),
            _ => None,
        })
        .collect()
}

fn bye_reason(actions: &[Action], conn: ConnId) -> Option<ByeReason> {
    actions.iter().find_map(|action| match action {
        Action::Close {
            conn: closed,
            bye: Some((reason, _)),
        } if *closed == conn => Some(*reason),
        _ => None,
    })
}

#[test]
fn the_leaf_is_told_each_verdict() {
    let mut node = Node::new();
    let leaf = node.joins(Role::Leaf, "192.0.2.2:41000", Some(sock("0.0.0.0:5000")));
    let probed = probes(&node.actions());
    assert_eq!(probed, vec![(leaf, sock("192.0.2.2:5000"))]);
    node.core.handle_probe_result(leaf, false);
    assert_eq!(
        verdicts(&node.actions()),
        vec![(leaf, false, sock("192.0.2.2:5000"))]
    );
}

#[test]
fn an_announce_moves_the_hits_and_is_probed_at_the_observed_ip() {
    let mut node = Node::new();
    let searcher = node.joins(Role::Leaf, "198.51.100.1:1", None);
    let leaf = node.joins(Role::Leaf, "192.0.2.2:41000", Some(sock("0.0.0.0:5000")));
    node.publish(leaf, "song.mp3");
    let first = probes(&node.actions());
    assert_eq!(first, vec![(leaf, sock("192.0.2.2:5000"))]);
    node.core.handle_probe_result(leaf, false);
    assert_eq!(
        node.hits(searcher, "song", 1),
        vec![(sock("192.0.2.2:5000"), true)]
    );

    // A mapping granted late: the leaf announces it, naming another IP;
    // only the port is taken.
    node.now = node.now + Duration::from_secs(5);
    node.send(
        leaf,
        Message::Announce {
            listen_addr: sock("203.0.113.50:7000"),
        },
    );
    let again = probes(&node.actions());
    assert_eq!(again, vec![(leaf, sock("192.0.2.2:7000"))]);
    assert_eq!(
        node.hits(searcher, "song", 2),
        vec![(sock("192.0.2.2:7000"), true)],
        "the new address, firewalled until its probe reaches it"
    );
    node.core.handle_probe_result(leaf, true);
    assert_eq!(
        verdicts(&node.actions()),
        vec![(leaf, true, sock("192.0.2.2:7000"))]
    );
    assert_eq!(
        node.hits(searcher, "song", 3),
        vec![(sock("192.0.2.2:7000"), false)]
    );
    assert_eq!(node.core.stats().announces, 1);
}

#[test]
fn a_probe_of_the_old_address_counts_for_nothing() {
    let mut node = Node::new();
    let leaf = node.joins(Role::Leaf, "192.0.2.2:41000", Some(sock("0.0.0.0:5000")));
    assert_eq!(probes(&node.actions()).len(), 1);
    // Announced while the first probe runs.
    node.send(
        leaf,
        Message::Announce {
            listen_addr: sock("0.0.0.0:7000"),
        },
    );
    assert!(probes(&node.actions()).is_empty(), "one probe at a time");
    node.core.handle_probe_result(leaf, true);
    let actions = node.actions();
    assert!(
        verdicts(&actions).is_empty(),
        "the old port's verdict is not told"
    );
    assert_eq!(probes(&actions), vec![(leaf, sock("192.0.2.2:7000"))]);
    node.core.handle_probe_result(leaf, false);
    assert_eq!(
        verdicts(&node.actions()),
        vec![(leaf, false, sock("192.0.2.2:7000"))]
    );
}

#[test]
fn announces_are_taken_once_per_interval() {
    let mut node = Node::new();
    let leaf = node.joins(Role::Leaf, "192.0.2.2:41000", Some(sock("0.0.0.0:5000")));
    node.core.handle_probe_result(leaf, true);
    node.actions();
    for port in [7000, 7001, 7002] {
        node.send(
            leaf,
            Message::Announce {
                listen_addr: SocketAddr::from(([0, 0, 0, 0], port)),
            },
        );
        node.now = node.now + Duration::from_secs(1);
    }
    let actions = node.actions();
    assert_eq!(probes(&actions), vec![(leaf, sock("192.0.2.2:7000"))]);
    assert_eq!(bye_reason(&actions, leaf), None, "ignored, not cut");
    let stats = node.core.stats();
    assert_eq!((stats.announces, stats.announces_ignored), (1, 2));
    node.core.handle_probe_result(leaf, true);
    node.now = node.now + Duration::from_secs(30);
    node.send(
        leaf,
        Message::Announce {
            listen_addr: sock("0.0.0.0:7003"),
        },
    );
    assert_eq!(
        probes(&node.actions()),
        vec![(leaf, sock("192.0.2.2:7003"))]
    );
}

#[test]
fn each_message_from_the_wrong_role_is_a_violation() {
    let mut node = Node::new();
    let peer = node.joins(
        Role::Supernode,
        "198.51.100.7:4000",
        Some(sock("198.51.100.7:4000")),
    );
    node.actions();
    node.send(
        peer,
        Message::Reachability {
            reachable: true,
            probed_addr: sock("198.51.100.7:4000"),
        },
    );
    assert_eq!(
        bye_reason(&node.actions(), peer),
        Some(ByeReason::ProtocolViolation)
    );

    let leaf = node.joins(Role::Leaf, "192.0.2.2:41000", None);
    node.actions();
    node.send(
        leaf,
        Message::Reachability {
            reachable: true,
            probed_addr: sock("192.0.2.2:5000"),
        },
    );
    assert_eq!(
        bye_reason(&node.actions(), leaf),
        Some(ByeReason::ProtocolViolation)
    );
}

#[test]
fn a_supernode_announces_its_new_address_and_its_peers_pass_it_on() {
    let mut node = Node::new();
    let peer = node.joins(
        Role::Supernode,
        "198.51.100.7:4000",
        Some(sock("198.51.100.7:4000")),
    );
    let _leaf = node.joins(Role::Leaf, "192.0.2.2:41000", None);
    node.actions();

    // Our router mapped a new port: peers are told, leaves are not, and
    // new handshakes say it.
    node.core.announce_listen_addr(sock("203.0.113.9:6000"));
    node.core.announce_listen_addr(sock("203.0.113.9:6000"));
    let told: Vec<Vec<ConnId>> = node
        .actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Forward {
                conns,
                message: Message::Announce { listen_addr },
            } => {
                assert_eq!(listen_addr, sock("203.0.113.9:6000"));
                Some(conns)
            }
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![vec![peer]], "once, to the supernode peer only");
    assert_eq!(node.core.stats().own_announces, 1);

    // A peer's Announce moves what we hand out: its port, on its IP.
    node.send(
        peer,
        Message::Announce {
            listen_addr: sock("10.9.9.9:4100"),
        },
    );
    assert_eq!(
        node.core.known_supernodes(),
        vec![sock("198.51.100.7:4100")]
    );
    // One per interval; more are ignored, not a violation.
    node.send(
        peer,
        Message::Announce {
            listen_addr: sock("0.0.0.0:4200"),
        },
    );
    let actions = node.actions();
    assert_eq!(bye_reason(&actions, peer), None);
    assert_eq!(
        node.core.known_supernodes(),
        vec![sock("198.51.100.7:4100")]
    );
    let stats = node.core.stats();
    assert_eq!((stats.peer_announces, stats.announces_ignored), (1, 1));
    node.now = node.now + Duration::from_secs(30);
    node.send(
        peer,
        Message::Announce {
            listen_addr: sock("0.0.0.0:4200"),
        },
    );
    assert_eq!(
        node.core.known_supernodes(),
        vec![sock("198.51.100.7:4200")]
    );
}

/// A leaf session a supernode accepted, its actions drained.
fn ready_leaf(listen: Option<SocketAddr>) -> LeafSession {
    let identity = Identity {
        node_id: node_id(1),
        role: Role::Leaf,
        listen_addr: listen,
        user_agent: "t".into(),
    };
    let mut session = LeafSession::new(identity, Vec::new());
    session.handle_connected(node_id(9));
    let reply = HelloReply {
        free_leaf_slots: None,
        hello: hello(Role::Supernode, 9, None),
        outcome: HandshakeOutcome::Accepted {
            observed_addr: Some(sock("203.0.113.5:6346")),
        },
    };
    session.handle_message(Message::HelloReply(reply), Time(1));
    while session.poll_action().is_some() {}
    session
}

fn leaf_sent(session: &mut LeafSession) -> Vec<Message> {
    std::iter::from_fn(|| session.poll_action())
        .filter_map(|action| match action {
            LeafAction::Send(message) => Some(message),
            _ => None,
        })
        .collect()
}

#[test]
fn a_leaf_announces_only_what_changed_unless_asked_to_recheck() {
    let mut session = ready_leaf(Some(sock("0.0.0.0:5000")));
    session.announce(sock("0.0.0.0:5000"), false);
    assert_eq!(leaf_sent(&mut session), vec![]);
    session.announce(sock("203.0.113.5:7000"), false);
    assert_eq!(
        leaf_sent(&mut session),
        vec![Message::Announce {
            listen_addr: sock("203.0.113.5:7000")
        }]
    );
    session.announce(sock("203.0.113.5:7000"), true);
    assert_eq!(leaf_sent(&mut session).len(), 1, "a recheck goes anyway");
}

#[test]
fn a_leaf_hears_verdicts_and_refuses_an_announce() {
    let mut session = ready_leaf(Some(sock("0.0.0.0:5000")));
    session.handle_message(
        Message::Reachability {
            reachable: true,
            probed_addr: sock("203.0.113.5:5000"),
        },
        Time(2),
    );
    assert_eq!(
        session.poll_action(),
        Some(LeafAction::Reachability {
            reachable: true,
            probed_addr: sock("203.0.113.5:5000")
        })
    );
    session.handle_message(
        Message::Announce {
            listen_addr: sock("0.0.0.0:1"),
        },
        Time(3),
    );
    assert!(matches!(
        session.poll_action(),
        Some(LeafAction::Close(Some((ByeReason::ProtocolViolation, _))))
    ));
}
