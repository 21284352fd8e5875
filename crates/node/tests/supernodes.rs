//! A leaf among several supernodes: redirected by a full one, kept
//! searchable when one goes away, and rejoining from its host cache;
//! queries on their last hop sent only where a peer's routing filter may
//! match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use canopy_node::leaf::{LeafHandle, LeafStatus};
use canopy_node::supernode::{self, SupernodeOptions};
use common::*;

/// Waits until the leaf's status satisfies `condition`.
async fn wait_status(leaf: &LeafHandle, condition: impl FnMut(&LeafStatus) -> bool) -> LeafStatus {
    let mut status = leaf.watch_status();
    tokio::time::timeout(PATIENCE, status.wait_for(condition))
        .await
        .unwrap_or_else(|_| panic!("status never matched: {:?}", leaf.status()))
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_supernode_redirects_and_the_leaf_lands_on_another() {
    init_logs();
    let other = supernode(&[]).await;
    let mut options = SupernodeOptions::new(localhost());
    options.peers = vec![other.local_addr()];
    options.protocol.max_leaves = 1;
    let full = supernode::start(options).await.unwrap();
    full.wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    let _occupant = leaf(&full, None).await;

    // The newcomer knows only the full supernode.
    let newcomer = start_leaf(leaf_options(&full, None)).await;
    let status = wait_status(&newcomer, |s| s.connected_to.is_some()).await;
    assert_eq!(
        status.connected_to,
        Some(other.local_addr()),
        "landed on the supernode in the try-list"
    );
    assert!(full.stats().handshakes_rejected >= 1);
    other.wait_for(PATIENCE, |s| s.leaves == 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_stays_searchable_when_one_of_its_supernodes_goes_and_replaces_it() {
    init_logs();
    let nodes = line(3).await;
    let (first, second, third) = (
        nodes[0].local_addr(),
        nodes[1].local_addr(),
        nodes[2].local_addr(),
    );
    let folder = shared_folder(&["survivor.txt"]);
    let mut options = leaf_options(&nodes[0], Some(folder.path()));
    options.supernodes = vec![first, second];
    options.supernodes_wanted = 2;
    options.reconnect = true;
    let sharer = start_leaf(options).await;
    wait_status(&sharer, |s| s.supernodes.len() == 2).await;
    // Published to both.
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();
    nodes[1]
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();

    let searcher = leaf(&nodes[2], None).await;
    let mut nodes = nodes.into_iter();
    let gone = nodes.next().unwrap();
    gone.shutdown().await;
    // Still found at once: the second supernode indexes it too.
    let found = searcher
        .search(request(&["survivor"], 4, PATIENCE, 1))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);

    // And the leaf replaces the lost supernode with one it heard of.
    let status = wait_status(&sharer, |s| {
        s.supernodes.len() == 2 && !s.supernodes.contains(&first)
    })
    .await;
    assert_eq!(status.supernodes, {
        let mut both = vec![second, third];
        both.sort();
        both
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_whose_seed_is_gone_rejoins_through_its_host_cache() {
    init_logs();
    let nodes = line(2).await;
    let data = tempfile::tempdir().unwrap();
    let mut options = leaf_options(&nodes[0], None);
    options.data_dir = Some(data.path().to_owned());
    options.reconnect = true;
    let first_run = start_leaf(options.clone()).await;
    // It hears of the second supernode from the first (a Pong).
    let hosts_file = data.path().join(canopy_node::hosts::HOST_CACHE_FILE);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&hosts_file).unwrap_or_default();
        if text.contains(&nodes[1].local_addr().to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "host cache never learned: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first_run.shutdown().await;

    // Next start: the configured seed is dead; the cache still has one alive.
    let dead: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = options;
    options.supernodes = vec![dead];
    let mut nodes = nodes.into_iter();
    nodes.next().unwrap().shutdown().await;
    let alive = nodes.next().unwrap();
    let second_run = start_leaf(options).await;
    assert_eq!(second_run.status().connected_to, Some(alive.local_addr()));
}

#[tokio::test(flavor = "multi_thread")]
async fn supernodes_find_more_peers_and_rejoin_from_their_host_cache() {
    init_logs();
    // a <- b <- c: c hears of a from b and, wanting more peers, dials it.
    let a = supernode(&[]).await;
    let b = supernode(&[a.local_addr()]).await;
    // c learns b's neighbours once, when it connects (see the closing note:
    // there is no later refresh yet), so b must know a by then.
    b.wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut options = SupernodeOptions::new(localhost());
    options.peers = vec![b.local_addr()];
    options.data_dir = Some(data.path().to_owned());
    options.peers_wanted = 2;
    let c = supernode::start(options.clone()).await.unwrap();
    c.wait_for(PATIENCE, |s| s.supernode_peers == 2)
        .await
        .unwrap();
    a.wait_for(PATIENCE, |s| s.supernode_peers == 2)
        .await
        .unwrap();
    c.shutdown().await;

    // Restarted with only a dead seed, c joins through its host cache.
    let dead: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    options.peers = vec![dead];
    let again = supernode::start(options).await.unwrap();
    again
        .wait_for(PATIENCE, |s| s.supernode_peers >= 1)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_querying_stops_at_its_target_on_real_sockets() {
    init_logs();
    let mut options = SupernodeOptions::new(localhost());
    options.peers_wanted = 0;
    options.protocol.dynamic = Some(canopy_core::dynamic::DynamicConfig {
        keyword_target: 15,
        content_target: 10,
        probe_peers: 2,
        hop_wait: Duration::from_millis(300),
        deadline: Duration::from_secs(30),
        max_horizon: 4_000,
        // Each spoke's hits may count in full: two spokes end the query.
        peer_share_percent: 100,
    });
    let hub = supernode::start(options).await.unwrap();
    let mut spokes = Vec::new();
    let mut folders = Vec::new();
    for spoke in 0..4 {
        let node = supernode(&[hub.local_addr()]).await;
        let names: Vec<String> = (0..10).map(|i| format!("tune {spoke} {i}.ogg")).collect();
        let folder = shared_folder(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let sharer = leaf(&node, Some(folder.path())).await;
        node.wait_for(PATIENCE, |s| s.index_files == 10)
            .await
            .unwrap();
        spokes.push((node, sharer));
        folders.push(folder);
    }
    hub.wait_for(PATIENCE, |s| s.supernode_peers == 4)
        .await
        .unwrap();
    let searcher = leaf(&hub, None).await;
    let found = searcher
        .search(request(&["tune"], 4, Duration::from_secs(3), 100))
        .await
        .unwrap();
    // The probe asks two spokes: 20 results, past the target of 15.
    assert_eq!(found.results.len(), 20);
    let asked = spokes
        .iter()
        .filter(|(node, _)| node.stats().queries_received > 0)
        .count();
    assert_eq!(asked, 2, "the other spokes were never asked");
    assert_eq!(hub.stats().queries_forwarded, 2);
}

/// Options for a flooding supernode dialing `peers` that sends its
/// routing filter 5 times a second.
fn filtering(peers: &[SocketAddr]) -> SupernodeOptions {
    let mut options = SupernodeOptions::new(localhost());
    options.peers = peers.to_vec();
    options.peers_wanted = 0;
    options.redial_initial = Duration::from_millis(50);
    options.protocol.dynamic = None;
    options.protocol.filter_publish_interval = Duration::from_millis(200);
    options
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_hop_query_skips_a_peer_whose_filter_does_not_match() {
    init_logs();
    let hub = supernode::start(filtering(&[])).await.unwrap();
    let blue = supernode::start(filtering(&[hub.local_addr()]))
        .await
        .unwrap();
    let red = supernode::start(filtering(&[hub.local_addr()]))
        .await
        .unwrap();
    let blue_folder = shared_folder(&["blue moon.ogg"]);
    let red_folder = shared_folder(&["red sun.ogg"]);
    let _blue_sharer = leaf(&blue, Some(blue_folder.path())).await;
    let _red_sharer = leaf(&red, Some(red_folder.path())).await;
    // Each spoke publishes its filter once its leaf's file is in it (three
    // words and an id); the hub has it once it took every byte they sent.
    for spoke in [&blue, &red] {
        spoke
            .wait_for(PATIENCE, |s| s.filters.published_entries == 4)
            .await
            .unwrap();
    }
    let sent = || blue.stats().filters.bytes_sent + red.stats().filters.bytes_sent;
    hub.wait_for(PATIENCE, |s| {
        s.filters.peers_with_filters == 2 && s.filters.bytes_received == sent()
    })
    .await
    .unwrap();

    let searcher = leaf(&hub, None).await;
    let found = searcher
        .search(request(&["blue"], 2, Duration::from_secs(2), 100))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);
    assert_eq!(blue.stats().queries_received, 1);
    assert_eq!(
        red.stats().queries_received,
        0,
        "red's filter has no 'blue'"
    );
    assert_eq!(hub.stats().filters.queries_skipped, 1);
}
