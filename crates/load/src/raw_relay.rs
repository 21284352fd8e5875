//! `canopy-load raw-relay`: the reference the supernode's relay rate is
//! compared with. It accepts connections, cuts each byte stream into frames
//! by the same 4-byte length prefix (no decoding, no logic), and forwards
//! every frame to every other connection.
//!
//! Built the way the supernode's connections are, minus the protocol: a
//! reader task and a writer task per connection; the reader cuts frames
//! out of its buffer without copying and offers each (shared bytes) to
//! every other connection's queue, bounded in bytes (a full queue makes the
//! reader wait, so TCP slows the sender down rather than frames being read
//! only to be dropped); the writer takes up to 64 queued frames at a time
//! and writes them with one vectored write. What the supernode adds on top
//! is exactly what is being measured: decoding, validation, duplicate
//! suppression, routing, the index lookup, encoding.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::AsyncReadExt as _;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::frames;

/// Bytes a connection may have queued: the supernode's send queue size.
const QUEUE_BYTES: usize = 256 * 1024;
/// Frames written with one vectored write at most, as the supernode does.
const BATCH_FRAMES: usize = 256;

/// Arguments of `raw-relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Print the listening line as JSON.
    #[arg(long)]
    json: bool,
}

/// One connection's outgoing frames.
#[derive(Debug, Default)]
struct Queue {
    frames: Mutex<(VecDeque<Bytes>, usize)>,
    /// Frames were queued.
    ready: Notify,
    /// Room was made.
    room: Notify,
}

impl Queue {
    /// Queues `frame`, waiting while the queue is full.
    async fn push(&self, frame: Bytes) -> bool {
        loop {
            let room = self.room.notified();
            {
                let Ok(mut queue) = self.frames.lock() else {
                    return false;
                };
                if queue.1 < QUEUE_BYTES {
                    queue.1 += frame.len();
                    queue.0.push_back(frame);
                    drop(queue);
                    self.ready.notify_one();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Moves up to a batch of frames into `batch`, waiting for one.
    async fn take(&self, batch: &mut VecDeque<Bytes>) {
        loop {
            let ready = self.ready.notified();
            if let Ok(mut queue) = self.frames.lock() {
                while batch.len() < BATCH_FRAMES {
                    let Some(frame) = queue.0.pop_front() else {
                        break;
                    };
                    queue.1 -= frame.len();
                    batch.push_back(frame);
                }
            }
            if !batch.is_empty() {
                self.room.notify_waiters();
                return;
            }
            ready.await;
        }
    }
}

type Peers = Arc<RwLock<Arc<Vec<(u64, Arc<Queue>)>>>>;

/// The relay's shared state.
#[derive(Debug, Default)]
pub struct Relay {
    peers: Peers,
    dropped: AtomicU64,
}

/// Runs the relay until killed.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "addr": addr.to_string()})
        );
    } else {
        println!("raw relay listening on {addr}");
    }
    serve(listener, Arc::new(Relay::default())).await
}

/// Accepts and relays on `listener` forever.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) -> anyhow::Result<()> {
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        let id = next_id;
        let queue = Arc::new(Queue::default());
        if let Ok(mut peers) = relay.peers.write() {
            let mut list = (**peers).clone();
            list.push((id, queue.clone()));
            *peers = Arc::new(list);
        }
        let relay = relay.clone();
        tokio::spawn(async move {
            connection(id, stream, queue, &relay).await;
            if let Ok(mut peers) = relay.peers.write() {
                let list = peers.iter().filter(|(p, _)| *p != id).cloned().collect();
                *peers = Arc::new(list);
            }
        });
    }
}

async fn connection(id: u64, stream: TcpStream, queue: Arc<Queue>, relay: &Relay) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let writer = tokio::spawn(write_frames(write, queue));
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    'reading: loop {
        if buffer.capacity() - buffer.len() < 16 * 1024 {
            buffer.reserve(64 * 1024);
        }
        match read.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let peers = match relay.peers.read() {
            Ok(peers) => peers.clone(),
            Err(_) => break,
        };
        loop {
            match frames::split_frame(&mut buffer) {
                Ok(Some(frame)) => {
                    let frame = frame.freeze();
                    for (peer, queue) in peers.iter() {
                        if *peer != id && !queue.push(frame.clone()).await {
                            relay.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'reading,
            }
        }
    }
    writer.abort();
}

async fn write_frames(write: OwnedWriteHalf, queue: Arc<Queue>) {
    let mut batch: VecDeque<Bytes> = VecDeque::with_capacity(BATCH_FRAMES);
    loop {
        queue.take(&mut batch).await;
        while !batch.is_empty() {
            if write.writable().await.is_err() {
                return;
            }
            let slices: Vec<IoSlice<'_>> = batch.iter().map(|f| IoSlice::new(f)).collect();
            let mut written = match write.try_write_vectored(&slices) {
                Ok(0) => return,
                Ok(written) => written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            while let Some(front) = batch.front_mut() {
                if written < front.len() {
                    front.advance(written);
                    break;
                }
                written -= front.len();
                batch.pop_front();
            }
        }
    }
}
