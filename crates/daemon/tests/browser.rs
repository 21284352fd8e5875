//! The web UI in a real browser (Debian's chromium, headless, through
//! chromedriver): first over the real HTTP server and a fake daemon
//! (every view renders, runs clean under the server's CSP, streams a
//! search live, and sends what the API expects), then the whole thing: a
//! supernode and two leaves, a search typed into the page of one, Download
//! clicked, and the file verified on disk.
//!
//! Screenshots go to `target/test-output/browser/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

#[path = "support/fake_control.rs"]
mod fake_control;
#[path = "browser/harness.rs"]
mod harness;

use std::sync::Arc;

use canopy_daemon::DaemonOptions;
use canopy_daemon::api::{self, Token};
use canopy_daemon::control::Control;
use canopy_daemon::model::{DownloadState, SearchView, Settings};
use canopy_testkit::overlay;
use fake_control::FakeControl;
use harness::Browser;
use tokio_util::sync::CancellationToken;

/// Errors the page counted (script errors, CSP violations).
async fn page_errors(browser: &Browser) -> String {
    browser
        .attr("html", "data-errors")
        .await
        .unwrap_or_default()
}

/// The control API and web UI over a fake daemon whose searches the test drives.
struct FakeLeaf {
    url: String,
    token: Token,
    control: Arc<FakeControl>,
    stop: CancellationToken,
    _data: tempfile::TempDir,
}

async fn fake_leaf() -> FakeLeaf {
    let data = tempfile::tempdir().unwrap();
    let token = Token::load_or_create(data.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let control = Arc::new(FakeControl::new(false));
    let stop = CancellationToken::new();
    tokio::spawn(api::serve(
        control.clone(),
        listener,
        token.clone(),
        stop.clone(),
    ));
    FakeLeaf {
        url,
        token,
        control,
        stop,
        _data: data,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_view_works_over_the_real_server_and_runs_clean_under_its_csp() {
    let leaf = fake_leaf().await;
    let control = &leaf.control;
    let browser = Browser::start(1280, 900).await;

    // The URL printed at start-up signs the browser in.
    browser
        .open(&format!("{}/?token={}", leaf.url, leaf.token.as_str()))
        .await;
    browser.wait_for("[data-testid=search-query]").await;

    // Search (Enter submits: the form works from the keyboard); results
    // stream in over the event stream while the search runs.
    browser
        .type_into("[data-testid=search-query]", "hello\u{E007}")
        .await;
    browser
        .wait_until("the page to follow the search", || async {
            (control.watchers("s1") > 0).then_some(())
        })
        .await;
    let mut found = fake_control::result('a', "hello world.txt", 2);
    // A name is a peer's claim: this one must show as text, never run.
    found.names.push("<img src=x onerror=alert(1)>.txt".into());
    found.firewalled_sources = 1;
    let mut view = SearchView {
        id: "s1".into(),
        query: "hello".into(),
        hits: 2,
        results: vec![found.clone()],
        ..SearchView::default()
    };
    assert!(control.publish("s1", view.clone()));
    let row = format!(
        "[data-testid=result-row][data-content-id='{}']",
        found.content_id
    );
    browser.wait_for(&row).await;
    browser
        .wait_for_text("[data-testid=search-status]", "a running search", |t| {
            t.starts_with("Searching")
        })
        .await;
    view.results
        .push(fake_control::result('b', "hello again.txt", 1));
    view.done = true;
    view.elapsed_ms = 300;
    assert!(control.publish("s1", view));
    browser
        .wait_for_text("[data-testid=search-status]", "the search done", |t| {
            t.starts_with("2 results")
        })
        .await;
    let variants = browser
        .attr(&format!("{row} [data-testid=result-variants]"), "title")
        .await
        .unwrap();
    assert_eq!(variants, "<img src=x onerror=alert(1)>.txt");
    let images = browser
        .client()
        .find_all(fantoccini::Locator::Css("main img"))
        .await
        .unwrap();
    assert!(images.is_empty(), "a peer's name became markup");
    assert_eq!(
        browser
            .text(&format!("{row} [data-testid=result-sources]"))
            .await
            .unwrap(),
        "2 (1 firewalled)"
    );
    browser.screenshot("fake-search").await;

    // Download: the row's button queues its link.
    browser
        .click(&format!("{row} [data-testid=result-download]"))
        .await;
    browser
        .wait_for_text(
            &format!("{row} [data-testid=result-download]"),
            "Queued",
            |t| t == "Queued",
        )
        .await;
    let queued = control.downloads();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].id.as_str(), queued[0].name.as_str()),
        (found.content_id.as_str(), "hello world.txt")
    );

    // The queue: pause, priority up, cancel, each reaching the daemon.
    browser.click("[data-testid=nav-downloads]").await;
    let entry = format!("[data-testid=download-row][data-id='{}']", found.content_id);
    browser
        .wait_for(&format!("{entry}[data-state=queued]"))
        .await;
    browser
        .click(&format!("{entry} [data-testid=download-pause]"))
        .await;
    browser
        .wait_for(&format!("{entry}[data-state=paused]"))
        .await;
    assert_eq!(
        control.download(&found.content_id).unwrap().state,
        DownloadState::Paused
    );
    browser
        .click(&format!("{entry} [data-testid=download-up]"))
        .await;
    browser
        .wait_for_text(
            &format!("{entry} [data-testid=download-priority]"),
            "priority 1",
            |t| t == "1",
        )
        .await;
    assert_eq!(control.download(&found.content_id).unwrap().priority, 1);
    browser.screenshot("fake-downloads").await;
    browser
        .click(&format!("{entry} [data-testid=download-cancel]"))
        .await;
    browser
        .wait_until("the entry to leave the page", || async {
            browser
                .client()
                .find_all(fantoccini::Locator::Css(&entry))
                .await
                .ok()?
                .is_empty()
                .then_some(())
        })
        .await;
    assert!(control.downloads().is_empty());

    // Uploads and status.
    browser.click("[data-testid=nav-uploads]").await;
    browser
        .wait_for_text("[data-testid=upload-peer]", "the peer", |t| {
            t == "127.0.0.1:40000"
        })
        .await;
    browser.click("[data-testid=nav-status]").await;
    browser
        .wait_for_text("[data-testid=status-supernodes]", "the supernode", |t| {
            t.contains("127.0.0.1:6346")
        })
        .await;
    browser
        .wait_for_text("[data-testid=status-lan]", "the LAN's nodes", |t| {
            t.contains("192.168.1.2:6346 (supernode)")
        })
        .await;
    browser
        .wait_for_text("[data-testid=status-reachable]", "the reachability", |t| {
            t.starts_with("yes")
        })
        .await;
    browser
        .wait_for_text("[data-testid=status-public]", "the public address", |t| {
            t.contains("203.0.113.7 (confirmed")
        })
        .await;

    // Shares: add one folder, stop sharing another.
    browser.click("[data-testid=nav-shares]").await;
    browser
        .wait_for("[data-testid=share-row][data-path='/srv/music']")
        .await;
    browser
        .type_into("[data-testid=share-path]", "/srv/films")
        .await;
    browser.click("[data-testid=share-add]").await;
    browser
        .wait_for("[data-testid=share-row][data-path='/srv/films']")
        .await;
    browser
        .click("[data-testid=share-row][data-path='/srv/music'] [data-testid=share-remove]")
        .await;
    browser
        .wait_until("/srv/music to leave the page", || async {
            let rows = browser
                .client()
                .find_all(fantoccini::Locator::Css("[data-path='/srv/music']"))
                .await
                .ok()?;
            rows.is_empty().then_some(())
        })
        .await;
    let folders: Vec<String> = control
        .shares()
        .folders
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(folders, ["/srv/films"]);

    // Settings: only the changed field is sent, in bytes a second.
    browser.click("[data-testid=nav-settings]").await;
    browser
        .wait_for("[data-testid=settings-form][aria-busy=false]")
        .await;
    browser
        .type_into("[data-testid=setting-upload-rate-limit]", "64")
        .await;
    browser.click("[data-testid=settings-save]").await;
    browser
        .wait_until("the settings to be saved", || async {
            (control.settings().upload_rate_limit == 65536).then_some(())
        })
        .await;
    assert_eq!(
        control.settings().upload_slots,
        8,
        "a field left alone changed"
    );

    // A phone's width: the queue as cards.
    control
        .add_download(canopy_daemon::model::AddDownload {
            id: Some(fake_control::content_id('c')),
            ..Default::default()
        })
        .await
        .unwrap();
    browser.resize(390, 844).await;
    browser.click("[data-testid=nav-downloads]").await;
    browser.wait_for("[data-testid=download-row]").await;
    browser.screenshot("fake-downloads-phone").await;

    // Signed out (the cookie gone): the page says how to get back in.
    browser.client().delete_all_cookies().await.unwrap();
    browser
        .wait_until("the sign-in banner", || async {
            browser
                .attr("[data-testid=auth-banner]", "hidden")
                .await
                .is_none()
                .then_some(())
        })
        .await;

    assert_eq!(
        page_errors(&browser).await,
        "0",
        "the page had script errors or CSP violations"
    );
    browser.close().await;
    leaf.stop.cancel();
}

/// The file the sharing leaf offers and the page downloads.
const SONG: &str = "canopy browser test song.ogg";

#[tokio::test(flavor = "multi_thread")]
async fn a_file_found_in_the_page_downloads_and_verifies_on_disk() {
    overlay::init_logs();
    let supernode = overlay::supernode(&[]).await;

    // The other leaf shares one file; the supernode has indexed it.
    let shared = tempfile::tempdir().unwrap();
    let data = overlay::sample_bytes(3 * 1024 * 1024 + 17, 10);
    std::fs::write(shared.path().join(SONG), &data).unwrap();
    let content_id = blake3::hash(&data).to_hex().to_string();
    let sharer = overlay::leaf(&supernode, Some(shared.path())).await;
    supernode
        .wait_for(overlay::PATIENCE, |s| s.index_files == 1)
        .await
        .expect("the share was not indexed");

    // The daemon whose page we use: no shares of its own.
    let home = tempfile::tempdir().unwrap();
    let downloads = home.path().join("downloads");
    let mut leaf = overlay::leaf_options(&supernode, None);
    leaf.data_dir = Some(home.path().join("data"));
    let daemon = canopy_daemon::start(DaemonOptions {
        leaf,
        control: overlay::localhost(),
        downloads_dir: downloads.clone(),
        share_downloads: true,
        settings: Settings {
            upload_rate_limit: 0,
            download_rate_limit: 0,
            upload_slots: 4,
            max_active_downloads: 3,
        },
    })
    .await
    .unwrap();
    daemon
        .leaf()
        .wait_connected(overlay::PATIENCE)
        .await
        .unwrap();

    let browser = Browser::start(1280, 900).await;
    let url = daemon.ui_url();
    assert!(
        url.contains("/?token="),
        "the UI's URL hands over no token: {url}"
    );
    browser.open(&url).await;
    browser.wait_for("[data-testid=search-query]").await;
    browser
        .wait_for_text("[data-testid=rates]", "one supernode", |t| {
            t.contains("1 supernode")
        })
        .await;

    // Search in the page; the result arrives over the event stream.
    browser
        .type_into("[data-testid=search-query]", "canopy browser song")
        .await;
    browser.click("[data-testid=search-submit]").await;
    let row = format!("[data-testid=result-row][data-content-id='{content_id}']");
    browser.wait_for(&row).await;
    let name = browser.text(&format!("{row} .name")).await.unwrap();
    assert_eq!(name, SONG);
    browser.screenshot("search").await;

    // Download it and follow the queue until it is done (or fails, loudly).
    browser
        .click(&format!("{row} [data-testid=result-download]"))
        .await;
    browser.click("[data-testid=nav-downloads]").await;
    let entry = format!("[data-testid=download-row][data-id='{content_id}']");
    let state = browser
        .wait_until("the download to finish", || async {
            let state = browser.attr(&entry, "data-state").await?;
            matches!(state.as_str(), "done" | "failed" | "skipped").then_some(state)
        })
        .await;
    let detail = browser
        .text(&format!("{entry} [data-testid=download-detail]"))
        .await;
    assert_eq!(state, "done", "the download ended {state}: {detail:?}");
    browser.screenshot("downloaded").await;

    // The file is on disk, whole, and hashes to the id that was clicked.
    let path = downloads.join(SONG);
    let on_disk = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(on_disk.len(), data.len());
    assert_eq!(blake3::hash(&on_disk).to_hex().to_string(), content_id);
    assert!(
        detail.unwrap_or_default().contains(SONG),
        "the row names where the file is"
    );

    // The daemon's own view agrees.
    let view = daemon.control().download(&content_id).unwrap();
    assert_eq!(view.state, DownloadState::Done);
    assert_eq!(view.verified_bytes, data.len() as u64);
    assert_eq!(
        page_errors(&browser).await,
        "0",
        "the page had script errors or CSP violations"
    );

    browser.close().await;
    daemon.shutdown().await;
    sharer.shutdown().await;
    supernode.shutdown().await;
}
