//! The HTTP/1.1 server every leaf runs on its listen address.
//!
//! Routes, addressed by content id only (64 hex characters):
//! - `GET` / `HEAD /content/<id>`: the file; a single byte range gives 206,
//!   a malformed, multiple or unsatisfiable range gives 416;
//! - `GET` / `HEAD /tree/<id>`: the file's group chaining values (see
//!   `canopy_core::tree`), empty for a file of one group.
//!
//! Anything else is 404 (or 405 for another method): a request names a
//! content id, never a path, so nothing outside the catalog can be read.
//! At most `upload_slots` file bodies are sent at once; past that, 503 with
//! `Retry-After`. The same handler serves pushed connections.

use std::convert::Infallible;
use std::io::{Read, SeekFrom};
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use canopy_core::tree::{GROUP_LEN, VerifiedTree, group_count, group_cv, group_len, group_slot};
use canopy_proto::ContentId;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lru::LruCache;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, CatalogEntry};

/// A response body: a file stream, a small buffer, or nothing.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Upload slots by default, as in gtk-gnutella.
pub const DEFAULT_UPLOAD_SLOTS: usize = 4;
/// Seconds a refused downloader is told to wait.
pub const RETRY_AFTER_SECS: u64 = 5;
/// Most HTTP connections held open at once.
const MAX_CONNECTIONS: usize = 256;
/// Bytes read from disk per body chunk.
const READ_CHUNK: usize = 1024 * 1024;
/// Trees kept in memory (32 bytes a MiB of file each).
const TREE_CACHE: usize = 64;

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// File body bytes sent.
    pub bytes_sent: AtomicU64,
    /// Requests refused for want of an upload slot.
    pub busy_refusals: AtomicU64,
}

/// Serves the files of a [`Catalog`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContentServer {
    catalog: Catalog,
    slots: Arc<Semaphore>,
    upload_slots: usize,
    trees: Arc<Mutex<LruCache<ContentId, Bytes>>>,
    stats: Arc<ServerStats>,
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn not_found() -> Response<Body> {
    status(StatusCode::NOT_FOUND, "not found\n")
}

fn unsatisfiable(size: u64) -> Response<Body> {
    let mut response = status(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// The content id in `text`, if it is exactly 64 hex characters.
fn parse_id(text: &str) -> Option<ContentId> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    text.parse().ok()
}

/// What a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/content/<id>`: the file's bytes.
    Content,
    /// `/tree/<id>`: the file's group chaining values.
    Tree,
}

/// The resource and content id a request path names, or `None` (404) for
/// any other path. Public so the fuzz targets can reach it.
pub fn parse_path(path: &str) -> Option<(Resource, ContentId)> {
    let (resource, id_text) = if let Some(rest) = path.strip_prefix("/content/") {
        (Resource::Content, rest)
    } else if let Some(rest) = path.strip_prefix("/tree/") {
        (Resource::Tree, rest)
    } else {
        return None;
    };
    Some((resource, parse_id(id_text)?))
}

/// One satisfiable range, or `None` for anything else (malformed, several
/// ranges, or outside the file). Public so the fuzz targets can reach it.
pub fn single_range(value: &HeaderValue, size: u64) -> Option<RangeInclusive<u64>> {
    let text = value.to_str().ok()?;
    let ranges = http_range_header::parse_range_header(text)
        .ok()?
        .validate(size)
        .ok()?;
    match ranges.as_slice() {
        // The parser reads `bytes=0-` on an empty file as 0..=0; no byte
        // of an empty file can be served (found by fuzz/ `http_request`).
        [one] if *one.end() < size => Some(one.clone()),
        _ => None,
    }
}

/// Hashes the groups of the file at `path` into the tree a downloader
/// checks against `id`. Errors if the file no longer has that content.
fn compute_tree(path: &Path, id: ContentId, size: u64) -> std::io::Result<Bytes> {
    let groups = group_count(size);
    if groups == 1 {
        return Ok(Bytes::new());
    }
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; group_len(size, 0)];
    let mut cvs = Vec::with_capacity(group_slot(groups).saturating_mul(32));
    for index in 0..groups {
        let chunk = &mut buffer[..group_len(size, index)];
        file.read_exact(chunk)?;
        cvs.extend_from_slice(&group_cv(index, chunk));
    }
    VerifiedTree::from_bytes(id, size, &cvs)
        .map_err(|_| std::io::Error::other("the file changed since it was hashed"))?;
    Ok(Bytes::from(cvs))
}

impl ContentServer {
    /// A server for `catalog` with `upload_slots` concurrent uploads.
    pub fn new(catalog: Catalog, upload_slots: usize) -> Self {
        let upload_slots = upload_slots.max(1);
        Self {
            catalog,
            slots: Arc::new(Semaphore::new(upload_slots)),
            upload_slots,
            trees: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(TREE_CACHE).unwrap_or(NonZeroUsize::MIN),
            ))),
            stats: Arc::new(ServerStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Uploads allowed at once.
    pub fn upload_slots(&self) -> usize {
        self.upload_slots
    }

    /// Upload slots in use right now.
    pub fn uploads_in_progress(&self) -> usize {
        self.upload_slots - self.slots.available_permits()
    }

    /// Accepts connections on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = server.serve_connection(stream) => {}
                }
                tracing::trace!(%peer, "http connection closed");
                drop(permit);
            });
        }
    }

    /// Serves HTTP/1.1 on one connection, accepted or pushed.
    pub async fn serve_connection<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        let service = service_fn(move |request| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        let result = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(io), service)
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, "http connection ended with an error");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let Some((resource, id)) = parse_path(request.uri().path()) else {
            return not_found();
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = status(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let Some(entry) = self.catalog.get(&id) else {
            return not_found();
        };
        let head = request.method() == Method::HEAD;
        if resource == Resource::Tree {
            self.tree(id, entry, head).await
        } else {
            self.content(&request, id, entry, head).await
        }
    }

    async fn tree(&self, id: ContentId, entry: CatalogEntry, head: bool) -> Response<Body> {
        let cached = self
            .trees
            .lock()
            .ok()
            .and_then(|mut trees| trees.get(&id).cloned());
        let tree = match cached {
            Some(tree) => tree,
            None => {
                let path = entry.path.clone();
                let computed =
                    tokio::task::spawn_blocking(move || compute_tree(&path, id, entry.size)).await;
                match computed {
                    Ok(Ok(tree)) => {
                        if let Ok(mut trees) = self.trees.lock() {
                            trees.put(id, tree.clone());
                        }
                        tree
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(path = %entry.path.display(), %error, "cannot serve tree");
                        return not_found();
                    }
                    Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
                }
            }
        };
        let mut response = Response::new(if head { empty() } else { full(tree.clone()) });
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(tree.len()));
        headers.insert("x-canopy-group-len", HeaderValue::from(GROUP_LEN));
        response
    }

    async fn content(
        &self,
        request: &Request<Incoming>,
        id: ContentId,
        entry: CatalogEntry,
        head: bool,
    ) -> Response<Body> {
        let mut file = match tokio::fs::File::open(&entry.path).await {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(path = %entry.path.display(), %error, "shared file unreadable");
                return not_found();
            }
        };
        let size = match file.metadata().await {
            Ok(meta) if meta.len() == entry.size => entry.size,
            _ => {
                tracing::warn!(path = %entry.path.display(), "shared file changed since hashing; not served");
                return not_found();
            }
        };
        let range = match request.headers().get(header::RANGE) {
            None => None,
            Some(value) => match single_range(value, size) {
                Some(range) => Some(range),
                None => return unsatisfiable(size),
            },
        };
        let permit = if head {
            None
        } else {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.stats.busy_refusals.fetch_add(1, Ordering::Relaxed);
                    let mut response = status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "all upload slots are busy\n",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                    return response;
                }
            }
        };
        let (code, start, len) = match &range {
            Some(range) => (
                StatusCode::PARTIAL_CONTENT,
                *range.start(),
                range.end() - range.start() + 1,
            ),
            None => (StatusCode::OK, 0, size),
        };
        let body = if head {
            empty()
        } else {
            if file.seek(SeekFrom::Start(start)).await.is_err() {
                return status(StatusCode::INTERNAL_SERVER_ERROR, "seek failed\n");
            }
            let stats = self.stats.clone();
            let stream =
                ReaderStream::with_capacity(file.take(len), READ_CHUNK).map(move |chunk| {
                    // The slot is held for as long as the body is being sent.
                    let _slot = &permit;
                    chunk.map(|bytes| {
                        stats
                            .bytes_sent
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        Frame::data(bytes)
                    })
                });
            BodyExt::boxed(StreamBody::new(stream))
        };
        let mut response = Response::new(body);
        *response.status_mut() = code;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{id}\"")) {
            headers.insert(header::ETAG, etag);
        }
        if let Some(range) = range {
            let value = format!("bytes {}-{}/{size}", range.start(), range.end());
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::CONTENT_RANGE, value);
            }
        }
        response
    }
}
