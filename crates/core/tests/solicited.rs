//! Addresses are believed only in answer to our own Ping (matched by its
//! nonce) or to our own dial (a try-list): unsolicited Pongs from a
//! supernode or to a leaf are counted and dropped.

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

fn hello(id: u8, role: Role, listen: u16) -> Hello {
    Identity {
        node_id: NodeId([id; 16]),
        role,
        listen_addr: Some(addr(listen)),
        user_agent: "test".into(),
    }
    .hello()
}

fn accepted(id: u8, listen: u16) -> Message {
    Message::HelloReply(HelloReply {
        free_leaf_slots: None,
        hello: hello(id, Role::Supernode, listen),
        outcome: HandshakeOutcome::Accepted {
            observed_addr: None,
        },
    })
}

/// The flood the eclipse attack sends: 32 addresses a Pong.
fn flood(salt: u8) -> Vec<SocketAddr> {
    (0..32u8)
        .map(|i| SocketAddr::from(([127, 1 + i, salt, 1], 6346)))
        .collect()
}

fn drain(node: &mut Supernode) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

fn learned(actions: &[Action]) -> Vec<(SocketAddr, Vec<SocketAddr>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Learned { from, supernodes } => Some((*from, supernodes.clone())),
            _ => None,
        })
        .collect()
}

fn ping_nonce(actions: &[Action]) -> u64 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send {
                message: Message::Ping { nonce },
                ..
            } => Some(*nonce),
            _ => None,
        })
        .expect("a ping")
}

#[test]
fn a_supernode_believes_only_answers_to_its_own_pings() {
    let mut config = SupernodeConfig::new(NodeId([1; 16]), Some(addr(1)));
    config.ping_key = [9; 32];
    let mut node = Supernode::new(config);
    let (conn, dialed, now) = (ConnId(1), addr(2), Time(0));
    node.handle_connected(conn, Direction::Outbound, dialed, NodeId([2; 16]), now);
    drain(&mut node);
    node.handle_message(conn, accepted(2, 2), now);
    let actions = drain(&mut node);
    assert!(actions.contains(&Action::Joined { addr: dialed }));
    assert!(learned(&actions).is_empty(), "the handshake names nobody");
    let nonce = ping_nonce(&actions);

    // 32 Pongs of 32 addresses nobody asked for, guessing nonces.
    for guess in 0..32u64 {
        let nonce = if guess == 0 { 0 } else { nonce ^ guess };
        node.handle_message(
            conn,
            Message::Pong {
                free_leaf_slots: None,
                nonce,
                supernodes: flood(u8::try_from(guess).unwrap()),
            },
            now,
        );
    }
    assert!(learned(&drain(&mut node)).is_empty());
    assert_eq!(node.stats().pongs_unsolicited, 32);

    // The answer to our Ping is believed, once.
    let answer = Message::Pong {
        free_leaf_slots: None,
        nonce,
        supernodes: flood(200),
    };
    node.handle_message(conn, answer.clone(), now);
    assert_eq!(learned(&drain(&mut node)), vec![(dialed, flood(200))]);
    node.handle_message(conn, answer, now);
    assert!(learned(&drain(&mut node)).is_empty(), "a replay is dropped");
    assert_eq!(node.stats().pongs_unsolicited, 33);
    assert_eq!(node.stats().protocol_errors, 0, "dropped, not punished");
}

#[test]
fn a_supernode_learns_nothing_from_an_inbound_peers_claims_or_from_leaves() {
    let mut node = Supernode::new(SupernodeConfig::new(NodeId([1; 16]), Some(addr(1))));
    let now = Time(0);
    node.handle_connected(
        ConnId(1),
        Direction::Inbound,
        addr(40_000),
        NodeId([2; 16]),
        now,
    );
    node.handle_message(ConnId(1), Message::Hello(hello(2, Role::Supernode, 2)), now);
    node.handle_connected(
        ConnId(2),
        Direction::Inbound,
        addr(40_001),
        NodeId([3; 16]),
        now,
    );
    node.handle_message(ConnId(2), Message::Hello(hello(3, Role::Leaf, 3)), now);
    let actions = drain(&mut node);
    assert!(learned(&actions).is_empty(), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Joined { .. })));
    // A leaf answering our keepalive ping with addresses: not believed.
    node.handle_timeout(Time(31_000));
    let actions = drain(&mut node);
    let nonce = actions
        .iter()
        .find_map(|a| match a {
            Action::Send {
                conn: ConnId(2),
                message: Message::Ping { nonce },
            } => Some(*nonce),
            _ => None,
        })
        .expect("keepalive ping to the leaf");
    node.handle_message(
        ConnId(2),
        Message::Pong {
            free_leaf_slots: None,
            nonce,
            supernodes: flood(1),
        },
        Time(31_000),
    );
    assert!(learned(&drain(&mut node)).is_empty());
}

#[test]
fn a_rejection_of_our_dial_is_an_answer() {
    let mut node = Supernode::new(SupernodeConfig::new(NodeId([1; 16]), Some(addr(1))));
    let dialed = addr(2);
    node.handle_connected(
        ConnId(1),
        Direction::Outbound,
        dialed,
        NodeId([2; 16]),
        Time(0),
    );
    drain(&mut node);
    node.handle_message(
        ConnId(1),
        Message::HelloReply(HelloReply {
            free_leaf_slots: None,
            hello: hello(2, Role::Supernode, 2),
            outcome: HandshakeOutcome::Rejected {
                reason: RejectReason::Full,
                detail: "full".into(),
                try_supernodes: vec![addr(3), addr(1)],
            },
        }),
        Time(0),
    );
    assert_eq!(
        learned(&drain(&mut node)),
        vec![(dialed, vec![addr(3)])],
        "our own address left out"
    );
}

#[test]
fn a_leaf_believes_only_the_answer_to_its_ping() {
    let identity = Identity {
        node_id: NodeId([5; 16]),
        role: Role::Leaf,
        listen_addr: None,
        user_agent: "test".into(),
    };
    let mut leaf = LeafSession::new(identity.clone(), Vec::new()).with_ping_key([3; 32]);
    leaf.handle_connected(NodeId([2; 16]));
    leaf.handle_message(accepted(2, 2), Time(0));
    let actions: Vec<LeafAction> = std::iter::from_fn(|| leaf.poll_action()).collect();
    let nonce = actions
        .iter()
        .find_map(|a| match a {
            LeafAction::Send(Message::Ping { nonce }) => Some(*nonce),
            _ => None,
        })
        .expect("the leaf asks whom its supernode knows");
    assert_ne!(nonce, 0);
    // Another key, another nonce: a peer can't know it in advance.
    let mut other = LeafSession::new(identity, Vec::new()).with_ping_key([4; 32]);
    other.handle_connected(NodeId([2; 16]));
    other.handle_message(accepted(2, 2), Time(0));
    let other_nonce = std::iter::from_fn(|| other.poll_action())
        .find_map(|a| match a {
            LeafAction::Send(Message::Ping { nonce }) => Some(nonce),
            _ => None,
        })
        .unwrap();
    assert_ne!(nonce, other_nonce);

    for guess in 0..32u64 {
        leaf.handle_message(
            Message::Pong {
                free_leaf_slots: None,
                nonce: guess,
                supernodes: flood(u8::try_from(guess).unwrap()),
            },
            Time(1),
        );
    }
    let learned_any = |leaf: &mut LeafSession| {
        std::iter::from_fn(|| leaf.poll_action())
            .filter(|a| matches!(a, LeafAction::SupernodesLearned(_)))
            .count()
    };
    assert_eq!(learned_any(&mut leaf), 0);
    assert_eq!(leaf.pongs_unsolicited(), 32);
    assert!(leaf.is_ready(), "ignored, not a reason to leave");
    leaf.handle_message(
        Message::Pong {
            free_leaf_slots: None,
            nonce,
            supernodes: flood(7),
        },
        Time(2),
    );
    assert_eq!(learned_any(&mut leaf), 1);
    leaf.handle_message(
        Message::Pong {
            free_leaf_slots: None,
            nonce,
            supernodes: flood(8),
        },
        Time(3),
    );
    assert_eq!(learned_any(&mut leaf), 0, "a second answer is not");
    assert_eq!(leaf.pongs_unsolicited(), 33);
}
