//! How the hostile clients here reach a node: a TCP connection (from any
//! 127.x address), the Noise handshake under a key of their own, then
//! frames inside the session. Any stranger can complete a Noise session,
//! so every attack runs inside one; what the handshake changes is that a
//! Hello must claim the id its key owns (`key.node_id()`), so each hostile
//! identity here has its own key.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use canopy_node::secure::{HandshakeError, SecureStream, Side};
use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::secure::{SendCipher, StaticKeypair};
use canopy_proto::{FrameCodec, HandshakeOutcome, Hello, HelloReply, Message, RejectReason, Role};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder as _, Encoder as _};

use crate::common::*;

/// A hostile node's link: a Noise session over TCP.
pub(crate) type Link = SecureStream<TcpStream>;

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A bare TCP connection to `to` from `from` (any 127.x address: Linux
/// routes all of 127.0.0.0/8 to loopback), no handshake.
pub(crate) async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A Noise session with `to` from `from`, as the dialing side under `key`;
/// the error if the node closed the connection during the handshake.
pub(crate) async fn try_connect_from(
    from: IpAddr,
    to: SocketAddr,
    key: &StaticKeypair,
) -> Result<Link, HandshakeError> {
    SecureStream::handshake(tcp_from(from, to).await, key, Side::Initiator, PATIENCE).await
}

/// A Noise session with `to` from 127.0.0.1 under `key`.
pub(crate) async fn connect(to: SocketAddr, key: &StaticKeypair) -> Link {
    let tcp = TcpStream::connect(to).await.unwrap();
    SecureStream::handshake(tcp, key, Side::Initiator, PATIENCE)
        .await
        .expect("the noise handshake failed")
}

/// Accepts one connection on `listener` and answers its Noise handshake
/// under `key` (a node that dials us initiates).
pub(crate) async fn accept(listener: &TcpListener, key: &StaticKeypair) -> Link {
    let (tcp, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .expect("nobody dialed")
        .unwrap();
    SecureStream::handshake(tcp, key, Side::Responder, PATIENCE)
        .await
        .expect("the noise handshake failed")
}

/// Sends `message` on `link`.
pub(crate) async fn send(link: &mut Link, message: &Message) {
    link.send(message).await.unwrap();
}

/// The next message on `link`.
pub(crate) async fn next(link: &mut Link) -> Message {
    tokio::time::timeout(PATIENCE, link.recv())
        .await
        .expect("silent peer")
        .expect("closed")
        .expect("bad frame")
}

/// Sends `hello` and waits for the answer: the HelloReply, or `None` if
/// the node closed the session without one.
pub(crate) async fn say_hello(link: &mut Link, hello: Hello) -> Option<HelloReply> {
    if link.send(&Message::Hello(hello)).await.is_err() {
        return None;
    }
    tokio::time::timeout(PATIENCE, async {
        loop {
            match link.recv().await {
                Some(Ok(Message::HelloReply(reply))) => return Some(reply),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("no answer and no close")
}

/// A Hello as `role` with the id `key` owns.
pub(crate) fn hello(key: &StaticKeypair, role: Role, listen_addr: Option<SocketAddr>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        node_id: key.node_id(),
        listen_addr,
        user_agent: "adversary".into(),
        capabilities: Vec::new(),
    }
}

/// The one way the slot and reflection attacks open a link: from `from`
/// to `to` under a fresh key, saying Hello as `role` with that key's id
/// and `listen_addr`. Returns the link and the answer (`None` if the node
/// closed the session without one).
pub(crate) async fn hostile_hello(
    from: IpAddr,
    to: SocketAddr,
    role: Role,
    listen_addr: Option<SocketAddr>,
) -> (Link, Option<HelloReply>) {
    let key = StaticKeypair::generate().unwrap();
    let mut link = try_connect_from(from, to, &key)
        .await
        .expect("the noise handshake failed");
    let reply = say_hello(&mut link, hello(&key, role, listen_addr)).await;
    (link, reply)
}

/// Accepted, or the reason it was refused.
pub(crate) fn outcome(reply: Option<&HelloReply>) -> Result<(), RejectReason> {
    match reply.map(|r| &r.outcome) {
        Some(HandshakeOutcome::Accepted { .. }) => Ok(()),
        Some(HandshakeOutcome::Rejected { reason, .. }) => Err(*reason),
        None => Err(RejectReason::Unknown),
    }
}

/// The sending half of a split [`Link`]: frames are queued with
/// [`Writer::feed`] and sealed and written together by [`Writer::flush`],
/// so a flood costs one write per batch.
pub(crate) struct Writer {
    half: OwnedWriteHalf,
    cipher: SendCipher,
    codec: FrameCodec,
    pending: BytesMut,
}

impl Writer {
    /// Queues `message`'s frame.
    pub(crate) fn feed(&mut self, message: &Message) {
        self.codec.encode(message, &mut self.pending).unwrap();
    }

    /// Seals and writes everything queued.
    pub(crate) async fn flush(&mut self) {
        let mut sealed = BytesMut::new();
        self.cipher.seal_all(&self.pending, &mut sealed).unwrap();
        self.pending.clear();
        self.half.write_all(&sealed).await.unwrap();
    }

    /// Sends `message` now.
    pub(crate) async fn send(&mut self, message: &Message) {
        self.feed(message);
        self.flush().await;
    }
}

/// Splits `link`: the caller keeps the writer, and a task passes every
/// message received to the returned inbox until the session ends (so the
/// node's writes to us never stall on our reading).
pub(crate) fn split(link: Link) -> (Writer, mpsc::UnboundedReceiver<Message>) {
    let parts = link.into_parts();
    let (mut read_half, write_half) = parts.stream.into_split();
    let (mut receive, mut input, mut plain) = (parts.receive, parts.input, parts.plain);
    let (tx, inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut codec = FrameCodec::default();
        loop {
            match codec.decode(&mut plain) {
                Ok(Some(message)) => {
                    if tx.send(message).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => return,
            }
            match receive.open(&mut input, &mut plain) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => return,
            }
            input.reserve(4096);
            match read_half.read_buf(&mut input).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let writer = Writer {
        half: write_half,
        cipher: parts.send,
        codec: FrameCodec::default(),
        pending: BytesMut::new(),
    };
    (writer, inbox)
}

/// Polls `condition` until it holds or the patience runs out; whether it
/// held. For figures the nodes expose only as counters.
pub(crate) async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}
