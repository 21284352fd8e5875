//! What the control API can ask of a running leaf. The HTTP layer
//! (`api`) is generic over [`Control`]; the daemon implements it, and the
//! API's tests use a fake. Every method validates its input and says what
//! was wrong through [`ApiError`], which the HTTP layer turns into a status
//! and a JSON body naming the field.

use std::future::Future;

use tokio::sync::watch;

use crate::model::{
    AddDownload, ApiError, DownloadView, SearchSpec, SearchView, Settings, SettingsPatch,
    SharesView, Status, UploadView,
};

/// The daemon as the API sees it. Content ids arrive as the 64 hex
/// characters of the URL and are checked by the implementation.
pub trait Control: Send + Sync + 'static {
    /// What the leaf is doing.
    fn status(&self) -> impl Future<Output = Status> + Send;

    /// Starts a search; its results stream through [`Control::watch_search`].
    fn start_search(
        &self,
        spec: SearchSpec,
    ) -> impl Future<Output = Result<SearchView, ApiError>> + Send;
    /// Follows a search as results arrive; `None` for an unknown id (or one
    /// forgotten: only the latest searches are kept).
    fn watch_search(&self, id: &str) -> Option<watch::Receiver<SearchView>>;
    /// Stops and forgets a search; false if unknown.
    fn forget_search(&self, id: &str) -> bool;

    /// Every download in the queue, in queue order.
    fn downloads(&self) -> Vec<DownloadView>;
    /// One download; `ApiError::NotFound` if not in the queue.
    fn download(&self, id: &str) -> Result<DownloadView, ApiError>;
    /// Queues a download. `Ok((view, true))` if added, `(view, false)` if
    /// that content was already in the queue.
    fn add_download(
        &self,
        add: AddDownload,
    ) -> impl Future<Output = Result<(DownloadView, bool), ApiError>> + Send;
    /// Pauses a download (its verified bytes are kept).
    fn pause(&self, id: &str) -> Result<DownloadView, ApiError>;
    /// Resumes a paused or failed download.
    fn resume(&self, id: &str) -> Result<DownloadView, ApiError>;
    /// Changes a download's priority (higher starts first).
    fn set_priority(&self, id: &str, priority: i32) -> Result<DownloadView, ApiError>;
    /// Cancels a download and removes it from the queue (its partial file
    /// too; a finished file is never removed).
    fn cancel(&self, id: &str) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Uploads running now.
    fn uploads(&self) -> Vec<UploadView>;

    /// The shared folders.
    fn shares(&self) -> SharesView;
    /// Shares one more folder (scanned at once).
    fn add_share(&self, path: String) -> impl Future<Output = Result<SharesView, ApiError>> + Send;
    /// Stops sharing a folder.
    fn remove_share(
        &self,
        path: String,
    ) -> impl Future<Output = Result<SharesView, ApiError>> + Send;
    /// Rescans every shared folder now.
    fn rescan(&self) -> impl Future<Output = SharesView> + Send;

    /// The live settings.
    fn settings(&self) -> Settings;
    /// Changes live settings; fields left out keep their values.
    fn update_settings(
        &self,
        patch: SettingsPatch,
    ) -> impl Future<Output = Result<Settings, ApiError>> + Send;
}
