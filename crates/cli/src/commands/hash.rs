//! `canopy hash`: the content ids of files and folders, computed exactly as
//! a leaf computes them when it shares a folder (the same scan, on every
//! core), printed as `b3sum` prints them.

use std::path::PathBuf;
use std::time::Instant;

use canopy_share::HashCache;
use serde::Serialize;

/// Arguments of `canopy hash`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON object per file instead of `b3sum`-style lines.
    #[arg(long)]
    json: bool,
    /// Folders to hash, as `canopy leaf --share` would.
    #[arg(required = true)]
    folders: Vec<PathBuf>,
}

#[derive(Serialize)]
struct JsonFile {
    id: String,
    path: String,
    size: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let bar = crate::output::progress("{spinner} hashing: {bytes} ({bytes_per_sec})", None);
    let progress = bar.clone();
    let folders = args.folders.clone();
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || {
        // A fresh cache: every file is hashed, as on a leaf's first start.
        canopy_share::scan(&folders, &mut HashCache::in_memory(), &|bytes| {
            progress.inc(bytes)
        })
    })
    .await??;
    bar.finish_and_clear();
    tracing::info!(files = report.files.len(), bytes = report.hashed_bytes, elapsed = ?started.elapsed(), "hashed");
    for file in &report.files {
        if args.json {
            let line = JsonFile {
                id: file.shared.content_id.to_hex(),
                path: file.path.display().to_string(),
                size: file.shared.size,
            };
            say!("{}", serde_json::to_string(&line)?);
        } else {
            say!("{}  {}", file.shared.content_id, file.path.display());
        }
    }
    Ok(())
}
