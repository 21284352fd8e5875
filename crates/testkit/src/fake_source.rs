//! An HTTP source that misbehaves on purpose. It speaks just enough
//! HTTP/1.1 to answer Canopy's requests. It serves the true verification
//! tree, so a downloader trusts it, then breaks its promise in the data:
//! it sends corrupt bytes, dies part-way, or stalls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use canopy_core::tree::tree_of;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the source breaks off.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Answer every range in full, with one byte in every KiB flipped.
    Corrupt,
    /// Send this many body bytes, close, and accept no more connections.
    /// (Connections that ask for no data, such as a supernode's
    /// reachability probe, do not count.)
    DieAfter(u64),
    /// Send this many body bytes in all, then hold every connection open
    /// and silent.
    StallAfter(u64),
}

/// A running fake source.
#[derive(Debug, Clone)]
pub struct FakeSource {
    /// Where it listens.
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
}

impl FakeSource {
    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// The inclusive range in a request's `Range: bytes=a-b` header.
fn requested_range(head: &str) -> Option<(u64, u64)> {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("range:"))?;
    let spec = line.split_once('=')?.1.trim();
    let (a, b) = spec.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return None;
        }
        head.push(stream.read_u8().await.ok()?);
    }
    String::from_utf8(head).ok()
}

/// Starts a source serving `data` that misbehaves as told.
pub async fn start(data: Vec<u8>, how: Misbehaviour) -> FakeSource {
    let tree = Arc::new(tree_of(&data));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let data = Arc::new(data);
    let counter = sent.clone();
    let dead = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // Died: drop the listener, refuse everyone from now on.
                () = dead.notified() => return,
            };
            let Ok((mut stream, _)) = accepted else {
                return;
            };
            let (data, sent, tree, dead) =
                (data.clone(), counter.clone(), tree.clone(), dead.clone());
            let serve = async move {
                while let Some(head) = read_head(&mut stream).await {
                    if head.starts_with("GET /tree/") {
                        let header =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", tree.len());
                        if stream.write_all(header.as_bytes()).await.is_err()
                            || stream.write_all(&tree).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    if !head.starts_with("GET /content/") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        continue;
                    }
                    let size = data.len() as u64;
                    let (first, last) = requested_range(&head).unwrap_or((0, size - 1));
                    let len = last - first + 1;
                    let header = format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {len}\r\ncontent-range: bytes {first}-{last}/{size}\r\n\r\n"
                    );
                    if stream.write_all(header.as_bytes()).await.is_err() {
                        return;
                    }
                    let budget = match how {
                        Misbehaviour::Corrupt => u64::MAX,
                        Misbehaviour::DieAfter(n) | Misbehaviour::StallAfter(n) => {
                            n.saturating_sub(sent.load(Ordering::SeqCst))
                        }
                    };
                    let give = len.min(budget);
                    let mut body = data[first as usize..(first + give) as usize].to_vec();
                    if let Misbehaviour::Corrupt = how {
                        for byte in body.iter_mut().step_by(1024) {
                            *byte ^= 0x5a;
                        }
                    }
                    if stream.write_all(&body).await.is_err() {
                        return;
                    }
                    sent.fetch_add(give, Ordering::SeqCst);
                    if give < len {
                        match how {
                            Misbehaviour::StallAfter(_) => std::future::pending::<()>().await,
                            Misbehaviour::DieAfter(_) => {
                                dead.notify_one();
                                return;
                            }
                            Misbehaviour::Corrupt => return,
                        }
                    }
                }
            };
            tokio::spawn(serve);
        }
    });
    FakeSource { addr, sent }
}
