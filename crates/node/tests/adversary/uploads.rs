//! Upload blocking: readers that never read, and connections that never
//! speak, must not lock honest downloaders out of a leaf's HTTP server.
//!
//! The attacker connects from 127.0.0.x, the honest downloader from
//! 127.0.1.3 (another /24), and the leaf limits loopback like any other
//! address (its exempt list is empty here).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_core::addr_limits::AddressLimit;
use canopy_node::leaf::LeafHandle;
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::ContentId;
use canopy_testkit::overlay::{PATIENCE, leaf_options, sample_bytes, start_leaf, supernode};
use canopy_transfer::client::{HttpConn, read_limited};
use canopy_transfer::server::{ContentServer, ServerConfig};

use crate::wire::eventually;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MIB: usize = 1 << 20;
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const HONEST: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 3);

struct Leaf {
    _supernode: SupernodeHandle,
    leaf: LeafHandle,
    addr: SocketAddr,
    id: ContentId,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Leaf {
    fn server(&self) -> &ContentServer {
        self.leaf.server()
    }
}

/// A leaf sharing one file of `len` bytes, with `config` for its server
/// and nothing exempt from the per-address limits.
async fn leaf_sharing(len: usize, config: ServerConfig) -> Leaf {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_bytes(len, 9);
    std::fs::write(dir.path().join("big.bin"), &data).unwrap();
    let id = ContentId(*blake3::hash(&data).as_bytes());
    let at = supernode(&[]).await;
    let mut options = leaf_options(&at, Some(dir.path()));
    options.server = ServerConfig {
        exempt: Vec::new(),
        ..config
    };
    let leaf = start_leaf(options).await;
    let addr = leaf.listen_addr().unwrap();
    Leaf {
        _supernode: at,
        leaf,
        addr,
        id,
        data,
        _dir: dir,
    }
}

/// A connection to `to` from `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// A GET for the whole file that is never read.
async fn never_reading_get(from: Ipv4Addr, leaf: &Leaf) -> TcpStream {
    let mut stream = connect_from(from, leaf.addr).await.unwrap();
    let request = format!("GET /content/{} HTTP/1.1\r\nHost: x\r\n\r\n", leaf.id);
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// The honest downloader: the tree and 4 MiB of the file, checked.
async fn honest_download(leaf: &Leaf) -> Result<Duration, String> {
    let started = Instant::now();
    let stream = connect_from(HONEST, leaf.addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = HttpConn::handshake(stream)
        .await
        .map_err(|e| e.to_string())?;
    let tree = conn
        .get(&format!("/tree/{}", leaf.id), None)
        .await
        .map_err(|e| e.to_string())?;
    if tree.status() != StatusCode::OK {
        return Err(format!("tree: {}", tree.status()));
    }
    read_limited(tree.into_body(), MIB)
        .await
        .map_err(|e| e.to_string())?;
    let response = conn
        .get(
            &format!("/content/{}", leaf.id),
            Some((0, (4 * MIB - 1) as u64)),
        )
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Err(format!("content: {}", response.status()));
    }
    let body = read_limited(response.into_body(), 4 * MIB)
        .await
        .map_err(|e| e.to_string())?;
    if body[..] != leaf.data[..4 * MIB] {
        return Err("wrong bytes".into());
    }
    Ok(started.elapsed())
}

#[tokio::test]
async fn stalled_downloads_from_one_address_do_not_lock_out_another() {
    let config = ServerConfig {
        upload_slots: 4,
        uploads_per_address: AddressLimit::new(2, 2),
        // Long: it is the per-address share, not the stall cut, that keeps
        // the honest downloader served while the attack goes on.
        write_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let leaf = leaf_sharing(64 * MIB, config).await;
    let attacker = IpAddr::V4(ATTACKER);
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(never_reading_get(ATTACKER, &leaf).await);
    }
    let stats = leaf.server().stats();
    assert!(
        eventually(|| stats.address_upload_refusals.load(Ordering::Relaxed) == 6).await,
        "refused: {}",
        stats.address_upload_refusals.load(Ordering::Relaxed)
    );
    assert_eq!(leaf.server().uploads_held_by(attacker), 2);
    assert_eq!(leaf.server().uploads_in_progress(), 2);

    let took = tokio::time::timeout(PATIENCE, honest_download(&leaf))
        .await
        .expect("the honest download hung")
        .expect("the honest download failed");
    // Still under attack: the attacker's two uploads are held.
    assert_eq!(leaf.server().uploads_held_by(attacker), 2);
    eprintln!(
        "8 stalled GETs from {ATTACKER}: 2 slots held, 6 refused; honest download from {HONEST} in {took:?}"
    );
    drop(stalled);
}

#[tokio::test]
async fn four_never_reading_gets_lose_every_slot_within_the_write_timeout() {
    let config = ServerConfig {
        upload_slots: 4,
        write_timeout: Duration::from_secs(2),
        rate_window: Duration::from_secs(4),
        ..ServerConfig::default()
    };
    let leaf = leaf_sharing(64 * MIB, config).await;
    // Four addresses in four networks: every per-address share is one
    // slot, and together they hold all of them.
    let mut stalled = Vec::new();
    for network in 2..6 {
        stalled.push(never_reading_get(Ipv4Addr::new(127, 0, network, 1), &leaf).await);
    }
    assert!(eventually(|| leaf.server().uploads_in_progress() == 4).await);
    let blocked = honest_download(&leaf).await;
    assert_eq!(blocked, Err("content: 503 Service Unavailable".to_owned()));
    let held_at = Instant::now();
    assert!(
        eventually(|| leaf.server().uploads_in_progress() == 0).await,
        "slots still held: {}",
        leaf.server().uploads_in_progress()
    );
    let freed_after = held_at.elapsed();
    assert_eq!(leaf.server().stats().stalled_cut.load(Ordering::Relaxed), 4);
    let took = tokio::time::timeout(PATIENCE, honest_download(&leaf))
        .await
        .expect("the honest download hung")
        .expect("the honest download failed");
    eprintln!(
        "4 never-reading GETs: every slot freed after {freed_after:?}; honest download in {took:?}"
    );
    drop(stalled);
}

#[tokio::test]
async fn silent_connections_do_not_starve_the_server() {
    let config = ServerConfig {
        max_connections: 64,
        connections_per_address: AddressLimit::new(8, 16),
        header_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let leaf = leaf_sharing(8 * MIB, config).await;
    let stats = leaf.server().stats();
    // 256 connections that never send a byte, from four addresses of one /24.
    let mut silent = Vec::new();
    for n in 0..256u16 {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (n % 4) as u8);
        if let Ok(stream) = connect_from(from, leaf.addr).await {
            silent.push(stream);
        }
    }
    assert!(
        eventually(|| stats.address_connection_refusals.load(Ordering::Relaxed) == 256 - 16).await,
        "refused: {}",
        stats.address_connection_refusals.load(Ordering::Relaxed)
    );
    let held: usize = (2..6)
        .map(|host| {
            leaf.server()
                .connections_held_by(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
        })
        .sum();
    assert_eq!(held, 16, "the /24's share");

    // While they are open, an honest downloader is served.
    let took = tokio::time::timeout(PATIENCE, honest_download(&leaf))
        .await
        .expect("the honest download hung")
        .expect("the honest download failed");

    // And the ones let in are closed at the header timeout.
    let mut closed = 0;
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 256);
    assert!(eventually(|| stats.open_connections.load(Ordering::Relaxed) == 0).await);
    eprintln!(
        "256 silent connections: 16 held (until the 2 s header timeout), 240 closed at once; honest download in {took:?}"
    );
}
