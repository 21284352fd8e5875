//! One TCP connection: a reader task that decodes frames and passes them to
//! the node task, and a writer task that drains the connection's
//! [`SendQueue`].
//!
//! The reader awaits the node task's inbox, so a peer that sends faster than
//! the node can process is slowed down by TCP, not buffered without bound.
//! The node task never waits on a slow peer: it encodes a message once and
//! offers the frame to the queue, which is bounded in bytes and drops the
//! least valuable frames first (see [`crate::send_queue`]).
//!
//! A supernode keeps thousands of mostly idle leaf connections, so neither
//! side holds a buffer while idle: the reader allocates one only while
//! bytes are waiting, and the writer writes the queued frames themselves
//! with vectored writes (a flood's frame is encoded once and shared by
//! every connection it goes to).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use canopy_core::ConnId;
use canopy_proto::{ByeReason, FrameCodec, FrameError, Message};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder as _, Encoder as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::send_queue::{Losses, Next, Priority, Pushed, SEND_QUEUE_BYTES, SendQueue};
use crate::traffic::Traffic;

/// Most messages passed to the node task in one event.
pub const MAX_MESSAGES_PER_EVENT: usize = 32;

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
    /// Valid messages, in order: what one read brought (at most
    /// [`MAX_MESSAGES_PER_EVENT`]), so a busy peer costs the node task one
    /// event per batch rather than per message.
    Messages(Vec<Message>),
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

    /// Offers frames already encoded, in order, under one lock (a batch
    /// of a node task's work for this connection); empties `frames`.
    pub fn send_all(&self, frames: &mut Vec<(Bytes, Priority)>) -> Losses {
        self.queue.push_all(frames)
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

/// `message` as a frame, or `None` (logged) if it cannot be sent.
pub fn encode(message: &Message) -> Option<Bytes> {
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
    let queue = Arc::new(SendQueue::new(SEND_QUEUE_BYTES, link.stall_timeout));
    let cancel = CancellationToken::new();
    let tracker = &link.tracker;

    let outgoing = Outgoing {
        queue: queue.clone(),
        cancel: cancel.clone(),
    };
    let reader_cancel = cancel.clone();
    let traffic = link.traffic.clone();
    tracker.spawn(async move {
        if events.send(announce(outgoing)).await.is_err() {
            reader_cancel.cancel();
            return;
        }
        let mut reader = FrameReader::new(read_half, traffic);
        loop {
            let next = tokio::select! {
                // The writer closed the connection: stop reading.
                _ = reader_cancel.cancelled() => break,
                next = reader.next() => next,
            };
            let mut messages = match next {
                Some(Ok(message)) => vec![message],
                Some(Err(error)) => {
                    let _ = events.send(wrap(conn, ConnEvent::FrameError(error))).await;
                    break;
                }
                None => break,
            };
            // Whatever else is already buffered goes in the same event.
            let mut failed = None;
            while messages.len() < MAX_MESSAGES_PER_EVENT {
                match reader.next_buffered() {
                    Some(Ok(message)) => messages.push(message),
                    Some(Err(error)) => {
                        failed = Some(error);
                        break;
                    }
                    None => break,
                }
            }
            if events
                .send(wrap(conn, ConnEvent::Messages(messages)))
                .await
                .is_err()
            {
                break;
            }
            if let Some(error) = failed {
                let _ = events.send(wrap(conn, ConnEvent::FrameError(error))).await;
                break;
            }
        }
        let _ = events.send(wrap(conn, ConnEvent::Closed)).await;
    });

    let writer_cancel = cancel.clone();
    let traffic = link.traffic.clone();
    tracker.spawn(async move {
        let mut writer = FrameWriter::new(write_half, traffic);
        loop {
            let first = tokio::select! {
                // Cut at once: the peer is stuck.
                _ = writer_cancel.cancelled() => break,
                next = queue.next() => next,
            };
            // Take whatever else is ready, then write it all with as few
            // system calls as the socket allows.
            let mut closing = writer.take(first);
            if !closing {
                closing = writer.fill_from(&queue);
            }
            queue.begin_write();
            let written = tokio::select! {
                _ = writer_cancel.cancelled() => break,
                written = writer.write_all() => written,
            };
            queue.end_write();
            if let Err(error) = written {
                tracing::debug!(?peer, %error, "write failed");
                break;
            }
            if closing {
                break;
            }
        }
        writer.shutdown().await;
        writer_cancel.cancel();
    });
}

/// Reads frames into a buffer that exists only while bytes are waiting: an
/// idle connection (most of a supernode's thousands of leaves) holds no
/// read buffer at all. Reads start small and grow while the socket keeps
/// filling them, so a busy peer is read in large chunks.
struct FrameReader {
    socket: OwnedReadHalf,
    buffer: BytesMut,
    chunk: usize,
    codec: FrameCodec,
    traffic: Arc<Traffic>,
}

/// First read size; doubled while reads fill it, up to [`MAX_READ_CHUNK`].
const MIN_READ_CHUNK: usize = 2 * 1024;
const MAX_READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    fn new(socket: OwnedReadHalf, traffic: Arc<Traffic>) -> Self {
        Self {
            socket,
            buffer: BytesMut::new(),
            chunk: MIN_READ_CHUNK,
            codec: FrameCodec::default(),
            traffic,
        }
    }

    /// The next message if a whole one is already buffered.
    fn next_buffered(&mut self) -> Option<Result<Message, FrameError>> {
        self.codec.decode(&mut self.buffer).transpose()
    }

    /// The next message, an error that ends the stream, or `None` at its end.
    async fn next(&mut self) -> Option<Result<Message, FrameError>> {
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            if self.buffer.is_empty() {
                // Let go of the buffer while waiting.
                self.buffer = BytesMut::new();
            }
            if let Err(error) = self.socket.readable().await {
                return Some(Err(FrameError::Io(error)));
            }
            // The codec has reserved room for the rest of a partial frame.
            self.buffer.reserve(self.chunk);
            let room = self.buffer.capacity() - self.buffer.len();
            match self.socket.try_read_buf(&mut self.buffer) {
                Ok(0) if self.buffer.is_empty() => return None,
                Ok(0) => {
                    return Some(Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a frame",
                    ))));
                }
                Ok(read) => {
                    self.traffic
                        .bytes_in
                        .fetch_add(read as u64, Ordering::Relaxed);
                    self.chunk = if read == room {
                        (self.chunk * 2).min(MAX_READ_CHUNK)
                    } else {
                        MIN_READ_CHUNK
                    };
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Some(Err(FrameError::Io(error))),
            }
        }
    }
}

/// Writes batches of encoded frames with vectored writes, straight from
/// the frames (shared with every other connection a flood goes to): no
/// copy, and no write buffer held by an idle connection.
struct FrameWriter {
    socket: OwnedWriteHalf,
    frames: VecDeque<Bytes>,
    bytes: usize,
    traffic: Arc<Traffic>,
}

/// Most frames and bytes taken from the queue for one batch.
const MAX_BATCH_FRAMES: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A batch this small is let go of once written.
const IDLE_BATCH_FRAMES: usize = 8;

impl FrameWriter {
    fn new(socket: OwnedWriteHalf, traffic: Arc<Traffic>) -> Self {
        Self {
            socket,
            frames: VecDeque::new(),
            bytes: 0,
            traffic,
        }
    }

    /// Adds `next` to the batch; true if it closes the connection.
    fn take(&mut self, next: Next) -> bool {
        let (frame, closing) = match next {
            Next::Frame(frame) => (Some(frame), false),
            Next::Close(bye) => (bye, true),
        };
        if let Some(frame) = frame {
            self.bytes += frame.len();
            self.frames.push_back(frame);
        }
        closing
    }

    /// Takes what else is queued, up to a batch; true if it closes.
    fn fill_from(&mut self, queue: &SendQueue) -> bool {
        queue.drain_into(
            &mut self.frames,
            &mut self.bytes,
            MAX_BATCH_FRAMES,
            MAX_BATCH_BYTES,
        )
    }

    /// Writes the whole batch.
    async fn write_all(&mut self) -> io::Result<()> {
        while !self.frames.is_empty() {
            self.socket.writable().await?;
            let slices: Vec<IoSlice<'_>> = self.frames.iter().map(|f| IoSlice::new(f)).collect();
            let written = match self.socket.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            };
            self.traffic
                .bytes_out
                .fetch_add(written as u64, Ordering::Relaxed);
            self.bytes -= written;
            let mut left = written;
            while let Some(front) = self.frames.front_mut() {
                if left < front.len() {
                    front.advance(left);
                    break;
                }
                left -= front.len();
                self.frames.pop_front();
            }
        }
        // A connection that sends little (most leaves) holds no batch
        // between writes; a busy one keeps its room.
        if self.frames.capacity() > MAX_BATCH_FRAMES || self.frames.capacity() <= IDLE_BATCH_FRAMES
        {
            self.frames = VecDeque::new();
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = self.socket.shutdown().await;
    }
}
