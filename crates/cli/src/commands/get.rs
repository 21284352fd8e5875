//! `canopy get`: download a content id from every source the overlay knows,
//! verifying every chunk; resumable. The download starts on the first
//! source that answers; Ctrl-C pauses it (the partial file is kept and the
//! same command resumes it). With a leaf running on the data directory
//! (and no `--supernode`), the download is queued in it and followed
//! ([`super::get_daemon`]); otherwise a throwaway leaf asks `--supernode`
//! (standalone).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_node::NodeError;
use canopy_node::addr::HostPort;
use canopy_node::fetch::{FetchProgress, FetchTarget};
use canopy_node::get::{self, GetOptions};
use canopy_proto::ContentId;
use canopy_transfer::download::DownloadError;
use canopy_transfer::path::TransferPath;
use indicatif::{HumanBytes, HumanDuration};
use serde::Serialize;

use super::wanted::Wanted;

/// Arguments of `canopy get`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The supernode to ask for sources, standalone (without the running
    /// leaf; by default the download is queued in the leaf running on
    /// --data-dir): host[:port] (default port 6346); every address the
    /// name has is tried.
    #[arg(long)]
    supernode: Option<HostPort>,
    #[command(flatten)]
    leaf: super::running::DataDir,
    /// Return as soon as the running leaf has queued it.
    #[arg(long)]
    detach: bool,
    /// Save under this name (made safe) in the running leaf's downloads
    /// folder.
    #[arg(long)]
    name: Option<String>,
    /// Its priority in the running leaf's queue (higher starts first).
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Where to save: a file, or a folder to save into under the file's
    /// name as the sources give it, made safe (no leading `.` or `-`, no
    /// control or bidi characters, no Windows device names or reserved
    /// characters). A path ending in `/` is a folder, created if missing
    /// [default: the current directory]. Standalone only: the running
    /// leaf saves into its downloads folder.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
    /// Print one JSON object when done instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds each search for sources runs (the download starts on the
    /// first source; it does not wait for the search to end).
    #[arg(long, default_value_t = 5.0)]
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
    /// The content id (64 hex characters, as b3sum prints), a
    /// `canopy:<id>?name=..&size=..` link, or N: result N of the last
    /// `canopy search`.
    #[arg(value_name = "ID|LINK|N")]
    what: String,
}

#[derive(Serialize)]
struct JsonReport {
    id: String,
    path: String,
    size: u64,
    sources_used: usize,
    bytes_per_source: BTreeMap<String, u64>,
    /// Per source, the ways its connections were made: "direct", "push",
    /// "hole punch", "relay".
    paths_per_source: BTreeMap<String, Vec<TransferPath>>,
    dropped_sources: BTreeMap<String, String>,
    resumed_bytes: u64,
    seconds: f64,
    /// Seconds from the start to the first verified byte (discovery
    /// included); null if nothing was fetched.
    first_byte_seconds: Option<f64>,
    already_present: bool,
}

/// "1 source", "3 sources".
fn sources(count: usize) -> String {
    if count == 1 {
        "1 source".to_owned()
    } else {
        format!("{count} sources")
    }
}

/// The progress line's text. `rate` is in bytes per second, measured
/// since the first verified byte.
fn progress_message(progress: &FetchProgress, rate: Option<u64>) -> String {
    let Some(size) = progress.size else {
        return "finding sources…".to_owned();
    };
    let name = progress.name.as_deref().unwrap_or("");
    if progress.verified_bytes == 0 {
        return format!(
            "{name}  {}  connecting to {}…",
            HumanBytes(size),
            sources(progress.known_sources.max(1))
        );
    }
    let mut text = format!(
        "{name}  {}/{}",
        HumanBytes(progress.verified_bytes),
        HumanBytes(size)
    );
    if let Some(rate) = rate.filter(|r| *r > 0) {
        let left = size.saturating_sub(progress.verified_bytes);
        let eta = Duration::from_secs(left.div_ceil(rate));
        text.push_str(&format!(
            "  {}/s  eta {}",
            HumanBytes(rate),
            HumanDuration(eta)
        ));
    }
    text.push_str(&format!(
        "  {} of {}",
        progress.active_sources,
        sources(progress.known_sources)
    ));
    text
}

/// Bytes per second between two samples.
fn rate_between(first: (Instant, u64), now: (Instant, u64)) -> Option<u64> {
    let micros = now.0.checked_duration_since(first.0)?.as_micros();
    if micros < 100_000 {
        return None;
    }
    let bytes = u128::from(now.1.checked_sub(first.1)?);
    u64::try_from(bytes * 1_000_000 / micros).ok()
}

/// The folder the partial file lives in, for the pause message.
fn partial_folder(target: &FetchTarget) -> PathBuf {
    match target {
        FetchTarget::Dir(dir) => dir.clone(),
        FetchTarget::File(file) => match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        },
    }
}

/// Every address of `supernode` (at least one).
pub(crate) async fn resolve(supernode: &HostPort) -> anyhow::Result<Vec<SocketAddr>> {
    let found = supernode
        .resolve()
        .await
        .map_err(|error| anyhow::anyhow!("cannot resolve supernode {supernode}: {error}"))?;
    anyhow::ensure!(!found.is_empty(), "supernode {supernode} has no address");
    Ok(found)
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let Some(supernode) = args.supernode.clone() else {
        let (client, dir) = args.leaf.find().await?;
        let Some(client) = client else {
            anyhow::bail!(
                "{}; or give --supernode ADDR to download without one",
                super::running::no_leaf(&dir)
            );
        };
        if args.output.is_some() || args.force {
            anyhow::bail!(
                "--output and --force are for standalone downloads: the running leaf saves \
                 into its downloads folder (see `canopy status`; --name names the file); \
                 give --supernode ADDR to download without the leaf"
            );
        }
        let request = super::get_daemon::Request {
            wanted: Wanted::parse(&args.what, Some(&dir))?,
            name: args.name,
            priority: args.priority,
            detach: args.detach,
            json: args.json,
        };
        return super::get_daemon::run(client, request).await;
    };
    if args.detach || args.name.is_some() || args.priority.is_some() {
        anyhow::bail!(
            "--detach, --name and --priority need the running leaf (leave out --supernode)"
        );
    }
    let id = Wanted::parse(&args.what, args.leaf.path().ok().as_deref())?.id();
    standalone(args, supernode, id).await
}

/// `canopy get --supernode ADDR`: a throwaway leaf fetches it.
async fn standalone(args: Args, supernode: HostPort, id: ContentId) -> anyhow::Result<()> {
    let search_timeout = Duration::try_from_secs_f64(args.search_timeout)
        .map_err(|_| anyhow::anyhow!("--search-timeout must be a positive number of seconds"))?;
    let bar = crate::output::progress("{spinner} {msg}", None);
    bar.set_message("finding sources…");
    let updates = bar.clone();
    let supernodes = resolve(&supernode).await?;
    let mut options = GetOptions::new(supernodes[0], id);
    options.supernodes = supernodes;
    options.output = args.output;
    options.force = args.force;
    options.search_timeout = search_timeout;
    options.ttl = args.ttl;
    options.config.stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
    options.config.requests_per_source = args.requests_per_source.max(1);
    options.config.groups_per_request = args.request_mib.max(1);
    let first_sample: Arc<Mutex<Option<(Instant, u64)>>> = Arc::default();
    options.progress = Some(Arc::new(move |progress: &FetchProgress| {
        let now = (Instant::now(), progress.verified_bytes);
        let rate = match first_sample.lock() {
            Ok(mut first) if progress.verified_bytes > 0 => {
                rate_between(*first.get_or_insert(now), now)
            }
            _ => None,
        };
        updates.set_message(progress_message(progress, rate));
    }));
    let cancel = options.cancel.clone();
    let folder = partial_folder(&options.target());
    let started = Instant::now();
    let result = {
        let get = get::get(options);
        tokio::pin!(get);
        tokio::select! {
            result = &mut get => result,
            () = interrupted() => {
                cancel.cancel();
                get.await
            }
        }
    };
    bar.finish_and_clear();
    let report = match result {
        Err(NodeError::Download(DownloadError::Cancelled)) => {
            anyhow::bail!(
                "paused: what was downloaded is kept in {}; run the same command again to resume",
                display_folder(&folder)
            )
        }
        other => other?,
    };
    let used = report.sources_used();
    if args.json {
        let json = JsonReport {
            id: id.to_hex(),
            path: report.path.display().to_string(),
            size: report.size,
            sources_used: report.sources_used(),
            bytes_per_source: report.bytes_per_source(),
            paths_per_source: report.paths_per_source(),
            dropped_sources: report.dropped_sources(),
            resumed_bytes: report.resumed_bytes,
            seconds: report.elapsed.as_secs_f64(),
            first_byte_seconds: report.first_byte.map(|d| d.as_secs_f64()),
            already_present: report.already_present,
        };
        say!("{}", serde_json::to_string(&json)?);
        return Ok(());
    }
    if report.already_present {
        say!(
            "{} is already there ({}, same content id); nothing to do",
            report.path.display(),
            HumanBytes(report.size)
        );
        return Ok(());
    }
    let secs = started.elapsed().as_secs_f64();
    let fetched = report.size - report.resumed_bytes;
    let rate = rate_between(
        (started, 0),
        (
            started + report.elapsed.max(Duration::from_micros(1)),
            fetched,
        ),
    )
    .unwrap_or(0);
    say!(
        "saved {} ({}) from {} in {:.2} s ({}/s)",
        report.path.display(),
        HumanBytes(report.size),
        sources(used),
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
        let via = paths_said(&source.paths);
        match &source.dropped {
            Some(reason) => say!(
                "  {:<28} {:>12}{via}  dropped: {reason}",
                source.source,
                HumanBytes(source.bytes).to_string()
            ),
            None => say!(
                "  {:<28} {:>12}{via}",
                source.source,
                HumanBytes(source.bytes).to_string()
            ),
        }
    }
    Ok(())
}

/// "  via hole punch", "  via direct, push": how a source was reached;
/// nothing if it never was.
fn paths_said(paths: &[TransferPath]) -> String {
    if paths.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    format!("  via {}", names.join(", "))
}

fn display_folder(folder: &Path) -> String {
    if folder == Path::new(".") {
        "the current folder".to_owned()
    } else {
        folder.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_a_source_the_line_says_it_is_finding_sources() {
        let text = progress_message(&FetchProgress::default(), None);
        assert_eq!(text, "finding sources…");
        assert!(!text.contains("0 B"));
    }

    #[test]
    fn the_line_names_the_file_and_counts_sources_in_words() {
        let progress = FetchProgress {
            name: Some("film.mkv".into()),
            size: Some(512 << 20),
            verified_bytes: 256 << 20,
            known_sources: 1,
            active_sources: 1,
            first_byte: Some(Duration::from_millis(20)),
        };
        let text = progress_message(&progress, Some(128 << 20));
        assert!(
            text.starts_with("film.mkv  256.00 MiB/512.00 MiB"),
            "{text}"
        );
        assert!(text.contains("128.00 MiB/s"), "{text}");
        assert!(text.contains("eta 2 seconds"), "{text}");
        assert!(text.ends_with("1 of 1 source"), "{text}");
        let more = FetchProgress {
            known_sources: 3,
            ..progress
        };
        assert!(progress_message(&more, None).ends_with("1 of 3 sources"));
    }

    #[test]
    fn rates_are_bytes_per_second() {
        let start = Instant::now();
        let later = start + Duration::from_millis(500);
        // 400 MiB in half a second is 800 MiB/s, not 0.8.
        assert_eq!(
            rate_between((start, 0), (later, 400 << 20)),
            Some(800 << 20)
        );
        assert_eq!(
            rate_between((start, 0), (start, 5)),
            None,
            "too soon to tell"
        );
    }

    #[test]
    fn each_source_line_says_how_it_was_reached() {
        assert_eq!(paths_said(&[]), "");
        assert_eq!(paths_said(&[TransferPath::HolePunch]), "  via hole punch");
        assert_eq!(
            paths_said(&[TransferPath::Direct, TransferPath::Push]),
            "  via direct, push"
        );
    }
}
