//! Downloaders as sources, against real servers on loopback addresses:
//! a download served while it runs (partial sources, verified like any
//! other), alternates learned from `X-Alt` and used, lying partial
//! sources dropped with the alternates they told of, a finished download
//! served complete without a gap (and a cancelled one not at all), a
//! partial source that serves nothing yet asked again rather than
//! dropped, a downloader killed mid-swarm, a small flash crowd whose
//! downloaders get bytes from each other, and a source list full of
//! alternates that still takes a source a search finds later.
//!
//! Each node has its own loopback address (127.0.0.x) and dials from it,
//! as hosts on a network would: a server never tells a downloader of
//! sources at the downloader's own address, and records a downloader's
//! `X-Listen` port at the address it connected from.
//!
//! Everything waits on conditions, never on fixed sleeps; assertions are on
//! counts (bytes from a source, drops and their reasons), not on timing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_core::tree::tree_of;
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::bandwidth::RateLimit;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::client::{ConnectFuture, Connected, Connector, HttpConn, Sharing};
use canopy_transfer::download::{
    DownloadControl, DownloadError, DownloadOptions, DownloadReport, DownloadSource, MAX_SOURCES,
    Swarm, download_live, partial_name, state_name,
};
use canopy_transfer::mesh::SharedMesh;
use canopy_transfer::path::TransferPath;
use canopy_transfer::server::ContentServer;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;
/// Long enough for a loaded 2-core machine; a passing run takes seconds.
const PATIENCE: Duration = Duration::from_secs(120);

/// `127.0.0.<n>`: one address per node.
fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn file_data(len: usize) -> (ContentId, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
    (ContentId(*blake3::hash(&data).as_bytes()), data)
}

/// Dials `addr` from `local`'s address, as a node at `local` would.
#[derive(Debug)]
struct BoundConnector {
    local: IpAddr,
    addr: SocketAddr,
}

impl Connector for BoundConnector {
    fn connect(&self) -> ConnectFuture {
        let (local, addr) = (self.local, self.addr);
        Box::pin(async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(local, 0))?;
            let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
            let _ = stream.set_nodelay(true);
            Ok(Connected::new(stream, TransferPath::Direct))
        })
    }
}

/// A source at `addr` as seen from the node at `local`.
fn source(local: IpAddr, addr: SocketAddr, partial: bool) -> DownloadSource {
    DownloadSource {
        label: addr.to_string(),
        connector: Arc::new(BoundConnector { local, addr }),
        partial,
        addr: Some(addr),
    }
}

/// A node: its HTTP server on its own address, its catalog and mesh.
struct Node {
    ip: IpAddr,
    addr: SocketAddr,
    server: ContentServer,
    dir: tempfile::TempDir,
    /// Stops the server and drops every connection it holds.
    shutdown: CancellationToken,
}

impl Node {
    /// Starts a node at `127.0.0.<n>`, uploading at most `upload_limit`
    /// bytes a second if given.
    async fn start(n: u8, upload_limit: Option<u64>) -> Self {
        let ip = host(n);
        let mut server = ContentServer::new(Catalog::new(), 4);
        if let Some(limit) = upload_limit {
            server = server.with_upload_limit(RateLimit::new(limit));
        }
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(
            server
                .clone()
                .serve(listener, shutdown.clone(), TaskTracker::new()),
        );
        Self {
            ip,
            addr,
            server,
            dir: tempfile::tempdir().unwrap(),
            shutdown,
        }
    }

    fn catalog(&self) -> &Catalog {
        self.server.catalog()
    }

    fn mesh(&self) -> &SharedMesh {
        self.server.mesh()
    }

    /// Shares `data` as a complete file.
    fn share(&self, id: ContentId, data: &[u8]) {
        let path = self.dir.path().join("shared.bin");
        std::fs::write(&path, data).unwrap();
        self.catalog().insert(
            id,
            CatalogEntry {
                path,
                size: data.len() as u64,
                tree: tree_of(data).into(),
            },
        );
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("download.bin")
    }

    /// Serving and meshing as this node: its catalog and mesh, its port
    /// said in `X-Listen`, alternates dialed from its address.
    fn swarm(&self, serve_when_done: bool) -> Swarm {
        let local = self.ip;
        Swarm {
            catalog: self.catalog().clone(),
            mesh: self.mesh().clone(),
            listen_port: Some(self.addr.port()),
            connect: Arc::new(move |addr| Arc::new(BoundConnector { local, addr })),
            serve_when_done,
        }
    }

    /// Groups of `id` this node serves from its partial file now.
    fn partial_groups(&self, id: &ContentId) -> u64 {
        self.catalog()
            .get_partial(id)
            .map_or(0, |entry| entry.have.read().unwrap().count())
    }

    /// Starts downloading `id` (`size` bytes) from `sources`, serving it
    /// while it runs. The feed stays open until the returned sender goes.
    fn download(
        &self,
        id: ContentId,
        size: usize,
        sources: Vec<DownloadSource>,
        control: DownloadControl,
    ) -> (
        mpsc::Sender<DownloadSource>,
        JoinHandle<Result<DownloadReport, DownloadError>>,
    ) {
        let (feed, receiver) = mpsc::channel(64);
        for source in sources {
            feed.try_send(source).unwrap();
        }
        let options = options(id, size, &self.target());
        (
            feed,
            tokio::spawn(download_live(receiver, options, control)),
        )
    }
}

fn options(id: ContentId, size: usize, target: &Path) -> DownloadOptions {
    DownloadOptions {
        content_id: id,
        size: size as u64,
        target: target.to_owned(),
        force: false,
        config: DownloadConfig {
            // Generous: a loaded machine is slow, not stalled.
            stall_timeout: Duration::from_secs(20),
            ..DownloadConfig::default()
        },
        progress: None,
    }
}

fn control(swarm: Option<Swarm>) -> DownloadControl {
    DownloadControl {
        swarm,
        ..DownloadControl::default()
    }
}

/// Waits until `condition` holds, checking every 10 ms; panics after
/// [`PATIENCE`] saying what it waited for.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finished(download: JoinHandle<Result<DownloadReport, DownloadError>>) -> DownloadReport {
    tokio::time::timeout(PATIENCE, download)
        .await
        .expect("download finished in time")
        .unwrap()
        .unwrap()
}

fn bytes_from(report: &DownloadReport, addr: SocketAddr) -> u64 {
    report
        .sources
        .iter()
        .filter(|s| s.source == addr.to_string())
        .map(|s| s.bytes)
        .sum()
}

/// A seed A (node 1) sharing `mib` MiB and uploading `seed_rate` bytes a
/// second to everyone together, B (node 2) downloading from it with a
/// swarm, and C (node 3) idle: the start of most tests here.
struct Trio {
    id: ContentId,
    data: Vec<u8>,
    a: Node,
    b: Node,
    c: Node,
    _b_feed: mpsc::Sender<DownloadSource>,
    b_download: JoinHandle<Result<DownloadReport, DownloadError>>,
}

impl Trio {
    async fn start(mib: usize, seed_rate: u64) -> Self {
        let (id, data) = file_data(mib * MIB);
        let a = Node::start(1, Some(seed_rate)).await;
        a.share(id, &data);
        let b = Node::start(2, None).await;
        let c = Node::start(3, None).await;
        let (_b_feed, b_download) = b.download(
            id,
            data.len(),
            vec![source(b.ip, a.addr, false)],
            control(Some(b.swarm(true))),
        );
        Self {
            id,
            data,
            a,
            b,
            c,
            _b_feed,
            b_download,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_fetches_from_another_that_is_itself_mid_download() {
    // The seed uploads 1 MiB/s in all, to everyone together: B is seconds
    // from done when C starts, however loaded the machine.
    let Trio {
        id,
        data,
        a,
        b,
        c,
        _b_feed,
        b_download,
    } = Trio::start(12, MIB as u64).await;
    // B serves what it has verified so far: two thirds of the file.
    wait_until("B to serve two thirds of the file", || {
        b.partial_groups(&id) >= 8
    })
    .await;
    let b_had = b.partial_groups(&id);
    assert!(b_had < 12, "B is still downloading");

    let (_c_feed, c_download) = c.download(
        id,
        data.len(),
        vec![source(c.ip, a.addr, false), source(c.ip, b.addr, true)],
        control(None),
    );
    let report = finished(c_download).await;
    assert!(std::fs::read(c.target()).unwrap() == data);
    let from_b = bytes_from(&report, b.addr);
    let from_a = bytes_from(&report, a.addr);
    eprintln!("C got {from_b} bytes from B (partial), {from_a} from A (the seed)");
    // What guarantees B's share: until C has B's answer to what it has,
    // C may ask the seed for any group, B's too, in at most
    // `requests_per_source` runs of `swarm_groups_per_request` groups;
    // from then on it asks the seed only for groups B lacks, and B (on
    // loopback, unthrottled) for the ones it has, long before the slow
    // seed's runs end. So every group B had when C started, but those
    // first runs, comes from B: a third of the file at least.
    let config = DownloadConfig::default();
    let asked_blind = config.requests_per_source as u64 * config.swarm_groups_per_request;
    let at_least = (b_had - asked_blind) * MIB as u64;
    assert!(from_b > 0, "C got bytes from B");
    assert!(
        from_b >= at_least && at_least >= data.len() as u64 / 3,
        "C got a good share from B: {from_b} bytes of {}, at least {at_least}",
        data.len()
    );
    assert_eq!(from_a + from_b, data.len() as u64);
    let b_report = &report.sources[1];
    assert!(b_report.partial && !b_report.alternate);
    assert!(b_report.dropped.is_none(), "{:?}", b_report.dropped);

    let b_report = finished(b_download).await;
    assert!(std::fs::read(b.target()).unwrap() == data);
    assert_eq!(b_report.sources[0].bytes, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternates_told_in_headers_are_used() {
    // B downloads from A, saying where it serves (X-Listen): A's mesh
    // learns B once B serves.
    let Trio {
        id,
        data,
        a,
        b,
        c,
        _b_feed,
        b_download,
    } = Trio::start(16, 2 * MIB as u64).await;
    wait_until("B to serve half the file", || b.partial_groups(&id) >= 8).await;
    assert!(
        a.mesh().pick(&id, Some(c.ip), 8).contains(&b.addr),
        "A's mesh knows B at its address and listen port"
    );

    // C is told of A only.
    let c_swarm = c.swarm(false);
    let c_mesh = c_swarm.mesh.clone();
    let (_c_feed, c_download) = c.download(
        id,
        data.len(),
        vec![source(c.ip, a.addr, false)],
        control(Some(c_swarm)),
    );
    let report = finished(c_download).await;
    assert!(std::fs::read(c.target()).unwrap() == data);
    let learned = report
        .sources
        .iter()
        .find(|s| s.source == b.addr.to_string())
        .expect("C learned of B from A's X-Alt");
    assert!(learned.alternate && learned.partial);
    assert!(learned.bytes > 0, "C got bytes from B: {report:?}");
    eprintln!(
        "C got {} bytes from B, learned from A's X-Alt",
        learned.bytes
    );
    // Sources that delivered verified groups are in C's mesh now.
    let known: Vec<String> = c_mesh
        .pick(&id, None, 16)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(known.contains(&b.addr.to_string()), "{known:?}");
    for delivered in report.sources.iter().filter(|s| s.bytes > 0) {
        assert!(known.contains(&delivered.source), "{known:?}");
    }
    finished(b_download).await;
}

/// How a fake partial source lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Claims every group, then answers 416 for them.
    ClaimsAll,
    /// Claims every group and sends bytes that fail verification.
    BadBytes,
    /// Honestly has nothing (and never will): probed, never asked for data.
    HasNothing,
}

/// A partial source that speaks just enough HTTP/1.1, tells of
/// `alternates` in `X-Alt` on every response, and lies as told. It serves
/// the true tree, so a downloader trusts it. Counts the data requests it
/// got.
struct FakePartial {
    addr: SocketAddr,
    data_requests: Arc<AtomicU64>,
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return None;
        }
        head.push(stream.read_u8().await.ok()?);
    }
    String::from_utf8(head).ok()
}

fn requested_range(head: &str) -> Option<(u64, u64)> {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("range:"))?;
    let (a, b) = line.split_once('=')?.1.trim().split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

async fn fake_partial(
    ip: IpAddr,
    data: Arc<Vec<u8>>,
    lie: Lie,
    alternates: Vec<SocketAddr>,
) -> FakePartial {
    let tree = Arc::new(tree_of(&data));
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data_requests = Arc::new(AtomicU64::new(0));
    let counter = data_requests.clone();
    let alt = alternates
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let size = data.len() as u64;
    let ranges = match lie {
        Lie::HasNothing => "bytes".to_owned(),
        Lie::ClaimsAll | Lie::BadBytes => format!("bytes 0-{}", size - 1),
    };
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (data, tree, counter) = (data.clone(), tree.clone(), counter.clone());
            let (alt, ranges) = (alt.clone(), ranges.clone());
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut stream).await {
                    let common = format!("x-alt: {alt}\r\nx-available-ranges: {ranges}\r\n");
                    let (status, extra, body): (&str, String, Vec<u8>) =
                        if head.starts_with("GET /tree/") {
                            ("200 OK", String::new(), tree.to_vec())
                        } else if head.starts_with("HEAD /content/") {
                            ("200 OK", common, Vec::new())
                        } else if head.starts_with("GET /content/") {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let (first, last) = requested_range(&head).unwrap_or((0, size - 1));
                            match lie {
                                Lie::ClaimsAll | Lie::HasNothing => (
                                    "416 Range Not Satisfiable",
                                    format!("{common}content-range: bytes */{size}\r\n"),
                                    Vec::new(),
                                ),
                                Lie::BadBytes => {
                                    let mut body = data[first as usize..=last as usize].to_vec();
                                    for byte in body.iter_mut().step_by(1024) {
                                        *byte ^= 0x5a;
                                    }
                                    (
                                        "206 Partial Content",
                                        format!(
                                            "{common}content-range: bytes {first}-{last}/{size}\r\n"
                                        ),
                                        body,
                                    )
                                }
                            }
                        } else {
                            ("404 Not Found", String::new(), Vec::new())
                        };
                    let head_only = head.starts_with("HEAD ");
                    let response = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\n\r\n",
                        if head_only { 0 } else { body.len() }
                    );
                    if stream.write_all(response.as_bytes()).await.is_err()
                        || (!head_only && stream.write_all(&body).await.is_err())
                    {
                        return;
                    }
                }
            });
        }
    });
    FakePartial {
        addr,
        data_requests,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_partial_sources_are_dropped_with_the_alternates_they_told_of() {
    let (id, data) = file_data(8 * MIB);
    let shared = Arc::new(data.clone());
    // An honest seed, slow enough that the liars are asked for data.
    let a = Node::start(1, Some(MIB as u64)).await;
    a.share(id, &data);
    let c = Node::start(3, None).await;
    // Alternates that have nothing: only a liar's word brings them in.
    let mut told_by_claimer = Vec::new();
    for n in 0..2 {
        told_by_claimer
            .push(fake_partial(host(20 + n), shared.clone(), Lie::HasNothing, vec![]).await);
    }
    let told_by_corrupter = fake_partial(host(22), shared.clone(), Lie::HasNothing, vec![]).await;
    let claimer = fake_partial(
        host(10),
        shared.clone(),
        Lie::ClaimsAll,
        told_by_claimer.iter().map(|f| f.addr).collect(),
    )
    .await;
    let corrupter = fake_partial(
        host(11),
        shared.clone(),
        Lie::BadBytes,
        vec![told_by_corrupter.addr],
    )
    .await;

    let c_swarm = c.swarm(false);
    let c_mesh = c_swarm.mesh.clone();
    let (_feed, download) = c.download(
        id,
        data.len(),
        vec![
            source(c.ip, a.addr, false),
            source(c.ip, claimer.addr, true),
            source(c.ip, corrupter.addr, true),
        ],
        control(Some(c_swarm)),
    );
    let report = finished(download).await;
    assert!(std::fs::read(c.target()).unwrap() == data);
    assert_eq!(bytes_from(&report, a.addr), data.len() as u64);
    let dropped = report.dropped_sources();
    eprintln!("dropped: {dropped:#?}");
    assert!(claimer.data_requests.load(Ordering::SeqCst) > 0);
    assert!(corrupter.data_requests.load(Ordering::SeqCst) > 0);
    assert!(
        dropped.contains_key(&claimer.addr.to_string()),
        "the source that claimed groups it refused is dropped"
    );
    assert!(
        dropped[&corrupter.addr.to_string()].contains("verification"),
        "the source that sent bad bytes is dropped"
    );
    for (alternate, liar) in told_by_claimer
        .iter()
        .map(|f| (f, &claimer))
        .chain([(&told_by_corrupter, &corrupter)])
    {
        let reason = &dropped[&alternate.addr.to_string()];
        assert_eq!(
            reason,
            &format!("learned from {}, which lied", liar.addr),
            "an alternate told of by a liar goes with it"
        );
        assert_eq!(alternate.data_requests.load(Ordering::SeqCst), 0);
        let alt_report = report
            .sources
            .iter()
            .find(|s| s.source == alternate.addr.to_string())
            .unwrap();
        assert!(alt_report.alternate && alt_report.partial);
    }
    // Only the honest source that delivered is in C's mesh.
    assert_eq!(c_mesh.pick(&id, None, 16), vec![a.addr]);
}

/// Asks `server` for `id`'s headers (HEAD) over and over on one
/// connection until `stop`, from the first time it is served on; returns
/// (answers that served it, answers that did not after the first, each
/// with how many served answers came before it).
fn keep_asking(
    server: SocketAddr,
    id: ContentId,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u64, Vec<(u64, StatusCode)>)> {
    tokio::spawn(async move {
        let stream = TcpStream::connect(server).await.unwrap();
        let mut conn = HttpConn::handshake(stream).await.unwrap();
        let path = format!("/content/{id}");
        let (mut served, mut gaps) = (0u64, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let response = conn
                .request(Method::HEAD, &path, None, &Sharing::default())
                .await
                .unwrap();
            if response.status() == StatusCode::OK {
                served += 1;
            } else if served > 0 {
                gaps.push((served, response.status()));
            }
            // Polling, not hogging a worker: a gap lasts longer than this.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (served, gaps)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_download_is_served_whole_without_a_gap() {
    let (id, data) = file_data(6 * MIB + 123);
    let a = Node::start(1, Some(4 * MIB as u64)).await;
    a.share(id, &data);
    let b = Node::start(2, None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let asking = keep_asking(b.addr, id, stop.clone());
    let (_feed, download) = b.download(
        id,
        data.len(),
        vec![source(b.ip, a.addr, false)],
        control(Some(b.swarm(true))),
    );
    let report = finished(download).await;
    stop.store(true, Ordering::SeqCst);
    let (served, gaps) = asking.await.unwrap();
    assert!(served > 0, "B served its download while it ran");
    assert_eq!(gaps, [], "never unserved between partial and complete");
    assert_eq!(report.path, b.target());
    assert!(
        b.catalog().get_partial(&id).is_none(),
        "the partial entry is gone"
    );
    let entry = b.catalog().get(&id).expect("served complete");
    assert_eq!(entry.path, b.target());
    assert_eq!(entry.size, data.len() as u64);
    assert_eq!(entry.tree, tree_of(&data));
    assert!(!b.dir.path().join(partial_name(id)).exists());
    assert!(!b.dir.path().join(state_name(id)).exists());

    // Served whole: a full GET from a third node gets the file, and says
    // nothing of ranges (it has them all).
    let stream = TcpStream::connect(b.addr).await.unwrap();
    let mut conn = HttpConn::handshake(stream).await.unwrap();
    let response = conn.get(&format!("/content/{id}"), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-available-ranges").is_none());
    let body = canopy_transfer::client::read_limited(response.into_body(), 8 * MIB)
        .await
        .unwrap();
    assert!(body == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_unshared_download_stops_being_served() {
    let (id, data) = file_data(12 * MIB);
    let a = Node::start(1, Some(2 * MIB as u64)).await;
    a.share(id, &data);

    // Cancelled: the partial entry goes, the files stay for a resume.
    let b = Node::start(2, None).await;
    let control_b = control(Some(b.swarm(true)));
    let cancel = control_b.cancel.clone();
    let (_feed, download) =
        b.download(id, data.len(), vec![source(b.ip, a.addr, false)], control_b);
    wait_until("B to serve a group", || b.partial_groups(&id) >= 1).await;
    cancel.cancel();
    let error = tokio::time::timeout(PATIENCE, download)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, DownloadError::Cancelled), "{error}");
    assert!(b.catalog().get_partial(&id).is_none());
    assert!(b.catalog().get(&id).is_none());
    assert!(b.dir.path().join(partial_name(id)).exists());

    // Resumed and finished without serve_when_done: nothing is served at
    // the end (the resumed groups were served from the start).
    let (_feed, download) = b.download(
        id,
        data.len(),
        vec![source(b.ip, a.addr, false)],
        control(Some(b.swarm(false))),
    );
    let report = finished(download).await;
    assert!(report.resumed_bytes > 0);
    assert!(std::fs::read(b.target()).unwrap() == data);
    assert!(b.catalog().get_partial(&id).is_none());
    assert!(b.catalog().get(&id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_killed_mid_swarm_does_not_stop_the_others() {
    let Trio {
        id,
        data,
        a,
        b,
        c,
        _b_feed,
        b_download,
    } = Trio::start(12, MIB as u64).await;
    wait_until("B to serve a few groups", || b.partial_groups(&id) >= 3).await;
    let (_c_feed, c_download) = c.download(
        id,
        data.len(),
        vec![source(c.ip, a.addr, false), source(c.ip, b.addr, true)],
        control(Some(c.swarm(true))),
    );
    wait_until("B to upload to C", || {
        b.server.uploaded_bytes() >= MIB as u64
    })
    .await;
    // kill -9: the download stops dead, its server and every connection go.
    b_download.abort();
    b.shutdown.cancel();
    let report = finished(c_download).await;
    assert!(std::fs::read(c.target()).unwrap() == data);
    // B sent C a MiB (waited for above), though the groups it was cut off
    // in the middle of count for nothing: what C verified from B may be
    // less. The rest came from A.
    assert!(bytes_from(&report, a.addr) > 0);
    eprintln!("C after B died: {:?}", report.bytes_per_source());
}

/// A flash crowd on loopback: a seed at 127.0.0.1 sharing `mib` MiB at
/// `seed_rate` bytes a second, and `downloaders` nodes that all start at
/// once, each told of the seed only (the rest comes from X-Alt). Waits
/// for every download, checks each file, and returns the seed with each
/// downloader's report.
async fn flash_crowd(
    mib: usize,
    seed_rate: u64,
    downloaders: u8,
) -> (Node, Vec<(Node, DownloadReport)>, usize) {
    let (id, data) = file_data(mib * MIB);
    let seed = Node::start(1, Some(seed_rate)).await;
    seed.share(id, &data);
    let mut crowd = Vec::new();
    for n in 2..2 + downloaders {
        crowd.push(Node::start(n, None).await);
    }
    let downloads: Vec<_> = crowd
        .iter()
        .map(|node| {
            node.download(
                id,
                data.len(),
                vec![source(node.ip, seed.addr, false)],
                control(Some(node.swarm(true))),
            )
        })
        .collect();
    let mut reports = Vec::new();
    for (node, (_feed, download)) in crowd.into_iter().zip(downloads) {
        let report = finished(download).await;
        assert!(std::fs::read(node.target()).unwrap() == data);
        reports.push((node, report));
    }
    (seed, reports, data.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_small_flash_crowd_downloaders_get_bytes_from_each_other() {
    // The seed's uplink is the bottleneck: 2 MiB/s for everyone.
    let (seed, reports, size) = flash_crowd(8, 2 * MIB as u64, 4).await;
    let mut from_peers = 0;
    for (node, report) in &reports {
        let peers = size as u64 - bytes_from(report, seed.addr);
        eprintln!("{}: {peers} bytes from peers", node.addr);
        from_peers += peers;
        assert!(
            report
                .dropped_sources()
                .values()
                .all(|why| !why.contains("lied")),
            "{report:?}"
        );
    }
    let copies = seed.server.uploaded_bytes() as f64 / size as f64;
    eprintln!("the seed uploaded {copies:.2} copies; peers gave {from_peers} bytes");
    assert!(from_peers > 0, "the downloaders got bytes from each other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_seeding_seed_sends_a_crowd_little_more_than_one_copy() {
    // A file of many groups, so the seed's four upload slots hold only a
    // few of them at a time: it sends each group once before any twice
    // (super-seeding), and the crowd, fast between themselves, spreads
    // the copies. Without the rationing the seed sends each downloader
    // what it picks, and in this crowd that came to 1.4-1.6 copies.
    let (seed, reports, size) = flash_crowd(24, 3 * MIB as u64, 5).await;
    for (_, report) in &reports {
        assert!(report.dropped_sources().is_empty(), "{report:?}");
    }
    let copies = seed.server.uploaded_bytes() as f64 / size as f64;
    let refusals = seed.server.stats().offer_refusals.load(Ordering::Relaxed);
    eprintln!("the seed uploaded {copies:.2} copies, refusing {refusals} requests with an offer");
    assert!(refusals > 0, "the seed rationed");
    // 1.0-1.2 when measured; the bound leaves room for a loaded machine.
    assert!(copies < 1.75, "the seed uploaded {copies:.2} copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_source_that_serves_nothing_yet_is_asked_again_not_dropped() {
    let (id, data) = file_data(8 * MIB);
    // C's only other source: a slow seed.
    let slow = Node::start(1, Some(MIB as u64 / 2)).await;
    slow.share(id, &data);
    // B will download from a fast seed C does not know of.
    let fast = Node::start(4, None).await;
    fast.share(id, &data);
    let b = Node::start(2, None).await;
    let c = Node::start(3, None).await;

    let verified = Arc::new(AtomicU64::new(0));
    let seen = verified.clone();
    let mut options = options(id, data.len(), &c.target());
    options.progress = Some(Arc::new(move |p| {
        seen.store(p.verified_bytes, Ordering::SeqCst)
    }));
    let (c_feed, receiver) = mpsc::channel(8);
    c_feed.send(source(c.ip, slow.addr, false)).await.unwrap();
    // B is told of while it serves nothing: its probes answer 404.
    c_feed.send(source(c.ip, b.addr, true)).await.unwrap();
    let c_download = tokio::spawn(download_live(receiver, options, control(None)));
    wait_until("C to verify a group", || {
        verified.load(Ordering::SeqCst) >= MIB as u64
    })
    .await;
    assert_eq!(b.partial_groups(&id), 0, "B has served nothing so far");

    let (_b_feed, b_download) = b.download(
        id,
        data.len(),
        vec![source(b.ip, fast.addr, false)],
        control(Some(b.swarm(true))),
    );
    let report = finished(c_download).await;
    assert!(std::fs::read(c.target()).unwrap() == data);
    let b_report = &report.sources[1];
    assert!(b_report.dropped.is_none(), "{:?}", b_report.dropped);
    assert!(b_report.bytes > 0, "{report:?}");
    eprintln!("C got {} bytes from B once it served", b_report.bytes);
    finished(b_download).await;
    drop(c_feed);
}

/// Listeners at `count` addresses of `127.0.0.<n>` that close every
/// connection at once; counts how many of them were dialled.
async fn refusing(n: u8, count: usize) -> (Vec<SocketAddr>, Arc<AtomicU64>) {
    let dialled = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    for _ in 0..count {
        let listener = TcpListener::bind(SocketAddr::new(host(n), 0))
            .await
            .unwrap();
        addrs.push(listener.local_addr().unwrap());
        let dialled = dialled.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((stream, _)) = listener.accept().await {
                if std::mem::take(&mut first) {
                    dialled.fetch_add(1, Ordering::SeqCst);
                }
                drop(stream);
            }
        });
    }
    (addrs, dialled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_list_full_of_alternates_still_takes_a_source_fed_later() {
    let (id, data) = file_data(4 * MIB);
    let shared = Arc::new(data.clone());
    // Four partial sources that have nothing, each telling of sixteen
    // alternates (as many as one X-Alt is read for) that close every
    // connection: more alternates than the download takes.
    let (alternates, dialled) = refusing(30, 64).await;
    let mut tellers = Vec::new();
    for (n, told) in alternates.chunks(16).enumerate() {
        let ip = host(10 + n as u8);
        tellers.push(fake_partial(ip, shared.clone(), Lie::HasNothing, told.to_vec()).await);
    }
    let c = Node::start(3, None).await;
    let (feed, download) = c.download(
        id,
        data.len(),
        tellers.iter().map(|f| source(c.ip, f.addr, true)).collect(),
        control(Some(c.swarm(false))),
    );
    // Alternates fill the list but for the places kept for searches.
    let kept = MAX_SOURCES - 8 - tellers.len();
    wait_until("the alternates to fill the source list", || {
        dialled.load(Ordering::SeqCst) >= kept as u64
    })
    .await;
    // A seed found later by a search: taken, and it delivers everything.
    let a = Node::start(1, None).await;
    a.share(id, &data);
    feed.send(source(c.ip, a.addr, false)).await.unwrap();
    let report = finished(download).await;
    assert!(std::fs::read(c.target()).unwrap() == data);
    assert_eq!(bytes_from(&report, a.addr), data.len() as u64);
    let learned = report.sources.iter().filter(|s| s.alternate).count();
    assert_eq!(learned, kept, "{report:?}");
    assert_eq!(dialled.load(Ordering::SeqCst), kept as u64);
    assert_eq!(report.sources.len(), MAX_SOURCES - 8 + 1);
}
