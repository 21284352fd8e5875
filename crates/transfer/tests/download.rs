//! Downloads against real servers on 127.0.0.1, as hostile places and
//! peers make them: temporary names taken by links or by someone else's
//! files, a link at the target, and dead sources ahead of the live one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_core::download::DownloadConfig;
use canopy_proto::ContentId;
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::client::DirectConnector;
use canopy_transfer::download::{
    DownloadError, DownloadOptions, DownloadSource, download, partial_name, state_name,
};
use canopy_transfer::server::ContentServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;

struct Source {
    addr: SocketAddr,
    id: ContentId,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// A server sharing `len` bytes.
async fn source(len: usize) -> Source {
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ContentServer::new(catalog, 4).serve(
        listener,
        CancellationToken::new(),
        TaskTracker::new(),
    ));
    Source {
        addr,
        id,
        data,
        _dir: dir,
    }
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
