//! A leaf's shares while it runs, against real nodes on 127.0.0.1: a leaf
//! with no shares joins; folders are added and removed live (and the
//! rescan loop follows the changing list); one file shared at once is
//! served and findable without waiting for a rescan; a leaf's uploads keep
//! to its upload limit and are listed while they run. And bootstrap: a
//! leaf and a supernode given only a host name reach a supernode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use canopy_node::NodeError;
use canopy_node::addr::HostPort;
use canopy_node::leaf::{self, LeafHandle, LeafOptions, PushWay};
use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::ContentId;
use canopy_share::ShareError;
use canopy_transfer::bandwidth::RateLimit;
use canopy_transfer::client::{HttpConn, read_limited};
use common::*;
use http_body_util::BodyExt;
use tokio::time::Instant;

/// Searches `words` through `searcher` until `found` holds of the content
/// ids found (each search waits at most 300 ms); false after PATIENCE.
async fn search_until(
    searcher: &LeafHandle,
    words: &[&str],
    found: impl Fn(&[ContentId]) -> bool,
) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let outcome = searcher
            .search(request(words, 4, Duration::from_millis(300), 10))
            .await
            .unwrap();
        let ids: Vec<ContentId> = outcome.results.iter().map(|r| r.content_id).collect();
        if found(&ids) {
            return true;
        }
    }
    false
}

/// Fetches `/content/<id>` from `leaf`'s server: the status and body.
async fn fetch(leaf: &LeafHandle, id: ContentId) -> (u16, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(leaf.listen_addr().unwrap())
        .await
        .unwrap();
    let mut conn = HttpConn::handshake(stream).await.unwrap();
    let response = conn.get(&format!("/content/{id}"), None).await.unwrap();
    let status = response.status().as_u16();
    let body = read_limited(response.into_body(), 1 << 20).await.unwrap();
    (status, body.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_with_no_shares_joins_searches_and_serves_nothing() {
    let s = supernode(&[]).await;
    let folder = shared_folder(&["meadow.txt"]);
    let sharer = leaf(&s, Some(folder.path())).await;
    let empty = leaf(&s, None).await;
    let summary = empty.share_summary();
    assert!(summary.folders.is_empty());
    assert_eq!((summary.files, summary.bytes), (0, 0));
    assert!(empty.catalog().is_empty());
    assert_eq!(empty.status().shared_files, 0);
    let meadow = content_id(b"meadow.txt");
    assert!(search_until(&empty, &["meadow"], |ids| ids.contains(&meadow)).await);
    assert_eq!(fetch(&empty, meadow).await.0, 404);
    empty.shutdown().await;
    sharer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn share_file_serves_and_publishes_at_once() {
    let s = supernode(&[]).await;
    // No rescan loop at all: only share_file can make the file known.
    let mut options = leaf_options(&s, None);
    options.rescan_interval = None;
    let sharer = start_leaf(options).await;
    let searcher = leaf(&s, None).await;

    let downloads = tempfile::tempdir().unwrap();
    let path = downloads.path().join("harvest moon.ogg");
    let data = sample_bytes(300_000, 7);
    std::fs::write(&path, &data).unwrap();
    let id = content_id(&data);
    sharer.share_file(path.clone()).await.unwrap();

    // Served as soon as share_file returns.
    let entry = sharer.catalog().get(&id).expect("in the catalog");
    assert_eq!(entry.path, path.canonicalize().unwrap());
    let (status, body) = fetch(&sharer, id).await;
    assert_eq!(status, 200);
    assert!(body == data);
    let summary = sharer.share_summary();
    assert_eq!((summary.files, summary.bytes), (1, 300_000));
    assert_eq!(sharer.status().shared_files, 1);
    // And found by others, with no rescan to wait for.
    let started = Instant::now();
    assert!(search_until(&searcher, &["harvest", "moon"], |ids| ids == [id]).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A rescan keeps a file shared one by one (it is outside every folder).
    let summary = sharer.rescan().await.unwrap();
    assert_eq!(summary.files, 1);
    assert!(sharer.catalog().contains(&id));
    // Once gone from the disk, the next rescan drops it.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(sharer.rescan().await.unwrap().files, 0);
    assert!(sharer.catalog().is_empty());
    assert!(
        sharer
            .share_file(downloads.path().join("nothing"))
            .await
            .is_err()
    );
    // Nor a link (to a file outside), nor a folder.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("private"), b"secret").unwrap();
    let link = downloads.path().join("link.txt");
    std::os::unix::fs::symlink(outside.path().join("private"), &link).unwrap();
    assert!(sharer.share_file(link).await.is_err());
    assert!(sharer.share_file(outside.path().to_owned()).await.is_err());
    assert!(sharer.catalog().is_empty());

    searcher.shutdown().await;
    sharer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn folders_are_added_and_removed_while_the_leaf_runs() {
    let s = supernode(&[]).await;
    let mut options = leaf_options(&s, None);
    // A fast rescan loop, which must follow the folder list as it changes.
    options.rescan_interval = Some(Duration::from_millis(100));
    let sharer = start_leaf(options).await;
    let searcher = leaf(&s, None).await;
    let folder = shared_folder(&["alder.txt", "birch.txt"]);
    let canonical = folder.path().canonicalize().unwrap();
    let (alder, birch) = (content_id(b"alder.txt"), content_id(b"birch.txt"));

    let summary = sharer.add_share(folder.path().to_owned()).await.unwrap();
    assert_eq!(summary.folders.len(), 1);
    assert_eq!(summary.folders[0].path, canonical);
    assert_eq!(
        (summary.folders[0].files, summary.folders[0].bytes),
        (2, 18)
    );
    assert_eq!((summary.files, summary.bytes), (2, 18));
    assert!(sharer.catalog().contains(&alder) && sharer.catalog().contains(&birch));
    assert!(search_until(&searcher, &["alder"], |ids| ids == [alder]).await);
    // Adding it again changes nothing.
    assert_eq!(
        sharer
            .add_share(folder.path().to_owned())
            .await
            .unwrap()
            .folders
            .len(),
        1
    );

    // The rescan loop picks up a new file in the added folder.
    std::fs::write(folder.path().join("cedar.txt"), b"cedar.txt").unwrap();
    let cedar = content_id(b"cedar.txt");
    let deadline = Instant::now() + PATIENCE;
    while !sharer.catalog().contains(&cedar) {
        assert!(
            Instant::now() < deadline,
            "the rescan loop missed cedar.txt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(search_until(&searcher, &["cedar"], |ids| ids == [cedar]).await);

    let summary = sharer.remove_share(folder.path().to_owned()).await.unwrap();
    assert!(summary.folders.is_empty());
    assert_eq!(summary.files, 0);
    assert!(sharer.catalog().is_empty());
    assert_eq!(fetch(&sharer, alder).await.0, 404);
    assert!(search_until(&searcher, &["alder"], <[ContentId]>::is_empty).await);
    // And the loop, still running, does not bring it back.
    let rescanned = sharer.rescan().await.unwrap();
    assert_eq!(rescanned.files, 0);

    let not_shared = sharer.remove_share(folder.path().to_owned()).await;
    assert!(
        matches!(not_shared, Err(NodeError::NotShared(_))),
        "{not_shared:?}"
    );
    let file = folder.path().join("alder.txt");
    let not_a_folder = sharer.add_share(file).await;
    assert!(
        matches!(
            not_a_folder,
            Err(NodeError::Share(ShareError::NotADirectory { .. }))
        ),
        "{not_a_folder:?}"
    );
    assert!(sharer.share_summary().folders.is_empty());
    searcher.shutdown().await;
    sharer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_given_only_a_host_name_reaches_its_supernode() {
    let s = supernode(&[]).await;
    let mut options = LeafOptions::new(s.local_addr());
    options.supernodes.clear();
    let name: HostPort = format!("localhost:{}", s.local_addr().port())
        .parse()
        .unwrap();
    options.bootstrap = vec![name];
    let joined = leaf::start(options).await.unwrap();
    assert_eq!(
        joined.wait_connected(PATIENCE).await.unwrap(),
        s.local_addr()
    );
    joined.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_leaf_with_an_unresolvable_bootstrap_says_so() {
    let mut options = LeafOptions::new(localhost());
    options.supernodes.clear();
    options.bootstrap = vec!["no-such-seed.invalid".parse().unwrap()];
    let lost = leaf::start(options).await.unwrap();
    let error = lost.wait_connected(PATIENCE).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no address found for bootstrap no-such-seed.invalid:6346"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supernode_given_a_bootstrap_name_links_to_the_supernode_there() {
    let first = supernode(&[]).await;
    let mut options = SupernodeOptions::new(localhost());
    options.bootstrap = vec![
        format!("localhost:{}", first.local_addr().port())
            .parse()
            .unwrap(),
    ];
    options.peers_wanted = 1;
    let second = supernode::start(options).await.unwrap();
    second
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .expect("the bootstrap supernode was not reached");
    first
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leafs_uploads_keep_to_its_limit_and_are_listed_while_they_run() {
    const MIB: u64 = 1 << 20;
    let s = supernode(&[]).await;
    let data = sample_bytes(MIB as usize, 3);
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("river.flac"), &data).unwrap();
    let mut options = leaf_options(&s, Some(folder.path()));
    options.upload_limit = RateLimit::new(512 * 1024);
    let sharer = start_leaf(options).await;
    let id = content_id(&data);

    let started = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(sharer.listen_addr().unwrap())
        .await
        .unwrap();
    let local = stream.local_addr().unwrap();
    let mut conn = HttpConn::handshake(stream).await.unwrap();
    let response = conn.get(&format!("/content/{id}"), None).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut listed = false;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
        }
        if !listed && received.len() < MIB as usize {
            let uploads = sharer.server().uploads();
            assert_eq!(uploads.len(), 1, "{uploads:?}");
            assert_eq!((uploads[0].peer, uploads[0].content_id), (local, id));
            assert!(uploads[0].path.ends_with("river.flac"));
            listed = true;
        }
    }
    let took = started.elapsed();
    assert!(listed && received == data);
    assert_eq!(sharer.upload_limit().transferred(), MIB);
    assert_eq!(sharer.server().uploaded_bytes(), MIB);
    // 1 MiB at 512 KiB/s, less the 64 KiB the bucket starts with.
    let floor = Duration::from_secs_f64((MIB - 64 * 1024) as f64 / (512.0 * 1024.0));
    assert!(took >= floor, "took {took:?}, under {floor:?}");
    sharer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_upload_is_listed_and_counted_like_a_direct_one() {
    let s = supernode(&[]).await;
    let data = sample_bytes(256 * 1024, 5);
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("behind-nat.iso"), &data).unwrap();
    let mut options = leaf_options(&s, Some(folder.path()));
    options.firewalled = true;
    // Slow enough that the upload is still running when we look.
    options.upload_limit = RateLimit::new(128 * 1024);
    let firewalled = start_leaf(options).await;
    let downloader = leaf(&s, None).await;
    let id = content_id(&data);

    let tracker = tokio_util::task::TaskTracker::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let callback =
        canopy_transfer::push::CallbackListener::bind(localhost(), shutdown.clone(), &tracker)
            .await
            .unwrap();
    let pushed = callback.await_push_from(firewalled.node_id()).unwrap();
    downloader
        .push_sender()
        .push(
            firewalled.node_id(),
            id,
            callback.local_addr(),
            PushWay::Connect,
            None,
        )
        .await
        .unwrap();
    let stream = tokio::time::timeout(PATIENCE, pushed)
        .await
        .unwrap()
        .unwrap();
    let mut conn = HttpConn::handshake(stream).await.unwrap();
    let response = conn.get(&format!("/content/{id}"), None).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.is_empty() {
        if let Ok(data) = body.frame().await.unwrap().unwrap().into_data() {
            received.extend_from_slice(&data);
        }
    }
    let uploads = firewalled.server().uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    // The pushed upload's peer is the callback address it connected to.
    assert_eq!(
        (uploads[0].peer, uploads[0].content_id),
        (callback.local_addr(), id)
    );
    assert_eq!(uploads[0].length, data.len() as u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert!(received == data);
    assert_eq!(firewalled.server().uploaded_bytes(), data.len() as u64);
    assert_eq!(firewalled.upload_limit().transferred(), data.len() as u64);
    let deadline = Instant::now() + PATIENCE;
    while !firewalled.server().uploads().is_empty() {
        assert!(Instant::now() < deadline, "the upload stayed listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    downloader.shutdown().await;
    firewalled.shutdown().await;
}

/// A data directory inside a shared folder: the leaf's own files (its key,
/// the control API's token, the caches) are never shared, by a scan or by
/// `share_file`; a subfolder of it (the downloads folder may be one) is.
#[tokio::test(flavor = "multi_thread")]
async fn the_leafs_own_data_directory_files_are_never_shared() {
    let s = supernode(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("canopy-data");
    std::fs::create_dir_all(data.join("downloads")).unwrap();
    std::fs::write(data.join("control.token"), "secret").unwrap();
    std::fs::write(data.join("downloads").join("kept.bin"), b"a download").unwrap();
    std::fs::write(home.path().join("song.flac"), b"music").unwrap();
    let mut options = LeafOptions::new(s.local_addr());
    options.shares = vec![home.path().to_owned()];
    options.data_dir = Some(data.clone());
    let sharer = leaf::start(options).await.unwrap();
    let catalog = sharer.catalog();
    assert!(catalog.get(&content_id(b"music")).is_some());
    assert!(catalog.get(&content_id(b"a download")).is_some());
    assert!(catalog.get(&content_id(b"secret")).is_none(), "the token");
    let key = std::fs::read(data.join("leaf.key")).unwrap();
    assert!(catalog.get(&content_id(&key)).is_none(), "the node's key");
    assert_eq!(catalog.len(), 2, "only the song and the download");
    assert!(sharer.share_file(data.join("leaf.key")).await.is_err());
    assert_eq!(catalog.len(), 2);
    sharer.shutdown().await;
}
