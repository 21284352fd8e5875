//! Download poisoning and hostile names: a source that lies about a file's
//! size must not spoil the honest sources' group, and a name from the
//! network must not become a hidden file, an option or a bidi trick on
//! disk.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_node::get::{self, GetOptions};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::{ContentId, SharedFile};
use canopy_testkit::overlay::{PATIENCE, id_request, leaf, sample_bytes, start_leaf, supernode};
use canopy_transfer::Catalog;
use canopy_transfer::catalog::CatalogEntry;
use canopy_transfer::server::ContentServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;

/// A leaf that announces `addr` as its own and publishes `file`.
async fn announce(at: &SupernodeHandle, addr: SocketAddr, file: SharedFile) -> LeafHandle {
    let mut options = LeafOptions::new(at.local_addr());
    options.advertise = Some(addr);
    let handle = start_leaf(options).await;
    handle.set_shares(vec![file]).await.unwrap();
    handle
}

/// Waits until `at` indexes `files` files.
async fn wait_indexed(at: &SupernodeHandle, files: usize) {
    at.wait_for(PATIENCE, |s| s.index_files == files)
        .await
        .unwrap();
}

fn get_options(at: &SupernodeHandle, id: ContentId, into: &Path) -> GetOptions {
    let mut options = GetOptions::new(at.local_addr(), id);
    options.output = Some(into.to_owned());
    options.search_timeout = Duration::from_millis(700);
    options.config = DownloadConfig {
        stall_timeout: Duration::from_secs(2),
        ..DownloadConfig::default()
    };
    options
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_size_from_the_first_hit_does_not_poison_the_download() {
    let at = supernode(&[]).await;
    let data = sample_bytes(3 * MIB + 11, 4);
    let id = ContentId(*blake3::hash(&data).as_bytes());
    // The liar publishes first, so its hit comes first, with a size of
    // its own; it points at a port where nothing listens.
    let nowhere = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let _liar = announce(
        &at,
        nowhere,
        SharedFile {
            content_id: id,
            name: "payload.bin".into(),
            size: 5 * MIB as u64,
            available: None,
        },
    )
    .await;
    wait_indexed(&at, 1).await;
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("payload.bin"), &data).unwrap();
    let _honest = [
        leaf(&at, Some(folder.path())).await,
        leaf(&at, Some(folder.path())).await,
    ];
    wait_indexed(&at, 3).await;

    // The search sees two groups for the id: the lie, and the truth.
    let searcher = leaf(&at, None).await;
    let found = searcher
        .search(id_request(id, Duration::from_millis(500)))
        .await
        .unwrap();
    let mut groups: Vec<(u64, usize)> = found
        .results
        .iter()
        .map(|r| (r.size, r.sources.len()))
        .collect();
    groups.sort_unstable();
    assert_eq!(groups, vec![(data.len() as u64, 2), (5 * MIB as u64, 1)]);

    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(&at, id, out.path())).await.unwrap();
    assert_eq!(report.size, data.len() as u64);
    assert!(std::fs::read(out.path().join("payload.bin")).unwrap() == data);
    assert_eq!(report.sources.len(), 2, "the liar's group was not used");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_name_is_saved_made_safe() {
    let at = supernode(&[]).await;
    // The bytes come from a plain server; the hit's name is the attack.
    let dir = tempfile::tempdir().unwrap();
    let data = sample_bytes(2 * MIB, 5);
    let id = ContentId(*blake3::hash(&data).as_bytes());
    let path = dir.path().join("payload");
    std::fs::write(&path, &data).unwrap();
    let catalog = Catalog::new();
    catalog.replace([(
        id,
        CatalogEntry {
            path,
            size: data.len() as u64,
            tree: canopy_core::tree::tree_of(&data).into(),
        },
    )]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    tokio::spawn(ContentServer::new(catalog, 4).serve(
        listener,
        CancellationToken::new(),
        TaskTracker::new(),
    ));
    for (name, saved) in [
        (".bash_profile", "bash_profile"),
        ("-rf", "rf"),
        ("photo\u{202E}gpj.exe", "photogpj.exe"),
        ("CON.txt", "_CON.txt"),
        ("a<b>.txt", "a_b_.txt"),
    ] {
        let publisher = announce(
            &at,
            server_addr,
            SharedFile {
                content_id: id,
                name: name.into(),
                size: data.len() as u64,
                available: None,
            },
        )
        .await;
        wait_indexed(&at, 1).await;
        let out = tempfile::tempdir().unwrap();
        let report = get::get(get_options(&at, id, out.path())).await.unwrap();
        assert_eq!(report.path, out.path().join(saved), "{name:?}");
        let names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![saved.to_owned()],
            "{name:?}: only the safe name"
        );
        publisher.shutdown().await;
        wait_indexed(&at, 0).await;
    }
}
