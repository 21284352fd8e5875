//! `canopy-load raw-relay`: the reference the supernode's relay rate is
//! compared with. It accepts connections, cuts each byte stream into frames
//! by the same 4-byte length prefix (no decoding, no logic), and forwards
//! every frame to every other connection.
//!
//! Built the way a fair relay would be, the same way the supernode is: a
//! reader task and a writer task per connection, a bounded queue per
//! connection (a full queue makes the reader wait, so TCP slows the
//! sender down rather than frames being read only to be dropped), and a writer that writes whatever is queued into a 64 KiB
//! buffer and flushes once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::frames;

/// Frames a connection may have queued: about the supernode's 256 KiB of
/// query frames.
const QUEUE_FRAMES: usize = 4096;

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

type Peers = Arc<RwLock<Arc<Vec<(u64, mpsc::Sender<Bytes>)>>>>;

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
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        if let Ok(mut peers) = relay.peers.write() {
            let mut list = (**peers).clone();
            list.push((id, tx));
            *peers = Arc::new(list);
        }
        let relay = relay.clone();
        tokio::spawn(async move {
            connection(id, stream, rx, &relay).await;
            if let Ok(mut peers) = relay.peers.write() {
                let list = peers.iter().filter(|(p, _)| *p != id).cloned().collect();
                *peers = Arc::new(list);
            }
        });
    }
}

async fn connection(id: u64, stream: TcpStream, rx: mpsc::Receiver<Bytes>, relay: &Relay) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let writer = tokio::spawn(write_frames(write, rx));
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
                    for (peer, tx) in peers.iter() {
                        if *peer == id {
                            continue;
                        }
                        // A full queue holds the reader back (TCP slows
                        // the sender), as the supernode's inbox does; a
                        // queue whose writer is gone drops the frame.
                        if tx.send(frame.clone()).await.is_err() {
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

async fn write_frames(write: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}
