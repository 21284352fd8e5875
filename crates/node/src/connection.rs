//! One TCP connection: a reader task that decodes frames and passes them to
//! the node task, and a writer task that drains a bounded outgoing queue.
//!
//! The reader awaits the node task's inbox, so a peer that sends faster than
//! the node can process is slowed down by TCP, not buffered without bound.
//! The writer's queue is bounded too: the node task never waits on a slow
//! peer; what does not fit is dropped (see [`Outgoing::try_send`]).

use std::net::SocketAddr;

use canopy_core::ConnId;
use canopy_proto::{ByeReason, FrameCodec, FrameError, Message};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::traffic::{Counted, Traffic};
use std::sync::Arc;

/// Messages waiting to be written, per connection.
pub const SEND_QUEUE_LEN: usize = 1024;

/// What a connection reports to its node task.
#[derive(Debug)]
pub enum ConnEvent {
    /// A valid message.
    Message(Message),
    /// The stream broke the framing or sent an invalid message; no more
    /// messages follow.
    FrameError(FrameError),
    /// The connection is gone.
    Closed,
}

enum Outbound {
    Message(Message),
    Close(Option<(ByeReason, String)>),
}

/// The node task's handle on a connection's writer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    tx: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outbound::Message(m) => write!(f, "Message({})", m.kind()),
            Outbound::Close(bye) => write!(f, "Close({bye:?})"),
        }
    }
}

impl Outgoing {
    /// Queues `message`; false if the queue is full or the connection gone.
    pub fn try_send(&self, message: Message) -> bool {
        self.tx.try_send(Outbound::Message(message)).is_ok()
    }

    /// Flushes what is queued, sends the Bye if given, and closes. If the
    /// queue is full the connection is cut at once.
    pub fn close(&self, bye: Option<(ByeReason, String)>) {
        if self.tx.try_send(Outbound::Close(bye)).is_err() {
            self.cancel.cancel();
        }
    }
}

/// Starts the reader and writer of `stream`. The first event sent to
/// `events` is `announce(outgoing)`, carrying the handle that queues
/// outgoing messages, so the node task hears of the connection before any
/// of its messages; every later event is `wrap(conn, event)`.
pub fn spawn<E, A>(
    conn: ConnId,
    stream: TcpStream,
    events: mpsc::Sender<E>,
    announce: A,
    wrap: fn(ConnId, ConnEvent) -> E,
    tracker: &TaskTracker,
    traffic: &Arc<Traffic>,
) where
    E: Send + 'static,
    A: FnOnce(Outgoing) -> E + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let (read_half, write_half) = stream.into_split();
    let read_half = Counted::new(read_half, traffic.clone());
    let write_half = Counted::new(write_half, traffic.clone());
    let (tx, mut rx) = mpsc::channel::<Outbound>(SEND_QUEUE_LEN);
    let cancel = CancellationToken::new();

    let outgoing = Outgoing {
        tx,
        cancel: cancel.clone(),
    };
    let reader_cancel = cancel.clone();
    tracker.spawn(async move {
        if events.send(announce(outgoing)).await.is_err() {
            reader_cancel.cancel();
            return;
        }
        let mut frames = FramedRead::new(read_half, FrameCodec::default());
        loop {
            let next = tokio::select! {
                // The writer closed the connection: stop reading.
                _ = reader_cancel.cancelled() => break,
                next = frames.next() => next,
            };
            let event = match next {
                Some(Ok(message)) => ConnEvent::Message(message),
                Some(Err(error)) => ConnEvent::FrameError(error),
                None => break,
            };
            let fatal = matches!(event, ConnEvent::FrameError(_));
            if events.send(wrap(conn, event)).await.is_err() || fatal {
                break;
            }
        }
        let _ = events.send(wrap(conn, ConnEvent::Closed)).await;
    });

    let writer_cancel = cancel.clone();
    tracker.spawn(async move {
        let mut sink = FramedWrite::new(write_half, FrameCodec::default());
        loop {
            let next = tokio::select! {
                // Cut at once (the queue was full when a Close was due).
                _ = writer_cancel.cancelled() => break,
                next = rx.recv() => next,
            };
            // `None`: the node task forgot this connection.
            let Some(first) = next else { break };
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut closing = false;
            for item in batch {
                let result = match item {
                    Outbound::Message(message) => sink.feed(message).await,
                    Outbound::Close(bye) => {
                        closing = true;
                        match bye {
                            Some((reason, detail)) => {
                                sink.feed(Message::Bye { reason, detail }).await
                            }
                            None => Ok(()),
                        }
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(?peer, %error, "write failed");
                    closing = true;
                }
                if closing {
                    break;
                }
            }
            if SinkExt::<Message>::flush(&mut sink).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.get_mut().shutdown().await;
        writer_cancel.cancel();
    });
}
