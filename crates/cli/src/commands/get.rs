//! `canopy get`: download a content id from every source the overlay knows,
//! verifying every chunk; resumable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_node::get::{self, GetOptions};
use canopy_proto::ContentId;
use indicatif::HumanBytes;
use serde::Serialize;

/// Arguments of `canopy get`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The supernode to ask for sources.
    #[arg(long)]
    supernode: SocketAddr,
    /// Where to save: a file, or a directory to save into under the file's
    /// name as the sources give it, made safe (no leading `.` or `-`, no
    /// control or bidi characters, no Windows device names or reserved
    /// characters) [default: the current directory].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
    /// Print one JSON object when done instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to gather sources.
    #[arg(long, default_value_t = 2.0)]
    search_timeout: f64,
    /// How many supernodes the search may reach (1-7).
    #[arg(long, default_value_t = canopy_core::supernode::DEFAULT_TTL_CAP,
          value_parser = clap::value_parser!(u8).range(1..=7))]
    ttl: u8,
    /// Seconds without data before a source is dropped as stalled.
    #[arg(long, default_value_t = 10)]
    stall_timeout: u64,
    /// Requests in flight to each source at once.
    #[arg(long, default_value_t = canopy_core::download::DownloadConfig::default().requests_per_source)]
    requests_per_source: usize,
    /// MiB asked for in one request.
    #[arg(long, default_value_t = canopy_core::download::DownloadConfig::default().groups_per_request)]
    request_mib: u64,
    /// The content id (64 hex characters, as b3sum prints).
    id: ContentId,
}

#[derive(Serialize)]
struct JsonReport {
    id: String,
    path: String,
    size: u64,
    sources_used: usize,
    bytes_per_source: BTreeMap<String, u64>,
    dropped_sources: BTreeMap<String, String>,
    resumed_bytes: u64,
    seconds: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let search_timeout = Duration::try_from_secs_f64(args.search_timeout)
        .map_err(|_| anyhow::anyhow!("--search-timeout must be a positive number of seconds"))?;
    let bar = crate::output::progress(
        "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        Some(0),
    );
    bar.set_message("finding sources");
    let updates = bar.clone();
    let mut options = GetOptions::new(args.supernode, args.id);
    options.output = args.output;
    options.force = args.force;
    options.search_timeout = search_timeout;
    options.ttl = args.ttl;
    options.config.stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
    options.config.requests_per_source = args.requests_per_source.max(1);
    options.config.groups_per_request = args.request_mib.max(1);
    options.progress = Some(Arc::new(move |progress| {
        updates.set_length(progress.size.unwrap_or(0));
        updates.set_position(progress.verified_bytes);
        updates.set_message(format!("{} active sources", progress.active_sources));
    }));
    let result = get::get(options).await;
    bar.finish_and_clear();
    let report = result?;
    let used = report.sources_used();
    if args.json {
        let json = JsonReport {
            id: args.id.to_hex(),
            path: report.path.display().to_string(),
            size: report.size,
            sources_used: report.sources_used(),
            bytes_per_source: report.bytes_per_source(),
            dropped_sources: report.dropped_sources(),
            resumed_bytes: report.resumed_bytes,
            seconds: report.elapsed.as_secs_f64(),
        };
        say!("{}", serde_json::to_string(&json)?);
        return Ok(());
    }
    let secs = report.elapsed.as_secs_f64();
    let fetched = report.size - report.resumed_bytes;
    let micros = u64::try_from(report.elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let rate =
        u64::try_from(u128::from(fetched) * 1_000_000 / u128::from(micros)).unwrap_or(u64::MAX);
    say!(
        "saved {} ({}) from {} source{} in {:.2} s ({}/s)",
        report.path.display(),
        HumanBytes(report.size),
        used,
        if used == 1 { "" } else { "s" },
        secs,
        HumanBytes(rate)
    );
    if report.resumed_bytes > 0 {
        say!(
            "  resumed: {} already verified on disk",
            HumanBytes(report.resumed_bytes)
        );
    }
    for source in &report.sources {
        match &source.dropped {
            Some(reason) => say!(
                "  {:<28} {:>12}  dropped: {reason}",
                source.source,
                HumanBytes(source.bytes).to_string()
            ),
            None => say!(
                "  {:<28} {:>12}",
                source.source,
                HumanBytes(source.bytes).to_string()
            ),
        }
    }
    Ok(())
}
