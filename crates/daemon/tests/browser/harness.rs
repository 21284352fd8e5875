//! A headless Chromium driven through chromedriver (WebDriver) with
//! fantoccini: start it, open pages, wait on conditions, click, type, read
//! text and take screenshots into `target/test-output/browser/`.
//!
//! Debian's `chromium` and `chromium-driver` must be installed (`.ci/run`
//! installs them); without them the test fails, saying so. `CHROMEDRIVER`
//! and `CHROMIUM` override where they are looked for.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

/// How long any one condition may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(50);

/// A browser session and the chromedriver behind it; both end on drop.
pub(crate) struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("shots", &self.shots)
            .finish_non_exhaustive()
    }
}

/// The first of `candidates` that exists, or of `name` on the PATH.
fn find_program(env: &str, name: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(candidates.iter().map(PathBuf::from))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found (on the PATH, {candidates:?} or ${env}): the browser test \
                 needs Debian's chromium and chromium-driver (apt-get install chromium \
                 chromium-driver; .ci/run installs them)"
            )
        })
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Where this test run's screenshots go: `<target>/test-output/browser/`.
pub(crate) fn output_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp
        .parent()
        .unwrap_or(tmp)
        .join("test-output")
        .join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a throwaway profile, `width` x `height` pixels.
    pub(crate) async fn start(width: u32, height: u32) -> Browser {
        let driver_path = find_program(
            "CHROMEDRIVER",
            "chromedriver",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let chromium = find_program(
            "CHROMIUM",
            "chromium",
            &[
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ],
        );
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");

        // A free port can be taken between looking and binding: try again.
        let mut attempt = 0;
        let (driver, client) = loop {
            attempt += 1;
            let port = free_port();
            let mut driver = Command::new(&driver_path)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "cannot run {}: {err} (the browser test needs Debian's chromium-driver)",
                        driver_path.display()
                    )
                });
            match connect(port, &chromium, profile.path(), width, height, &mut driver).await {
                Ok(client) => break (driver, client),
                Err(err) if attempt < 3 => {
                    eprintln!("chromedriver on port {port}: {err}; trying another port");
                }
                Err(err) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("no browser session: {err}\nchromedriver log:\n{log}");
                }
            }
        };
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            shots: output_dir(),
        }
    }

    /// The WebDriver client, for anything the helpers don't cover.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for the page to load.
    pub(crate) async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("cannot open {url}: {err}"));
    }

    /// Waits until `condition` returns `Some`, looking every 50 ms; fails
    /// the test after [`PATIENCE`], naming `what` and saving a screenshot.
    pub(crate) async fn wait_until<T, F, Fut>(&self, what: &str, mut condition: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = condition().await {
                return value;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout").await;
                panic!(
                    "timed out after {PATIENCE:?} waiting for {what} (screenshot: {})",
                    shot.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The first element matching `css`, once there is one.
    pub(crate) async fn wait_for(&self, css: &str) -> Element {
        self.wait_until(&format!("an element matching `{css}`"), || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Waits until the text of the first element matching `css` satisfies `test`; returns it.
    pub(crate) async fn wait_for_text(
        &self,
        css: &str,
        what: &str,
        test: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_until(&format!("`{css}` to show {what}"), || async {
            let text = self.text(css).await?;
            test(&text).then_some(text)
        })
        .await
    }

    /// The visible text of the first element matching `css`, if there is one.
    pub(crate) async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// An attribute of the first element matching `css`, if both exist.
    pub(crate) async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    /// Clicks the first element matching `css`, once it is there and enabled.
    pub(crate) async fn click(&self, css: &str) {
        let element = self
            .wait_until(&format!("`{css}` to be clickable"), || async {
                let element = self.client.find(Locator::Css(css)).await.ok()?;
                let ready =
                    element.is_displayed().await.ok()? && element.is_enabled().await.ok()?;
                ready.then_some(element)
            })
            .await;
        element
            .click()
            .await
            .unwrap_or_else(|err| panic!("cannot click `{css}`: {err}"));
    }

    /// Replaces the value of the input matching `css` with `text`, typed.
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|err| panic!("cannot clear `{css}`: {err}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("cannot type into `{css}`: {err}"));
    }

    /// Resizes the window (e.g. to a phone's width).
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Saves a PNG of the page as `<output dir>/<name>.png` and returns its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(&path, png).unwrap(),
            Err(err) => eprintln!("no screenshot {name}: {err}"),
        }
        path
    }

    /// Ends the session (the browser quits; chromedriver is killed on drop).
    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Waits for chromedriver on `port` to answer and opens a session.
async fn connect(
    port: u16,
    chromium: &Path,
    profile: &Path,
    width: u32,
    height: u32,
    driver: &mut Child,
) -> Result<Client, String> {
    let url = format!("http://{}", SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                // Root in a container has no user namespace sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--hide-scrollbars",
                format!("--user-data-dir={}", profile.join("chromium").display()),
                format!("--window-size={width},{height}"),
            ],
        }),
    );
    // A page that never finishes loading fails the test in PATIENCE, not
    // in WebDriver's default five minutes.
    let limit = u64::try_from(PATIENCE.as_millis()).unwrap_or(u64::MAX);
    capabilities.insert(
        "timeouts".into(),
        json!({ "pageLoad": limit, "script": limit }),
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("chromedriver exited: {status}"));
        }
        // Until chromedriver listens, connecting fails at once.
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
                .map_err(|err| format!("new session: {err}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "chromedriver did not listen on {port} within {PATIENCE:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
