//! Every path over IPv6, on `[::1]`: an overlay joined, published to and
//! searched, hits carrying IPv6 addresses, downloads direct and by push,
//! the host cache learning IPv6 supernodes; and a dual-stack supernode
//! (`[::]`) seeing an IPv4 leaf as IPv4 (never `::ffff:`), an IPv6 one as
//! IPv6. Fails, never skips, on a machine without IPv6 loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_core::search::Source;
use canopy_node::get::{self, GetOptions};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::ContentId;
use canopy_transfer::listen::any_dual_stack;
use common::*;

const MIB: usize = 1 << 20;

/// Get options through `supernode`, saving into `folder`.
fn get_options(supernode: SocketAddr, id: ContentId, folder: &Path) -> GetOptions {
    let mut options = GetOptions::new(supernode, id);
    options.output = Some(folder.to_owned());
    options.search_timeout = Duration::from_millis(700);
    options.config = DownloadConfig {
        stall_timeout: Duration::from_secs(2),
        ..DownloadConfig::default()
    };
    options
}

/// Searches through `searcher` until `done` holds for the sources of `id`.
async fn wait_for_sources(
    searcher: &LeafHandle,
    id: ContentId,
    mut done: impl FnMut(&[Source]) -> bool,
) -> Vec<Source> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = searcher
            .search(id_request(id, Duration::from_millis(300)))
            .await
            .unwrap();
        let sources = found
            .results
            .first()
            .map(|r| r.sources.clone())
            .unwrap_or_default();
        if done(&sources) {
            return sources;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sources never matched: {sources:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_overlay_joins_publishes_searches_and_downloads() {
    init_logs();
    let v6 = localhost_v6();
    let nodes = line_on(v6, 2).await;
    assert!(nodes[0].local_addr().is_ipv6());
    let data = sample_bytes(3 * MIB + 11, 61);
    let id = content_id(&data);
    let folder = folder_with("over-v6.bin", &data);
    let seed = start_leaf(leaf_options_on(v6, &nodes[0], Some(folder.path()))).await;
    let seen = seed.status().observed_addr.unwrap();
    assert_eq!(
        seen.ip(),
        Ipv6Addr::LOCALHOST,
        "its supernode sees it on ::1"
    );

    let searcher = start_leaf(leaf_options_on(v6, &nodes[1], None)).await;
    let sources = wait_for_sources(&searcher, id, |s| s.iter().any(|s| !s.firewalled)).await;
    let seed_addr = seed.listen_addr().unwrap();
    assert_eq!(sources[0].addr, seed_addr, "the hit carries [::1]:port");
    assert!(sources[0].addr.is_ipv6());

    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(nodes[1].local_addr(), id, out.path()))
        .await
        .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data);
    assert_eq!(report.sources[0].source, seed_addr.to_string());
    assert!(report.sources[0].source.starts_with("[::1]:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firewalled_leaf_on_ipv6_serves_through_push_to_an_ipv6_downloader() {
    init_logs();
    let v6 = localhost_v6();
    let nodes = line_on(v6, 2).await;
    let data = sample_bytes(2 * MIB + 5, 62);
    let id = content_id(&data);
    let folder = folder_with("pushed-v6.bin", &data);
    let mut options = leaf_options_on(v6, &nodes[0], Some(folder.path()));
    options.firewalled = true;
    let _firewalled = start_leaf(options).await;
    let searcher = start_leaf(leaf_options_on(v6, &nodes[1], None)).await;
    let sources = wait_for_sources(&searcher, id, |s| !s.is_empty()).await;
    assert!(sources[0].firewalled);
    assert!(sources[0].addr.is_ipv6(), "{:?}", sources[0]);

    // The downloader joins over IPv6 (the supernodes listen on ::1 only),
    // so the push's callback is an IPv6 address, on the dual-stack
    // callback port.
    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(nodes[1].local_addr(), id, out.path()))
        .await
        .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data);
    assert!(
        report.sources[0].source.ends_with("(push)"),
        "{:?}",
        report.sources
    );
    assert_eq!(report.sources[0].bytes, data.len() as u64);
    assert!(nodes[0].stats().pushes_routed >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dual_stack_supernode_sees_ipv4_leaves_as_ipv4_and_ipv6_ones_as_ipv6() {
    init_logs();
    let _ = localhost_v6();
    let hub = supernode_on(any_dual_stack(0), &[]).await;
    let port = hub.local_addr().port();
    assert!(hub.local_addr().is_ipv6(), "listens on [::]");
    let over_v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let over_v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let data = sample_bytes(MIB + 3, 63);
    let id = content_id(&data);
    let folder = folder_with("both.bin", &data);
    // Both leaves listen dual-stack too; one joins over IPv4, one over IPv6.
    let leaf_via = |supernode: SocketAddr| {
        let mut options = LeafOptions::new(supernode);
        options.listen = Some(any_dual_stack(0));
        options.port_mapping = None;
        options.shares = vec![folder.path().to_owned()];
        options
    };
    let a = start_leaf(leaf_via(over_v4)).await;
    let b = start_leaf(leaf_via(over_v6)).await;
    assert_eq!(
        a.status().observed_addr.unwrap().ip(),
        Ipv4Addr::LOCALHOST,
        "seen as 127.0.0.1, not ::ffff:127.0.0.1"
    );
    assert_eq!(b.status().observed_addr.unwrap().ip(), Ipv6Addr::LOCALHOST);

    // Probed reachable each in its own family, and found so.
    let mut searcher_options = LeafOptions::new(over_v6);
    searcher_options.port_mapping = None;
    let searcher = start_leaf(searcher_options).await;
    let sources = wait_for_sources(&searcher, id, |s| {
        s.len() == 2 && s.iter().all(|s| !s.firewalled)
    })
    .await;
    let mut addrs: Vec<SocketAddr> = sources.iter().map(|s| s.addr).collect();
    addrs.sort();
    let a_port = a.listen_addr().unwrap().port();
    let b_port = b.listen_addr().unwrap().port();
    let mut expected = vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, a_port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, b_port)),
    ];
    expected.sort();
    assert_eq!(addrs, expected);

    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(over_v4, id, out.path()))
        .await
        .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data);
    assert!(
        report.sources.iter().all(|s| !s.source.contains("::ffff:")),
        "{:?}",
        report.sources
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_cache_learns_ipv6_supernodes_and_a_leaf_rejoins_through_it() {
    init_logs();
    let v6 = localhost_v6();
    let nodes: Vec<SupernodeHandle> = line_on(v6, 2).await;
    let data = tempfile::tempdir().unwrap();
    let mut options = leaf_options_on(v6, &nodes[0], None);
    options.data_dir = Some(data.path().to_owned());
    options.reconnect = true;
    let first_run = start_leaf(options.clone()).await;
    let hosts_file = data.path().join(canopy_node::hosts::HOST_CACHE_FILE);
    let wanted = nodes[1].local_addr().to_string();
    assert!(wanted.starts_with("[::1]:"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&hosts_file).unwrap_or_default();
        if text.contains(&wanted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "host cache never learned {wanted}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first_run.shutdown().await;

    // Next start: the configured seed is dead; the cache has one alive.
    let dead = std::net::TcpListener::bind(v6)
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = options;
    options.supernodes = vec![dead];
    let mut nodes = nodes.into_iter();
    nodes.next().unwrap().shutdown().await;
    let alive = nodes.next().unwrap();
    let second_run = start_leaf(options).await;
    assert_eq!(second_run.status().connected_to, Some(alive.local_addr()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_seen_over_both_families_is_downloaded_from_over_ipv6() {
    init_logs();
    let _ = localhost_v6();
    // Two dual-stack supernodes, linked. The seed, listening dual-stack,
    // is given both over IPv4 and the second over IPv6 too: its first
    // session goes over IPv4, its second to the family missing, so hits
    // name it in both.
    let first = supernode_on(any_dual_stack(0), &[]).await;
    let v4_port = first.local_addr().port();
    let second = supernode_on(
        any_dual_stack(0),
        &[SocketAddr::from((Ipv4Addr::LOCALHOST, v4_port))],
    )
    .await;
    second
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    let v6_port = second.local_addr().port();
    let data = sample_bytes(2 * MIB + 9, 64);
    let id = content_id(&data);
    let folder = folder_with("both-ways.bin", &data);
    let mut options = LeafOptions::new(SocketAddr::from((Ipv4Addr::LOCALHOST, v4_port)));
    options.supernodes.extend([
        SocketAddr::from((Ipv4Addr::LOCALHOST, v6_port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, v6_port)),
    ]);
    options.supernodes_wanted = 2;
    options.listen = Some(any_dual_stack(0));
    options.port_mapping = None;
    options.shares = vec![folder.path().to_owned()];
    let seed = start_leaf(options).await;
    let port = seed.listen_addr().unwrap().port();
    let mut status = seed.watch_status();
    let joined = tokio::time::timeout(PATIENCE, status.wait_for(|s| s.supernodes.len() == 2))
        .await
        .expect("the seed never had two supernodes")
        .unwrap()
        .supernodes
        .clone();
    assert!(
        joined.contains(&SocketAddr::from((Ipv4Addr::LOCALHOST, v4_port)))
            && joined.contains(&SocketAddr::from((Ipv6Addr::LOCALHOST, v6_port))),
        "one session per family: {joined:?}"
    );

    let mut searching = LeafOptions::new(SocketAddr::from((Ipv6Addr::LOCALHOST, v6_port)));
    searching.port_mapping = None;
    let searcher = start_leaf(searching).await;
    let sources = wait_for_sources(&searcher, id, |s| {
        s.first()
            .is_some_and(|s| s.fallback.is_some() && !s.firewalled)
    })
    .await;
    assert_eq!(sources.len(), 1, "one source, two addresses: {sources:?}");
    assert_eq!(
        sources[0].addrs(),
        vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ],
        "IPv6 first, IPv4 the fallback"
    );

    // Dialed as a download dials it: IPv6 wins while both answer.
    let stream = canopy_transfer::eyeballs::connect(&sources[0].addrs(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), sources[0].addr);
    drop(stream);

    // A download through the IPv6 side. (Through the IPv4 side it starts
    // on the first hit, IPv4 only, and `fetch` feeds a source once per
    // node id: the IPv6 address a later hit adds is not used yet.)
    let out = tempfile::tempdir().unwrap();
    let report = get::get(get_options(
        SocketAddr::from((Ipv6Addr::LOCALHOST, v6_port)),
        id,
        out.path(),
    ))
    .await
    .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data);
    assert_eq!(
        report.sources[0].source,
        format!("[::1]:{port}"),
        "{:?}",
        report.sources
    );
}
