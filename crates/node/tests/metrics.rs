//! The metrics endpoints of a supernode and a leaf: the numbers follow the
//! node, and `promtool check metrics` accepts the output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use canopy_node::metrics;
use canopy_transfer::client::{HttpConn, read_limited};
use common::*;
use std::io::Write as _;
use std::process::{Command, Stdio};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = HttpConn::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let response = conn.get("/metrics", None).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = read_limited(response.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

fn value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test (.ci/run installs the prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn supernode_and_leaf_metrics_follow_the_nodes_and_pass_promtool() {
    init_logs();
    let nodes = line(2).await;
    let folder = shared_folder(&["measured.txt"]);
    let sharer = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();
    let searcher = leaf(&nodes[1], None).await;
    let found = searcher
        .search(request(&["measured"], 4, PATIENCE, 1))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);

    let any = localhost();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let at_supernode = metrics::serve(
        any,
        metrics::supernode_metrics(&nodes[0]),
        shutdown.clone(),
        &tracker,
    )
    .await
    .unwrap();
    let at_leaf = metrics::serve(
        any,
        metrics::leaf_metrics(&sharer),
        shutdown.clone(),
        &tracker,
    )
    .await
    .unwrap();

    let text = scrape(at_supernode).await;
    promtool_accepts(&text);
    assert_eq!(value(&text, "canopy_leaves"), 1);
    assert_eq!(value(&text, "canopy_supernode_peers"), 1);
    assert_eq!(value(&text, "canopy_index_files"), 1);
    assert_eq!(value(&text, "canopy_queries_received_total"), 1);
    assert_eq!(value(&text, "canopy_hits_answered_total"), 1);
    assert!(value(&text, "canopy_received_bytes_total") > 0);
    assert!(value(&text, "canopy_sent_bytes_total") > 0);

    // Counters follow the node between scrapes.
    searcher
        .search(request(&["measured"], 4, PATIENCE, 1))
        .await
        .unwrap();
    let again = scrape(at_supernode).await;
    assert_eq!(value(&again, "canopy_queries_received_total"), 2);

    let text = scrape(at_leaf).await;
    promtool_accepts(&text);
    assert_eq!(value(&text, "canopy_shared_files"), 1);
    assert_eq!(value(&text, "canopy_supernode_connected"), 1);
    assert_eq!(value(&text, "canopy_upload_slots"), 4);
    assert_eq!(value(&text, "canopy_upload_slots_in_use"), 0);
    assert_eq!(value(&text, "canopy_nat_kind"), 1, "seen at our own IP");
    assert!(value(&text, "canopy_reachable") <= 1);

    // Anything but /metrics is 404.
    let mut conn = HttpConn::handshake(TcpStream::connect(at_leaf).await.unwrap())
        .await
        .unwrap();
    assert_eq!(conn.get("/", None).await.unwrap().status(), 404);
    shutdown.cancel();
}
