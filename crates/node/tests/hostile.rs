//! A supernode on 127.0.0.1 against peers that send bad input: each gets a
//! Bye naming the problem and is disconnected, and the supernode keeps
//! serving everyone else.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use bytes::{BufMut, BytesMut};
use std::time::Duration;

use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::{ByeReason, FrameCodec, Hello, Message, NodeId, Role};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Reads frames until a Bye arrives or the connection closes; returns the
/// Bye's reason. Fails the test if neither happens in time.
async fn bye_reason(stream: TcpStream) -> Option<ByeReason> {
    let mut framed = Framed::new(stream, FrameCodec::default());
    let read = async {
        while let Some(Ok(message)) = framed.next().await {
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

/// Waits until the peer closes the stream.
async fn closed(mut stream: TcpStream) {
    let mut sink = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("not closed");
}

fn leaf_hello(id: u8) -> Message {
    Message::Hello(Hello {
        protocol_version: 1,
        role: Role::Leaf,
        node_id: NodeId([id; 16]),
        listen_addr: None,
        user_agent: "hostile".into(),
        capabilities: Vec::new(),
    })
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
    let mut stream = TcpStream::connect(target).await.unwrap();
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(bye_reason(stream).await, Some(ByeReason::FrameTooLarge));

    // Bytes that are not a protobuf message.
    let mut stream = TcpStream::connect(target).await.unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(6);
    frame.put_slice(&[0xff; 6]);
    stream.write_all(&frame).await.unwrap();
    assert_eq!(bye_reason(stream).await, Some(ByeReason::MalformedMessage));

    // A query before the handshake.
    let stream = TcpStream::connect(target).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let query = canopy_proto::Query {
        message_id: canopy_proto::MessageId([1; 16]),
        ttl: 2,
        hops: 0,
        keywords: vec!["x".into()],
        content_id: None,
        min_size: None,
        max_size: None,
    };
    framed.send(Message::Query(query)).await.unwrap();
    assert_eq!(
        bye_reason(framed.into_inner()).await,
        Some(ByeReason::ProtocolViolation)
    );

    // A leaf sending a message only supernodes may send.
    let stream = TcpStream::connect(target).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed.send(leaf_hello(9)).await.unwrap();
    framed
        .send(Message::Pong {
            nonce: 1,
            supernodes: vec![],
        })
        .await
        .unwrap();
    framed.send(leaf_hello(9)).await.unwrap(); // a second Hello
    assert_eq!(
        bye_reason(framed.into_inner()).await,
        Some(ByeReason::ProtocolViolation)
    );

    // An out-of-range field: TTL 0.
    let stream = TcpStream::connect(target).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed.send(leaf_hello(10)).await.unwrap();
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
    let mut raw = framed.into_inner();
    let mut frame = BytesMut::new();
    frame.put_u32(u32::try_from(body.len()).unwrap());
    frame.put_slice(&body);
    raw.write_all(&frame).await.unwrap();
    assert_eq!(bye_reason(raw).await, Some(ByeReason::InvalidField));

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
    options.handshake_timeout = Duration::from_secs(1);
    let node = supernode::start(options).await.unwrap();
    let stream = TcpStream::connect(node.local_addr()).await.unwrap();
    node.wait_for(PATIENCE, |s| s.handshaking == 1)
        .await
        .unwrap();
    // Silence until the handshake timeout: a Bye says why, then the close.
    assert_eq!(bye_reason(stream).await, Some(ByeReason::HandshakeTimeout));
    node.wait_for(PATIENCE, |s| s.handshaking == 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn many_half_open_connections_leave_the_tables_bounded() {
    init_logs();
    let nodes = line(1).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(TcpStream::connect(nodes[0].local_addr()).await.unwrap());
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
    let stream = TcpStream::connect(nodes[0].local_addr()).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let Message::Hello(mut hello) = leaf_hello(3) else {
        unreachable!()
    };
    hello.protocol_version = 2;
    framed.send(Message::Hello(hello)).await.unwrap();
    let reply = tokio::time::timeout(PATIENCE, framed.next()).await.unwrap();
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
    closed(framed.into_inner()).await;
}
