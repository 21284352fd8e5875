//! Hostile supernode peers: one floods 100k queries with fresh ids, which
//! must neither pass unthrottled nor break routing for an honest peer's
//! query; another forges hits (files that don't match, 150 files from
//! made-up sources), which must neither reach the leaf unchecked nor end
//! its dynamic query.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canopy_core::dynamic::DynamicConfig;
use canopy_core::supernode::SupernodeConfig;
use canopy_node::supernode::{self, SupernodeOptions};
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{
    ContentId, HandshakeOutcome, Message, MessageId, NodeId, Query, QueryHit, Role, SharedFile,
};
use canopy_testkit::overlay::*;
use tokio::sync::mpsc;

use crate::wire::{self, Writer};

/// A peer played by the test: what it is sent arrives in `inbox`.
pub(super) struct RawPeer {
    writer: Writer,
    inbox: mpsc::UnboundedReceiver<Message>,
}

impl RawPeer {
    /// Connects to `target` as a `role` under a fresh key, through the
    /// Noise handshake and the Hello (claiming the key's id).
    pub(super) async fn connect(target: SocketAddr, role: Role) -> Self {
        let key = StaticKeypair::generate().unwrap();
        let mut link = wire::connect(target, &key).await;
        let mut hello = wire::hello(&key, role, None);
        hello.user_agent = "hostile".into();
        let reply = wire::say_hello(&mut link, hello).await.expect("closed");
        assert!(
            matches!(reply.outcome, HandshakeOutcome::Accepted { .. }),
            "{:?}",
            reply.outcome
        );
        let (writer, inbox) = wire::split(link);
        RawPeer { writer, inbox }
    }

    pub(super) async fn send(&mut self, message: Message) {
        self.writer.send(&message).await;
    }

    /// Waits for the first message `wanted` picks; the ones before it are
    /// passed to `skipped`.
    pub(super) async fn next_where<T>(
        &mut self,
        mut wanted: impl FnMut(&Message) -> Option<T>,
        mut skipped: impl FnMut(&Message),
    ) -> T {
        let wait = async {
            loop {
                let message = self.inbox.recv().await.expect("connection closed");
                match wanted(&message) {
                    Some(found) => return found,
                    None => skipped(&message),
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("never came")
    }

    /// Messages received so far, taken.
    pub(super) fn received(&mut self) -> Vec<Message> {
        let mut all = Vec::new();
        while let Ok(message) = self.inbox.try_recv() {
            all.push(message);
        }
        all
    }
}

/// A made-up node id: forged hits name such sources (the peers' own ids
/// come from their keys).
fn node_id(n: u32) -> NodeId {
    let mut id = [0x5A; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NodeId(id)
}

fn message_id(n: u32) -> MessageId {
    let mut id = [0xC3; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    MessageId(id)
}

fn query(id: MessageId, word: &str, ttl: u8) -> Query {
    Query {
        message_id: id,
        ttl,
        hops: 0,
        keywords: vec![word.into()],
        content_id: None,
        min_size: None,
        max_size: None,
    }
}

fn file(n: u32, name: &str) -> SharedFile {
    let mut id = [0x77; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    SharedFile {
        content_id: ContentId(id),
        name: name.into(),
        size: 1_000,
        available: None,
    }
}

fn hit(id: MessageId, source: u32, files: Vec<SharedFile>) -> QueryHit {
    QueryHit {
        message_id: id,
        source_node_id: node_id(source),
        source_addr: SocketAddr::from(([127, 0, 0, 1], 40_000 + source as u16)),
        files,
        firewalled: false,
    }
}

const FLOOD: u32 = 100_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_flooding_fresh_ids_is_throttled_and_others_still_route() {
    init_logs();
    let node = supernode(&[]).await;
    let target = node.local_addr();
    let mut honest = RawPeer::connect(target, Role::Supernode).await;
    let mut answerer = RawPeer::connect(target, Role::Supernode).await;
    let mut flooder = RawPeer::connect(target, Role::Supernode).await;
    node.wait_for(PATIENCE, |s| s.supernode_peers == 3)
        .await
        .unwrap();

    // The honest peer asks; its query reaches the answerer.
    let asked = message_id(0);
    honest.send(Message::Query(query(asked, "blue", 3))).await;
    answerer
        .next_where(
            |m| matches!(m, Message::Query(q) if q.message_id == asked).then_some(()),
            |_| {},
        )
        .await;

    // 100k queries with fresh ids, about 4 MB, as fast as the socket takes
    // them.
    let started = Instant::now();
    for n in 1..=FLOOD {
        flooder
            .writer
            .feed(&Message::Query(query(message_id(n), "junk", 7)));
        if n % 1_000 == 0 {
            flooder.writer.flush().await;
        }
    }
    flooder.writer.flush().await;
    node.wait_for(PATIENCE, |s| {
        s.queries_received + s.peer_queries_rate_limited > u64::from(FLOOD)
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();

    // The answer comes back to the honest peer all the same.
    answerer
        .send(Message::QueryHit(hit(
            asked,
            9,
            vec![file(1, "Blue Moon.ogg")],
        )))
        .await;
    let files = honest
        .next_where(
            |m| match m {
                Message::QueryHit(h) if h.message_id == asked => Some(h.files.len()),
                _ => None,
            },
            |_| {},
        )
        .await;
    assert_eq!(files, 1, "the honest peer's query still routes");
    // (The stats are published just after the hit went out.)
    node.wait_for(PATIENCE, |s| s.hits_routed == 1)
        .await
        .unwrap();

    // The flood went through at the peer's rate, no faster.
    let defaults = SupernodeConfig::new(node_id(0), None);
    let allowed = u64::from(defaults.peer_query_burst)
        + (f64::from(defaults.peer_queries_per_second) * elapsed.as_secs_f64()).ceil() as u64;
    let stats = node.stats();
    assert!(
        stats.peer_queries_rate_limited >= u64::from(FLOOD) - allowed,
        "only {} of {FLOOD} dropped in {elapsed:?}",
        stats.peer_queries_rate_limited
    );
    // Each query let in goes to the two other peers, and the honest one's
    // to two as well.
    assert!(
        stats.queries_forwarded <= 2 * (allowed + 1),
        "{} forwarded",
        stats.queries_forwarded
    );
    let copies = answerer
        .received()
        .iter()
        .filter(|m| matches!(m, Message::Query(_)))
        .count() as u64;
    assert!(copies <= allowed, "the answerer got {copies} copies");
    // Nor did the flood flush the duplicate table: the honest query coming
    // back by another path is still caught.
    answerer.send(Message::Query(query(asked, "blue", 3))).await;
    node.wait_for(PATIENCE, |s| s.queries_duplicate == 1)
        .await
        .unwrap();
    drop(flooder);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_hits_are_dropped_and_cannot_end_a_leafs_dynamic_query() {
    init_logs();
    let mut options = SupernodeOptions::new(localhost());
    options.peers_wanted = 0;
    // Probe one peer at a time, to a target of 150, widening every 300 ms.
    options.protocol.dynamic = Some(DynamicConfig {
        probe_peers: 1,
        hop_wait: Duration::from_millis(300),
        ..DynamicConfig::default()
    });
    let node = supernode::start(options).await.unwrap();
    let target = node.local_addr();
    // The hostile peer connects first: the probe goes to it.
    let mut hostile = RawPeer::connect(target, Role::Supernode).await;
    let mut honest = RawPeer::connect(target, Role::Supernode).await;
    node.wait_for(PATIENCE, |s| s.supernode_peers == 2)
        .await
        .unwrap();
    let searcher = leaf(&node, None).await;
    let search = tokio::spawn(async move {
        searcher
            // 150 forged contents and the real one: done when all came.
            .search(request(&["song"], 4, PATIENCE, 151))
            .await
            .unwrap()
    });

    let probe = hostile
        .next_where(
            |m| match m {
                Message::Query(q) => Some(q.message_id),
                _ => None,
            },
            |_| {},
        )
        .await;
    // 150 files that do not match the query, then 150 that do, from one
    // made-up source, then again from others.
    let junk: Vec<SharedFile> = (0..150).map(|n| file(n, "malware.exe")).collect();
    hostile.send(Message::QueryHit(hit(probe, 10, junk))).await;
    let songs: Vec<SharedFile> = (0..150).map(|n| file(1_000 + n, "song")).collect();
    for source in 11..15 {
        hostile
            .send(Message::QueryHit(hit(probe, source, songs.clone())))
            .await;
    }
    // The query is not over: it widens to the honest peer, under a new id.
    let widened = honest
        .next_where(
            |m| match m {
                Message::Query(q) => Some(q.message_id),
                _ => None,
            },
            |_| {},
        )
        .await;
    assert_ne!(widened, probe, "each step has its own id");
    honest
        .send(Message::QueryHit(hit(
            widened,
            20,
            vec![file(5_000, "real song.ogg")],
        )))
        .await;
    let found = search.await.unwrap();
    let names: Vec<String> = found.results.iter().map(|r| r.name.clone()).collect();
    assert!(names.iter().any(|n| n == "real song.ogg"), "{names:?}");
    assert!(names.iter().all(|n| n != "malware.exe"));
    node.wait_for(PATIENCE, |s| s.hits_routed == 5)
        .await
        .unwrap();
    let stats = node.stats();
    assert_eq!(stats.hits_mismatched, 1, "the junk hit was dropped");
    assert_eq!(stats.hit_files_mismatched, 150);
    assert_eq!(
        stats.dynamic_hits_uncounted, 3,
        "past the first, the hostile peer's hits count for nothing"
    );
}
