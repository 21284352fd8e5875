//! Reflection: a stranger tries to make the overlay open connections to a
//! third address (127.0.3.3, another /24) with pushes naming it as their
//! callback and with leaf handshakes announcing it as their address. A
//! listener there counts what arrives: nothing may. What does get dialed
//! is the stranger's own IP, at a bounded rate. The listeners count TCP
//! connections: a reachability probe is a bare TCP connect, and a
//! connect-back counts once it connects, whatever it says after. (The
//! stranger's own links are Noise sessions, see [`crate::wire`].)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use canopy_proto::{ContentId, Message, MessageId, Push, Role};
use tokio::net::TcpListener;

use crate::common::*;
use crate::wire::{Link, eventually, hostile_hello, ip, outcome};

/// A listener on `addr` that accepts and drops every connection, counting
/// them.
async fn counting_listener(addr: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    (bound, count)
}

/// The most probes `node` has had running at once, kept up to date.
fn most_probes_in_flight(node: &SupernodeHandle) -> Arc<AtomicUsize> {
    let most = Arc::new(AtomicUsize::new(0));
    let watched = most.clone();
    let mut stats = node.watch_stats();
    tokio::spawn(async move {
        while stats.changed().await.is_ok() {
            let running = stats.borrow().probes_in_flight;
            watched.fetch_max(running, Ordering::Relaxed);
        }
    });
    most
}

/// `count` leaves from 127.0.0.2 joining `node`, each announcing `listen`
/// as where it can be reached; their links, kept open.
async fn leaves_announcing(node: &SupernodeHandle, count: usize, listen: SocketAddr) -> Vec<Link> {
    let mut links = Vec::new();
    for _ in 0..count {
        let (link, reply) =
            hostile_hello(ip("127.0.0.2"), node.local_addr(), Role::Leaf, Some(listen)).await;
        assert_eq!(outcome(reply.as_ref()), Ok(()));
        links.push(link);
    }
    links
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_never_make_a_leaf_connect_to_a_third_address() {
    init_logs();
    let (third, at_third) = counting_listener(SocketAddr::new(ip("127.0.3.3"), 0)).await;
    // The stranger listens on its own IP at the same port, to count what
    // the rewritten callbacks bring.
    let (_, at_attacker) = counting_listener(SocketAddr::new(ip("127.0.0.2"), third.port())).await;

    let mut options = SupernodeOptions::new(localhost());
    options.protocol.limit_exempt = Vec::new();
    let node = supernode::start(options).await.unwrap();
    let folder = shared_folder(&["wanted.bin"]);
    let mut source_options = leaf_options(&node, Some(folder.path()));
    source_options.firewalled = true;
    let source = start_leaf(source_options).await;
    node.wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();
    let content_id = ContentId(*blake3::hash(b"wanted.bin").as_bytes());

    let (mut link, reply) =
        hostile_hello(ip("127.0.0.2"), node.local_addr(), Role::Leaf, None).await;
    assert_eq!(outcome(reply.as_ref()), Ok(()));
    let started = tokio::time::Instant::now();
    for n in 0..200u64 {
        let mut message_id = [0x33; 16];
        message_id[..8].copy_from_slice(&n.to_be_bytes());
        let push = Push {
            message_id: MessageId(message_id),
            target_node_id: source.node_id(),
            content_id,
            callback_addr: third,
            hops: 0,
            punch: false,
            relay: None,
        };
        link.send(&Message::Push(push)).await.unwrap();
    }
    let stats = node
        .wait_for(PATIENCE, |s| {
            s.pushes_routed + s.pushes_rate_limited + s.pushes_callback_limited == 200
        })
        .await
        .expect("every push counted");
    let delivered = stats.pushes_routed;
    assert!(
        delivered <= 64 + 8 * (started.elapsed().as_secs() + 1),
        "{stats:?}"
    );
    assert_eq!(
        stats.push_callbacks_rewritten, delivered,
        "every callback was the third address"
    );
    // Every push the leaf got was either carried out (a connection to the
    // stranger's own IP) or refused for the rate.
    assert!(
        eventually(|| {
            at_attacker.load(Ordering::Relaxed) + source.connect_backs_refused() == delivered
        })
        .await,
        "connect-backs {} + refused {} != delivered {delivered}",
        at_attacker.load(Ordering::Relaxed),
        source.connect_backs_refused()
    );
    let connect_backs = at_attacker.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs() + 1;
    assert!(
        connect_backs <= 8 + 2 * elapsed,
        "{connect_backs} connect-backs in {elapsed} s"
    );
    assert!(connect_backs >= 1, "the pushes did reach the leaf");
    tracing::info!(
        delivered,
        rate_limited = stats.pushes_rate_limited,
        connect_backs,
        refused = source.connect_backs_refused(),
        at_third = at_third.load(Ordering::Relaxed),
        "200 pushes naming a third address"
    );
    assert_eq!(
        at_third.load(Ordering::Relaxed),
        0,
        "connections to the third address"
    );
    drop(link);
    source.shutdown().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_never_reach_a_third_address_and_run_a_few_at_once() {
    init_logs();
    let (third, at_third) = counting_listener(SocketAddr::new(ip("127.0.3.3"), 0)).await;
    let (_, at_attacker) = counting_listener(SocketAddr::new(ip("127.0.0.2"), third.port())).await;
    // Loopback stays exempt from the slot limits here, so all 100
    // handshakes are accepted and each would be a probe.
    let node = supernode::start(SupernodeOptions::new(localhost()))
        .await
        .unwrap();
    let most_in_flight = most_probes_in_flight(&node);

    let links = leaves_announcing(&node, 100, third).await;
    assert!(
        eventually(|| at_attacker.load(Ordering::Relaxed) == 100).await,
        "probes of the leaves' own IP: {}",
        at_attacker.load(Ordering::Relaxed)
    );
    node.wait_for(PATIENCE, |s| s.probes_in_flight == 0)
        .await
        .unwrap();
    assert_eq!(
        at_third.load(Ordering::Relaxed),
        0,
        "connections to the third address"
    );
    let most = most_in_flight.load(Ordering::Relaxed);
    assert!(most <= 16, "{most} probes at once");
    tracing::info!(
        probes = at_attacker.load(Ordering::Relaxed),
        most_in_flight = most,
        at_third = at_third.load(Ordering::Relaxed),
        "100 leaves announcing a third address"
    );
    assert_eq!(node.stats().leaves_unreachable, 0);
    drop(links);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_of_silent_addresses_run_at_most_sixteen_at_once() {
    init_logs();
    // A listener that never accepts, its one-connection backlog already
    // taken: the kernel drops every further SYN, so each probe hangs until
    // its timeout (3 s), and how many run at once shows.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip("127.0.0.2"), 0)).unwrap();
    let black_hole = socket.listen(0).unwrap();
    let hole = black_hole.local_addr().unwrap();
    let _queued = tokio::net::TcpStream::connect(hole).await.unwrap();

    let node = supernode::start(SupernodeOptions::new(localhost()))
        .await
        .unwrap();
    let most_in_flight = most_probes_in_flight(&node);
    let links = leaves_announcing(&node, 24, hole).await;
    node.wait_for(PATIENCE, |s| s.leaves_unreachable == 24)
        .await
        .expect("every leaf probed in turn");
    let most = most_in_flight.load(Ordering::Relaxed);
    assert_eq!(most, 16, "probes at once");
    tracing::info!(most_in_flight = most, "24 leaves at a silent address");
    drop((links, black_hole));
    node.shutdown().await;
}
