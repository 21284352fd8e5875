//! A leaf's shared folders: the first scan, the periodic rescans, and the
//! catalog the file server serves from. The hash cache stays in memory
//! across rescans and is written back when a scan changed it.

use std::path::PathBuf;
use std::time::Duration;

use canopy_proto::ContentId;
use canopy_share::{HashCache, LocalFile};
use canopy_transfer::catalog::CatalogEntry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Command, HASH_CACHE_FILE, LeafOptions, Progress};
use crate::NodeError;

/// The hash cache kept in `data_dir`, or one in memory only.
pub(super) fn load_cache(data_dir: Option<&std::path::Path>) -> HashCache {
    match data_dir {
        Some(dir) => HashCache::load(&dir.join(HASH_CACHE_FILE)),
        None => HashCache::in_memory(),
    }
}

/// Scans `shares` with `cache`, and writes the cache back if it changed.
fn scan_shares(
    shares: &[PathBuf],
    cache: &mut HashCache,
    progress: Option<&Progress>,
) -> Result<Vec<LocalFile>, NodeError> {
    let report = canopy_share::scan(shares, cache, &|bytes| {
        if let Some(progress) = progress {
            progress(bytes);
        }
    })?;
    if let Err(error) = cache.save() {
        tracing::warn!(%error, "could not save the hash cache");
    }
    tracing::info!(
        files = report.files.len(),
        hashed = report.hashed,
        hashed_bytes = report.hashed_bytes,
        skipped = report.skipped,
        "shares scanned"
    );
    Ok(report.files)
}

/// Scans on a blocking thread; the cache goes there and comes back, so it
/// is read from disk once per leaf, not once per rescan.
pub(super) async fn scan_in_background(
    options: &LeafOptions,
    mut cache: HashCache,
    with_progress: bool,
) -> Result<(Vec<LocalFile>, HashCache), NodeError> {
    let shares = options.shares.clone();
    let progress = if with_progress {
        options.progress.clone()
    } else {
        None
    };
    tokio::task::spawn_blocking(move || {
        scan_shares(&shares, &mut cache, progress.as_ref()).map(|files| (files, cache))
    })
    .await
    .map_err(|_| NodeError::Stopped)?
}

pub(super) fn catalog_entries(
    files: &[LocalFile],
) -> impl Iterator<Item = (ContentId, CatalogEntry)> + '_ {
    files.iter().map(|f| {
        let entry = CatalogEntry {
            path: f.path.clone(),
            size: f.shared.size,
            tree: f.tree.clone().into(),
        };
        (f.shared.content_id, entry)
    })
}

pub(super) async fn rescan_loop(
    options: LeafOptions,
    mut cache: HashCache,
    interval: Duration,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match scan_in_background(&options, cache, false).await {
            Ok((files, kept)) => {
                cache = kept;
                if commands.send(Command::Files(files)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "rescan failed");
                cache = load_cache(options.data_dir.as_deref());
            }
        }
    }
}
