//! One TCP connection: a reader task that decodes frames and passes them to
//! the node task, and a writer task that drains the connection's
//! [`SendQueue`].
//!
//! The reader awaits the node task's inbox, so a peer that sends faster than
//! the node can process is slowed down by TCP, not buffered without bound.
//! The node task never waits on a slow peer: it encodes a message once and
//! offers the frame to the queue, which is bounded in bytes and drops the
//! least valuable frames first (see [`crate::send_queue`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use canopy_core::ConnId;
use canopy_proto::{ByeReason, FrameCodec, FrameError, Message};
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt as _, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder as _, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::send_queue::{Next, Priority, Pushed, SEND_QUEUE_BYTES, SendQueue};
use crate::traffic::{Counted, Traffic};

/// Kernel send buffer per overlay connection, in bytes.
const KERNEL_SEND_BUFFER: usize = 128 * 1024;

/// What every connection of a node shares.
#[derive(Debug, Clone)]
pub struct LinkContext {
    /// Where connection tasks are tracked, for shutdown.
    pub tracker: TaskTracker,
    /// The node's traffic counters.
    pub traffic: Arc<Traffic>,
    /// A full send queue that has not moved for this long means the peer
    /// is too slow.
    pub stall_timeout: Duration,
}

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

/// The node task's handle on a connection's writer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    queue: Arc<SendQueue>,
    cancel: CancellationToken,
}

impl Outgoing {
    /// Encodes `message` and offers it to the send queue.
    pub fn send(&self, message: &Message) -> Pushed {
        match encode(message) {
            Some(frame) => self.queue.push(frame, Priority::of(message)),
            None => Pushed {
                dropped_new: true,
                ..Pushed::default()
            },
        }
    }

    /// Flushes what is queued, sends the Bye if given, and closes.
    pub fn close(&self, bye: Option<(ByeReason, String)>) {
        let frame = bye.and_then(|(reason, detail)| encode(&Message::Bye { reason, detail }));
        self.queue.close(frame);
    }

    /// True if queued frames have not moved for the stall timeout.
    pub fn is_stalled(&self) -> bool {
        self.queue.is_stalled()
    }

    /// Cuts the connection at once, without flushing (its peer is stuck).
    pub fn abort(&self) {
        self.cancel.cancel();
    }
}

fn encode(message: &Message) -> Option<bytes::Bytes> {
    let mut buffer = BytesMut::new();
    match FrameCodec::default().encode(message, &mut buffer) {
        Ok(()) => Some(buffer.freeze()),
        Err(error) => {
            tracing::warn!(kind = message.kind(), %error, "message not sent");
            None
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
    link: &LinkContext,
) where
    E: Send + 'static,
    A: FnOnce(Outgoing) -> E + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    // A fixed kernel send buffer: left to autotune it grows to megabytes
    // per socket, hiding a peer that does not read and costing memory on a
    // supernode with thousands of connections. The backlog belongs in the
    // send queue, where it is bounded, prioritised and judged.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(KERNEL_SEND_BUFFER);
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let (read_half, write_half) = stream.into_split();
    let read_half = Counted::new(read_half, link.traffic.clone());
    let write_half = Counted::new(write_half, link.traffic.clone());
    let queue = Arc::new(SendQueue::new(SEND_QUEUE_BYTES, link.stall_timeout));
    let cancel = CancellationToken::new();
    let tracker = &link.tracker;

    let outgoing = Outgoing {
        queue: queue.clone(),
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
        let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
        'connection: loop {
            let first = tokio::select! {
                // Cut at once: the peer is stuck.
                _ = writer_cancel.cancelled() => break,
                next = queue.next() => next,
            };
            // Write whatever is ready, then flush once.
            let mut next = Some(first);
            while let Some(item) = next.take() {
                let (frame, closing) = match item {
                    Next::Frame(frame) => (Some(frame), false),
                    Next::Close(bye) => (bye, true),
                };
                if let Some(frame) = frame {
                    queue.begin_write();
                    let written = tokio::select! {
                        _ = writer_cancel.cancelled() => break 'connection,
                        written = writer.write_all(&frame) => written,
                    };
                    queue.end_write();
                    if let Err(error) = written {
                        tracing::debug!(?peer, %error, "write failed");
                        break 'connection;
                    }
                }
                if closing {
                    let _ = writer.flush().await;
                    break 'connection;
                }
                next = queue.try_next();
            }
            queue.begin_write();
            let flushed = tokio::select! {
                _ = writer_cancel.cancelled() => break,
                flushed = writer.flush() => flushed,
            };
            queue.end_write();
            if flushed.is_err() {
                break;
            }
        }
        let _ = writer.get_mut().shutdown().await;
        writer_cancel.cancel();
    });
}
