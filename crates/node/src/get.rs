//! `canopy get` without a running leaf: a short-lived leaf joins the
//! supernode and [`crate::fetch::fetch`] does the rest (the download starts
//! on the first source that answers; see there). The report's times count
//! from the start, joining the supernode included. While it runs, the
//! leaf serves what it has verified to other downloaders (on
//! [`GetOptions::listen`]), like any downloading leaf.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use canopy_core::download::DownloadConfig;
use canopy_proto::ContentId;
use canopy_transfer::download::DownloadReport;
use tokio_util::sync::CancellationToken;

use crate::NodeError;
use crate::fetch::{self, FetchProgressFn, FetchRequest, FetchTarget};
use crate::leaf::{self, LeafOptions};

/// How long joining the supernode may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to get.
#[derive(Clone)]
pub struct GetOptions {
    /// The supernodes to ask (tried in turn until one accepts us).
    pub supernodes: Vec<SocketAddr>,
    /// The content.
    pub content_id: ContentId,
    /// Where to save: see [`GetOptions::target`].
    pub output: Option<PathBuf>,
    /// The name to save under, if known (made safe).
    pub name: Option<String>,
    /// The size, if known.
    pub size: Option<u64>,
    /// Replace an existing file.
    pub force: bool,
    /// How long each search for sources runs (the download starts on the
    /// first source; it does not wait for the search to end).
    pub search_timeout: Duration,
    /// How far the search may travel.
    pub ttl: u8,
    /// Download tunables.
    pub config: DownloadConfig,
    /// Progress reports.
    pub progress: Option<FetchProgressFn>,
    /// Stops the download, keeping the partial (a pause).
    pub cancel: CancellationToken,
    /// Where the short-lived leaf serves what it has verified so far to
    /// other downloaders while it runs (port 0: any); `None` serves
    /// nothing (other downloaders can't reach it).
    pub listen: Option<SocketAddr>,
}

impl std::fmt::Debug for GetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetOptions")
            .field("supernodes", &self.supernodes)
            .field("content_id", &self.content_id)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl GetOptions {
    /// Defaults for getting `content_id` through `supernode`.
    pub fn new(supernode: SocketAddr, content_id: ContentId) -> Self {
        Self {
            supernodes: vec![supernode],
            content_id,
            output: None,
            name: None,
            size: None,
            force: false,
            search_timeout: Duration::from_secs(5),
            ttl: canopy_core::supernode::DEFAULT_TTL_CAP,
            config: DownloadConfig::default(),
            progress: None,
            cancel: CancellationToken::new(),
            listen: Some(canopy_transfer::listen::any_dual_stack(0)),
        }
    }

    /// Where `output` says to save: an existing directory, or a path
    /// ending in `/`, is a folder to save into (created if missing);
    /// anything else is the file itself; nothing is the current folder.
    pub fn target(&self) -> FetchTarget {
        match &self.output {
            None => FetchTarget::Dir(PathBuf::from(".")),
            Some(path) if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') => {
                FetchTarget::Dir(path.clone())
            }
            Some(path) => FetchTarget::File(path.clone()),
        }
    }
}

/// Joins the supernode and fetches. See the module documentation.
pub async fn get(options: GetOptions) -> Result<DownloadReport, NodeError> {
    let target = options.target();
    if let FetchTarget::File(path) = &target {
        // A file in a folder that is not there yet: make the folder.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| {
                NodeError::Download(canopy_transfer::download::DownloadError::Io {
                    path: parent.to_owned(),
                    source,
                })
            })?;
        }
    }
    let request = FetchRequest {
        content_id: options.content_id,
        size: options.size,
        name: options.name.clone(),
        target,
        force: options.force,
        config: options.config.clone(),
        progress: options.progress.clone(),
        cancel: options.cancel.clone(),
        search_timeout: options.search_timeout,
        ttl: options.ttl,
        // The short-lived leaf stops when the download ends: nothing to
        // share it from.
        share_when_done: false,
    };
    let started = Instant::now();
    let first = *options
        .supernodes
        .first()
        .ok_or_else(|| NodeError::NotConnected("no supernode to ask".into()))?;
    let mut leaf_options = LeafOptions::new(first);
    leaf_options.supernodes.clone_from(&options.supernodes);
    // Every downloader is a source: what it has verified is served while
    // it runs (the fetch publishes it as a partial file).
    leaf_options.listen = options.listen;
    // A one-shot download doesn't wait on the home router to start, nor
    // leave a mapping behind for each run.
    leaf_options.port_mapping = None;
    let leaf = leaf::start(leaf_options).await?;
    let outcome = async {
        leaf.wait_connected(JOIN_TIMEOUT).await?;
        let joined = started.elapsed();
        let mut report = fetch::fetch(&leaf, request).await?;
        // From the start of `get`: joining the supernode included.
        report.first_byte = report.first_byte.map(|d| d + joined);
        report.elapsed = started.elapsed();
        Ok(report)
    }
    .await;
    leaf.shutdown().await;
    outcome
}
