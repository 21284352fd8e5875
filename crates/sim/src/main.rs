//! `canopy-sim`: runs flooding at TTL 2-5 and dynamic querying over one
//! overlay at each replication ratio, and writes the report as Markdown
//! and CSV.
//!
//!     cargo run --release -p canopy-sim -- --supernodes 1000 --out benches/sim

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Instant;

use canopy_sim::{RunReport, SimConfig, Strategy, run};
use clap::Parser;

/// Simulate a Canopy overlay and compare query strategies.
#[derive(Debug, Parser)]
struct Args {
    /// Supernodes.
    #[arg(long, default_value_t = 1000)]
    supernodes: usize,
    /// Supernode neighbours each supernode dials.
    #[arg(long, default_value_t = 4)]
    dials: usize,
    /// Leaves per supernode.
    #[arg(long, default_value_t = 30)]
    leaves_per_supernode: usize,
    /// Contents placed.
    #[arg(long, default_value_t = 200)]
    contents: usize,
    /// Queries per run.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write report.md and report.csv.
    #[arg(long, default_value = "benches/sim")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let strategies = [
        Strategy::Flood(2),
        Strategy::Flood(3),
        Strategy::Flood(4),
        Strategy::Flood(5),
        Strategy::Dynamic,
    ];
    let mut rows = Vec::new();
    for replication in [0.01, 0.001, 0.0001] {
        for strategy in strategies {
            let mut config = SimConfig::small(strategy, args.seed);
            config.supernodes = args.supernodes;
            config.dials_per_supernode = args.dials;
            config.leaves_per_supernode = args.leaves_per_supernode;
            config.contents = args.contents;
            config.queries = args.queries;
            config.replication = replication;
            let started = Instant::now();
            let report = run(&config);
            eprintln!(
                "{} ({:.1} s)",
                report.markdown_row(),
                started.elapsed().as_secs_f64()
            );
            rows.push(report);
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let mut markdown = format!(
        "# Simulation: {} supernodes x {} leaves, seed {}\n\n{}\n",
        args.supernodes,
        args.leaves_per_supernode,
        args.seed,
        RunReport::markdown_header()
    );
    let mut csv = format!("{}\n", RunReport::csv_header());
    for row in &rows {
        markdown.push_str(&row.markdown_row());
        markdown.push('\n');
        csv.push_str(&row.csv_row());
        csv.push('\n');
    }
    std::fs::write(args.out.join("report.md"), &markdown)?;
    std::fs::write(args.out.join("report.csv"), &csv)?;
    println!("{markdown}");
    Ok(())
}
