//! Real supernodes and leaves on 127.0.0.1, talking TCP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn hits_cross_three_supernodes_with_ttl_4_but_not_with_ttl_2() {
    init_logs();
    let nodes = line(4).await;
    let folder = shared_folder(&["Blue Moon.mp3", "Red Sun.ogg"]);
    let sharer = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 2)
        .await
        .unwrap();
    let searcher = leaf(&nodes[3], None).await;

    let found = searcher
        .search(request(&["blue", "moon"], 4, PATIENCE, 1))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);
    let result = &found.results[0];
    assert_eq!(result.name, "Blue Moon.mp3");
    assert_eq!(result.size, "Blue Moon.mp3".len() as u64);
    assert_eq!(
        result.content_id.0,
        *blake3::hash(b"Blue Moon.mp3").as_bytes()
    );
    assert_eq!(result.sources.len(), 1);
    assert_eq!(Some(result.sources[0].addr), sharer.listen_addr());
    assert_eq!(result.sources[0].node_id, sharer.node_id());

    let short = searcher
        .search(request(&["blue"], 2, Duration::from_millis(1500), 1))
        .await
        .unwrap();
    assert!(
        short.results.is_empty(),
        "TTL 2 must not reach three supernodes away"
    );
    // The query did travel, just not far enough: its last hop reached
    // the next supernode, or was saved by that supernode's routing filter
    // (it shares nothing; its filter reaches us as soon as we connect,
    // now that the node task wakes at the core's deadlines, not a tick).
    let last_hop = nodes[2].stats().queries_received + nodes[3].stats().filters.queries_skipped;
    assert!(last_hop >= 2, "{last_hop}");
    assert_eq!(nodes[0].stats().queries_received, 1);

    sharer.shutdown().await;
    searcher.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn in_a_ring_a_query_is_answered_once() {
    init_logs();
    let a = supernode(&[]).await;
    let b = supernode(&[a.local_addr()]).await;
    let c = supernode(&[b.local_addr()]).await;
    let d = supernode(&[c.local_addr(), a.local_addr()]).await;
    for node in [&a, &b, &c, &d] {
        node.wait_for(PATIENCE, |s| s.supernode_peers == 2)
            .await
            .unwrap();
    }
    let folder = shared_folder(&["ring tone.wav"]);
    let _sharer = leaf(&a, Some(folder.path())).await;
    a.wait_for(PATIENCE, |s| s.index_files == 1).await.unwrap();
    let searcher = leaf(&c, None).await;

    // Two paths of two hops each lead from c to a. Wait the whole timeout
    // so a second answer would have time to arrive.
    let found = searcher
        .search(request(&["ring"], 4, Duration::from_millis(1500), 100))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);
    assert_eq!(found.hits, 1, "answered once, not once per path");
    let duplicates: u64 = [&a, &b, &c, &d]
        .iter()
        .map(|n| n.stats().queries_duplicate)
        .sum();
    assert!(duplicates >= 1);
}

#[tokio::test]
async fn a_departed_leafs_files_stop_appearing() {
    init_logs();
    let nodes = line(2).await;
    let folder = shared_folder(&["ephemeral notes.txt"]);
    let sharer = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();
    let searcher = leaf(&nodes[1], None).await;
    let before = searcher
        .search(request(&["ephemeral"], 4, PATIENCE, 1))
        .await
        .unwrap();
    assert_eq!(before.results.len(), 1);

    sharer.shutdown().await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.leaves == 0 && s.index_files == 0)
        .await
        .unwrap();
    let after = searcher
        .search(request(&["ephemeral"], 4, Duration::from_millis(1000), 1))
        .await
        .unwrap();
    assert!(after.results.is_empty());
}

#[tokio::test]
async fn a_supernode_redials_a_peer_that_comes_back() {
    init_logs();
    let first = supernode(&[]).await;
    let addr = first.local_addr();
    let second = supernode(&[addr]).await;
    second
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    first.shutdown().await;
    second
        .wait_for(PATIENCE, |s| s.supernode_peers == 0)
        .await
        .unwrap();
    // Same address again: the dialer finds it.
    let mut options = canopy_node::supernode::SupernodeOptions::new(addr);
    options.redial_initial = Duration::from_millis(50);
    let again = canopy_node::supernode::start(options).await.unwrap();
    second
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    again
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
}
