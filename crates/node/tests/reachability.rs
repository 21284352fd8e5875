//! A leaf learns its reachability from its supernodes, on real sockets on
//! 127.0.0.1: it dials from its listening port, is told the connect-back
//! verdict (reachable when its port answers, not when the announced port
//! is closed or it is firewalled), and a port mapping granted after
//! start-up is announced again: a search then finds the leaf at the new
//! address, and the supernode's probe of it is reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use canopy_core::reachability::{NatKind, Reachable};
use canopy_node::leaf::{LeafHandle, LeafStatus};
use canopy_portmap::{PolicyConfig, PortMapConfig, Protocol, Status};
use canopy_testkit::overlay::{
    PATIENCE, leaf, leaf_options, request, shared_folder, start_leaf, supernode,
};
use tokio::net::{TcpListener, UdpSocket};

/// Waits until the leaf's status passes `check`.
async fn status_where(leaf: &LeafHandle, check: impl Fn(&LeafStatus) -> bool) -> LeafStatus {
    let mut status = leaf.watch_status();
    let waited = tokio::time::timeout(PATIENCE, status.wait_for(|s| check(s)))
        .await
        .is_ok();
    let now = leaf.status();
    assert!(waited, "status never got there: {now:?}");
    now
}

#[tokio::test]
async fn a_leaf_whose_port_answers_learns_it_is_reachable() {
    let at = supernode(&[]).await;
    let reachable = leaf(&at, None).await;
    let status = status_where(&reachable, |s| {
        s.reachability.reachable != Reachable::Unknown
    })
    .await;
    assert_eq!(status.reachability.reachable, Reachable::Yes);
    let listen = reachable.listen_addr().unwrap();
    assert_eq!(
        status.observed_addr.map(|a| a.port()),
        Some(listen.port()),
        "the session was dialed from the listening port"
    );
    assert_eq!(status.reachability.nat, NatKind::None, "seen at our own IP");
    let public = &status.reachability.public;
    assert_eq!(public.len(), 1);
    assert_eq!(public[0].ip, listen.ip());
    assert!(!public[0].confirmed, "one supernode's word");
}

#[tokio::test]
async fn a_leaf_announcing_a_closed_port_or_firewalled_learns_it_is_not() {
    let at = supernode(&[]).await;
    // A port forward that goes nowhere: a port bound, then closed.
    let closed = {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    };
    let mut options = leaf_options(&at, None);
    options.advertise = Some(closed);
    let misforwarded = start_leaf(options).await;
    let status = status_where(&misforwarded, |s| {
        s.reachability.reachable != Reachable::Unknown
    })
    .await;
    assert_eq!(status.reachability.reachable, Reachable::No);

    let mut options = leaf_options(&at, None);
    options.firewalled = true;
    let firewalled = start_leaf(options).await;
    assert_eq!(firewalled.status().reachability.reachable, Reachable::No);
    assert_eq!(firewalled.announced_addr(), None);
}

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(93, 184, 0, 1);

/// A NAT-PMP router that refuses the first mapping request and grants
/// the next ones, as external port `external_port`. Returns the port
/// mapper's settings (NAT-PMP only, retried after a second) and the
/// mapping requests seen.
async fn late_router(external_port: u16) -> (PortMapConfig, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let natpmp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(gateway) = natpmp.local_addr().unwrap() else {
        unreachable!()
    };
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = natpmp.recv_from(&mut buf).await {
            let reply = match &buf[..len] {
                [0, 0] => {
                    let mut out = vec![0, 128, 0, 0, 0, 0, 0, 1];
                    out.extend_from_slice(&EXTERNAL.octets());
                    out
                }
                [0, 2, _, _, a, b, ..] => {
                    let refuse = seen.fetch_add(1, Ordering::Relaxed) == 0;
                    let code = if refuse { 2 } else { 0 };
                    let mut out = vec![0, 130, 0, code, 0, 0, 0, 1, *a, *b];
                    out.extend_from_slice(&external_port.to_be_bytes());
                    out.extend_from_slice(&3600u32.to_be_bytes());
                    out
                }
                _ => continue,
            };
            let _ = natpmp.send_to(&reply, from).await;
        }
    });
    let mut config = PortMapConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)));
    config.gateway = Some(SocketAddrV4::new(*gateway.ip(), gateway.port()));
    config.policy = PolicyConfig {
        order: vec![Protocol::NatPmp],
        first_retry: Duration::from_secs(1),
        ..PolicyConfig::default()
    };
    (config, requests)
}

#[tokio::test]
async fn a_mapping_granted_after_start_is_announced_and_found() {
    let at = supernode(&[]).await;
    // What the router forwards the external port to, here: a listener
    // the supernode's probe of the new address reaches.
    let forward = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let external_port = forward.local_addr().unwrap().port();
    tokio::spawn(async move { while forward.accept().await.is_ok() {} });
    let (config, requests) = late_router(external_port).await;

    let folder = shared_folder(&["late mapping.txt"]);
    let mut options = leaf_options(&at, Some(folder.path()));
    options.port_mapping = Some(config);
    let sharer = start_leaf(options).await;
    let bound = sharer.listen_addr().unwrap();
    assert_eq!(
        *sharer.port_mapping().unwrap().borrow(),
        Status::Unmapped,
        "the first round was refused"
    );
    assert_eq!(sharer.announced_addr(), Some(bound));

    // The retry maps it; the leaf announces the mapped address.
    let mapped = SocketAddr::from((EXTERNAL, external_port));
    let mut mapping = sharer.port_mapping().unwrap();
    tokio::time::timeout(PATIENCE, mapping.wait_for(|s| *s == Status::Mapped(mapped)))
        .await
        .unwrap()
        .unwrap();
    assert!(requests.load(Ordering::Relaxed) >= 2);
    let status = status_where(&sharer, |s| {
        s.reachability.announced == Some(mapped) && s.reachability.reachable == Reachable::Yes
    })
    .await;
    assert_eq!(sharer.announced_addr(), Some(mapped));
    assert_eq!(status.reachability.announced, Some(mapped));

    // Hits carry the announced port on the IP the supernode sees.
    let searcher = leaf(&at, None).await;
    let outcome = searcher
        .search(request(&["late", "mapping"], 4, PATIENCE, 1))
        .await
        .unwrap();
    let source = &outcome.results[0].sources[0];
    assert_eq!(
        source.addr,
        SocketAddr::from(([127, 0, 0, 1], external_port))
    );
    assert!(!source.firewalled, "probed at the new address");
    assert_eq!(at.stats().announces, 1);
}
