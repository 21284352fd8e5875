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
