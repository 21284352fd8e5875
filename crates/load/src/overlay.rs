//! `canopy-load overlay`: search latency across an overlay of supernodes
//! (started by the caller) under a steady background query load. Leaves
//! are spread evenly over the supernodes; each timed query asks for the
//! words of a file of a leaf on another supernode than the asker's, and is
//! timed to its first hit and to its last hit within a window.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use canopy_proto::Message;

use crate::fleet::{self, FleetOptions, Leaf};
use crate::search;
use crate::stats::{self, round3};
use crate::workload::{Rng, Workload};

/// Arguments of `overlay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The supernodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<SocketAddr>,
    /// Their metrics addresses, comma-separated, to wait for their indexes.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<SocketAddr>,
    /// Leaves on each supernode.
    #[arg(long, default_value_t = 100)]
    leaves_per_node: usize,
    /// Files per leaf.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Share of each leaf's files copied from the popular pool (0-1).
    #[arg(long, default_value_t = 0.2)]
    popular: f64,
    /// Source addresses for the leaves, comma-separated, round robin.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Background queries a second, from random leaves.
    #[arg(long, default_value_t = 200.0)]
    background_qps: f64,
    /// Share of background queries that match files (the rest find nothing).
    #[arg(long, default_value_t = 0.1)]
    background_hit_share: f64,
    /// Timed searches.
    #[arg(long, default_value_t = 300)]
    searches: usize,
    /// Timed searches a second.
    #[arg(long, default_value_t = 20.0)]
    search_rate: f64,
    /// How long each timed search collects hits, in seconds.
    #[arg(long, default_value_t = 3.0)]
    window: f64,
    /// TTL of every query.
    #[arg(long, default_value_t = 4)]
    ttl: u8,
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
    let nodes = args.targets.len();
    let count = args.leaves_per_node * nodes;
    let mut fleet = fleet::connect(
        workload.clone(),
        FleetOptions {
            targets: args.targets.clone(),
            count,
            sources: args.sources.clone(),
            first_leaf: 0,
            concurrency: 64,
        },
    )
    .await?;
    for m in &args.metrics {
        let want = (args.leaves_per_node * args.files) as f64;
        stats::wait_for_index(*m, want, Duration::from_secs(120)).await?;
    }

    let background = tokio::spawn(background(
        fleet.leaves.clone(),
        workload.clone(),
        args.background_qps,
        args.background_hit_share,
        args.ttl,
        args.seed,
    ));
    // Let the background load settle before timing.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut rng = Rng::new(args.seed ^ 0x0E1A);
    let n = count as u64;
    let queries = (0..args.searches)
        .map(|_| {
            let from = rng.below(n);
            // A leaf on another supernode (leaf i is on supernode i % nodes).
            let mut owner = rng.below(n);
            if nodes > 1 {
                while owner % nodes as u64 == from % nodes as u64 {
                    owner = rng.below(n);
                }
            }
            let index = usize::try_from(rng.below(args.files as u64)).unwrap_or(0);
            let keywords = workload.hit_keywords(owner, index);
            (
                usize::try_from(from).unwrap_or(0),
                search::query(&mut rng, keywords, args.ttl),
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
    background.abort();
    let lost = fleet.closed();

    if args.json {
        let line = serde_json::json!({
            "bench": "overlay",
            "supernodes": nodes,
            "leaves": count,
            "files_per_leaf": args.files,
            "background_qps": args.background_qps,
            "ttl": args.ttl,
            "window_s": args.window,
            "connect_s": round3(fleet.connect_time.as_secs_f64()),
            "search": report.json(),
            "leaves_lost": lost,
        });
        println!("{line}");
    } else {
        println!(
            "overlay: {nodes} supernodes, {count} leaves x {} files, background {} q/s, TTL {}",
            args.files, args.background_qps, args.ttl
        );
        println!(
            "  first hit: {} ({} of {} answered)",
            report.first_hit, report.answered, report.sent
        );
        println!(
            "  last hit within {} s: {}; {:.1} hits a query",
            args.window, report.last_hit, report.hits_per_query
        );
        if lost > 0 {
            println!("  WARNING: {lost} leaves lost their connection");
        }
    }
    Ok(())
}

/// Queries from random leaves at `qps`, until aborted.
async fn background(
    leaves: Vec<Leaf>,
    workload: Arc<Workload>,
    qps: f64,
    hit_share: f64,
    ttl: u8,
    seed: u64,
) {
    if qps <= 0.0 || leaves.is_empty() {
        return;
    }
    let mut rng = Rng::new(seed ^ 0xBAC6);
    let n = leaves.len() as u64;
    let files = workload.files_per_leaf() as u64;
    // Ticks of 10 ms, each sending its share.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0.0;
    loop {
        tick.tick().await;
        owed += qps / 100.0;
        while owed >= 1.0 {
            owed -= 1.0;
            let from = usize::try_from(rng.below(n)).unwrap_or(0);
            let keywords = if rng.unit() < hit_share {
                let index = usize::try_from(rng.below(files)).unwrap_or(0);
                workload.hit_keywords(rng.below(n), index)
            } else {
                workload.miss_keywords(&mut rng)
            };
            let query = search::query(&mut rng, keywords, ttl);
            leaves[from].send(Message::Query(query));
        }
    }
}
