//! A stand-in for the leaf's HTTP server, for testing the web UI alone:
//! serves `crates/daemon/web/` (with the real server's
//! `Content-Security-Policy: default-src 'self'`) and canned answers to the
//! control API, a search's results as Server-Sent Events, and a queue that
//! remembers what was added. One request per connection, HTTP/1.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The token the canned server wants in its cookie.
pub(crate) const TOKEN: &str = "canned-token";

/// The content the canned search finds.
pub(crate) const FOUND_ID: &str =
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// What the canned server was asked to do, for the test to check.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Bodies of `POST /api/downloads`.
    pub(crate) added: Vec<Value>,
    /// Bodies of `PATCH /api/settings`.
    pub(crate) settings: Vec<Value>,
    /// Requests without the token.
    pub(crate) unauthorized: usize,
}

/// A running canned server.
#[derive(Debug)]
pub(crate) struct Canned {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Mutex<Seen>>,
}

/// Starts the canned server on 127.0.0.1, any port.
pub(crate) async fn start() -> Canned {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, web.clone(), state.clone()));
        }
    });
    Canned { addr, seen }
}

struct Request {
    method: String,
    path: String,
    cookie: String,
    body: Value,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 65536 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let mut length = 0;
    let mut cookie = String::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "cookie" => cookie = value.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Request {
        method,
        path,
        cookie,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
}

async fn json_reply(stream: &mut TcpStream, status: &str, value: &Value) {
    let body = serde_json::to_vec(value).unwrap();
    respond(
        stream,
        status,
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
}

fn result() -> Value {
    json!({
        "content_id": FOUND_ID,
        "name": "hello world.txt",
        // A name is a peer's claim: this one must show as text, never run.
        "names": ["hello world.txt", "<img src=x onerror=alert(1)>.txt"],
        "size": 1234,
        "sources": 2,
        "firewalled_sources": 1,
        "link": format!("canopy:{FOUND_ID}?name=hello%20world.txt&size=1234"),
    })
}

fn search(done: bool, results: Vec<Value>) -> Value {
    json!({ "id": "s1", "query": "hello", "done": done, "hits": results.len(), "elapsed_ms": 120, "results": results })
}

fn download(id: &str) -> Value {
    json!({
        "id": id, "name": "hello world.txt", "size": 1234, "state": "done", "verified_bytes": 1234,
        "rate": 0, "eta_secs": null, "sources": 2, "active_sources": 0, "priority": 0,
        "path": "/downloads/hello world.txt", "error": null, "added_at": 1_700_000_000u64,
        "finished_at": 1_700_000_001u64,
    })
}

async fn answer(mut stream: TcpStream, web: PathBuf, seen: Arc<Mutex<Seen>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let path = request.path.split('?').next().unwrap_or("/").to_owned();
    if let Some(token) = request.path.strip_prefix("/?token=") {
        let cookie = format!("canopy_token={token}; HttpOnly; SameSite=Strict; Path=/");
        return respond(
            &mut stream,
            "303 See Other",
            &[("Set-Cookie", &cookie), ("Location", "/")],
            b"",
        )
        .await;
    }
    if !path.starts_with("/api/") {
        let file = if path == "/" {
            "index.html".to_owned()
        } else {
            path.trim_start_matches('/').to_owned()
        };
        let full = web.join(&file);
        let kind = match full.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("css") => "text/css",
            Some("js") => "text/javascript",
            _ => "application/octet-stream",
        };
        match (file.contains(".."), std::fs::read(&full)) {
            (false, Ok(bytes)) => {
                let headers = [
                    ("Content-Type", kind),
                    ("Content-Security-Policy", "default-src 'self'"),
                ];
                respond(&mut stream, "200 OK", &headers, &bytes).await;
            }
            _ => respond(&mut stream, "404 Not Found", &[], b"not found").await,
        }
        return;
    }
    if !request.cookie.contains(&format!("canopy_token={TOKEN}")) {
        seen.lock().unwrap().unauthorized += 1;
        return json_reply(
            &mut stream,
            "401 Unauthorized",
            &json!({ "error": "no token", "field": null }),
        )
        .await;
    }
    let added = || {
        seen.lock()
            .unwrap()
            .added
            .iter()
            .map(|_| download(FOUND_ID))
            .take(1)
            .collect::<Vec<_>>()
    };
    match (request.method.as_str(), path.as_str()) {
        ("GET", "/api/status") => {
            let status = json!({
                "node_id": "f".repeat(64), "version": "canopy/0.1.0", "listen": "127.0.0.1:6346",
                "observed_addr": null, "supernodes": ["127.0.0.1:7000"], "shared_files": 3,
                "shared_bytes": 4096, "downloads_dir": "/downloads",
                "totals": { "uploaded_bytes": 0, "downloaded_bytes": 1234, "upload_rate": 0, "download_rate": 0,
                            "uploads_active": 0, "downloads_active": 0, "downloads_queued": 0 },
            });
            json_reply(&mut stream, "200 OK", &status).await;
        }
        ("POST", "/api/searches") => {
            json_reply(&mut stream, "201 Created", &search(false, vec![])).await
        }
        ("GET", "/api/searches/s1/events") => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            let update = format!("event: update\ndata: {}\n\n", search(false, vec![result()]));
            let done = format!("event: done\ndata: {}\n\n", search(true, vec![result()]));
            let _ = stream
                .write_all(format!("{head}{update}{done}").as_bytes())
                .await;
        }
        ("GET", "/api/searches/s1") => {
            json_reply(&mut stream, "200 OK", &search(true, vec![result()])).await
        }
        ("DELETE", _) => respond(&mut stream, "204 No Content", &[], b"").await,
        ("GET", "/api/downloads") => {
            json_reply(&mut stream, "200 OK", &Value::Array(added())).await
        }
        ("POST", "/api/downloads") => {
            seen.lock().unwrap().added.push(request.body);
            json_reply(&mut stream, "201 Created", &download(FOUND_ID)).await;
        }
        ("GET", "/api/uploads") => {
            let upload = json!([{ "peer": "127.0.0.1:50000", "content_id": FOUND_ID, "name": "shared.bin",
                                   "bytes": 512, "length": 1024, "rate": 2048, "started_at": 1_700_000_000u64 }]);
            json_reply(&mut stream, "200 OK", &upload).await;
        }
        ("GET", "/api/shares") => {
            let shares = json!({ "folders": [{ "path": "/music", "files": 3, "bytes": 4096 }],
                                 "downloads_dir": "/downloads", "files": 3, "bytes": 4096, "scanning": false });
            json_reply(&mut stream, "200 OK", &shares).await;
        }
        ("GET", "/api/settings") => {
            let settings = json!({ "upload_rate_limit": 0, "download_rate_limit": 0, "upload_slots": 4, "max_active_downloads": 3 });
            json_reply(&mut stream, "200 OK", &settings).await;
        }
        ("PATCH", "/api/settings") => {
            let mut settings = json!({ "upload_rate_limit": 0, "download_rate_limit": 0, "upload_slots": 4, "max_active_downloads": 3 });
            if let (Some(target), Some(patch)) =
                (settings.as_object_mut(), request.body.as_object())
            {
                target.extend(patch.clone());
            }
            seen.lock().unwrap().settings.push(request.body);
            json_reply(&mut stream, "200 OK", &settings).await;
        }
        _ => {
            json_reply(
                &mut stream,
                "404 Not Found",
                &json!({ "error": "no such route", "field": null }),
            )
            .await
        }
    }
}
