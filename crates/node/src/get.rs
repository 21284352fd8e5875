//! `canopy get`: find the sources of a content id through the overlay and
//! download it from all of them at once.
//!
//! A short-lived leaf joins the supernode, searches by content id, and
//! stays connected for the download so it can send pushes. Sources that
//! accept connections are dialed; firewalled ones are asked, by push, to
//! connect back to a callback port this command listens on.
//!
//! The hits are peers' claims: of the sizes claimed for the id, the one
//! most sources agree on is downloaded (the tree proves it or not), the
//! sources are tried in random order (so no source is first by where its
//! hit came from), and the name is made safe before a file is saved under
//! it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_core::download::DownloadConfig;
use canopy_core::leaf::SearchRequest;
use canopy_core::save_name::safe_file_name;
use canopy_core::search::most_agreed;
use canopy_proto::ContentId;
use canopy_transfer::client::{Connector, DirectConnector};
use canopy_transfer::download::{
    self, DownloadOptions, DownloadReport, DownloadSource, ProgressFn,
};
use canopy_transfer::push::{CallbackListener, PushConnector, PushRequester};
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeError;
use crate::leaf::{self, LeafOptions};

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// What to get.
#[derive(Clone)]
pub struct GetOptions {
    /// The supernode to ask.
    pub supernode: SocketAddr,
    /// The content.
    pub content_id: ContentId,
    /// The file to write, or a directory to write it into under its name
    /// (made safe: see `canopy_core::save_name`); the current directory if
    /// `None`.
    pub output: Option<PathBuf>,
    /// Replace an existing file.
    pub force: bool,
    /// How long to gather sources.
    pub search_timeout: Duration,
    /// How far the search may travel.
    pub ttl: u8,
    /// Download tunables.
    pub config: DownloadConfig,
    /// Progress reports.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for GetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetOptions")
            .field("supernode", &self.supernode)
            .field("content_id", &self.content_id)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl GetOptions {
    /// Defaults for getting `content_id` through `supernode`.
    pub fn new(supernode: SocketAddr, content_id: ContentId) -> Self {
        Self {
            supernode,
            content_id,
            output: None,
            force: false,
            search_timeout: Duration::from_secs(2),
            ttl: canopy_core::supernode::DEFAULT_TTL_CAP,
            config: DownloadConfig::default(),
            progress: None,
        }
    }
}

/// Finds sources and downloads. See the module documentation.
pub async fn get(options: GetOptions) -> Result<DownloadReport, NodeError> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let result = run(&options, &shutdown, &tracker).await;
    shutdown.cancel();
    tracker.close();
    result
}

async fn run(
    options: &GetOptions,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<DownloadReport, NodeError> {
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let callback = CallbackListener::bind(any, shutdown.clone(), tracker)
        .await
        .map_err(|source| NodeError::Bind { addr: any, source })?;
    let mut leaf_options = LeafOptions::new(options.supernode);
    // Announce the callback port; the supernode fills in the IP it sees.
    leaf_options.advertise = Some(SocketAddr::from((
        [0, 0, 0, 0],
        callback.local_addr().port(),
    )));
    let leaf = leaf::start(leaf_options).await?;
    let outcome = async {
        leaf.wait_connected(Duration::from_secs(10)).await?;
        let request =
            SearchRequest::content(options.content_id, options.ttl, options.search_timeout);
        let found = leaf.search(request).await?;
        let mut result = most_agreed(&found.results, options.content_id)
            .cloned()
            .ok_or(NodeError::NotFound(options.content_id))?;
        result.sources.shuffle(&mut rand::rng());
        let callback_addr = match leaf.status().observed_addr {
            Some(seen) => SocketAddr::new(seen.ip(), callback.local_addr().port()),
            None => callback.local_addr(),
        };
        let pushes = leaf.push_sender();
        let sources: Vec<DownloadSource> = result
            .sources
            .iter()
            .map(|source| {
                let connector: Arc<dyn Connector> = if source.firewalled {
                    let (pushes, node, id) = (pushes.clone(), source.node_id, options.content_id);
                    let requester: PushRequester = Arc::new(move || {
                        let pushes = pushes.clone();
                        Box::pin(async move {
                            pushes
                                .push(node, id, callback_addr)
                                .await
                                .map_err(|e| std::io::Error::other(e.to_string()))
                        })
                    });
                    Arc::new(PushConnector::new(
                        node,
                        callback.clone(),
                        requester,
                        PUSH_TIMEOUT,
                    ))
                } else {
                    Arc::new(DirectConnector::new(source.addr, DIAL_TIMEOUT))
                };
                let label = if source.firewalled {
                    format!("{} (push)", source.addr)
                } else {
                    source.addr.to_string()
                };
                DownloadSource { label, connector }
            })
            .collect();
        let name = safe_file_name(&result.name, &options.content_id);
        let target = match &options.output {
            Some(path) if path.is_dir() => path.join(&name),
            Some(path) => path.clone(),
            None => PathBuf::from(&name),
        };
        let download = DownloadOptions {
            content_id: options.content_id,
            size: result.size,
            target,
            force: options.force,
            config: options.config.clone(),
            progress: options.progress.clone(),
        };
        Ok::<_, NodeError>(download::download(sources, download).await?)
    }
    .await;
    leaf.shutdown().await;
    outcome
}
