//! The HTTP port's doorway: connections accepted there that are not
//! someone's HTTP request to us.
//!
//! Two kinds, both expected by a task of this node, never by a stranger's
//! choosing:
//! - **A punch's other end.** While a leaf punches a hole to a downloader
//!   (dialing it from the HTTP port, [`crate::punch`]), the downloader
//!   dials the HTTP port too; if its SYN arrives while no dial of ours is
//!   in flight, the listener accepts it. A connection from exactly the
//!   address being punched ([`Doorway::expect_punch`]) is that punch's
//!   connection and is handed to it, which then serves it as a push.
//! - **A pushed connection.** A downloader whose HTTP port is reachable
//!   (a mapped port) names it as a Push's callback; the source connects
//!   there and opens with `CANOPY-PUSH <node id>`. While the inbox
//!   ([`Doorway::pushes`]) waits for any, a connection's first bytes are
//!   looked at (without taking them) and one that opens so is handed to
//!   the push waiting for that node; anything else is served as HTTP.
//!
//! With nothing expected, connections go to HTTP untouched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::push::{PREAMBLE, PushInbox};

/// Punches expected at once (a leaf runs fewer: see
/// `canopy_core::punch::MAX_PUNCHES_AT_ONCE`).
const MAX_PUNCHES: usize = 64;
/// How often the first bytes are looked at again while they could still
/// be a preamble.
const PEEK_PAUSE: Duration = Duration::from_millis(10);

/// What became of an accepted connection.
#[derive(Debug)]
pub enum Sorted {
    /// An HTTP client's (or anything else's): serve it.
    Http(TcpStream),
    /// Handed to a punch or a waiting push.
    Taken,
}

/// Claims by address: the claim's number (so a claim ended removes only
/// itself) and where the connection goes.
type Punches = Arc<Mutex<HashMap<SocketAddr, (u64, oneshot::Sender<TcpStream>)>>>;

/// See the module docs. Cheap to clone (clones share the tables).
#[derive(Debug, Clone, Default)]
pub struct Doorway {
    pushes: PushInbox,
    punches: Punches,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    pushes: AtomicU64,
    punches: AtomicU64,
    /// Claims made, numbering them.
    claims: AtomicU64,
}

/// A punch's claim on connections from one address; dropping it ends the
/// claim.
#[derive(Debug)]
pub struct ExpectedPunch {
    peer: SocketAddr,
    claim: u64,
    punches: Punches,
    arrived: oneshot::Receiver<TcpStream>,
}

impl ExpectedPunch {
    /// The connection accepted from the address, when one is; `None` if
    /// the doorway is gone.
    pub async fn arrival(&mut self) -> Option<TcpStream> {
        (&mut self.arrived).await.ok()
    }
}

impl Drop for ExpectedPunch {
    fn drop(&mut self) {
        if let Ok(mut punches) = self.punches.lock() {
            if punches
                .get(&self.peer)
                .is_some_and(|(claim, _)| *claim == self.claim)
            {
                punches.remove(&self.peer);
            }
        }
    }
}

impl Doorway {
    /// Pushed connections waited for at the HTTP port.
    pub fn pushes(&self) -> &PushInbox {
        &self.pushes
    }

    /// Pushed connections handed to a waiting push so far.
    pub fn pushes_taken(&self) -> u64 {
        self.counts.pushes.load(Ordering::Relaxed)
    }

    /// Connections handed to a punch so far.
    pub fn punches_taken(&self) -> u64 {
        self.counts.punches.load(Ordering::Relaxed)
    }

    /// A connection accepted from `peer` (canonical form) goes to the
    /// returned claim until it is dropped; `None` if `peer` is claimed
    /// already or too many are.
    pub fn expect_punch(&self, peer: SocketAddr) -> Option<ExpectedPunch> {
        let peer = canopy_core::family::canonical(peer);
        let mut punches = self.punches.lock().ok()?;
        punches.retain(|_, (_, sender)| !sender.is_closed());
        if punches.len() >= MAX_PUNCHES || punches.contains_key(&peer) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let claim = self.counts.claims.fetch_add(1, Ordering::Relaxed);
        punches.insert(peer, (claim, tx));
        Some(ExpectedPunch {
            peer,
            claim,
            punches: self.punches.clone(),
            arrived: rx,
        })
    }

    /// Sorts `stream`, accepted from `peer` (canonical form): a punch's,
    /// a pushed one, or HTTP. Looks at its first bytes for at most
    /// `timeout`, and only while pushes are waited for.
    pub async fn sort(&self, stream: TcpStream, peer: SocketAddr, timeout: Duration) -> Sorted {
        let punch = self
            .punches
            .lock()
            .ok()
            .and_then(|mut punches| punches.remove(&peer));
        let stream = match punch {
            Some((_, sender)) => match sender.send(stream) {
                Ok(()) => {
                    self.counts.punches.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "accepted the other end of a punch");
                    return Sorted::Taken;
                }
                Err(stream) => stream,
            },
            None => stream,
        };
        if !self.pushes.is_waiting() {
            return Sorted::Http(stream);
        }
        match tokio::time::timeout(timeout, opens_with_preamble(&stream)).await {
            Ok(true) => {
                if self.pushes.take(stream, peer).await {
                    self.counts.pushes.fetch_add(1, Ordering::Relaxed);
                }
                Sorted::Taken
            }
            _ => Sorted::Http(stream),
        }
    }
}

/// True if `stream`'s first bytes are `CANOPY-PUSH `; false as soon as
/// they can't be, or the connection ends. Takes nothing from it.
async fn opens_with_preamble(stream: &TcpStream) -> bool {
    let wanted = format!("{PREAMBLE} ");
    let wanted = wanted.as_bytes();
    let mut first = vec![0u8; wanted.len()];
    loop {
        let Ok(seen) = stream.peek(&mut first).await else {
            return false;
        };
        if seen == 0 || first[..seen] != wanted[..seen] {
            return false;
        }
        if seen == wanted.len() {
            return true;
        }
        // A prefix so far: the rest is on its way.
        tokio::time::sleep(PEEK_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (server, peer) = accepted.unwrap();
        (client.unwrap(), server, peer)
    }

    #[tokio::test]
    async fn http_goes_to_http_untouched_even_while_pushes_wait() {
        let doorway = Doorway::default();
        let _waiting = doorway
            .pushes()
            .await_push_from(canopy_proto::NodeId([1; 16]))
            .unwrap();
        let (mut client, server, peer) = pair().await;
        client
            .write_all(b"GET /content/x HTTP/1.1\r\n")
            .await
            .unwrap();
        let Sorted::Http(mut server) = doorway.sort(server, peer, Duration::from_secs(5)).await
        else {
            panic!("HTTP taken for a push");
        };
        let mut line = [0u8; 3];
        server.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET", "nothing consumed");
    }

    #[tokio::test]
    async fn a_pushed_connection_goes_to_the_push_waiting_for_its_node() {
        let doorway = Doorway::default();
        let node = canopy_proto::NodeId([7; 16]);
        let waiting = doorway.pushes().await_push_from(node).unwrap();
        let (mut client, server, peer) = pair().await;
        // Split in two writes: the preamble may arrive in pieces.
        client.write_all(b"CANOPY-").await.unwrap();
        let writer = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client
                .write_all(format!("PUSH {node}\nHTTP").as_bytes())
                .await
                .unwrap();
            client
        };
        let (sorted, _client) =
            tokio::join!(doorway.sort(server, peer, Duration::from_secs(5)), writer);
        assert!(matches!(sorted, Sorted::Taken));
        assert_eq!(doorway.pushes_taken(), 1);
        let mut pushed = waiting.await.unwrap();
        let mut rest = [0u8; 4];
        pushed.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"HTTP", "the preamble read, nothing more");
    }

    #[tokio::test]
    async fn a_connection_from_the_punched_address_goes_to_the_punch() {
        let doorway = Doorway::default();
        let (_client, server, peer) = pair().await;
        let mut expected = doorway.expect_punch(peer).unwrap();
        assert!(doorway.expect_punch(peer).is_none(), "one claim an address");
        let (_other_client, other, other_peer) = pair().await;
        assert!(matches!(
            doorway
                .sort(other, other_peer, Duration::from_secs(1))
                .await,
            Sorted::Http(_)
        ));
        assert!(matches!(
            doorway.sort(server, peer, Duration::from_secs(1)).await,
            Sorted::Taken
        ));
        expected.arrival().await.unwrap();
        assert_eq!(doorway.punches_taken(), 1);
        let newer = doorway.expect_punch(peer).expect("the claim ended");
        drop(expected);
        assert!(
            doorway.expect_punch(peer).is_none(),
            "an older claim ending leaves a newer one be"
        );
        drop(newer);
        assert!(doorway.expect_punch(peer).is_some());
    }
}
