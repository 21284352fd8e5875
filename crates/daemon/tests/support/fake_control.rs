//! A fake daemon behind the control API, for the API's tests and for the
//! `fake_api` example that schemathesis runs against: an in-memory queue,
//! shares and settings, bounded like the real daemon's, and searches that
//! either find a few results by themselves (`auto`) or are driven by the
//! test through [`FakeControl::publish`].

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use canopy_daemon::control::Control;
use canopy_daemon::model::{
    AddDownload, ApiError, DownloadState, DownloadView, LanNeighbour, PublicAddr, Reachability,
    ResultView, SearchSpec, SearchView, Settings, SettingsPatch, ShareFolder, SharesView, Status,
    Totals, UploadView,
};
use tokio::sync::watch;

/// Searches kept.
const MAX_SEARCHES: usize = 32;
/// Downloads queued at most.
const MAX_DOWNLOADS: usize = 1000;
/// Folders shared at most.
const MAX_FOLDERS: usize = 100;

/// A fake daemon.
#[derive(Debug)]
pub struct FakeControl {
    auto: bool,
    state: Mutex<State>,
    next_search: AtomicU64,
    /// Searches started (a request refused before reaching the daemon
    /// does not count).
    pub searches_started: AtomicUsize,
    /// Calls that changed something.
    pub changes: AtomicUsize,
}

#[derive(Debug)]
struct State {
    searches: VecDeque<(String, watch::Sender<SearchView>)>,
    downloads: Vec<DownloadView>,
    folders: Vec<ShareFolder>,
    settings: Settings,
}

/// A content id made of one repeated hex digit.
pub fn content_id(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

/// A result as the fake finds it.
pub fn result(digit: char, name: &str, sources: usize) -> ResultView {
    let id = content_id(digit);
    ResultView {
        link: format!("canopy:{id}?name={name}&size=1000"),
        content_id: id,
        name: name.to_owned(),
        names: vec![name.to_owned()],
        size: 1000,
        sources,
        firewalled_sources: 0,
    }
}

impl FakeControl {
    /// A fake whose searches find results by themselves if `auto`.
    pub fn new(auto: bool) -> Self {
        Self {
            auto,
            state: Mutex::new(State {
                searches: VecDeque::new(),
                downloads: Vec::new(),
                folders: vec![ShareFolder {
                    path: "/srv/music".into(),
                    files: 3,
                    bytes: 3000,
                }],
                settings: Settings {
                    upload_rate_limit: 0,
                    download_rate_limit: 0,
                    upload_slots: 8,
                    max_active_downloads: 3,
                },
            }),
            next_search: AtomicU64::new(1),
            searches_started: AtomicUsize::new(0),
            changes: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces search `id`'s view (the test drives the search).
    pub fn publish(&self, id: &str, view: SearchView) -> bool {
        let state = self.state();
        match state.searches.iter().find(|(known, _)| known == id) {
            Some((_, sender)) => sender.send(view).is_ok(),
            None => false,
        }
    }

    /// Streams following search `id` now.
    pub fn watchers(&self, id: &str) -> usize {
        let state = self.state();
        state
            .searches
            .iter()
            .find(|(known, _)| known == id)
            .map_or(0, |(_, sender)| sender.receiver_count())
    }

    fn touched(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn shares_of(state: &State) -> SharesView {
        SharesView {
            files: state.folders.iter().map(|f| f.files).sum(),
            bytes: state.folders.iter().map(|f| f.bytes).sum(),
            folders: state.folders.clone(),
            downloads_dir: "/home/user/Downloads".into(),
            scanning: false,
        }
    }

    fn with_download<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut DownloadView) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let id = id.to_ascii_lowercase();
        let mut state = self.state();
        let download = state
            .downloads
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| ApiError::NotFound(format!("no download {id} in the queue")))?;
        change(download)
    }
}

impl Control for FakeControl {
    async fn status(&self) -> Status {
        let state = self.state();
        let count =
            |wanted: DownloadState| state.downloads.iter().filter(|d| d.state == wanted).count();
        let shares = Self::shares_of(&state);
        Status {
            node_id: content_id('7'),
            version: "canopy/0.1.0".into(),
            listen: Some("127.0.0.1:6346".into()),
            observed_addr: None,
            supernodes: vec!["127.0.0.1:6346".into()],
            shared_files: shares.files,
            shared_bytes: shares.bytes,
            downloads_dir: shares.downloads_dir,
            totals: Totals {
                uploaded_bytes: 10,
                downloaded_bytes: 20,
                upload_rate: 0,
                download_rate: 0,
                uploads_active: 1,
                downloads_active: count(DownloadState::Active),
                downloads_queued: count(DownloadState::Queued),
            },
            lan_peers: vec![LanNeighbour {
                node_id: "ab".repeat(16),
                role: "supernode".into(),
                addr: "192.168.1.2:6346".into(),
            }],
            reachability: Reachability {
                reachable: "yes".into(),
                nat: "endpoint_independent_port_preserving".into(),
                public_addrs: vec![PublicAddr {
                    ip: "203.0.113.7".into(),
                    confirmed: true,
                }],
                announced: Some("203.0.113.7:6346".into()),
            },
        }
    }

    async fn start_search(&self, spec: SearchSpec) -> Result<SearchView, ApiError> {
        let query = match (spec.query, spec.id) {
            (Some(query), None) => query,
            (None, Some(id)) => id,
            _ => return Err(ApiError::field("query", "give a query or an id")),
        };
        let id = format!("s{}", self.next_search.fetch_add(1, Ordering::Relaxed));
        let view = SearchView {
            id: id.clone(),
            query,
            ..SearchView::default()
        };
        let (sender, _) = watch::channel(view.clone());
        if self.auto {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut view = sender.borrow().clone();
                for (step, digit) in ['a', 'b', 'c'].into_iter().enumerate() {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    view.hits += 1;
                    view.elapsed_ms = 40 * (step as u64 + 1);
                    view.results
                        .push(result(digit, &format!("song {step}.mp3"), 1));
                    if sender.send(view.clone()).is_err() {
                        return;
                    }
                }
                view.done = true;
                let _ = sender.send(view);
            });
        }
        let mut state = self.state();
        if state.searches.len() == MAX_SEARCHES {
            state.searches.pop_front();
        }
        state.searches.push_back((id, sender));
        self.searches_started.fetch_add(1, Ordering::Relaxed);
        Ok(view)
    }

    fn watch_search(&self, id: &str) -> Option<watch::Receiver<SearchView>> {
        let state = self.state();
        state
            .searches
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, sender)| sender.subscribe())
    }

    fn forget_search(&self, id: &str) -> bool {
        let mut state = self.state();
        let before = state.searches.len();
        state.searches.retain(|(known, _)| known != id);
        state.searches.len() != before
    }

    fn downloads(&self) -> Vec<DownloadView> {
        self.state().downloads.clone()
    }

    fn download(&self, id: &str) -> Result<DownloadView, ApiError> {
        self.with_download(id, |d| Ok(d.clone()))
    }

    async fn add_download(&self, add: AddDownload) -> Result<(DownloadView, bool), ApiError> {
        let (id, link_name) = match (&add.id, &add.link) {
            (Some(id), None) => (id.to_ascii_lowercase(), None),
            (None, Some(link)) => {
                let rest = link.strip_prefix("canopy:").unwrap_or_default();
                let (id, query) = rest.split_once('?').unwrap_or((rest, ""));
                if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::field("link", "no content id in the link"));
                }
                let name = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("name="))
                    .map(str::to_owned);
                (id.to_ascii_lowercase(), name)
            }
            _ => return Err(ApiError::field("id", "give an id or a link")),
        };
        let mut state = self.state();
        if let Some(existing) = state.downloads.iter().find(|d| d.id == id) {
            return Ok((existing.clone(), false));
        }
        if state.downloads.len() >= MAX_DOWNLOADS {
            return Err(ApiError::Conflict("the queue is full".into()));
        }
        let view = DownloadView {
            name: add
                .name
                .or(link_name)
                .unwrap_or_else(|| format!("{}.bin", &id[..8])),
            id,
            size: None,
            state: DownloadState::Queued,
            verified_bytes: 0,
            rate: 0,
            eta_secs: None,
            sources: 0,
            active_sources: 0,
            paths: Vec::new(),
            priority: add.priority.unwrap_or(0),
            path: None,
            error: None,
            added_at: 1_700_000_000,
            finished_at: None,
        };
        state.downloads.push(view.clone());
        self.touched();
        Ok((view, true))
    }

    fn pause(&self, id: &str) -> Result<DownloadView, ApiError> {
        self.with_download(id, |d| match d.state {
            DownloadState::Queued | DownloadState::Active | DownloadState::Paused => {
                d.state = DownloadState::Paused;
                Ok(d.clone())
            }
            _ => Err(ApiError::Conflict(format!("{} is finished", d.id))),
        })
    }

    fn resume(&self, id: &str) -> Result<DownloadView, ApiError> {
        self.with_download(id, |d| match d.state {
            DownloadState::Paused | DownloadState::Failed | DownloadState::Queued => {
                d.state = DownloadState::Queued;
                Ok(d.clone())
            }
            _ => Err(ApiError::Conflict(format!("{} is not paused", d.id))),
        })
    }

    fn set_priority(&self, id: &str, priority: i32) -> Result<DownloadView, ApiError> {
        self.with_download(id, |d| {
            d.priority = priority;
            Ok(d.clone())
        })
    }

    async fn cancel(&self, id: &str) -> Result<(), ApiError> {
        let id = id.to_ascii_lowercase();
        let mut state = self.state();
        let before = state.downloads.len();
        state.downloads.retain(|d| d.id != id);
        if state.downloads.len() == before {
            return Err(ApiError::NotFound(format!("no download {id} in the queue")));
        }
        self.touched();
        Ok(())
    }

    fn uploads(&self) -> Vec<UploadView> {
        vec![UploadView {
            peer: "127.0.0.1:40000".into(),
            content_id: content_id('5'),
            name: "song.mp3".into(),
            bytes: 500,
            length: 1000,
            rate: 250,
            started_at: 1_700_000_000,
        }]
    }

    fn shares(&self) -> SharesView {
        Self::shares_of(&self.state())
    }

    async fn add_share(&self, path: String) -> Result<SharesView, ApiError> {
        if !path.starts_with('/') {
            return Err(ApiError::field("path", "not an absolute path"));
        }
        let mut state = self.state();
        if !state.folders.iter().any(|f| f.path == path) {
            if state.folders.len() >= MAX_FOLDERS {
                return Err(ApiError::Conflict("too many shared folders".into()));
            }
            state.folders.push(ShareFolder {
                path,
                files: 0,
                bytes: 0,
            });
        }
        self.touched();
        Ok(Self::shares_of(&state))
    }

    async fn remove_share(&self, path: String) -> Result<SharesView, ApiError> {
        let mut state = self.state();
        let before = state.folders.len();
        state.folders.retain(|f| f.path != path);
        if state.folders.len() == before {
            return Err(ApiError::NotFound(format!("{path} is not shared")));
        }
        self.touched();
        Ok(Self::shares_of(&state))
    }

    async fn rescan(&self) -> SharesView {
        let mut shares = Self::shares_of(&self.state());
        shares.scanning = true;
        shares
    }

    fn settings(&self) -> Settings {
        self.state().settings
    }

    async fn update_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        let mut state = self.state();
        let settings = &mut state.settings;
        if let Some(rate) = patch.upload_rate_limit {
            settings.upload_rate_limit = rate;
        }
        if let Some(rate) = patch.download_rate_limit {
            settings.download_rate_limit = rate;
        }
        if let Some(slots) = patch.upload_slots {
            settings.upload_slots = slots;
        }
        if let Some(active) = patch.max_active_downloads {
            settings.max_active_downloads = active;
        }
        self.touched();
        Ok(*settings)
    }
}
