//! `canopy-load leaves`: many leaves on one supernode. Connects them all,
//! each publishing its files; reports the time that took, the supernode's
//! resident memory per leaf, and search latency with every leaf attached.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{self, FleetOptions};
use crate::search;
use crate::stats::{self, round3};
use crate::workload::{Rng, Workload};

/// Arguments of `leaves`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The supernode.
    #[arg(long)]
    target: SocketAddr,
    /// Leaves to connect.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Files each leaf publishes.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Share of each leaf's files copied from the popular pool (0-1).
    #[arg(long, default_value_t = 0.2)]
    popular: f64,
    /// Source addresses for the connections, comma-separated, used round
    /// robin (e.g. 127.0.0.2,127.0.0.3); default: the system's choice.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The supernode's pid, for its resident memory (VmRSS).
    #[arg(long)]
    pid: Option<u32>,
    /// The supernode's metrics address: wait until it has indexed every file.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Timed searches once all leaves are attached.
    #[arg(long, default_value_t = 1000)]
    searches: usize,
    /// Timed searches a second.
    #[arg(long, default_value_t = 200.0)]
    search_rate: f64,
    /// How long to wait for hits, in seconds.
    #[arg(long, default_value_t = 2.0)]
    window: f64,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let workload = Arc::new(Workload::new(args.seed, args.files, args.popular));
    let rss_before = args.pid.map(stats::rss_kib).transpose()?;
    let files_before = match args.metrics {
        Some(m) => stats::metric(m, "canopy_index_files").await?,
        None => 0.0,
    };
    let started = Instant::now();
    let mut fleet = fleet::connect(
        workload.clone(),
        FleetOptions {
            targets: vec![args.target],
            count: args.count,
            sources: args.sources.clone(),
            first_leaf: 0,
            concurrency: args.concurrency,
        },
    )
    .await?;
    let connected = fleet.connect_time;
    let mut indexed = None;
    if let Some(m) = args.metrics {
        let want = files_before + (args.count * args.files) as f64;
        stats::wait_for_index(m, want, Duration::from_secs(600)).await?;
        indexed = Some(started.elapsed());
    }
    let rss_after = args.pid.map(stats::rss_kib).transpose()?;

    // Timed searches: the words of a random leaf's file, sent by another
    // random leaf; the supernode answers from its index.
    let mut rng = Rng::new(args.seed ^ 0xA5A5);
    let n = fleet.leaves.len() as u64;
    let queries = (0..args.searches)
        .map(|_| {
            let from = rng.below(n);
            let owner = (from + 1 + rng.below(n.saturating_sub(1).max(1))) % n.max(1);
            let index = usize::try_from(rng.below(args.files as u64)).unwrap_or(0);
            let keywords = workload.hit_keywords(owner, index);
            (
                usize::try_from(from).unwrap_or(0),
                search::query(&mut rng, keywords, 1),
            )
        })
        .collect();
    let report = search::timed(
        &mut fleet,
        queries,
        args.search_rate,
        Duration::from_secs_f64(args.window),
    )
    .await;
    let rss_end = args.pid.map(stats::rss_kib).transpose()?;
    let lost = fleet.closed();
    let per_leaf = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / args.count.max(1) as f64),
        _ => None,
    };

    if args.json {
        let line = serde_json::json!({
            "bench": "leaves",
            "leaves": args.count,
            "files_per_leaf": args.files,
            "connect_s": round3(connected.as_secs_f64()),
            "indexed_s": indexed.map(|d| round3(d.as_secs_f64())),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_after_searches_kib": rss_end,
            "rss_per_leaf_kib": per_leaf.map(round3),
            "search": report.json(),
            "leaves_lost": lost,
        });
        println!("{line}");
    } else {
        println!("leaves: {} x {} files", args.count, args.files);
        println!(
            "  connected, handshaken, published: {:.2} s",
            connected.as_secs_f64()
        );
        if let Some(d) = indexed {
            println!(
                "  all files indexed:                {:.2} s",
                d.as_secs_f64()
            );
        }
        if let (Some(b), Some(a), Some(p)) = (rss_before, rss_after, per_leaf) {
            println!("  supernode RSS: {b} KiB before, {a} KiB after: {p:.2} KiB per leaf");
        }
        println!(
            "  search to first hit: {} ({} of {} answered)",
            report.first_hit, report.answered, report.sent
        );
        if lost > 0 {
            println!("  WARNING: {lost} leaves lost their connection");
        }
    }
    Ok(())
}
