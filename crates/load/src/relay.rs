//! `canopy-load relay`: how many queries a second a supernode (or the raw
//! relay) takes in from one supernode connection and forwards to all the
//! others, and how long forwarding takes.
//!
//! One *source* connection sends queries as fast as the relay reads them:
//! frames pre-encoded from templates, only the message id patched in, in
//! batched writes. `--peers` *sink* connections read in 256 KiB chunks and
//! count frames by their length prefixes alone; the first sink also decodes
//! every frame for its message id, and for every `--sample-every`th id the
//! time from the source's write to its arrival is one latency sample.
//! Before the source starts, `--leaves` leaves publish `--files` files each,
//! so every query is looked up in a real index (none with `--raw`).
//!
//! Connections to a supernode are Noise-encrypted as every overlay link
//! is: the source seals each batch of frames, the sinks decrypt before
//! counting. The raw relay is the no-protocol reference: plain bytes.
//!
//! Two phases over the same connections: as fast as possible for
//! `--duration` seconds (throughput, and latency with every queue full),
//! then paced at `--paced-share` of the throughput just measured (latency
//! under a load the relay can carry).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use canopy_proto::secure::{ReceiveCipher, SendCipher, StaticKeypair};
use canopy_proto::{Message, MessageId, Role};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::fleet::{self, FleetOptions};
use crate::frames::{self, FrameCounter};
use crate::search;
use crate::stats::{self, Percentiles, round3};
use crate::workload::{Rng, Workload};

/// Arguments of `relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The supernode, or the raw relay with `--raw`.
    #[arg(long)]
    target: SocketAddr,
    /// Sink connections the queries are forwarded to.
    #[arg(long, default_value_t = 32)]
    peers: usize,
    /// Leaves publishing files before the run (ignored with `--raw`).
    #[arg(long, default_value_t = 1000)]
    leaves: usize,
    /// Files per leaf.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Share of queries that match a file (the rest are lookups that find
    /// nothing), 0-1.
    #[arg(long, default_value_t = 0.01)]
    hit_share: f64,
    /// Seconds of the full-speed phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at full speed before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The paced phase's rate, as a share of the measured throughput; 0
    /// skips it.
    #[arg(long, default_value_t = 0.5)]
    paced_share: f64,
    /// The target is a raw relay: no handshakes, no leaves.
    #[arg(long)]
    raw: bool,
    /// Queries per write.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// One latency sample every this many queries.
    #[arg(long, default_value_t = 64)]
    sample_every: u64,
    /// Source addresses for the leaves, comma-separated, round robin.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// The relay's pid, for its CPU use.
    #[arg(long)]
    pid: Option<u32>,
    /// The supernode's metrics address: wait until it has indexed every file.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A query frame with its message id's counter bytes at `counter_at`.
#[derive(Debug)]
struct Template {
    frame: Bytes,
    counter_at: usize,
}

/// What the source and the sinks share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// The source sends nothing while set.
    paused: AtomicBool,
    /// Queries a second for the source; 0 means as fast as possible.
    rate: AtomicU64,
    /// Queries written by the source.
    sent: AtomicU64,
    /// Frames received by all sinks together.
    received: AtomicU64,
    /// Frames the source received (hits, pongs).
    source_received: AtomicU64,
    /// Send time of sampled counters.
    sampled: Mutex<HashMap<u64, Instant>>,
    /// (arrival, latency) of sampled queries at the first sink.
    latencies: Mutex<Vec<(Instant, Duration)>>,
}

/// One phase's figures.
#[derive(Debug, Clone, Copy)]
struct Phase {
    seconds: f64,
    sent_qps: f64,
    forwarded_qps: f64,
    latency: Percentiles,
    generator_cpu: f64,
    relay_cpu: Option<f64>,
}

impl Phase {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seconds": round3(self.seconds),
            "sent_qps": self.sent_qps.round(),
            "forwarded_qps": self.forwarded_qps.round(),
            "latency": self.latency.json(),
            "generator_cpu": round3(self.generator_cpu),
            "relay_cpu": self.relay_cpu.map(round3),
        })
    }
}

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.peers > 0, "--peers must be at least 1");
    let workload = Arc::new(Workload::new(args.seed, args.files, 0.2));
    let mut rng = Rng::new(args.seed ^ 0x5151);
    let prefix = rng.next_u64().to_be_bytes();

    let mut fleet = None;
    if !args.raw && args.leaves > 0 {
        let files_before = match args.metrics {
            Some(m) => stats::metric(m, "canopy_index_files").await?,
            None => 0.0,
        };
        fleet = Some(
            fleet::connect(
                workload.clone(),
                FleetOptions {
                    targets: vec![args.target],
                    count: args.leaves,
                    sources: args.sources.clone(),
                    first_leaf: 0,
                    concurrency: 64,
                },
            )
            .await?,
        );
        if let Some(m) = args.metrics {
            let want = files_before + (args.leaves * args.files) as f64;
            stats::wait_for_index(m, want, Duration::from_secs(300)).await?;
        }
    }

    let templates = templates(&workload, &args, &mut rng, prefix)?;
    let shared = Arc::new(Shared::default());

    // Sinks first, so the source's first query reaches all of them.
    let mut sinks = Vec::new();
    for i in 0..args.peers {
        let link = open(&args).await?;
        let shared = shared.clone();
        let decode = i == 0;
        sinks.push(tokio::spawn(sink(link, shared, decode, prefix)));
    }
    let source = open(&args).await?;
    let (source_read, source_write) = source.stream.into_split();
    let (sealer, opener) = source.ciphers.unzip();
    tokio::spawn(drain(
        source_read,
        opener,
        source.input,
        source.plain,
        shared.clone(),
    ));
    let source_task = tokio::spawn(send(
        source_write,
        sealer,
        templates,
        shared.clone(),
        args.batch.max(1),
        args.sample_every.max(1),
    ));

    // Phase 1: as fast as possible.
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let full = measure(&shared, &args, Duration::from_secs_f64(args.duration)).await?;

    // Phase 2: paced at a share of what phase 1 measured.
    let mut paced = None;
    if args.paced_share > 0.0 {
        let rate = (full.forwarded_qps * args.paced_share).max(1.0);
        // A rate in queries a second: whole numbers far below u64::MAX.
        #[allow(clippy::cast_possible_truncation)]
        shared.rate.store(rate as u64, Ordering::Relaxed);
        // Let the queues of phase 1 drain: pause until the sinks have
        // received nothing for half a second.
        shared.paused.store(true, Ordering::Relaxed);
        let mut last = shared.received.load(Ordering::Relaxed);
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = shared.received.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        shared.paused.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seconds = (args.duration / 2.0).max(3.0);
        paced = Some(measure(&shared, &args, Duration::from_secs_f64(seconds)).await?);
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = source_task.await;
    for task in &sinks {
        task.abort();
    }
    let lost = fleet.as_mut().map(|f| f.closed()).unwrap_or(0);
    let hits_back = shared.source_received.load(Ordering::Relaxed);

    let what = if args.raw {
        "raw relay"
    } else {
        "canopy supernode"
    };
    if args.json {
        let line = serde_json::json!({
            "bench": "relay",
            "relay": if args.raw { "raw" } else { "canopy" },
            "peers": args.peers,
            "leaves": if args.raw { 0 } else { args.leaves },
            "files_per_leaf": args.files,
            "hit_share": args.hit_share,
            "full": full.json(),
            "paced": paced.map(|p| p.json()),
            "frames_back_to_source": hits_back,
            "leaves_lost": lost,
        });
        println!("{line}");
    } else {
        println!(
            "relay: {what}, 1 source -> {} sinks, {} leaves x {} files indexed",
            args.peers,
            if args.raw { 0 } else { args.leaves },
            args.files
        );
        let show = |name: &str, p: &Phase| {
            println!(
                "  {name}: sent {:.0} q/s, forwarded {:.0} q/s per sink; latency {}",
                p.sent_qps, p.forwarded_qps, p.latency
            );
            println!(
                "    cpu: generator {:.0}%, relay {}",
                p.generator_cpu * 100.0,
                p.relay_cpu
                    .map(|c| format!("{:.0}%", c * 100.0))
                    .unwrap_or_else(|| "?".into())
            );
        };
        show("full speed", &full);
        if let Some(p) = &paced {
            show("paced     ", p);
        }
        if full.generator_cpu > 0.9 {
            println!("  WARNING: the generator used over 90% of its core; it may be the limit");
        }
        if lost > 0 {
            println!("  WARNING: {lost} leaves lost their connection");
        }
    }
    Ok(())
}

/// Pre-encoded queries: mostly lookups that find nothing, `hit_share` of
/// them the words of an indexed file. TTL 2, so a supernode forwards them.
fn templates(
    workload: &Workload,
    args: &Args,
    rng: &mut Rng,
    prefix: [u8; 8],
) -> anyhow::Result<Vec<Template>> {
    let mut out = Vec::new();
    for _ in 0..4096 {
        let keywords = if rng.unit() < args.hit_share && args.leaves > 0 {
            let leaf = rng.below(args.leaves as u64);
            let index = usize::try_from(rng.below(args.files as u64)).unwrap_or(0);
            workload.hit_keywords(leaf, index)
        } else {
            workload.miss_keywords(rng)
        };
        let mut query = search::query(rng, keywords, 2);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&prefix);
        query.message_id = MessageId(id);
        let frame = frames::encode(&Message::Query(query))?;
        let counter_at = frame
            .windows(16)
            .position(|w| w == id)
            .context("message id not found in its frame")?
            + 8;
        out.push(Template { frame, counter_at });
    }
    Ok(out)
}

/// A connection to the target: plain bytes to the raw relay; to a
/// supernode, Noise-encrypted and handshaken as a supernode.
struct Link {
    stream: TcpStream,
    /// What encrypts and decrypts, unless raw.
    ciphers: Option<(SendCipher, ReceiveCipher)>,
    /// Bytes (ciphertext unless raw) that arrived beyond the handshake.
    input: BytesMut,
    /// Plaintext decrypted during the handshake beyond its reply.
    plain: BytesMut,
}

async fn open(args: &Args) -> anyhow::Result<Link> {
    if args.raw {
        return Ok(Link {
            stream: frames::connect(args.target, None).await?,
            ciphers: None,
            input: BytesMut::new(),
            plain: BytesMut::new(),
        });
    }
    let key = StaticKeypair::generate()?;
    let secure = frames::handshake(args.target, None, Role::Supernode, &key).await?;
    let parts = secure.into_parts();
    Ok(Link {
        stream: parts.stream,
        ciphers: Some((parts.send, parts.receive)),
        input: parts.input,
        plain: parts.plain,
    })
}

/// Reads from `stream` into `input` and hands `absorb` the plaintext
/// (`plain` first): the bytes as read if `opener` is `None` (raw), else
/// every complete Noise message decrypted. Returns at the end of the
/// stream.
async fn read_plaintext(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    mut opener: Option<ReceiveCipher>,
    mut input: BytesMut,
    mut plain: BytesMut,
    mut absorb: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    loop {
        match opener.as_mut() {
            Some(cipher) => {
                while cipher.open(&mut input, &mut plain)? {}
                absorb(&plain)?;
                plain.clear();
            }
            None => {
                absorb(&input)?;
                input.clear();
            }
        }
        input.reserve(256 * 1024);
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
}

async fn measure(shared: &Shared, args: &Args, length: Duration) -> anyhow::Result<Phase> {
    let me = || stats::cpu_time("self");
    let relay = || {
        args.pid
            .map(|pid| stats::cpu_time(&pid.to_string()))
            .transpose()
    };
    let (cpu0, relay0) = (me()?, relay()?);
    let sent0 = shared.sent.load(Ordering::Relaxed);
    let received0 = shared.received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(length).await;
    let t1 = Instant::now();
    let sent1 = shared.sent.load(Ordering::Relaxed);
    let received1 = shared.received.load(Ordering::Relaxed);
    let (cpu1, relay1) = (me()?, relay()?);
    let wall = t1 - t0;
    let secs = wall.as_secs_f64();
    let mut samples: Vec<Duration> = shared
        .latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .iter()
        .filter(|(at, _)| *at >= t0 && *at < t1)
        .map(|(_, d)| *d)
        .collect();
    Ok(Phase {
        seconds: secs,
        sent_qps: (sent1 - sent0) as f64 / secs,
        forwarded_qps: (received1 - received0) as f64 / secs / args.peers as f64,
        latency: Percentiles::of(&mut samples),
        generator_cpu: stats::cpu_share(cpu0, cpu1, wall),
        relay_cpu: match (relay0, relay1) {
            (Some(a), Some(b)) => Some(stats::cpu_share(a, b, wall)),
            _ => None,
        },
    })
}

/// The source: batches of queries, written as fast as the relay takes them
/// or at the rate asked for.
async fn send(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut sealer: Option<SendCipher>,
    templates: Vec<Template>,
    shared: Arc<Shared>,
    batch: usize,
    sample_every: u64,
) -> anyhow::Result<()> {
    let mut counter: u64 = 1;
    let mut buffer = BytesMut::with_capacity(batch * 128);
    let mut sealed = BytesMut::new();
    let mut paced_since: Option<(u64, tokio::time::Instant, u64)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.paused.load(Ordering::Relaxed) {
            paced_since = None;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let rate = shared.rate.load(Ordering::Relaxed);
        let size = if rate == 0 {
            paced_since = None;
            batch
        } else {
            // About 2,000 writes a second when paced.
            usize::try_from(rate / 2000)
                .unwrap_or(batch)
                .clamp(1, batch)
        };
        if rate > 0 {
            let (since_rate, start, first) =
                *paced_since.get_or_insert((rate, tokio::time::Instant::now(), counter));
            if since_rate != rate {
                paced_since = None;
                continue;
            }
            let due = start + Duration::from_secs_f64((counter - first) as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        buffer.clear();
        let now = Instant::now();
        let mut sampled = Vec::new();
        for _ in 0..size {
            let template =
                &templates[usize::try_from(counter % templates.len() as u64).unwrap_or(0)];
            let start = buffer.len();
            buffer.extend_from_slice(&template.frame);
            let at = start + template.counter_at;
            buffer[at..at + 8].copy_from_slice(&counter.to_be_bytes());
            if counter % sample_every == 0 {
                sampled.push(counter);
            }
            counter += 1;
        }
        if !sampled.is_empty() {
            if let Ok(mut map) = shared.sampled.lock() {
                for c in sampled {
                    map.insert(c, now);
                }
            }
        }
        match sealer.as_mut() {
            // One Noise message per batch (a batch is far below 64 KiB).
            Some(cipher) => {
                sealed.clear();
                cipher.seal_all(&buffer, &mut sealed)?;
                stream.write_all(&sealed).await?;
            }
            None => stream.write_all(&buffer).await?,
        }
        shared.sent.fetch_add(size as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads and counts what comes back to the source (hits, pongs).
async fn drain(
    stream: tokio::net::tcp::OwnedReadHalf,
    opener: Option<ReceiveCipher>,
    input: BytesMut,
    plain: BytesMut,
    shared: Arc<Shared>,
) {
    let mut counter = FrameCounter::default();
    let _ = read_plaintext(stream, opener, input, plain, |bytes| {
        let frames = counter.feed(bytes, |_| {})?;
        shared.source_received.fetch_add(frames, Ordering::Relaxed);
        Ok(())
    })
    .await;
}

/// A sink: counts frames; the decoding one also takes latency samples.
/// Sends a Ping every 10 s (unless raw) so the supernode never finds it
/// idle.
async fn sink(
    link: Link,
    shared: Arc<Shared>,
    decode: bool,
    prefix: [u8; 8],
) -> anyhow::Result<()> {
    let (read, mut write) = link.stream.into_split();
    let (sealer, opener) = link.ciphers.unzip();
    if let Some(mut sealer) = sealer {
        tokio::spawn(async move {
            let mut nonce = 0;
            let mut sealed = BytesMut::new();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                nonce += 1;
                let Ok(ping) = frames::encode(&Message::Ping { nonce }) else {
                    break;
                };
                sealed.clear();
                if sealer.seal_all(&ping, &mut sealed).is_err()
                    || write.write_all(&sealed).await.is_err()
                {
                    break;
                }
            }
        });
    }
    let mut counter = FrameCounter::default();
    let mut arrived: Vec<u64> = Vec::new();
    // What the handshake read past its reply comes first.
    read_plaintext(read, opener, link.input, link.plain, |bytes| {
        absorb(bytes, &mut counter, &mut arrived, decode, prefix, &shared)
    })
    .await
}

/// Counts the frames in `bytes`; if `decode`, records latency samples.
fn absorb(
    bytes: &[u8],
    counter: &mut FrameCounter,
    arrived: &mut Vec<u64>,
    decode: bool,
    prefix: [u8; 8],
    shared: &Shared,
) -> anyhow::Result<()> {
    let frames = counter.feed(bytes, |frame| {
        if decode {
            if let Some(c) = counter_of(frame, prefix) {
                arrived.push(c);
            }
        }
    })?;
    shared.received.fetch_add(frames, Ordering::Relaxed);
    if !arrived.is_empty() {
        let now = Instant::now();
        let mut found = Vec::new();
        if let Ok(mut map) = shared.sampled.lock() {
            for c in arrived.drain(..) {
                if let Some(sent) = map.remove(&c) {
                    found.push((now, now - sent));
                }
            }
        }
        if let Ok(mut latencies) = shared.latencies.lock() {
            latencies.extend(found);
        }
    }
    Ok(())
}

/// The counter in a query frame's message id, if it is one of ours and a
/// sampled one is possible.
fn counter_of(frame: &[u8], prefix: [u8; 8]) -> Option<u64> {
    let envelope = canopy_proto::wire::Envelope::decode(frame.get(frames::PREFIX..)?).ok()?;
    let Some(canopy_proto::wire::envelope::Body::Query(query)) = envelope.body else {
        return None;
    };
    let id = query.message_id;
    if id.len() != 16 || id[..8] != prefix {
        return None;
    }
    Some(u64::from_be_bytes(id[8..16].try_into().ok()?))
}
