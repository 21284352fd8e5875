//! Downloads against real servers on 127.0.0.1, as hostile places and
//! peers make them: temporary names taken by links or by someone else's
//! files, a link at the target, and dead sources ahead of the live one;
//! sources that arrive while a download runs, one dropped and given again
//! at its address; and a download dropped mid-way, whose requests stop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use canopy_core::download::DownloadConfig;
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::bandwidth::RateLimit;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::client::DirectConnector;
use canopy_transfer::download::{
    DownloadControl, DownloadError, DownloadOptions, DownloadSource, download, download_live,
    partial_name, state_name,
};
use canopy_transfer::server::ContentServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;
/// Long enough for a loaded machine; a passing run takes seconds.
const PATIENCE: Duration = Duration::from_secs(60);

struct Source {
    addr: SocketAddr,
    id: ContentId,
    data: Vec<u8>,
    catalog: Catalog,
    _dir: tempfile::TempDir,
}

/// A server sharing `len` bytes.
async fn source(len: usize) -> Source {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = sharing(len, listener.local_addr().unwrap());
    serve(
        &s,
        listener,
        ContentServer::new(s.catalog.clone(), 4),
        CancellationToken::new(),
    );
    s
}

/// `len` bytes shared in a catalog, to be served at `addr`.
fn sharing(len: usize, addr: SocketAddr) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 17 % 251) as u8).collect();
    let path = dir.path().join("file.bin");
    std::fs::write(&path, &data).unwrap();
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
    Source {
        addr,
        id,
        data,
        catalog,
        _dir: dir,
    }
}

/// Serves `s`'s catalog with `server` on `listener` until `shutdown`,
/// which drops every connection too.
fn serve(s: &Source, listener: TcpListener, server: ContentServer, shutdown: CancellationToken) {
    assert_eq!(listener.local_addr().unwrap(), s.addr);
    tokio::spawn(server.serve(listener, shutdown, TaskTracker::new()));
}

/// A source that accepts connections and never answers.
async fn dead_source() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn direct(addr: SocketAddr) -> DownloadSource {
    DownloadSource {
        label: addr.to_string(),
        connector: Arc::new(DirectConnector::new(addr, Duration::from_secs(5))),
        partial: false,
        addr: Some(addr),
    }
}

fn options(source: &Source, target: &Path) -> DownloadOptions {
    DownloadOptions {
        content_id: source.id,
        size: source.data.len() as u64,
        target: target.to_owned(),
        force: false,
        config: DownloadConfig {
            stall_timeout: Duration::from_secs(1),
            ..DownloadConfig::default()
        },
        progress: None,
    }
}

#[tokio::test]
async fn the_temporary_files_are_named_by_id_and_gone_at_the_end() {
    let s = source(3 * MIB + 5).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("film.mkv");
    download(vec![direct(s.addr)], options(&s, &target))
        .await
        .unwrap();
    assert!(std::fs::read(&target).unwrap() == s.data);
    assert_eq!(partial_name(s.id), format!(".canopy-{}.partial", s.id));
    assert!(!out.path().join(partial_name(s.id)).exists());
    assert!(!out.path().join(state_name(s.id)).exists());
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing but the file: {left:?}");
}

#[tokio::test]
async fn a_link_planted_at_the_partial_or_state_name_is_not_followed() {
    let s = source(3 * MIB).await;
    for name in [partial_name(s.id), state_name(s.id)] {
        let out = tempfile::tempdir().unwrap();
        let victim = out.path().join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, out.path().join(&name)).unwrap();
        let target = out.path().join("file.bin");
        let error = download(vec![direct(s.addr)], options(&s, &target))
            .await
            .unwrap_err();
        assert!(
            matches!(error, DownloadError::NotOurs(_)),
            "{name}: {error}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{name}");
        assert!(
            std::fs::symlink_metadata(out.path().join(&name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name}: the link is left as it was"
        );
        assert!(!target.exists());
    }
}

#[tokio::test]
async fn an_unrelated_file_at_a_temporary_name_is_not_overwritten() {
    let s = source(3 * MIB).await;
    // A file that happens to have the partial's name, with no state.
    let out = tempfile::tempdir().unwrap();
    let partial = out.path().join(partial_name(s.id));
    std::fs::write(&partial, b"someone's notes").unwrap();
    let error = download(
        vec![direct(s.addr)],
        options(&s, &out.path().join("file.bin")),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, DownloadError::NotOurs(_)), "{error}");
    assert_eq!(std::fs::read(&partial).unwrap(), b"someone's notes");

    // A file at the state's name that is not a state for this id.
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join(state_name(s.id));
    let other = format!(
        r#"{{"content_id":"{}","size":1,"tree":""}}"#,
        "00".repeat(32)
    );
    for content in [b"not json at all".to_vec(), other.into_bytes()] {
        std::fs::write(&state, &content).unwrap();
        let error = download(
            vec![direct(s.addr)],
            options(&s, &out.path().join("file.bin")),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, DownloadError::NotOurs(_)), "{error}");
        assert_eq!(std::fs::read(&state).unwrap(), content);
    }
}

#[tokio::test]
async fn a_link_at_the_target_is_neither_followed_nor_replaced_without_force() {
    let s = source(2 * MIB).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("file.bin");
    // A dangling link: "exists" would say no, and a rename would replace it.
    std::os::unix::fs::symlink(out.path().join("nowhere"), &target).unwrap();
    let error = download(vec![direct(s.addr)], options(&s, &target))
        .await
        .unwrap_err();
    assert!(matches!(error, DownloadError::Exists(_)), "{error}");
    assert!(!out.path().join("nowhere").exists(), "not followed");
    assert!(
        std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn dead_sources_ahead_of_a_live_one_do_not_stall_the_tree() {
    let s = source(4 * MIB).await;
    // Eight sources that accept and never answer, all asked before the
    // live one. One at a time, each would cost the 15 s tree timeout.
    let mut sources = Vec::new();
    for _ in 0..8 {
        sources.push(direct(dead_source().await));
    }
    sources.push(direct(s.addr));
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("file.bin");
    let started = Instant::now();
    let mut options = options(&s, &target);
    // The stall cut is not what saves it: the endgame gives the live
    // source the dead ones' groups.
    options.config.stall_timeout = Duration::from_secs(30);
    let report = download(sources, options).await.unwrap();
    let took = started.elapsed();
    assert!(std::fs::read(&target).unwrap() == s.data);
    // A bound, not a timing: less than one tree timeout for all eight.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(
        report.bytes_per_source()[&s.addr.to_string()],
        4 * MIB as u64
    );
    eprintln!("8 dead sources ahead of the live one: done in {took:?}");
}

#[tokio::test]
async fn an_interrupted_state_of_this_id_is_still_resumed() {
    let s = source(3 * MIB).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("file.bin");
    // A state and a partial of an earlier run, two groups already right.
    let tree = canopy_core::tree::tree_of(&s.data);
    let state = format!(
        r#"{{"content_id":"{}","size":{},"tree":"{}"}}"#,
        s.id,
        s.data.len(),
        hex::encode(&tree)
    );
    std::fs::write(out.path().join(state_name(s.id)), state).unwrap();
    let mut partial = s.data.clone();
    partial[2 * MIB..].fill(0);
    std::fs::write(out.path().join(partial_name(s.id)), &partial).unwrap();
    let report = download(vec![direct(s.addr)], options(&s, &target))
        .await
        .unwrap();
    assert_eq!(report.resumed_bytes, 2 * MIB as u64);
    assert!(std::fs::read(&target).unwrap() == s.data);
}

/// A port nobody listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn a_live_download_waits_for_its_first_source_and_ends_with_the_feed_still_open() {
    let s = source(3 * MIB + 1).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("live.bin");
    let (feed, sources) = tokio::sync::mpsc::channel(8);
    let running = tokio::spawn(download_live(
        sources,
        options(&s, &target),
        DownloadControl::default(),
    ));
    feed.send(direct(s.addr)).await.unwrap();
    // `feed` stays open: the download must not wait for it to close.
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("done while more sources could still come")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), s.data);
    assert!(report.first_byte.is_some());
    drop(feed);
}

#[tokio::test]
async fn a_starving_download_says_so_and_takes_the_next_source() {
    let s = source(3 * MIB).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("starving.bin");
    let (feed, sources) = tokio::sync::mpsc::channel(8);
    let starving = Arc::new(tokio::sync::Notify::new());
    let control = DownloadControl {
        starving: Some(starving.clone()),
        ..DownloadControl::default()
    };
    let running = tokio::spawn(download_live(sources, options(&s, &target), control));
    feed.send(direct(closed_port())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), starving.notified())
        .await
        .expect("told that every source failed");
    feed.send(direct(s.addr)).await.unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), s.data);
    assert_eq!(report.sources.len(), 2);
    assert!(report.sources[0].dropped.is_some());
    assert_eq!(report.sources[1].bytes, s.data.len() as u64);
}

#[tokio::test]
async fn a_cancelled_download_stops_and_a_closed_feed_with_no_source_is_no_sources() {
    let s = source(2 * MIB).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("never.bin");
    let (feed, sources) = tokio::sync::mpsc::channel::<DownloadSource>(8);
    let control = DownloadControl::default();
    control.cancel.cancel();
    let error = download_live(sources, options(&s, &target), control)
        .await
        .unwrap_err();
    assert!(matches!(error, DownloadError::Cancelled), "{error:?}");
    drop(feed);
    let (feed, sources) = tokio::sync::mpsc::channel::<DownloadSource>(8);
    drop(feed);
    let error = download_live(sources, options(&s, &target), DownloadControl::default())
        .await
        .unwrap_err();
    assert!(matches!(error, DownloadError::NoSources), "{error:?}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[tokio::test]
async fn a_second_source_at_one_address_is_not_taken() {
    let s = source(3 * MIB).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("once.bin");
    let report = download(vec![direct(s.addr), direct(s.addr)], options(&s, &target))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), s.data);
    assert_eq!(report.sources.len(), 2);
    assert_eq!(report.sources[0].bytes, s.data.len() as u64);
    assert_eq!(report.sources[1].bytes, 0);
    assert_eq!(
        report.sources[1].dropped.as_deref(),
        Some("another source has this address")
    );
}

/// Waits until `condition` holds, checking every 10 ms; panics after
/// `patience` saying what it waited for.
async fn wait_until(what: &str, patience: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Options whose progress goes to the returned counter of verified bytes.
fn counted(options: DownloadOptions) -> (DownloadOptions, Arc<AtomicU64>) {
    let verified = Arc::new(AtomicU64::new(0));
    let seen = verified.clone();
    let options = DownloadOptions {
        progress: Some(Arc::new(move |p| {
            seen.store(p.verified_bytes, Ordering::SeqCst);
        })),
        ..options
    };
    (options, verified)
}

#[tokio::test]
async fn a_dropped_download_stops_its_requests() {
    // One request for the whole file, at 128 KiB/s: two minutes of it
    // left when the download is dropped, unless its requests stop too.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = sharing(16 * MIB, listener.local_addr().unwrap());
    let server =
        ContentServer::new(s.catalog.clone(), 4).with_upload_limit(RateLimit::new(128 << 10));
    serve(&s, listener, server.clone(), CancellationToken::new());
    let out = tempfile::tempdir().unwrap();
    let mut options = options(&s, &out.path().join("dropped.bin"));
    options.config = DownloadConfig {
        request_time: Duration::ZERO,
        stall_timeout: Duration::from_secs(60),
        ..DownloadConfig::default()
    };
    let running = tokio::spawn(download(vec![direct(s.addr)], options));
    wait_until("the server to send file bytes", PATIENCE, || {
        server.uploaded_bytes() > 0
    })
    .await;
    assert!(server.uploads_in_progress() >= 1);
    // Dropped mid-way, as a paused daemon download's future is.
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    // Far sooner than the request would end on its own.
    wait_until(
        "the server to see the download's connections closed",
        Duration::from_secs(20),
        || {
            server.uploads_in_progress() == 0
                && server.stats().open_connections.load(Ordering::SeqCst) == 0
        },
    )
    .await;
    let sent = server.uploaded_bytes();
    assert!(sent < s.data.len() as u64 / 2, "{sent} bytes sent");
}

#[tokio::test]
async fn a_source_dropped_mid_download_is_told_of_and_taken_again_at_its_address() {
    // The seed serves at 1 MiB/s, then stops, dropping its connections.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = sharing(8 * MIB, listener.local_addr().unwrap());
    let first = CancellationToken::new();
    let slow =
        ContentServer::new(s.catalog.clone(), 4).with_upload_limit(RateLimit::new(MIB as u64));
    serve(&s, listener, slow, first.clone());
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("again.bin");
    let (options, verified) = counted(options(&s, &target));
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::channel(64);
    let control = DownloadControl {
        dropped: Some(dropped_tx),
        ..DownloadControl::default()
    };
    let (feed, sources) = tokio::sync::mpsc::channel(8);
    feed.send(direct(s.addr)).await.unwrap();
    let running = tokio::spawn(download_live(sources, options, control));
    wait_until("a verified group", PATIENCE, || {
        verified.load(Ordering::SeqCst) >= MIB as u64
    })
    .await;
    first.cancel();
    let told = tokio::time::timeout(PATIENCE, dropped.recv())
        .await
        .expect("told the seed was dropped");
    assert_eq!(told, Some(s.addr.to_string()));
    // Back at the same address, and given again.
    let listener = TcpListener::bind(s.addr).await.unwrap();
    serve(
        &s,
        listener,
        ContentServer::new(s.catalog.clone(), 4),
        CancellationToken::new(),
    );
    feed.send(direct(s.addr)).await.unwrap();
    let report = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("finished")
        .unwrap()
        .unwrap();
    assert!(std::fs::read(&target).unwrap() == s.data);
    assert_eq!(report.sources.len(), 2);
    assert!(report.sources[0].dropped.is_some(), "{report:?}");
    assert!(report.sources[1].dropped.is_none(), "{report:?}");
    assert!(report.sources[1].bytes > 0, "{report:?}");
    assert_eq!(
        report.sources[0].bytes + report.sources[1].bytes,
        s.data.len() as u64
    );
}
