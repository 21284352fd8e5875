//! One TCP connection: the Noise handshake ([`crate::secure`]), then a
//! reader task that decrypts and decodes frames and passes them to the
//! node task, and a writer task that drains the connection's
//! [`SendQueue`], encrypting each batch.
//!
//! The node task hears of the connection only once the handshake has
//! authenticated the peer's static key, and with that key. A handshake
//! that fails or stays silent past the handshake timeout is simply closed
//! (no Bye is possible before keys exist).
//!
//! The reader awaits the node task's inbox, so a peer that sends faster than
//! the node can process is slowed down by TCP, not buffered without bound.
//! The node task never waits on a slow peer: it encodes a message once and
//! offers the frame to the queue, which is bounded in bytes and drops the
//! least valuable frames first (see [`crate::send_queue`]).
//!
//! A supernode keeps thousands of mostly idle leaf connections, so neither
//! side holds a buffer while idle: the reader allocates its buffers only
//! while bytes are waiting, and the writer lets go of its buffers after a
//! small batch. A flood's frame is encoded once and shared by every
//! connection it goes to; each connection then packs as many queued frames
//! as fit into one Noise message (one encryption per up to 64 KiB), and
//! writes a batch of messages with one system call.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use canopy_core::ConnId;
use canopy_proto::secure::{
    MAX_PLAINTEXT_LEN, PublicKey, ReceiveCipher, SendCipher, StaticKeypair,
};
use canopy_proto::{ByeReason, FrameCodec, FrameError, Message};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder as _, Encoder as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::secure::{self, Secured, Side};
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
    /// Our static key, which the peer authenticates.
    pub key: Arc<StaticKeypair>,
    /// A Noise handshake not complete by then is cut.
    pub handshake_timeout: Duration,
    /// Cancels handshakes in progress when the node stops.
    pub shutdown: CancellationToken,
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
        let frame = bye.and_then(|(reason, detail)| {
            encode(&Message::Bye {
                reason,
                detail,
                try_supernodes: Vec::new(),
            })
        });
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

/// Runs the Noise handshake on `stream` (as the initiator if we dialed),
/// then starts its reader and writer. The first event sent to `events` is
/// `announce(outgoing, key)`, carrying the handle that queues outgoing
/// messages and the peer's authenticated static key, so the node task
/// hears of the connection before any of its messages; every later event
/// is `wrap(conn, event)`. If the handshake fails, no event is sent and
/// `announce` is dropped.
pub fn spawn<E, A>(
    conn: ConnId,
    stream: TcpStream,
    side: Side,
    events: mpsc::Sender<E>,
    announce: A,
    wrap: fn(ConnId, ConnEvent) -> E,
    link: &LinkContext,
) where
    E: Send + 'static,
    A: FnOnce(Outgoing, PublicKey) -> E + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    // A fixed kernel send buffer: left to autotune it grows to megabytes
    // per socket, hiding a peer that does not read and costing memory on a
    // supernode with thousands of connections. The backlog belongs in the
    // send queue, where it is bounded, prioritised and judged.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(KERNEL_SEND_BUFFER);
    let link = link.clone();
    link.tracker.clone().spawn(async move {
        let mut stream = stream;
        let peer: Option<SocketAddr> = stream.peer_addr().ok();
        // Boxed, so the handshake's state is freed once done rather than
        // sized into the task that lives as long as the connection.
        let handshake = Box::pin(secure::handshake(
            &mut stream,
            &link.key,
            side,
            link.handshake_timeout,
        ));
        let secured = tokio::select! {
            _ = link.shutdown.cancelled() => return,
            secured = handshake => secured,
        };
        match secured {
            Ok(secured) => {
                link.traffic
                    .bytes_in
                    .fetch_add(secured.bytes_in as u64, Ordering::Relaxed);
                link.traffic
                    .bytes_out
                    .fetch_add(secured.bytes_out as u64, Ordering::Relaxed);
                run(conn, stream, secured, events, announce, wrap, &link).await;
            }
            Err(error) => tracing::debug!(?peer, ?side, %error, "noise handshake failed; closing"),
        }
    });
}

/// Runs an authenticated connection: the writer in its own task, the
/// reader in this one.
async fn run<E, A>(
    conn: ConnId,
    stream: TcpStream,
    secured: Secured,
    events: mpsc::Sender<E>,
    announce: A,
    wrap: fn(ConnId, ConnEvent) -> E,
    link: &LinkContext,
) where
    E: Send + 'static,
    A: FnOnce(Outgoing, PublicKey) -> E + Send + 'static,
{
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let Secured {
        send,
        receive,
        remote,
        leftover,
        ..
    } = secured;
    let (read_half, write_half) = stream.into_split();
    let queue = Arc::new(SendQueue::new(SEND_QUEUE_BYTES, link.stall_timeout));
    let cancel = CancellationToken::new();

    let writer_cancel = cancel.clone();
    let traffic = link.traffic.clone();
    let writer_queue = queue.clone();
    link.tracker.spawn(async move {
        let queue = writer_queue;
        let mut writer = FrameWriter::new(write_half, send, traffic);
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

    let outgoing = Outgoing {
        queue,
        cancel: cancel.clone(),
    };
    let reader_cancel = cancel;
    if events.send(announce(outgoing, remote)).await.is_err() {
        reader_cancel.cancel();
        return;
    }
    let mut reader = FrameReader::new(read_half, receive, leftover, link.traffic.clone());
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
}

/// Reads Noise messages into a buffer that exists only while bytes are
/// waiting, decrypts them into a plaintext buffer (likewise), and decodes
/// frames from that exactly as an unencrypted stream would be: an idle
/// connection (most of a supernode's thousands of leaves) holds no buffer
/// at all. Reads start small and grow while the socket keeps filling them,
/// so a busy peer is read in large chunks. A message is decrypted only
/// when the frames before it are taken, so the plaintext buffer holds at
/// most a partial frame and one message.
struct FrameReader {
    socket: OwnedReadHalf,
    cipher: ReceiveCipher,
    /// Ciphertext read but not yet decrypted.
    input: BytesMut,
    /// Plaintext not yet decoded.
    plain: BytesMut,
    chunk: usize,
    codec: FrameCodec,
    traffic: Arc<Traffic>,
}

/// First read size; doubled while reads fill it, up to [`MAX_READ_CHUNK`].
const MIN_READ_CHUNK: usize = 2 * 1024;
const MAX_READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    fn new(
        socket: OwnedReadHalf,
        cipher: ReceiveCipher,
        leftover: BytesMut,
        traffic: Arc<Traffic>,
    ) -> Self {
        Self {
            socket,
            cipher,
            input: leftover,
            plain: BytesMut::new(),
            chunk: MIN_READ_CHUNK,
            codec: FrameCodec::default(),
            traffic,
        }
    }

    /// The next message if a whole one is already buffered (decrypting
    /// what has arrived as needed).
    fn next_buffered(&mut self) -> Option<Result<Message, FrameError>> {
        loop {
            match self.codec.decode(&mut self.plain) {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            match self.cipher.open(&mut self.input, &mut self.plain) {
                Ok(true) => {}
                Ok(false) => return None,
                // Tampered with, reordered or not Noise at all: the stream
                // can't be trusted further.
                Err(error) => {
                    return Some(Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        error,
                    ))));
                }
            }
        }
    }

    /// The next message, an error that ends the stream, or `None` at its end.
    async fn next(&mut self) -> Option<Result<Message, FrameError>> {
        loop {
            if let Some(next) = self.next_buffered() {
                return Some(next);
            }
            // Let go of the buffers while waiting.
            if self.input.is_empty() {
                self.input = BytesMut::new();
            }
            if self.plain.is_empty() {
                self.plain = BytesMut::new();
            }
            if let Err(error) = self.socket.readable().await {
                return Some(Err(FrameError::Io(error)));
            }
            // The cipher has reserved room for the rest of a partial message.
            self.input.reserve(self.chunk);
            let room = self.input.capacity() - self.input.len();
            match self.socket.try_read_buf(&mut self.input) {
                Ok(0) if self.input.is_empty() && self.plain.is_empty() => return None,
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

/// Writes batches of encoded frames: packs them into as few Noise messages
/// as fit (up to [`MAX_PLAINTEXT_LEN`] bytes of frames each, a large frame
/// spanning several), and writes the sealed batch with as few system calls
/// as the socket takes. The plaintext and ciphertext buffers are let go of
/// after a small batch, so a connection that sends little (most leaves)
/// holds none between writes; a busy one keeps its room.
struct FrameWriter {
    socket: OwnedWriteHalf,
    cipher: SendCipher,
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Frames being packed into the next message.
    plain: Vec<u8>,
    /// Sealed messages not yet written.
    sealed: BytesMut,
    traffic: Arc<Traffic>,
}

/// Most frames and bytes taken from the queue for one batch.
const MAX_BATCH_FRAMES: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A batch this small is let go of once written.
const IDLE_BATCH_FRAMES: usize = 8;

impl FrameWriter {
    fn new(socket: OwnedWriteHalf, cipher: SendCipher, traffic: Arc<Traffic>) -> Self {
        Self {
            socket,
            cipher,
            frames: VecDeque::new(),
            bytes: 0,
            plain: Vec::new(),
            sealed: BytesMut::new(),
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

    /// Seals the batch's frames into Noise messages.
    fn seal(&mut self) -> io::Result<()> {
        let small = self.frames.len() <= IDLE_BATCH_FRAMES;
        self.sealed
            .reserve(self.bytes + (self.bytes / MAX_PLAINTEXT_LEN + 1) * 18);
        while let Some(frame) = self.frames.pop_front() {
            // Slices of the frame, not `Bytes` splits: those would touch
            // the reference count the frame shares with every other queue.
            let mut rest: &[u8] = &frame;
            while !rest.is_empty() {
                if self.plain.is_empty() && rest.len() >= MAX_PLAINTEXT_LEN {
                    // A whole message's worth: sealed straight from the frame.
                    let (part, tail) = rest.split_at(MAX_PLAINTEXT_LEN);
                    self.cipher
                        .seal(part, &mut self.sealed)
                        .map_err(io::Error::other)?;
                    rest = tail;
                    continue;
                }
                let room = MAX_PLAINTEXT_LEN - self.plain.len();
                let (part, tail) = rest.split_at(room.min(rest.len()));
                self.plain.extend_from_slice(part);
                rest = tail;
                if self.plain.len() == MAX_PLAINTEXT_LEN {
                    self.flush_plain()?;
                }
            }
        }
        self.flush_plain()?;
        self.bytes = 0;
        if small {
            self.plain = Vec::new();
        }
        Ok(())
    }

    fn flush_plain(&mut self) -> io::Result<()> {
        if !self.plain.is_empty() {
            self.cipher
                .seal(&self.plain, &mut self.sealed)
                .map_err(io::Error::other)?;
            self.plain.clear();
        }
        Ok(())
    }

    /// Seals and writes the whole batch.
    async fn write_all(&mut self) -> io::Result<()> {
        let small = self.frames.len() <= IDLE_BATCH_FRAMES;
        self.seal()?;
        while !self.sealed.is_empty() {
            self.socket.writable().await?;
            let written = match self.socket.try_write(&self.sealed) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            };
            self.traffic
                .bytes_out
                .fetch_add(written as u64, Ordering::Relaxed);
            self.sealed.advance(written);
        }
        // A connection that sends little (most leaves) holds no batch
        // between writes; a busy one keeps its room.
        if small || self.sealed.capacity() > 2 * MAX_BATCH_BYTES {
            self.sealed = BytesMut::new();
        }
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use canopy_proto::secure::{LENGTH_PREFIX_LEN, TAG_LEN, connect_in_memory};
    use tokio::io::AsyncReadExt as _;

    /// A sender's and a receiver's cipher, from a handshake in memory.
    fn ciphers() -> (SendCipher, ReceiveCipher) {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let ((send, _, _), (_, receive, _)) = connect_in_memory(&a, &b).unwrap();
        (send, receive)
    }

    #[tokio::test]
    async fn the_writer_packs_frames_into_as_few_noise_messages_as_fit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (send, mut receive) = ciphers();
        let (_read, write) = client.into_split();
        let mut writer = FrameWriter::new(write, send, Arc::new(Traffic::default()));

        // 300 small frames, one larger than a Noise message, 300 more.
        let mut expected = Vec::new();
        let mut frames = Vec::new();
        for i in 0..601u32 {
            let len = if i == 300 {
                100_000
            } else {
                40 + (i as usize % 30)
            };
            let frame: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            expected.extend_from_slice(&frame);
            frames.push(Bytes::from(frame));
        }
        for frame in frames {
            writer.take(Next::Frame(frame));
        }
        writer.write_all().await.unwrap();
        writer.shutdown().await;

        let mut wire = Vec::new();
        server.read_to_end(&mut wire).await.unwrap();
        let messages = expected.len().div_ceil(MAX_PLAINTEXT_LEN);
        assert_eq!(
            wire.len(),
            expected.len() + messages * (LENGTH_PREFIX_LEN + TAG_LEN),
            "{messages} full messages, no more"
        );
        let mut input = BytesMut::from(&wire[..]);
        let mut plain = BytesMut::new();
        while receive.open(&mut input, &mut plain).unwrap() {}
        assert!(input.is_empty());
        assert_eq!(&plain[..], &expected[..]);
    }

    #[tokio::test]
    async fn a_writer_lets_go_of_its_buffers_after_a_small_batch() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_server, _) = listener.accept().await.unwrap();
        let (send, _) = ciphers();
        let (_read, write) = client.into_split();
        let mut writer = FrameWriter::new(write, send, Arc::new(Traffic::default()));
        for _ in 0..IDLE_BATCH_FRAMES {
            writer.take(Next::Frame(Bytes::from_static(&[0, 0, 0, 2, 8, 1])));
        }
        writer.write_all().await.unwrap();
        assert_eq!(writer.plain.capacity(), 0);
        assert_eq!(writer.sealed.capacity(), 0);
        assert_eq!(writer.frames.capacity(), 0);
    }
}
