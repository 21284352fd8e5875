//! `canopy hash`: the content ids of files and folders, computed exactly as
//! a leaf computes them when it shares a folder (the same scan, on every
//! core), printed as `b3sum` prints them. A file is hashed as given, a
//! folder as `canopy leaf --share` would scan it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use canopy_share::HashCache;
use serde::Serialize;

/// Arguments of `canopy hash`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON object per file instead of `b3sum`-style lines.
    #[arg(long)]
    json: bool,
    /// Files to hash, and folders to hash as `canopy leaf --share` would.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(Serialize)]
struct JsonFile {
    id: String,
    path: String,
    size: u64,
}

/// One file hashed.
struct Hashed {
    id: canopy_proto::ContentId,
    path: PathBuf,
    size: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let bar = crate::output::progress("{spinner} hashing: {bytes} ({bytes_per_sec})", None);
    let progress = bar.clone();
    let paths = args.paths.clone();
    let started = Instant::now();
    let hashed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Hashed>> {
        let mut hashed = Vec::new();
        for path in paths {
            let metadata =
                std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
            if metadata.is_dir() {
                // A fresh cache: every file is hashed, as on a leaf's first start.
                let report = canopy_share::scan(
                    std::slice::from_ref(&path),
                    &mut HashCache::in_memory(),
                    &|bytes| progress.inc(bytes),
                )?;
                hashed.extend(report.files.into_iter().map(|file| Hashed {
                    id: file.shared.content_id,
                    path: file.path,
                    size: file.shared.size,
                }));
            } else {
                let id = canopy_share::hash_file(&path)
                    .with_context(|| format!("{}", path.display()))?;
                progress.inc(metadata.len());
                hashed.push(Hashed {
                    id,
                    path,
                    size: metadata.len(),
                });
            }
        }
        Ok(hashed)
    })
    .await??;
    bar.finish_and_clear();
    tracing::info!(files = hashed.len(), elapsed = ?started.elapsed(), "hashed");
    for file in &hashed {
        if args.json {
            let line = JsonFile {
                id: file.id.to_hex(),
                path: file.path.display().to_string(),
                size: file.size,
            };
            say!("{}", serde_json::to_string(&line)?);
        } else {
            say!("{}  {}", file.id, file.path.display());
        }
    }
    Ok(())
}
