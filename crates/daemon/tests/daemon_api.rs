//! The daemon behind its HTTP API, end to end: a supernode and a sharing
//! leaf on 127.0.0.1, a daemon in a temporary data directory, and the
//! CLI's client finding it through `control.json` and the token file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use canopy_daemon::client::ControlClient;
use canopy_daemon::model::{AddDownload, DownloadState, SearchSpec, SettingsPatch};
use canopy_daemon::{DaemonOptions, settings};
use canopy_node::fetch::{self, FetchRequest, FetchTarget};
use canopy_node::leaf::LeafOptions;
use canopy_testkit::overlay::{self, PATIENCE, localhost};

#[tokio::test]
async fn search_then_download_a_link_through_the_api() {
    overlay::init_logs();
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let bytes = overlay::sample_bytes(2 << 20, 77);
    std::fs::write(shared.join("holiday video.mkv"), &bytes).unwrap();
    let supernode = overlay::supernode(&[]).await;
    let _sharer = overlay::leaf(&supernode, Some(&shared)).await;

    let data = root.path().join("data");
    let downloads = root.path().join("downloads");
    let handle = start_daemon(supernode.local_addr(), &data, &downloads).await;
    assert!(
        handle
            .ui_url()
            .starts_with(&format!("{}/?token=", handle.control_url()))
    );

    let client = ControlClient::find(&data)
        .await
        .expect("found through control.json");
    assert_eq!(client.url(), handle.control_url());
    let status = client.status().await.unwrap();
    assert_eq!(status.node_id, handle.leaf().node_id().to_string());
    assert_eq!(status.supernodes, [supernode.local_addr().to_string()]);

    let started = client
        .start_search(&SearchSpec {
            query: Some("holiday".into()),
            timeout_secs: Some(2.0),
            ..SearchSpec::default()
        })
        .await
        .unwrap();
    let mut events = client.search_events(&started.id).await.unwrap();
    let mut last = None;
    while let Some(view) = events.next().await.unwrap() {
        last = Some(view);
    }
    let found = last.expect("at least the final view");
    assert!(found.done);
    assert_eq!(found.results.len(), 1, "{found:?}");
    let result = &found.results[0];
    assert_eq!(result.name, "holiday video.mkv");
    assert_eq!(result.names, ["holiday video.mkv"]);

    let (view, added) = client
        .add_download(&AddDownload {
            link: Some(result.link.clone()),
            ..AddDownload::default()
        })
        .await
        .unwrap();
    assert!(added);
    assert_eq!(view.name, "holiday video.mkv", "named by the link at once");
    assert_eq!(view.size, Some(bytes.len() as u64));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let view = client.download(&result.content_id).await.unwrap();
        if view.state == DownloadState::Done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read(downloads.join("holiday video.mkv")).unwrap(),
        bytes
    );
    let settings = client
        .update_settings(&SettingsPatch {
            upload_slots: Some(2),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    assert_eq!(settings.upload_slots, 2);
    assert_eq!(handle.leaf().server().upload_slots(), 2, "applied live");
    let shares = client.shares().await.unwrap();
    assert_eq!(shares.downloads_dir, downloads.display().to_string());
    assert!(
        shares
            .folders
            .iter()
            .any(|f| f.path == downloads.display().to_string())
    );

    handle.shutdown().await;
    assert!(
        ControlClient::find(&data).await.is_none(),
        "gone after a clean stop"
    );
}

#[tokio::test]
async fn uploads_are_listed_while_they_run_under_the_upload_limit() {
    overlay::init_logs();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let downloads = root.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    // The daemon shares its downloads folder, which holds a file already.
    let bytes = overlay::sample_bytes(3 << 20, 78);
    std::fs::write(downloads.join("shared.bin"), &bytes).unwrap();
    let id = canopy_share::hash_file(&downloads.join("shared.bin")).unwrap();
    let supernode = overlay::supernode(&[]).await;
    let handle = start_daemon(supernode.local_addr(), &data, &downloads).await;
    let client = ControlClient::find(&data).await.unwrap();
    assert_eq!(client.status().await.unwrap().shared_files, 1);
    assert!(client.uploads().await.unwrap().is_empty());

    // Another leaf downloads it, slowly: our uploads are limited, live.
    client
        .update_settings(&SettingsPatch {
            upload_rate_limit: Some(1 << 20),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    assert_eq!(handle.leaf().upload_limit().rate(), 1 << 20);
    let downloader = overlay::leaf(&supernode, None).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().to_owned();
    let started = tokio::time::Instant::now();
    let fetching = tokio::spawn(async move {
        let request = FetchRequest::new(id, FetchTarget::Dir(target));
        let report = fetch::fetch(&downloader, request).await;
        downloader.shutdown().await;
        report
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let upload = loop {
        let uploads = client.uploads().await.unwrap();
        if let Some(upload) = uploads.into_iter().find(|u| u.bytes > 0) {
            break upload;
        }
        assert!(tokio::time::Instant::now() < deadline, "no upload listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(upload.content_id, id.to_hex());
    assert_eq!(upload.name, "shared.bin");
    assert!(upload.peer.starts_with("127.0.0.1:"), "{}", upload.peer);
    assert!(
        upload.length > 0 && upload.bytes <= upload.length,
        "{upload:?}"
    );
    assert!(upload.started_at > 0);
    let report = fetching.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "3 MiB at 1 MiB/s took {took:?}"
    );
    assert_eq!(std::fs::read(&report.path).unwrap(), bytes);
    let totals = client.status().await.unwrap().totals;
    assert!(totals.uploaded_bytes >= bytes.len() as u64, "{totals:?}");
    handle.shutdown().await;
}

/// A daemon whose leaf joins `supernode`, on ephemeral ports, sharing its
/// downloads folder; returned once the leaf has joined.
async fn start_daemon(
    supernode: std::net::SocketAddr,
    data: &std::path::Path,
    downloads: &std::path::Path,
) -> canopy_daemon::DaemonHandle {
    let mut leaf = LeafOptions::new(supernode);
    leaf.listen = Some(localhost());
    leaf.data_dir = Some(data.to_owned());
    leaf.reconnect = true;
    let handle = canopy_daemon::start(DaemonOptions {
        leaf,
        control: localhost(),
        downloads_dir: downloads.to_owned(),
        share_downloads: true,
        settings: settings::defaults(),
    })
    .await
    .unwrap();
    handle.leaf().wait_connected(PATIENCE).await.unwrap();
    handle
}
