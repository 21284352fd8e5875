//! Helpers for tests that run real nodes on 127.0.0.1.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use canopy_core::leaf::SearchRequest;
use canopy_node::leaf::{self, LeafHandle, LeafOptions};
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};

/// Long enough for any condition on loopback; a test fails, not hangs.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn supernode(peers: &[SocketAddr]) -> SupernodeHandle {
    let mut options = SupernodeOptions::new(localhost());
    options.peers = peers.to_vec();
    options.redial_initial = Duration::from_millis(50);
    supernode::start(options).await.unwrap()
}

/// Supernodes in a line: each dials the one before it.
pub async fn line(n: usize) -> Vec<SupernodeHandle> {
    let mut nodes: Vec<SupernodeHandle> = Vec::new();
    for _ in 0..n {
        let peers: Vec<SocketAddr> = nodes.last().map(|s| s.local_addr()).into_iter().collect();
        nodes.push(supernode(&peers).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        let expected = if n == 1 {
            0
        } else if i == 0 || i == n - 1 {
            1
        } else {
            2
        };
        node.wait_for(PATIENCE, |s| s.supernode_peers == expected)
            .await
            .expect("overlay did not form");
    }
    nodes
}

/// A leaf of `at` sharing `dir` (if given), listening on 127.0.0.1.
pub async fn leaf(at: &SupernodeHandle, dir: Option<&Path>) -> LeafHandle {
    let mut options = LeafOptions::new(at.local_addr());
    options.listen = Some(localhost());
    options.shares = dir.into_iter().map(Path::to_owned).collect();
    let handle = leaf::start(options).await.unwrap();
    handle.wait_connected(PATIENCE).await.unwrap();
    handle
}

/// A folder with one file per name; the content is the name.
pub fn shared_folder(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::write(dir.path().join(name), name.as_bytes()).unwrap();
    }
    dir
}

pub fn request(words: &[&str], ttl: u8, timeout: Duration, max_results: usize) -> SearchRequest {
    SearchRequest {
        keywords: words.iter().map(|w| w.to_string()).collect(),
        content_id: None,
        min_size: None,
        max_size: None,
        ttl,
        timeout,
        max_results,
    }
}
