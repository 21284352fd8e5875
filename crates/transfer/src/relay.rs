//! The downloader's side of a relayed transfer, the last resort for a
//! firewalled source neither a push nor hole punching reaches.
//!
//! [`RelayConnector`]: chooses a fresh circuit token, has a push asking
//! for it sent through a relaying supernode we are joined to (the
//! [`RelayRequester`] picks one, another at each attempt, and says where
//! it is), dials that supernode, asks to `connect` the circuit, reads its
//! `OK <max bytes> <max seconds>` and then the source's `CANOPY-PUSH <node
//! id>` line, and checks the id. The stream it returns counts what it
//! carries: when the relay ends it at its byte or time limit, reading or
//! writing fails with [`PathClosed`], which the download takes as "this
//! path closed" (the source's groups go back to the pool and the source is
//! asked again shortly, on a new circuit) rather than as a source that
//! lied. A refusal for want of room (no slot, per-IP) is a [`PathClosed`]
//! too; any other refusal is an error.
//!
//! [`serve_half`]: the source's side of the same circuit, asked for by
//! the push: `serve`, the relay's `OK`, then our introduction.
//!
//! [`FallbackConnector`]: the direct ways first (push, hole punching), the
//! relay only when they fail; after the relay was needed, later
//! connections go to it at once for [`RETRY_DIRECT_AFTER`], then the
//! direct ways are tried again.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use canopy_core::relay::{Grant, Half, MAX_LINE, Refusal, parse_answer, request_line};
use canopy_proto::{CircuitToken, NodeId, RelayCircuit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::client::{ConnectFuture, Connected, Connector};
use crate::path::TransferPath;
use crate::push::PREAMBLE;

/// After the relay was needed, the direct ways are tried again only after
/// this long.
pub const RETRY_DIRECT_AFTER: Duration = Duration::from_secs(5 * 60);
/// How often an unknown token is asked for again (our push may reach the
/// relay's core after our connection reaches its service), and the first
/// pause (doubling).
const UNKNOWN_TOKEN_RETRIES: u32 = 5;
const UNKNOWN_TOKEN_PAUSE: Duration = Duration::from_millis(100);

/// A path ended at the relay's limit: asked again this soon (on a new
/// circuit).
pub const AT_LIMIT_PAUSE: Duration = Duration::from_millis(200);
/// A relay with no room now: asked again after this long.
pub const RELAY_FULL_PAUSE: Duration = Duration::from_secs(5);

/// A relayed path ended at the relay's limit (or the relay had no room):
/// not the source's fault; connect again after `retry_after`.
#[derive(Debug, thiserror::Error)]
#[error("relay path closed: {reason}")]
pub struct PathClosed {
    /// What happened.
    pub reason: String,
    /// When to try again.
    pub retry_after: Duration,
}

/// The [`PathClosed`] that `error` is or was caused by, if any.
pub fn path_closed_in<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e PathClosed> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(closed) = error.downcast_ref::<PathClosed>() {
            return Some(closed);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(closed) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<PathClosed>())
            {
                return Some(closed);
            }
        }
        next = error.source();
    }
    None
}

/// Whether `error` or anything it was caused by is a [`PathClosed`].
pub fn is_path_closed(error: &(dyn std::error::Error + 'static)) -> bool {
    path_closed_in(error).is_some()
}

fn path_closed(reason: impl Into<String>, retry_after: Duration) -> std::io::Error {
    std::io::Error::other(PathClosed {
        reason: reason.into(),
        retry_after,
    })
}

/// The sending of one relayed push.
pub type RelayRequest = Pin<Box<dyn Future<Output = std::io::Result<SocketAddr>> + Send>>;
/// Sends a push asking the source to meet us on circuit `token` through
/// a relaying supernode (attempt `n` picks the `n`th, round and round),
/// and says that supernode's address.
pub type RelayRequester = Arc<dyn Fn(CircuitToken, usize) -> RelayRequest + Send + Sync>;

/// Reaches a firewalled source through a relay. See the module docs.
pub struct RelayConnector {
    node: NodeId,
    request: RelayRequester,
    timeout: Duration,
    attempts: AtomicUsize,
}

impl std::fmt::Debug for RelayConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConnector")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RelayConnector {
    /// Reaches `node` through the relays `request` sends pushes through,
    /// waiting up to `timeout` for it to come on the circuit.
    pub fn new(node: NodeId, request: RelayRequester, timeout: Duration) -> Self {
        Self {
            node,
            request,
            timeout,
            attempts: AtomicUsize::new(0),
        }
    }
}

impl Connector for RelayConnector {
    fn connect(&self) -> ConnectFuture {
        let token = CircuitToken(rand::random());
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        let request = (self.request)(token, attempt);
        let (node, timeout) = (self.node, self.timeout);
        Box::pin(async move {
            let relay = request.await?;
            let opened = tokio::time::timeout(timeout, open(relay, token, node)).await;
            let (stream, grant, preamble) = opened.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the source did not come to the relay at {relay}"),
                )
            })??;
            tracing::debug!(%relay, %node, ?grant, "relayed connection open");
            Ok(Connected::new(
                Metered::new(stream, grant, preamble),
                TransferPath::Relay,
            ))
        })
    }
}

/// Dials the relay, asks for our half of `token` (again while the relay
/// does not know it yet), and reads the source's introduction.
async fn open(
    relay: SocketAddr,
    token: CircuitToken,
    node: NodeId,
) -> std::io::Result<(TcpStream, Grant, u64)> {
    let mut pause = UNKNOWN_TOKEN_PAUSE;
    let mut tries = 0;
    let (mut stream, grant) = loop {
        let mut stream = TcpStream::connect(relay).await?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(request_line(Half::Connect, token).as_bytes())
            .await?;
        let line = read_line(&mut stream).await?;
        match parse_answer(&line) {
            Ok(grant) => break (stream, grant),
            Err(Some(Refusal::UnknownToken)) if tries < UNKNOWN_TOKEN_RETRIES => {
                tries += 1;
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(Some(refusal)) if refusal.is_busy() => {
                return Err(path_closed(
                    format!("the relay at {relay} refused: {refusal}"),
                    RELAY_FULL_PAUSE,
                ));
            }
            Err(refusal) => {
                let reason = refusal.map_or_else(|| format!("{line:?}"), |r| r.to_string());
                return Err(std::io::Error::other(format!(
                    "the relay at {relay} refused: {reason}"
                )));
            }
        }
    };
    let preamble = read_line(&mut stream).await?;
    let said = preamble
        .strip_prefix(PREAMBLE)
        .and_then(|id| id.trim().parse::<NodeId>().ok());
    if said != Some(node) {
        return Err(std::io::Error::other(format!(
            "the relay joined us to someone else ({preamble:?})"
        )));
    }
    Ok((stream, grant, preamble.len() as u64 + 1))
}

/// The source's half: dials the relay, asks to serve `circuit`, reads
/// its answer and introduces `us` as on a pushed connection; the stream
/// then carries the downloader's requests.
pub async fn serve_half(circuit: RelayCircuit, us: NodeId) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(circuit.addr).await?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(request_line(Half::Serve, circuit.token).as_bytes())
        .await?;
    let line = read_line(&mut stream).await?;
    if let Err(refusal) = parse_answer(&line) {
        let reason = refusal.map_or("no answer".to_owned(), |r| r.to_string());
        return Err(std::io::Error::other(format!("relay refused: {reason}")));
    }
    stream
        .write_all(format!("{PREAMBLE} {us}\n").as_bytes())
        .await?;
    Ok(stream)
}

/// One line of at most [`MAX_LINE`] bytes, byte by byte so nothing after
/// it is consumed.
async fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::with_capacity(MAX_LINE);
    while line.len() < MAX_LINE {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return String::from_utf8(line)
                .map_err(|_| std::io::Error::other("a relay line that is not text"));
        }
        line.push(byte);
    }
    Err(std::io::Error::other("a relay line too long"))
}

/// A relayed stream that counts the bytes it carries both ways (as the
/// relay does), so an end at the relay's limit reads as [`PathClosed`].
struct Metered {
    inner: TcpStream,
    grant: Grant,
    carried: u64,
    opened: Instant,
}

impl Metered {
    fn new(inner: TcpStream, grant: Grant, carried: u64) -> Self {
        Self {
            inner,
            grant,
            carried,
            opened: Instant::now(),
        }
    }

    /// Whether the relay has ended the circuit at a limit by now (its
    /// count is never above ours: it counts what it passed on, we what we
    /// sent and got; its clock started after ours).
    fn at_limit(&self) -> bool {
        self.carried >= self.grant.max_bytes
            || self.opened.elapsed() >= Duration::from_secs(self.grant.max_seconds)
    }

    fn closed(&self) -> std::io::Error {
        path_closed(
            format!(
                "the relay's limit ({} bytes, {} s) was reached",
                self.grant.max_bytes, self.grant.max_seconds
            ),
            AT_LIMIT_PAUSE,
        )
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = (buf.filled().len() - before) as u64;
                if read == 0 && buf.remaining() > 0 && self.at_limit() {
                    return Poll::Ready(Err(self.closed()));
                }
                self.carried += read;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(_)) if self.at_limit() => Poll::Ready(Err(self.closed())),
            other => other,
        }
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(written)) => {
                self.carried += written as u64;
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(_)) if self.at_limit() => Poll::Ready(Err(self.closed())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The direct ways first, the relay when they fail. See the module docs.
pub struct FallbackConnector {
    direct: Arc<dyn Connector>,
    relay: Arc<dyn Connector>,
    /// When the relay was last needed.
    relayed_at: Arc<Mutex<Option<Instant>>>,
    retry_direct_after: Duration,
}

impl std::fmt::Debug for FallbackConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackConnector")
            .field("direct", &self.direct)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl FallbackConnector {
    /// Tries `direct`, then `relay`; after the relay was needed, only the
    /// relay for `retry_direct_after`.
    pub fn new(
        direct: Arc<dyn Connector>,
        relay: Arc<dyn Connector>,
        retry_direct_after: Duration,
    ) -> Self {
        Self {
            direct,
            relay,
            relayed_at: Arc::default(),
            retry_direct_after,
        }
    }

    /// Whether the last connection had to go through the relay.
    pub fn relayed(&self) -> bool {
        self.relayed_at.lock().is_ok_and(|at| at.is_some())
    }
}

impl Connector for FallbackConnector {
    fn connect(&self) -> ConnectFuture {
        let (direct, relay) = (self.direct.clone(), self.relay.clone());
        let relayed_at = self.relayed_at.clone();
        let retry_after = self.retry_direct_after;
        let recently = relayed_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < retry_after);
        Box::pin(async move {
            let direct_error = if recently {
                None
            } else {
                match direct.connect().await {
                    Ok(stream) => {
                        if let Ok(mut at) = relayed_at.lock() {
                            *at = None;
                        }
                        return Ok(stream);
                    }
                    Err(error) => {
                        tracing::info!(%error, "the direct ways failed; trying a relay");
                        Some(error)
                    }
                }
            };
            match relay.connect().await {
                Ok(stream) => {
                    if let Ok(mut at) = relayed_at.lock() {
                        *at = Some(Instant::now());
                    }
                    Ok(stream)
                }
                Err(error) if is_path_closed(&error) => Err(error),
                Err(error) => {
                    // The relay failed too: the direct ways next time.
                    if let Ok(mut at) = relayed_at.lock() {
                        *at = None;
                    }
                    Err(match direct_error {
                        Some(direct) => std::io::Error::new(
                            error.kind(),
                            format!("{direct}; through a relay: {error}"),
                        ),
                        None => error,
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its connects; fails them unless `works`.
    #[derive(Debug)]
    struct Stub {
        works: std::sync::atomic::AtomicBool,
        calls: AtomicUsize,
        closed: bool,
    }

    impl Stub {
        fn new(works: bool) -> Arc<Self> {
            Arc::new(Self {
                works: works.into(),
                calls: AtomicUsize::new(0),
                closed: false,
            })
        }
    }

    impl Connector for Stub {
        fn connect(&self) -> ConnectFuture {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let (works, closed) = (self.works.load(Ordering::Relaxed), self.closed);
            Box::pin(async move {
                if works {
                    let (a, _b) = tokio::io::duplex(64);
                    Ok(Connected::new(a, TransferPath::Direct))
                } else if closed {
                    Err(path_closed("full", RELAY_FULL_PAUSE))
                } else {
                    Err(std::io::Error::other("no way"))
                }
            })
        }
    }

    #[tokio::test]
    async fn the_relay_is_used_only_when_the_direct_way_fails_and_then_for_a_while() {
        let (direct, relay) = (Stub::new(true), Stub::new(true));
        let fallback =
            FallbackConnector::new(direct.clone(), relay.clone(), Duration::from_secs(60));
        fallback.connect().await.unwrap();
        assert_eq!(relay.calls.load(Ordering::Relaxed), 0, "direct worked");
        assert!(!fallback.relayed());

        direct.works.store(false, Ordering::Relaxed);
        fallback.connect().await.unwrap();
        assert_eq!(relay.calls.load(Ordering::Relaxed), 1);
        assert!(fallback.relayed());
        // Remembered: straight to the relay, no second wait on the push.
        fallback.connect().await.unwrap();
        assert_eq!(direct.calls.load(Ordering::Relaxed), 2);
        assert_eq!(relay.calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_direct_way_is_tried_again_after_a_while() {
        let (direct, relay) = (Stub::new(false), Stub::new(true));
        let fallback = FallbackConnector::new(direct.clone(), relay.clone(), Duration::ZERO);
        fallback.connect().await.unwrap();
        fallback.connect().await.unwrap();
        assert_eq!(direct.calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn both_ways_failing_says_why_and_a_full_relay_is_a_closed_path() {
        let fallback = FallbackConnector::new(Stub::new(false), Stub::new(false), Duration::ZERO);
        let error = fallback.connect().await.err().unwrap();
        assert!(error.to_string().contains("through a relay"), "{error}");
        assert!(!is_path_closed(&error));

        let full = Arc::new(Stub {
            works: false.into(),
            calls: AtomicUsize::new(0),
            closed: true,
        });
        let fallback = FallbackConnector::new(Stub::new(false), full, Duration::ZERO);
        let error = fallback.connect().await.err().unwrap();
        assert!(is_path_closed(&error), "{error}");
        // Wrapped as the HTTP client wraps it, still seen.
        let wrapped = crate::client::ClientError::Connect(error);
        assert!(is_path_closed(&wrapped));
    }
}
