//! The control API over real TCP on 127.0.0.1, against a fake daemon:
//! every endpoint through the CLI's client, then what a hostile or
//! mistaken client gets (401, 403, 400 naming the field, 413, 404, 405),
//! the browser's cookie log-in, and a search's events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fake_control.rs"]
mod fake_control;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_daemon::api::{self, EVENT_INTERVAL, ROUTES, ServeLimits, TOKEN_FILE, Token};
use canopy_daemon::client::{CONTROL_FILE, ClientError, ControlClient, ControlFile};
use canopy_daemon::model::{
    AddDownload, DownloadState, ErrorBody, SearchSpec, SearchView, SettingsPatch,
};
use fake_control::{FakeControl, content_id, result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running API over a fake daemon.
struct Harness {
    fake: Arc<FakeControl>,
    addr: SocketAddr,
    token: Token,
    client: ControlClient,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(auto: bool) -> Harness {
    start_with_limits(auto, ServeLimits::default()).await
}

async fn start_with_limits(auto: bool, limits: ServeLimits) -> Harness {
    let data = tempfile::tempdir().unwrap();
    let token = Token::load_or_create(data.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(FakeControl::new(auto));
    let shutdown = CancellationToken::new();
    tokio::spawn(api::serve_with_limits(
        fake.clone(),
        listener,
        token.clone(),
        limits,
        shutdown.clone(),
    ));
    let client = ControlClient::new(&format!("http://{addr}"), token.clone()).unwrap();
    Harness {
        fake,
        addr,
        token,
        client,
        shutdown,
        _data: data,
    }
}

/// A file of the web UI (a stylesheet or a script if there is one),
/// whatever the UI's files are called.
fn an_asset() -> String {
    let mut paths = api::asset_paths();
    paths.sort_by_key(|path| !(path.ends_with(".css") || path.ends_with(".js")));
    paths
        .into_iter()
        .next()
        .expect("the web UI has files under assets/")
}

/// The content type a UI file must be served with.
fn expected_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        other => panic!("add a content type for {other:?}"),
    }
}

/// An answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn error(&self) -> ErrorBody {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` on a new connection and reads the whole answer.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() && !head.to_ascii_lowercase().contains("content-length") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    read_answer(stream).await
}

async fn read_answer(mut stream: impl tokio::io::AsyncRead + Unpin) -> Answer {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

impl Harness {
    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.token.as_str())
    }

    async fn get(&self, path: &str) -> Answer {
        raw(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\n{}", self.bearer()),
            b"",
        )
        .await
    }

    async fn send_json(&self, method: &str, path: &str, json: &str) -> Answer {
        raw(
            self.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\n{}\r\nContent-Type: application/json",
                self.bearer()
            ),
            json.as_bytes(),
        )
        .await
    }
}

#[tokio::test]
async fn every_endpoint_answers_through_the_client() {
    let harness = start(true).await;
    let client = &harness.client;

    let status = client.status().await.unwrap();
    assert_eq!(status.node_id, content_id('7'));
    assert_eq!(status.shared_files, 3);

    // Searches: start, follow to the end, read, forget.
    let search = client
        .start_search(&SearchSpec {
            query: Some("song".into()),
            ..SearchSpec::default()
        })
        .await
        .unwrap();
    assert!(!search.done);
    let mut events = client.search_events(&search.id).await.unwrap();
    let mut last = None;
    while let Some(view) = events.next().await.unwrap() {
        last = Some(view);
    }
    let last = last.unwrap();
    assert!(last.done);
    assert_eq!(last.results.len(), 3);
    assert_eq!(client.search(&search.id).await.unwrap(), last);
    client.forget_search(&search.id).await.unwrap();
    let gone = client.search(&search.id).await.unwrap_err();
    assert!(
        matches!(gone, ClientError::Api { status: 404, .. }),
        "{gone}"
    );

    // Downloads: add (twice), read, priority, pause, resume, cancel.
    let id = content_id('a');
    let add = AddDownload {
        id: Some(id.clone()),
        priority: Some(2),
        ..AddDownload::default()
    };
    let (added, new) = client.add_download(&add).await.unwrap();
    assert!(new);
    assert_eq!((added.state, added.priority), (DownloadState::Queued, 2));
    let (again, new) = client.add_download(&add).await.unwrap();
    assert!(!new);
    assert_eq!(again, added);
    let link = format!("canopy:{}?name=b.txt&size=3", content_id('b'));
    let (by_link, _) = client
        .add_download(&AddDownload {
            link: Some(link),
            ..AddDownload::default()
        })
        .await
        .unwrap();
    assert_eq!(by_link.name, "b.txt");
    assert_eq!(client.downloads().await.unwrap().len(), 2);
    assert_eq!(client.download(&id).await.unwrap(), added);
    assert_eq!(client.set_priority(&id, -5).await.unwrap().priority, -5);
    assert_eq!(
        client.pause(&id).await.unwrap().state,
        DownloadState::Paused
    );
    assert_eq!(
        client.resume(&id).await.unwrap().state,
        DownloadState::Queued
    );
    client.cancel(&id).await.unwrap();
    let gone = client.download(&id).await.unwrap_err();
    assert!(
        matches!(gone, ClientError::Api { status: 404, .. }),
        "{gone}"
    );
    assert_eq!(client.downloads().await.unwrap().len(), 1);

    assert_eq!(client.uploads().await.unwrap().len(), 1);

    // Shares.
    assert_eq!(client.shares().await.unwrap().folders.len(), 1);
    let shares = client.add_share("/srv/films").await.unwrap();
    assert_eq!(shares.folders.len(), 2);
    let refused = client.add_share("relative/dir").await.unwrap_err();
    match refused {
        ClientError::Api { status, body } => {
            assert_eq!(status, 400);
            assert_eq!(body.field.as_deref(), Some("path"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        client
            .remove_share("/srv/films")
            .await
            .unwrap()
            .folders
            .len(),
        1
    );
    assert!(client.rescan().await.unwrap().scanning);

    // Settings.
    let before = client.settings().await.unwrap();
    let after = client
        .update_settings(&SettingsPatch {
            upload_rate_limit: Some(1_000_000),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    assert_eq!(after.upload_rate_limit, 1_000_000);
    assert_eq!(after.upload_slots, before.upload_slots);
    assert_eq!(client.settings().await.unwrap(), after);

    let document = client.openapi().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}

#[tokio::test]
async fn the_client_finds_a_running_leaf_through_the_data_directory() {
    let harness = start(false).await;
    let data = tempfile::tempdir().unwrap();
    assert!(ControlClient::find(data.path()).await.is_none());
    let token_path = data.path().join(TOKEN_FILE);
    std::fs::copy(harness._data.path().join(TOKEN_FILE), &token_path).unwrap();
    write_control_file(data.path(), &format!("http://{}", harness.addr));
    let client = ControlClient::find(data.path()).await.expect("found");
    assert_eq!(client.url(), format!("http://{}", harness.addr));
    assert!(client.status().await.is_ok());

    // A control.json left by a leaf that is gone names nothing.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    write_control_file(data.path(), &format!("http://{gone_addr}"));
    assert!(ControlClient::find(data.path()).await.is_none());
}

fn write_control_file(dir: &Path, url: &str) {
    let file = ControlFile {
        url: url.to_owned(),
        pid: std::process::id(),
    };
    std::fs::write(dir.join(CONTROL_FILE), serde_json::to_vec(&file).unwrap()).unwrap();
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_every_documented_route_is_served() {
    let document: serde_json::Value =
        serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<_> = ROUTES
        .iter()
        .map(|route| (route.method.to_owned(), route.path.to_owned()))
        .collect();
    assert_eq!(routed, documented, "the router and openapi.json disagree");

    // And every route has a handler: none answers 5xx or "no such route".
    let harness = start(true).await;
    for route in ROUTES {
        let path = route
            .path
            .replace("{id}", &content_id('c'))
            .replace("{path}", &an_asset()[8..]);
        let path = if route.path.starts_with("/api/searches/{id}") {
            route.path.replace("{id}", "s999")
        } else {
            path
        };
        let answer = if matches!(route.method, "POST" | "PATCH") {
            harness.send_json(route.method, &path, "{}").await
        } else {
            raw(
                harness.addr,
                &format!("{} {path} HTTP/1.1\r\n{}", route.method, harness.bearer()),
                b"",
            )
            .await
        };
        assert!(
            answer.status < 500 && answer.status != 405,
            "{} {path}: {answer:?}",
            route.method
        );
        if answer.status == 404 {
            assert_ne!(answer.error().error, "no such resource", "{path} unrouted");
        }
    }
}

#[tokio::test]
async fn requests_without_the_token_or_with_a_wrong_one_get_401() {
    let harness = start(false).await;
    let none = raw(harness.addr, "GET /api/status HTTP/1.1", b"").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert!(none.error().error.contains("token"));
    let wrong = raw(
        harness.addr,
        &format!(
            "GET /api/downloads HTTP/1.1\r\nAuthorization: Bearer {}",
            content_id('0')
        ),
        b"",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let wrong_cookie = raw(
        harness.addr,
        "POST /api/searches HTTP/1.1\r\nCookie: canopy_token=nope\r\nContent-Type: application/json",
        br#"{"query":"x"}"#,
    )
    .await;
    assert_eq!(wrong_cookie.status, 401);
    assert_eq!(harness.fake.searches_started.load(Ordering::Relaxed), 0);
    // Unknown API paths tell nothing without the token either.
    assert_eq!(
        raw(harness.addr, "GET /api/nothing HTTP/1.1", b"")
            .await
            .status,
        401
    );

    // The document, the page and its files need no token.
    let document = raw(harness.addr, "GET /api/openapi.json HTTP/1.1", b"").await;
    assert_eq!(document.status, 200);
    assert_eq!(document.header("content-type"), Some("application/json"));
    let asset = raw(harness.addr, &format!("GET {} HTTP/1.1", an_asset()), b"").await;
    assert_eq!(asset.status, 200);
    assert_eq!(
        asset.header("content-type"),
        Some(expected_type(&an_asset()))
    );
    let page = raw(harness.addr, "GET / HTTP/1.1", b"").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("printed when it started"), "{page:?}");
}

#[tokio::test]
async fn the_start_up_url_logs_a_browser_in_with_a_cookie() {
    let harness = start(false).await;
    let login = raw(
        harness.addr,
        &format!("GET /?token={} HTTP/1.1", harness.token.as_str()),
        b"",
    )
    .await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert_eq!(
        cookie,
        format!(
            "canopy_token={}; HttpOnly; SameSite=Strict; Path=/",
            harness.token.as_str()
        )
    );
    let pair = cookie.split(';').next().unwrap();

    // With the cookie: the UI, and the API.
    let page = raw(
        harness.addr,
        &format!("GET / HTTP/1.1\r\nCookie: {pair}"),
        b"",
    )
    .await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(!page.body.contains("printed when it started"), "{page:?}");
    assert!(page.header("content-security-policy").is_some());
    let status = raw(
        harness.addr,
        &format!("GET /api/status HTTP/1.1\r\nCookie: theme=dark; {pair}"),
        b"",
    )
    .await;
    assert_eq!(status.status, 200);

    // A wrong token sets no cookie.
    let wrong = raw(
        harness.addr,
        &format!("GET /?token={} HTTP/1.1", content_id('1')),
        b"",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
}

#[tokio::test]
async fn a_request_from_a_foreign_origin_gets_403() {
    let harness = start(false).await;
    let foreign = raw(
        harness.addr,
        &format!(
            "POST /api/searches HTTP/1.1\r\n{}\r\nOrigin: http://evil.example\r\nContent-Type: application/json",
            harness.bearer()
        ),
        br#"{"query":"x"}"#,
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert!(foreign.error().error.contains("Origin"));
    let null = raw(
        harness.addr,
        &format!(
            "DELETE /api/downloads/{} HTTP/1.1\r\n{}\r\nOrigin: null",
            content_id('a'),
            harness.bearer()
        ),
        b"",
    )
    .await;
    assert_eq!(null.status, 403);
    assert_eq!(harness.fake.searches_started.load(Ordering::Relaxed), 0);

    // The page's own origin is fine.
    let own = raw(
        harness.addr,
        &format!(
            "POST /api/searches HTTP/1.1\r\n{}\r\nOrigin: http://{}\r\nContent-Type: application/json",
            harness.bearer(),
            harness.addr
        ),
        br#"{"query":"x"}"#,
    )
    .await;
    assert_eq!(own.status, 201, "{own:?}");
    assert_eq!(harness.fake.searches_started.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_field() {
    let harness = start(false).await;
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "POST",
            "/api/searches",
            r#"{"query":"a","max_results":"ten"}"#,
            Some("max_results"),
        ),
        (
            "POST",
            "/api/searches",
            r#"{"query":"a","extensions":["mp3",7]}"#,
            Some("extensions[1]"),
        ),
        (
            "POST",
            "/api/searches",
            r#"{"query":"a","colour":"red"}"#,
            Some("colour"),
        ),
        (
            "POST",
            "/api/searches",
            r#"{"query":"a","max_results":0}"#,
            Some("max_results"),
        ),
        (
            "POST",
            "/api/searches",
            r#"{"query":"a","kind":"smell"}"#,
            Some("kind"),
        ),
        ("POST", "/api/searches", r#"{"id":"xyz"}"#, Some("id")),
        ("POST", "/api/searches", r#"{"query":"a""#, None),
        ("POST", "/api/searches", r#"[]"#, None),
        ("POST", "/api/downloads", r#"{"id":"abc"}"#, Some("id")),
        (
            "POST",
            "/api/downloads",
            r#"{"link":"magnet:?xt=1"}"#,
            Some("link"),
        ),
        (
            "POST",
            "/api/downloads",
            r#"{"id":null,"priority":1.5}"#,
            Some("priority"),
        ),
        ("POST", "/api/shares", r#"{}"#, Some("path")),
        ("POST", "/api/shares", r#"{"path":42}"#, Some("path")),
        (
            "PATCH",
            "/api/settings",
            r#"{"upload_slots":-1}"#,
            Some("upload_slots"),
        ),
        (
            "PATCH",
            "/api/settings",
            r#"{"upload_slots":0}"#,
            Some("upload_slots"),
        ),
        (
            "PATCH",
            "/api/settings",
            r#"{"max_active_downloads":1000}"#,
            Some("max_active_downloads"),
        ),
    ];
    for (method, path, json, field) in cases {
        let answer = harness.send_json(method, path, json).await;
        assert_eq!(answer.status, 400, "{method} {path} {json}: {answer:?}");
        assert_eq!(
            answer.error().field.as_deref(),
            *field,
            "{json}: {answer:?}"
        );
    }
    let patch = format!("/api/downloads/{}", content_id('a'));
    let answer = harness
        .send_json("PATCH", &patch, r#"{"priority":"high"}"#)
        .await;
    assert_eq!(answer.error().field.as_deref(), Some("priority"));

    // Bad ids in the path.
    for path in [
        "/api/downloads/abc",
        "/api/downloads/..",
        &format!("/api/downloads/{}g", &content_id('a')[1..]),
        "/api/searches/a%2Fb",
        &format!("/api/searches/{}", "s".repeat(65)),
    ] {
        let answer = harness.get(path).await;
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
        assert_eq!(answer.error().field.as_deref(), Some("id"), "{path}");
    }
    let keep = raw(
        harness.addr,
        &format!(
            "DELETE /api/downloads/{}?keep=maybe HTTP/1.1\r\n{}",
            content_id('a'),
            harness.bearer()
        ),
        b"",
    )
    .await;
    assert_eq!(keep.error().field.as_deref(), Some("keep"));

    // Not JSON at all.
    let text = raw(
        harness.addr,
        &format!(
            "POST /api/searches HTTP/1.1\r\n{}\r\nContent-Type: text/plain",
            harness.bearer()
        ),
        b"query=a",
    )
    .await;
    assert_eq!(text.status, 415);
    assert_eq!(harness.fake.searches_started.load(Ordering::Relaxed), 0);
    assert_eq!(harness.fake.changes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_body_over_64_kib_gets_413_without_being_read() {
    let harness = start(false).await;
    let big = format!(r#"{{"query":"{}"}}"#, "a".repeat(1024 * 1024));
    // Declared: refused on its Content-Length, before a byte is read
    // (none is sent).
    let declared = raw(
        harness.addr,
        &format!(
            "POST /api/searches HTTP/1.1\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}",
            harness.bearer(),
            big.len()
        ),
        b"",
    )
    .await;
    assert_eq!(declared.status, 413, "{declared:?}");
    assert!(declared.error().error.contains("64 KiB"));

    // Chunked: refused once 64 KiB have arrived.
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    let head = format!(
        "POST /api/searches HTTP/1.1\r\nHost: {}\r\n{}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        harness.addr,
        harness.bearer()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        for chunk in big.as_bytes().chunks(16 * 1024) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    });
    let answer = read_answer(reader).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    sender.abort();
    assert_eq!(harness.fake.searches_started.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405_as_json() {
    let harness = start(false).await;
    for path in [
        "/api/nothing",
        "/api",
        "/api/status/x",
        "/favicon.ico",
        "/assets/none.js",
        "/assets/../web/index.html",
    ] {
        let answer = harness.get(path).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        answer.error();
    }
    let answer = raw(
        harness.addr,
        &format!("PUT /api/downloads HTTP/1.1\r\n{}", harness.bearer()),
        b"",
    )
    .await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET, POST"));
    answer.error();
    let answer = raw(
        harness.addr,
        &format!(
            "POST /api/status HTTP/1.1\r\n{}\r\nContent-Type: application/json",
            harness.bearer()
        ),
        b"{}",
    )
    .await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET"));
    // The server still answers after garbage.
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    stream.write_all(b"\x00\xff GARBAGE\r\n\r\n").await.unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes).await;
    assert!(harness.client.status().await.is_ok());
}

/// The events of one stream as (name, view, when it arrived).
async fn read_events(harness: &Harness, id: &str) -> Vec<(String, SearchView, Instant)> {
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    let head = format!(
        "GET /api/searches/{id}/events HTTP/1.1\r\nHost: {}\r\n{}\r\nConnection: close\r\n\r\n",
        harness.addr,
        harness.bearer()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut events = Vec::new();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("events keep coming")
            .unwrap();
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
        // Chunked framing aside, each event is one "event:" and one
        // "data:" line.
        let text = String::from_utf8_lossy(&buffer).into_owned();
        let mut consumed = 0;
        for (index, line) in text.match_indices("event: ") {
            let rest = &text[index + line.len()..];
            let Some(name_end) = rest.find('\n') else {
                break;
            };
            let name = &rest[..name_end];
            let Some(data) = rest[name_end + 1..].strip_prefix("data: ") else {
                break;
            };
            let Some(data_end) = data.find("\n\n") else {
                break;
            };
            let view: SearchView = serde_json::from_str(&data[..data_end]).unwrap();
            events.push((name.to_owned(), view, Instant::now()));
            consumed = index + line.len() + name_end + 1 + "data: ".len() + data_end + 2;
        }
        buffer.drain(..consumed);
    }
    events
}

#[tokio::test]
async fn search_events_stream_paced_updates_then_done_then_end() {
    let harness = start(false).await;
    let search = harness
        .client
        .start_search(&SearchSpec {
            query: Some("song".into()),
            ..SearchSpec::default()
        })
        .await
        .unwrap();
    let head = raw(harness.addr, "GET /api/searches/s1/events HTTP/1.1", b"").await;
    assert_eq!(head.status, 401);
    let reader = read_events(&harness, &search.id);
    let fake = harness.fake.clone();
    let id = search.id.clone();
    // 60 changes, 5 ms apart (300 ms), then done.
    let driver = async move {
        // Wait for the stream to be open (its first event is the view as
        // it is then).
        while fake.watchers(&id) == 0 {
            tokio::task::yield_now().await;
        }
        let mut view = SearchView {
            id: id.clone(),
            query: "song".into(),
            ..SearchView::default()
        };
        for hit in 1..=60 {
            view.hits = hit;
            view.results = vec![result('a', "song.mp3", hit)];
            assert!(fake.publish(&id, view.clone()));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        view.done = true;
        assert!(fake.publish(&id, view.clone()));
        view
    };
    let started = Instant::now();
    let (events, last) = tokio::join!(reader, driver);
    let elapsed = started.elapsed();
    let (name, final_view, _) = events.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(final_view, &last);
    let updates = &events[..events.len() - 1];
    assert!(
        updates
            .iter()
            .all(|(name, view, _)| name == "update" && !view.done)
    );
    assert!(updates.len() >= 2, "{} updates", updates.len());
    // Paced: no more events than 100 ms periods (plus the first and the
    // last), though 61 changes were made.
    let periods = (elapsed.as_millis() / EVENT_INTERVAL.as_millis()) as usize;
    assert!(
        events.len() <= periods + 2,
        "{} events in {elapsed:?}",
        events.len()
    );
    // The hits only grow.
    assert!(
        events
            .windows(2)
            .all(|pair| pair[0].1.hits <= pair[1].1.hits)
    );
}

#[tokio::test]
async fn a_search_stream_ends_with_done_when_the_search_is_forgotten() {
    let harness = start(false).await;
    let search = harness
        .client
        .start_search(&SearchSpec {
            query: Some("x".into()),
            ..SearchSpec::default()
        })
        .await
        .unwrap();
    let mut events = harness.client.search_events(&search.id).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert!(!first.done);
    harness.client.forget_search(&search.id).await.unwrap();
    let last = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream ends")
        .unwrap()
        .unwrap();
    assert!(last.done);
    assert!(events.next().await.unwrap().is_none());
    let unknown = harness.client.search_events("s404").await.unwrap_err();
    assert!(
        matches!(unknown, ClientError::Api { status: 404, .. }),
        "{unknown}"
    );
}

#[tokio::test]
async fn idle_connections_are_cut_after_the_header_timeout_and_never_exceed_the_cap() {
    let header_timeout = Duration::from_millis(300);
    let harness = start_with_limits(
        false,
        ServeLimits {
            max_connections: 2,
            header_timeout,
            ..ServeLimits::default()
        },
    )
    .await;
    let opened = Instant::now();
    // Two clients that connect and say nothing hold both places...
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(harness.addr).await.unwrap();
        idle.push(tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes).await;
            (Instant::now(), bytes.len())
        }));
    }
    // ...so a third is answered only once the server has cut them.
    let answer = tokio::spawn({
        let addr = harness.addr;
        let bearer = harness.bearer();
        async move {
            let answer = raw(addr, &format!("GET /api/status HTTP/1.1\r\n{bearer}"), b"").await;
            (Instant::now(), answer)
        }
    });
    let (answered_at, answer) = answer.await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answered_at - opened >= header_timeout,
        "answered while both places were held"
    );
    let mut first_cut = None;
    for handle in idle {
        let (cut_at, _) = handle.await.unwrap();
        assert!(cut_at - opened >= header_timeout, "cut before the timeout");
        first_cut = Some(first_cut.map_or(cut_at, |first: Instant| first.min(cut_at)));
    }
    assert!(
        first_cut.unwrap() <= answered_at,
        "answered before a place was free"
    );
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408() {
    let harness = start_with_limits(
        false,
        ServeLimits {
            body_timeout: Duration::from_millis(300),
            ..ServeLimits::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    let head = format!(
        "POST /api/searches HTTP/1.1\r\nHost: {}\r\n{}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"qu",
        harness.addr,
        harness.bearer()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(stream).await;
    assert_eq!(answer.status, 408);
    answer.error();
    assert_eq!(harness.fake.searches_started.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn static_files_answer_head_and_the_ui_is_embedded() {
    let harness = start(false).await;
    let asset = an_asset();
    let head = raw(harness.addr, &format!("HEAD {asset} HTTP/1.1"), b"").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), Some(expected_type(&asset)));
    let name = &asset["/assets/".len()..];
    // Hidden files, empty segments and dot segments are not served.
    for path in [
        "/assets/.hidden".to_owned(),
        format!("/assets//{name}"),
        format!("/assets/a/../{name}"),
    ] {
        assert_eq!(harness.get(&path).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn shutting_down_ends_open_streams_and_returns() {
    let data = tempfile::tempdir().unwrap();
    let token = Token::load_or_create(data.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(FakeControl::new(false));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::serve(
        fake.clone(),
        listener,
        token.clone(),
        shutdown.clone(),
    ));
    let client = ControlClient::new(&format!("http://{addr}"), token).unwrap();
    let search = client
        .start_search(&SearchSpec {
            query: Some("x".into()),
            ..SearchSpec::default()
        })
        .await
        .unwrap();
    let mut events = client.search_events(&search.id).await.unwrap();
    assert!(events.next().await.unwrap().is_some());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns")
        .unwrap();
    // The stream was cut (an error or its end), and nothing listens.
    let after = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream ends");
    assert!(!matches!(after, Ok(Some(_))), "{after:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}
