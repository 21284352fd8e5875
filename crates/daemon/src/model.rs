//! The control API's JSON types: what the daemon answers and what it
//! accepts. The HTTP server, the CLI's client and the web UI (as JSON) all
//! speak these, and `openapi.json` describes them; a change here is a
//! change of the API. Fields a client sends are validated by the daemon,
//! never trusted.

use serde::{Deserialize, Serialize};

/// `GET /api/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Our node id (64 hex).
    pub node_id: String,
    /// `canopy/<version>`.
    pub version: String,
    /// Where other peers download from us, if anywhere.
    pub listen: Option<String>,
    /// Our address as a supernode sees it.
    pub observed_addr: Option<String>,
    /// The supernodes we are attached to.
    pub supernodes: Vec<String>,
    /// Files shared and their total size.
    pub shared_files: usize,
    /// Bytes shared.
    pub shared_bytes: u64,
    /// Where downloads are saved.
    pub downloads_dir: String,
    /// Transfer totals since start.
    pub totals: Totals,
    /// Nodes heard on the LAN by LAN discovery (empty when it is off).
    #[serde(default)]
    pub lan_peers: Vec<LanNeighbour>,
    /// Whether others can connect to us, our NAT and public address.
    #[serde(default)]
    pub reachability: Reachability,
}

/// Whether other peers can connect to us, as our supernodes show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    /// `yes`, `no` or `unknown`.
    pub reachable: String,
    /// `unknown`, `none`, `endpoint_independent`,
    /// `endpoint_independent_port_preserving` or `endpoint_dependent`.
    pub nat: String,
    /// Our public IP per family, IPv4 first.
    pub public_addrs: Vec<PublicAddr>,
    /// The listening address announced to supernodes, if any.
    pub announced: Option<String>,
}

impl Default for Reachability {
    /// Nothing known yet.
    fn default() -> Self {
        Self {
            reachable: "unknown".to_owned(),
            nat: "unknown".to_owned(),
            public_addrs: Vec::new(),
            announced: None,
        }
    }
}

/// Our public IP in one family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicAddr {
    /// The IP address.
    pub ip: String,
    /// Two supernodes in different /24s (/48s) agree; false: one's word.
    pub confirmed: bool,
}

/// A node heard on the LAN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanNeighbour {
    /// Its node id (32 hex).
    pub node_id: String,
    /// `leaf` or `supernode`.
    pub role: String,
    /// Where to reach it: a supernode's overlay address, a leaf's HTTP
    /// address, or only its IP if it serves nothing.
    pub addr: String,
}

/// Transfer totals since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Bytes served to other peers.
    pub uploaded_bytes: u64,
    /// Verified bytes downloaded.
    pub downloaded_bytes: u64,
    /// Current upload rate, bytes a second.
    pub upload_rate: u64,
    /// Current download rate, bytes a second.
    pub download_rate: u64,
    /// Uploads running now.
    pub uploads_active: usize,
    /// Downloads running now.
    pub downloads_active: usize,
    /// Downloads waiting for a turn.
    pub downloads_queued: usize,
}

/// A kind of file, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// mp3, flac, ogg, ...
    Audio,
    /// mkv, mp4, avi, ...
    Video,
    /// jpg, png, ...
    Image,
    /// pdf, txt, epub, ...
    Document,
    /// zip, tar, 7z, ...
    Archive,
    /// exe, deb, iso, ...
    Software,
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// Most sources first (the default).
    #[default]
    Sources,
    /// Largest first.
    Size,
    /// By name, A to Z.
    Name,
}

/// `POST /api/searches`: words or a content id, and filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// Words that must all appear in a name.
    #[serde(default)]
    pub query: Option<String>,
    /// Or exactly this content id (64 hex).
    #[serde(default)]
    pub id: Option<String>,
    /// Smallest size kept, bytes.
    #[serde(default)]
    pub min_size: Option<u64>,
    /// Largest size kept, bytes.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Keep only names with one of these extensions (no dot, any case).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Keep only this kind of file.
    #[serde(default)]
    pub kind: Option<FileKind>,
    /// Stop once this many distinct contents are found (1-1000, default 200).
    #[serde(default)]
    pub max_results: Option<usize>,
    /// Seconds to wait for hits at most (0.1-60, default 5).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Result order.
    #[serde(default)]
    pub sort: Option<SortKey>,
}

/// A search and what it has found so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchView {
    /// The search's id (opaque).
    pub id: String,
    /// What was asked: the words, or the content id.
    pub query: String,
    /// No more results will come.
    pub done: bool,
    /// Hit messages received.
    pub hits: usize,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
    /// Distinct contents, filtered and sorted as asked.
    pub results: Vec<ResultView>,
}

/// One distinct content found by a search.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultView {
    /// Content id (64 hex).
    pub content_id: String,
    /// The name most sources give it (a peer's claim).
    pub name: String,
    /// Other names sources give it (at most 8).
    pub names: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// How many sources have it.
    pub sources: usize,
    /// Of those, how many are firewalled (reached by push).
    pub firewalled_sources: usize,
    /// A `canopy:` link to it.
    pub link: String,
}

/// `POST /api/downloads`: a content id or a `canopy:` link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDownload {
    /// The content id (64 hex).
    #[serde(default)]
    pub id: Option<String>,
    /// Or a `canopy:<id>?name=..&size=..` link.
    #[serde(default)]
    pub link: Option<String>,
    /// The name to save under (made safe); else the link's or the sources'.
    #[serde(default)]
    pub name: Option<String>,
    /// Higher starts first (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
}

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadState {
    /// Waiting for a turn.
    Queued,
    /// Looking for sources or downloading.
    Active,
    /// Stopped by the user; verified bytes kept.
    Paused,
    /// Verified and in place.
    Done,
    /// Gave up; `error` says why. Resume tries again.
    Failed,
    /// Not downloaded: the content is already here (`error` says where).
    Skipped,
}

/// `GET /api/downloads`: one entry of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadView {
    /// The content id (64 hex).
    pub id: String,
    /// The name it is (or will be) saved under.
    pub name: String,
    /// Its size, once known.
    pub size: Option<u64>,
    /// Where it stands.
    pub state: DownloadState,
    /// Bytes verified and on disk.
    pub verified_bytes: u64,
    /// Bytes a second, recently.
    pub rate: u64,
    /// Seconds to go at the recent rate, while active.
    pub eta_secs: Option<u64>,
    /// Sources known.
    pub sources: usize,
    /// Sources sending now.
    pub active_sources: usize,
    /// Once done: how its sources were reached ("direct", "push", "hole
    /// punch", "relay").
    #[serde(default)]
    pub paths: Vec<String>,
    /// Higher starts first.
    pub priority: i32,
    /// The finished file, once done (or the file it is already at, if skipped).
    pub path: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// When it was added, Unix seconds.
    pub added_at: u64,
    /// When it finished, Unix seconds.
    pub finished_at: Option<u64>,
}

/// `GET /api/uploads`: one upload running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadView {
    /// The downloader's address.
    pub peer: String,
    /// What it is fetching (64 hex).
    pub content_id: String,
    /// Our file's name.
    pub name: String,
    /// Bytes sent in this upload so far.
    pub bytes: u64,
    /// Bytes this upload will send (its range).
    pub length: u64,
    /// Bytes a second, recently.
    pub rate: u64,
    /// When it started, Unix seconds.
    pub started_at: u64,
}

/// `GET /api/shares`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharesView {
    /// Each shared folder.
    pub folders: Vec<ShareFolder>,
    /// Where downloads are saved (shared too unless configured otherwise).
    pub downloads_dir: String,
    /// Files shared in all.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// A scan is running.
    pub scanning: bool,
}

/// One shared folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFolder {
    /// Its absolute path.
    pub path: String,
    /// Files shared from it.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// `POST /api/shares`, `POST /api/shares/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharePath {
    /// An absolute path to a folder.
    pub path: String,
}

/// Settings that change while the leaf runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Upload bytes a second for all uploads together; 0 is unlimited.
    pub upload_rate_limit: u64,
    /// Download bytes a second for all downloads together; 0 is unlimited.
    pub download_rate_limit: u64,
    /// Uploads at once.
    pub upload_slots: usize,
    /// Downloads at once.
    pub max_active_downloads: usize,
}

/// `PATCH /api/settings`: the fields to change. Also the `canopy leaf`
/// flags and config-file keys of the same names (clap `Args`): each
/// setting's flag, key, API field, default and range are defined here once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Upload bytes a second for all uploads together; 0 is unlimited.
    #[serde(default)]
    #[arg(long, value_name = "BYTES", default_value = "0")]
    pub upload_rate_limit: Option<u64>,
    /// Download bytes a second for all downloads together; 0 is unlimited.
    #[serde(default)]
    #[arg(long, value_name = "BYTES", default_value = "0")]
    pub download_rate_limit: Option<u64>,
    /// Uploads at once (1-1000); more get 503 with Retry-After.
    #[serde(default)]
    #[arg(long, value_name = "N", default_value = "4",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub upload_slots: Option<usize>,
    /// Downloads at once (1-100); more wait in the queue.
    #[serde(default)]
    #[arg(long, value_name = "N", default_value = "3",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub max_active_downloads: Option<usize>,
}

/// `PATCH /api/downloads/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityPatch {
    /// Higher starts first.
    pub priority: i32,
}

/// An error body: `{"error": "...", "field": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, for a person.
    pub error: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

/// Why the daemon refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or wrong (400).
    #[error("{field}: {message}")]
    BadField {
        /// Which.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request as a whole is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// Refused whatever the request says (403), e.g. sharing a system
    /// folder.
    #[error("{0}")]
    Forbidden(String),
    /// No such download or search (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The daemon can't do it now (503), e.g. no supernode yet.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// A [`ApiError::BadField`].
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::BadField {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The HTTP status it maps to.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadField { .. } | Self::BadRequest(_) => 400,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unavailable(_) => 503,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            field: match self {
                Self::BadField { field, .. } => Some(field.clone()),
                _ => None,
            },
        }
    }
}
