//! The one place the daemon calls into the leaf, the fetch, the file
//! server and the HTTP layer: live searches (`LeafHandle::search_live`),
//! fetches (`canopy_node::fetch`, through the leaf's download limit),
//! shares (`share_file`, `add_share`, `share_summary`...), uploads and
//! upload limits (`ContentServer`), and the API (`api::serve`, `Token`).
//! Everything else in the daemon goes through these few functions.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use canopy_core::leaf::SearchRequest;
use canopy_core::search::SearchResult;
use canopy_node::NodeError;
use canopy_node::fetch::{self, FetchRequest, FetchTarget};
use canopy_node::leaf::{LeafHandle, ShareSummary};
use canopy_proto::ContentId;
use canopy_transfer::download::DownloadError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Token};
use crate::model::{ApiError, ShareFolder, SharesView, UploadView};

pub(crate) use canopy_node::leaf::LiveSearch;

/// How long a search for a download's name, and each of the fetch's
/// searches for sources, gathers hits.
const SOURCE_SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch waits for the leaf to join a supernode.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How far a fetch's searches travel.
const SEARCH_TTL: u8 = canopy_core::supernode::DEFAULT_TTL_CAP;

/// Starts a search whose results come as they arrive.
pub(crate) async fn search_live(
    leaf: &LeafHandle,
    request: SearchRequest,
) -> Result<LiveSearch, NodeError> {
    leaf.search_live(request).await
}

/// The names sources give a result, most common first (at most 8).
pub(crate) fn result_names(result: &SearchResult) -> Vec<String> {
    result.names.clone()
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

/// Picks the file to save to once the name (and perhaps the size) is
/// known, or says the content is already here.
pub(crate) type TargetFn =
    Box<dyn FnOnce(String, Option<u64>) -> BoxFuture<Result<PathBuf, FetchError>> + Send>;

/// One download to run.
pub(crate) struct FetchJob {
    /// The content.
    pub(crate) id: ContentId,
    /// Its size, if known beforehand (a link): only sources claiming it
    /// are used.
    pub(crate) size: Option<u64>,
    /// The name to save under, if known; else the sources' is looked up.
    pub(crate) name: Option<String>,
    /// Where to save it.
    pub(crate) target: TargetFn,
    /// Progress reports.
    pub(crate) progress: ProgressFn,
    /// Stops the fetch, keeping what is verified (a pause).
    pub(crate) cancel: CancellationToken,
    /// The finished file will be shared ([`finish_sharing`] is called
    /// with `share` true): served from where it lands at once, its partial
    /// file published until then.
    pub(crate) share_when_done: bool,
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
    fn retry(reason: impl Into<String>) -> Self {
        FetchError::Failed {
            reason: reason.into(),
            retryable: true,
        }
    }

    fn from_node(error: NodeError) -> Self {
        let retryable = match &error {
            NodeError::Download(DownloadError::Cancelled) | NodeError::Stopped => {
                return FetchError::Cancelled;
            }
            NodeError::NotFound(_) => return FetchError::retry("no source found"),
            NodeError::Download(
                DownloadError::NoSources
                | DownloadError::AllSourcesFailed(_)
                | DownloadError::Locked(_),
            )
            | NodeError::NotConnected(_)
            | NodeError::Search(_) => true,
            _ => false,
        };
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
    /// Per source, the ways its connections were made ("direct", "push",
    /// "hole punch", "relay").
    pub(crate) paths: std::collections::BTreeMap<String, Vec<String>>,
}

/// Stops publishing `id` as a partial file (a stopped download's).
pub(crate) async fn unshare_partial(leaf: &LeafHandle, id: ContentId) {
    leaf.unshare_partial(id).await;
}

/// Looks up the name if it is not known, has `job.target` choose the file,
/// and fetches into it, resuming what is verified on disk.
pub(crate) async fn fetch(leaf: &LeafHandle, job: FetchJob) -> Result<Fetched, FetchError> {
    let cancel = job.cancel.clone();
    tokio::select! {
        result = fetch_inner(leaf, job) => result,
        () = cancel.cancelled() => Err(FetchError::Cancelled),
    }
}

async fn fetch_inner(leaf: &LeafHandle, job: FetchJob) -> Result<Fetched, FetchError> {
    leaf.wait_connected(JOIN_TIMEOUT)
        .await
        .map_err(FetchError::from_node)?;
    let (name, size) = match job.name {
        Some(name) => (name, job.size),
        None => first_result(leaf, job.id, job.size).await?,
    };
    let path = (job.target)(name, size).await?;
    let mut request = FetchRequest::new(job.id, FetchTarget::File(path));
    request.size = job.size;
    request.cancel = job.cancel.clone();
    request.search_timeout = SOURCE_SEARCH_TIMEOUT;
    request.ttl = SEARCH_TTL;
    request.share_when_done = job.share_when_done;
    let progress = job.progress.clone();
    request.progress = Some(Arc::new(move |p: &fetch::FetchProgress| {
        progress(&FetchProgress {
            name: p.name.clone(),
            size: p.size,
            verified_bytes: p.verified_bytes,
            known_sources: p.known_sources,
            active_sources: p.active_sources,
        });
    }));
    let report = fetch::fetch(leaf, request)
        .await
        .map_err(FetchError::from_node)?;
    let paths = report
        .paths_per_source()
        .into_iter()
        .map(|(source, paths)| (source, paths.iter().map(ToString::to_string).collect()))
        .collect();
    Ok(Fetched {
        path: report.path,
        size: report.size,
        paths,
    })
}

/// The name and size most sources give `id` (of `size`, if given), from
/// the first search results that have it.
async fn first_result(
    leaf: &LeafHandle,
    id: ContentId,
    size: Option<u64>,
) -> Result<(String, Option<u64>), FetchError> {
    let request = SearchRequest::content(id, SEARCH_TTL, SOURCE_SEARCH_TIMEOUT);
    let mut live = leaf
        .search_live(request)
        .await
        .map_err(FetchError::from_node)?;
    loop {
        {
            let snapshot = live.updates.borrow_and_update();
            let best = snapshot
                .results
                .iter()
                .filter(|r| r.content_id == id && size.is_none_or(|s| s == r.size))
                .max_by_key(|r| r.sources.len());
            if let Some(result) = best {
                return Ok((result.name.clone(), Some(result.size)));
            }
            if snapshot.done {
                return Err(FetchError::retry("no source found"));
            }
        }
        if live.updates.changed().await.is_err() {
            return Err(FetchError::retry("the connection to the supernode ended"));
        }
    }
}

/// Where `id` is shared from, if it is.
pub(crate) fn shared_path(leaf: &LeafHandle, id: &ContentId) -> Option<PathBuf> {
    leaf.catalog().get(id).map(|entry| entry.path)
}

/// Shares `path` (a finished download in a shared folder) at once.
pub(crate) async fn share_file(leaf: &LeafHandle, path: &Path) {
    if let Err(error) = leaf.share_file(path.to_owned()).await {
        tracing::warn!(path = %path.display(), %error, "cannot share the download");
    }
}

/// After a download of `id` to `path` ended (however it ended): shares the
/// file if `share`, then stops publishing the download's partial file (so
/// a shared one goes from partial to whole with no gap). A file not shared
/// after all (its folder was unshared meanwhile) is no longer served.
pub(crate) async fn finish_sharing(
    leaf: &LeafHandle,
    id: ContentId,
    path: Option<&Path>,
    share: bool,
) {
    match path {
        Some(path) if share => share_file(leaf, path).await,
        // The download served it from there once it was complete.
        Some(path)
            if leaf
                .catalog()
                .get(&id)
                .is_some_and(|entry| entry.path == path) =>
        {
            leaf.catalog().remove(&id);
        }
        _ => {}
    }
    leaf.unshare_partial(id).await;
}

/// The shared folders and what they hold.
pub(crate) fn shares(leaf: &LeafHandle, downloads_dir: &Path) -> SharesView {
    shares_view(&leaf.share_summary(), downloads_dir)
}

fn shares_view(summary: &ShareSummary, downloads_dir: &Path) -> SharesView {
    SharesView {
        folders: summary
            .folders
            .iter()
            .map(|folder| ShareFolder {
                path: folder.path.display().to_string(),
                files: folder.files,
                bytes: folder.bytes,
            })
            .collect(),
        downloads_dir: downloads_dir.display().to_string(),
        files: summary.files,
        bytes: summary.bytes,
        scanning: summary.scanning,
    }
}

fn share_error(error: NodeError) -> ApiError {
    match error {
        NodeError::Share(error) => ApiError::field("path", error.to_string()),
        NodeError::Stopped => ApiError::Unavailable("the leaf is stopping".into()),
        NodeError::NotShared(_) => ApiError::NotFound(error.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// Shares one more folder (scanned at once).
pub(crate) async fn add_share(leaf: &LeafHandle, folder: &Path) -> Result<(), ApiError> {
    leaf.add_share(folder.to_owned())
        .await
        .map(drop)
        .map_err(share_error)
}

/// Stops sharing a folder.
pub(crate) async fn remove_share(leaf: &LeafHandle, folder: &Path) -> Result<(), ApiError> {
    leaf.remove_share(folder.to_owned())
        .await
        .map(drop)
        .map_err(share_error)
}

/// Starts a rescan of the shared folders and returns at once, with a
/// view saying a scan is running.
pub(crate) fn rescan(leaf: &LeafHandle, downloads_dir: &Path) -> SharesView {
    shares_view(&leaf.rescan_in_background(), downloads_dir)
}

/// Uploads running now.
pub(crate) fn uploads(leaf: &LeafHandle) -> Vec<UploadView> {
    leaf.server()
        .uploads()
        .into_iter()
        .map(|upload| UploadView {
            peer: upload.peer.to_string(),
            content_id: upload.content_id.to_hex(),
            name: upload
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: upload.bytes,
            length: upload.length,
            rate: upload.rate,
            started_at: upload
                .started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
        .collect()
}

/// Uploads running now, counted.
pub(crate) fn uploads_active(leaf: &LeafHandle) -> usize {
    leaf.server().uploads_in_progress()
}

/// Bytes served since start.
pub(crate) fn uploaded_bytes(leaf: &LeafHandle) -> u64 {
    leaf.server().uploaded_bytes()
}

/// Applies the download rate limit (bytes a second, 0 unlimited), live.
pub(crate) fn set_download_rate(leaf: &LeafHandle, bytes_per_sec: u64) {
    leaf.download_limit().set_rate(bytes_per_sec);
}

/// Bytes downloaded since start (received through the download limit:
/// files, trees and HTTP heads).
pub(crate) fn downloaded_bytes(leaf: &LeafHandle) -> u64 {
    leaf.download_limit().transferred()
}

/// Applies the upload rate limit (bytes a second, 0 unlimited), live.
pub(crate) fn set_upload_rate(leaf: &LeafHandle, bytes_per_sec: u64) {
    leaf.server().upload_limit().set_rate(bytes_per_sec);
}

/// Applies the number of upload slots, live.
pub(crate) fn set_upload_slots(leaf: &LeafHandle, slots: usize) {
    leaf.server().set_upload_slots(slots);
}

/// The control token (created at the first start).
pub(crate) fn load_token(data_dir: &Path) -> std::io::Result<Token> {
    Token::load_or_create(data_dir)
}

/// Serves the control API on `listener` until `shutdown`.
pub(crate) async fn serve_api<C: crate::control::Control>(
    control: Arc<C>,
    listener: TcpListener,
    token: Token,
    shutdown: CancellationToken,
) {
    api::serve(control, listener, token, shutdown).await;
}
