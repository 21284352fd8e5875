//! Every downloader is a source, on real nodes on 127.0.0.1: a leaf
//! downloading from a slow seed is published as a partial source (found by
//! a content-id search, its `available` growing) and as a whole one once
//! it is done and shared; in a small flash crowd the downloaders get bytes
//! from each other and the seed uploads less than a copy each; and a
//! downloader killed mid-swarm (its runtime dropped: every task and socket
//! gone at once, as with kill -9) stops none of the others; and a
//! downloader attached to two supernodes never takes its own partial file,
//! found through the other one, for a source; a download whose partial
//! sources lack some groups searches again and finds a seed that joined
//! later; and a seed that leaves mid-download and comes back (same node
//! id, same address) is fed again and used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use canopy_core::search::Source;
use canopy_core::tree::tree_of;
use canopy_node::fetch::{self, FetchProgress, FetchRequest, FetchTarget};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{ContentId, SharedFile};
use canopy_testkit::overlay::{
    PATIENCE, content_id, id_request, leaf_options, sample_bytes, start_leaf, supernode,
};
use canopy_transfer::bandwidth::RateLimit;
use canopy_transfer::download::DownloadReport;
use canopy_transfer::partial::PartialEntry;
use canopy_transfer::server::ContentServer;
use tokio::sync::{oneshot, watch};

const MIB: usize = 1 << 20;
/// Longer than any download here may take, however loaded the machine.
const LONG: Duration = Duration::from_secs(180);
/// The seed's upload limit: slow enough that downloaders overlap.
const SEED_RATE: u64 = 1 << 20;

fn hash_of(path: &Path) -> ContentId {
    content_id(&std::fs::read(path).unwrap())
}

/// A supernode and a seed leaf sharing `data` as `name`, its uploads held
/// to [`SEED_RATE`].
struct Crowd {
    at: SupernodeHandle,
    seed: LeafHandle,
    _seed_dir: tempfile::TempDir,
    id: ContentId,
    size: u64,
}

impl Crowd {
    async fn start(name: &str, data: &[u8]) -> Self {
        let at = supernode(&[]).await;
        let seed_dir = tempfile::tempdir().unwrap();
        std::fs::write(seed_dir.path().join(name), data).unwrap();
        let mut options = leaf_options(&at, Some(seed_dir.path()));
        options.upload_limit = RateLimit::new(SEED_RATE);
        let seed = start_leaf(options).await;
        at.wait_for(PATIENCE, |s| s.index_files >= 1).await.unwrap();
        Crowd {
            at,
            seed,
            _seed_dir: seed_dir,
            id: content_id(data),
            size: data.len() as u64,
        }
    }

    /// Options for a downloading leaf: it serves on 127.0.0.1 (any port).
    fn downloader_options(&self) -> LeafOptions {
        leaf_options(&self.at, None)
    }

    fn seed_label(&self) -> String {
        self.seed.listen_addr().unwrap().to_string()
    }
}

/// A fetch of `id` into `dir` whose searches run long, reporting progress.
fn fetch_request(id: ContentId, dir: &Path) -> (FetchRequest, watch::Receiver<FetchProgress>) {
    let mut request = FetchRequest::new(id, FetchTarget::Dir(dir.to_owned()));
    request.search_timeout = LONG;
    let (tx, rx) = watch::channel(FetchProgress::default());
    request.progress = Some(Arc::new(move |p: &FetchProgress| {
        tx.send_replace(p.clone());
    }));
    (request, rx)
}

/// Waits until `progress` shows at least `bytes` verified; fails after
/// [`LONG`] saying what it waited for.
async fn wait_verified(progress: &watch::Receiver<FetchProgress>, bytes: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + LONG;
    while progress.borrow().verified_bytes < bytes {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes a report says came from anyone but the seed.
fn bytes_from_peers(report: &DownloadReport, seed: &str) -> u64 {
    report
        .sources
        .iter()
        .filter(|s| !s.source.starts_with(seed))
        .map(|s| s.bytes)
        .sum()
}

/// The sources a content-id search from `observer` finds (one search, run
/// to its short timeout).
async fn sources_of(observer: &LeafHandle, id: ContentId) -> Vec<Source> {
    let outcome = observer
        .search(id_request(id, Duration::from_millis(500)))
        .await
        .unwrap();
    outcome
        .results
        .into_iter()
        .filter(|r| r.content_id == id)
        .flat_map(|r| r.sources)
        .collect()
}

/// Searches from `observer` until `node`'s entry among the sources passes
/// `check`; returns it.
async fn wait_for_source(
    observer: &LeafHandle,
    id: ContentId,
    node: canopy_proto::NodeId,
    what: &str,
    check: impl Fn(&Source) -> bool,
) -> Source {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let sources = sources_of(observer, id).await;
        let mine: Vec<&Source> = sources.iter().filter(|s| s.node_id == node).collect();
        assert!(mine.len() <= 1, "one source per leaf: {sources:?}");
        if let Some(source) = mine.first().filter(|s| check(s)) {
            return (*source).clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw the downloader {what}; last: {sources:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloader_is_a_partial_source_with_what_it_has_then_a_whole_one() {
    let data = sample_bytes(8 * MIB, 11);
    let crowd = Crowd::start("film.bin", &data).await;
    // Downloading at half the seed's rate: a group (and a publication)
    // every two seconds for sixteen, so a late observer still sees it grow.
    let mut options = crowd.downloader_options();
    options.download_limit = RateLimit::new(SEED_RATE / 2);
    let downloader = Arc::new(start_leaf(options).await);
    let observer = start_leaf(LeafOptions::new(crowd.at.local_addr())).await;
    let into = tempfile::tempdir().unwrap();
    let (mut request, _progress) = fetch_request(crowd.id, into.path());
    // As the daemon does for a download into a shared folder: served from
    // where it lands at once, then shared whole, then the partial goes.
    request.share_when_done = true;
    let fetching = tokio::spawn({
        let downloader = downloader.clone();
        async move { fetch::fetch(&downloader, request).await }
    });

    let node = downloader.node_id();
    let first = wait_for_source(&observer, crowd.id, node, "partial", |s| s.partial).await;
    let had = first
        .available
        .expect("a partial source says how much it has");
    assert!(had > 0 && had < crowd.size, "{had} of {}", crowd.size);
    // Bounded by the download's end, not only by LONG: once it has ended
    // (checked before a search, so that search sees its last publication)
    // no publication with more will come.
    let deadline = tokio::time::Instant::now() + LONG;
    let later = loop {
        let ended = fetching.is_finished();
        let sources = sources_of(&observer, crowd.id).await;
        let grown = sources
            .iter()
            .find(|s| s.node_id == node && s.partial && s.available.is_some_and(|a| a > had));
        if let Some(source) = grown {
            break source.clone();
        }
        assert!(
            !ended && tokio::time::Instant::now() < deadline,
            "never saw the downloader with more than {had} bytes (download ended: {ended}); \
             last: {sources:?}"
        );
    };
    assert!(later.available.unwrap() <= crowd.size);

    let report = tokio::time::timeout(LONG, fetching)
        .await
        .expect("the download finished")
        .unwrap()
        .unwrap();
    assert_eq!(hash_of(&report.path), crowd.id);
    // Served from the target the moment it was complete.
    let entry = downloader.catalog().get(&crowd.id).expect("served");
    assert_eq!(
        entry.path.canonicalize().unwrap(),
        report.path.canonicalize().unwrap()
    );
    downloader.share_file(report.path.clone()).await.unwrap();
    downloader.unshare_partial(crowd.id).await;
    let whole = wait_for_source(&observer, crowd.id, node, "whole", |s| !s.partial).await;
    assert_eq!(whole.available, None);
    // The seed is still there, and whole.
    let seed = crowd.seed.node_id();
    let sources = sources_of(&observer, crowd.id).await;
    assert!(sources.iter().any(|s| s.node_id == seed && !s.partial));
    crowd
        .at
        .wait_for(PATIENCE, |s| s.index_files == 2)
        .await
        .expect("one record each");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_source_is_withdrawn_when_its_download_is_cancelled() {
    let data = sample_bytes(8 * MIB, 12);
    let crowd = Crowd::start("film.bin", &data).await;
    let downloader = Arc::new(start_leaf(crowd.downloader_options()).await);
    let observer = start_leaf(LeafOptions::new(crowd.at.local_addr())).await;
    let into = tempfile::tempdir().unwrap();
    let (request, _progress) = fetch_request(crowd.id, into.path());
    let cancel = request.cancel.clone();
    let fetching = tokio::spawn({
        let downloader = downloader.clone();
        async move { fetch::fetch(&downloader, request).await }
    });
    let node = downloader.node_id();
    wait_for_source(&observer, crowd.id, node, "partial", |s| s.partial).await;
    cancel.cancel();
    assert!(fetching.await.unwrap().is_err());
    crowd
        .at
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .expect("the partial file is withdrawn");
    let sources = sources_of(&observer, crowd.id).await;
    assert!(sources.iter().all(|s| s.node_id != node), "{sources:?}");
    assert!(downloader.catalog().get_partial(&crowd.id).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloader_never_takes_its_own_partial_file_for_a_source() {
    // Two supernodes; the downloader publishes to both, searches through
    // one, and the other answers with what the downloader published.
    let nodes = canopy_testkit::overlay::line(2).await;
    let data = sample_bytes(4 * MIB, 15);
    let id = content_id(&data);
    let seed_dir = tempfile::tempdir().unwrap();
    std::fs::write(seed_dir.path().join("slow.bin"), &data).unwrap();
    let mut options = leaf_options(&nodes[0], Some(seed_dir.path()));
    // Slow enough that the fetch asks the network again meanwhile.
    options.upload_limit = RateLimit::new(128 << 10);
    let seed = start_leaf(options).await;
    let mut options = leaf_options(&nodes[0], None);
    options.supernodes = vec![nodes[0].local_addr(), nodes[1].local_addr()];
    options.supernodes_wanted = 2;
    let downloader = start_leaf(options).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while downloader.status().supernodes.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not attached to both"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let into = tempfile::tempdir().unwrap();
    let (request, _progress) = fetch_request(id, into.path());
    let report = tokio::time::timeout(LONG, fetch::fetch(&downloader, request))
        .await
        .expect("finished")
        .unwrap();
    assert_eq!(hash_of(&report.path), id);
    assert!(
        report.elapsed > fetch::REASK_INTERVAL,
        "asked again meanwhile"
    );
    let us = downloader.listen_addr().unwrap().to_string();
    assert!(
        report.sources.iter().all(|s| !s.source.starts_with(&us)),
        "{:?}",
        report.sources
    );
    assert!(
        report
            .sources
            .iter()
            .any(|s| s.source == seed.listen_addr().unwrap().to_string())
    );
}

/// A downloading leaf of the crowd, its fetch running.
struct Downloader {
    leaf: Arc<LeafHandle>,
    _dir: tempfile::TempDir,
    fetching: tokio::task::JoinHandle<Result<DownloadReport, canopy_node::NodeError>>,
}

/// Starts `leaf` (already joined) fetching the crowd's file.
fn start_fetch(crowd: &Crowd, leaf: Arc<LeafHandle>) -> Downloader {
    let dir = tempfile::tempdir().unwrap();
    let (request, _progress) = fetch_request(crowd.id, dir.path());
    let fetching = tokio::spawn({
        let leaf = leaf.clone();
        async move { fetch::fetch(&leaf, request).await }
    });
    Downloader {
        leaf,
        _dir: dir,
        fetching,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_small_flash_crowd_downloaders_get_bytes_from_each_other() {
    const DOWNLOADERS: usize = 4;
    let data = sample_bytes(8 * MIB, 13);
    let crowd = Crowd::start("crowd.bin", &data).await;
    let mut leaves = Vec::new();
    for _ in 0..DOWNLOADERS {
        leaves.push(crowd.downloader_options());
    }
    // Joined first, then all started together.
    let mut joined = Vec::new();
    for options in leaves {
        joined.push(Arc::new(start_leaf(options).await));
    }
    let mut dirs = Vec::new();
    let mut running = Vec::new();
    for leaf in &joined {
        let dir = tempfile::tempdir().unwrap();
        let (request, _progress) = fetch_request(crowd.id, dir.path());
        let leaf = leaf.clone();
        running.push(tokio::spawn(
            async move { fetch::fetch(&leaf, request).await },
        ));
        dirs.push(dir);
    }
    let mut from_peers = 0;
    for fetching in running {
        let report = tokio::time::timeout(LONG, fetching)
            .await
            .expect("every download finished")
            .unwrap()
            .unwrap();
        assert_eq!(hash_of(&report.path), crowd.id);
        from_peers += bytes_from_peers(&report, &crowd.seed_label());
    }
    let seed_sent = crowd.seed.server().uploaded_bytes();
    let copies = seed_sent as f64 / crowd.size as f64;
    eprintln!("seed sent {copies:.2} copies; {from_peers} bytes between downloaders");
    assert!(from_peers > 0, "no downloader got a byte from another");
    assert!(
        seed_sent < DOWNLOADERS as u64 * crowd.size,
        "the seed sent {copies:.2} copies to {DOWNLOADERS} downloaders"
    );
    // Every downloader served some of it.
    let served: Vec<u64> = joined.iter().map(|l| l.server().uploaded_bytes()).collect();
    assert!(served.iter().sum::<u64>() >= from_peers, "{served:?}");
}

/// A downloader on a runtime of its own: killing it drops every task and
/// socket at once, with no goodbye, as kill -9 would.
struct Doomed {
    runtime: Option<tokio::runtime::Runtime>,
    server: ContentServer,
    progress: watch::Receiver<FetchProgress>,
}

impl Doomed {
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        // A runtime can't be dropped from inside another.
        self.kill();
    }
}

/// The doomed leaf's download limit: slow, so it is still downloading
/// (and serving what it has) long after the others have started, however
/// loaded the machine.
const DOOMED_RATE: u64 = 256 << 10;

async fn start_doomed(at: SocketAddr, id: ContentId, dir: PathBuf) -> Doomed {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ready, started) = oneshot::channel();
    runtime.spawn(async move {
        let mut options = LeafOptions::new(at);
        options.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        options.download_limit = RateLimit::new(DOOMED_RATE);
        let leaf = start_leaf(options).await;
        let (request, progress) = fetch_request(id, &dir);
        let _ = ready.send((leaf.server().clone(), progress));
        let _ = fetch::fetch(&leaf, request).await;
        std::future::pending::<()>().await;
    });
    let (server, progress) = started.await.unwrap();
    Doomed {
        runtime: Some(runtime),
        server,
        progress,
    }
}

impl Doomed {
    /// Waits until `condition` holds of the doomed leaf, checking at each
    /// change of its progress and at least every 50 ms; fails at once if
    /// its fetch ended (its progress sender gone) first, or after [`LONG`].
    async fn wait_until(&mut self, what: &str, condition: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + LONG;
        while !condition(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the doomed leaf {what}"
            );
            let changed =
                tokio::time::timeout(Duration::from_millis(50), self.progress.changed()).await;
            if let Ok(Err(_)) = changed {
                // The last word, in case the condition just came true.
                assert!(
                    condition(self),
                    "the doomed leaf's fetch ended before it {what}: {:?}",
                    *self.progress.borrow()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloader_killed_mid_swarm_stops_none_of_the_others() {
    let data = sample_bytes(8 * MIB, 14);
    let crowd = Crowd::start("crowd.bin", &data).await;
    // The others join first (the slow part on a loaded machine), and start
    // fetching only once the doomed leaf has its head start.
    let mut joined = Vec::new();
    for _ in 0..3 {
        joined.push(Arc::new(start_leaf(crowd.downloader_options()).await));
    }
    let doomed_dir = tempfile::tempdir().unwrap();
    let mut doomed = start_doomed(
        crowd.at.local_addr(),
        crowd.id,
        doomed_dir.path().to_owned(),
    )
    .await;
    // A head start: the others' first search finds it as a partial
    // source, so they fetch from it from the start. At DOOMED_RATE the
    // rest of its download takes half a minute at least.
    doomed
        .wait_until("verified a group", |d| {
            d.progress.borrow().verified_bytes >= MIB as u64
        })
        .await;
    crowd
        .at
        .wait_for(PATIENCE, |s| s.index_files == 2)
        .await
        .expect("published as a partial source");
    let others: Vec<Downloader> = joined
        .into_iter()
        .map(|leaf| start_fetch(&crowd, leaf))
        .collect();
    // Killed once it has served the others some of what it has, while it
    // is still downloading.
    doomed
        .wait_until("served anyone", |d| d.server.uploaded_bytes() > 0)
        .await;
    let verified = doomed.progress.borrow().verified_bytes;
    assert!(verified < crowd.size, "killed mid-download");
    doomed.kill();
    for other in others {
        let report = tokio::time::timeout(LONG, other.fetching)
            .await
            .expect("the others finished")
            .unwrap()
            .unwrap();
        assert_eq!(hash_of(&report.path), crowd.id);
        drop(other.leaf);
    }
}

/// A leaf of `at` serving the first `groups` groups of `data` as a
/// partial file (published with what it has), and never more: a partial
/// source that lacks the rest for good.
async fn stuck_partial(
    at: &SupernodeHandle,
    data: &[u8],
    groups: u64,
) -> (LeafHandle, tempfile::TempDir) {
    let leaf = start_leaf(leaf_options(at, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.bin");
    std::fs::write(&path, data).unwrap();
    let id = content_id(data);
    let entry = PartialEntry::new(path, data.len() as u64, tree_of(data).into());
    for group in 0..groups {
        entry.add_group(group);
    }
    leaf.catalog().insert_partial(id, entry);
    leaf.share_partial(SharedFile {
        content_id: id,
        name: "half.bin".into(),
        size: data.len() as u64,
        available: Some(groups * MIB as u64),
    })
    .await;
    at.wait_for(PATIENCE, |s| s.index_files >= 1).await.unwrap();
    (leaf, dir)
}

/// Waits for `fetching` to end, at most [`LONG`].
async fn fetched(
    fetching: tokio::task::JoinHandle<Result<DownloadReport, canopy_node::NodeError>>,
) -> DownloadReport {
    tokio::time::timeout(LONG, fetching)
        .await
        .expect("the download finished")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_lacking_groups_searches_again_and_finds_a_seed_that_came_later() {
    let data = sample_bytes(8 * MIB, 16);
    let id = content_id(&data);
    let at = supernode(&[]).await;
    let (_partial, _partial_dir) = stuck_partial(&at, &data, 4).await;
    let downloader = Arc::new(start_leaf(leaf_options(&at, None)).await);
    let into = tempfile::tempdir().unwrap();
    let (mut request, progress) = fetch_request(id, into.path());
    // Short searches: one that finds nobody new ends soon (and, before
    // the fix, closed the feed for good).
    request.search_timeout = Duration::from_secs(2);
    let fetching = tokio::spawn({
        let downloader = downloader.clone();
        async move { fetch::fetch(&downloader, request).await }
    });
    // The partial source's half is done, and the search made for the
    // groups nobody has has gone out (the first search, then that one).
    wait_verified(&progress, 4 * MIB as u64, "never got the partial half").await;
    at.wait_for(PATIENCE, |s| s.queries_received >= 2)
        .await
        .expect("searched again for the missing groups");
    // Only now does a seed join: a later search must find it.
    let seed_dir = tempfile::tempdir().unwrap();
    std::fs::write(seed_dir.path().join("whole.bin"), &data).unwrap();
    let seed = start_leaf(leaf_options(&at, Some(seed_dir.path()))).await;
    let report = fetched(fetching).await;
    assert_eq!(hash_of(&report.path), id);
    let seed_label = seed.listen_addr().unwrap().to_string();
    let from_seed: u64 = report
        .sources
        .iter()
        .filter(|s| s.source == seed_label)
        .map(|s| s.bytes)
        .sum();
    assert!(from_seed >= 4 * MIB as u64, "{:?}", report.sources);
}

/// Starts a seed leaf with `key`, listening at `listen`, sharing `dir` at
/// `rate` bytes a second; retries while the port is still held by a
/// seed that just stopped.
async fn start_seed(
    at: &SupernodeHandle,
    key: &StaticKeypair,
    listen: SocketAddr,
    dir: &Path,
    rate: u64,
) -> LeafHandle {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut options = leaf_options(at, Some(dir));
        options.listen = Some(listen);
        options.key = Some(key.clone());
        options.upload_limit = RateLimit::new(rate);
        match canopy_node::leaf::start(options).await {
            Ok(seed) => {
                seed.wait_connected(PATIENCE).await.unwrap();
                return seed;
            }
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "seed never restarted: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seed_that_leaves_mid_download_and_comes_back_is_used_again() {
    let data = sample_bytes(12 * MIB, 17);
    let id = content_id(&data);
    let at = supernode(&[]).await;
    // Keeps the download alive (lacking, not stuck) while the seed is away.
    let (_partial, _partial_dir) = stuck_partial(&at, &data, 2).await;
    let key = StaticKeypair::generate().unwrap();
    let seed_dir = tempfile::tempdir().unwrap();
    std::fs::write(seed_dir.path().join("whole.bin"), &data).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let seed = start_seed(&at, &key, listen, seed_dir.path(), SEED_RATE).await;
    let node = seed.node_id();
    at.wait_for(PATIENCE, |s| s.index_files >= 2).await.unwrap();

    let downloader = Arc::new(start_leaf(leaf_options(&at, None)).await);
    let into = tempfile::tempdir().unwrap();
    let (mut request, progress) = fetch_request(id, into.path());
    request.search_timeout = Duration::from_secs(2);
    let fetching = tokio::spawn({
        let downloader = downloader.clone();
        async move { fetch::fetch(&downloader, request).await }
    });
    // Gone once it has sent some of the rest, with most of it left.
    wait_verified(&progress, 4 * MIB as u64, "the seed never delivered").await;
    seed.shutdown().await;
    at.wait_for(PATIENCE, |s| s.leaves == 2)
        .await
        .expect("the seed left");
    // Back, same node id, same address.
    let seed = start_seed(&at, &key, listen, seed_dir.path(), 0).await;
    assert_eq!(seed.node_id(), node);
    let report = fetched(fetching).await;
    assert_eq!(hash_of(&report.path), id);
    let label = listen.to_string();
    let times: Vec<_> = report
        .sources
        .iter()
        .filter(|s| s.source == label)
        .collect();
    assert_eq!(times.len(), 2, "fed again: {:?}", report.sources);
    assert!(
        times[0].dropped.is_some() && times[1].dropped.is_none(),
        "{:?}",
        report.sources
    );
    assert!(times[1].bytes > 0, "{:?}", report.sources);
}
