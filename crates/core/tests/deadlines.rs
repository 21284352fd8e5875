//! `poll_timeout` of the supernode and the leaf session: it names the
//! earliest deadline among their timers, nothing happens just before it,
//! and advancing the fake clock to it fires what was due.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession, SUPERNODE_SILENCE_LIMIT};
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::{ByeReason, NodeId, Role};

fn closes(supernode: &mut Supernode) -> Vec<(ConnId, Option<ByeReason>)> {
    std::iter::from_fn(|| supernode.poll_action())
        .filter_map(|action| match action {
            Action::Close { conn, bye } => Some((conn, bye.map(|(reason, _)| reason))),
            _ => None,
        })
        .collect()
}

#[test]
fn a_supernode_wakes_at_a_handshake_deadline_and_cuts_it_then() {
    let mut config = SupernodeConfig::new(NodeId([1; 16]), None);
    config.handshake_timeout = Duration::from_secs(7);
    let mut supernode = Supernode::new(config);
    assert_eq!(
        supernode.poll_timeout(),
        Some(Time::ZERO),
        "the first timeout sets the peer refresh"
    );
    supernode.handle_timeout(Time(0));
    let idle = supernode.poll_timeout().unwrap();
    assert!(idle > Time(7_000), "only the peer refresh: {idle:?}");
    let remote: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    supernode.handle_connected(
        ConnId(1),
        Direction::Inbound,
        remote,
        NodeId([2; 16]),
        Time(1_000),
    );
    let _ = closes(&mut supernode);
    assert_eq!(supernode.poll_timeout(), Some(Time(8_000)));
    supernode.handle_timeout(Time(7_999));
    assert!(closes(&mut supernode).is_empty(), "not before its deadline");
    supernode.handle_timeout(Time(8_000));
    assert_eq!(
        closes(&mut supernode),
        vec![(ConnId(1), Some(ByeReason::HandshakeTimeout))]
    );
    assert_eq!(supernode.poll_timeout(), Some(idle), "back to the refresh");
}

#[test]
fn a_leaf_session_wakes_at_the_silence_limit_and_closes_then() {
    let identity = Identity {
        node_id: NodeId([3; 16]),
        role: Role::Leaf,
        listen_addr: None,
        user_agent: "deadlines".into(),
    };
    let mut session = LeafSession::new(identity, Vec::new());
    session.handle_connected(NodeId([1; 16]));
    while session.poll_action().is_some() {}
    assert_eq!(session.poll_timeout(), Some(Time::ZERO));
    session.handle_timeout(Time(500));
    let limit = Time(500) + SUPERNODE_SILENCE_LIMIT;
    assert_eq!(session.poll_timeout(), Some(limit));
    session.handle_timeout(limit - Duration::from_millis(1));
    assert!(session.poll_action().is_none(), "not before its deadline");
    session.handle_timeout(limit);
    assert!(
        matches!(
            session.poll_action(),
            Some(LeafAction::Close(Some((ByeReason::IdleTimeout, _))))
        ),
        "closed at the limit"
    );
    assert_eq!(session.poll_timeout(), None, "closed: no more deadlines");
}

#[test]
fn a_supernode_wakes_to_ping_a_quiet_leaf_then_to_drop_it() {
    use canopy_proto::limits::PROTOCOL_VERSION;
    use canopy_proto::{Hello, Message};
    let mut config = SupernodeConfig::new(NodeId([1; 16]), None);
    config.keepalive_interval = Duration::from_secs(5);
    config.idle_timeout = Duration::from_secs(20);
    let mut supernode = Supernode::new(config);
    supernode.handle_timeout(Time(0));
    let leaf = NodeId([4; 16]);
    let remote: SocketAddr = "10.0.0.4:5000".parse().unwrap();
    supernode.handle_connected(ConnId(7), Direction::Inbound, remote, leaf, Time(1_000));
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        role: Role::Leaf,
        node_id: leaf,
        listen_addr: None,
        user_agent: "deadlines".into(),
        capabilities: Vec::new(),
    };
    supernode.handle_message(ConnId(7), Message::Hello(hello), Time(1_000));
    while supernode.poll_action().is_some() {}
    assert_eq!(supernode.stats().leaves, 1);
    assert_eq!(supernode.poll_timeout(), Some(Time(6_000)), "the keepalive");
    let pings = |supernode: &mut Supernode| {
        std::iter::from_fn(|| supernode.poll_action())
            .filter(|a| {
                matches!(
                    a,
                    Action::Send {
                        message: Message::Ping { .. },
                        ..
                    }
                )
            })
            .count()
    };
    supernode.handle_timeout(Time(5_999));
    assert_eq!(pings(&mut supernode), 0, "not before its deadline");
    supernode.handle_timeout(Time(6_000));
    assert_eq!(pings(&mut supernode), 1);
    assert_eq!(
        supernode.poll_timeout(),
        Some(Time(21_000)),
        "then the idle limit"
    );
    supernode.handle_timeout(Time(21_000));
    assert_eq!(
        closes(&mut supernode),
        vec![(ConnId(7), Some(ByeReason::IdleTimeout))]
    );
}
