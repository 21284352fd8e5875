//! Hole punching on 127.0.0.1: two nodes dialing each other at once from
//! their listening ports end up with one connection between those ports
//! (a simultaneous open, or one side's dial accepted by the other's
//! listener, which the punch takes over), and a download from a source
//! reached by a punched push verifies, its connections reported as
//! punched or pushed. The NAT case itself, where only the punch gets
//! through, is `crates/cli/tests/hole_punch.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_core::punch::PunchConfig;
use canopy_proto::{ContentId, NodeId};
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::download::{DownloadOptions, DownloadSource, download};
use canopy_transfer::listen;
use canopy_transfer::path::TransferPath;
use canopy_transfer::punch::{PunchConnector, PunchRequester, Won, accept_from, punch_back};
use canopy_transfer::server::ContentServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;
const PATIENCE: Duration = Duration::from_secs(60);

async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = listen::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_dialing_each_other_from_their_listening_ports_connect() {
    for round in 0..5 {
        let (a_listener, a) = loopback_listener().await;
        let (b_listener, b) = loopback_listener().await;
        let (to_a, to_b) = ([a], [b]);
        let (a_side, b_side) = tokio::time::timeout(PATIENCE, async {
            tokio::join!(
                canopy_transfer::punch::rendezvous(
                    a.port(),
                    &to_b,
                    PunchConfig::source(),
                    accept_from(&a_listener, b),
                ),
                canopy_transfer::punch::rendezvous(
                    b.port(),
                    &to_a,
                    PunchConfig::source(),
                    accept_from(&b_listener, a),
                ),
            )
        })
        .await
        .expect("the punches ended");
        let (mut a_stream, a_won) = a_side.unwrap();
        let (mut b_stream, b_won) = b_side.unwrap();
        // One connection, between the two listening ports.
        assert_eq!(a_stream.local_addr().unwrap(), a, "round {round}");
        assert_eq!(a_stream.peer_addr().unwrap(), b, "round {round}");
        assert_eq!(b_stream.local_addr().unwrap(), b, "round {round}");
        assert_eq!(b_stream.peer_addr().unwrap(), a, "round {round}");
        // Both dials completed (a simultaneous open), or one side's was
        // accepted by the other: never two accepts.
        assert!(
            matches!(a_won, Won::Dialed { .. }) || matches!(b_won, Won::Dialed { .. }),
            "{a_won:?} {b_won:?}"
        );
        a_stream.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }
}

/// A server sharing `len` bytes on a listener of its own.
async fn sharing_server(
    len: usize,
) -> (
    ContentServer,
    SocketAddr,
    ContentId,
    Vec<u8>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
    let path = dir.path().join("file.bin");
    std::fs::write(&path, &data).unwrap();
    let id = ContentId(*blake3::hash(&data).as_bytes());
    let catalog = Catalog::new();
    catalog.replace([(
        id,
        CatalogEntry {
            path,
            size: len as u64,
            tree: canopy_core::tree::tree_of(&data).into(),
        },
    )]);
    let server = ContentServer::new(catalog, 4);
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(
        server
            .clone()
            .serve(listener, CancellationToken::new(), TaskTracker::new()),
    );
    (server, addr, id, data, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_through_punched_pushes_verifies() {
    let (server, source_addr, id, data, _dir) = sharing_server(3 * MIB + 11).await;
    let source_id = NodeId([9; 16]);
    let punches = Arc::new(AtomicUsize::new(0));
    // The "overlay": a Push with punch set reaches the source at once, and
    // it punches back from its HTTP port, as a leaf does.
    let requester: PunchRequester = {
        let (server, punches) = (server.clone(), punches.clone());
        Arc::new(move |port| {
            let (server, punches) = (server.clone(), punches.clone());
            let callback = SocketAddr::from(([127, 0, 0, 1], port));
            Box::pin(async move {
                punches.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut expected = server.doorway().expect_punch(callback).unwrap();
                    let (stream, _won) =
                        punch_back(source_addr.port(), callback, source_id, expected.arrival())
                            .await
                            .unwrap();
                    server.serve_connection_from(stream, Some(callback)).await;
                });
                Ok(())
            })
        })
    };
    let connector = PunchConnector::new(
        source_id,
        &[source_addr],
        requester,
        PunchConfig::downloader(),
    );
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got.bin");
    let options = DownloadOptions {
        content_id: id,
        size: data.len() as u64,
        target: target.clone(),
        force: false,
        config: DownloadConfig::default(),
        progress: None,
    };
    let source = DownloadSource {
        label: format!("{source_addr} (push)"),
        connector: Arc::new(connector),
        partial: false,
        addr: None,
    };
    let report = tokio::time::timeout(PATIENCE, download(vec![source], options))
        .await
        .expect("the download ended")
        .unwrap();
    assert!(std::fs::read(&target).unwrap() == data, "verified bytes");
    assert_eq!(report.sources[0].bytes, data.len() as u64);
    let paths = &report.sources[0].paths;
    assert!(!paths.is_empty(), "{report:?}");
    // Punched: our dial met the source's (or its dial reached our port).
    // On loopback nothing is in the way, so a dial of ours may also reach
    // the source's HTTP server before it expects the punch: a direct
    // connection, served as such; but not every one.
    assert!(
        paths
            .iter()
            .any(|p| matches!(p, TransferPath::HolePunch | TransferPath::Push)),
        "{paths:?}"
    );
    assert!(
        paths.iter().all(|p| matches!(
            p,
            TransferPath::HolePunch | TransferPath::Push | TransferPath::Direct
        )),
        "{paths:?}"
    );
    assert!(punches.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        report
            .paths_per_source()
            .get(&format!("{source_addr} (push)")),
        Some(paths)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_punch_from_someone_else_is_refused() {
    // The source says it is another node: the downloader does not take
    // the connection.
    let (server, source_addr, _id, _data, _dir) = sharing_server(1000).await;
    let requester: PunchRequester = {
        let server = server.clone();
        Arc::new(move |port| {
            let server = server.clone();
            let callback = SocketAddr::from(([127, 0, 0, 1], port));
            Box::pin(async move {
                tokio::spawn(async move {
                    let mut expected = server.doorway().expect_punch(callback).unwrap();
                    let impostor = NodeId([2; 16]);
                    if let Ok((stream, _)) =
                        punch_back(source_addr.port(), callback, impostor, expected.arrival()).await
                    {
                        server.serve_connection_from(stream, Some(callback)).await;
                    }
                });
                Ok(())
            })
        })
    };
    let config = PunchConfig {
        interval: Duration::from_millis(100),
        window: Duration::from_secs(2),
    };
    let connector = PunchConnector::new(NodeId([9; 16]), &[source_addr], requester, config);
    let outcome = tokio::time::timeout(
        PATIENCE,
        canopy_transfer::client::Connector::connect(&connector),
    )
    .await
    .expect("the connect ended");
    // Refused; unless our dial reached the source's HTTP server itself
    // after its punch had ended (it says nothing, and serves us directly).
    match outcome {
        Err(_) => {}
        Ok(connected) => assert_eq!(
            connected.path,
            TransferPath::Direct,
            "an impostor's connection was taken"
        ),
    }
}
