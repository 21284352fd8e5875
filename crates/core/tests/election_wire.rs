//! What the supernode election reads and sends on the wire: a supernode
//! advertises its free leaf slots in HelloReplies and Pongs and counts the
//! leaves it refuses as full; a leaf keeps what its supernode advertised;
//! a supernode stepping down hands its leaves a try-list in its Bye, which
//! the leaf takes as supernodes learned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession};
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn leaf_hello(id: u8) -> Hello {
    Identity {
        node_id: NodeId([id; 16]),
        role: Role::Leaf,
        listen_addr: None,
        user_agent: "test".into(),
    }
    .hello()
}

fn drain(node: &mut Supernode) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

fn replies(actions: &[Action]) -> Vec<HelloReply> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                message: Message::HelloReply(reply),
                ..
            } => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

/// Leaf `id` joins `node` on `conn`; returns the HelloReply.
fn join(node: &mut Supernode, conn: u64, id: u8) -> HelloReply {
    node.handle_connected(
        ConnId(conn),
        Direction::Inbound,
        SocketAddr::from(([10, 0, id, 1], 5000)),
        NodeId([id; 16]),
        Time(0),
    );
    drain(node);
    node.handle_message(ConnId(conn), Message::Hello(leaf_hello(id)), Time(0));
    let mut replies = replies(&drain(node));
    assert_eq!(replies.len(), 1);
    replies.remove(0)
}

#[test]
fn a_supernode_advertises_free_slots_and_counts_leaves_refused_as_full() {
    let mut config = SupernodeConfig::new(NodeId([1; 16]), Some(addr(1)));
    config.max_leaves = 2;
    let mut node = Supernode::new(config);
    assert_eq!(node.free_leaf_slots(), 2);
    assert_eq!(join(&mut node, 10, 20).free_leaf_slots, Some(1));
    assert_eq!(join(&mut node, 11, 21).free_leaf_slots, Some(0));
    let refused = join(&mut node, 12, 22);
    assert!(matches!(
        refused.outcome,
        HandshakeOutcome::Rejected {
            reason: RejectReason::Full,
            ..
        }
    ));
    assert_eq!(refused.free_leaf_slots, Some(0));
    assert_eq!(node.stats().leaves_refused_full, 1);
    // A Pong says it too.
    node.handle_message(ConnId(10), Message::Ping { nonce: 5 }, Time(1));
    let pong = drain(&mut node).into_iter().find_map(|a| match a {
        Action::Send {
            message:
                Message::Pong {
                    nonce: 5,
                    free_leaf_slots,
                    ..
                },
            ..
        } => Some(free_leaf_slots),
        _ => None,
    });
    assert_eq!(pong, Some(Some(0)));
}

#[test]
fn stepping_down_hands_the_leaves_a_try_list() {
    let mut node = Supernode::new(SupernodeConfig::new(NodeId([1; 16]), Some(addr(1))));
    join(&mut node, 10, 20);
    join(&mut node, 11, 21);
    node.step_down(vec![addr(7), addr(8)]);
    let actions = drain(&mut node);
    for conn in [ConnId(10), ConnId(11)] {
        let bye = actions.iter().find_map(|a| match a {
            Action::Send {
                conn: to,
                message: Message::Bye { try_supernodes, .. },
            } if *to == conn => Some(try_supernodes.clone()),
            _ => None,
        });
        assert_eq!(bye, Some(vec![addr(7), addr(8)]), "{conn:?}");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Close { conn: c, .. } if *c == conn))
        );
    }
    assert_eq!(node.stats().leaves, 0);
}

#[test]
fn a_leaf_keeps_the_free_slots_and_takes_the_try_list_of_a_bye() {
    let identity = Identity {
        node_id: NodeId([5; 16]),
        role: Role::Leaf,
        listen_addr: None,
        user_agent: "test".into(),
    };
    let supernode = Identity {
        node_id: NodeId([2; 16]),
        role: Role::Supernode,
        listen_addr: Some(addr(2)),
        user_agent: "test".into(),
    }
    .hello();
    let mut leaf = LeafSession::new(identity, Vec::new()).with_ping_key([3; 32]);
    leaf.handle_connected(NodeId([2; 16]));
    assert_eq!(leaf.supernode_free_slots(), None);
    leaf.handle_message(
        Message::HelloReply(HelloReply {
            hello: supernode,
            outcome: HandshakeOutcome::Accepted {
                observed_addr: None,
            },
            free_leaf_slots: Some(4),
        }),
        Time(0),
    );
    assert_eq!(leaf.supernode_free_slots(), Some(4));
    let nonce = std::iter::from_fn(|| leaf.poll_action())
        .find_map(|a| match a {
            LeafAction::Send(Message::Ping { nonce }) => Some(nonce),
            _ => None,
        })
        .expect("a ping");
    // An unsolicited Pong's number is not believed; the answer's is.
    leaf.handle_message(
        Message::Pong {
            nonce: nonce ^ 1,
            supernodes: vec![],
            free_leaf_slots: Some(900),
        },
        Time(1),
    );
    assert_eq!(leaf.supernode_free_slots(), Some(4));
    leaf.handle_message(
        Message::Pong {
            nonce,
            supernodes: vec![],
            free_leaf_slots: Some(3),
        },
        Time(1),
    );
    assert_eq!(leaf.supernode_free_slots(), Some(3));
    leaf.handle_message(
        Message::Bye {
            reason: ByeReason::Shutdown,
            detail: "stepping down".into(),
            try_supernodes: vec![addr(7)],
        },
        Time(2),
    );
    let actions: Vec<LeafAction> = std::iter::from_fn(|| leaf.poll_action()).collect();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LeafAction::SupernodesLearned(l) if l == &vec![addr(7)])),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(a, LeafAction::Close(_))));
}

#[test]
fn a_leaf_with_refresh_asks_its_supernode_again() {
    let identity = Identity {
        node_id: NodeId([5; 16]),
        role: Role::Leaf,
        listen_addr: None,
        user_agent: "test".into(),
    };
    let accepted = || {
        Message::HelloReply(HelloReply {
            hello: Identity {
                node_id: NodeId([2; 16]),
                role: Role::Supernode,
                listen_addr: Some(addr(2)),
                user_agent: "test".into(),
            }
            .hello(),
            outcome: HandshakeOutcome::Accepted {
                observed_addr: None,
            },
            free_leaf_slots: Some(1),
        })
    };
    let pings = |leaf: &mut LeafSession| {
        std::iter::from_fn(|| leaf.poll_action())
            .filter(|a| matches!(a, LeafAction::Send(Message::Ping { .. })))
            .count()
    };
    let every = std::time::Duration::from_secs(300);
    for (refresh, expected) in [(true, 1), (false, 0)] {
        let mut leaf = LeafSession::new(identity.clone(), Vec::new());
        if refresh {
            leaf = leaf.with_refresh(every);
        }
        leaf.handle_connected(NodeId([2; 16]));
        leaf.handle_message(accepted(), Time(0));
        assert_eq!(pings(&mut leaf), 1, "one on joining");
        // Heard from lately: its silence limit is past the refresh.
        leaf.handle_message(Message::Ping { nonce: 3 }, Time(250_000));
        let _ = pings(&mut leaf);
        let wake = leaf.poll_timeout().expect("a deadline");
        if refresh {
            assert_eq!(wake, Time(0) + every, "woken for the refresh");
        } else {
            assert_eq!(wake, Time(340_000), "only the silence limit");
        }
        leaf.handle_timeout(Time(260_000));
        assert_eq!(pings(&mut leaf), 0, "not before the interval");
        leaf.handle_message(Message::Ping { nonce: 2 }, Time(300_000));
        leaf.handle_timeout(Time(300_000));
        assert_eq!(pings(&mut leaf), expected, "refresh {refresh}");
    }
}
