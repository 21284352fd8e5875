//! A search followed as it runs: the session publishes a [`SearchSnapshot`]
//! each time hits change the results, and a last one marked `done` at the
//! deadline or once `max_results` contents are found. Dropping the
//! [`LiveSearch`] ends the search (the supernode is told to stop looking).

use canopy_core::leaf::SearchRequest;
use canopy_core::search::SearchResult;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::NodeError;

/// The results of a running search so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchSnapshot {
    /// Distinct contents, each with its sources, by content id then size.
    pub results: Vec<SearchResult>,
    /// Hit messages received.
    pub hits: usize,
    /// The search is over: no more snapshots follow.
    pub done: bool,
}

/// A running search. `updates` changes as hits arrive; the search is over
/// when a snapshot says `done`, or when the sender is gone without one
/// (the supernode session ended: `updates.changed()` fails).
#[derive(Debug)]
pub struct LiveSearch {
    /// The latest results.
    pub updates: watch::Receiver<SearchSnapshot>,
    /// Ends the search when dropped.
    _guard: DropGuard,
}

impl LiveSearch {
    /// Waits for the end and returns the final results; an error if the
    /// session ended before the search did.
    pub async fn finish(mut self) -> Result<SearchSnapshot, NodeError> {
        match self.updates.wait_for(|s| s.done).await {
            Ok(snapshot) => Ok(snapshot.clone()),
            Err(_) => Err(NodeError::Search(
                "the connection to the supernode ended".into(),
            )),
        }
    }
}

/// What a session needs to run a live search.
#[derive(Debug)]
pub(super) struct LiveStart {
    pub(super) request: SearchRequest,
    pub(super) updates: watch::Sender<SearchSnapshot>,
    /// Cancelled when the [`LiveSearch`] is dropped.
    pub(super) cancel: CancellationToken,
    /// Whether the query went out.
    pub(super) started: oneshot::Sender<Result<(), NodeError>>,
}

impl LiveStart {
    /// A start request for `request` and the [`LiveSearch`] that follows it
    /// once `started` answers `Ok`.
    pub(super) fn new(
        request: SearchRequest,
    ) -> (Self, LiveSearch, oneshot::Receiver<Result<(), NodeError>>) {
        let (updates, receiver) = watch::channel(SearchSnapshot::default());
        let cancel = CancellationToken::new();
        let (started, started_rx) = oneshot::channel();
        let live = LiveSearch {
            updates: receiver,
            _guard: cancel.clone().drop_guard(),
        };
        (
            Self {
                request,
                updates,
                cancel,
                started,
            },
            live,
            started_rx,
        )
    }

    /// Tells the caller the search could not start.
    pub(super) fn refuse(self, error: NodeError) {
        let _ = self.started.send(Err(error));
    }
}
