//! Push: how a downloader reaches a firewalled source.
//!
//! The downloader listens on a callback port and sends a Push through the
//! overlay. The source connects out to that port, writes one line,
//! `CANOPY-PUSH <its node id in hex>\n`, and then serves HTTP on the same
//! connection as if the downloader had dialed it. The downloader matches
//! the line to the source it is waiting for and speaks HTTP as a client.
//!
//! The waiting is a [`PushInbox`]: a [`CallbackListener`] (a port opened
//! for the purpose) feeds one, and so does the leaf's own HTTP server
//! through its [`crate::doorway::Doorway`], for a downloader whose HTTP
//! port is reachable (a mapped port) and that names it as the callback.
//! A source asked to punch ([`crate::punch`]) opens its connection the
//! same way, with the same line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_proto::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{ConnectFuture, Connected, Connector};
use crate::path::TransferPath;

/// The first word of the line a pushed connection opens with.
pub const PREAMBLE: &str = "CANOPY-PUSH";
/// Longest preamble line accepted.
const MAX_LINE: usize = 128;
/// How long a new callback connection may take to say who it is.
pub const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections waited for at once.
const MAX_WAITING: usize = 256;

/// Opens the pushed connection from the source's side: dial, introduce.
pub async fn connect_back(
    callback: SocketAddr,
    us: NodeId,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(callback))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    write_preamble(&mut stream, us).await?;
    Ok(stream)
}

/// Writes the line a pushed connection opens with: who we are.
pub async fn write_preamble(
    stream: &mut (impl AsyncWrite + Unpin),
    us: NodeId,
) -> std::io::Result<()> {
    stream
        .write_all(format!("{PREAMBLE} {us}\n").as_bytes())
        .await
}

/// Pushed connections waited for, by the node id they must come from.
/// Cheap to clone (clones share the table).
#[derive(Debug, Clone, Default)]
pub struct PushInbox {
    waiting: Arc<Mutex<HashMap<NodeId, Vec<oneshot::Sender<TcpStream>>>>>,
}

impl PushInbox {
    /// A connection from `node` will be handed to the returned receiver;
    /// `None` if too many are waited for already.
    pub fn await_push_from(&self, node: NodeId) -> Option<oneshot::Receiver<TcpStream>> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().ok()?;
        waiting.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        if waiting.values().map(Vec::len).sum::<usize>() >= MAX_WAITING {
            return None;
        }
        waiting.entry(node).or_default().push(tx);
        Some(rx)
    }

    /// True if any connection is waited for.
    pub fn is_waiting(&self) -> bool {
        self.waiting.lock().is_ok_and(|waiting| {
            waiting
                .values()
                .any(|senders| senders.iter().any(|s| !s.is_closed()))
        })
    }

    /// Hands `stream`, which said it comes from `node`, to whoever waits
    /// for it; gives it back if nobody does.
    pub fn deliver(&self, node: NodeId, mut stream: TcpStream) -> Result<(), TcpStream> {
        loop {
            let sender = self.waiting.lock().ok().and_then(|mut w| {
                let senders = w.get_mut(&node)?;
                let sender = senders.pop();
                if senders.is_empty() {
                    w.remove(&node);
                }
                sender
            });
            match sender {
                // A waiter that gave up: try the next.
                Some(sender) => match sender.send(stream) {
                    Ok(()) => return Ok(()),
                    Err(back) => stream = back,
                },
                None => return Err(stream),
            }
        }
    }

    /// Reads the preamble of `stream` (from `peer`) within
    /// [`PREAMBLE_TIMEOUT`] and hands it on; false if it named nobody
    /// waited for, or no valid preamble came.
    pub async fn take(&self, mut stream: TcpStream, peer: SocketAddr) -> bool {
        let Ok(Some(node)) =
            tokio::time::timeout(PREAMBLE_TIMEOUT, read_preamble(&mut stream)).await
        else {
            tracing::debug!(%peer, "pushed connection without a valid preamble");
            return false;
        };
        match self.deliver(node, stream) {
            Ok(()) => true,
            Err(_) => {
                tracing::debug!(%peer, %node, "unexpected pushed connection");
                false
            }
        }
    }
}

/// The downloader's callback port.
#[derive(Debug)]
pub struct CallbackListener {
    local_addr: SocketAddr,
    inbox: PushInbox,
}

impl CallbackListener {
    /// Listens on `addr` until `shutdown` (`[::]`: both families, see
    /// [`crate::listen`]).
    pub async fn bind(
        addr: SocketAddr,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Arc<Self>> {
        let listener = crate::listen::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let inbox = PushInbox::default();
        tracker.spawn(accept_loop(
            listener,
            inbox.clone(),
            shutdown,
            tracker.clone(),
        ));
        Ok(Arc::new(Self { local_addr, inbox }))
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections it waits for.
    pub fn inbox(&self) -> &PushInbox {
        &self.inbox
    }

    /// A connection from `node` will be handed to the returned receiver.
    pub fn await_push_from(&self, node: NodeId) -> Option<oneshot::Receiver<TcpStream>> {
        self.inbox.await_push_from(node)
    }
}

/// Reads a `CANOPY-PUSH <node id>` line, nothing after it; `None` if the
/// line is not one (or longer than 128 bytes).
pub async fn read_preamble(stream: &mut (impl AsyncRead + Unpin)) -> Option<NodeId> {
    let mut line = Vec::with_capacity(MAX_LINE);
    // Byte by byte: nothing after the newline may be consumed.
    while line.len() < MAX_LINE {
        let byte = stream.read_u8().await.ok()?;
        if byte == b'\n' {
            let text = std::str::from_utf8(&line).ok()?;
            let id = text.strip_prefix(PREAMBLE)?.trim();
            return id.parse().ok();
        }
        line.push(byte);
    }
    None
}

async fn accept_loop(
    listener: TcpListener,
    inbox: PushInbox,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let inbox = inbox.clone();
        tracker.spawn(async move {
            inbox.take(stream, peer).await;
        });
    }
}

/// Asks the source, through the overlay, to connect out to us.
pub type PushRequester = Arc<dyn Fn() -> ConnectRequest + Send + Sync>;
/// The sending of one push request.
pub type ConnectRequest =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// Reaches a firewalled source: send a push, wait for it to connect back.
pub struct PushConnector {
    node: NodeId,
    callback: PushInbox,
    request: PushRequester,
    timeout: Duration,
}

impl std::fmt::Debug for PushConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConnector")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PushConnector {
    /// Reaches `node` by calling `request` (which sends the Push) and
    /// waiting up to `timeout` for its connection in `callback` (a
    /// [`CallbackListener`]'s inbox, or the HTTP server's).
    pub fn new(
        node: NodeId,
        callback: PushInbox,
        request: PushRequester,
        timeout: Duration,
    ) -> Self {
        Self {
            node,
            callback,
            request,
            timeout,
        }
    }
}

impl Connector for PushConnector {
    fn connect(&self) -> ConnectFuture {
        let receiver = self.callback.await_push_from(self.node);
        let request = (self.request)();
        let timeout = self.timeout;
        Box::pin(async move {
            let receiver =
                receiver.ok_or_else(|| std::io::Error::other("too many pushes outstanding"))?;
            request.await?;
            match tokio::time::timeout(timeout, receiver).await {
                Ok(Ok(stream)) => Ok(Connected::new(stream, TransferPath::Push)),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the firewalled source did not connect back",
                )),
            }
        })
    }
}
