//! The relay on 127.0.0.1: the service refuses beyond each of its limits
//! with the reason on the wire (slots, per-IP, unknown and expired tokens,
//! a bad line, a supernode that does not relay), cuts a circuit at its
//! bytes and at its deadline, holds its rate, and counts it all in the
//! metrics; and whole downloads from a firewalled leaf whose only way is
//! the relay (the direct way stands in for a push that can't get through)
//! complete verified, one of them bigger than a circuit's byte limit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_core::download::DownloadConfig;
use canopy_core::relay::{Half, RelayConfig, RelayStats, request_line};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::relay::RelayService;
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use canopy_proto::CircuitToken;
use canopy_transfer::client::{ConnectFuture, Connector};
use canopy_transfer::download::{self, DownloadOptions, DownloadSource};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MIB: usize = 1 << 20;

fn config() -> RelayConfig {
    RelayConfig {
        slots: 4,
        max_bytes: 64 * MIB as u64,
        max_duration: Duration::from_secs(60),
        rate: 64 * MIB as u32,
        per_ip: 16,
        ..RelayConfig::default()
    }
}

fn token(n: u8) -> CircuitToken {
    CircuitToken([n; 16])
}

/// A relay service behind its own accept loop on 127.0.0.1.
struct Service {
    service: RelayService,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Service {
    async fn start(config: RelayConfig) -> Self {
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let service = RelayService::new(config, tracker, shutdown.clone());
        let listener = TcpListener::bind(localhost()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = service.clone();
        tokio::spawn(async move {
            while let Ok((stream, remote)) = listener.accept().await {
                accepting.accept(stream, remote, ());
            }
        });
        Self {
            service,
            addr,
            shutdown,
        }
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&RelayStats) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stats = self.service.stats();
            if done(&stats) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {stats:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Dials `addr`, says `line`, returns the stream and the answer line.
async fn ask(addr: SocketAddr, line: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(line.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    loop {
        let byte = tokio::time::timeout(PATIENCE, stream.read_u8())
            .await
            .expect("an answer")
            .expect("an answer line");
        if byte == b'\n' {
            break;
        }
        answer.push(byte);
    }
    (stream, String::from_utf8(answer).unwrap())
}

async fn half(addr: SocketAddr, half: Half, token: CircuitToken) -> (TcpStream, String) {
    ask(addr, &request_line(half, token)).await
}

/// Reads until the relay closes; returns what came.
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .expect("the relay closes the circuit");
    got
}

#[tokio::test]
async fn a_relay_refuses_beyond_its_slots_with_the_reason() {
    let s = Service::start(RelayConfig {
        slots: 1,
        ..config()
    })
    .await;
    s.service.register(token(1));
    s.service.register(token(2));
    let (_first, answer) = half(s.addr, Half::Serve, token(1)).await;
    assert_eq!(answer, format!("OK {} 60", 64 * MIB));
    let (_, answer) = half(s.addr, Half::Serve, token(2)).await;
    assert_eq!(answer, "REFUSED no-slots");
    let stats = s.service.stats();
    assert_eq!(stats.circuits_open, 1);
    assert_eq!(stats.refused(canopy_core::relay::Refusal::NoSlots), 1);
}

#[tokio::test]
async fn a_relay_refuses_unknown_tokens_and_bad_lines() {
    let s = Service::start(config()).await;
    let (_, answer) = half(s.addr, Half::Connect, token(9)).await;
    assert_eq!(answer, "REFUSED unknown-token");
    let (_, answer) = ask(s.addr, "CANOPY-RELAY listen 00\n").await;
    assert_eq!(answer, "REFUSED bad-request");
    let long = format!("CANOPY-RELAY {}\n", "x".repeat(200));
    let (_, answer) = ask(s.addr, &long).await;
    assert_eq!(answer, "REFUSED bad-request", "a line too long");
    let stats = s.service.stats();
    assert_eq!(stats.refused(canopy_core::relay::Refusal::UnknownToken), 1);
    assert_eq!(stats.refused(canopy_core::relay::Refusal::BadRequest), 2);
}

#[tokio::test]
async fn a_relay_refuses_an_ip_beyond_its_share() {
    let s = Service::start(RelayConfig {
        per_ip: 2,
        ..config()
    })
    .await;
    for n in 1..=3 {
        s.service.register(token(n));
    }
    let (_a, answer) = half(s.addr, Half::Serve, token(1)).await;
    assert!(answer.starts_with("OK "), "{answer}");
    let (_b, answer) = half(s.addr, Half::Serve, token(2)).await;
    assert!(answer.starts_with("OK "), "{answer}");
    let (_, answer) = half(s.addr, Half::Serve, token(3)).await;
    assert_eq!(answer, "REFUSED per-ip-limit");
    // The same half twice is refused too.
    let (_, answer) = half(s.addr, Half::Serve, token(1)).await;
    assert_eq!(answer, "REFUSED half-taken");
}

#[tokio::test]
async fn a_waiting_half_gives_up_at_the_tokens_deadline() {
    let s = Service::start(RelayConfig {
        token_lifetime: Duration::from_millis(300),
        ..config()
    })
    .await;
    s.service.register(token(1));
    let (mut waiting, answer) = half(s.addr, Half::Serve, token(1)).await;
    assert!(answer.starts_with("OK "), "{answer}");
    assert!(
        read_to_end(&mut waiting).await.is_empty(),
        "closed unpaired"
    );
    s.wait_for("the slot freed", |s| s.circuits_open == 0).await;
    let (_, answer) = half(s.addr, Half::Connect, token(1)).await;
    assert_eq!(answer, "REFUSED expired-token");
}

#[tokio::test]
async fn a_waiting_half_that_hangs_up_frees_its_slot_at_once() {
    let s = Service::start(RelayConfig {
        slots: 1,
        token_lifetime: Duration::from_secs(600),
        ..config()
    })
    .await;
    s.service.register(token(1));
    s.service.register(token(2));
    let (waiting, answer) = half(s.addr, Half::Connect, token(1)).await;
    assert!(answer.starts_with("OK "), "{answer}");
    drop(waiting);
    s.wait_for("the slot freed", |s| s.circuits_open == 0).await;
    let (_other, answer) = half(s.addr, Half::Connect, token(2)).await;
    assert!(answer.starts_with("OK "), "{answer}");
}

/// Pairs circuit `n`: the source half first, then the downloader's.
async fn pair(s: &Service, n: u8) -> (TcpStream, TcpStream) {
    s.service.register(token(n));
    let (source, answer) = half(s.addr, Half::Serve, token(n)).await;
    assert!(answer.starts_with("OK "), "{answer}");
    let (downloader, answer) = half(s.addr, Half::Connect, token(n)).await;
    assert!(answer.starts_with("OK "), "{answer}");
    (source, downloader)
}

#[tokio::test(flavor = "multi_thread")]
async fn ends_arriving_at_the_same_moment_always_meet() {
    let s = Service::start(RelayConfig {
        slots: 64,
        per_ip: 256,
        ..config()
    })
    .await;
    let mut circuits = Vec::new();
    // 48 connections: fewer than the lines read at once (64).
    for n in 1..=24u8 {
        s.service.register(token(n));
        let addr = s.addr;
        circuits.push(tokio::spawn(async move {
            let ((mut source, a), (mut downloader, b)) = tokio::join!(
                half(addr, Half::Serve, token(n)),
                half(addr, Half::Connect, token(n))
            );
            assert!(a.starts_with("OK ") && b.starts_with("OK "), "{a} / {b}");
            source.write_all(&[n; 8]).await.unwrap();
            let mut got = [0u8; 8];
            tokio::time::timeout(PATIENCE, downloader.read_exact(&mut got))
                .await
                .expect("the ends meet")
                .expect("the circuit carries");
            assert_eq!(got, [n; 8]);
        }));
    }
    for circuit in circuits {
        circuit.await.unwrap();
    }
    assert_eq!(s.service.stats().circuits_total, 24);
}

#[tokio::test]
async fn a_circuit_carries_both_ways_and_is_cut_at_its_bytes() {
    let budget = canopy_core::relay::MIN_MAX_BYTES as usize;
    let s = Service::start(RelayConfig {
        max_bytes: budget as u64,
        ..config()
    })
    .await;
    let (mut source, mut downloader) = pair(&s, 1).await;
    downloader.write_all(b"GET /\n").await.unwrap();
    let mut asked = [0u8; 6];
    source.read_exact(&mut asked).await.unwrap();
    assert_eq!(&asked, b"GET /\n");
    let data = sample_bytes(3 * budget, 1);
    // The relay stops reading once the budget is spent: the write may fail.
    let writer = tokio::spawn(async move {
        let _ = source.write_all(&data).await;
        source
    });
    let got = read_to_end(&mut downloader).await;
    assert_eq!(got.len(), budget - 6, "exactly the budget, both ways");
    assert!(got[..] == sample_bytes(3 * budget, 1)[..got.len()]);
    drop(writer.await.unwrap());
    s.wait_for("the cut counted", |s| {
        s.cut_bytes == 1 && s.circuits_open == 0
    })
    .await;
    let stats = s.service.stats();
    assert_eq!(stats.bytes_relayed, budget as u64);
    assert_eq!(stats.circuits_total, 1);
}

#[tokio::test]
async fn a_circuit_is_cut_at_its_deadline() {
    let s = Service::start(RelayConfig {
        max_duration: Duration::from_secs(1),
        ..config()
    })
    .await;
    let (_source, mut downloader) = pair(&s, 1).await;
    let started = Instant::now();
    assert!(read_to_end(&mut downloader).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    s.wait_for("the cut counted", |s| s.cut_duration == 1).await;
}

#[tokio::test]
async fn a_circuit_holds_its_rate() {
    let s = Service::start(RelayConfig {
        rate: 100_000,
        ..config()
    })
    .await;
    let (mut source, mut downloader) = pair(&s, 1).await;
    let started = Instant::now();
    let data = sample_bytes(300_000, 2);
    tokio::spawn(async move {
        source.write_all(&data).await.unwrap();
        source
    });
    let mut got = vec![0u8; 300_000];
    tokio::time::timeout(PATIENCE, downloader.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    // A second's worth at once, then 100,000 a second: 2 s at least.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_800), "took {took:?}");
    assert!(got == sample_bytes(300_000, 2));
}

/// A supernode on 127.0.0.1 relaying under `relay`.
async fn relaying_supernode(relay: RelayConfig) -> SupernodeHandle {
    let mut options = SupernodeOptions::new(localhost());
    options.peers_wanted = 0;
    options.protocol.relay = relay;
    supernode::start(options).await.unwrap()
}

#[tokio::test]
async fn the_overlay_port_answers_relay_lines_and_counts_them_in_the_metrics() {
    let relaying = relaying_supernode(config()).await;
    let (_, answer) = half(relaying.local_addr(), Half::Connect, token(7)).await;
    assert_eq!(answer, "REFUSED unknown-token");
    let metrics = canopy_node::metrics::supernode_metrics(&relaying)
        .render()
        .unwrap();
    assert!(
        metrics.contains("canopy_relay_refused_unknown_token_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("canopy_relay_circuits_open 0"),
        "{metrics}"
    );
    // Leaves and peers still get in on the same port.
    let leaf = leaf(&relaying, None).await;
    assert!(leaf.status().relays == vec![relaying.local_addr()]);

    let plain = supernode(&[]).await;
    let (_, answer) = half(plain.local_addr(), Half::Connect, token(7)).await;
    assert_eq!(answer, "REFUSED relay-disabled");
    let other = leaf_options(&plain, None);
    let other = start_leaf(other).await;
    assert!(other.status().relays.is_empty(), "it does not relay");
}

/// A push that can't get through (both ends behind NAT, say).
#[derive(Debug)]
struct Unreachable;

impl Connector for Unreachable {
    fn connect(&self) -> ConnectFuture {
        Box::pin(async { Err(std::io::Error::other("the push did not get through")) })
    }
}

/// A firewalled leaf sharing `data` and a downloader, both at `at`; the
/// downloader once it knows `at` relays.
async fn firewalled_pair(at: &SupernodeHandle, data: &[u8]) -> (LeafHandle, LeafHandle) {
    let folder = folder_with("far.bin", data);
    let mut options: LeafOptions = leaf_options(at, Some(folder.path()));
    options.firewalled = true;
    let source = start_leaf(options).await;
    std::mem::forget(folder);
    let downloader = leaf(at, None).await;
    let mut status = downloader.watch_status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| !s.relays.is_empty()))
        .await
        .unwrap()
        .unwrap();
    (source, downloader)
}

async fn relayed_download(at: &SupernodeHandle, data: &[u8]) -> download::DownloadReport {
    let (source, downloader) = firewalled_pair(at, data).await;
    // The source's files reach the supernode's index before a push for
    // them is served.
    at.wait_for(PATIENCE, |s| s.index_files >= 1).await.unwrap();
    let id = content_id(data);
    let connector =
        canopy_node::relay::fallback(&downloader, Arc::new(Unreachable), source.node_id(), id);
    let out = tempfile::tempdir().unwrap();
    let options = DownloadOptions {
        content_id: id,
        size: data.len() as u64,
        target: out.path().join("far.bin"),
        force: false,
        config: DownloadConfig::default(),
        progress: None,
    };
    let source_entry = DownloadSource {
        label: "far (relay)".into(),
        connector,
        partial: false,
        addr: None,
    };
    let report = download::download(vec![source_entry], options)
        .await
        .expect("the download completes through the relay");
    assert!(
        std::fs::read(&report.path).unwrap() == data,
        "verified, whole"
    );
    std::mem::forget(out);
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_whose_only_way_is_the_relay_completes() {
    init_logs();
    let at = relaying_supernode(config()).await;
    let data = sample_bytes(3 * MIB + 11, 5);
    let report = relayed_download(&at, &data).await;
    assert_eq!(report.sources[0].bytes, data.len() as u64);
    assert!(report.sources[0].dropped.is_none());
    let stats = at.relay_stats();
    assert!(stats.circuits_total >= 1, "{stats:?}");
    assert!(stats.bytes_relayed >= data.len() as u64, "{stats:?}");
    assert!(at.stats().push_relays_granted >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_download_bigger_than_a_circuits_bytes_goes_on_over_new_circuits() {
    init_logs();
    let at = relaying_supernode(RelayConfig {
        max_bytes: canopy_core::relay::MIN_MAX_BYTES,
        ..config()
    })
    .await;
    let data = sample_bytes(7 * MIB + 3, 6);
    let report = relayed_download(&at, &data).await;
    assert!(report.sources[0].dropped.is_none(), "{:?}", report.sources);
    let stats = at.relay_stats();
    assert!(stats.cut_bytes >= 1, "{stats:?}");
    assert!(stats.circuits_total >= 4, "{stats:?}");
}
