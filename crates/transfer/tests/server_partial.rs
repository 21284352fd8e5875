//! The server on 127.0.0.1 serving a download while it runs (a partial
//! entry: only its verified groups), and the download mesh's headers:
//! `X-Available-Ranges`, `X-Alt`, `X-Listen`, and a whole file's
//! `X-Offer` while a crowd downloads it (super-seeding). Requests come from
//! several loopback addresses (127.0.0.2, 127.0.0.3, ...) so that "not
//! back to the requester" can be told from "to another requester".

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use canopy_core::groups::GroupSet;
use canopy_core::mesh::parse_alternates;
use canopy_core::tree::{GROUP_LEN, VerifiedTree, tree_of};
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::catalog::{CatalogEntry, PartialEntry};
use canopy_transfer::mesh::{ALTERNATES_PER_RESPONSE, SharedMesh};
use canopy_transfer::partial::MAX_AVAILABLE_RANGES_LEN;
use canopy_transfer::server::{ContentServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const G: u64 = GROUP_LEN;
/// How long a wait on a condition may take, however loaded the machine
/// (a passing wait takes milliseconds).
const PATIENCE: Duration = Duration::from_secs(120);

/// A download of `data` half done: its partial file holds the bytes of the
/// groups in `have` and zeros elsewhere, as a real one would.
struct Download {
    addr: SocketAddr,
    id: ContentId,
    data: Vec<u8>,
    entry: PartialEntry,
    server: ContentServer,
    dir: tempfile::TempDir,
}

impl Download {
    fn path(&self) -> String {
        format!("/content/{}", self.id)
    }

    /// Writes group `group`'s bytes to the partial file, then marks it
    /// verified (in that order, as the download does).
    fn verify_group(&self, group: u64) {
        use std::os::unix::fs::FileExt;
        let start = (group * G) as usize;
        let end = (start + G as usize).min(self.data.len());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.entry.path)
            .unwrap();
        file.write_all_at(&self.data[start..end], start as u64)
            .unwrap();
        assert!(self.entry.add_group(group));
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A server listening on `listen` (`[::]`: both families, as nodes do).
async fn start_on(
    listen: SocketAddr,
    catalog: Catalog,
    config: ServerConfig,
) -> (SocketAddr, ContentServer) {
    let listener = canopy_transfer::listen::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ContentServer::with_config(catalog, config).with_mesh(SharedMesh::new());
    tokio::spawn(
        server
            .clone()
            .serve(listener, CancellationToken::new(), TaskTracker::new()),
    );
    (addr, server)
}

/// Serves a download of `len` bytes that has verified the groups in `have`.
async fn serve_partial(len: usize, have: &[u64], config: ServerConfig) -> Download {
    serve_partial_on(SocketAddr::from((HOME, 0)), len, have, config).await
}

/// [`serve_partial`], listening on `listen`.
async fn serve_partial_on(
    listen: SocketAddr,
    len: usize,
    have: &[u64],
    config: ServerConfig,
) -> Download {
    let dir = tempfile::tempdir().unwrap();
    let data = content(len);
    let id = ContentId(*blake3::hash(&data).as_bytes());
    let path = dir.path().join(format!(".canopy-{id}.partial"));
    std::fs::write(&path, vec![0u8; len]).unwrap();
    let entry = PartialEntry::new(path, len as u64, tree_of(&data).into());
    let catalog = Catalog::new();
    catalog.insert_partial(id, entry.clone());
    let (addr, server) = start_on(listen, catalog, config).await;
    let download = Download {
        addr,
        id,
        data,
        entry,
        server,
        dir,
    };
    for group in have {
        download.verify_group(*group);
    }
    download
}

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn alternates(&self) -> Vec<SocketAddr> {
        self.header("x-alt")
            .map(parse_alternates)
            .unwrap_or_default()
    }
}

/// Connects to `addr` from the loopback address `from`.
async fn connect_from(addr: SocketAddr, from: impl Into<IpAddr>) -> TcpStream {
    let from = from.into();
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4().unwrap(),
        IpAddr::V6(_) => TcpSocket::new_v6().unwrap(),
    };
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one request with `headers` from `from` and reads the answer to
/// the end (`Connection: close`).
async fn request_from(
    addr: SocketAddr,
    from: impl Into<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut stream = connect_from(addr, from).await;
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        let previous = headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        assert!(previous.is_none(), "{name} sent twice");
    }
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

async fn get(addr: SocketAddr, path: &str, range: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
    request_from(addr, HOME, "GET", path, &headers).await
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

#[tokio::test]
async fn a_range_inside_verified_groups_is_206_with_the_right_bytes() {
    let len = 4 * G as usize + 1000;
    let d = serve_partial(len, &[0, 2, 4], ServerConfig::default()).await;
    let ranges = format!(
        "bytes 0-{}, {}-{}, {}-{}",
        G - 1,
        2 * G,
        3 * G - 1,
        4 * G,
        len - 1
    );

    let whole_group = get(d.addr, &d.path(), Some(&format!("bytes=0-{}", G - 1))).await;
    assert_eq!(whole_group.status, 206);
    assert!(whole_group.body == d.data[..G as usize]);
    assert_eq!(
        whole_group.header("content-range").unwrap(),
        format!("bytes 0-{}/{len}", G - 1)
    );
    assert_eq!(whole_group.header("x-available-ranges").unwrap(), ranges);

    // A few bytes inside a group, and the short last group to the end.
    let inside = get(d.addr, &d.path(), Some("bytes=2097200-2097299")).await;
    assert_eq!(inside.status, 206);
    assert!(inside.body == d.data[2_097_200..2_097_300]);
    let tail = get(d.addr, &d.path(), Some(&format!("bytes={}-", 4 * G))).await;
    assert_eq!(tail.status, 206);
    assert!(tail.body == d.data[4 * G as usize..]);
    assert!(d.server.uploaded_bytes() >= G + 100 + 1000);
    assert!(wait_until(PATIENCE, || d.server.uploads().is_empty()).await);
}

#[tokio::test]
async fn outside_verified_groups_or_without_a_range_is_416_with_the_ranges() {
    let len = 3 * G as usize;
    let d = serve_partial(len, &[1], ServerConfig::default()).await;
    let ranges = format!("bytes {}-{}", G, 2 * G - 1);
    for range in [
        Some("bytes=0-9".to_owned()),
        // One byte over either edge of the group we have.
        Some(format!("bytes={}-{}", G - 1, G + 10)),
        Some(format!("bytes={}-{}", G, 2 * G)),
        Some(format!("bytes=-{}", G)),
        // Malformed, several ranges, past the end.
        Some("bytes=abc".to_owned()),
        Some(format!("bytes={}-{}, {}-{}", G, G + 1, G + 5, G + 6)),
        Some(format!("bytes={len}-")),
        None,
    ] {
        let answer = get(d.addr, &d.path(), range.as_deref()).await;
        assert_eq!(answer.status, 416, "{range:?}");
        assert_eq!(
            answer.header("content-range").unwrap(),
            format!("bytes */{len}"),
            "{range:?}"
        );
        assert_eq!(
            answer.header("x-available-ranges").unwrap(),
            ranges,
            "{range:?}"
        );
        assert!(!answer.body.windows(4).any(|w| w == &d.data[..4]));
    }
    assert_eq!(d.server.uploaded_bytes(), 0);
    // A HEAD for a range it lacks is refused the same way.
    let head = request_from(d.addr, HOME, "HEAD", &d.path(), &[("Range", "bytes=0-9")]).await;
    assert_eq!(head.status, 416);
    assert_eq!(head.header("x-available-ranges").unwrap(), ranges);
}

#[tokio::test]
async fn head_on_a_partial_takes_no_slot_and_says_the_ranges() {
    let config = ServerConfig {
        upload_slots: 1,
        ..ServerConfig::default()
    };
    // Far more than socket buffers hold: a reader that never reads keeps
    // the one slot.
    let groups: Vec<u64> = (0..63).collect();
    let d = serve_partial(64 << 20, &groups, config).await;
    let other: SocketAddr = "192.0.2.9:6346".parse().unwrap();
    d.server.mesh().add(d.id, other);
    let mut holder = TcpStream::connect(d.addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-{}\r\n\r\n",
        d.path(),
        63 * G - 1
    );
    holder.write_all(request.as_bytes()).await.unwrap();
    assert!(wait_until(PATIENCE, || d.server.uploads_in_progress() == 1).await);
    // In the registry like any upload, read from the partial file.
    let uploads = d.server.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].path, d.entry.path);
    assert_eq!(uploads[0].length, 63 * G);
    let ranges = format!("bytes 0-{}", 63 * G - 1);

    let head = request_from(d.addr, HOME, "HEAD", &d.path(), &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-available-ranges").unwrap(), ranges);
    assert_eq!(
        head.header("content-length").unwrap(),
        (64u64 << 20).to_string()
    );
    assert_eq!(head.alternates(), vec![other]);
    assert!(head.body.is_empty());
    // A GET waits for the slot: 503, still saying what it has and who else
    // has it.
    let busy = get(d.addr, &d.path(), Some("bytes=0-9")).await;
    assert_eq!(busy.status, 503);
    assert_eq!(busy.header("retry-after").unwrap(), "2");
    assert_eq!(busy.header("x-available-ranges").unwrap(), ranges);
    assert_eq!(busy.alternates(), vec![other]);
    assert_eq!(d.server.uploads_in_progress(), 1);
    drop(holder);
}

#[tokio::test]
async fn the_ranges_grow_as_the_download_verifies_groups() {
    let len = 4 * G as usize + 5;
    let d = serve_partial(len, &[1], ServerConfig::default()).await;
    let path = d.path();
    let head = || request_from(d.addr, HOME, "HEAD", &path, &[]);
    assert_eq!(
        head().await.header("x-available-ranges").unwrap(),
        format!("bytes {}-{}", G, 2 * G - 1)
    );
    assert_eq!(get(d.addr, &d.path(), Some("bytes=0-9")).await.status, 416);

    d.verify_group(3);
    d.verify_group(0);
    assert_eq!(
        head().await.header("x-available-ranges").unwrap(),
        format!("bytes 0-{}, {}-{}", 2 * G - 1, 3 * G, 4 * G - 1)
    );
    let now_there = get(d.addr, &d.path(), Some("bytes=0-9")).await;
    assert_eq!(now_there.status, 206);
    assert!(now_there.body == d.data[..10]);
    // Across two groups now both verified.
    let across = get(
        d.addr,
        &d.path(),
        Some(&format!("bytes={}-{}", G - 5, G + 4)),
    )
    .await;
    assert_eq!(across.status, 206);
    assert!(across.body == d.data[G as usize - 5..G as usize + 5]);

    // Every group in: served like a whole file, and the header is gone.
    d.verify_group(2);
    d.verify_group(4);
    let head = head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-available-ranges"), None);
    let whole = get(d.addr, &d.path(), None).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("x-available-ranges"), None);
    assert!(whole.body == d.data);
}

#[tokio::test]
async fn the_tree_comes_from_the_partial_entry() {
    let len = 5 * G as usize + 3;
    let d = serve_partial(len, &[2], ServerConfig::default()).await;
    let tree = get(d.addr, &format!("/tree/{}", d.id), None).await;
    assert_eq!(tree.status, 200);
    assert_eq!(tree.body.len(), 6 * 32);
    VerifiedTree::from_bytes(d.id, len as u64, &tree.body).unwrap();
    let head = request_from(d.addr, HOME, "HEAD", &format!("/tree/{}", d.id), &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").unwrap(), "192");
}

#[tokio::test]
async fn a_listening_downloader_is_handed_to_others_but_not_back_to_itself() {
    let d = serve_partial(2 * G as usize, &[0], ServerConfig::default()).await;
    let first = Ipv4Addr::new(127, 0, 0, 2);
    let second = Ipv4Addr::new(127, 0, 0, 3);
    let range = ("Range", "bytes=0-9");

    let answer = request_from(
        d.addr,
        first,
        "GET",
        &d.path(),
        &[range, ("X-Listen", "7001")],
    )
    .await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.header("x-alt"), None, "nobody else is known yet");
    let first_source = SocketAddr::from((first, 7001));
    assert_eq!(d.server.mesh().pick(&d.id, None, 8), vec![first_source]);

    // Another downloader learns of the first, on any status.
    let answer = request_from(
        d.addr,
        second,
        "GET",
        &d.path(),
        &[range, ("X-Listen", "7002")],
    )
    .await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.alternates(), vec![first_source]);
    let refused = request_from(d.addr, second, "GET", &d.path(), &[]).await;
    assert_eq!(refused.status, 416);
    assert_eq!(refused.alternates(), vec![first_source]);
    let head = request_from(d.addr, second, "HEAD", &d.path(), &[]).await;
    assert_eq!(head.alternates(), vec![first_source]);

    // The first is told of the second, never of itself.
    let answer = request_from(d.addr, first, "HEAD", &d.path(), &[]).await;
    assert_eq!(answer.alternates(), vec![SocketAddr::from((second, 7002))]);
    // A third, without X-Listen, gets both and is not recorded.
    let third = Ipv4Addr::new(127, 0, 0, 4);
    let answer = request_from(d.addr, third, "HEAD", &d.path(), &[]).await;
    let mut alternates = answer.alternates();
    alternates.sort();
    assert_eq!(
        alternates,
        vec![first_source, SocketAddr::from((second, 7002))]
    );
    assert_eq!(d.server.mesh().len(), 2);

    // Another leaf on the first one's host (as every leaf of a test on
    // 127.0.0.1 is): the first is another source, told of when the
    // requester says where it listens itself; without that, nothing at
    // its IP is.
    let answer = request_from(d.addr, first, "HEAD", &d.path(), &[("X-Listen", "7003")]).await;
    let mut alternates = answer.alternates();
    alternates.sort();
    assert_eq!(
        alternates,
        vec![first_source, SocketAddr::from((second, 7002))]
    );
    let answer = request_from(d.addr, first, "HEAD", &d.path(), &[]).await;
    assert_eq!(answer.alternates(), vec![SocketAddr::from((second, 7002))]);
}

#[tokio::test]
async fn x_listen_is_ignored_for_unknown_ids_and_bad_ports() {
    let d = serve_partial(2 * G as usize, &[0], ServerConfig::default()).await;
    let from = Ipv4Addr::new(127, 0, 0, 2);
    let unknown = format!("/content/{}", "ab".repeat(32));
    let answer = request_from(d.addr, from, "GET", &unknown, &[("X-Listen", "7001")]).await;
    assert_eq!(answer.status, 404);
    let answer = request_from(d.addr, from, "HEAD", &unknown, &[("X-Listen", "7001")]).await;
    assert_eq!(answer.status, 404);
    for bad in [
        "0", "65536", "99999", "123456", "+80", "-80", "80a", "0x50", "80, 81", "8 0",
    ] {
        let answer = request_from(d.addr, from, "HEAD", &d.path(), &[("X-Listen", bad)]).await;
        assert_eq!(answer.status, 200, "{bad}");
    }
    // Two of them: which one? Neither.
    let answer = request_from(
        d.addr,
        from,
        "HEAD",
        &d.path(),
        &[("X-Listen", "7001"), ("X-Listen", "7002")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(d.server.mesh().len(), 0);
    // The same request with one good port is recorded: the test can fail.
    request_from(d.addr, from, "HEAD", &d.path(), &[("X-Listen", "65535")]).await;
    assert_eq!(
        d.server.mesh().pick(&d.id, None, 8),
        vec![SocketAddr::from((from, 65535))]
    );
}

#[tokio::test]
async fn x_alt_lists_at_most_eight_alternates() {
    let d = serve_partial(G as usize, &[0], ServerConfig::default()).await;
    let known: Vec<SocketAddr> = (1..=12)
        .map(|n| SocketAddr::from(([192, 0, n, 1], 6346)))
        .collect();
    for addr in &known {
        d.server.mesh().add(d.id, *addr);
    }
    for answer in [
        get(d.addr, &d.path(), Some("bytes=0-9")).await,
        get(d.addr, &d.path(), None).await,
        request_from(d.addr, HOME, "HEAD", &d.path(), &[]).await,
    ] {
        let alternates = answer.alternates();
        assert_eq!(alternates.len(), ALTERNATES_PER_RESPONSE, "{answer:?}");
        assert!(alternates.iter().all(|addr| known.contains(addr)));
        let mut distinct = alternates.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), alternates.len());
    }
    // Not on the tree.
    let tree = get(d.addr, &format!("/tree/{}", d.id), None).await;
    assert_eq!(tree.header("x-alt"), None);
}

#[tokio::test]
async fn a_complete_entry_wins_over_a_partial_one_of_the_same_id() {
    let d = serve_partial(3 * G as usize, &[], ServerConfig::default()).await;
    // The finished file, inserted before the partial entry goes.
    let finished = d.dir.path().join("file.bin");
    std::fs::write(&finished, &d.data).unwrap();
    d.server.catalog().insert(
        d.id,
        CatalogEntry {
            path: finished,
            size: d.data.len() as u64,
            tree: tree_of(&d.data).into(),
        },
    );
    // A partial tree that would not verify, to tell which one is served.
    d.server.catalog().insert_partial(
        d.id,
        PartialEntry::new(
            d.entry.path.clone(),
            d.entry.size,
            bytes::Bytes::from_static(b"bogus"),
        ),
    );
    let other: SocketAddr = "192.0.2.9:6346".parse().unwrap();
    d.server.mesh().add(d.id, other);
    let whole = get(d.addr, &d.path(), None).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("x-available-ranges"), None);
    assert_eq!(whole.alternates(), vec![other]);
    assert!(whole.body == d.data);
    let tree = get(d.addr, &format!("/tree/{}", d.id), None).await;
    VerifiedTree::from_bytes(d.id, d.data.len() as u64, &tree.body).unwrap();
    // The complete entry gone, the partial one answers again.
    d.server.catalog().remove(&d.id);
    assert_eq!(get(d.addr, &d.path(), None).await.status, 416);
}

/// Serves a whole file of `len` bytes (a seed).
async fn serve_whole(len: usize, config: ServerConfig) -> Download {
    let d = serve_partial(len, &[], config).await;
    let path = d.dir.path().join("file.bin");
    std::fs::write(&path, &d.data).unwrap();
    d.server.catalog().remove_partial(&d.id);
    d.server.catalog().insert(
        d.id,
        CatalogEntry {
            path,
            size: d.data.len() as u64,
            tree: tree_of(&d.data).into(),
        },
    );
    d
}

/// Asks for group `group` from `from`, saying it listens on `listen` and
/// needs `need` (ranges, as `X-Need`) if given.
async fn get_group(
    d: &Download,
    from: Ipv4Addr,
    sharing: Option<(&str, &str)>,
    group: u64,
) -> Answer {
    let range = format!("bytes={}-{}", group * G, (group + 1) * G - 1);
    let mut headers = vec![("Range", range.as_str())];
    if let Some((listen, need)) = sharing {
        headers.extend([("X-Listen", listen), ("X-Need", need)]);
    }
    request_from(d.addr, from, "GET", &d.path(), &headers).await
}

fn offer_of(answer: &Answer, len: u64) -> Vec<u64> {
    let value = answer.header("x-offer").expect("an X-Offer");
    GroupSet::from_header(value, len)
        .expect("X-Offer parses")
        .iter()
        .collect()
}

/// `X-Need` for the groups `groups` of a file of `len` bytes.
fn need(len: u64, groups: &[u64]) -> String {
    let mut set = GroupSet::empty(len);
    for &g in groups {
        set.insert(g);
    }
    set.to_header(4096)
}

#[tokio::test]
async fn a_seed_sends_every_group_once_before_any_twice_to_a_crowd() {
    let len = 4 * G;
    let d = serve_whole(len as usize, ServerConfig::default()).await;
    let (b, c) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let all = need(len, &[0, 1, 2, 3]);
    // One sharing downloader alone: anything, and no offer.
    let first = get_group(&d, b, Some(("7001", &need(len, &[1, 2, 3]))), 0).await;
    assert_eq!(first.status, 206);
    assert_eq!(first.header("x-offer"), None);
    // A second: a crowd. Group 0 left once, the others never: refused,
    // with the others on offer.
    let refused = get_group(&d, c, Some(("7002", &all)), 0).await;
    assert_eq!(refused.status, 416);
    assert_eq!(
        refused.header("content-range"),
        Some(&*format!("bytes */{len}"))
    );
    assert_eq!(
        refused.header("x-available-ranges"),
        None,
        "it has them all"
    );
    assert_eq!(offer_of(&refused, len), vec![1, 2, 3]);
    // What it offers is served, and the offer after it leaves out what
    // it no longer needs.
    let served = get_group(&d, c, Some(("7002", &need(len, &[0, 1, 3]))), 2).await;
    assert_eq!(served.status, 206);
    assert!(served.body == d.data[2 * G as usize..3 * G as usize]);
    assert_eq!(offer_of(&served, len), vec![1, 3]);
    // HEAD takes no slot and tells the offer, among what it needs.
    let head = request_from(
        d.addr,
        b,
        "HEAD",
        &d.path(),
        &[("X-Listen", "7001"), ("X-Need", &need(len, &[1, 2, 3]))],
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(offer_of(&head, len), vec![1, 3]);
    // A client that doesn't say what it needs (`curl`, a browser) is never
    // rationed.
    let plain = get_group(&d, b, None, 0).await;
    assert_eq!(plain.status, 206);
    assert_eq!(plain.header("x-offer"), None);
    let listen_only = request_from(
        d.addr,
        b,
        "GET",
        &d.path(),
        &[("Range", "bytes=0-9"), ("X-Listen", "7001")],
    )
    .await;
    assert_eq!(listen_only.status, 206);
    for group in [1, 3] {
        let answer = get_group(&d, b, Some(("7001", &need(len, &[1, 2, 3]))), group).await;
        assert_eq!(answer.status, 206);
    }
    // Every group left once: all it needs is on offer again.
    let again = get_group(&d, c, Some(("7002", &need(len, &[1, 3]))), 0).await;
    assert_eq!(again.status, 206);
    assert_eq!(offer_of(&again, len), vec![1, 3]);
    assert_eq!(
        d.server
            .stats()
            .offer_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_downloader_needing_only_groups_that_left_often_gets_them() {
    // Group 0 leaves twice (its first copy went to a downloader since
    // gone), group 1 once. One that needs both is refused 0; one that got
    // 1 from a peer and needs only 0 is served it, though 1 left fewer
    // times.
    let len = 2 * G;
    let d = serve_whole(len as usize, ServerConfig::default()).await;
    let hosts = [2, 3, 4].map(|n| Ipv4Addr::new(127, 0, 0, n));
    let all = need(len, &[0, 1]);
    for (host, listen, group) in [
        (hosts[0], "7001", 0),
        (hosts[1], "7002", 1),
        (hosts[0], "7001", 0),
    ] {
        let answer = get_group(&d, host, Some((listen, &all)), group).await;
        assert_eq!(answer.status, 206, "group {group}");
    }
    let both = get_group(&d, hosts[1], Some(("7002", &all)), 0).await;
    assert_eq!(both.status, 416);
    assert_eq!(offer_of(&both, len), vec![1]);
    let third = get_group(&d, hosts[2], Some(("7003", &need(len, &[0]))), 0).await;
    assert_eq!(third.status, 206);
    assert!(third.body == d.data[..G as usize]);
}

#[tokio::test]
async fn with_super_seeding_off_a_crowd_gets_any_range() {
    let config = ServerConfig {
        super_seed: false,
        ..ServerConfig::default()
    };
    let len = 2 * G;
    let d = serve_whole(len as usize, config).await;
    for from in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)] {
        let answer = get_group(&d, from, Some(("7001", &need(len, &[0, 1]))), 0).await;
        assert_eq!(answer.status, 206);
        assert_eq!(answer.header("x-offer"), None);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_partial_file_swapped_for_a_link_or_cut_short_is_not_served() {
    let d = serve_partial(2 * G as usize, &[0, 1], ServerConfig::default()).await;
    assert_eq!(get(d.addr, &d.path(), Some("bytes=0-9")).await.status, 206);
    let private: PathBuf = d.dir.path().join("private.bin");
    std::fs::write(&private, &d.data).unwrap();
    std::fs::remove_file(&d.entry.path).unwrap();
    std::os::unix::fs::symlink(&private, &d.entry.path).unwrap();
    assert_eq!(get(d.addr, &d.path(), Some("bytes=0-9")).await.status, 404);
    std::fs::remove_file(&d.entry.path).unwrap();
    std::fs::write(&d.entry.path, &d.data[..G as usize]).unwrap();
    assert_eq!(get(d.addr, &d.path(), Some("bytes=0-9")).await.status, 404);
}

#[test]
fn the_available_ranges_value_is_capped() {
    // Every other group of a large file: far more runs than 4 KiB holds.
    let entry = PartialEntry::new(PathBuf::from("p"), 4096 * G, bytes::Bytes::new());
    for group in (0..4096).step_by(2) {
        entry.add_group(group);
    }
    let value = entry.available_ranges();
    assert!(value.len() <= MAX_AVAILABLE_RANGES_LEN, "{}", value.len());
    assert!(value.starts_with(&format!("bytes 0-{}, {}-", G - 1, 2 * G)));
}

#[tokio::test]
async fn a_dual_stack_server_hands_out_ipv6_alternates_and_ipv4_ones_canonical() {
    let d = serve_partial_on(
        canopy_transfer::listen::any_dual_stack(0),
        2 * G as usize,
        &[0],
        ServerConfig::default(),
    )
    .await;
    let port = d.addr.port();
    let (v4, v6) = (Ipv4Addr::new(127, 0, 0, 2), std::net::Ipv6Addr::LOCALHOST);
    let range = ("Range", "bytes=0-9");
    // Over IPv4 to the IPv6 socket: the peer is seen as ::ffff:127.0.0.2.
    let to_v4 = SocketAddr::from((HOME, port));
    let to_v6 = SocketAddr::from((v6, port));
    let answer = request_from(to_v4, v4, "GET", &d.path(), &[range, ("X-Listen", "7001")]).await;
    assert_eq!(answer.status, 206);
    let answer = request_from(to_v6, v6, "GET", &d.path(), &[range, ("X-Listen", "7002")]).await;
    assert_eq!(answer.status, 206);
    assert_eq!(
        answer.header("x-alt"),
        Some("127.0.0.2:7001"),
        "the IPv4 downloader in IPv4 form, never ::ffff:"
    );
    let answer = request_from(to_v4, v4, "HEAD", &d.path(), &[]).await;
    assert_eq!(answer.header("x-alt"), Some("[::1]:7002"));
    assert_eq!(answer.alternates(), vec![SocketAddr::from((v6, 7002))]);
}
