//! The one place the daemon calls into the leaf, the download engine, the
//! file server and the HTTP layer. Everything else in the daemon goes
//! through these few functions, so switching to the APIs other parts of
//! issue 10 bring (`LeafHandle::search_live`, `canopy_node::fetch`,
//! `share_file`, `add_share`, live upload slots and rate limits,
//! `api::serve` and its `Token`) changes this file only.
//!
//! Today's stand-ins: a live search is a one-shot search whose results
//! arrive at once at its end; a fetch searches for sources (again and
//! again, with a growing wait, while none answer) and then downloads from
//! the sources that accept connections; finished files are shared at the
//! next rescan; uploads are counted but not listed; rate limits and upload
//! slots are remembered but take effect at the next start; the control
//! port is bound and held but not served.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_core::leaf::SearchRequest;
use canopy_core::search::{SearchResult, most_agreed};
use canopy_node::NodeError;
use canopy_node::leaf::LeafHandle;
use canopy_proto::ContentId;
use canopy_transfer::client::{Connector, DirectConnector};
use canopy_transfer::download::{self, DownloadError, DownloadOptions, DownloadSource};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{ApiError, ShareFolder, UploadView};

/// How long one search for sources gathers hits.
const SOURCE_SEARCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Waits between searches that found no source: doubling up to this.
const MAX_SOURCE_WAIT: Duration = Duration::from_secs(30);
/// A fetch that found no source for this long fails (and the queue
/// retries it later).
const GIVE_UP_WITHOUT_SOURCES: Duration = Duration::from_secs(600);
/// How long to dial a source.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a live search has found so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct SearchSnapshot {
    /// Distinct contents, in order of arrival.
    pub(crate) results: Vec<SearchResult>,
    /// Hit messages received.
    pub(crate) hits: usize,
    /// No more will come.
    pub(crate) done: bool,
}

/// A running search; dropping it stops the search.
#[derive(Debug)]
pub(crate) struct LiveSearch {
    /// Each new snapshot.
    pub(crate) updates: watch::Receiver<SearchSnapshot>,
    _stop: AbortOnDrop,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a search whose results come as they arrive.
pub(crate) async fn search_live(
    leaf: &Arc<LeafHandle>,
    request: SearchRequest,
) -> Result<LiveSearch, NodeError> {
    let (tx, updates) = watch::channel(SearchSnapshot::default());
    let leaf = leaf.clone();
    let task = tokio::spawn(async move {
        let snapshot = match leaf.search(request).await {
            Ok(outcome) => SearchSnapshot {
                results: outcome.results,
                hits: outcome.hits,
                done: true,
            },
            Err(error) => {
                tracing::info!(%error, "search failed");
                SearchSnapshot {
                    done: true,
                    ..SearchSnapshot::default()
                }
            }
        };
        let _ = tx.send(snapshot);
    });
    Ok(LiveSearch {
        updates,
        _stop: AbortOnDrop(task),
    })
}

/// The other names sources give a result (at most 8).
pub(crate) fn result_names(result: &SearchResult) -> Vec<String> {
    vec![result.name.clone()]
}

/// Where a fetch stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FetchProgress {
    /// The name the sources give, once known.
    pub(crate) name: Option<String>,
    /// The size, once known.
    pub(crate) size: Option<u64>,
    /// Bytes verified on disk.
    pub(crate) verified_bytes: u64,
    /// Sources known.
    pub(crate) known_sources: usize,
    /// Sources sending now.
    pub(crate) active_sources: usize,
}

/// Called as a fetch advances.
pub(crate) type ProgressFn = Arc<dyn Fn(&FetchProgress) + Send + Sync>;

/// A boxed future, for the target callback.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Picks the file to save to once the sources' name and size are known
/// (or says the content is already here).
pub(crate) type TargetFn =
    Box<dyn FnOnce(String, Option<u64>) -> BoxFuture<Result<PathBuf, FetchError>> + Send>;

/// One download to run.
pub(crate) struct FetchJob {
    /// The content.
    pub(crate) id: ContentId,
    /// Its size, if known beforehand.
    pub(crate) size: Option<u64>,
    /// Where to save it.
    pub(crate) target: TargetFn,
    /// Progress reports.
    pub(crate) progress: ProgressFn,
    /// Stops the fetch, keeping what is verified (a pause).
    pub(crate) cancel: CancellationToken,
}

impl std::fmt::Debug for FetchJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchJob")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a fetch ended without a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    /// Cancelled: paused, cancelled or shut down; the partial is kept.
    #[error("stopped")]
    Cancelled,
    /// The content is already at `path`.
    #[error("{reason}")]
    Skipped {
        /// Where it is.
        path: PathBuf,
        /// Said to the user.
        reason: String,
    },
    /// Failed; a retry may help (no sources, network) or not (disk).
    #[error("{reason}")]
    Failed {
        /// Said to the user.
        reason: String,
        /// Worth trying again later.
        retryable: bool,
    },
}

impl FetchError {
    fn from_download(error: DownloadError) -> Self {
        let retryable = matches!(
            error,
            DownloadError::NoSources | DownloadError::AllSourcesFailed(_)
        );
        FetchError::Failed {
            reason: error.to_string(),
            retryable,
        }
    }
}

/// A finished fetch.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// Where the verified file is.
    pub(crate) path: PathBuf,
    /// Its size.
    pub(crate) size: u64,
}

/// Finds sources for `job.id` and downloads it, resuming what is
/// verified on disk. See the module documentation for today's stand-in.
pub(crate) async fn fetch(leaf: &LeafHandle, job: FetchJob) -> Result<Fetched, FetchError> {
    let cancel = job.cancel.clone();
    tokio::select! {
        result = fetch_inner(leaf, job) => result,
        () = cancel.cancelled() => Err(FetchError::Cancelled),
    }
}

async fn fetch_inner(leaf: &LeafHandle, job: FetchJob) -> Result<Fetched, FetchError> {
    let FetchJob {
        id,
        size,
        target,
        progress,
        ..
    } = job;
    let result = find_sources(leaf, id, size).await?;
    let name = result.name.clone();
    let sources: Vec<DownloadSource> = result
        .sources
        .iter()
        .filter(|source| !source.firewalled)
        .map(|source| {
            let connector: Arc<dyn Connector> =
                Arc::new(DirectConnector::new(source.addr, DIAL_TIMEOUT));
            DownloadSource {
                label: source.addr.to_string(),
                connector,
            }
        })
        .collect();
    if sources.is_empty() {
        return Err(FetchError::Failed {
            reason: "only firewalled sources, not reached yet".into(),
            retryable: true,
        });
    }
    let path = target(name.clone(), Some(result.size)).await?;
    let known = result.sources.len();
    let reporter = progress.clone();
    let report = download::download(
        sources,
        DownloadOptions {
            content_id: id,
            size: result.size,
            target: path,
            force: false,
            config: DownloadConfig::default(),
            progress: Some(Arc::new(move |p: download::Progress| {
                // The first report, before any transfer, holds the bytes
                // found verified on disk.
                reporter(&FetchProgress {
                    name: Some(name.clone()),
                    size: Some(p.total),
                    verified_bytes: p.verified_bytes,
                    known_sources: known,
                    active_sources: p.active_sources,
                });
            })),
        },
    )
    .await
    .map_err(FetchError::from_download)?;
    Ok(Fetched {
        path: report.path,
        size: report.size,
    })
}

/// Searches until a source answers (waiting longer each time none does).
async fn find_sources(
    leaf: &LeafHandle,
    id: ContentId,
    size: Option<u64>,
) -> Result<SearchResult, FetchError> {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(250);
    loop {
        if leaf.wait_connected(DIAL_TIMEOUT).await.is_ok() {
            let request = SearchRequest::content(id, 4, SOURCE_SEARCH_TIMEOUT);
            match leaf.search(request).await {
                Ok(found) => {
                    let sized = size.and_then(|size| {
                        found
                            .results
                            .iter()
                            .find(|r| r.content_id == id && r.size == size)
                    });
                    if let Some(result) = sized.or_else(|| most_agreed(&found.results, id)) {
                        return Ok(result.clone());
                    }
                }
                Err(error) => tracing::debug!(%error, "source search failed"),
            }
        }
        if started.elapsed() >= GIVE_UP_WITHOUT_SOURCES {
            return Err(FetchError::Failed {
                reason: "no source found".into(),
                retryable: true,
            });
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_SOURCE_WAIT);
    }
}

/// Where `id` is shared from, if it is.
pub(crate) fn shared_path(leaf: &LeafHandle, id: &ContentId) -> Option<PathBuf> {
    leaf.server().catalog().get(id).map(|entry| entry.path)
}

/// How many files are shared.
pub(crate) fn shared_files(leaf: &LeafHandle) -> usize {
    leaf.server().catalog().len()
}

/// Shares `path` (a finished download in a shared folder) at once.
/// Returns whether it is shared now (else at the next rescan).
pub(crate) async fn share_file(_leaf: &LeafHandle, path: &Path) -> bool {
    tracing::debug!(path = %path.display(), "shared at the next rescan");
    false
}

/// The shared folders and what they hold.
pub(crate) fn share_folders(_leaf: &LeafHandle, folders: &[PathBuf]) -> Vec<ShareFolder> {
    folders
        .iter()
        .map(|folder| ShareFolder {
            path: folder.display().to_string(),
            files: 0,
            bytes: 0,
        })
        .collect()
}

/// Shares one more folder.
pub(crate) async fn add_share(_leaf: &LeafHandle, _folder: &Path) -> Result<(), ApiError> {
    Err(ApiError::Unavailable(
        "adding a shared folder while running is not available yet; add it to the configuration and restart".into(),
    ))
}

/// Stops sharing a folder.
pub(crate) async fn remove_share(_leaf: &LeafHandle, _folder: &Path) -> Result<(), ApiError> {
    Err(ApiError::Unavailable(
        "removing a shared folder while running is not available yet; remove it from the configuration and restart".into(),
    ))
}

/// Rescans the shared folders now.
pub(crate) async fn rescan(_leaf: &LeafHandle) {}

/// Uploads running now.
pub(crate) fn uploads(_leaf: &LeafHandle) -> Vec<UploadView> {
    Vec::new()
}

/// Uploads running now, counted.
pub(crate) fn uploads_active(leaf: &LeafHandle) -> usize {
    leaf.server().uploads_in_progress()
}

/// Bytes served since start.
pub(crate) fn uploaded_bytes(leaf: &LeafHandle) -> u64 {
    leaf.server()
        .stats()
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Applies the upload rate limit (bytes a second, 0 unlimited).
pub(crate) fn set_upload_rate(_leaf: &LeafHandle, _bytes_per_sec: u64) {}

/// Applies the download rate limit (bytes a second, 0 unlimited).
pub(crate) fn set_download_rate(_leaf: &LeafHandle, _bytes_per_sec: u64) {}

/// Applies the number of upload slots.
pub(crate) fn set_upload_slots(_leaf: &LeafHandle, _slots: usize) {}

/// The control token, for the URL printed at start-up; `None` until the
/// API layer provides it.
pub(crate) fn load_token(_data_dir: &Path) -> std::io::Result<Option<String>> {
    Ok(None)
}

/// Serves the control API on `listener` until `shutdown`.
pub(crate) async fn serve_api<C: crate::control::Control>(
    _control: Arc<C>,
    listener: TcpListener,
    _data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(?addr, "control port held; the API is not served yet");
    shutdown.cancelled().await;
    drop(listener);
}
