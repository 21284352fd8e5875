//! Nodes and their home router, faked on 127.0.0.1: a router answering
//! NAT-PMP, SSDP and UPnP with errors and garbage leaves the leaf running,
//! unmapped, announcing its bound address and found at it; a router that
//! grants a mapping makes the leaf and the supernode announce the mapped
//! address, and a firewalled source asked for a download by a mapped
//! leaf connects to its HTTP port there; a supernode whose mapping moves
//! at a renewal tells its peers. (The real router, miniupnpd in network namespaces, is
//! crates/cli/tests/portmap.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use canopy_node::fetch::{self, FetchRequest, FetchTarget};
use canopy_node::supernode::{self, SupernodeOptions};
use canopy_portmap::{PortMapConfig, Status};
use canopy_testkit::overlay::{
    PATIENCE, content_id, folder_with, leaf, leaf_options, localhost, request, sample_bytes,
    shared_folder, start_leaf, supernode,
};
use canopy_transfer::path::TransferPath;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(93, 184, 0, 1);

/// How the fake router answers NAT-PMP.
#[derive(Clone, Copy, PartialEq)]
enum Grant {
    /// Every answer is wrong.
    Garbage,
    /// The port asked for, for an hour.
    Steady,
    /// A new external port at each request, for a short lease, so the
    /// mapping moves at every renewal.
    Moving,
}

/// A fake router: NAT-PMP on one UDP port, SSDP on another pointing at an
/// HTTP server (whose answers are always garbage). Returns the port
/// mapper's settings and the requests seen.
async fn router(grant: Grant) -> (PortMapConfig, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let natpmp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(gateway) = natpmp.local_addr().unwrap() else {
        unreachable!()
    };
    let count = seen.clone();
    tokio::spawn(async move {
        let honest = grant != Grant::Garbage;
        let mut buf = [0u8; 1500];
        let mut maps: u16 = 0;
        while let Ok((len, from)) = natpmp.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::Relaxed);
            let request = &buf[..len];
            let replies: Vec<Vec<u8>> = match (honest, request) {
                (true, [0, 2, _, _, a, b, ..]) if grant == Grant::Moving => {
                    maps += 1;
                    let mut out = vec![0, 130, 0, 0, 0, 0, 0, 1, *a, *b];
                    out.extend_from_slice(&(20_000 + maps).to_be_bytes());
                    out.extend_from_slice(&10u32.to_be_bytes());
                    vec![out]
                }
                (true, [0, 0]) => {
                    let mut out = vec![0, 128, 0, 0, 0, 0, 0, 1];
                    out.extend_from_slice(&EXTERNAL.octets());
                    vec![out]
                }
                (true, [0, 2, _, _, a, b, c, d, ..]) => {
                    let mut out = vec![0, 130, 0, 0, 0, 0, 0, 1, *a, *b, *c, *d];
                    out.extend_from_slice(&3600u32.to_be_bytes());
                    vec![out]
                }
                (true, _) => vec![],
                (false, _) => vec![
                    vec![0x00; 1],
                    vec![0x7f; 900],
                    vec![0, 128, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0],
                    vec![0, 130, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ],
            };
            for reply in replies {
                let _ = natpmp.send_to(&reply, from).await;
            }
        }
    });
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = http.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n<root><device><<<<<")
                    .await;
            });
        }
    });
    let ssdp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ssdp_addr = ssdp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = ssdp.recv_from(&mut buf).await {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                 LOCATION: http://{http_addr}/rootDesc.xml\r\n\r\n"
            );
            let _ = ssdp.send_to(reply.as_bytes(), from).await;
        }
    });
    let mut config = PortMapConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)));
    config.gateway = Some(SocketAddrV4::new(*gateway.ip(), gateway.port()));
    config.ssdp = ssdp_addr;
    (config, seen)
}

#[tokio::test]
async fn a_leaf_whose_router_answers_garbage_runs_unmapped_and_is_found_at_its_address() {
    let at = supernode(&[]).await;
    let folder = shared_folder(&["garbage router.txt"]);
    let (config, seen) = router(Grant::Garbage).await;
    let mut options = leaf_options(&at, Some(folder.path()));
    options.port_mapping = Some(config);
    let sharer = start_leaf(options).await;
    assert!(seen.load(Ordering::Relaxed) > 0, "the router was asked");
    let bound = sharer.listen_addr().unwrap();
    assert_eq!(sharer.announced_addr(), Some(bound));
    assert_eq!(*sharer.port_mapping().unwrap().borrow(), Status::Unmapped);

    let searcher = leaf(&at, None).await;
    let outcome = searcher
        .search(request(&["garbage", "router"], 4, PATIENCE, 1))
        .await
        .unwrap();
    let source = &outcome.results[0].sources[0];
    assert_eq!(source.addr, bound);
    assert!(!source.firewalled, "reachable at its bound address");
    tokio::time::timeout(PATIENCE, sharer.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_mapped_leaf_and_supernode_announce_the_mapped_address() {
    let (config, _) = router(Grant::Steady).await;
    let mut options = SupernodeOptions::new(localhost());
    options.port_mapping = Some(config.clone());
    let at = supernode::start(options).await.unwrap();
    assert_eq!(
        at.announced_addr(),
        SocketAddr::from((EXTERNAL, at.local_addr().port()))
    );

    let mut options = leaf_options(&at, None);
    options.port_mapping = Some(config);
    let mapped = start_leaf(options).await;
    let bound = mapped.listen_addr().unwrap();
    let external = SocketAddr::from((EXTERNAL, bound.port()));
    assert_eq!(mapped.announced_addr(), Some(external));
    let status = mapped.port_mapping().expect("a mapping was attempted");
    assert_eq!(*status.borrow(), Status::Mapped(external));
    // Shutdown removes it (the driver reports Unmapped once it has asked).
    tokio::time::timeout(PATIENCE, mapped.shutdown())
        .await
        .unwrap();
    assert_eq!(*status.borrow(), Status::Unmapped);

    // Off (`--no-port-mapping`): the bound address.
    let mut options = leaf_options(&at, None);
    options.port_mapping = None;
    let unmapped = start_leaf(options).await;
    assert_eq!(unmapped.announced_addr(), unmapped.listen_addr());
    assert!(unmapped.port_mapping().is_none());
}

#[tokio::test]
async fn a_supernode_whose_mapping_moves_tells_its_peers() {
    let (config, _) = router(Grant::Moving).await;
    let mut options = SupernodeOptions::new(localhost());
    options.port_mapping = Some(config);
    let moving = supernode::start(options).await.unwrap();
    let first = moving.announced_addr();
    assert_eq!(first, SocketAddr::from((EXTERNAL, 20_001)));
    let peer = supernode(&[moving.local_addr()]).await;
    peer.wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();

    // The lease is renewed after 5 s, at a new port: the peer hears it.
    let stats = peer
        .wait_for(PATIENCE, |s| s.peer_announces == 1)
        .await
        .unwrap();
    assert_eq!(stats.peer_announces, 1);
    assert_eq!(
        moving.announced_addr(),
        SocketAddr::from((EXTERNAL, 20_002))
    );
    assert_eq!(moving.stats().own_announces, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapped_downloader_is_pushed_to_at_its_http_port() {
    let at = supernode(&[]).await;
    let data = sample_bytes(2 * 1024 * 1024 + 5, 11);
    let id = content_id(&data);
    let folder = folder_with("pushed to the mapped port.bin", &data);
    let mut options = leaf_options(&at, Some(folder.path()));
    options.firewalled = true;
    let _source = start_leaf(options).await;

    let (config, _) = router(Grant::Steady).await;
    let mut options = leaf_options(&at, None);
    options.port_mapping = Some(config);
    let downloader = start_leaf(options).await;
    let bound = downloader.listen_addr().unwrap();
    assert_eq!(
        downloader.announced_addr(),
        Some(SocketAddr::from((EXTERNAL, bound.port())))
    );
    let out = tempfile::tempdir().unwrap();
    let mut request = FetchRequest::new(id, FetchTarget::Dir(out.path().to_owned()));
    request.search_timeout = PATIENCE;
    let report = tokio::time::timeout(PATIENCE, fetch::fetch(&downloader, request))
        .await
        .expect("the fetch ended")
        .unwrap();
    assert!(std::fs::read(&report.path).unwrap() == data, "verified");
    assert_eq!(report.sources[0].paths, vec![TransferPath::Push]);
    // Through the HTTP server's doorway (the supernode put our own IP
    // with the mapped port in the push), not a punch port.
    let doorway = downloader.server().doorway();
    assert!(doorway.pushes_taken() >= 1, "{report:?}");
    assert_eq!(doorway.punches_taken(), 0);
}
