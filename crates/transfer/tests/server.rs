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

use canopy_core::tree::VerifiedTree;
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::client::{HttpConn, read_limited};
use canopy_transfer::server::ContentServer;
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
        },
    )]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ContentServer::new(catalog, slots);
    tokio::spawn(server.serve(listener, CancellationToken::new(), TaskTracker::new()));
    Served {
        addr,
        id,
        data,
        _dir: dir,
    }
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
    assert_eq!(refused.headers()["retry-after"], "5");
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
