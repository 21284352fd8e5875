//! Downloads between real leaves on 127.0.0.1: several sources at once
//! with bad ones among them, push to a firewalled leaf, resume, and a
//! downloaded file becoming a new source.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_node::get::{self, GetOptions};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::{ContentId, SharedFile};
use canopy_testkit::fake_source::{self, Misbehaviour};
use canopy_transfer::download;
use canopy_transfer::path::TransferPath;
use common::*;

const MIB: usize = 1 << 20;

/// A leaf that announces `addr` as its own and publishes `file`, so hits
/// send downloaders to whatever listens there.
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

/// Waits until a search for `id` through `at` finds `count` sources.
async fn wait_for_sources(at: &SupernodeHandle, id: ContentId, count: usize) {
    let searcher = leaf(at, None).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = searcher
            .search(id_request(id, Duration::from_millis(300)))
            .await
            .unwrap();
        let sources = found.results.first().map_or(0, |r| r.sources.len());
        if sources >= count {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {sources} of {count} sources appeared"
        );
    }
    searcher.shutdown().await;
}

/// Get options; `target` is the file to write or a folder to write into.
fn get_options(at: &SupernodeHandle, id: ContentId, target: &Path) -> GetOptions {
    let mut options = GetOptions::new(at.local_addr(), id);
    options.output = Some(target.to_owned());
    options.search_timeout = Duration::from_millis(700);
    options.config = DownloadConfig {
        requests_per_source: 1,
        groups_per_request: 2,
        stall_timeout: Duration::from_secs(2),
        ..DownloadConfig::default()
    };
    options
}

/// What `b3sum` prints for `path`, if `b3sum` is installed.
fn b3sum(path: &Path) -> Option<String> {
    let output = std::process::Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_sources_one_corrupt_one_dying_still_complete_and_verify() {
    init_logs();
    let nodes = line(2).await;
    let data = sample_bytes(12 * MIB + 12_345, 1);
    let id = content_id(&data);
    let file = SharedFile {
        content_id: id,
        name: "movie.mkv".into(),
        size: data.len() as u64,
        available: None,
    };
    let folder = folder_with("movie.mkv", &data);
    let _honest = leaf(&nodes[0], Some(folder.path())).await;
    let corrupt = fake_source::start(data.clone(), Misbehaviour::Corrupt).await;
    let dying = fake_source::start(
        data.clone(),
        Misbehaviour::DieAfter(MIB as u64 + MIB as u64 / 2),
    )
    .await;
    let _a = announce(&nodes[0], corrupt.addr, file.clone()).await;
    let _b = announce(&nodes[0], dying.addr, file.clone()).await;
    wait_for_sources(&nodes[1], id, 3).await;

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("movie.mkv");
    let report = get::get(get_options(&nodes[1], id, &target)).await.unwrap();

    let written = std::fs::read(&target).unwrap();
    assert!(written == data, "the file differs from the original");
    assert_eq!(content_id(&written), id);
    if let Some(printed) = b3sum(&target) {
        assert_eq!(printed, id.to_hex(), "b3sum agrees with the content id");
    }
    let by_addr = |addr: std::net::SocketAddr| {
        report
            .sources
            .iter()
            .find(|s| s.source == addr.to_string())
            .unwrap()
    };
    let bad = by_addr(corrupt.addr);
    assert!(
        bad.dropped
            .as_deref()
            .is_some_and(|r| r.contains("verification")),
        "corrupt source: {bad:?}"
    );
    assert_eq!(bad.bytes, 0, "no corrupt byte counted");
    let died = by_addr(dying.addr);
    assert!(died.dropped.is_some(), "dying source: {died:?}");
    // Only whole groups count: one full group, and perhaps the file's short
    // last one (groups are not fetched in file order), never the half.
    assert!(
        died.bytes <= MIB as u64 + 12_345,
        "at most the whole groups it sent count: {died:?}"
    );
    let delivered: u64 = report.sources.iter().map(|s| s.bytes).sum();
    assert_eq!(
        delivered,
        data.len() as u64,
        "every byte counted exactly once"
    );
    // Nothing is left beside the file.
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("movie.mkv")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firewalled_leaf_serves_through_push() {
    init_logs();
    let nodes = line(2).await;
    let data = sample_bytes(3 * MIB + 7, 2);
    let id = content_id(&data);
    let folder = folder_with("behind-nat.iso", &data);
    let mut options = leaf_options(&nodes[0], Some(folder.path()));
    options.firewalled = true;
    let firewalled = start_leaf(options).await;
    assert_eq!(firewalled.listen_addr(), None, "it accepts no connections");
    wait_for_sources(&nodes[1], id, 1).await;

    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(&nodes[1], id, out.path()))
        .await
        .unwrap();
    assert_eq!(report.path, out.path().join("behind-nat.iso"));
    assert!(std::fs::read(&report.path).unwrap() == data);
    assert!(
        report.sources[0].source.ends_with("(push)"),
        "{:?}",
        report.sources
    );
    assert_eq!(report.sources[0].bytes, data.len() as u64);
    // It listens nowhere, so its dials reached our punch port: pushes.
    assert_eq!(report.sources[0].paths, vec![TransferPath::Push]);
    assert!(nodes[0].stats().pushes_routed >= 1);
    assert!(nodes[1].stats().pushes_routed >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_download_resumes_without_refetching_verified_groups() {
    init_logs();
    let nodes = line(1).await;
    let data = sample_bytes(10 * MIB, 3);
    let id = content_id(&data);
    let file = SharedFile {
        content_id: id,
        name: "resume.bin".into(),
        size: data.len() as u64,
        available: None,
    };
    // The only source stalls after four groups: the first run fails.
    let stalling = fake_source::start(data.clone(), Misbehaviour::StallAfter(4 * MIB as u64)).await;
    let announcer = announce(&nodes[0], stalling.addr, file).await;
    wait_for_sources(&nodes[0], id, 1).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("resume.bin");
    let first = get::get(get_options(&nodes[0], id, &target)).await;
    assert!(first.is_err(), "the stalled download must not complete");
    assert!(!target.exists());
    assert!(out.path().join(download::partial_name(id)).exists());
    assert!(out.path().join(download::state_name(id)).exists());

    // The stalling source leaves; an honest one arrives.
    announcer.shutdown().await;
    let folder = folder_with("resume.bin", &data);
    let honest = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 1 && s.leaves == 1)
        .await
        .unwrap();
    let second = get::get(get_options(&nodes[0], id, &target)).await.unwrap();

    assert!(std::fs::read(&target).unwrap() == data);
    assert_eq!(
        second.resumed_bytes,
        4 * MIB as u64,
        "the verified groups were kept"
    );
    assert_eq!(second.sources.len(), 1);
    assert_eq!(
        second.sources[0].bytes,
        6 * MIB as u64,
        "only the rest was fetched"
    );
    let served = honest
        .server()
        .stats()
        .bytes_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        served,
        6 * MIB as u64,
        "the honest source sent only the rest"
    );
    assert!(!out.path().join(download::state_name(id)).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloaded_file_is_then_found_as_a_new_source() {
    init_logs();
    let nodes = line(2).await;
    let data = sample_bytes(2 * MIB + 99, 4);
    let id = content_id(&data);
    let origin = folder_with("shared-once.bin", &data);
    let _origin = leaf(&nodes[0], Some(origin.path())).await;
    // The downloader's own leaf shares the folder the download lands in.
    let downloads = tempfile::tempdir().unwrap();
    let mut options = leaf_options(&nodes[1], Some(downloads.path()));
    options.rescan_interval = Some(Duration::from_millis(200));
    let _downloader = start_leaf(options).await;
    wait_for_sources(&nodes[1], id, 1).await;

    let report = get::get(get_options(&nodes[1], id, downloads.path()))
        .await
        .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data);
    // After its next rescan, the downloader is a second source.
    wait_for_sources(&nodes[0], id, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_file_is_not_overwritten_without_force() {
    init_logs();
    let nodes = line(1).await;
    let data = sample_bytes(100_000, 5);
    let id = content_id(&data);
    let folder = folder_with("keep.txt", &data);
    let _source = leaf(&nodes[0], Some(folder.path())).await;
    wait_for_sources(&nodes[0], id, 1).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("keep.txt");
    std::fs::write(&target, b"precious").unwrap();
    let refused = get::get(get_options(&nodes[0], id, &target)).await;
    assert!(refused.unwrap_err().to_string().contains("already exists"));
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    let mut forced = get_options(&nodes[0], id, &target);
    forced.force = true;
    get::get(forced).await.unwrap();
    assert!(std::fs::read(&target).unwrap() == data);
}

/// Unmounts a tmpfs when dropped, even if the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_a_clear_error_and_the_partial_state_is_kept() {
    init_logs();
    // A 2 MiB filesystem to download a 6 MiB file into. Mounting needs
    // root, which CI has; elsewhere the test says so and does nothing.
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(mounted, Ok(status) if status.success()) {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let _unmount = Mounted(dir.path().to_owned());

    let nodes = line(1).await;
    let data = sample_bytes(6 * MIB, 6);
    let id = content_id(&data);
    let folder = folder_with("large.bin", &data);
    let _source = leaf(&nodes[0], Some(folder.path())).await;
    wait_for_sources(&nodes[0], id, 1).await;
    let target = dir.path().join("large.bin");
    let error = get::get(get_options(&nodes[0], id, &target))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("No space left on device"), "{error}");
    assert!(
        error.contains(&download::partial_name(id)),
        "the error names the file: {error}"
    );
    assert!(!target.exists());
    assert!(
        dir.path().join(download::state_name(id)).exists(),
        "kept for a later resume"
    );
    assert!(dir.path().join(download::partial_name(id)).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_found_unreachable_is_marked_firewalled_and_serves_by_push() {
    init_logs();
    let nodes = line(2).await;
    let data = sample_bytes(2 * MIB + 1, 7);
    let id = content_id(&data);
    let folder = folder_with("unreachable.bin", &data);
    // It announces an address where nothing listens, as a leaf behind a
    // NAT without a port forward would.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = leaf_options(&nodes[0], Some(folder.path()));
    options.advertise = Some(nowhere);
    let _hidden = start_leaf(options).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.leaves_unreachable == 1)
        .await
        .unwrap();

    let searcher = leaf(&nodes[1], None).await;
    let found = searcher
        .search(id_request(id, Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(
        found.results[0].sources[0].firewalled,
        "hits say it is firewalled"
    );

    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(&nodes[1], id, out.path()))
        .await
        .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data);
    assert!(report.sources[0].source.ends_with("(push)"));
}
