//! Rate limits, upload slots and the uploads registry against a real server
//! on 127.0.0.1: a download through a throttled connector and an upload
//! through the server's limit keep to their rates (checked from below,
//! which a limit guarantees whatever the machine's load); a running upload
//! is listed with its peer, file and progress and logged at its start and
//! end; the number of upload slots changes while uploads run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_core::download::DownloadConfig;
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::bandwidth::{RateLimit, ThrottledConnector};
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::client::{DirectConnector, HttpConn, read_limited};
use canopy_transfer::download::{DownloadOptions, DownloadSource, download};
use canopy_transfer::server::{ContentServer, ServerConfig};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: u64 = 1 << 20;
/// The burst a 1 MiB/s bucket starts with (an eighth of a second).
const BURST: u64 = MIB / 8;

struct Served {
    addr: SocketAddr,
    id: ContentId,
    data: Vec<u8>,
    server: ContentServer,
    dir: tempfile::TempDir,
}

async fn serve(len: u64, slots: usize) -> Served {
    serve_with(
        len,
        ServerConfig {
            upload_slots: slots,
            ..ServerConfig::default()
        },
    )
    .await
}

async fn serve_with(len: u64, config: ServerConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    let path = dir.path().join("file.bin");
    std::fs::write(&path, &data).unwrap();
    let id = ContentId(*blake3::hash(&data).as_bytes());
    let catalog = Catalog::new();
    catalog.insert(
        id,
        CatalogEntry {
            path,
            size: len,
            tree: canopy_core::tree::tree_of(&data).into(),
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ContentServer::with_config(catalog, config);
    tokio::spawn(
        server
            .clone()
            .serve(listener, CancellationToken::new(), TaskTracker::new()),
    );
    Served {
        addr,
        id,
        data,
        server,
        dir,
    }
}

async fn connect(addr: SocketAddr) -> (HttpConn, SocketAddr) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    (HttpConn::handshake(stream).await.unwrap(), local)
}

/// Polls `condition` every 10 ms for up to 10 s.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test]
async fn a_download_through_a_throttled_connector_keeps_to_the_rate() {
    let s = serve(2 * MIB, 4).await;
    let limit = RateLimit::new(MIB);
    let connector = ThrottledConnector::new(
        Arc::new(DirectConnector::new(s.addr, Duration::from_secs(5))),
        limit.clone(),
    );
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("file.bin");
    let started = Instant::now();
    download(
        vec![DownloadSource {
            label: s.addr.to_string(),
            connector: Arc::new(connector),
            partial: false,
            addr: Some(s.addr),
        }],
        DownloadOptions {
            content_id: s.id,
            size: 2 * MIB,
            target: target.clone(),
            force: false,
            config: DownloadConfig::default(),
            progress: None,
        },
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(std::fs::read(&target).unwrap() == s.data);
    // Everything read from the source went through the bucket: the body,
    // the tree and the response heads.
    assert!(limit.transferred() >= 2 * MIB, "{}", limit.transferred());
    // At most the burst plus 1 MiB a second: 2 MiB can't take less than
    // (2 MiB - burst) / 1 MiB/s.
    let floor = Duration::from_secs_f64((2 * MIB - BURST) as f64 / MIB as f64);
    assert!(took >= floor, "took {took:?}, under {floor:?}");
}

#[tokio::test]
async fn an_upload_keeps_to_the_servers_rate_limit() {
    let s = serve(2 * MIB, 4).await;
    s.server.upload_limit().set_rate(MIB);
    let (mut conn, _) = connect(s.addr).await;
    let started = Instant::now();
    let response = conn.get(&format!("/content/{}", s.id), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = read_limited(response.into_body(), 4 << 20).await.unwrap();
    let took = started.elapsed();
    assert!(body[..] == s.data[..]);
    assert_eq!(s.server.upload_limit().transferred(), 2 * MIB);
    assert_eq!(s.server.uploaded_bytes(), 2 * MIB);
    let floor = Duration::from_secs_f64((2 * MIB - BURST) as f64 / MIB as f64);
    assert!(took >= floor, "took {took:?}, under {floor:?}");

    // Lifted live: the next upload is not held back by the bucket at all.
    s.server.upload_limit().set_rate(0);
    let response = conn.get(&format!("/content/{}", s.id), None).await.unwrap();
    let body = read_limited(response.into_body(), 4 << 20).await.unwrap();
    assert_eq!(body.len() as u64, 2 * MIB);
    assert_eq!(s.server.upload_limit().transferred(), 4 * MIB);
}

/// Log lines written by `tracing`, kept for the tests to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The lines logged so far that contain `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// One subscriber for the whole test binary (a per-test one would miss
/// events whose call sites other tests' threads registered first).
fn logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

#[tokio::test]
async fn a_running_upload_is_listed_and_logged_at_start_and_end() {
    let logs = logs();
    let s = serve(MIB, 4).await;
    // Slow enough that the upload is still running when we look.
    s.server.upload_limit().set_rate(256 * 1024);
    let (mut conn, local) = connect(s.addr).await;
    let response = conn.get(&format!("/content/{}", s.id), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while received == 0 {
        let frame = body.frame().await.unwrap().unwrap();
        received += frame.into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    let uploads = s.server.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let upload = &uploads[0];
    assert_eq!(upload.peer, local);
    assert_eq!(upload.content_id, s.id);
    assert_eq!(upload.path, s.dir.path().join("file.bin"));
    assert_eq!(upload.length, MIB);
    assert!(upload.bytes >= received && upload.bytes < MIB, "{upload:?}");
    assert!(upload.rate > 0, "{upload:?}");
    // At most the limit plus its burst over the time so far, give or take.
    assert!(upload.rate <= 2 * 256 * 1024, "{upload:?}");
    assert!(s.server.upload_rate() > 0);
    assert!(upload.started <= std::time::SystemTime::now());
    let peer = format!("peer={local}");
    let started = logs.lines_with(&peer);
    assert!(started[0].contains("upload started"), "{started:?}");
    assert!(started[0].contains(&format!("range=0-{}/{}", MIB - 1, MIB)));

    while let Some(frame) = body.frame().await {
        received += frame
            .unwrap()
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or(0);
    }
    assert_eq!(received, MIB);
    assert!(eventually(|| s.server.uploads().is_empty()).await);
    let lines = logs.lines_with(&peer);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let end = &lines[1];
    assert!(end.contains("upload ended"), "{end}");
    assert!(end.contains(&format!("bytes={MIB}")), "{end}");
    assert!(end.contains("why=\"complete\""), "{end}");
    assert!(end.contains("seconds="), "{end}");
}

#[tokio::test]
async fn upload_slots_change_while_uploads_run() {
    let logs = logs();
    let s = serve(MIB, 1).await;
    // Uploads last a few seconds, so they hold their slots while we look.
    s.server.upload_limit().set_rate(64 * 1024);
    let path = format!("/content/{}", s.id);
    let mut held = Vec::new();
    let start = async || {
        let (mut conn, local) = connect(s.addr).await;
        let response = conn.get(&path, None).await.unwrap();
        let status = response.status();
        (status, conn, response, local)
    };

    let first = start().await;
    assert_eq!(first.0, StatusCode::OK);
    held.push(first);
    assert_eq!(start().await.0, StatusCode::SERVICE_UNAVAILABLE);

    s.server.set_upload_slots(3);
    assert_eq!(s.server.upload_slots(), 3);
    for _ in 0..2 {
        let next = start().await;
        assert_eq!(next.0, StatusCode::OK);
        held.push(next);
    }
    assert_eq!(start().await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.server.uploads_in_progress(), 3);
    assert_eq!(s.server.uploads().len(), 3);

    // Lowered below those running: they go on, new ones wait for room.
    s.server.set_upload_slots(2);
    let (_, _, _, gone) = held.pop().unwrap();
    assert!(eventually(|| s.server.uploads_in_progress() == 2).await);
    let ended = logs.lines_with(&format!("peer={gone}"));
    assert!(
        ended.iter().any(|line| line.contains("upload ended")
            && line.contains("why=\"the downloader closed or stopped reading\"")),
        "{ended:?}"
    );
    assert_eq!(start().await.0, StatusCode::SERVICE_UNAVAILABLE);
    held.pop();
    assert!(eventually(|| s.server.uploads_in_progress() == 1).await);
    assert_eq!(start().await.0, StatusCode::OK);
    assert_eq!(
        s.server
            .stats()
            .busy_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn an_upload_slowed_by_our_own_limit_is_not_cut_as_too_slow() {
    // The server cuts bodies sent slower than 64 KiB/s over 300 ms; our
    // own limit allows only 32 KiB/s. The reader is not at fault.
    let s = serve_with(
        256 * 1024,
        ServerConfig {
            min_upload_rate: 64 * 1024,
            rate_window: Duration::from_millis(300),
            ..ServerConfig::default()
        },
    )
    .await;
    s.server.upload_limit().set_rate(32 * 1024);
    let (mut conn, _) = connect(s.addr).await;
    let response = conn
        .get(&format!("/content/{}", s.id), Some((0, 64 * 1024 - 1)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    // 48 KiB past the 16 KiB burst at 32 KiB/s: 1.5 s, five windows.
    let body = read_limited(response.into_body(), 1 << 20).await.unwrap();
    assert!(body[..] == s.data[..64 * 1024]);
    let cut = s
        .server
        .stats()
        .stalled_cut
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(cut, 0);
}

/// A source slower than a group per stall timeout is slow, not stalled:
/// bytes still arriving keep its requests alive. Before they did, a 1 MiB
/// group at 384 KiB/s shared by two requests (over 5 s each) against a 1 s
/// stall timeout dropped the only source ("every source failed: stalled").
#[tokio::test]
async fn a_slow_source_is_not_dropped_as_stalled() {
    let s = serve(2 * MIB, 4).await;
    s.server.upload_limit().set_rate(384 << 10);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("file.bin");
    let report = download(
        vec![DownloadSource {
            label: s.addr.to_string(),
            connector: Arc::new(DirectConnector::new(s.addr, Duration::from_secs(5))),
            partial: false,
            addr: Some(s.addr),
        }],
        DownloadOptions {
            content_id: s.id,
            size: 2 * MIB,
            target: target.clone(),
            force: false,
            config: DownloadConfig {
                stall_timeout: Duration::from_secs(1),
                groups_per_request: 1,
                ..DownloadConfig::default()
            },
            progress: None,
        },
    )
    .await
    .expect("a slow source completes the download");
    assert!(std::fs::read(&target).unwrap() == s.data);
    assert_eq!(
        report.dropped_sources().len(),
        0,
        "{:?}",
        report.dropped_sources()
    );
}
