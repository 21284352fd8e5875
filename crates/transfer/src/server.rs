//! The HTTP/1.1 server every leaf runs on its listen address.
//!
//! Routes, addressed by content id only (64 hex characters):
//! - `GET` / `HEAD /content/<id>`: the file; a single byte range gives 206,
//!   a malformed, multiple or unsatisfiable range gives 416;
//! - `GET` / `HEAD /tree/<id>`: the file's group chaining values (see
//!   `canopy_core::tree`), empty for a file of one group. The tree was
//!   computed when the file was hashed and comes from the catalog: serving
//!   it reads nothing from disk.
//!
//! A download still running is served too, from its partial entry (see
//! [`crate::partial`]; a complete entry of the same id is looked up first
//! and wins). Only its verified and written groups are served: a `GET`
//! with a single range wholly inside them gives 206, read from the partial
//! file like a whole file (no link followed, its length checked against
//! the entry's size, within the same upload slots, limits, watchdog and
//! registry); a range outside them, or no range at all, gives 416 with
//! `Content-Range: bytes */<size>`; `HEAD` gives 200 and takes no slot.
//! Every `/content` response of a partial entry says what it has in
//! `X-Available-Ranges` (`bytes 0-1048575, 3145728-4194303`, at most
//! 4 KiB); once every group is in, it is served like a whole file, without
//! the header. Its tree comes from the entry.
//!
//! The download mesh (see [`crate::mesh`]): every `/content` response of a
//! served id, whatever its status (503 included), carries `X-Alt`, up to
//! [`ALTERNATES_PER_RESPONSE`] other sources of the id from the server's
//! mesh, never the requester itself: not the address it listens at if it
//! said (several leaves on one host are each other's sources), else none
//! at its IP. A request of a served id with `X-Listen: <port>` (digits
//! only, 1-65535) puts the requester's own IP with that port in the mesh;
//! for an id we don't serve it is ignored.
//!
//! Super-seeding (see [`crate::ration`]): while a crowd of sharing
//! downloaders (requests with `X-Listen` and `X-Need`) fetches a whole
//! file, a `GET` is served only if every group it touches has been sent
//! as few times as any group the downloader needs; any other gets 416
//! with `Content-Range: bytes */<size>` and `X-Offer`, the groups it
//! needs that were sent the fewest times, which it asks for instead. Its
//! 206s and `HEAD`s carry `X-Offer` too. Requests without those headers
//! (a browser, `curl`) are never rationed, nor is anything with
//! [`ServerConfig::super_seed`] off.
//!
//! Anything else is 404 (or 405 for another method): a request names a
//! content id, never a path, so nothing outside the catalog can be read,
//! and a served file is opened without following a link.
//!
//! Strangers can't hold the server: at most `upload_slots` file bodies are
//! sent at once, and a few per address and per network prefix (/24, /48);
//! past that, 503 with `Retry-After`. Connections are capped overall and
//! per address and prefix (over the cap, closed at once). A connection must
//! send a complete request head within `header_timeout`, on arrival and
//! between keep-alive requests. A response whose reader stops reading is
//! cut after `write_timeout` without progress, and a file body sent slower
//! than `min_upload_rate` over `rate_window` is cut too, freeing its slot.
//! The same handler serves pushed connections. A connection accepted
//! that belongs to a hole punch of ours, or that is a source's pushed
//! connection a download of ours waits for, is handed over instead of
//! served (see [`crate::doorway`]).
//!
//! Live controls, for the daemon's settings: the number of upload slots
//! ([`ContentServer::set_upload_slots`]; uploads running beyond a lowered
//! count finish, new ones wait for the count to drop) and one upload rate
//! limit shared by every file body ([`ContentServer::upload_limit`]).
//! Every upload is in a registry ([`ContentServer::uploads`]) while it
//! runs, and is logged at info when it starts and when it ends.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use canopy_core::addr_limits::{AddressLimit, IpNet, default_exempt};
use canopy_core::groups::GroupSet;
use canopy_core::mesh::format_alternates;
use canopy_core::ration::{Ration, RationConfig};
use canopy_core::tree::GROUP_LEN;
use canopy_proto::ContentId;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bandwidth::{RateLimit, Throttled};
use crate::catalog::{Catalog, CatalogEntry};
use crate::doorway::{Doorway, Sorted};
use crate::limits::{AddressGuard, AddressSlots, UploadSlot, UploadSlots};
use crate::mesh::{
    ALT, ALTERNATES_PER_RESPONSE, AVAILABLE_RANGES, LISTEN, NEED, OFFER, SharedMesh,
};
use crate::partial::PartialEntry;
use crate::ration::SharedRation;

/// A response body: a file stream, a small buffer, or nothing.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Upload slots by default, as in gtk-gnutella.
pub const DEFAULT_UPLOAD_SLOTS: usize = 4;
/// Seconds a refused downloader is told to wait: short, since slots free
/// every few seconds in a crowd (each request is sized to about two
/// seconds of a source's rate) and a slot nobody comes back for is upload
/// lost; a retry costs one request head.
pub const RETRY_AFTER_SECS: u64 = 2;
/// Bytes read from disk per body chunk.
const READ_CHUNK: usize = 1024 * 1024;

/// How much the server takes on, and from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// File bodies sent at once.
    pub upload_slots: usize,
    /// HTTP connections held at once, from everyone together.
    pub max_connections: usize,
    /// HTTP connections one address and one prefix may hold.
    pub connections_per_address: AddressLimit,
    /// Upload slots one address and one prefix may hold.
    pub uploads_per_address: AddressLimit,
    /// Addresses not limited per address (loopback by default).
    pub exempt: Vec<IpNet>,
    /// Time to send a complete request head, on a new connection and
    /// between keep-alive requests.
    pub header_timeout: Duration,
    /// A response whose bytes the reader does not take for this long is cut.
    pub write_timeout: Duration,
    /// Slowest file body kept, in bytes a second over `rate_window`.
    pub min_upload_rate: u64,
    /// The window `min_upload_rate` is measured over.
    pub rate_window: Duration,
    /// Ration whole files among a crowd of sharing downloaders (see the
    /// module documentation).
    pub super_seed: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            max_connections: 256,
            connections_per_address: AddressLimit::new(8, 32),
            uploads_per_address: AddressLimit::new(2, 2),
            exempt: default_exempt(),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            min_upload_rate: 1024,
            rate_window: Duration::from_secs(30),
            super_seed: true,
        }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// File body bytes sent.
    pub bytes_sent: AtomicU64,
    /// Requests refused for want of an upload slot.
    pub busy_refusals: AtomicU64,
    /// Of those, refused because the address or prefix held its share.
    pub address_upload_refusals: AtomicU64,
    /// Connections closed at once: the address or prefix held its share.
    pub address_connection_refusals: AtomicU64,
    /// Connections cut because the reader stopped reading or read too slowly.
    pub stalled_cut: AtomicU64,
    /// HTTP connections open now.
    pub open_connections: AtomicUsize,
    /// Requests of a whole file refused with an offer of other groups
    /// (super-seeding).
    pub offer_refusals: AtomicU64,
}

/// One upload running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// The downloader (for a pushed upload, the callback address we
    /// connected to; `0.0.0.0:0` when unknown).
    pub peer: SocketAddr,
    /// What it fetches.
    pub content_id: ContentId,
    /// Our file.
    pub path: PathBuf,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Bytes this upload sends (its range).
    pub length: u64,
    /// Bytes a second over the last few seconds.
    pub rate: u64,
    /// When it started.
    pub started: SystemTime,
}

/// How an upload's rate is measured: bytes over a window of about
/// `RATE_WINDOW`, the last full window's figure kept while the next fills.
const RATE_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    last_rate: Option<u64>,
}

impl RateMeter {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            window_bytes: 0,
            last_rate: None,
        }
    }

    fn add(&mut self, bytes: u64, now: Instant) {
        self.window_bytes += bytes;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.last_rate = Some(per_second(self.window_bytes, elapsed));
            self.window_start = now;
            self.window_bytes = 0;
        }
    }

    fn rate(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.window_start);
        match self.last_rate {
            // A stalled upload shows its rate falling, not its old figure.
            Some(last) if elapsed < RATE_WINDOW => last,
            // Over a short start, the first bytes (a burst) would read as
            // a huge rate: measure over a quarter window at least.
            _ => per_second(self.window_bytes, elapsed.max(RATE_WINDOW / 4)),
        }
    }
}

fn per_second(bytes: u64, elapsed: Duration) -> u64 {
    let millis = elapsed.as_millis().max(1);
    u64::try_from(u128::from(bytes) * 1000 / millis).unwrap_or(u64::MAX)
}

/// An upload in the registry.
#[derive(Debug)]
struct Upload {
    peer: SocketAddr,
    content_id: ContentId,
    path: PathBuf,
    first: u64,
    length: u64,
    started: SystemTime,
    started_at: Instant,
    bytes: AtomicU64,
    failed: AtomicBool,
    meter: Mutex<RateMeter>,
}

impl Upload {
    fn info(&self, now: Instant) -> UploadInfo {
        UploadInfo {
            peer: self.peer,
            content_id: self.content_id,
            path: self.path.clone(),
            bytes: self.bytes.load(Ordering::Relaxed),
            length: self.length,
            rate: self
                .meter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rate(now),
            started: self.started,
        }
    }

    fn sent(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.meter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(bytes, Instant::now());
    }
}

/// Keeps an upload in the registry while its body is alive; logs its end
/// and takes it out when dropped (sent, failed, or cut).
#[derive(Debug)]
struct UploadMark {
    id: u64,
    upload: Arc<Upload>,
    registry: Arc<dashmap::DashMap<u64, Arc<Upload>>>,
}

impl Drop for UploadMark {
    fn drop(&mut self) {
        let upload = &self.upload;
        let bytes = upload.bytes.load(Ordering::Relaxed);
        let why = if upload.failed.load(Ordering::Relaxed) {
            "reading the file failed"
        } else if bytes >= upload.length {
            "complete"
        } else {
            "the downloader closed or stopped reading"
        };
        let seconds = upload.started_at.elapsed().as_secs_f64();
        tracing::info!(
            peer = %upload.peer,
            file = %upload.path.display(),
            bytes,
            length = upload.length,
            seconds = format_args!("{seconds:.3}"),
            why,
            "upload ended"
        );
        // Out of the registry once logged: whoever sees it gone sees the log.
        self.registry.remove(&self.id);
    }
}

/// Serves the files of a [`Catalog`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContentServer {
    catalog: Catalog,
    config: Arc<ServerConfig>,
    slots: UploadSlots,
    upload_addresses: AddressSlots,
    connection_addresses: AddressSlots,
    stats: Arc<ServerStats>,
    upload_limit: RateLimit,
    uploads: Arc<dashmap::DashMap<u64, Arc<Upload>>>,
    next_upload: Arc<AtomicU64>,
    mesh: SharedMesh,
    ration: SharedRation,
    doorway: Doorway,
}

/// A file body (or only its headers) to send.
#[derive(Debug)]
struct Sending<'a> {
    id: ContentId,
    path: &'a Path,
    size: u64,
    /// The range asked for; `None`: the whole file.
    range: Option<RangeInclusive<u64>>,
    /// Only the headers, and no upload slot.
    head: bool,
    peer: Option<SocketAddr>,
}

/// What the catalog serves for an id: a whole file, or a download running.
#[derive(Debug)]
enum Served {
    Complete(CatalogEntry),
    Partial(PartialEntry),
}

impl Served {
    fn path(&self) -> &Path {
        match self {
            Served::Complete(entry) => &entry.path,
            Served::Partial(entry) => &entry.path,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Served::Complete(entry) => entry.size,
            Served::Partial(entry) => entry.size,
        }
    }

    fn tree(&self) -> &Bytes {
        match self {
            Served::Complete(entry) => &entry.tree,
            Served::Partial(entry) => &entry.tree,
        }
    }
}

/// What one connection is doing, as the watchdog sees it.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// Bytes written to the socket.
    written: AtomicU64,
    /// Milliseconds since `started` (plus one) when a write first found the
    /// socket full and nothing has been written since; 0 when not blocked.
    blocked_since: AtomicU64,
    /// File bodies being sent on this connection.
    bodies: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            written: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            bodies: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wrote(&self, bytes: usize) {
        if bytes > 0 {
            self.written.fetch_add(bytes as u64, Ordering::Relaxed);
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }

    fn blocked(&self) {
        let now = self.now_ms().saturating_add(1);
        let _ = self
            .blocked_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Counts a file body in flight on its connection while alive.
#[derive(Debug)]
struct BodyMark(Arc<Activity>);

impl BodyMark {
    fn new(activity: Arc<Activity>) -> Self {
        activity.bodies.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for BodyMark {
    fn drop(&mut self) {
        self.0.bodies.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's stream, noting every write's progress for the watchdog.
struct WatchedIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<I> WatchedIo<I> {
    fn note(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(written)) => self.activity.wrote(*written),
            Poll::Pending => self.activity.blocked(),
            Poll::Ready(Err(_)) => {}
        }
    }
}

/// Why the watchdog cut a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Stalled,
    TooSlow,
}

/// Watches a connection's writes; returns when it must be cut: a write
/// blocked for `write_timeout`, or file bodies sent slower than the
/// minimum rate over a whole window.
async fn watchdog(
    activity: Arc<Activity>,
    config: Arc<ServerConfig>,
    limit: RateLimit,
    slots: UploadSlots,
) -> Cut {
    let check = (config.write_timeout.min(config.rate_window) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window_ms = u64::try_from(config.rate_window.as_millis()).unwrap_or(u64::MAX);
    let write_timeout_ms = u64::try_from(config.write_timeout.as_millis()).unwrap_or(u64::MAX);
    let min_bytes = u128::from(config.min_upload_rate) * u128::from(window_ms) / 1000;
    let mut window_start = activity.now_ms();
    let mut window_written = activity.written.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        let now = activity.now_ms();
        let blocked = activity.blocked_since.load(Ordering::Relaxed);
        if blocked != 0 && now.saturating_sub(blocked - 1) >= write_timeout_ms {
            return Cut::Stalled;
        }
        let written = activity.written.load(Ordering::Relaxed);
        if activity.bodies.load(Ordering::Relaxed) == 0 {
            window_start = now;
            window_written = written;
            continue;
        }
        // Our own upload limit may be what makes bodies slow: a share of it
        // under the minimum rate is not the reader's fault, so the floor
        // drops to half that share, never to nothing (a reader taking
        // less than that still loses its slot).
        let rate = limit.rate();
        let share = rate / (slots.in_use().max(1) as u64);
        let floor = if rate != 0 && share < config.min_upload_rate {
            u128::from(share / 2) * u128::from(window_ms) / 1000
        } else {
            min_bytes
        };
        if now.saturating_sub(window_start) >= window_ms {
            if u128::from(written - window_written) < floor {
                return Cut::TooSlow;
            }
            window_start = now;
            window_written = written;
        }
    }
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

fn busy(text: &'static str) -> Response<Body> {
    let mut response = status(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// Says what a partial entry has (nothing once it has every group).
fn add_available_ranges(
    response: &mut Response<Body>,
    availability: Option<crate::partial::Availability>,
) {
    if let Some(available) = availability {
        if let Ok(value) = HeaderValue::from_str(&available.ranges) {
            response.headers_mut().insert(AVAILABLE_RANGES, value);
        }
    }
}

/// Says what a rationing server offers (`X-Offer`), at most 4 KiB of it.
fn add_offer(response: &mut Response<Body>, offer: &GroupSet) {
    let value = offer.to_header(crate::partial::MAX_AVAILABLE_RANGES_LEN);
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(OFFER, value);
    }
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

/// The port in a request's `X-Listen`, read strictly: exactly one such
/// header, 1 to 5 ASCII digits, 1-65535; anything else is `None`.
pub fn listen_port(headers: &HeaderMap) -> Option<u16> {
    let mut values = headers.get_all(LISTEN).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.as_bytes();
    if text.is_empty() || text.len() > 5 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text)
        .ok()?
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
}

impl ContentServer {
    /// A server for `catalog` with `upload_slots` concurrent uploads and
    /// the other limits at their defaults.
    pub fn new(catalog: Catalog, upload_slots: usize) -> Self {
        Self::with_config(
            catalog,
            ServerConfig {
                upload_slots,
                ..ServerConfig::default()
            },
        )
    }

    /// A server for `catalog` with the limits in `config`.
    pub fn with_config(catalog: Catalog, mut config: ServerConfig) -> Self {
        config.upload_slots = config.upload_slots.max(1);
        config.max_connections = config.max_connections.max(1);
        Self {
            catalog,
            slots: UploadSlots::new(config.upload_slots),
            upload_addresses: AddressSlots::new(config.uploads_per_address, config.exempt.clone()),
            connection_addresses: AddressSlots::new(
                config.connections_per_address,
                config.exempt.clone(),
            ),
            config: Arc::new(config),
            stats: Arc::new(ServerStats::default()),
            upload_limit: RateLimit::unlimited(),
            uploads: Arc::default(),
            next_upload: Arc::default(),
            mesh: SharedMesh::new(),
            ration: SharedRation::new(RationConfig::default()),
            doorway: Doorway::default(),
        }
    }

    /// Connections accepted that belong to a punch of ours or a push we
    /// wait for, not to HTTP (see [`crate::doorway`]).
    pub fn doorway(&self) -> &Doorway {
        &self.doorway
    }

    /// Hands out alternates from, and records `X-Listen` ports in, `mesh`
    /// (shared with whoever else holds a clone of it, e.g. the downloads)
    /// instead of the server's own.
    pub fn with_mesh(mut self, mesh: SharedMesh) -> Self {
        self.mesh = mesh;
        self
    }

    /// The download mesh the server hands alternates out of.
    pub fn mesh(&self) -> &SharedMesh {
        &self.mesh
    }

    /// Serves file bodies through `limit` (shared with whoever else holds
    /// a clone of it) instead of the server's own, unlimited one.
    pub fn with_upload_limit(mut self, limit: RateLimit) -> Self {
        self.upload_limit = limit;
        self
    }

    /// The rate limit every file body is sent through; set its rate to
    /// limit uploads (0 = unlimited), live.
    pub fn upload_limit(&self) -> &RateLimit {
        &self.upload_limit
    }

    /// The catalog served.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Changes how many uploads may run at once (at least 1). Lowered,
    /// the uploads running finish and new ones are refused until fewer run.
    pub fn set_upload_slots(&self, slots: usize) {
        self.slots.set_limit(slots.max(1));
    }

    /// The uploads running now, oldest first.
    pub fn uploads(&self) -> Vec<UploadInfo> {
        let now = Instant::now();
        let mut running: Vec<(u64, UploadInfo)> = self
            .uploads
            .iter()
            .map(|entry| (*entry.key(), entry.value().info(now)))
            .collect();
        running.sort_by_key(|(id, _)| *id);
        running.into_iter().map(|(_, info)| info).collect()
    }

    /// Bytes a second all running uploads send together, recently.
    pub fn upload_rate(&self) -> u64 {
        let now = Instant::now();
        self.uploads
            .iter()
            .map(|entry| entry.value().info(now).rate)
            .sum()
    }

    /// File body bytes sent since the server started.
    pub fn uploaded_bytes(&self) -> u64 {
        self.stats.bytes_sent.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The limits in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Uploads allowed at once.
    pub fn upload_slots(&self) -> usize {
        self.slots.limit()
    }

    /// Upload slots in use right now.
    pub fn uploads_in_progress(&self) -> usize {
        self.slots.in_use()
    }

    /// Upload slots `ip` holds right now (0 for an exempt address).
    pub fn uploads_held_by(&self, ip: IpAddr) -> usize {
        self.upload_addresses.held_by(ip)
    }

    /// Connections `ip` holds right now (0 for an exempt address).
    pub fn connections_held_by(&self, ip: IpAddr) -> usize {
        self.connection_addresses.held_by(ip)
    }

    /// Accepts connections on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let connections = Arc::new(Semaphore::new(self.config.max_connections));
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
                    // A dual-stack listener's IPv4 peers in canonical form,
                    // so limits, the mesh and the ration see one host once.
                    Ok((stream, peer)) => (stream, canopy_core::family::canonical(peer)),
                    Err(error) => {
                        tracing::warn!(%error, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let guard = match self.connection_addresses.try_take(peer.ip()) {
                Ok(guard) => guard,
                Err(refused) => {
                    self.stats
                        .address_connection_refusals
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, %refused, "http connection refused");
                    continue; // dropping the stream closes it
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let timeout = server.config.header_timeout;
                let stream = match server.doorway.sort(stream, peer, timeout).await {
                    Sorted::Http(stream) => stream,
                    Sorted::Taken => return,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = server.serve_connection_from(stream, Some(peer)) => {}
                }
                tracing::trace!(%peer, "http connection closed");
                drop(guard);
                drop(permit);
            });
        }
    }

    /// Serves HTTP/1.1 on one connection, accepted or pushed, from an
    /// unknown address (not limited per address).
    pub async fn serve_connection<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_connection_from(io, None).await;
    }

    /// Serves HTTP/1.1 on one connection from `peer`, whose upload slots
    /// count against its address's share. Returns when the client is done,
    /// or when the connection is cut for reading too slowly.
    pub async fn serve_connection_from<I>(&self, io: I, peer: Option<SocketAddr>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_one(io, peer, false).await;
    }

    /// Serves HTTP/1.1 on a connection spliced through the relay at
    /// `relay`: its upload slots count against the relay's address, and
    /// its `X-Listen` is not taken into the mesh (the IP it comes from is
    /// the relay's, not the downloader's).
    pub async fn serve_relayed<I>(&self, io: I, relay: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_one(io, Some(relay), true).await;
    }

    async fn serve_one<I>(&self, io: I, peer: Option<SocketAddr>, relayed: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.stats.open_connections.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        let server = self.clone();
        let per_connection = activity.clone();
        let service = service_fn(move |request| {
            let server = server.clone();
            let activity = per_connection.clone();
            async move { Ok::<_, Infallible>(server.handle(request, peer, relayed, activity).await) }
        });
        let io = WatchedIo {
            inner: io,
            activity: activity.clone(),
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .serve_connection(TokioIo::new(io), service);
        tokio::select! {
            result = connection => {
                if let Err(error) = result {
                    tracing::debug!(?peer, %error, "http connection ended with an error");
                }
            }
            cut = watchdog(
                activity,
                self.config.clone(),
                self.upload_limit.clone(),
                self.slots.clone(),
            ) => {
                self.stats.stalled_cut.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?peer, ?cut, "http connection cut: the reader is not reading");
            }
        }
        self.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: Option<SocketAddr>,
        relayed: bool,
        activity: Arc<Activity>,
    ) -> Response<Body> {
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
        // A complete entry first: a finished download is served whole
        // from the moment it is inserted, before its partial entry goes
        // (looked up again if the partial one went meanwhile).
        let served = match self.catalog.get(&id) {
            Some(entry) => Served::Complete(entry),
            None => match self.catalog.get_partial(&id) {
                Some(entry) => Served::Partial(entry),
                None => match self.catalog.get(&id) {
                    Some(entry) => Served::Complete(entry),
                    None => return not_found(),
                },
            },
        };
        // The requester's own address only; `::ffff:a.b.c.d` as a.b.c.d.
        let requester = peer.map(|peer| peer.ip().to_canonical());
        let listening = requester
            .filter(|_| !relayed)
            .zip(listen_port(request.headers()))
            .map(|(ip, port)| SocketAddr::new(ip, port));
        if let Some(listening) = listening {
            self.mesh.add(id, listening);
        }
        let head = request.method() == Method::HEAD;
        if resource == Resource::Tree {
            return Self::tree(served.tree(), head);
        }
        let mut response = self
            .content(&request, id, served, head, peer, listening, activity)
            .await;
        let alternates = self.alternates(&id, requester, listening);
        if !alternates.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&format_alternates(&alternates)) {
                response.headers_mut().insert(ALT, value);
            }
        }
        response
    }

    /// The alternates to hand a requester, never itself: the one address
    /// it listens at when it said so (others at its IP, e.g. more leaves
    /// on one host, are other sources), else nothing at its IP.
    fn alternates(
        &self,
        id: &ContentId,
        requester: Option<IpAddr>,
        listening: Option<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let Some(itself) = listening else {
            return self.mesh.pick(id, requester, ALTERNATES_PER_RESPONSE);
        };
        let mut picked = self.mesh.pick(id, None, ALTERNATES_PER_RESPONSE + 1);
        picked.retain(|addr| SocketAddr::new(addr.ip().to_canonical(), addr.port()) != itself);
        picked.truncate(ALTERNATES_PER_RESPONSE);
        picked
    }

    /// The tree kept in the catalog since the file was hashed (or, for a
    /// download, since its tree was verified).
    fn tree(tree: &Bytes, head: bool) -> Response<Body> {
        let tree = tree.clone();
        let len = tree.len();
        let mut response = Response::new(if head { empty() } else { full(tree) });
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        headers.insert("x-canopy-group-len", HeaderValue::from(GROUP_LEN));
        response
    }

    /// An upload slot, overall and for `peer`'s address, or why not (the
    /// text of the 503).
    fn take_slot(
        &self,
        peer: Option<IpAddr>,
    ) -> Result<(UploadSlot, Option<AddressGuard>), &'static str> {
        let per_address = match peer.map(|ip| self.upload_addresses.try_take(ip)) {
            None => None,
            Some(Ok(guard)) => Some(guard),
            Some(Err(refused)) => {
                self.stats.busy_refusals.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .address_upload_refusals
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%refused, "upload refused");
                return Err("this address holds its share of upload slots\n");
            }
        };
        match self.slots.try_take() {
            Some(slot) => Ok((slot, per_address)),
            None => {
                self.stats.busy_refusals.fetch_add(1, Ordering::Relaxed);
                Err("all upload slots are busy\n")
            }
        }
    }

    /// `/content/<id>`: the whole file, a range of it, or (a partial
    /// entry) what it has. `listening`: where the requester serves, if it
    /// said (a sharing downloader, which may be rationed).
    #[allow(clippy::too_many_arguments)]
    async fn content(
        &self,
        request: &Request<Incoming>,
        id: ContentId,
        served: Served,
        head: bool,
        peer: Option<SocketAddr>,
        listening: Option<SocketAddr>,
        activity: Arc<Activity>,
    ) -> Response<Body> {
        let path = served.path();
        let file = match open_no_follow(path).await {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "shared file unreadable");
                return not_found();
            }
        };
        let size = match file.metadata().await {
            Ok(meta) if meta.is_file() && meta.len() == served.size() => served.size(),
            _ => {
                tracing::warn!(path = %path.display(), "shared file not the size it was hashed at; not served");
                return not_found();
            }
        };
        // Err: malformed, several ranges, or outside the file.
        let range = match request.headers().get(header::RANGE) {
            None => Ok(None),
            Some(value) => single_range(value, size).map(Some).ok_or(()),
        };
        let availability = match &served {
            Served::Complete(_) => None,
            // A download: only what it has verified and written.
            Served::Partial(entry) => entry.availability(range.clone().ok().flatten()),
        };
        let range = match (range, &availability) {
            // A whole file, or a download with every group in.
            (Ok(range), None) => range,
            (Ok(range), Some(available)) if available.covers || (range.is_none() && head) => range,
            _ => {
                let mut response = unsatisfiable(size);
                add_available_ranges(&mut response, availability);
                return response;
            }
        };
        // A whole file asked for by a sharing downloader that says what
        // it needs: counted, and rationed while a crowd is on.
        let needs = request
            .headers()
            .get(NEED)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| GroupSet::from_header(value, size));
        let rationed = match (&served, listening, needs) {
            (Served::Complete(_), Some(requester), Some(needs)) if self.config.super_seed => {
                let asked = match &range {
                    Some(range) => *range.start() / GROUP_LEN..*range.end() / GROUP_LEN + 1,
                    None => 0..size.div_ceil(GROUP_LEN),
                };
                if !head {
                    let ration = self.ration.take(id, size, requester, asked.clone(), &needs);
                    if let Ration::Refuse { offer } = ration {
                        self.stats.offer_refusals.fetch_add(1, Ordering::Relaxed);
                        let mut response = unsatisfiable(size);
                        add_offer(&mut response, &offer);
                        return response;
                    }
                }
                Some((requester, asked, needs))
            }
            _ => None,
        };
        let send = Sending {
            id,
            path,
            size,
            range,
            head,
            peer,
        };
        let mut response = self.send(file, send, activity).await;
        add_available_ranges(&mut response, availability);
        if let Some((requester, asked, needs)) = rationed {
            if !head && !response.status().is_success() {
                self.ration.unrecord(id, asked); // taken, but no slot
            }
            if let Some(offer) = self.ration.offer(id, size, requester, &needs) {
                add_offer(&mut response, &offer);
            }
        }
        response
    }

    /// Sends what `send` says of `file`, within an upload slot.
    async fn send(
        &self,
        mut file: tokio::fs::File,
        send: Sending<'_>,
        activity: Arc<Activity>,
    ) -> Response<Body> {
        let Sending {
            id,
            path,
            size,
            range,
            head,
            peer,
        } = send;
        let slot = if head {
            None
        } else {
            match self.take_slot(peer.map(|p| p.ip())) {
                Ok(slot) => Some(slot),
                Err(why) => return busy(why),
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
            let mark = self.register_upload(peer, id, path, start, len, size);
            let upload = mark.upload.clone();
            // The slots are held, the body counted for the watchdog and the
            // upload kept in the registry for as long as the body is sent.
            let held = (slot, BodyMark::new(activity), mark);
            let reader = Throttled::new(file.take(len), self.upload_limit.clone());
            let stream = ReaderStream::with_capacity(reader, READ_CHUNK).map(move |chunk| {
                let _held = &held;
                match chunk {
                    Ok(bytes) => {
                        let sent = bytes.len() as u64;
                        stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
                        upload.sent(sent);
                        Ok(Frame::data(bytes))
                    }
                    Err(error) => {
                        upload.failed.store(true, Ordering::Relaxed);
                        Err(error)
                    }
                }
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

impl ContentServer {
    /// Puts an upload in the registry and logs its start.
    fn register_upload(
        &self,
        peer: Option<SocketAddr>,
        content_id: ContentId,
        path: &Path,
        first: u64,
        length: u64,
        size: u64,
    ) -> UploadMark {
        let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let now = Instant::now();
        let upload = Arc::new(Upload {
            peer,
            content_id,
            path: path.to_path_buf(),
            first,
            length,
            started: SystemTime::now(),
            started_at: now,
            bytes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            meter: Mutex::new(RateMeter::new(now)),
        });
        let id = self.next_upload.fetch_add(1, Ordering::Relaxed);
        self.uploads.insert(id, upload.clone());
        let last = (first + length).saturating_sub(1);
        tracing::info!(
            peer = %peer,
            file = %upload.path.display(),
            content_id = %content_id,
            range = format_args!("{}-{last}/{size}", upload.first),
            "upload started"
        );
        UploadMark {
            id,
            upload,
            registry: self.uploads.clone(),
        }
    }
}

/// Opens a shared file for reading without following a link in its last
/// component: a link planted where a shared file was is never served.
async fn open_no_follow(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uploads_rate_is_measured_over_windows_and_falls_when_it_stalls() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut meter = RateMeter::new(start);
        // A first burst is not read as a huge rate.
        meter.add(32 * 1024, at(1));
        assert_eq!(meter.rate(at(1)), 64 * 1024);
        // A full window: 512 KiB over 2 s.
        meter.add(480 * 1024, at(2000));
        assert_eq!(meter.rate(at(2500)), 256 * 1024);
        // Nothing more: once a window has passed, the rate falls to 0.
        assert_eq!(meter.rate(at(4500)), 0);
    }

    #[test]
    fn x_listen_is_read_strictly() {
        let port = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(LISTEN, HeaderValue::from_str(value).unwrap());
            }
            listen_port(&headers)
        };
        assert_eq!(port(&["6346"]), Some(6346));
        assert_eq!(port(&["1"]), Some(1));
        assert_eq!(port(&["65535"]), Some(65535));
        assert_eq!(port(&[]), None);
        for bad in [
            "",
            "0",
            "00000",
            "65536",
            "123456",
            "+1",
            "-1",
            "6346 ",
            "63 46",
            "0x50",
            "6346,6347",
            "é",
        ] {
            assert_eq!(port(&[bad]), None, "{bad}");
        }
        assert_eq!(port(&["6346", "6346"]), None);
    }
}
