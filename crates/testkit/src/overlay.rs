//! Real supernodes and leaves on 127.0.0.1 (or `[::1]`, see
//! [`localhost_v6`]), with port 0 everywhere.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use canopy_core::leaf::SearchRequest;
use canopy_node::leaf::{self, LeafHandle, LeafOptions};
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use canopy_proto::ContentId;

/// Long enough for any condition on loopback; a test fails, not hangs.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// 127.0.0.1, any port.
pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `[::1]`, any port. Panics (loudly, never skipping) if this machine has
/// no IPv6 loopback: the IPv6 tests need one.
pub fn localhost_v6() -> SocketAddr {
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    if let Err(error) = std::net::TcpListener::bind(addr) {
        panic!(
            "this machine has no IPv6 loopback ([::1]: {error}); the IPv6 tests need one \
             (enable it: sysctl net.ipv6.conf.lo.disable_ipv6=0)"
        );
    }
    addr
}

/// Logs to the test output, filtered by `RUST_LOG`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A supernode dialing `peers`.
pub async fn supernode(peers: &[SocketAddr]) -> SupernodeHandle {
    supernode_on(localhost(), peers).await
}

/// A supernode listening on `listen` and dialing `peers`.
pub async fn supernode_on(listen: SocketAddr, peers: &[SocketAddr]) -> SupernodeHandle {
    let mut options = SupernodeOptions::new(listen);
    options.peers = peers.to_vec();
    options.redial_initial = Duration::from_millis(50);
    // Exactly the topology asked for: no discovery of extra peers.
    options.peers_wanted = 0;
    supernode::start(options).await.unwrap()
}

/// Supernodes in a line, each dialing the one before; returns once linked.
pub async fn line(n: usize) -> Vec<SupernodeHandle> {
    line_on(localhost(), n).await
}

/// [`line`], each supernode listening on `listen`.
pub async fn line_on(listen: SocketAddr, n: usize) -> Vec<SupernodeHandle> {
    let mut nodes: Vec<SupernodeHandle> = Vec::new();
    for _ in 0..n {
        let peers: Vec<SocketAddr> = nodes.last().map(|s| s.local_addr()).into_iter().collect();
        nodes.push(supernode_on(listen, &peers).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        let expected = usize::from(i > 0) + usize::from(i + 1 < n);
        node.wait_for(PATIENCE, |s| s.supernode_peers == expected)
            .await
            .expect("overlay did not form");
    }
    nodes
}

/// Options for a leaf of `at` sharing `dir` (if given), serving on 127.0.0.1.
pub fn leaf_options(at: &SupernodeHandle, dir: Option<&Path>) -> LeafOptions {
    leaf_options_on(localhost(), at, dir)
}

/// [`leaf_options`], serving on `listen`.
pub fn leaf_options_on(
    listen: SocketAddr,
    at: &SupernodeHandle,
    dir: Option<&Path>,
) -> LeafOptions {
    let mut options = LeafOptions::new(at.local_addr());
    options.listen = Some(listen);
    options.shares = dir.into_iter().map(Path::to_owned).collect();
    options
}

/// Starts a leaf with `options` and waits until its supernode accepts it.
pub async fn start_leaf(options: LeafOptions) -> LeafHandle {
    let handle = leaf::start(options).await.unwrap();
    handle.wait_connected(PATIENCE).await.unwrap();
    handle
}

/// A leaf of `at` sharing `dir` (if given), serving on 127.0.0.1.
pub async fn leaf(at: &SupernodeHandle, dir: Option<&Path>) -> LeafHandle {
    start_leaf(leaf_options(at, dir)).await
}

/// A folder with one file per name; the content is the name.
pub fn shared_folder(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::write(dir.path().join(name), name.as_bytes()).unwrap();
    }
    dir
}

/// A folder holding one file, `name`, with `data`.
pub fn folder_with(name: &str, data: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), data).unwrap();
    dir
}

/// The content id of `data` (its BLAKE3 hash).
pub fn content_id(data: &[u8]) -> ContentId {
    ContentId(*blake3::hash(data).as_bytes())
}

/// `len` bytes that are the same for the same `seed` and differ from
/// group to group (so a misplaced group fails verification).
pub fn sample_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A keyword search.
pub fn request(words: &[&str], ttl: u8, timeout: Duration, max_results: usize) -> SearchRequest {
    SearchRequest::keywords(words, ttl, timeout, max_results)
}

/// A search by content id that waits its whole `timeout` for sources.
pub fn id_request(id: ContentId, timeout: Duration) -> SearchRequest {
    SearchRequest::content(id, 4, timeout)
}
