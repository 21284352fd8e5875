//! A search's results as Server-Sent Events: the current view at once,
//! then an `update` event per change (no more often than every
//! [`MIN_INTERVAL`], so a burst of hits costs one event), then a `done`
//! event with the final view, and the stream ends. It also ends, with
//! `done`, if the daemon forgets the search, and at shutdown.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Body;
use super::errors::with_type;
use crate::model::SearchView;

/// The shortest time between two events.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Where the stream stands.
struct Follow {
    updates: watch::Receiver<SearchView>,
    shutdown: CancellationToken,
    last_sent: Option<Instant>,
    ended: bool,
}

/// The `text/event-stream` response following `updates`.
pub(crate) fn events(
    updates: watch::Receiver<SearchView>,
    shutdown: CancellationToken,
) -> Response<Body> {
    let follow = Follow {
        updates,
        shutdown,
        last_sent: None,
        ended: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let frame = follow.next_event().await?;
        Some((Ok(Frame::data(frame)), follow))
    });
    let mut response = with_type(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream).boxed_unsync(),
    );
    // Tell a proxy in front not to hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

impl Follow {
    /// The next event's bytes, or `None` once the stream is over.
    async fn next_event(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let mut search_over = false;
        if let Some(last_sent) = self.last_sent {
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = self.updates.changed() => search_over = changed.is_err(),
            }
            if !search_over {
                // Let more changes gather into this one event.
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    () = tokio::time::sleep_until(last_sent + MIN_INTERVAL) => {}
                }
            }
        }
        let mut view = self.updates.borrow_and_update().clone();
        self.last_sent = Some(Instant::now());
        // A search the daemon let go of is over too.
        view.done |= search_over;
        let done = view.done;
        self.ended = done;
        Some(event(if done { "done" } else { "update" }, &view))
    }
}

/// One event: its name and the view as JSON on one `data:` line.
fn event(name: &str, view: &SearchView) -> Bytes {
    // serde_json writes no newline in compact form, so one data line.
    let json = serde_json::to_string(view).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}
