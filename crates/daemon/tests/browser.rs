//! The web UI in a real browser (Debian's chromium, headless, through
//! chromedriver): first against a canned API (every view renders, runs
//! clean under the server's CSP, and sends what the API expects), then the
//! whole thing: a supernode and two leaves, a search typed into the page of
//! one, Download clicked, and the file verified on disk.
//!
//! Screenshots go to `target/test-output/browser/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

#[path = "browser/canned.rs"]
mod canned;
#[path = "browser/harness.rs"]
mod harness;

use harness::Browser;

/// Errors the page counted (script errors, CSP violations).
async fn page_errors(browser: &Browser) -> String {
    browser
        .attr("html", "data-errors")
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_view_renders_against_a_canned_api_and_runs_clean_under_the_csp() {
    let server = canned::start().await;
    let base = format!("http://{}", server.addr);
    let browser = Browser::start(1280, 900).await;

    // Without the token the page says how to get in.
    browser.open(&format!("{base}/#/status")).await;
    browser
        .wait_until("the sign-in banner", || async {
            let hidden = browser.attr("[data-testid=auth-banner]", "hidden").await;
            hidden.is_none().then_some(())
        })
        .await;
    assert!(server.seen.lock().unwrap().unauthorized > 0);

    // The URL printed at start-up sets the cookie; then everything answers.
    browser
        .open(&format!("{base}/?token={}", canned::TOKEN))
        .await;
    browser.wait_for("[data-testid=search-query]").await;
    assert!(
        browser
            .attr("[data-testid=auth-banner]", "hidden")
            .await
            .is_some()
    );

    // Search: results arrive over the event stream, grouped, with the other names.
    // (Enter in the box submits: the form works from the keyboard.)
    browser
        .type_into("[data-testid=search-query]", "hello\u{E007}")
        .await;
    browser
        .wait_for(&format!(
            "[data-testid=result-row][data-content-id='{}']",
            canned::FOUND_ID
        ))
        .await;
    browser
        .wait_for_text("[data-testid=search-status]", "the search done", |t| {
            t.contains("1 result")
        })
        .await;
    let variants = browser
        .attr("[data-testid=result-variants]", "title")
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
        browser.text("[data-testid=result-sources]").await.unwrap(),
        "2 (1 firewalled)"
    );
    browser.screenshot("canned-search").await;

    // Download: the row's button posts its link, then the queue shows it done.
    browser.click("[data-testid=result-download]").await;
    browser
        .wait_for_text("[data-testid=result-download]", "Queued", |t| t == "Queued")
        .await;
    let added = server.seen.lock().unwrap().added.clone();
    assert_eq!(added.len(), 1);
    assert_eq!(
        added[0]["link"].as_str().unwrap(),
        format!(
            "canopy:{}?name=hello%20world.txt&size=1234",
            canned::FOUND_ID
        )
    );
    browser.click("[data-testid=nav-downloads]").await;
    browser
        .wait_for("[data-testid=download-row][data-state=done]")
        .await;
    assert_eq!(
        browser.text("[data-testid=download-state]").await.unwrap(),
        "Done"
    );
    browser.screenshot("canned-downloads").await;

    // Uploads, shares, status.
    browser.click("[data-testid=nav-uploads]").await;
    browser
        .wait_for_text("[data-testid=upload-peer]", "the peer", |t| {
            t == "127.0.0.1:50000"
        })
        .await;
    browser.click("[data-testid=nav-shares]").await;
    browser
        .wait_for_text("[data-testid=share-folder]", "the folder", |t| {
            t == "/music"
        })
        .await;
    browser.click("[data-testid=nav-status]").await;
    browser
        .wait_for_text("[data-testid=status-supernodes]", "the supernode", |t| {
            t.contains("127.0.0.1:7000")
        })
        .await;

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
        .wait_until("the settings to be sent", || async {
            (!server.seen.lock().unwrap().settings.is_empty()).then_some(())
        })
        .await;
    assert_eq!(
        server.seen.lock().unwrap().settings[0],
        serde_json::json!({ "upload_rate_limit": 65536 })
    );

    // A phone's width: still usable, nothing broke.
    browser.resize(390, 844).await;
    browser.click("[data-testid=nav-downloads]").await;
    browser.wait_for("[data-testid=download-row]").await;
    browser.screenshot("canned-downloads-phone").await;
    assert_eq!(
        page_errors(&browser).await,
        "0",
        "the page had script errors or CSP violations"
    );
    browser.close().await;
}
