//! A supernode on 127.0.0.1 against peers that send bad input: each gets a
//! Bye naming the problem and is disconnected, and the supernode keeps
//! serving everyone else. The bad input travels inside a valid Noise
//! session (a peer can always complete one with a key of its own); peers
//! that never complete the Noise handshake are simply cut.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canopy_node::secure::{SecureStream, Side};
use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{ByeReason, Hello, Message, Role};
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A hostile client's link: a Noise session under a fresh key of its own.
struct Hostile {
    stream: SecureStream<TcpStream>,
    key: StaticKeypair,
}

async fn hostile(target: SocketAddr) -> Hostile {
    let key = StaticKeypair::generate().unwrap();
    let tcp = TcpStream::connect(target).await.unwrap();
    let stream = SecureStream::handshake(tcp, &key, Side::Initiator, PATIENCE)
        .await
        .unwrap();
    Hostile { stream, key }
}

impl Hostile {
    /// A leaf's Hello with the id our key owns.
    fn hello(&self) -> Message {
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Leaf,
            node_id: self.key.node_id(),
            listen_addr: None,
            user_agent: "hostile".into(),
            capabilities: Vec::new(),
        })
    }

    async fn send(&mut self, message: Message) {
        self.stream.send(&message).await.unwrap();
    }
}

/// Reads frames until a Bye arrives or the connection closes; returns the
/// Bye's reason. Fails the test if neither happens in time.
async fn bye_reason(mut peer: Hostile) -> Option<ByeReason> {
    let read = async {
        while let Some(Ok(message)) = peer.stream.recv().await {
            if let Message::Bye { reason, .. } = message {
                return Some(reason);
            }
        }
        None
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no Bye and no close")
}

/// Waits until the peer closes the session.
async fn closed(mut peer: Hostile) {
    let read = async { while let Some(Ok(_)) = peer.stream.recv().await {} };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("not closed");
}

/// `body` with its 4-byte length: one plaintext frame, whatever it holds.
fn raw_frame(len: u32, body: &[u8]) -> BytesMut {
    let mut frame = BytesMut::new();
    frame.put_u32(len);
    frame.put_slice(body);
    frame
}

#[tokio::test]
async fn bad_input_gets_a_bye_and_a_disconnect_and_others_are_unaffected() {
    init_logs();
    let nodes = line(2).await;
    let target = nodes[0].local_addr();
    let folder = shared_folder(&["still here.txt"]);
    let _good = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();

    // A frame announcing 4 GiB.
    let mut peer = hostile(target).await;
    let frame = raw_frame(u32::MAX, &[]);
    peer.stream.send_plaintext(&frame).await.unwrap();
    assert_eq!(bye_reason(peer).await, Some(ByeReason::FrameTooLarge));

    // Bytes that are not a protobuf message.
    let mut peer = hostile(target).await;
    let frame = raw_frame(6, &[0xff; 6]);
    peer.stream.send_plaintext(&frame).await.unwrap();
    assert_eq!(bye_reason(peer).await, Some(ByeReason::MalformedMessage));

    // A query before the handshake.
    let mut peer = hostile(target).await;
    let query = canopy_proto::Query {
        message_id: canopy_proto::MessageId([1; 16]),
        ttl: 2,
        hops: 0,
        keywords: vec!["x".into()],
        content_id: None,
        min_size: None,
        max_size: None,
    };
    peer.send(Message::Query(query)).await;
    assert_eq!(bye_reason(peer).await, Some(ByeReason::ProtocolViolation));

    // A leaf sending a message only supernodes may send.
    let mut peer = hostile(target).await;
    peer.send(peer.hello()).await;
    peer.send(Message::Pong {
        free_leaf_slots: None,
        nonce: 1,
        supernodes: vec![],
    })
    .await;
    peer.send(peer.hello()).await; // a second Hello
    assert_eq!(bye_reason(peer).await, Some(ByeReason::ProtocolViolation));

    // An out-of-range field: TTL 0.
    let mut peer = hostile(target).await;
    peer.send(peer.hello()).await;
    let envelope = canopy_proto::wire::Envelope {
        body: Some(canopy_proto::wire::envelope::Body::Query(
            canopy_proto::wire::Query {
                message_id: vec![2; 16],
                ttl: 0,
                keywords: vec!["x".into()],
                ..Default::default()
            },
        )),
    };
    let body = prost::Message::encode_to_vec(&envelope);
    let frame = raw_frame(u32::try_from(body.len()).unwrap(), &body);
    peer.stream.send_plaintext(&frame).await.unwrap();
    assert_eq!(bye_reason(peer).await, Some(ByeReason::InvalidField));

    // Every bad peer is gone; the good leaf and its files remain, and the
    // supernode still answers searches.
    let stats = nodes[0]
        .wait_for(PATIENCE, |s| s.leaves == 1 && s.handshaking == 0)
        .await
        .unwrap();
    assert_eq!(stats.index_files, 1);
    assert!(stats.protocol_errors >= 5);
    let searcher = leaf(&nodes[1], None).await;
    let found = searcher
        .search(request(&["still"], 2, PATIENCE, 1))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_cut_off() {
    init_logs();
    let mut options = SupernodeOptions::new(localhost());
    options.protocol.handshake_timeout = Duration::from_secs(1);
    let node = supernode::start(options).await.unwrap();
    let peer = hostile(node.local_addr()).await;
    node.wait_for(PATIENCE, |s| s.handshaking == 1)
        .await
        .unwrap();
    // Silence until the handshake timeout: a Bye says why, then the close.
    assert_eq!(bye_reason(peer).await, Some(ByeReason::HandshakeTimeout));
    node.wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silent_noise_handshake_is_closed_at_the_handshake_timeout() {
    init_logs();
    let mut options = SupernodeOptions::new(localhost());
    options.protocol.handshake_timeout = Duration::from_secs(1);
    let node = supernode::start(options).await.unwrap();
    let started = Instant::now();
    let mut stream = TcpStream::connect(node.local_addr()).await.unwrap();
    // No Noise message: the node never hears of the connection, and it is
    // closed without a word (no keys, so no Bye) at the timeout.
    let mut sink = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut sink))
        .await
        .expect("not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(node.stats().handshaking, 0);
    assert_eq!(node.stats().protocol_errors, 0);
}

#[tokio::test]
async fn a_handshake_message_over_the_limit_is_cut_before_it_is_read() {
    init_logs();
    let nodes = line(1).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(nodes[0].local_addr()).await.unwrap();
    // Claims 65,535 bytes where at most 1,024 are allowed.
    tokio::io::AsyncWriteExt::write_all(&mut stream, &[0xff, 0xff])
        .await
        .unwrap();
    let mut sink = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut sink))
        .await
        .expect("not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");
    // Refused on the length alone, not left to the 10 s handshake timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn many_half_open_connections_leave_the_tables_bounded() {
    init_logs();
    let nodes = line(1).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(hostile(nodes[0].local_addr()).await);
    }
    nodes[0]
        .wait_for(PATIENCE, |s| s.handshaking == 50)
        .await
        .unwrap();
    drop(streams);
    nodes[0]
        .wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hello_with_the_wrong_version_is_rejected_and_closed() {
    init_logs();
    let nodes = line(1).await;
    let mut peer = hostile(nodes[0].local_addr()).await;
    let Message::Hello(mut hello) = peer.hello() else {
        unreachable!()
    };
    hello.protocol_version = PROTOCOL_VERSION + 1;
    peer.send(Message::Hello(hello)).await;
    let reply = tokio::time::timeout(PATIENCE, peer.stream.recv())
        .await
        .unwrap();
    match reply {
        Some(Ok(Message::HelloReply(reply))) => assert!(matches!(
            reply.outcome,
            canopy_proto::HandshakeOutcome::Rejected {
                reason: canopy_proto::RejectReason::VersionMismatch,
                ..
            }
        )),
        other => panic!("expected a rejection, got {other:?}"),
    }
    closed(peer).await;
}
