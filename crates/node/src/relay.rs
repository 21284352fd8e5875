//! The relay service of a supernode whose operator gave it relay slots:
//! on the overlay port, a connection that opens with a `CANOPY-RELAY`
//! line instead of a Noise message is one half of a circuit (see
//! [`canopy_core::relay`] for the policy and the line grammar). Each half
//! is answered `OK <max bytes> <max seconds>` or `REFUSED <reason>`; the
//! first half admitted waits for the other until its token's deadline, the
//! second hands its stream over, and the first splices the two within the
//! circuit's budget: bytes both ways together, a deadline, a rate.
//!
//! Bounded: connections still reading their line (a semaphore; the line
//! is at most [`MAX_LINE`] bytes and must come within [`LINE_TIMEOUT`]),
//! halves waiting and circuits (the policy's slots, halves per IP).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_core::relay::{
    Admitted, CircuitBudget, Cut, MAX_LINE, Refusal, Relay, RelayConfig, RelayStats, Take, ok_line,
    parse_request, refused_line,
};
use canopy_proto::CircuitToken;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::leaf::PushWay;

/// How long a relay connection may take to send its line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections reading their line at once; more are closed unanswered.
const MAX_READING: usize = 64;
/// How much is read from one side before it is sent on.
const CHUNK: usize = 16 * 1024;

/// The first byte of a relay line; no Noise message starts with it.
pub const FIRST_BYTE: u8 = b'C';

type Handover = oneshot::Sender<(TcpStream, CircuitBudget)>;
type Waiting = HashMap<CircuitToken, Handover>;

/// An admitted end, and how it meets the other.
enum Meeting {
    /// The first end: waits on `rx` until `until`.
    Wait {
        until: canopy_core::Time,
        rx: oneshot::Receiver<(TcpStream, CircuitBudget)>,
    },
    /// The second: hands its stream to the first, if still there.
    Pair {
        budget: CircuitBudget,
        first: Option<Handover>,
    },
}

/// The relay: its policy, the halves waiting, its counters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayService {
    policy: Arc<Mutex<Relay>>,
    waiting: Arc<Mutex<Waiting>>,
    reading: Arc<Semaphore>,
    clock: Clock,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl RelayService {
    /// A relay under `config` (slots 0: every half is refused
    /// `relay-disabled`), its tasks on `tracker` until `shutdown`.
    pub fn new(config: RelayConfig, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            policy: Arc::new(Mutex::new(Relay::new(config))),
            waiting: Arc::default(),
            reading: Arc::new(Semaphore::new(MAX_READING)),
            clock: Clock::new(),
            tracker,
            shutdown,
        }
    }

    /// Our own leaf asked for circuit `token` (the core said so).
    pub fn register(&self, token: CircuitToken) {
        let now = self.clock.now();
        if let Ok(mut policy) = self.policy.lock() {
            if !policy.register(token, now) {
                tracing::debug!(%token, "relay circuit not registered (table full or known)");
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> RelayStats {
        self.policy
            .lock()
            .map(|policy| policy.stats())
            .unwrap_or_default()
    }

    /// Takes an accepted connection whose first byte says it is a relay
    /// half; `hold` (the accept loop's per-address count) is kept until
    /// its line is read.
    pub fn accept(&self, stream: TcpStream, remote: SocketAddr, hold: impl Send + 'static) {
        let Ok(permit) = self.reading.clone().try_acquire_owned() else {
            // Said without waiting (a fresh socket takes a short line),
            // so the caller knows to come back later.
            tracing::debug!(%remote, "too many relay lines being read; refused");
            self.count(Refusal::NoSlots);
            let _ = stream.try_write(refused_line(Refusal::NoSlots).as_bytes());
            return;
        };
        let service = self.clone();
        self.tracker.spawn(async move {
            let shutdown = service.shutdown.clone();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = service.serve(stream, remote, hold, permit) => {}
            }
        });
    }

    async fn serve(
        &self,
        mut stream: TcpStream,
        remote: SocketAddr,
        hold: impl Send,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let line = tokio::time::timeout(LINE_TIMEOUT, read_line(&mut stream)).await;
        drop(permit);
        drop(hold);
        let request = line.ok().flatten().as_deref().and_then(parse_request);
        let Some((half, token)) = request else {
            self.count(Refusal::BadRequest);
            let _ = write_line(&mut stream, &refused_line(Refusal::BadRequest)).await;
            return;
        };
        let now = self.clock.now();
        // Admission and the hand-over slot are one step under the policy's
        // lock: a second end arriving while the first is still being
        // answered finds the first's slot already there.
        let admitted = match self.policy.lock() {
            Ok(mut policy) => {
                let ok = ok_line(policy.config());
                policy
                    .admit(token, half, remote.ip(), now)
                    .map(|admitted| (self.meet(token, admitted), ok))
            }
            Err(_) => return,
        };
        let (meeting, ok) = match admitted {
            Ok(pair) => pair,
            Err(refusal) => {
                tracing::debug!(%remote, %token, %refusal, "relay half refused");
                let _ = write_line(&mut stream, &refused_line(refusal)).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let answered = write_line(&mut stream, &ok).await.is_ok();
        match meeting {
            Meeting::Wait { until, mut rx } => {
                let wait = until.since(now);
                let paired = if answered {
                    // An end that hangs up while waiting frees its place
                    // at once (what it already sent, a source's preamble,
                    // waits in the socket and says nothing of that).
                    let hung_up = async {
                        let mut byte = [0u8; 1];
                        match stream.peek(&mut byte).await {
                            Ok(0) | Err(_) => {}
                            Ok(_) => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        paired = tokio::time::timeout(wait, &mut rx) => paired.ok().and_then(Result::ok),
                        () = hung_up => None,
                    }
                } else {
                    None
                };
                let paired = match paired {
                    Some(paired) => Some(paired),
                    None => {
                        if let Ok(mut waiting) = self.waiting.lock() {
                            waiting.remove(&token);
                        }
                        // The other end may have come just now.
                        rx.try_recv().ok()
                    }
                };
                match paired {
                    Some((other, budget)) => {
                        tracing::info!(%token, %remote, "relay circuit open");
                        let cut = self.splice(stream, other, budget).await;
                        tracing::info!(%token, ?cut, "relay circuit closed");
                        self.close(token, cut);
                    }
                    None => {
                        if let Ok(mut policy) = self.policy.lock() {
                            policy.abandon(token, half);
                        }
                    }
                }
            }
            Meeting::Pair { budget, first } => {
                let handed = match first {
                    Some(first) if answered => first.send((stream, budget)).is_ok(),
                    _ => false,
                };
                if !handed {
                    // The first end gave up just now (or we could not
                    // answer): the circuit is over.
                    self.close(token, None);
                }
            }
        }
    }

    /// Where an admitted end meets the other: the first leaves a slot
    /// for it (before anyone can pair), the second takes that slot.
    fn meet(&self, token: CircuitToken, admitted: Admitted) -> Meeting {
        let Ok(mut waiting) = self.waiting.lock() else {
            // Unreachable in practice (nothing panics holding it); the
            // circuit then ends at its deadline.
            let (_, rx) = oneshot::channel();
            return match admitted {
                Admitted::Wait { until } => Meeting::Wait { until, rx },
                Admitted::Paired { budget } => Meeting::Pair {
                    budget,
                    first: None,
                },
            };
        };
        match admitted {
            Admitted::Wait { until } => {
                let (tx, rx) = oneshot::channel();
                waiting.insert(token, tx);
                Meeting::Wait { until, rx }
            }
            Admitted::Paired { budget } => Meeting::Pair {
                budget,
                first: waiting.remove(&token),
            },
        }
    }

    fn count(&self, refusal: Refusal) {
        if let Ok(mut policy) = self.policy.lock() {
            policy.count_refusal(refusal);
        }
    }

    fn close(&self, token: CircuitToken, cut: Option<Cut>) {
        if let Ok(mut policy) = self.policy.lock() {
            policy.close(token, cut);
        }
    }

    /// Carries bytes both ways within `budget` until either side ends or
    /// the budget does (its cut returned).
    async fn splice(&self, a: TcpStream, b: TcpStream, budget: CircuitBudget) -> Option<Cut> {
        let budget = Arc::new(Mutex::new(budget));
        let (a_read, a_write) = a.into_split();
        let (b_read, b_write) = b.into_split();
        let forward = self.pump(a_read, b_write, budget.clone());
        let backward = self.pump(b_read, a_write, budget);
        // Whichever way ends first ends the circuit.
        tokio::select! {
            cut = forward => cut,
            cut = backward => cut,
        }
    }

    async fn pump(
        &self,
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        budget: Arc<Mutex<CircuitBudget>>,
    ) -> Option<Cut> {
        let mut buffer = vec![0u8; CHUNK];
        let deadline = budget.lock().ok()?.deadline();
        loop {
            let left = deadline.since(self.clock.now());
            let read = match tokio::time::timeout(left, from.read(&mut buffer)).await {
                Err(_) => return Some(Cut::Duration),
                Ok(Ok(0) | Err(_)) => {
                    let _ = to.shutdown().await;
                    return None;
                }
                Ok(Ok(read)) => read,
            };
            let mut sent = 0;
            while sent < read {
                let take = budget.lock().ok()?.take(read - sent, self.clock.now());
                match take {
                    Take::Send(n) => {
                        if to.write_all(&buffer[sent..sent + n]).await.is_err() {
                            return None;
                        }
                        sent += n;
                        if let Ok(mut policy) = self.policy.lock() {
                            policy.count_bytes(n as u64);
                        }
                    }
                    Take::Wait(wait) => tokio::time::sleep(wait).await,
                    Take::Cut(cut) => {
                        let _ = to.shutdown().await;
                        return Some(cut);
                    }
                }
            }
        }
    }
}

/// Reads one line, byte by byte (nothing after it may be consumed), at
/// most [`MAX_LINE`] bytes; `None` if it is longer, not text, or cut.
async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut line = Vec::with_capacity(MAX_LINE);
    while line.len() < MAX_LINE {
        let byte = stream.read_u8().await.ok()?;
        if byte == b'\n' {
            return String::from_utf8(line).ok();
        }
        line.push(byte);
    }
    None
}

async fn write_line(stream: &mut TcpStream, line: &str) -> std::io::Result<()> {
    stream.write_all(line.as_bytes()).await?;
    stream.flush().await
}

/// The downloader's way to a firewalled source: `direct` (the push, or
/// hole punching), and when it fails a relay circuit through one of the
/// relaying supernodes `leaf` is joined to (another at each attempt).
pub fn fallback(
    leaf: &crate::leaf::LeafHandle,
    direct: Arc<dyn canopy_transfer::client::Connector>,
    node: canopy_proto::NodeId,
    content_id: canopy_proto::ContentId,
) -> Arc<dyn canopy_transfer::client::Connector> {
    // The push's callback field is required, but names nobody here: the
    // source meets us at the relay (our supernode puts our IP in anyway).
    let callback = SocketAddr::from(([0, 0, 0, 0], 9));
    use canopy_transfer::relay::{
        FallbackConnector, RETRY_DIRECT_AFTER, RelayConnector, RelayRequester,
    };
    let (pushes, status) = (leaf.push_sender(), leaf.watch_status());
    let requester: RelayRequester = Arc::new(move |token, attempt| {
        let pushes = pushes.clone();
        let relays = status.borrow().relays.clone();
        Box::pin(async move {
            let Some(relay) = relays.get(attempt % relays.len().max(1)).copied() else {
                return Err(std::io::Error::other("no relaying supernode"));
            };
            pushes
                .push(
                    node,
                    content_id,
                    callback,
                    PushWay::Relay(token),
                    Some(relay),
                )
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(relay)
        })
    });
    let relay = Arc::new(RelayConnector::new(node, requester, RELAY_TIMEOUT));
    Arc::new(FallbackConnector::new(direct, relay, RETRY_DIRECT_AFTER))
}

/// How long a source may take to come to the relay.
const RELAY_TIMEOUT: Duration = Duration::from_secs(15);
