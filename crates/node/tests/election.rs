//! Automatic supernode election on real sockets: a reachable leaf that
//! sees the network full promotes itself, and a newcomer turned away by
//! the full supernodes is served by it and finds files through it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use canopy_core::election::ElectionConfig;
use canopy_core::reachability::Reachable;
use canopy_node::election::{self, ElectionOptions, ElectionSignals, ElectionState};
use canopy_node::leaf::{LeafHandle, LeafStatus};
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use common::*;
use tokio_util::task::TaskTracker;

/// Waits until the leaf's status satisfies `condition`.
async fn wait_status(leaf: &LeafHandle, condition: impl FnMut(&LeafStatus) -> bool) -> LeafStatus {
    let mut status = leaf.watch_status();
    tokio::time::timeout(PATIENCE, status.wait_for(condition))
        .await
        .unwrap_or_else(|_| panic!("status never matched: {:?}", leaf.status()))
        .unwrap()
        .clone()
}

/// A seed supernode taking `max_leaves` leaves, peered with `peers`.
async fn seed(max_leaves: usize, peers: &[std::net::SocketAddr]) -> SupernodeHandle {
    let mut options = SupernodeOptions::new(localhost());
    options.peers = peers.to_vec();
    options.redial_initial = Duration::from_millis(50);
    options.peers_wanted = 0;
    options.port_mapping = None;
    options.protocol.max_leaves = max_leaves;
    supernode::start(options).await.unwrap()
}

/// The policy with the anchors' capability thresholds out of the way (a
/// test can't wait an hour nor push 20 KB/s first) and a quick timer;
/// reachability still counts, and switches are a long way apart.
fn quick_policy() -> ElectionConfig {
    ElectionConfig {
        min_uptime: Duration::ZERO,
        min_upload_rate: 0,
        min_download_rate: 0,
        min_memory: 0,
        evaluate_every: Duration::from_millis(200),
        scarce_free_slots: 0,
        ..ElectionConfig::default()
    }
}

/// Two full seeds, a sharer on the first, and a candidate with the
/// election on that has promoted itself; a newcomer served by it.
struct Promoted {
    s1: SupernodeHandle,
    s2: SupernodeHandle,
    _sharer: LeafHandle,
    _shared: tempfile::TempDir,
    _candidate: LeafHandle,
    signals: ElectionSignals,
    elected: election::ElectionHandle,
    new_supernode: std::net::SocketAddr,
    newcomer: LeafHandle,
    _tracker: TaskTracker,
}

async fn promoted(policy: ElectionConfig) -> Promoted {
    init_logs();
    // Two seed supernodes of one leaf slot each, peered.
    let s1 = seed(1, &[]).await;
    let s2 = seed(1, &[s1.local_addr()]).await;
    s1.wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    // A sharer fills the first.
    let shared = shared_folder(&["elected supernode song.ogg"]);
    let sharer = start_leaf(leaf_options(&s1, Some(shared.path()))).await;

    // The candidate: reachable on 127.0.0.1, wanting two supernodes, with
    // the election on. It fills the second, hears of the first from its
    // Pong, is refused there as full: the network needs a supernode.
    let (signals, receiver) = ElectionSignals::channel();
    let mut options = leaf_options(&s2, None);
    options.reconnect = true;
    options.supernodes_wanted = 2;
    options.port_mapping = None;
    options.election = Some(signals.clone());
    let candidate = start_leaf(options).await;
    wait_status(&candidate, |s| s.reachability.reachable == Reachable::Yes).await;
    let mut overlay = SupernodeOptions::new(localhost());
    overlay.port_mapping = None;
    overlay.redial_initial = Duration::from_millis(50);
    let tracker = TaskTracker::new();
    let elected = election::start(
        &candidate,
        ElectionOptions {
            policy,
            supernode: overlay,
            data_dir: None,
        },
        receiver,
        &tracker,
    );
    let mut state = elected.watch();
    let promoted: ElectionState =
        tokio::time::timeout(PATIENCE, state.wait_for(|s| s.supernode.is_some()))
            .await
            .unwrap_or_else(|_| panic!("never promoted: {:?}", elected.state()))
            .unwrap()
            .clone();
    let new_supernode = promoted.supernode.unwrap();
    assert_eq!(promoted.promotions, 1);
    assert!(s1.stats().leaves_refused_full >= 1, "the need was real");
    // It joins the overlay as a peer of the candidate's supernode.
    s2.wait_for(PATIENCE, |s| s.supernode_peers == 2)
        .await
        .unwrap();

    // A newcomer knowing only the full seed is turned away with a
    // try-list that names the new supernode, and lands there.
    let mut options = leaf_options(&s2, None);
    options.reconnect = true;
    let newcomer = start_leaf(options).await;
    let status = wait_status(&newcomer, |s| s.connected_to.is_some()).await;
    assert_eq!(status.connected_to, Some(new_supernode));
    tokio::time::timeout(PATIENCE, state.wait_for(|s| s.leaves >= 1))
        .await
        .unwrap_or_else(|_| panic!("the new supernode's leaves: {:?}", elected.state()))
        .unwrap();
    Promoted {
        s1,
        s2,
        _sharer: sharer,
        _shared: shared,
        _candidate: candidate,
        signals,
        elected,
        new_supernode,
        newcomer,
        _tracker: tracker,
    }
}

/// Searches through `leaf` until the sharer's file is found.
async fn finds_the_shared_file(leaf: &LeafHandle) {
    let outcome = leaf
        .search(request(&["elected"], 4, Duration::from_secs(5), 1))
        .await
        .unwrap();
    assert_eq!(outcome.results.len(), 1, "found: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capable_leaf_promotes_itself_when_the_network_is_full_and_serves_a_newcomer() {
    let net = promoted(quick_policy()).await;
    // A search through it reaches the sharer on the first seed.
    finds_the_shared_file(&net.newcomer).await;
    // The policy does not flip back: switches are 30 min apart.
    assert_eq!(net.elected.state().demotions, 0);
    assert_eq!(net.s1.stats().leaves, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supernode_with_few_leaves_steps_down_when_there_is_room_and_hands_them_over() {
    // Switches a second apart, "few" is one leaf, idle after a second.
    let net = promoted(ElectionConfig {
        switch_spacing: Duration::from_secs(1),
        idle_for: Duration::from_secs(1),
        few_leaves: 1,
        plenty_free_slots: 5,
        ..quick_policy()
    })
    .await;
    // While the seeds are full it stays, however idle: no room is known
    // elsewhere (the policy's unit tests check it over hours).
    assert_eq!(net.elected.state().demotions, 0, "no room elsewhere yet");

    // A roomy supernode joins the seeds, and the candidate hears of its
    // room (as its HelloReply or a Pong would tell; told directly here).
    let roomy = seed(50, &[net.s1.local_addr(), net.s2.local_addr()]).await;
    roomy
        .wait_for(PATIENCE, |s| s.supernode_peers >= 2)
        .await
        .unwrap();
    net.signals.report(election::Signal::FreeSlots {
        supernode: roomy.local_addr(),
        free: 50,
    });
    let mut state = net.elected.watch();
    tokio::time::timeout(PATIENCE, state.wait_for(|s| s.demotions == 1))
        .await
        .unwrap_or_else(|_| panic!("never stepped down: {:?}", net.elected.state()))
        .unwrap();
    assert_eq!(net.elected.state().supernode, None);

    // The newcomer was handed the roomy supernode and is searchable there.
    let status = wait_status(&net.newcomer, |s| {
        s.connected_to.is_some() && s.connected_to != Some(net.new_supernode)
    })
    .await;
    assert_eq!(status.connected_to, Some(roomy.local_addr()));
    roomy.wait_for(PATIENCE, |s| s.leaves >= 1).await.unwrap();
    finds_the_shared_file(&net.newcomer).await;
}
