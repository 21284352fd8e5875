//! The leaf's HTTP server on 127.0.0.1: whole files, ranges, HEAD, trees,
//! upload slots, and requests that try to escape the catalog. Also `curl`,
//! which must work against a leaf with no help from Canopy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_core::addr_limits::AddressLimit;
use canopy_core::tree::VerifiedTree;
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::client::{HttpConn, read_limited};
use canopy_transfer::server::{ContentServer, ServerConfig};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Served {
    addr: SocketAddr,
    id: ContentId,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn serve(len: usize, slots: usize) -> Served {
    serve_with(
        len,
        ServerConfig {
            upload_slots: slots,
            ..ServerConfig::default()
        },
    )
    .await
    .0
}

async fn serve_with(len: usize, config: ServerConfig) -> (Served, ContentServer) {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.path().join("file.bin");
    std::fs::write(&path, &data).unwrap();
    // A file beside it that is not in the catalog.
    std::fs::write(dir.path().join("secret.txt"), b"not shared").unwrap();
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ContentServer::with_config(catalog, config);
    tokio::spawn(
        server
            .clone()
            .serve(listener, CancellationToken::new(), TaskTracker::new()),
    );
    let served = Served {
        addr,
        id,
        data,
        _dir: dir,
    };
    (served, server)
}

async fn connect(addr: SocketAddr) -> HttpConn {
    HttpConn::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap()
}

/// Sends `request_line` as-is and returns the status code.
async fn raw_status(addr: SocketAddr, request_line: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn whole_file_ranges_and_head() {
    let s = serve(100_000, 4).await;
    let mut conn = connect(s.addr).await;
    let path = format!("/content/{}", s.id);

    let response = conn.get(&path, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["accept-ranges"], "bytes");
    let body = read_limited(response.into_body(), 1 << 20).await.unwrap();
    assert!(body[..] == s.data[..]);

    let response = conn.get(&path, Some((1000, 1999))).await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 1000-1999/100000"
    );
    let body = read_limited(response.into_body(), 1 << 20).await.unwrap();
    assert!(body[..] == s.data[1000..2000]);

    // Past the end: 416 with the size.
    let response = conn.get(&path, Some((100_000, 100_010))).await.unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()["content-range"], "bytes */100000");
    read_limited(response.into_body(), 1024).await.unwrap();

    let head = raw_status(s.addr, &format!("HEAD {path} HTTP/1.1")).await;
    assert_eq!(head, 200);
    assert_eq!(
        raw_status(s.addr, &format!("POST {path} HTTP/1.1")).await,
        405
    );
}

#[tokio::test]
async fn malformed_and_multiple_ranges_are_416() {
    let s = serve(5000, 4).await;
    for range in [
        "bytes=abc",
        "bytes=10-5",
        "items=0-1",
        "bytes=0-1,5-6",
        "bytes=9999-",
    ] {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let request = format!(
            "GET /content/{} HTTP/1.1\r\nHost: x\r\nRange: {range}\r\nConnection: close\r\n\r\n",
            s.id
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 416"), "{range}: {text}");
    }
}

#[tokio::test]
async fn unknown_ids_and_path_like_requests_are_404() {
    let s = serve(5000, 4).await;
    let unknown = "ab".repeat(32);
    for target in [
        format!("/content/{unknown}"),
        "/content/../secret.txt".to_owned(),
        "/content/..%2Fsecret.txt".to_owned(),
        "/content/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        format!("/content/{}/../secret.txt", s.id),
        format!("/content/{}%2F..%2Fsecret.txt", s.id),
        "/etc/passwd".to_owned(),
        "//etc/passwd".to_owned(),
        format!("/content//{}", s.id),
        "/tree/../../etc/passwd".to_owned(),
        "/".to_owned(),
    ] {
        let status = raw_status(s.addr, &format!("GET {target} HTTP/1.1")).await;
        assert_eq!(status, 404, "{target}");
    }
}

#[tokio::test]
async fn the_tree_verifies_against_the_id() {
    let s = serve(5 * (1 << 20) + 3, 4).await;
    let mut conn = connect(s.addr).await;
    let response = conn.get(&format!("/tree/{}", s.id), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tree = read_limited(response.into_body(), 1 << 20).await.unwrap();
    assert_eq!(tree.len(), 6 * 32);
    VerifiedTree::from_bytes(s.id, s.data.len() as u64, &tree).unwrap();
}

#[tokio::test]
async fn past_the_upload_slots_a_clear_503_with_retry_after() {
    // Big enough that the first body can't sit in socket buffers.
    let s = serve(64 << 20, 1).await;
    let path = format!("/content/{}", s.id);
    let mut first = connect(s.addr).await;
    let held = first.get(&path, None).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let mut second = connect(s.addr).await;
    let refused = second.get(&path, None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "2");
    // HEAD needs no slot.
    assert_eq!(
        raw_status(s.addr, &format!("HEAD {path} HTTP/1.1")).await,
        200
    );
    drop(held);
}

#[tokio::test]
async fn curl_downloads_a_range_with_no_help() {
    let s = serve(300_000, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("part");
    let url = format!("http://{}/content/{}", s.addr, s.id);
    let addr = s.addr;
    let status = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--silent", "--fail", "--range", "1000-200999", "--output"])
            .arg(&out)
            .arg(&url)
            .status()
            .expect("curl is needed for this test (.ci/run installs it)")
    })
    .await
    .unwrap();
    assert!(status.success());
    let part = std::fs::read(dir.path().join("part")).unwrap();
    assert!(part[..] == s.data[1000..201_000]);
    // And a whole file, as a browser or script would fetch it.
    let whole = dir.path().join("whole");
    let url = format!("http://{addr}/content/{}", s.id);
    let whole_path = whole.clone();
    let status = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--silent", "--fail", "--output"])
            .arg(&whole_path)
            .arg(&url)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    assert!(std::fs::read(whole).unwrap() == s.data);
}

/// Waits (up to `limit`) for `condition`, polling.
async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Sends a GET for the whole file and never reads the answer.
async fn never_reading_get(addr: SocketAddr, id: ContentId) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /content/{id} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// True if the server closes `stream` within `limit` (it reads EOF or a
/// reset), having sent nothing.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn the_tree_comes_from_the_catalog_and_reads_no_file_bytes() {
    let (s, _server) = serve_with(5 * (1 << 20) + 3, ServerConfig::default()).await;
    // The file is gone: nothing can be read from it any more.
    std::fs::remove_file(s._dir.path().join("file.bin")).unwrap();
    let mut tasks = Vec::new();
    for n in 0..32 {
        let (addr, id) = (s.addr, s.id);
        tasks.push(tokio::spawn(async move {
            if n % 2 == 0 {
                raw_status(addr, &format!("HEAD /tree/{id} HTTP/1.1")).await;
                raw_status(addr, &format!("HEAD /tree/{id} HTTP/1.1")).await
            } else {
                let mut conn = connect(addr).await;
                let response = conn.get(&format!("/tree/{id}"), None).await.unwrap();
                let status = response.status().as_u16();
                let tree = read_limited(response.into_body(), 1 << 20).await.unwrap();
                VerifiedTree::from_bytes(id, 5 * (1 << 20) + 3, &tree).unwrap();
                status
            }
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    // The content itself is not there to serve: the trees were not read
    // from the file.
    let status = raw_status(s.addr, &format!("GET /content/{} HTTP/1.1", s.id)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn readers_that_never_read_are_cut_and_free_every_slot() {
    let config = ServerConfig {
        upload_slots: 4,
        write_timeout: Duration::from_secs(1),
        rate_window: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    // Far more than socket buffers hold, so the server's writes block.
    let (s, server) = serve_with(64 << 20, config).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(never_reading_get(s.addr, s.id).await);
    }
    assert!(
        wait_until(Duration::from_secs(10), || server.uploads_in_progress()
            == 4)
        .await
    );
    let path = format!("/content/{}", s.id);
    let refused = raw_status(s.addr, &format!("GET {path} HTTP/1.1")).await;
    assert_eq!(
        refused, 503,
        "every slot is held by a reader that never reads"
    );
    let held_at = Instant::now();
    // The watchdog cuts all four: the 503s end within the timeout (plus
    // the time to fill the socket buffers), not never.
    assert!(
        wait_until(Duration::from_secs(30), || server.uploads_in_progress()
            == 0)
        .await,
        "slots still held: {}",
        server.uploads_in_progress()
    );
    let freed_after = held_at.elapsed();
    assert_eq!(server.stats().stalled_cut.load(Ordering::Relaxed), 4);
    let mut conn = connect(s.addr).await;
    let response = conn.get(&path, Some((0, 999))).await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let body = read_limited(response.into_body(), 1 << 20).await.unwrap();
    assert!(body[..] == s.data[..1000]);
    eprintln!("4 never-reading GETs held every slot for {freed_after:?}");
    drop(stalled);
}

#[tokio::test]
async fn silent_and_half_sent_request_heads_are_closed() {
    let config = ServerConfig {
        header_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let (s, server) = serve_with(5000, config).await;
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut half = TcpStream::connect(s.addr).await.unwrap();
    half.write_all(b"GET /content/").await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    assert!(closed_within(&mut half, Duration::from_secs(5)).await);
    // Keep-alive: an idle connection after a request is closed too.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    let request = format!("HEAD /content/{} HTTP/1.1\r\nHost: x\r\n\r\n", s.id);
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    assert!(
        wait_until(Duration::from_secs(5), || {
            server.stats().open_connections.load(Ordering::Relaxed) == 0
        })
        .await
    );
}

#[tokio::test]
async fn one_address_gets_its_share_of_connections_and_of_slots() {
    let config = ServerConfig {
        upload_slots: 4,
        connections_per_address: AddressLimit::new(3, 3),
        uploads_per_address: AddressLimit::new(1, 1),
        exempt: Vec::new(), // 127.0.0.1 is limited like anyone
        ..ServerConfig::default()
    };
    let (s, server) = serve_with(64 << 20, config).await;
    let loopback = "127.0.0.1".parse().unwrap();
    // One upload held, never read.
    let _holder = never_reading_get(s.addr, s.id).await;
    assert!(
        wait_until(Duration::from_secs(10), || server.uploads_in_progress()
            == 1)
        .await
    );
    // The same address asks again: 503 with Retry-After, though 3 slots are free.
    let mut conn = connect(s.addr).await;
    let refused = conn
        .get(&format!("/content/{}", s.id), Some((0, 9)))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "2");
    read_limited(refused.into_body(), 1024).await.unwrap();
    assert_eq!(server.uploads_held_by(loopback), 1);
    assert_eq!(
        server
            .stats()
            .address_upload_refusals
            .load(Ordering::Relaxed),
        1
    );
    // Two connections open (the holder and `conn`); a third is allowed,
    // a fourth is closed at once.
    let _third = TcpStream::connect(s.addr).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || server
            .connections_held_by(loopback)
            == 3)
        .await
    );
    let mut fourth = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await);
    assert_eq!(
        server
            .stats()
            .address_connection_refusals
            .load(Ordering::Relaxed),
        1
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_link_in_place_of_a_shared_file_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("private.txt");
    std::fs::write(&target, b"not shared").unwrap();
    let link = dir.path().join("shared.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let id = ContentId(*blake3::hash(b"not shared").as_bytes());
    let catalog = Catalog::new();
    catalog.replace([(
        id,
        CatalogEntry {
            path: link,
            size: 10,
            tree: bytes::Bytes::new(),
        },
    )]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ContentServer::new(catalog, 4);
    tokio::spawn(server.serve(listener, CancellationToken::new(), TaskTracker::new()));
    assert_eq!(
        raw_status(addr, &format!("GET /content/{id} HTTP/1.1")).await,
        404
    );
}

/// Sends a GET of the first byte of `id` saying `X-Listen: 7000` over
/// `stream` and reads the whole answer.
async fn get_saying_where_we_listen(mut stream: tokio::io::DuplexStream, id: ContentId) {
    let request = format!(
        "GET /content/{id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\
         X-Listen: 7000\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 206"), "{response:?}");
}

#[tokio::test]
async fn a_relayed_request_says_nothing_to_the_mesh() {
    let (served, server) = serve_with(1000, ServerConfig::default()).await;
    let relay: SocketAddr = "198.51.100.1:6346".parse().unwrap();
    // Through the relay: the IP is the relay's, so its X-Listen names
    // nobody.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn({
        let server = server.clone();
        async move { server.serve_relayed(theirs, relay).await }
    });
    get_saying_where_we_listen(ours, served.id).await;
    assert!(
        server.mesh().is_empty(),
        "a relayed X-Listen went into the mesh"
    );
    // The same request from the downloader itself is taken.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let downloader: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve_connection_from(theirs, Some(downloader)).await }
    });
    get_saying_where_we_listen(ours, served.id).await;
    assert_eq!(
        server.mesh().pick(&served.id, None, 8),
        vec!["198.51.100.9:7000".parse::<SocketAddr>().unwrap()]
    );
}
