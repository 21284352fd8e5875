//! One supernode driven by hand, its peers and leaves played by the test:
//! supernode peers are throttled and their hits checked, a flood of fresh
//! ids from one peer leaves everyone else's routes alone, forged hits cannot
//! end a leaf's dynamic query, queries scan a bounded part of the index,
//! and the index keeps to its byte budget. Deterministic: a fake clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::dynamic::DynamicConfig;
use canopy_core::handshake::Identity;
use canopy_core::index::{FILE_BYTES, WORD_BYTES};
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node_id(n: u32) -> NodeId {
    let mut id = [0xBB; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NodeId(id)
}

fn message_id(n: u32) -> MessageId {
    let mut id = [0x11; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    MessageId(id)
}

fn file(n: u32, name: &str, size: u64) -> SharedFile {
    let mut id = [0x22; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    SharedFile {
        content_id: ContentId(id),
        name: name.into(),
        size,
        available: None,
    }
}

fn query(id: MessageId, words: &[&str], ttl: u8) -> Query {
    Query {
        message_id: id,
        ttl,
        hops: 0,
        keywords: words.iter().map(|w| (*w).to_owned()).collect(),
        content_id: None,
        min_size: None,
        max_size: None,
    }
}

fn hit(id: MessageId, source: u32, files: Vec<SharedFile>) -> QueryHit {
    QueryHit {
        message_id: id,
        source_node_id: node_id(source),
        source_addr: addr(50_000 + source as u16),
        files,
        firewalled: false,
    }
}

/// A supernode and what it did.
struct Bench {
    node: Supernode,
    now: Time,
    sent: Vec<(ConnId, Message)>,
    closed: Vec<(ConnId, Option<(ByeReason, String)>)>,
}

impl Bench {
    fn new(configure: impl Fn(&mut SupernodeConfig)) -> Self {
        let mut config = SupernodeConfig::new(node_id(0), Some(addr(6346)));
        configure(&mut config);
        Bench {
            node: Supernode::new(config),
            now: Time(1),
            sent: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Send { conn, message } => self.sent.push((conn, message)),
                Action::Forward { conns, message } => {
                    for conn in conns {
                        self.sent.push((conn, message.clone()));
                    }
                }
                Action::Close { conn, bye } => self.closed.push((conn, bye)),
                _ => {}
            }
        }
    }

    fn connect(&mut self, conn: u64, role: Role, id: NodeId) {
        let conn = ConnId(conn);
        let port = 20_000 + conn.0 as u16;
        self.node
            .handle_connected(conn, Direction::Inbound, addr(port), id, self.now);
        let identity = Identity {
            node_id: id,
            role,
            listen_addr: Some(addr(port)),
            user_agent: "test".into(),
        };
        self.node
            .handle_message(conn, Message::Hello(identity.hello()), self.now);
        self.drain();
    }

    fn peer(&mut self, conn: u64) {
        self.connect(conn, Role::Supernode, node_id(conn as u32));
    }

    fn leaf(&mut self, conn: u64, files: Vec<SharedFile>) {
        self.connect(conn, Role::Leaf, node_id(conn as u32));
        self.from(
            conn,
            Message::FileList {
                replace: true,
                files,
            },
        );
    }

    fn from(&mut self, conn: u64, message: Message) {
        self.node.handle_message(ConnId(conn), message, self.now);
        self.drain();
    }

    fn tick(&mut self, by: Duration) {
        self.now = self.now + by;
        self.node.handle_timeout(self.now);
        self.drain();
    }

    /// Hits sent to `conn` so far, taken.
    fn hits_to(&mut self, conn: u64) -> Vec<QueryHit> {
        let mut hits = Vec::new();
        self.sent.retain(|(to, message)| match message {
            Message::QueryHit(hit) if *to == ConnId(conn) => {
                hits.push(hit.clone());
                false
            }
            _ => true,
        });
        hits
    }

    /// Queries sent to `conn` so far, taken.
    fn queries_to(&mut self, conn: u64) -> Vec<Query> {
        let mut queries = Vec::new();
        self.sent.retain(|(to, message)| match message {
            Message::Query(query) if *to == ConnId(conn) => {
                queries.push(query.clone());
                false
            }
            _ => true,
        });
        queries
    }
}

/// Peer 2 (honest) asks; peer 3 answers; peer 1 floods `flood` fresh ids
/// in between. Returns the bench and the hits that reached peer 2.
fn flood_between_query_and_hit(
    flood: u32,
    configure: impl Fn(&mut SupernodeConfig),
) -> (Bench, Vec<QueryHit>) {
    let mut bench = Bench::new(configure);
    for peer in 1..=3 {
        bench.peer(peer);
    }
    let honest = message_id(0);
    bench.from(2, Message::Query(query(honest, &["blue"], 3)));
    for n in 1..=flood {
        bench.from(1, Message::Query(query(message_id(n), &["junk"], 3)));
        if n % 10_000 == 0 {
            bench.sent.clear(); // the flood's copies: keep memory low
        }
    }
    bench.tick(Duration::from_millis(100));
    bench.from(
        3,
        Message::QueryHit(hit(honest, 7, vec![file(1, "Blue Moon.mp3", 10)])),
    );
    let hits = bench.hits_to(2);
    (bench, hits)
}

#[test]
fn a_flooding_peer_is_throttled_and_routing_for_others_still_works() {
    let (bench, hits) = flood_between_query_and_hit(100_000, |_| {});
    assert_eq!(hits.len(), 1, "the honest peer's hit came back");
    let stats = bench.node.stats();
    let burst = u64::from(bench.node.config().peer_query_burst);
    // The flood: the burst got through (two copies each), the rest was
    // dropped and counted.
    assert_eq!(stats.peer_queries_rate_limited, 100_000 - burst);
    assert_eq!(stats.queries_forwarded, 2 + 2 * burst);
    assert_eq!(stats.hits_routed, 1);
    // Nor was the duplicate table flushed: the honest query coming back by
    // another path is still caught.
    let mut bench = bench;
    bench.from(3, Message::Query(query(message_id(0), &["blue"], 3)));
    assert_eq!(bench.node.stats().queries_duplicate, 1);
}

#[test]
fn a_flood_at_full_speed_rotates_only_its_own_routes() {
    // As in the relay benchmark: the peer's rate raised out of the way;
    // only its share of the route table stands between its fresh ids and
    // everyone else's routes.
    let (bench, hits) = flood_between_query_and_hit(100_000, |c| {
        c.peer_queries_per_second = u32::MAX;
        c.peer_query_burst = u32::MAX;
        c.peer_route_capacity = 1_000;
    });
    assert_eq!(hits.len(), 1, "the honest peer's hit came back");
    let stats = bench.node.stats();
    assert_eq!(stats.peer_queries_rate_limited, 0);
    assert_eq!(stats.queries_forwarded, 2 + 2 * 100_000);
    // A hit for the flood's first query: its route was pushed out of the
    // flooder's own share long ago.
    let mut bench = bench;
    bench.from(
        3,
        Message::QueryHit(hit(message_id(1), 8, vec![file(2, "junk", 1)])),
    );
    assert!(bench.hits_to(1).is_empty());
    assert_eq!(bench.node.stats().hits_unroutable, 1);
}

#[test]
fn only_files_that_match_the_query_are_passed_on() {
    let mut bench = Bench::new(|_| {});
    for peer in 1..=2 {
        bench.peer(peer);
    }
    let id = message_id(1);
    let mut asked = query(id, &["blue moon"], 3);
    asked.min_size = Some(100);
    bench.from(1, Message::Query(asked));
    let files = vec![
        file(1, "Blue Moon - live.mp3", 100),
        file(2, "Red Moon.mp3", 100),
        file(3, "blue moon.mp3", 99),
        file(4, "moon BLUE", 5_000),
    ];
    bench.from(2, Message::QueryHit(hit(id, 7, files)));
    let passed = bench.hits_to(1);
    assert_eq!(passed.len(), 1);
    let names: Vec<&str> = passed[0].files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["Blue Moon - live.mp3", "moon BLUE"]);
    // Nothing that matches: the hit goes nowhere.
    bench.from(
        2,
        Message::QueryHit(hit(id, 8, vec![file(5, "malware.exe", 1_000)])),
    );
    // A source nobody could reach.
    let mut unspecified = hit(id, 9, vec![file(6, "blue moon", 1_000)]);
    unspecified.source_addr = SocketAddr::from(([0, 0, 0, 0], 6346));
    bench.from(2, Message::QueryHit(unspecified));
    let mut zero = hit(id, 9, vec![file(6, "blue moon", 1_000)]);
    zero.source_node_id = NodeId([0; 16]);
    bench.from(2, Message::QueryHit(zero));
    assert!(bench.hits_to(1).is_empty());
    let stats = bench.node.stats();
    assert_eq!(stats.hit_files_mismatched, 3);
    assert_eq!(stats.hits_mismatched, 1);
    assert_eq!(stats.hits_invalid, 2);
    assert_eq!(stats.hits_routed, 1);
}

#[test]
fn a_peers_hits_are_throttled() {
    let mut bench = Bench::new(|c| {
        c.peer_hits_per_second = 10;
        c.peer_hit_burst = 10;
    });
    for peer in 1..=2 {
        bench.peer(peer);
    }
    let id = message_id(1);
    bench.from(1, Message::Query(query(id, &["song"], 3)));
    for n in 0..100 {
        bench.from(
            2,
            Message::QueryHit(hit(id, 10 + n, vec![file(n, "song", 1)])),
        );
    }
    assert_eq!(bench.hits_to(1).len(), 10);
    assert_eq!(bench.node.stats().hits_rate_limited, 90);
}

/// A supernode with a searching leaf (conn 100) and ten peers (1-10),
/// probing two at a time, to 20 results.
fn dynamic_bench() -> Bench {
    let mut bench = Bench::new(|c| {
        c.dynamic = Some(DynamicConfig {
            keyword_target: 20,
            probe_peers: 2,
            hop_wait: Duration::from_secs(1),
            ..DynamicConfig::default()
        });
    });
    for peer in 1..=10 {
        bench.peer(peer);
    }
    bench.leaf(100, Vec::new());
    bench
}

#[test]
fn a_forged_hit_cannot_end_someone_elses_dynamic_query() {
    let mut bench = dynamic_bench();
    let id = message_id(42);
    bench.from(100, Message::Query(query(id, &["song"], 4)));
    let probe = bench.queries_to(1);
    assert_eq!(probe.len(), 1, "peer 1 is probed");
    let step_id = probe[0].message_id;
    assert_ne!(step_id, id, "steps go out under their own ids");
    // Peer 1 answers with 150 matching files from one source, then again
    // from made-up sources.
    let many: Vec<SharedFile> = (0..150).map(|n| file(n, "song", 1)).collect();
    bench.from(1, Message::QueryHit(hit(step_id, 7, many.clone())));
    for source in 8..20 {
        bench.from(1, Message::QueryHit(hit(step_id, source, many.clone())));
    }
    // The leaf gets them, under its own id.
    let to_leaf = bench.hits_to(100);
    assert_eq!(to_leaf.len(), 13);
    assert!(to_leaf.iter().all(|h| h.message_id == id));
    assert_eq!(bench.node.stats().dynamic_hits_uncounted, 12);
    // The leaf kept them all and says so: that cannot end it either, as
    // they all came through us.
    bench.from(
        100,
        Message::QueryStatus {
            message_id: id,
            results: 13 * 150,
        },
    );
    // Yet the query goes on: peer 1 counted for half the target only.
    let forwarded = bench.node.stats().queries_forwarded;
    bench.tick(Duration::from_secs(2));
    assert!(
        bench.node.stats().queries_forwarded > forwarded,
        "the query widened"
    );
    // An honest peer's hit, twice from the same source, counts once; with
    // another source's, the target is met and the query stops.
    let ten: Vec<SharedFile> = (0..10).map(|n| file(1_000 + n, "song", 1)).collect();
    bench.from(2, Message::QueryHit(hit(step_id, 30, ten.clone())));
    bench.from(2, Message::QueryHit(hit(step_id, 30, ten.clone())));
    assert_eq!(bench.node.stats().dynamic_hits_uncounted, 13);
    bench.from(3, Message::QueryHit(hit(step_id, 31, ten)));
    let forwarded = bench.node.stats().queries_forwarded;
    bench.tick(Duration::from_secs(30));
    assert_eq!(
        bench.node.stats().queries_forwarded,
        forwarded,
        "ended at its target"
    );
}

#[test]
fn each_widening_step_has_an_id_no_peer_has_seen() {
    let mut bench = dynamic_bench();
    let id = message_id(43);
    bench.from(100, Message::Query(query(id, &["rare"], 4)));
    bench.tick(Duration::from_secs(1));
    bench.tick(Duration::from_secs(2));
    let mut ids: Vec<MessageId> = (1..=10)
        .flat_map(|peer| bench.queries_to(peer))
        .map(|q| q.message_id)
        .collect();
    assert!(ids.len() >= 3, "probe and two widening steps: {ids:?}");
    let probe = ids[0];
    ids.dedup();
    assert!(ids.len() >= 2, "a widening step reused the probe's id");
    assert!(!ids.contains(&id));
    // A peer replaying the probe's id to us (as it would to others) is a
    // duplicate; the next step's id was never out before it was sent.
    bench.from(1, Message::Query(query(probe, &["rare"], 4)));
    assert_eq!(bench.node.stats().queries_duplicate, 1);
    let late = bench.node.step_id(id, 99);
    assert!(!ids.contains(&late));
}

#[test]
fn a_query_that_matches_nothing_scans_a_bounded_part_of_the_index() {
    let mut bench = Bench::new(|c| c.scan_budget = 1_000);
    bench.peer(1);
    let files: Vec<SharedFile> = (0..5_000).map(|n| file(n, "common", 1)).collect();
    // Ten leaves of 500 files: within the per-leaf limit.
    for (leaf, chunk) in (100..).zip(files.chunks(500)) {
        bench.leaf(leaf, chunk.to_vec());
    }
    assert_eq!(bench.node.stats().index_files, 5_000);
    let mut never = query(message_id(1), &["common"], 1);
    never.min_size = Some(u64::MAX);
    bench.from(1, Message::Query(never));
    assert_eq!(bench.node.stats().queries_scan_exhausted, 1);
    assert_eq!(bench.node.stats().hits_answered, 0);
    // An honest query is answered in full, within the budget.
    bench.from(1, Message::Query(query(message_id(2), &["common"], 1)));
    assert_eq!(bench.node.stats().queries_scan_exhausted, 1);
    let files: usize = bench.hits_to(1).iter().map(|h| h.files.len()).sum();
    assert_eq!(files, 200, "max_results_per_query");
    assert_eq!(bench.node.stats().scan_candidates, 1_000 + 200);
}

#[test]
fn a_connection_scans_within_its_allowance() {
    // 1,000 candidates a query; a peer's allowance is its query rate (10)
    // times 100 a second, in bursts of two budgets.
    let mut bench = Bench::new(|c| {
        c.scan_budget = 1_000;
        c.scan_per_query = 100;
        c.peer_queries_per_second = 10;
        c.peer_query_burst = 100;
    });
    bench.peer(1);
    let files: Vec<SharedFile> = (0..5_000).map(|n| file(n, "common", 1)).collect();
    for (leaf, chunk) in (100..).zip(files.chunks(500)) {
        bench.leaf(leaf, chunk.to_vec());
    }
    let mut never = query(message_id(0), &["common"], 1);
    never.min_size = Some(u64::MAX);
    for n in 1..=10 {
        never.message_id = message_id(n);
        bench.from(1, Message::Query(never.clone()));
    }
    let stats = bench.node.stats();
    assert_eq!(stats.scan_candidates, 2_000, "the burst, then nothing");
    assert_eq!(stats.queries_scan_exhausted, 10);
    // A second later: 10 x 100 more.
    bench.tick(Duration::from_secs(1));
    never.message_id = message_id(11);
    bench.from(1, Message::Query(never));
    assert_eq!(bench.node.stats().scan_candidates, 3_000);
}

/// Bytes charged for a file named `name` with `words` words.
fn charge(name: &str, words: u64) -> u64 {
    FILE_BYTES + name.len() as u64 + words * WORD_BYTES
}

#[test]
fn over_budget_the_largest_publisher_is_refused_first() {
    let per_file = charge("bulk 0000", 2);
    let budget = 100 * per_file;
    let mut bench = Bench::new(|c| c.index_budget_bytes = budget);
    // A greedy leaf fills the budget exactly.
    let bulk: Vec<SharedFile> = (0..100)
        .map(|n| file(n, &format!("bulk {n:04}"), 1))
        .collect();
    bench.leaf(1, bulk);
    assert_eq!(bench.node.stats().index_files, 100);
    assert_eq!(bench.node.stats().index_bytes, budget);
    // A small leaf publishes: the greedy one, the largest, is refused.
    bench.leaf(2, vec![file(1_000, "small song", 1)]);
    let stats = bench.node.stats();
    assert_eq!(stats.index_files, 1);
    assert_eq!(stats.index_bytes, charge("small song", 2));
    assert_eq!(stats.publishers_refused, 1);
    let (conn, bye) = bench.closed.last().unwrap().clone();
    assert_eq!(conn, ConnId(1));
    let (reason, detail) = bye.unwrap();
    assert_eq!(reason, ByeReason::LimitExceeded);
    assert!(
        detail.contains(&format!("budget of {budget} bytes")),
        "{detail}"
    );
    // The small leaf's file is found.
    bench.peer(3);
    bench.from(3, Message::Query(query(message_id(1), &["song"], 1)));
    assert_eq!(bench.hits_to(3).len(), 1);
    // A leaf that alone would go past the budget is refused itself.
    let more: Vec<SharedFile> = (0..101)
        .map(|n| file(2_000 + n, &format!("bulk {n:04}"), 1))
        .collect();
    bench.leaf(4, more);
    let (conn, bye) = bench.closed.last().unwrap().clone();
    assert_eq!(conn, ConnId(4), "the largest publisher is the newcomer");
    assert_eq!(bye.unwrap().0, ByeReason::LimitExceeded);
    let stats = bench.node.stats();
    assert!(stats.index_bytes <= budget);
    assert_eq!(stats.index_files, 1, "the small leaf's file stays");
}
