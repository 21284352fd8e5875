//! `canopy-sim-election`: runs the supernode election model (issue 12)
//! for a population of mixed capability and writes `report.md` and
//! `report.svg`.
//!
//!     cargo run --release -p canopy-sim --bin canopy-sim-election -- --out benches/sim/election

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use canopy_sim::election::{ElectionSimConfig, run};
use canopy_sim::election_report::{markdown, write};
use clap::Parser;

/// Simulate supernode election with churn.
#[derive(Debug, Parser)]
struct Args {
    /// Nodes, besides the seed supernodes.
    #[arg(long, default_value_t = 30_000)]
    nodes: usize,
    /// Seed supernodes (always on).
    #[arg(long, default_value_t = 5)]
    seeds: usize,
    /// Share of nodes reachable from outside.
    #[arg(long, default_value_t = 0.2)]
    reachable: f64,
    /// Simulated minutes.
    #[arg(long, default_value_t = 360)]
    minutes: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write report.md and report.svg.
    #[arg(long, default_value = "benches/sim/election")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ElectionSimConfig {
        nodes: args.nodes,
        seeds: args.seeds,
        reachable: args.reachable,
        duration: Duration::from_secs(args.minutes * 60),
        ..ElectionSimConfig::issue(args.seed)
    };
    let started = Instant::now();
    let report = run(&config);
    eprintln!("run: {:.1} s", started.elapsed().as_secs_f64());
    let command = format!(
        "cargo run --release -p canopy-sim --bin canopy-sim-election -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    write(&args.out, &report, &command)?;
    println!("{}", markdown(&report, &command));
    Ok(())
}
