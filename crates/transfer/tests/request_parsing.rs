//! The upload server's parsers of what a downloader sends (request path,
//! Range header), as the fuzz targets (`fuzz/`, `http_request`) call them,
//! and the empty-file range the fuzzer found: `bytes=0-` on an empty file
//! was answered 206 with a one-byte Content-Length and no byte to send.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::server::{ContentServer, Resource, parse_path, single_range};
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[test]
fn paths_name_content_or_trees_by_id_only() {
    let id = ContentId([0xab; 32]);
    let hex = id.to_hex();
    assert_eq!(
        parse_path(&format!("/content/{hex}")),
        Some((Resource::Content, id))
    );
    assert_eq!(
        parse_path(&format!("/tree/{}", hex.to_uppercase())),
        Some((Resource::Tree, id))
    );
    for path in [
        format!("/content/{hex}/"),
        format!("/content/ {}", &hex[1..]),
        format!("//content/{hex}"),
        format!("/content/{}", &hex[..63]),
        "/content/../etc/passwd".to_owned(),
        "/".to_owned(),
    ] {
        assert_eq!(parse_path(&path), None, "{path}");
    }
}

#[test]
fn a_range_is_served_only_inside_the_file() {
    let range = |text: &str, size: u64| single_range(&HeaderValue::from_str(text).unwrap(), size);
    assert_eq!(range("bytes=0-99", 200), Some(0..=99));
    assert_eq!(range("bytes=150-999", 200), Some(150..=199));
    assert_eq!(range("bytes=-50", 200), Some(150..=199));
    assert_eq!(range("bytes=200-", 200), None);
    assert_eq!(range("bytes=0-1,5-6", 200), None);
    // An empty file has no byte to serve, whatever the range.
    for text in ["bytes=0-", "bytes=0-0", "bytes=0-8", "bytes=-1"] {
        assert_eq!(range(text, 0), None, "{text}");
    }
}

#[tokio::test]
async fn a_range_of_an_empty_file_is_416_not_a_206_with_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    std::fs::write(&path, b"").unwrap();
    let id = ContentId(*blake3::hash(b"").as_bytes());
    let catalog = Catalog::new();
    catalog.replace([(
        id,
        CatalogEntry {
            path,
            size: 0,
            tree: bytes::Bytes::new(),
        },
    )]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ContentServer::new(catalog, 4);
    tokio::spawn(server.serve(listener, CancellationToken::new(), TaskTracker::new()));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /content/{id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_lowercase();
    assert!(text.starts_with("http/1.1 416"), "{text}");
    assert!(text.contains("content-range: bytes */0"), "{text}");
}
