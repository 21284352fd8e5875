//! Live searches: a bounded table of the latest [`MAX_SEARCHES`]
//! searches, each a `watch` channel of its [`SearchView`] fed by a task
//! that follows the leaf's live search and filters and sorts each
//! snapshot as its [`SearchSpec`] asked. Starting one more forgets (and
//! stops) the oldest. A spec is checked field by field first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_core::leaf::SearchRequest;
use canopy_core::link::Link;
use canopy_core::result_filter::{self, FileKind as CoreKind, ResultFilter, SortKey as CoreSort};
use canopy_core::search::SearchResult;
use canopy_node::leaf::LeafHandle;
use canopy_proto::ContentId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend;
use crate::model::{ApiError, FileKind, ResultView, SearchSpec, SearchView, SortKey};

/// Searches kept at once.
pub const MAX_SEARCHES: usize = 32;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Results a search may ask for.
pub const MAX_RESULTS: std::ops::RangeInclusive<usize> = 1..=1000;
/// Results by default.
pub const DEFAULT_MAX_RESULTS: usize = 200;
/// Seconds a search may wait.
pub const TIMEOUT_SECS: std::ops::RangeInclusive<f64> = 0.1..=60.0;
/// Seconds by default.
pub const DEFAULT_TIMEOUT_SECS: f64 = 5.0;
/// How far a search travels.
const SEARCH_TTL: u8 = canopy_core::supernode::DEFAULT_TTL_CAP;

/// A checked search.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreparedSearch {
    pub(crate) request: SearchRequest,
    pub(crate) filter: ResultFilter,
    pub(crate) sort: CoreSort,
    /// What was asked, as shown.
    pub(crate) query: String,
    /// Nothing can match (no words, or a size range with its ends
    /// crossed): the search finishes at once, asking no one.
    pub(crate) matches_nothing: bool,
}

fn core_kind(kind: FileKind) -> CoreKind {
    match kind {
        FileKind::Audio => CoreKind::Audio,
        FileKind::Video => CoreKind::Video,
        FileKind::Image => CoreKind::Image,
        FileKind::Document => CoreKind::Document,
        FileKind::Archive => CoreKind::Archive,
        FileKind::Software => CoreKind::Software,
    }
}

fn core_sort(sort: SortKey) -> CoreSort {
    match sort {
        SortKey::Sources => CoreSort::Sources,
        SortKey::Size => CoreSort::Size,
        SortKey::Name => CoreSort::Name,
    }
}

/// Parses a content id as the API takes it, naming `field` if wrong.
pub(crate) fn parse_id(field: &str, text: &str) -> Result<ContentId, ApiError> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::field(field, "must be 64 hex characters"));
    }
    text.parse()
        .map_err(|_| ApiError::field(field, "must be 64 hex characters"))
}

/// Checks `spec` field by field.
pub(crate) fn prepare(spec: &SearchSpec) -> Result<PreparedSearch, ApiError> {
    let max_results = spec.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    if !MAX_RESULTS.contains(&max_results) {
        return Err(ApiError::field("max_results", "must be 1 to 1000"));
    }
    let timeout_secs = spec.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !timeout_secs.is_finite() || !TIMEOUT_SECS.contains(&timeout_secs) {
        return Err(ApiError::field("timeout_secs", "must be 0.1 to 60"));
    }
    let timeout = Duration::from_secs_f64(timeout_secs);
    // A crossed size range is a valid request that no file can match.
    let crossed = matches!((spec.min_size, spec.max_size), (Some(min), Some(max)) if min > max);
    let (min_size, max_size) = if crossed {
        (None, None)
    } else {
        (spec.min_size, spec.max_size)
    };
    let filter = ResultFilter::new(
        min_size,
        max_size,
        &spec.extensions,
        spec.kind.map(core_kind),
    )
    .map_err(|error| match error {
        result_filter::FilterError::SizeRange => {
            ApiError::field("min_size", "is larger than max_size")
        }
        result_filter::FilterError::Extensions(message) => ApiError::field("extensions", message),
    })?;
    let query = spec
        .query
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty());
    let id = spec.id.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let (mut request, shown) = match (query, id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "id",
                "give words (query) or a content id, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::field(
                "query",
                "give words to search for, or a content id (id)",
            ));
        }
        (Some(query), None) => {
            if query.len() > MAX_QUERY_BYTES {
                return Err(ApiError::field("query", "longer than 256 bytes"));
            }
            // Control characters separate words, as spaces do.
            let words: Vec<&str> = query
                .split(|c: char| c.is_whitespace() || c.is_control())
                .filter(|word| !word.is_empty())
                .collect();
            (
                SearchRequest::keywords(&words, SEARCH_TTL, timeout, max_results),
                words.join(" "),
            )
        }
        (None, Some(id)) => {
            let id = parse_id("id", id)?;
            (SearchRequest::content(id, SEARCH_TTL, timeout), id.to_hex())
        }
    };
    request.min_size = min_size;
    request.max_size = max_size;
    let matches_nothing = crossed || (request.keywords.is_empty() && request.content_id.is_none());
    Ok(PreparedSearch {
        request,
        filter,
        sort: core_sort(spec.sort.unwrap_or_default()),
        query: shown,
        matches_nothing,
    })
}

/// One result as the API shows it.
pub(crate) fn result_view(result: &SearchResult) -> ResultView {
    ResultView {
        content_id: result.content_id.to_hex(),
        name: result.name.clone(),
        names: backend::result_names(result),
        size: result.size,
        sources: result.sources.len(),
        firewalled_sources: result.sources.iter().filter(|s| s.firewalled).count(),
        link: Link::new(
            result.content_id,
            Some(result.name.clone()),
            Some(result.size),
        )
        .format(),
    }
}

struct Entry {
    id: String,
    view: Arc<watch::Sender<SearchView>>,
    stop: CancellationToken,
}

/// The table of live searches.
pub(crate) struct Searches {
    entries: Mutex<VecDeque<Entry>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Makes ids unguessable across restarts (a stale id never hits).
    salt: u32,
}

impl std::fmt::Debug for Searches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searches").finish_non_exhaustive()
    }
}

impl Searches {
    pub(crate) fn new() -> Self {
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or(0);
        Self {
            entries: Mutex::new(VecDeque::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            salt,
        }
    }

    /// Starts a search; the first view (no results yet) is returned.
    pub(crate) async fn start(
        &self,
        leaf: &Arc<LeafHandle>,
        spec: &SearchSpec,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<SearchView, ApiError> {
        let prepared = prepare(spec)?;
        // A search that can match nothing finishes at once, with no results.
        let nothing_to_ask = prepared.matches_nothing;
        let live = if nothing_to_ask {
            None
        } else {
            Some(
                backend::search_live(leaf, prepared.request.clone())
                    .await
                    .map_err(|error| ApiError::Unavailable(error.to_string()))?,
            )
        };
        let number = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:x}-{number}", self.salt);
        let first = SearchView {
            id: id.clone(),
            query: prepared.query.clone(),
            done: nothing_to_ask,
            ..SearchView::default()
        };
        let (tx, _) = watch::channel(first.clone());
        let view = Arc::new(tx);
        let stop = shutdown.child_token();
        if let Some(live) = live {
            tracker.spawn(follow(live, prepared, view.clone(), stop.clone()));
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push_back(Entry { id, view, stop });
        while entries.len() > MAX_SEARCHES {
            if let Some(old) = entries.pop_front() {
                old.stop.cancel();
            }
        }
        Ok(first)
    }

    /// Follows search `id`.
    pub(crate) fn watch(&self, id: &str) -> Option<watch::Receiver<SearchView>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.view.subscribe())
    }

    /// Stops and forgets search `id`.
    pub(crate) fn forget(&self, id: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.iter().position(|e| e.id == id) {
            Some(index) => {
                if let Some(entry) = entries.remove(index) {
                    entry.stop.cancel();
                }
                true
            }
            None => false,
        }
    }
}

/// Turns each snapshot of `live` into a filtered, sorted view until the
/// search is done or stopped.
async fn follow(
    mut live: backend::LiveSearch,
    prepared: PreparedSearch,
    view: Arc<watch::Sender<SearchView>>,
    stop: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    loop {
        let snapshot = live.updates.borrow_and_update().clone();
        let results =
            result_filter::filter_and_sort(&snapshot.results, &prepared.filter, prepared.sort)
                .into_iter()
                .map(result_view)
                .collect();
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        view.send_modify(|v| {
            v.results = results;
            v.hits = snapshot.hits;
            v.done = snapshot.done;
            v.elapsed_ms = elapsed_ms;
        });
        if snapshot.done {
            return;
        }
        tokio::select! {
            changed = live.updates.changed() => {
                if changed.is_err() {
                    view.send_modify(|v| v.done = true);
                    return;
                }
            }
            () = stop.cancelled() => {
                view.send_modify(|v| v.done = true);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SearchSpec {
        SearchSpec {
            query: Some("  hello   world ".into()),
            ..SearchSpec::default()
        }
    }

    fn field(result: Result<PreparedSearch, ApiError>) -> Option<String> {
        result.err().and_then(|e| e.body().field)
    }

    #[test]
    fn a_good_spec_becomes_a_request_with_its_defaults() {
        let prepared = prepare(&spec()).unwrap();
        assert_eq!(prepared.query, "hello world");
        assert_eq!(prepared.request.keywords, ["hello", "world"]);
        assert_eq!(prepared.request.max_results, DEFAULT_MAX_RESULTS);
        assert_eq!(prepared.request.timeout, Duration::from_secs(5));
        assert_eq!(prepared.sort, CoreSort::Sources);
        let by_id = prepare(&SearchSpec {
            id: Some("ab".repeat(32)),
            kind: Some(FileKind::Audio),
            sort: Some(SortKey::Name),
            ..SearchSpec::default()
        })
        .unwrap();
        assert_eq!(by_id.request.content_id, Some(ContentId([0xab; 32])));
        assert_eq!(by_id.filter.kind, Some(CoreKind::Audio));
        assert_eq!(by_id.sort, CoreSort::Name);
    }

    #[test]
    fn each_bad_field_is_named() {
        let both = SearchSpec {
            id: Some("ab".repeat(32)),
            ..spec()
        };
        assert_eq!(field(prepare(&both)).as_deref(), Some("id"));
        assert_eq!(
            field(prepare(&SearchSpec::default())).as_deref(),
            Some("query")
        );
        let blank = SearchSpec {
            query: Some("   ".into()),
            ..SearchSpec::default()
        };
        assert_eq!(field(prepare(&blank)).as_deref(), Some("query"));
        let long = SearchSpec {
            query: Some("a".repeat(MAX_QUERY_BYTES + 1)),
            ..SearchSpec::default()
        };
        assert_eq!(field(prepare(&long)).as_deref(), Some("query"));
        let bad_id = SearchSpec {
            id: Some("xyz".into()),
            ..SearchSpec::default()
        };
        assert_eq!(field(prepare(&bad_id)).as_deref(), Some("id"));
        for max in [0, 1001] {
            let s = SearchSpec {
                max_results: Some(max),
                ..spec()
            };
            assert_eq!(field(prepare(&s)).as_deref(), Some("max_results"));
        }
        for secs in [0.0, 0.05, 61.0, f64::NAN, f64::INFINITY] {
            let s = SearchSpec {
                timeout_secs: Some(secs),
                ..spec()
            };
            assert_eq!(
                field(prepare(&s)).as_deref(),
                Some("timeout_secs"),
                "{secs}"
            );
        }
        let range = SearchSpec {
            min_size: Some(10),
            max_size: Some(1),
            ..spec()
        };
        assert!(
            prepare(&range).unwrap().matches_nothing,
            "a crossed range matches nothing"
        );
        let extensions = SearchSpec {
            extensions: vec!["a/b".into()],
            ..spec()
        };
        assert_eq!(field(prepare(&extensions)).as_deref(), Some("extensions"));
    }
}
