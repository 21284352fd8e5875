//! The port mapper against fake routers on 127.0.0.1: one that answers
//! NAT-PMP properly (mapped, renewed at half the lease, removed on
//! shutdown), and hostile ones answering NAT-PMP, SSDP and the UPnP
//! description with errors, garbage, floods and silence. Whatever they
//! say, the mapper settles unmapped, keeps running, and stops when told.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_portmap::{PolicyConfig, PortMapConfig, Protocol, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PATIENCE: Duration = Duration::from_secs(20);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(93, 184, 0, 1);

/// What a fake NAT-PMP gateway answers to each request.
type Answer = Arc<dyn Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync>;

/// A fake NAT-PMP gateway: records every request, answers with `answer`.
async fn natpmp(answer: Answer) -> (SocketAddrV4, Arc<Mutex<Vec<Vec<u8>>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = socket.local_addr().unwrap() else {
        unreachable!()
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            log.lock().unwrap().push(buf[..len].to_vec());
            for reply in answer(&buf[..len]) {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    });
    (addr, seen)
}

/// A well-behaved gateway granting `lifetime` seconds.
fn honest(lifetime: u32) -> Answer {
    honest_at(EXTERNAL, lifetime)
}

/// A well-behaved gateway whose own external address is `external`.
fn honest_at(external: Ipv4Addr, lifetime: u32) -> Answer {
    Arc::new(move |request| match request {
        [0, 0] => {
            let mut out = vec![0, 128, 0, 0, 0, 0, 0, 1];
            out.extend_from_slice(&external.octets());
            vec![out]
        }
        [0, 2, 0, 0, internal @ .., _, _, _, _, _, _] if internal.len() == 2 => {
            let granted = u32::from_be_bytes(request[8..12].try_into().unwrap());
            let external = if granted == 0 {
                [0, 0]
            } else {
                [request[6], request[7]]
            };
            let mut out = vec![0, 130, 0, 0, 0, 0, 0, 1, request[4], request[5]];
            out.extend_from_slice(&external);
            let lifetime = if granted == 0 { 0 } else { lifetime };
            out.extend_from_slice(&lifetime.to_be_bytes());
            vec![out]
        }
        _ => vec![],
    })
}

/// Every kind of wrong answer NAT-PMP can get, several to each request.
fn garbage() -> Answer {
    Arc::new(|request| {
        let mut error = vec![0, 128 + request.get(1).copied().unwrap_or(0), 0, 3];
        error.extend_from_slice(&[0; 12]);
        vec![
            vec![],
            vec![0xff; 3],
            vec![0x41; 1400],
            // Another opcode's answer.
            vec![0, 129, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            // Granted with an internal port that is not ours.
            vec![0, 130, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 60],
            // A refusal (network failure).
            error,
        ]
    })
}

/// A fake SSDP responder pointing at `location`, and a fake UPnP HTTP
/// server answering every request with `body` (after `status`).
async fn upnp(status: &'static str, body: Vec<u8>) -> (SocketAddr, Arc<Mutex<usize>>) {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(0usize));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = http.accept().await {
            *count.lock().unwrap() += 1;
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!("HTTP/1.1 {status}\r\nContent-Type: text/xml\r\n\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    let ssdp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ssdp_addr = ssdp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = ssdp.recv_from(&mut buf).await {
            // First garbage, then a real-looking answer.
            let _ = ssdp.send_to(&[0xfe; 700], from).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                 USN: uuid:fake::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                 LOCATION: http://{http_addr}/rootDesc.xml\r\nSERVER: fake\r\n\r\n"
            );
            let _ = ssdp.send_to(reply.as_bytes(), from).await;
        }
    });
    (ssdp_addr, requests)
}

/// Logs to the test's output (`RUST_LOG=debug` for every answer).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(listen: SocketAddr, gateway: SocketAddrV4, ssdp: SocketAddr) -> PortMapConfig {
    let mut config = PortMapConfig::new(listen);
    config.gateway = Some(gateway);
    config.ssdp = ssdp;
    config.policy = PolicyConfig {
        lease: Duration::from_secs(12),
        order: vec![Protocol::NatPmp, Protocol::Upnp],
        first_retry: Duration::from_millis(200),
        max_retry: Duration::from_secs(1),
        max_failures: 3,
    };
    config
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_honest_gateway_maps_renews_at_half_the_lease_and_unmaps_on_shutdown() {
    logs();
    let (gateway, seen) = natpmp(honest(12)).await;
    let (ssdp, _) = upnp("500 Internal Server Error", Vec::new()).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], 47_001));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mapping = canopy_portmap::spawn(config(listen, gateway, ssdp), shutdown.clone(), &tracker);
    assert_eq!(
        mapping.settled(PATIENCE).await,
        Some(SocketAddr::from((EXTERNAL, 47_001)))
    );
    let maps = |seen: &Mutex<Vec<Vec<u8>>>, lifetime: u32| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|r| r.len() == 12 && r[1] == 2 && r[8..12] == lifetime.to_be_bytes())
            .count()
    };
    assert_eq!(maps(&seen, 12), 1);
    // Renewed at half the 12 s lease.
    let started = tokio::time::Instant::now();
    wait_for("the renewal", || maps(&seen, 12) >= 2).await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "renewed too early"
    );
    assert_eq!(
        mapping.status(),
        Status::Mapped(SocketAddr::from((EXTERNAL, 47_001)))
    );
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(PATIENCE, tracker.wait())
        .await
        .unwrap();
    assert_eq!(maps(&seen, 0), 1, "a deletion on shutdown");
    assert_eq!(mapping.status(), Status::Unmapped);
}

#[tokio::test]
async fn a_router_behind_another_nat_is_not_asked_to_map() {
    logs();
    // Its "external" address is private (double NAT) or carrier-grade
    // NAT's: a mapping there would make no one able to reach us.
    for (i, external) in [Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(100, 64, 0, 9)]
        .into_iter()
        .enumerate()
    {
        let (gateway, seen) = natpmp(honest_at(external, 3600)).await;
        let (ssdp, _) = upnp("500 Internal Server Error", Vec::new()).await;
        let listen = SocketAddr::from(([127, 0, 0, 1], 47_200 + u16::try_from(i).unwrap()));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mapping =
            canopy_portmap::spawn(config(listen, gateway, ssdp), shutdown.clone(), &tracker);
        assert_eq!(mapping.settled(PATIENCE).await, None, "{external}");
        assert_eq!(mapping.status(), Status::Unmapped);
        let asked_to_map = seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.len() == 12 && r[1] == 2);
        assert!(!asked_to_map, "{external}: no mapping asked for");
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(PATIENCE, tracker.wait())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn garbage_from_every_side_leaves_the_mapper_unmapped_and_running() {
    logs();
    let bodies: [(&'static str, Vec<u8>); 4] = [
        (
            "200 OK",
            b"<?xml version=\"1.0\"?><root><device><deviceType>nonsense".to_vec(),
        ),
        (
            "500 Internal Server Error",
            b"<s:Fault>no</s:Fault>".to_vec(),
        ),
        ("200 OK", vec![0xff; 3 * 1024 * 1024]),
        ("404 Not Found", Vec::new()),
    ];
    for (i, (status, body)) in bodies.into_iter().enumerate() {
        let (gateway, seen) = natpmp(garbage()).await;
        let (ssdp, http_requests) = upnp(status, body).await;
        let listen = SocketAddr::from(([127, 0, 0, 1], 47_100 + u16::try_from(i).unwrap()));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mapping =
            canopy_portmap::spawn(config(listen, gateway, ssdp), shutdown.clone(), &tracker);
        assert_eq!(mapping.settled(PATIENCE).await, None, "case {i}");
        assert_eq!(mapping.status(), Status::Unmapped, "case {i}");
        assert!(
            !seen.lock().unwrap().is_empty(),
            "case {i}: NAT-PMP was asked"
        );
        assert!(
            *http_requests.lock().unwrap() > 0,
            "case {i}: UPnP was asked"
        );
        // It keeps trying (with backoff) rather than dying: more rounds come.
        let first = seen.lock().unwrap().len();
        wait_for("another round", || seen.lock().unwrap().len() > first).await;
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(PATIENCE, tracker.wait())
            .await
            .unwrap();
        assert_eq!(mapping.status(), Status::Unmapped);
    }
}

#[tokio::test]
async fn a_silent_router_is_given_up_on_and_shutdown_is_prompt() {
    // Nobody answers: a bound socket that never replies, and no SSDP.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(gateway) = silent.local_addr().unwrap() else {
        unreachable!()
    };
    let ssdp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], 47_200));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mapping = canopy_portmap::spawn(
        config(listen, gateway, ssdp.local_addr().unwrap()),
        shutdown.clone(),
        &tracker,
    );
    assert_eq!(mapping.settled(PATIENCE).await, None);
    // Removal is bounded (2 s) even when nobody answers it.
    let started = tokio::time::Instant::now();
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(PATIENCE, tracker.wait())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?}",
        started.elapsed()
    );
}
