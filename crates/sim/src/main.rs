//! `canopy-sim`: runs plain flooding at each TTL asked for and dynamic
//! querying over the same overlay shape at each replication ratio, two
//! runs at a time, and writes the report as Markdown, CSV and SVG.
//!
//!     cargo run --release -p canopy-sim -- --supernodes 1000 --out benches/sim

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use canopy_core::dynamic::DynamicConfig;

use canopy_sim::config::{LEAF_LINK, SUPERNODE_LINK};
use canopy_sim::link::LinkSpeed;
use canopy_sim::output::markdown;
use canopy_sim::workload::VocabularyModel;
use canopy_sim::{Churn, RunReport, SimConfig, Strategy, run, write_report};
use clap::Parser;

/// Simulate a Canopy overlay and compare query strategies.
#[derive(Debug, Parser)]
struct Args {
    /// Supernodes.
    #[arg(long, default_value_t = 1000)]
    supernodes: usize,
    /// Supernode neighbours each supernode dials at random, besides its two
    /// ring neighbours (mean degree about 2 x dials + 2).
    #[arg(long, default_value_t = 15)]
    dials: usize,
    /// Leaves per supernode.
    #[arg(long, default_value_t = 30)]
    leaves_per_supernode: usize,
    /// Supernodes each leaf connects and publishes to.
    #[arg(long, default_value_t = 2)]
    parents: usize,
    /// Shortest link latency, in milliseconds.
    #[arg(long, default_value_t = 10)]
    latency_min_ms: u64,
    /// Longest link latency, in milliseconds (latencies are log-uniform).
    #[arg(long, default_value_t = 300)]
    latency_max_ms: u64,
    /// Contents placed.
    #[arg(long, default_value_t = 200)]
    contents: usize,
    /// Zipf exponent of content popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Queries per run (alternately by content id and by keywords).
    #[arg(long, default_value_t = 600)]
    queries: usize,
    /// Spread the queries over at least this many seconds of virtual time
    /// (a sample of the overlay's rate, while churn goes on).
    #[arg(long, default_value_t = 300)]
    span_secs: u64,
    /// Ask by content id only (no keyword queries).
    #[arg(long)]
    no_keywords: bool,
    /// Distinct words of the vocabulary names are drawn from.
    #[arg(long, default_value_t = 2000)]
    words: usize,
    /// Each direction of a supernode-to-supernode link, in kbit/s.
    #[arg(long, default_value_t = 1000)]
    supernode_link_kbps: u64,
    /// Each direction of a leaf-to-supernode link, in kbit/s.
    #[arg(long, default_value_t = 256)]
    leaf_link_kbps: u64,
    /// Run dynamic querying without routing filters.
    #[arg(long)]
    no_filters: bool,
    /// Queries each leaf sends an hour (sets the overlay's query rate).
    #[arg(long, default_value_t = 6.0)]
    queries_per_leaf_hour: f64,
    /// Share of leaves leaving (and later rejoining) per minute.
    #[arg(long, default_value_t = 0.02)]
    churn_leaves: f64,
    /// Share of supernodes leaving (and later rejoining) per minute.
    #[arg(long, default_value_t = 0.005)]
    churn_supernodes: f64,
    /// Flood TTLs to compare with dynamic querying.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "2,3,4,5")]
    ttls: Vec<u8>,
    /// Replication ratios (0.01 = 1% of leaves hold each content).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.001,0.0001")]
    replications: Vec<f64>,
    /// Dynamic querying: peers probed at TTL 1 first (default: the core's).
    #[arg(long)]
    probe_peers: Option<usize>,
    /// Dynamic querying: wait per hop of TTL between steps, in milliseconds
    /// (default: the core's).
    #[arg(long)]
    hop_wait_ms: Option<u64>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs at once (each is single-threaded and deterministic).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Where to write report.md, report.csv and report.svg.
    #[arg(long, default_value = "benches/sim")]
    out: PathBuf,
}

impl Args {
    fn config(&self, strategy: Strategy, replication: f64) -> SimConfig {
        let mut dynamic = DynamicConfig::default();
        if let Some(peers) = self.probe_peers {
            dynamic.probe_peers = peers;
        }
        if let Some(ms) = self.hop_wait_ms {
            dynamic.hop_wait = Duration::from_millis(ms);
        }
        SimConfig {
            dynamic,
            dials_per_supernode: self.dials,
            leaves_per_supernode: self.leaves_per_supernode,
            parents_per_leaf: self.parents,
            latency_ms: (self.latency_min_ms, self.latency_max_ms),
            contents: self.contents,
            zipf: self.zipf,
            queries: self.queries,
            queries_per_leaf_hour: self.queries_per_leaf_hour,
            churn: Churn {
                leaves_per_minute: self.churn_leaves,
                supernodes_per_minute: self.churn_supernodes,
                ..Churn::MODEST
            },
            replication,
            span_ms: self.span_secs * 1000,
            keyword_queries: !self.no_keywords,
            vocabulary: VocabularyModel {
                words: self.words,
                ..VocabularyModel::default()
            },
            supernode_link: LinkSpeed {
                bytes_per_second: self.supernode_link_kbps * 125,
                ..SUPERNODE_LINK
            },
            leaf_link: LinkSpeed {
                bytes_per_second: self.leaf_link_kbps * 125,
                ..LEAF_LINK
            },
            routing_filters: !self.no_filters,
            ..SimConfig::anchored(self.supernodes, strategy, self.seed)
        }
    }

    fn preamble(&self, sample: &SimConfig) -> String {
        let v = sample.vocabulary;
        format!(
            "{} supernodes (each dials {} + ring: mean degree about {}), {} leaves each, \
             {} parents per leaf; link latency log-uniform {}-{} ms; links {} kbit/s each way \
             between supernodes, {} kbit/s to a leaf, 256 KiB send queues; {} contents named \
             with {}-{} words from {} (Zipf {} frequencies), Zipf {} popularity; {} queries per \
             run, {}, issued one every {} ms over {:.0} s (the overlay's rate, {} per leaf an \
             hour, is {:.0} a second: upkeep is amortized at that rate); churn {}% of leaves and \
             {}% of supernodes a minute; routing filters {} for dynamic querying; seed {}.\n\n\
             Reproduce: `cargo run --release -p canopy-sim -- {}`",
            self.supernodes,
            self.dials,
            2 * self.dials + 2,
            self.leaves_per_supernode,
            self.parents,
            self.latency_min_ms,
            self.latency_max_ms,
            self.supernode_link_kbps,
            self.leaf_link_kbps,
            self.contents,
            v.words_per_name.0,
            v.words_per_name.1,
            v.words,
            v.zipf,
            self.zipf,
            self.queries,
            if self.no_keywords {
                "all by content id"
            } else {
                "alternately by content id and by one or two words of the wanted content's name"
            },
            sample.query_interval_ms(),
            (sample.query_interval_ms() * self.queries as u64) as f64 / 1000.0,
            self.queries_per_leaf_hour,
            sample.query_rate(),
            self.churn_leaves * 100.0,
            self.churn_supernodes * 100.0,
            if self.no_filters { "off" } else { "on" },
            self.seed,
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        )
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut strategies: Vec<Strategy> = args.ttls.iter().map(|t| Strategy::Flood(*t)).collect();
    strategies.push(Strategy::Dynamic);
    let configs: Vec<SimConfig> = args
        .replications
        .iter()
        .flat_map(|r| strategies.iter().map(|s| args.config(*s, *r)))
        .collect();
    let started = Instant::now();
    // Each run is independent and deterministic: run them on `jobs`
    // threads, keep the rows in the order of `configs`.
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<Option<Vec<RunReport>>>> = Mutex::new(vec![None; configs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(config) = configs.get(i) else { break };
                    let begun = Instant::now();
                    let report = run(config);
                    for row in &report {
                        eprintln!(
                            "{} ({:.1} s)",
                            row.markdown_row(),
                            begun.elapsed().as_secs_f64()
                        );
                    }
                    if let Ok(mut rows) = rows.lock() {
                        rows[i] = Some(report);
                    }
                }
            });
        }
    });
    let rows: Vec<RunReport> = rows
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a run panicked"))?
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow::anyhow!("a run did not finish"))?
        .into_iter()
        .flatten()
        .collect();
    eprintln!("all runs: {:.1} s", started.elapsed().as_secs_f64());
    let title = format!(
        "Simulation: {} supernodes x {} leaves, seed {}",
        args.supernodes, args.leaves_per_supernode, args.seed
    );
    let sample = configs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no replication ratio to run"))?;
    let preamble = args.preamble(sample);
    write_report(&args.out, &title, &preamble, &rows)?;
    println!("{}", markdown(&title, &preamble, &rows));
    Ok(())
}
