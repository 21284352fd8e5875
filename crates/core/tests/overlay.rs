//! The protocol core wired together in memory, with no sockets and a fake
//! clock: supernodes and leaves exchange messages through a queue until
//! nothing moves. Every test here is deterministic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession, PushWay, SearchRequest};
use canopy_core::search::SearchResult;
use canopy_core::supernode::{Action, Direction, Supernode, SupernodeConfig};
use canopy_core::{ConnId, Time};
use canopy_proto::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    Super(usize, ConnId),
    Leaf(usize),
}

struct Net {
    now: Time,
    supers: Vec<Supernode>,
    leaves: Vec<LeafSession>,
    links: HashMap<End, End>,
    inbox: VecDeque<(End, Message)>,
    closed_with: Vec<(End, Option<ByeReason>)>,
    pushes: Vec<(usize, ContentId, SocketAddr)>,
    /// The leaves of those pushes that asked for a hole punch.
    punches: Vec<usize>,
    /// Reachability probes asked for: (supernode, leaf connection, address).
    probes: Vec<(usize, ConnId, SocketAddr)>,
    /// Supernode addresses each supernode reported learning.
    learned: Vec<(usize, SocketAddr)>,
    next_conn: u64,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node_id(n: u32) -> NodeId {
    let mut id = [0xAA; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NodeId(id)
}

fn file(id: u8, name: &str) -> SharedFile {
    SharedFile {
        content_id: ContentId([id; 32]),
        name: name.into(),
        size: 1000 + u64::from(id),
        available: None,
    }
}

fn request(words: &[&str], ttl: u8) -> SearchRequest {
    SearchRequest::keywords(words, ttl, Duration::from_secs(5), 100)
}

impl Net {
    fn new(supernodes: usize, configure: impl Fn(&mut SupernodeConfig)) -> Self {
        let supers = (0..supernodes)
            .map(|i| {
                let mut config =
                    SupernodeConfig::new(node_id(i as u32), Some(addr(10_000 + i as u16)));
                configure(&mut config);
                Supernode::new(config)
            })
            .collect();
        Net {
            now: Time(1),
            supers,
            leaves: Vec::new(),
            links: HashMap::new(),
            inbox: VecDeque::new(),
            closed_with: Vec::new(),
            pushes: Vec::new(),
            punches: Vec::new(),
            probes: Vec::new(),
            learned: Vec::new(),
            next_conn: 1,
        }
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn join(&mut self, a: usize, b: usize) {
        let (ca, cb) = (self.conn(), self.conn());
        self.links.insert(End::Super(a, ca), End::Super(b, cb));
        self.links.insert(End::Super(b, cb), End::Super(a, ca));
        // The transport authenticated each side as the owner of its id.
        let (id_a, id_b) = (node_id(a as u32), node_id(b as u32));
        self.supers[b].handle_connected(
            cb,
            Direction::Inbound,
            addr(20_000 + a as u16),
            id_a,
            self.now,
        );
        self.supers[a].handle_connected(
            ca,
            Direction::Outbound,
            addr(10_000 + b as u16),
            id_b,
            self.now,
        );
        self.drive();
    }

    fn add_leaf(&mut self, at: usize, files: Vec<SharedFile>) -> usize {
        let index = self.leaves.len();
        let listen = SocketAddr::from(([0, 0, 0, 0], 30_000 + index as u16));
        self.add_leaf_listening(at, files, Some(listen))
    }

    fn add_leaf_listening(
        &mut self,
        at: usize,
        files: Vec<SharedFile>,
        listen_addr: Option<SocketAddr>,
    ) -> usize {
        let index = self.leaves.len();
        let identity = Identity {
            node_id: node_id(1000 + index as u32),
            role: Role::Leaf,
            listen_addr,
            user_agent: "test-leaf".into(),
        };
        self.leaves.push(LeafSession::new(identity, files));
        let c = self.conn();
        self.links.insert(End::Leaf(index), End::Super(at, c));
        self.links.insert(End::Super(at, c), End::Leaf(index));
        self.supers[at].handle_connected(
            c,
            Direction::Inbound,
            addr(40_000 + index as u16),
            node_id(1000 + index as u32),
            self.now,
        );
        self.leaves[index].handle_connected(node_id(at as u32));
        self.drive();
        index
    }

    /// Sends raw messages from leaf `index`'s connection, as a hostile leaf
    /// could.
    fn leaf_sends(&mut self, index: usize, message: Message) {
        let to = self.links[&End::Leaf(index)];
        self.inbox.push_back((to, message));
        self.drive();
    }

    /// Pushes delivered to leaf `index`, as (content id, callback).
    fn pushes_for(&self, index: usize) -> Vec<(ContentId, SocketAddr)> {
        self.pushes
            .iter()
            .filter(|(leaf, _, _)| *leaf == index)
            .map(|(_, id, addr)| (*id, *addr))
            .collect()
    }

    fn collect_actions(&mut self) -> bool {
        let mut moved = false;
        for s in 0..self.supers.len() {
            while let Some(action) = self.supers[s].poll_action() {
                moved = true;
                match action {
                    Action::Send { conn, message } => {
                        if let Some(to) = self.links.get(&End::Super(s, conn)) {
                            self.inbox.push_back((*to, message));
                        }
                    }
                    Action::Forward { conns, message } => {
                        for conn in conns {
                            if let Some(to) = self.links.get(&End::Super(s, conn)) {
                                self.inbox.push_back((*to, message.clone()));
                            }
                        }
                    }
                    Action::Close { conn, bye } => self.cut(End::Super(s, conn), bye),
                    Action::Probe { conn, addr } => self.probes.push((s, conn, addr)),
                    Action::Learned { supernodes, .. } => {
                        self.learned.extend(supernodes.into_iter().map(|a| (s, a)));
                    }
                    Action::Rejected { .. }
                    | Action::Joined { .. }
                    | Action::RelayCircuit { .. } => {}
                }
            }
        }
        for l in 0..self.leaves.len() {
            while let Some(action) = self.leaves[l].poll_action() {
                moved = true;
                match action {
                    LeafAction::Send(message) => {
                        if let Some(to) = self.links.get(&End::Leaf(l)) {
                            self.inbox.push_back((*to, message));
                        }
                    }
                    LeafAction::Close(bye) => self.cut(End::Leaf(l), bye),
                    LeafAction::PushRequested {
                        content_id,
                        callback_addr,
                        punch,
                        ..
                    } => {
                        self.pushes.push((l, content_id, callback_addr));
                        if punch {
                            self.punches.push(l);
                        }
                    }
                    LeafAction::Ready { .. }
                    | LeafAction::Rejected { .. }
                    | LeafAction::SupernodesLearned(_)
                    | LeafAction::Reachability { .. } => {}
                }
            }
        }
        moved
    }

    /// Closes the link at `from`: the other side gets the Bye (if any) and
    /// then the disconnect, after whatever is queued for it.
    fn cut(&mut self, from: End, bye: Option<(ByeReason, String)>) {
        self.closed_with
            .push((from, bye.as_ref().map(|(reason, _)| *reason)));
        let Some(to) = self.links.remove(&from) else {
            return;
        };
        self.links.remove(&to);
        if let End::Super(s, conn) = to {
            if let Some((reason, detail)) = bye {
                self.supers[s].handle_message(
                    conn,
                    Message::Bye {
                        reason,
                        detail,
                        try_supernodes: Vec::new(),
                    },
                    self.now,
                );
            }
            self.supers[s].handle_disconnected(conn);
        } else if let End::Leaf(l) = to {
            self.leaves[l].handle_message(
                Message::Bye {
                    try_supernodes: Vec::new(),
                    reason: ByeReason::Shutdown,
                    detail: String::new(),
                },
                self.now,
            );
        }
    }

    fn drive(&mut self) {
        loop {
            let moved = self.collect_actions();
            let Some((to, message)) = self.inbox.pop_front() else {
                if !moved {
                    return;
                }
                continue;
            };
            match to {
                End::Super(s, conn) => self.supers[s].handle_message(conn, message, self.now),
                End::Leaf(l) => self.leaves[l].handle_message(message, self.now),
            }
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now = self.now + by;
        for s in &mut self.supers {
            s.handle_timeout(self.now);
        }
        self.drive();
    }

    /// Runs a search from `leaf`; returns (distinct results, hit messages).
    fn search(&mut self, leaf: usize, request: SearchRequest) -> (usize, usize) {
        self.next_conn += 1;
        let id = MessageId([(self.next_conn % 251) as u8; 16]);
        self.leaves[leaf]
            .start_search(id, &request, self.now)
            .unwrap();
        self.drive();
        let session = self.leaves[leaf].finish_search(&id).unwrap();
        (session.results().count(), session.hits_received())
    }

    /// Runs a search from `leaf` and returns its results.
    fn search_results(&mut self, leaf: usize, request: SearchRequest) -> Vec<SearchResult> {
        self.next_conn += 1;
        let id = MessageId([(self.next_conn % 251) as u8; 16]);
        self.leaves[leaf]
            .start_search(id, &request, self.now)
            .unwrap();
        self.drive();
        let session = self.leaves[leaf].finish_search(&id).unwrap();
        session.into_results()
    }

    fn line(n: usize) -> Net {
        let mut net = Net::new(n, |_| {});
        for i in 1..n {
            net.join(i - 1, i);
        }
        net
    }
}

#[test]
fn a_query_crosses_three_supernodes_with_ttl_4_but_not_with_ttl_2() {
    let mut net = Net::line(4);
    net.add_leaf(0, vec![file(1, "Blue Moon.mp3"), file(2, "Red Sun.mp3")]);
    let searcher = net.add_leaf(3, vec![]);
    assert_eq!(net.search(searcher, request(&["blue", "moon"], 4)), (1, 1));
    assert_eq!(net.search(searcher, request(&["blue"], 2)), (0, 0));
    assert_eq!(net.search(searcher, request(&["blue"], 3)), (0, 0));
    // The middle supernodes routed the hit back; the far end answered it.
    assert_eq!(net.supers[0].stats().hits_answered, 1);
    assert_eq!(net.supers[1].stats().hits_routed, 1);
    assert_eq!(net.supers[2].stats().hits_routed, 1);
}

#[test]
fn ttl_and_hops_change_hop_by_hop() {
    let mut net = Net::line(3);
    let searcher = net.add_leaf(0, vec![]);
    net.search(searcher, request(&["x"], 3));
    // S0 got it from the leaf and forwarded once; S1 once; S2 (ttl 1) not.
    let forwarded: Vec<u64> = net
        .supers
        .iter()
        .map(|s| s.stats().queries_forwarded)
        .collect();
    assert_eq!(forwarded, vec![1, 1, 0]);
    let received: Vec<u64> = net
        .supers
        .iter()
        .map(|s| s.stats().queries_received)
        .collect();
    assert_eq!(received, vec![1, 1, 1]);
}

#[test]
fn a_ttl_above_the_cap_is_clamped() {
    let mut net = Net::line(6);
    net.add_leaf(3, vec![file(1, "near")]);
    net.add_leaf(4, vec![file(2, "far")]);
    let searcher = net.add_leaf(0, vec![]);
    // TTL 7 is clamped to the default cap of 4: S0..S3 see it, S4 does not.
    assert_eq!(net.search(searcher, request(&["near"], 7)), (1, 1));
    assert_eq!(net.search(searcher, request(&["far"], 7)), (0, 0));
    assert_eq!(net.supers[4].stats().queries_received, 0);
}

#[test]
fn in_a_ring_a_query_is_answered_once() {
    let mut net = Net::line(4);
    net.join(3, 0);
    net.add_leaf(0, vec![file(1, "ring song")]);
    let searcher = net.add_leaf(2, vec![]);
    assert_eq!(net.search(searcher, request(&["ring"], 4)), (1, 1));
    let duplicates: u64 = net.supers.iter().map(|s| s.stats().queries_duplicate).sum();
    assert!(duplicates > 0, "the second path's copy was dropped");
}

#[test]
fn a_departing_leaf_takes_its_files_out_of_the_index() {
    let mut net = Net::line(2);
    let sharer = net.add_leaf(0, vec![file(1, "leaving soon"), file(2, "also leaving")]);
    let searcher = net.add_leaf(1, vec![]);
    assert_eq!(net.supers[0].stats().index_files, 2);
    assert_eq!(net.search(searcher, request(&["leaving"], 4)).0, 2);
    net.leaves[sharer].shutdown();
    net.drive();
    assert_eq!(net.supers[0].stats().index_files, 0);
    assert_eq!(net.supers[0].stats().leaves, 0);
    assert_eq!(net.supers[1].stats().leaves, 1, "the searcher stays");
    assert_eq!(net.search(searcher, request(&["leaving"], 4)), (0, 0));
}

#[test]
fn deltas_add_and_remove_files() {
    let mut net = Net::line(1);
    let leaf = net.add_leaf(0, vec![file(1, "one")]);
    net.leaves[leaf].set_shares(vec![file(2, "two"), file(3, "three")]);
    net.drive();
    assert_eq!(net.supers[0].stats().index_files, 2);
    let searcher = net.add_leaf(0, vec![]);
    assert_eq!(net.search(searcher, request(&["one"], 1)).0, 0);
    assert_eq!(net.search(searcher, request(&["three"], 1)).0, 1);
}

#[test]
fn a_large_share_list_is_published_in_parts() {
    let mut net = Net::line(1);
    let files: Vec<SharedFile> = (0..=255u8)
        .map(|i| file(i, &format!("track {i}")))
        .collect();
    net.add_leaf(0, files);
    assert_eq!(net.supers[0].stats().index_files, 256);
}

#[test]
fn a_search_by_content_id_finds_every_source() {
    let mut net = Net::line(2);
    net.add_leaf(0, vec![file(7, "copy a")]);
    net.add_leaf(1, vec![file(7, "copy b")]);
    let searcher = net.add_leaf(1, vec![]);
    let mut req = request(&[], 2);
    req.content_id = Some(ContentId([7; 32]));
    assert_eq!(net.search(searcher, req), (1, 2));
}

fn partial(id: u8, name: &str, available: u64) -> SharedFile {
    SharedFile {
        available: Some(available),
        ..file(id, name)
    }
}

/// Each source of the results: (its leaf's node id, partial?).
fn sources(results: &[SearchResult]) -> Vec<(NodeId, bool)> {
    results
        .iter()
        .flat_map(|r| r.sources.iter().map(|s| (s.node_id, s.partial)))
        .collect()
}

#[test]
fn a_partial_source_is_indexed_found_and_replaced_when_complete() {
    let mut net = Net::line(2);
    let seed = net.add_leaf(0, vec![file(7, "film.mkv")]);
    let downloader = net.add_leaf(1, vec![partial(7, "film.mkv", 100)]);
    let searcher = net.add_leaf(0, vec![]);
    let (seed_id, downloader_id) = (
        node_id(1000 + seed as u32),
        node_id(1000 + downloader as u32),
    );
    assert_eq!(net.supers[1].stats().index_files, 1);
    let mut by_id = request(&[], 2);
    by_id.content_id = Some(ContentId([7; 32]));
    let results = net.search_results(searcher, by_id.clone());
    assert_eq!(results.len(), 1, "one result, both kinds of source");
    let mut found = sources(&results);
    found.sort();
    assert_eq!(found, vec![(seed_id, false), (downloader_id, true)]);
    // Keywords find it too, with its progress in the hit's file.
    let results = net.search_results(searcher, request(&["film"], 2));
    assert_eq!(sources(&results).len(), 2);
    // Progress updates the record; completion makes it a whole source.
    net.leaves[downloader].set_shares(vec![partial(7, "film.mkv", 900)]);
    net.drive();
    net.leaves[downloader].set_shares(vec![file(7, "film.mkv")]);
    net.drive();
    assert_eq!(net.supers[1].stats().index_files, 1, "no second record");
    let mut found = sources(&net.search_results(searcher, by_id.clone()));
    found.sort();
    assert_eq!(found, vec![(seed_id, false), (downloader_id, false)]);
    // A partial unshared is gone.
    net.leaves[downloader].set_shares(vec![]);
    net.drive();
    assert_eq!(
        sources(&net.search_results(searcher, by_id)),
        vec![(seed_id, false)]
    );
}

#[test]
fn a_whole_file_wins_over_a_partial_one_of_the_same_id() {
    let mut net = Net::line(1);
    let leaf = net.add_leaf(0, vec![file(7, "film.mkv"), partial(7, "film.mkv", 5)]);
    let searcher = net.add_leaf(0, vec![]);
    let mut by_id = request(&[], 1);
    by_id.content_id = Some(ContentId([7; 32]));
    let leaf_id = node_id(1000 + leaf as u32);
    assert_eq!(
        sources(&net.search_results(searcher, by_id.clone())),
        vec![(leaf_id, false)]
    );
    net.leaves[leaf].set_shares(vec![partial(7, "film.mkv", 5), file(7, "film.mkv")]);
    net.drive();
    assert_eq!(
        sources(&net.search_results(searcher, by_id)),
        vec![(leaf_id, false)]
    );
}

#[test]
fn a_leaf_at_its_file_limit_may_still_update_a_partial_file() {
    let mut net = Net::new(1, |c| c.max_files_per_leaf = 2);
    let leaf = net.add_leaf(0, vec![file(1, "one"), partial(2, "two", 10)]);
    for available in [20, 30, 40] {
        net.leaves[leaf].set_shares(vec![file(1, "one"), partial(2, "two", available)]);
        net.drive();
    }
    assert_eq!(net.supers[0].stats().index_files, 2);
    assert_eq!(net.supers[0].stats().leaves, 1, "not refused");
    assert_eq!(last_close(&net), None);
}

/// The reason of the last Bye sent by anyone.
fn last_close(net: &Net) -> Option<ByeReason> {
    net.closed_with.iter().rev().find_map(|(_, reason)| *reason)
}

#[test]
fn a_leaf_that_sends_what_only_supernodes_may_is_disconnected_with_a_reason() {
    let mut net = Net::line(1);
    let leaf = net.add_leaf(0, vec![file(1, "x")]);
    let hit = QueryHit {
        message_id: MessageId([1; 16]),
        source_node_id: node_id(5),
        source_addr: addr(1),
        files: vec![file(1, "x")],
        firewalled: false,
    };
    net.leaf_sends(leaf, Message::QueryHit(hit));
    assert_eq!(last_close(&net), Some(ByeReason::ProtocolViolation));
    assert_eq!(net.supers[0].stats().leaves, 0);
    assert_eq!(net.supers[0].stats().index_files, 0);
}

#[test]
fn anything_before_hello_is_a_violation() {
    let mut net = Net::line(1);
    let c = ConnId(999);
    net.supers[0].handle_connected(c, Direction::Inbound, addr(1), node_id(77), net.now);
    net.supers[0].handle_message(c, Message::Ping { nonce: 1 }, net.now);
    assert!(matches!(
        net.supers[0].poll_action(),
        Some(Action::Close {
            bye: Some((ByeReason::ProtocolViolation, _)),
            ..
        })
    ));
}

#[test]
fn a_full_supernode_rejects_with_a_try_list() {
    let mut net = Net::new(2, |c| c.max_leaves = 1);
    net.join(0, 1);
    net.add_leaf(0, vec![]);
    let c = ConnId(999);
    net.supers[0].handle_connected(c, Direction::Inbound, addr(1), node_id(77), net.now);
    let hello = Identity {
        node_id: node_id(77),
        role: Role::Leaf,
        listen_addr: None,
        user_agent: String::new(),
    }
    .hello();
    net.supers[0].handle_message(c, Message::Hello(hello), net.now);
    match net.supers[0].poll_action() {
        Some(Action::Send {
            message: Message::HelloReply(reply),
            ..
        }) => match reply.outcome {
            HandshakeOutcome::Rejected {
                reason,
                try_supernodes,
                ..
            } => {
                assert_eq!(reason, RejectReason::Full);
                assert_eq!(try_supernodes, vec![addr(10_001)]);
            }
            other => panic!("expected a rejection, got {other:?}"),
        },
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// The reply a supernode gives a Hello on a fresh inbound connection whose
/// transport authenticated `authenticated`.
fn reply_to(
    net: &mut Net,
    conn: ConnId,
    authenticated: NodeId,
    role: Role,
    claimed: NodeId,
) -> HandshakeOutcome {
    net.supers[0].handle_connected(conn, Direction::Inbound, addr(1), authenticated, net.now);
    let hello = Identity {
        node_id: claimed,
        role,
        listen_addr: None,
        user_agent: "squatter".into(),
    }
    .hello();
    net.supers[0].handle_message(conn, Message::Hello(hello), net.now);
    let mut outcome = None;
    while let Some(action) = net.supers[0].poll_action() {
        if let Action::Send {
            message: Message::HelloReply(reply),
            ..
        } = action
        {
            outcome = Some(reply.outcome);
        }
    }
    outcome.expect("a HelloReply")
}

#[test]
fn a_hello_claiming_another_nodes_id_is_refused_and_the_owner_keeps_its_place() {
    let mut net = Net::line(2);
    net.add_leaf(0, vec![file(1, "x")]);
    let squatter = node_id(666);
    // A supernode's id and a leaf's id, each claimed with the squatter's key.
    for (conn, role, claimed) in [
        (ConnId(900), Role::Supernode, node_id(1)),
        (ConnId(901), Role::Leaf, node_id(1000)),
        (ConnId(902), Role::Leaf, node_id(0)),
    ] {
        match reply_to(&mut net, conn, squatter, role, claimed) {
            HandshakeOutcome::Rejected { reason, detail, .. } => {
                assert_eq!(reason, RejectReason::NodeIdMismatch, "{detail}");
            }
            other => panic!("{claimed} was accepted: {other:?}"),
        }
    }
    let stats = net.supers[0].stats();
    assert_eq!((stats.supernode_peers, stats.leaves), (1, 1));
    // The same key with its own id is welcome.
    assert!(matches!(
        reply_to(&mut net, ConnId(903), squatter, Role::Leaf, squatter),
        HandshakeOutcome::Accepted { .. }
    ));
}

#[test]
fn a_hello_reply_from_a_key_that_does_not_own_its_id_is_a_violation() {
    let mut net = Net::line(1);
    let c = ConnId(999);
    net.supers[0].handle_connected(c, Direction::Outbound, addr(1), node_id(5), net.now);
    assert!(matches!(
        net.supers[0].poll_action(),
        Some(Action::Send {
            message: Message::Hello(_),
            ..
        })
    ));
    let reply = HelloReply {
        free_leaf_slots: None,
        hello: Identity {
            node_id: node_id(6),
            role: Role::Supernode,
            listen_addr: None,
            user_agent: String::new(),
        }
        .hello(),
        outcome: HandshakeOutcome::Accepted {
            observed_addr: None,
        },
    };
    net.supers[0].handle_message(c, Message::HelloReply(reply.clone()), net.now);
    assert!(matches!(
        net.supers[0].poll_action(),
        Some(Action::Close {
            bye: Some((ByeReason::ProtocolViolation, _)),
            ..
        })
    ));
    assert_eq!(net.supers[0].stats().supernode_peers, 0);

    // A leaf refuses it the same way.
    let mut leaf = LeafSession::new(
        Identity {
            node_id: node_id(1000),
            role: Role::Leaf,
            listen_addr: None,
            user_agent: String::new(),
        },
        Vec::new(),
    );
    leaf.handle_connected(node_id(5));
    assert!(matches!(
        leaf.poll_action(),
        Some(LeafAction::Send(Message::Hello(_)))
    ));
    leaf.handle_message(Message::HelloReply(reply), net.now);
    assert!(matches!(
        leaf.poll_action(),
        Some(LeafAction::Close(Some((ByeReason::ProtocolViolation, _))))
    ));
    assert!(!leaf.is_ready());
}

#[test]
fn a_silent_connection_is_cut_at_the_handshake_timeout() {
    let mut net = Net::line(1);
    net.supers[0].handle_connected(
        ConnId(999),
        Direction::Inbound,
        addr(1),
        node_id(77),
        net.now,
    );
    net.tick(Duration::from_secs(9));
    assert_eq!(net.supers[0].stats().handshaking, 1);
    net.tick(Duration::from_secs(1));
    assert_eq!(net.supers[0].stats().handshaking, 0);
}

#[test]
fn idle_peers_are_pinged_then_dropped() {
    let mut net = Net::line(1);
    let leaf = net.add_leaf(0, vec![]);
    // The leaf answers pings, so it stays.
    net.tick(Duration::from_secs(31));
    net.tick(Duration::from_secs(31));
    net.tick(Duration::from_secs(31));
    assert_eq!(net.supers[0].stats().leaves, 1);
    // Cut the leaf's side off silently: it no longer answers.
    net.links.remove(&End::Leaf(leaf));
    for _ in 0..4 {
        net.tick(Duration::from_secs(30));
    }
    assert_eq!(net.supers[0].stats().leaves, 0);
}

#[test]
fn a_hit_with_no_route_is_dropped() {
    let mut net = Net::line(2);
    // S1 sends S0 a hit for a query S0 never saw.
    let (from, _) = net
        .links
        .iter()
        .find(|(from, to)| matches!(from, End::Super(1, _)) && matches!(to, End::Super(0, _)))
        .map(|(a, b)| (*a, *b))
        .unwrap();
    let to = net.links[&from];
    let hit = QueryHit {
        message_id: MessageId([9; 16]),
        source_node_id: node_id(5),
        source_addr: addr(1),
        files: vec![file(1, "x")],
        firewalled: false,
    };
    net.inbox.push_back((to, Message::QueryHit(hit)));
    net.drive();
    assert_eq!(net.supers[0].stats().hits_unroutable, 1);
    assert_eq!(
        net.supers[0].stats().supernode_peers,
        1,
        "not a reason to disconnect"
    );
}

#[test]
fn a_second_connection_from_the_same_node_is_refused() {
    let mut net = Net::line(2);
    net.join(0, 1);
    assert_eq!(net.supers[0].stats().supernode_peers, 1);
    assert_eq!(net.supers[1].stats().supernode_peers, 1);
    assert!(net.supers[1].stats().handshakes_rejected >= 1);
}

#[test]
fn a_leaf_cannot_publish_past_its_limit() {
    let mut net = Net::new(1, |c| c.max_files_per_leaf = 10);
    let files: Vec<SharedFile> = (0..11u8).map(|i| file(i, "f")).collect();
    net.add_leaf(0, files);
    assert_eq!(last_close(&net), Some(ByeReason::LimitExceeded));
    assert_eq!(net.supers[0].stats().index_files, 0);
}

#[test]
fn a_push_travels_back_along_the_hits_path_to_a_firewalled_leaf() {
    let mut net = Net::line(3);
    let firewalled = net.add_leaf_listening(0, vec![file(5, "behind nat")], None);
    let downloader = net.add_leaf(2, vec![]);
    let id = MessageId([42; 16]);
    net.leaves[downloader]
        .start_search(id, &request(&["nat"], 4), net.now)
        .unwrap();
    net.drive();
    let session = net.leaves[downloader].finish_search(&id).unwrap();
    let found: Vec<_> = session.results().cloned().collect();
    assert_eq!(found.len(), 1);
    let source = found[0].sources[0].clone();
    assert!(
        source.firewalled,
        "a leaf with no listen address is firewalled"
    );

    let callback = addr(55_555);
    net.leaves[downloader]
        .send_push(
            MessageId([43; 16]),
            source.node_id,
            ContentId([5; 32]),
            callback,
            PushWay::Connect,
        )
        .unwrap();
    net.drive();
    assert_eq!(
        net.pushes_for(firewalled),
        vec![(ContentId([5; 32]), callback)]
    );
    let routed: Vec<u64> = net.supers.iter().map(|s| s.stats().pushes_routed).collect();
    assert_eq!(
        routed,
        vec![1, 1, 1],
        "each supernode on the path passed it on once"
    );

    // A push for a node nobody has seen a hit from goes nowhere.
    net.leaves[downloader]
        .send_push(
            MessageId([44; 16]),
            node_id(9999),
            ContentId([5; 32]),
            callback,
            PushWay::Connect,
        )
        .unwrap();
    net.drive();
    assert_eq!(net.supers[2].stats().pushes_unroutable, 1);
    assert_eq!(net.pushes_for(firewalled).len(), 1);
    assert!(net.punches.is_empty(), "a plain push asks for no punch");

    // A push asking for a hole punch travels the same way and says so.
    net.leaves[downloader]
        .send_push(
            MessageId([45; 16]),
            source.node_id,
            ContentId([5; 32]),
            callback,
            PushWay::Punch,
        )
        .unwrap();
    net.drive();
    assert_eq!(net.pushes_for(firewalled).len(), 2);
    assert_eq!(net.punches, vec![firewalled]);
}

#[test]
fn a_leaf_that_cannot_be_reached_is_marked_firewalled() {
    let mut net = Net::line(1);
    let leaf = net.add_leaf(0, vec![file(8, "behind a router")]);
    // It announced 0.0.0.0:30000+i; the supernode probes the address it
    // would hand out: the announced port on the IP it sees the leaf from.
    let (s, conn, addr) = net.probes[0];
    assert_eq!(s, 0);
    assert_eq!(
        addr,
        SocketAddr::from(([127, 0, 0, 1], 30_000 + leaf as u16))
    );
    let searcher = net.add_leaf(0, vec![]);
    let firewalled = |net: &mut Net| {
        let id = MessageId([net.next_conn as u8; 16]);
        net.next_conn += 1;
        net.leaves[searcher]
            .start_search(id, &request(&["router"], 1), net.now)
            .unwrap();
        net.drive();
        let session = net.leaves[searcher].finish_search(&id).unwrap();
        let result = session.results().next().cloned().unwrap();
        result.sources[0].firewalled
    };
    assert!(firewalled(&mut net), "firewalled until probed");
    net.supers[0].handle_probe_result(conn, false);
    assert!(firewalled(&mut net));
    assert_eq!(net.supers[0].stats().leaves_unreachable, 1);
    // A result nobody asked for (the probe has answered) changes nothing.
    net.supers[0].handle_probe_result(conn, true);
    assert!(firewalled(&mut net));
}

#[test]
fn a_leaf_over_its_query_rate_is_throttled() {
    let mut net = Net::new(1, |c| {
        c.leaf_queries_per_second = 2;
        c.leaf_query_burst = 5;
    });
    net.add_leaf(0, vec![file(1, "rate limited")]);
    let searcher = net.add_leaf(0, vec![]);
    let mut answered = 0;
    for i in 0..8u8 {
        let id = MessageId([100 + i; 16]);
        net.leaves[searcher]
            .start_search(id, &request(&["rate"], 1), net.now)
            .unwrap();
        net.drive();
        answered += net.leaves[searcher]
            .finish_search(&id)
            .unwrap()
            .hits_received();
    }
    assert_eq!(answered, 5, "the burst is answered, the rest dropped");
    assert_eq!(net.supers[0].stats().queries_rate_limited, 3);
    // Half a second later, at 2 a second, one more is allowed.
    net.tick(Duration::from_millis(500));
    let id = MessageId([200; 16]);
    net.leaves[searcher]
        .start_search(id, &request(&["rate"], 1), net.now)
        .unwrap();
    net.drive();
    assert_eq!(
        net.leaves[searcher]
            .finish_search(&id)
            .unwrap()
            .hits_received(),
        1
    );
}

#[test]
fn a_leaf_gives_up_on_a_silent_supernode() {
    let mut net = Net::line(1);
    let leaf = net.add_leaf(0, vec![]);
    net.leaves[leaf].handle_timeout(net.now);
    // The supernode keeps pinging; the leaf keeps hearing it.
    for _ in 0..4 {
        net.tick(Duration::from_secs(31));
        net.leaves[leaf].handle_timeout(net.now);
    }
    assert!(net.leaves[leaf].is_ready());
    // The supernode's host vanishes: nothing arrives any more.
    net.links.remove(&End::Leaf(leaf));
    let silent_since = net.now;
    net.leaves[leaf].handle_timeout(silent_since + Duration::from_secs(89));
    assert!(net.leaves[leaf].is_ready());
    net.leaves[leaf].handle_timeout(silent_since + Duration::from_secs(90));
    assert_eq!(
        net.leaves[leaf].poll_action(),
        Some(LeafAction::Close(Some((
            ByeReason::IdleTimeout,
            "nothing heard from the supernode".into()
        ))))
    );
}

/// A supernode with five supernode neighbours, each with a leaf sharing
/// ten "song" files; a searcher on the hub.
fn star(configure: impl Fn(&mut SupernodeConfig)) -> (Net, usize) {
    let mut net = Net::new(6, configure);
    for spoke in 1..6 {
        net.join(spoke, 0);
        let files = (0..10u8)
            .map(|i| file(spoke as u8 * 10 + i, "song"))
            .collect();
        net.add_leaf(spoke, files);
    }
    let searcher = net.add_leaf(0, vec![]);
    (net, searcher)
}

fn dynamic_search(net: &mut Net, searcher: usize) -> usize {
    let id = MessageId([77; 16]);
    net.leaves[searcher]
        .start_search(id, &request(&["song"], 4), net.now)
        .unwrap();
    net.drive();
    for _ in 0..10 {
        net.tick(Duration::from_secs(1));
    }
    net.leaves[searcher]
        .finish_search(&id)
        .unwrap()
        .results()
        .count()
}

/// Dynamic querying to 25 results, probing two peers, a second a hop.
fn dynamic_target_25(c: &mut SupernodeConfig) {
    c.dynamic = Some(canopy_core::dynamic::DynamicConfig {
        keyword_target: 25,
        content_target: 10,
        probe_peers: 2,
        hop_wait: Duration::from_secs(1),
        deadline: Duration::from_secs(60),
        max_horizon: 4_000,
        ..Default::default()
    });
}

#[test]
fn dynamic_querying_probes_widens_and_stops_at_its_target() {
    let (mut net, searcher) = star(dynamic_target_25);
    let found = dynamic_search(&mut net, searcher);
    // Probe: two spokes (20 results); then one more (30 >= 25): stop.
    assert_eq!(found, 30);
    let asked = (1..6)
        .filter(|s| net.supers[*s].stats().queries_received > 0)
        .count();
    assert_eq!(asked, 3, "two spokes were never asked");
    assert_eq!(net.supers[0].stats().queries_forwarded, 3);
}

#[test]
fn a_leaf_that_has_enough_stops_its_dynamic_query() {
    let (mut net, searcher) = star(dynamic_target_25);
    let id = MessageId([78; 16]);
    net.leaves[searcher]
        .start_search(id, &request(&["song"], 4), net.now)
        .unwrap();
    net.drive();
    // The probe's two spokes answered; the user takes these and stops,
    // which the leaf tells its supernode (QueryStatus "enough").
    let found = net.leaves[searcher].finish_search(&id).unwrap();
    assert_eq!(found.results().count(), 20);
    net.drive();
    for _ in 0..10 {
        net.tick(Duration::from_secs(1));
    }
    assert_eq!(
        net.supers[0].stats().queries_forwarded,
        2,
        "no spoke is asked once the leaf has enough"
    );
}

#[test]
fn supernodes_hear_of_peers_that_joined_after_them() {
    let mut net = Net::new(3, |_| {});
    net.join(0, 1);
    net.tick(Duration::from_secs(1));
    // S2 joins S1 later: S0 knew S1's peers only as they were.
    net.join(2, 1);
    let s2 = addr(10_002);
    let s0_knows_s2 = |net: &Net| net.learned.iter().any(|(s, a)| *s == 0 && *a == s2);
    assert!(!s0_knows_s2(&net));
    // Busy links get no keepalive pings; the refresh pings them anyway.
    for _ in 0..(5 * 60 / 20) {
        assert!(!s0_knows_s2(&net), "too early");
        net.tick(Duration::from_secs(20));
        // Traffic on the link (S0's connection 2, to S1) keeps it from
        // ever going quiet.
        net.supers[0].handle_message(
            ConnId(2),
            Message::Pong {
                free_leaf_slots: None,
                nonce: 0,
                supernodes: vec![],
            },
            net.now,
        );
    }
    net.tick(Duration::from_secs(1));
    assert!(s0_knows_s2(&net), "the refresh found S2 through S1");
}

#[test]
fn flooding_asks_everyone() {
    let (mut net, searcher) = star(|_| {});
    assert_eq!(dynamic_search(&mut net, searcher), 50);
    assert_eq!(net.supers[0].stats().queries_forwarded, 5);
}

/// S0 in the middle, S1 and S2 around it, each with a leaf sharing one
/// file, flooding; filters published and taken once.
fn filtered_star(filters: bool) -> (Net, usize) {
    let mut net = Net::new(3, |c| {
        c.dynamic = None;
        c.routing_filters = filters;
    });
    net.join(1, 0);
    net.join(2, 0);
    net.add_leaf(1, vec![file(1, "Blue Moon.mp3")]);
    net.add_leaf(2, vec![file(2, "Red Sun.mp3")]);
    let searcher = net.add_leaf(0, vec![]);
    net.tick(canopy_core::supernode::FILTER_PUBLISH_INTERVAL);
    (net, searcher)
}

#[test]
fn a_last_hop_query_skips_a_peer_whose_filter_does_not_match() {
    let (mut net, searcher) = filtered_star(true);
    assert_eq!(net.search(searcher, request(&["blue"], 2)), (1, 1));
    assert_eq!(net.supers[1].stats().queries_received, 1);
    assert_eq!(
        net.supers[2].stats().queries_received,
        0,
        "S2's filter has no 'blue'"
    );
    assert_eq!(net.supers[0].stats().filters.queries_skipped, 1);
    assert_eq!(net.supers[0].stats().filters.peers_with_filters, 2);
    assert!(net.supers[1].stats().filters.bytes_sent > 0);

    // A file shared later reaches the filter at the next publish, and the
    // query goes there then.
    net.add_leaf(2, vec![file(3, "Blue Note.flac")]);
    net.tick(canopy_core::supernode::FILTER_PUBLISH_INTERVAL);
    assert_eq!(net.search(searcher, request(&["blue"], 2)), (2, 2));
    assert_eq!(net.supers[2].stats().queries_received, 1);

    // A query that goes further than one hop is not filtered: the peer
    // passes it on.
    let before = net.supers[2].stats().queries_received;
    net.search(searcher, request(&["red", "moon"], 3));
    assert_eq!(net.supers[2].stats().queries_received, before + 1);
}

#[test]
fn without_filters_every_peer_gets_the_last_hop() {
    let (mut net, searcher) = filtered_star(false);
    assert_eq!(net.search(searcher, request(&["blue"], 2)), (1, 1));
    assert_eq!(net.supers[2].stats().queries_received, 1);
    assert_eq!(net.supers[0].stats().filters.bytes_received, 0);
}
