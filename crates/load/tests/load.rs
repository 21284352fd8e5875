//! The load generator against the real thing, in-process on 127.0.0.1:
//! leaves attach and publish, searches are answered, and the raw relay
//! forwards frames between connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canopy_load::fleet::{self, FleetOptions};
use canopy_load::workload::{Rng, Workload};
use canopy_load::{frames, raw_relay, search};
use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::Message;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PATIENCE: Duration = Duration::from_secs(20);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn twenty_leaves_publish_and_are_found() {
    let mut options = SupernodeOptions::new(localhost());
    options.peers_wanted = 0;
    options.protocol.leaf_queries_per_second = 1000;
    options.protocol.leaf_query_burst = 1000;
    let node = supernode::start(options).await.unwrap();
    let workload = Arc::new(Workload::new(3, 100, 0.2));
    let mut fleet = fleet::connect(
        workload.clone(),
        FleetOptions {
            targets: vec![node.local_addr()],
            count: 20,
            sources: Vec::new(),
            first_leaf: 0,
            concurrency: 8,
        },
    )
    .await
    .unwrap();
    node.wait_for(PATIENCE, |s| s.leaves == 20 && s.index_files == 2000)
        .await
        .unwrap();
    let mut rng = Rng::new(9);
    let queries = (0..5)
        .map(|i| {
            let keywords = workload.hit_keywords(i + 1, 7);
            (
                usize::try_from(i).unwrap(),
                search::query(&mut rng, keywords, 1),
            )
        })
        .collect();
    let report = search::timed(&mut fleet, queries, 100.0, Duration::from_secs(1)).await;
    assert_eq!(report.answered, 5, "{report:?}");
}

#[tokio::test]
async fn the_raw_relay_forwards_every_frame_to_every_other_connection() {
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(raw_relay::serve(listener, Arc::default()));
    let mut sinks = Vec::new();
    for _ in 0..2 {
        sinks.push(frames::connect(addr, None).await.unwrap());
    }
    let mut source = frames::connect(addr, None).await.unwrap();
    let ping = frames::encode(&Message::Ping { nonce: 7 }).unwrap();
    // The relay may not have registered every sink yet: send until both
    // have a frame, then check it is whole.
    for sink in &mut sinks {
        let mut got = vec![0u8; ping.len()];
        let read = async {
            loop {
                source.write_all(&ping).await.unwrap();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(50), sink.read_exact(&mut got)).await
                {
                    return;
                }
            }
        };
        tokio::time::timeout(PATIENCE, read).await.unwrap();
        assert_eq!(got, ping.to_vec());
    }
}
