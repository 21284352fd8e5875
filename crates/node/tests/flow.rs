//! Flow control: a peer that reads too slowly loses its least valuable
//! messages, is disconnected when it stays stuck, and never holds up
//! anyone else.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use canopy_node::secure::{SecureStream, Side};
use canopy_node::supernode::{self, SupernodeOptions};
use canopy_node::traffic::Traffic;
use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{FrameCodec, Hello, Message, MessageId, Query, Role};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio_util::codec::Encoder;

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_is_cut_off_and_does_not_hold_up_a_fast_one() {
    init_logs();
    let mut options = SupernodeOptions::new(localhost());
    options.send_stall_timeout = Duration::from_secs(1);
    // The flood below is the point of this test: no query rate limit.
    options.protocol.leaf_queries_per_second = 100_000;
    options.protocol.leaf_query_burst = 100_000;
    let node = supernode::start(options).await.unwrap();
    // Three hundred files answer every query for "bulk": two large hits.
    let names: Vec<String> = (0..300)
        .map(|i| format!("bulk item number {i:04}.dat"))
        .collect();
    let folder = shared_folder(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let _sharer = leaf(&node, Some(folder.path())).await;
    node.wait_for(PATIENCE, |s| s.index_files == 300)
        .await
        .unwrap();

    // The slow peer asks and asks, and never reads a byte. A small receive
    // buffer (which also turns off the kernel's autotuning, up to 32 MiB
    // here) makes the backlog land in the supernode's queue, not the kernel.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(node.local_addr()).await.unwrap();
    let key = StaticKeypair::generate().unwrap();
    let secure = SecureStream::handshake(stream, &key, Side::Initiator, PATIENCE)
        .await
        .unwrap()
        .into_parts();
    let (_unread, mut slow) = secure.stream.into_split();
    let mut cipher = secure.send;
    // Each message framed, then sealed into its own Noise message.
    let mut seal = move |message: Message| {
        let mut frame = BytesMut::new();
        FrameCodec::default().encode(message, &mut frame).unwrap();
        let mut sealed = BytesMut::new();
        cipher.seal_all(&frame, &mut sealed).unwrap();
        sealed
    };
    let hello = seal(Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        role: Role::Leaf,
        node_id: key.node_id(),
        listen_addr: None,
        user_agent: "slow".into(),
        capabilities: Vec::new(),
    }));
    slow.write_all(&hello).await.unwrap();
    node.wait_for(PATIENCE, |s| s.leaves == 2).await.unwrap();
    let flood = tokio::spawn(async move {
        for i in 0..3000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let query = Query {
                message_id: MessageId(id),
                ttl: 1,
                hops: 0,
                keywords: vec!["bulk".into()],
                content_id: None,
                min_size: None,
                max_size: None,
            };
            if slow.write_all(&seal(Message::Query(query))).await.is_err() {
                break; // cut off
            }
        }
        slow
    });

    // Meanwhile a normal leaf searches, and is answered.
    let fast = leaf(&node, None).await;
    for _ in 0..3 {
        let found = fast
            .search(request(&["bulk", "0042"], 1, PATIENCE, 1))
            .await
            .unwrap();
        assert_eq!(found.results.len(), 1);
    }

    // The slow peer is disconnected as too slow; what it could not take was
    // dropped and counted; the others are still attached.
    let stats = node
        .wait_for(PATIENCE, |s| s.peers_too_slow == 1)
        .await
        .unwrap();
    assert_eq!(stats.leaves, 2, "the sharer and the fast leaf remain");
    assert!(Traffic::get(&node.traffic().messages_dropped) > 0);
    let _ = flood.await;
    let found = fast
        .search(request(&["bulk", "0007"], 1, PATIENCE, 1))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);
}
