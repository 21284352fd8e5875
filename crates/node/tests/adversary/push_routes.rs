//! Stealing pushes with forged hits: a hostile supernode peer sends a hit
//! naming a leaf it does not have (its node id read from an honest hit), so
//! that pushes for that leaf come to it instead. The push route is set by
//! the first hit and not overwritten while its connection lives, so the
//! push still takes the honest path.

use std::net::SocketAddr;

use canopy_proto::{
    ContentId, Message, MessageId, NodeId, Push, Query, QueryHit, Role, SharedFile,
};
use canopy_testkit::overlay::*;

use crate::peer_flood::RawPeer;

fn song() -> SharedFile {
    SharedFile {
        content_id: ContentId([0x51; 32]),
        name: "song.ogg".into(),
        size: 4_000,
        available: None,
    }
}

/// A hit for `query` from `source`, sharing the song.
fn hit(query: MessageId, source: NodeId, port: u16) -> QueryHit {
    QueryHit {
        message_id: query,
        source_node_id: source,
        source_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        files: vec![song()],
        firewalled: true,
    }
}

/// The id of the first query `peer` is sent (a leaf's query goes out to
/// peers under its step's own id).
async fn receives_query(peer: &mut RawPeer) -> MessageId {
    peer.next_where(
        |m| match m {
            Message::Query(q) => Some(q.message_id),
            _ => None,
        },
        |_| {},
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_hit_cannot_take_the_pushes_of_another_nodes_leaf() {
    init_logs();
    let node = supernode(&[]).await;
    let target = node.local_addr();
    let mut honest = RawPeer::connect(target, Role::Supernode).await;
    let mut hostile = RawPeer::connect(target, Role::Supernode).await;
    let mut downloader = RawPeer::connect(target, Role::Leaf).await;
    node.wait_for(PATIENCE, |s| s.supernode_peers == 2 && s.leaves == 1)
        .await
        .unwrap();

    // The downloader searches; with two peers its supernode floods at once.
    let asked = MessageId([0x0A; 16]);
    downloader
        .send(Message::Query(Query {
            message_id: asked,
            ttl: 3,
            hops: 0,
            keywords: vec!["song".into()],
            content_id: None,
            min_size: None,
            max_size: None,
        }))
        .await;
    let honest_query = receives_query(&mut honest).await;
    let hostile_query = receives_query(&mut hostile).await;

    // The honest peer answers for its firewalled leaf; the downloader sees
    // the hit, so the supernode has routed it (and its push route).
    let victim = NodeId([0x77; 16]);
    honest
        .send(Message::QueryHit(hit(honest_query, victim, 41_000)))
        .await;
    downloader
        .next_where(
            |m| matches!(m, Message::QueryHit(h) if h.source_node_id == victim).then_some(()),
            |_| {},
        )
        .await;

    // The hostile peer claims the same leaf (a node id is in every hit a
    // leaf's files appear in): its hit is a valid answer to the query, so
    // it is passed on too, but it must not move the push route.
    hostile
        .send(Message::QueryHit(hit(hostile_query, victim, 42_000)))
        .await;
    node.wait_for(PATIENCE, |s| s.hits_routed == 2)
        .await
        .unwrap();

    // Pushes for the leaf still take the honest path, every one of them.
    const PUSHES: u8 = 5;
    for n in 0..PUSHES {
        downloader
            .send(Message::Push(Push {
                message_id: MessageId([0xB0 + n; 16]),
                target_node_id: victim,
                content_id: song().content_id,
                callback_addr: SocketAddr::from(([127, 0, 0, 1], 6_000)),
                hops: 0,
                punch: false,
                relay: None,
            }))
            .await;
    }
    for _ in 0..PUSHES {
        honest
            .next_where(
                |m| matches!(m, Message::Push(p) if p.target_node_id == victim).then_some(()),
                |_| {},
            )
            .await;
    }
    node.wait_for(PATIENCE, |s| s.pushes_routed == u64::from(PUSHES))
        .await
        .unwrap();
    let stolen = hostile
        .received()
        .iter()
        .filter(|m| matches!(m, Message::Push(_)))
        .count();
    assert_eq!(stolen, 0, "the hostile peer was sent {stolen} pushes");
    tracing::info!(
        target: "adversary",
        pushes = PUSHES,
        to_hostile = stolen,
        "forged hit for another node's leaf"
    );
}
