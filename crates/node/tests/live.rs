//! No fixed waits, on real nodes on 127.0.0.1: a live search streams its
//! results and ends as soon as it has `max_results`; a fetch starts on the
//! first source while its search still runs, takes a source that appears
//! later, and a cancelled fetch keeps its partial for the next one to
//! resume; two fetches of one id into one folder never share a partial.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_node::NodeError;
use canopy_node::fetch::{self, FetchProgress, FetchRequest, FetchTarget};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::{ContentId, SharedFile};
use canopy_testkit::fake_source::{self, Misbehaviour};
use canopy_testkit::overlay::{
    PATIENCE, content_id, folder_with, leaf, request, sample_bytes, start_leaf, supernode,
};
use canopy_transfer::download::{DownloadError, partial_name, state_name};
use tokio::sync::watch;

const MIB: usize = 1 << 20;
/// Longer than any test may take: a search that ends or a fetch that
/// completes within [`PATIENCE`] did not wait for it.
const LONG: Duration = Duration::from_secs(120);

/// A leaf announcing `addr` as its own, publishing `file`.
async fn announce(
    at: &SupernodeHandle,
    addr: std::net::SocketAddr,
    file: SharedFile,
) -> LeafHandle {
    let mut options = LeafOptions::new(at.local_addr());
    options.advertise = Some(addr);
    let handle = start_leaf(options).await;
    handle.set_shares(vec![file]).await.unwrap();
    handle
}

async fn wait_indexed(at: &SupernodeHandle, files: usize) {
    at.wait_for(PATIENCE, |s| s.index_files >= files)
        .await
        .unwrap();
}

/// A fetch request into `dir` with a search that would run for [`LONG`],
/// reporting progress to the returned receiver.
fn long_fetch(id: ContentId, dir: &Path) -> (FetchRequest, watch::Receiver<FetchProgress>) {
    let mut request = FetchRequest::new(id, FetchTarget::Dir(dir.to_owned()));
    request.search_timeout = LONG;
    request.config = DownloadConfig {
        requests_per_source: 1,
        groups_per_request: 1,
        stall_timeout: Duration::from_secs(2),
        ..DownloadConfig::default()
    };
    let (tx, rx) = watch::channel(FetchProgress::default());
    request.progress = Some(Arc::new(move |p: &FetchProgress| {
        tx.send_replace(p.clone());
    }));
    (request, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_search_streams_results_and_ends_at_max_results() {
    let at = supernode(&[]).await;
    let one = tempfile::tempdir().unwrap();
    std::fs::write(one.path().join("alpha one.txt"), b"one").unwrap();
    let two = tempfile::tempdir().unwrap();
    std::fs::write(two.path().join("alpha two.txt"), b"two").unwrap();
    let _sharers = [
        leaf(&at, Some(one.path())).await,
        leaf(&at, Some(two.path())).await,
    ];
    wait_indexed(&at, 2).await;
    let searcher = leaf(&at, None).await;

    // Three wanted, two exist: both stream in, and the search goes on.
    let mut live = searcher
        .search_live(request(&["alpha"], 4, LONG, 3))
        .await
        .unwrap();
    let streamed = tokio::time::timeout(PATIENCE, live.updates.wait_for(|s| s.results.len() == 2))
        .await
        .expect("both results streamed before the search ended")
        .unwrap()
        .clone();
    assert!(!streamed.done, "still running: it wants a third");
    assert!(streamed.hits >= 2);
    let names: Vec<&str> = streamed
        .results
        .iter()
        .map(|r| r.names[0].as_str())
        .collect();
    assert!(names.contains(&"alpha one.txt") && names.contains(&"alpha two.txt"));
    drop(live);

    // Two wanted: done as soon as both are in, long before its timeout.
    let mut live = searcher
        .search_live(request(&["alpha"], 4, LONG, 2))
        .await
        .unwrap();
    let last = tokio::time::timeout(PATIENCE, live.updates.wait_for(|s| s.done))
        .await
        .expect("the search ended at max_results, not at its timeout")
        .unwrap()
        .clone();
    assert_eq!(last.results.len(), 2);

    // search() is the same, awaited.
    let outcome = tokio::time::timeout(PATIENCE, searcher.search(request(&["alpha"], 4, LONG, 2)))
        .await
        .expect("search() returns at max_results")
        .unwrap();
    assert_eq!(outcome.results.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_starts_on_the_first_source_without_waiting_for_the_search() {
    let at = supernode(&[]).await;
    let data = sample_bytes(3 * MIB + 7, 11);
    let id = content_id(&data);
    let shared = folder_with("movie.mkv", &data);
    let _sharer = leaf(&at, Some(shared.path())).await;
    wait_indexed(&at, 1).await;
    let downloader = leaf(&at, None).await;
    let out = tempfile::tempdir().unwrap();
    let into = out.path().join("new folder");
    let (request, progress) = long_fetch(id, &into);
    let report = tokio::time::timeout(PATIENCE, fetch::fetch(&downloader, request))
        .await
        .expect("the fetch finished while its search (120 s) still ran")
        .unwrap();
    assert_eq!(
        report.path,
        into.join("movie.mkv"),
        "the folder was created, the name from the hit"
    );
    assert_eq!(std::fs::read(&report.path).unwrap(), data);
    assert!(report.first_byte.is_some());
    let last = progress.borrow().clone();
    assert_eq!(last.name.as_deref(), Some("movie.mkv"));
    assert_eq!(last.size, Some(data.len() as u64));
    assert_eq!(last.known_sources, 1);

    // Fetched again: it is there already, nothing is downloaded.
    let (request, _) = long_fetch(id, &into);
    let again = tokio::time::timeout(PATIENCE, fetch::fetch(&downloader, request))
        .await
        .unwrap()
        .unwrap();
    assert!(again.already_present);
    assert!(again.sources.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_appears_during_the_download_is_used() {
    let at = supernode(&[]).await;
    let data = sample_bytes(4 * MIB, 12);
    let id = content_id(&data);
    // The only source at first gives two groups, then goes silent.
    let stalling = fake_source::start(data.clone(), Misbehaviour::StallAfter(2 * MIB as u64)).await;
    let file = SharedFile {
        content_id: id,
        name: "late.bin".into(),
        size: data.len() as u64,
        available: None,
    };
    let _stalling_leaf = announce(&at, stalling.addr, file).await;
    wait_indexed(&at, 1).await;
    let downloader = leaf(&at, None).await;
    let out = tempfile::tempdir().unwrap();
    let (request, mut progress) = long_fetch(id, out.path());
    let running = tokio::spawn(async move {
        let report = fetch::fetch(&downloader, request).await;
        downloader.shutdown().await;
        report
    });
    // Once the download is under way, an honest source joins.
    progress.wait_for(|p| p.verified_bytes > 0).await.unwrap();
    let shared = folder_with("late.bin", &data);
    let honest = leaf(&at, Some(shared.path())).await;
    wait_indexed(&at, 2).await;
    let report = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the late source finished the download")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&report.path).unwrap(), data);
    let honest_addr = honest.listen_addr().unwrap().to_string();
    let per_source = report.bytes_per_source();
    assert!(
        per_source.get(&honest_addr).copied().unwrap_or(0) > 0,
        "the late source delivered: {per_source:?}"
    );
    assert!(
        per_source
            .get(&stalling.addr.to_string())
            .copied()
            .unwrap_or(0)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_fetch_keeps_its_partial_and_the_next_resumes_from_it() {
    let at = supernode(&[]).await;
    let data = sample_bytes(6 * MIB, 13);
    let id = content_id(&data);
    let stalling = fake_source::start(data.clone(), Misbehaviour::StallAfter(2 * MIB as u64)).await;
    let file = SharedFile {
        content_id: id,
        name: "paused.bin".into(),
        size: data.len() as u64,
        available: None,
    };
    let stalling_leaf = announce(&at, stalling.addr, file).await;
    wait_indexed(&at, 1).await;
    let downloader = Arc::new(leaf(&at, None).await);
    let out = tempfile::tempdir().unwrap();
    let (mut request, mut progress) = long_fetch(id, out.path());
    request.config.stall_timeout = LONG; // it stays "downloading"
    let cancel = request.cancel.clone();
    let running = {
        let downloader = downloader.clone();
        tokio::spawn(async move { fetch::fetch(&downloader, request).await })
    };
    progress
        .wait_for(|p| p.verified_bytes >= 2 * MIB as u64)
        .await
        .unwrap();

    // A second fetch of the same id into the same folder fails at once.
    let (second, _) = long_fetch(id, out.path());
    let refused = tokio::time::timeout(PATIENCE, fetch::fetch(&downloader, second))
        .await
        .expect("refused at once, without searching");
    assert!(
        matches!(refused, Err(NodeError::Download(DownloadError::Locked(_)))),
        "{refused:?}"
    );

    cancel.cancel();
    let cancelled = tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            cancelled,
            Err(NodeError::Download(DownloadError::Cancelled))
        ),
        "{cancelled:?}"
    );
    assert!(
        out.path().join(partial_name(id)).exists(),
        "the partial is kept"
    );
    assert!(
        out.path().join(state_name(id)).exists(),
        "the state is kept"
    );
    assert!(!out.path().join("paused.bin").exists());

    // The stalling source goes; an honest one comes; the next fetch
    // resumes from the two groups on disk.
    stalling_leaf.shutdown().await;
    let shared = folder_with("paused.bin", &data);
    let _honest = leaf(&at, Some(shared.path())).await;
    // The downloader and the honest leaf: the stalling one is gone.
    at.wait_for(PATIENCE, |s| s.leaves == 2 && s.index_files == 1)
        .await
        .unwrap();
    let (request, _) = long_fetch(id, out.path());
    let report = tokio::time::timeout(PATIENCE, fetch::fetch(&downloader, request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.resumed_bytes, 2 * MIB as u64);
    assert_eq!(std::fs::read(&report.path).unwrap(), data);
    assert!(!out.path().join(partial_name(id)).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_with_no_source_fails_when_its_search_ends() {
    let at = supernode(&[]).await;
    let downloader = leaf(&at, None).await;
    let out = tempfile::tempdir().unwrap();
    let id = ContentId([9; 32]);
    let mut request = FetchRequest::new(id, FetchTarget::Dir(out.path().to_owned()));
    request.search_timeout = Duration::from_millis(300);
    let error = fetch::fetch(&downloader, request).await.unwrap_err();
    assert!(
        matches!(error, NodeError::NotFound(found) if found == id),
        "{error:?}"
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
}
