//! Node-id squatting: a hostile peer completes the Noise handshake with a
//! key of its own, then presents another node's id (a supernode's, read
//! from its HelloReply, or a leaf's, read from a QueryHit). Before node ids
//! were derived from keys, the victim's peer then refused the real node as
//! a duplicate, every time. Now the squatter is refused with
//! NODE_ID_MISMATCH and the real nodes connect.

use std::net::SocketAddr;

use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{HandshakeOutcome, NodeId, RejectReason, Role};
use canopy_testkit::overlay::*;

use crate::wire;

/// Connects to `target` under a fresh key, says Hello as `role` claiming
/// `claimed`, and returns how the handshake ended.
async fn squat(target: SocketAddr, role: Role, claimed: NodeId) -> HandshakeOutcome {
    let key = StaticKeypair::generate().unwrap();
    let mut link = wire::connect(target, &key).await;
    let mut hello = wire::hello(&key, role, None);
    hello.node_id = claimed;
    hello.user_agent = "squatter".into();
    match wire::say_hello(&mut link, hello).await {
        Some(reply) => reply.outcome,
        None => panic!("closed without a HelloReply"),
    }
}

fn assert_mismatch(outcome: &HandshakeOutcome) {
    assert!(
        matches!(
            outcome,
            HandshakeOutcome::Rejected {
                reason: RejectReason::NodeIdMismatch,
                ..
            }
        ),
        "the squatter was not refused for its id: {outcome:?}"
    );
}

async fn supernode_with(key: StaticKeypair, peers: Vec<SocketAddr>) -> SupernodeHandle {
    let mut options = SupernodeOptions::new(localhost());
    options.key = Some(key);
    options.peers = peers;
    supernode::start(options).await.unwrap()
}

#[tokio::test]
async fn a_squatter_cannot_take_a_supernodes_id_before_or_after_it_connects() {
    init_logs();
    let victim = supernode(&[]).await;
    // The real peer's key; its id is public (any HelloReply shows it).
    let real_key = StaticKeypair::generate().unwrap();
    let real_id = real_key.node_id();

    // Before the real peer connects: squatting its id as a supernode and
    // as a leaf is refused, and holds no slot.
    assert_mismatch(&squat(victim.local_addr(), Role::Supernode, real_id).await);
    assert_mismatch(&squat(victim.local_addr(), Role::Leaf, real_id).await);

    // The real peer then connects, and is not taken for a duplicate.
    let real = supernode_with(real_key, vec![victim.local_addr()]).await;
    assert_eq!(real.node_id(), real_id);
    victim
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    real.wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();

    // While it is connected, squatting is refused for the key, not as a
    // duplicate, and the real link stays.
    assert_mismatch(&squat(victim.local_addr(), Role::Supernode, real_id).await);
    let stats = victim
        .wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .unwrap();
    assert_eq!(stats.supernode_peers, 1);
    assert_eq!(stats.handshakes_rejected, 3);
    assert_eq!(real.stats().supernode_peers, 1);
}

#[tokio::test]
async fn a_squatter_cannot_take_a_leafs_id() {
    init_logs();
    let nodes = line(1).await;
    let folder = shared_folder(&["mine.txt"]);
    let owner = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.leaves == 1 && s.index_files == 1)
        .await
        .unwrap();

    // A leaf's id is in every QueryHit it answers with.
    assert_mismatch(&squat(nodes[0].local_addr(), Role::Leaf, owner.node_id()).await);
    let stats = nodes[0]
        .wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .unwrap();
    assert_eq!((stats.leaves, stats.index_files), (1, 1));
    assert_eq!(stats.handshakes_rejected, 1);

    // The owner is still reachable through its id: a search finds it.
    let searcher = leaf(&nodes[0], None).await;
    let found = searcher
        .search(request(&["mine"], 1, PATIENCE, 1))
        .await
        .unwrap();
    let result = found.results.first().expect("the owner's file");
    assert!(result.sources.iter().any(|s| s.node_id == owner.node_id()));
}
