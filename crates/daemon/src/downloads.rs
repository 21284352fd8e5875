//! What the queue does not persist about a download: the fetch running
//! for it (its cancel token, and a lock so a second fetch of the same id
//! waits for the first to stop), its latest progress, and its rate, from
//! progress samples. Also how a queue entry and its progress become the
//! API's [`DownloadView`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_core::queue::{EntryState, QueueEntry};
use tokio_util::sync::CancellationToken;

use crate::backend::FetchProgress;
use crate::model::{DownloadState, DownloadView};

/// Samples older than this are forgotten: the rate is a recent one.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Samples kept at most.
const MAX_SAMPLES: usize = 64;

/// A rate from (time, bytes) samples over the last few seconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    /// Records that `bytes` were done by `now`.
    pub(crate) fn sample(&mut self, now: Instant, bytes: u64) {
        if let Some(&(_, last)) = self.samples.back() {
            if bytes < last {
                // Restarted: the old samples say nothing about this run.
                self.samples.clear();
            }
        }
        self.samples.push_back((now, bytes));
        while self.samples.len() > MAX_SAMPLES
            || self.samples.front().is_some_and(|&(t, _)| {
                now.duration_since(t) > RATE_WINDOW && self.samples.len() > 2
            })
        {
            self.samples.pop_front();
        }
    }

    /// Bytes a second over the window ending `now` (0 if too few
    /// samples, or none lately).
    pub(crate) fn rate(&self, now: Instant) -> u64 {
        let (Some(&(first_at, first)), Some(&(last_at, last))) =
            (self.samples.front(), self.samples.back())
        else {
            return 0;
        };
        if now.duration_since(last_at) > RATE_WINDOW {
            return 0;
        }
        // Up to now, not to the last sample: a stalled download slows down.
        let span_ms = now.duration_since(first_at).as_millis();
        if span_ms < 50 {
            return 0;
        }
        let bytes = u128::from(last.saturating_sub(first));
        u64::try_from(bytes * 1000 / span_ms).unwrap_or(u64::MAX)
    }
}

/// Seconds to go for `remaining` bytes at `rate`.
pub(crate) fn eta_secs(remaining: u64, rate: u64) -> Option<u64> {
    (rate > 0).then(|| remaining.div_ceil(rate))
}

/// A download's runtime state.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Stops the running fetch.
    pub(crate) cancel: Option<CancellationToken>,
    /// Held by the fetch while it runs.
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
    /// Which fetch is the latest.
    pub(crate) generation: u64,
    /// Its latest progress.
    pub(crate) progress: FetchProgress,
    /// Its recent rate.
    pub(crate) meter: RateMeter,
}

fn view_state(state: EntryState) -> DownloadState {
    match state {
        EntryState::Queued => DownloadState::Queued,
        EntryState::Active => DownloadState::Active,
        EntryState::Paused => DownloadState::Paused,
        EntryState::Done => DownloadState::Done,
        EntryState::Failed => DownloadState::Failed,
        EntryState::Skipped => DownloadState::Skipped,
    }
}

/// The API's view of `entry` with its runtime state `live`.
pub(crate) fn view(entry: &QueueEntry, live: Option<&Live>, now: Instant) -> DownloadView {
    let progress = live.map(|l| &l.progress);
    let size = entry.size.or(progress.and_then(|p| p.size));
    let name = entry
        .name
        .clone()
        .or_else(|| {
            entry.path.as_ref().and_then(|p| {
                std::path::Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
        })
        .or_else(|| progress.and_then(|p| p.name.clone()))
        .unwrap_or_else(|| entry.id.to_hex());
    let active = entry.state == EntryState::Active;
    let verified_bytes = match entry.state {
        EntryState::Done => size.unwrap_or(0),
        _ => progress.map_or(0, |p| p.verified_bytes),
    };
    let rate = match (active, live) {
        (true, Some(live)) => live.meter.rate(now),
        _ => 0,
    };
    let finished = entry.state.is_finished();
    DownloadView {
        id: entry.id.to_hex(),
        name,
        size,
        state: view_state(entry.state),
        verified_bytes,
        rate,
        eta_secs: if active {
            size.and_then(|s| eta_secs(s.saturating_sub(verified_bytes), rate))
        } else {
            None
        },
        sources: if active {
            progress.map_or(0, |p| p.known_sources)
        } else {
            0
        },
        active_sources: if active {
            progress.map_or(0, |p| p.active_sources)
        } else {
            0
        },
        paths: entry.paths.clone(),
        priority: entry.priority,
        path: if finished { entry.path.clone() } else { None },
        error: entry.error.clone(),
        added_at: entry.added_at,
        finished_at: if finished || entry.state == EntryState::Failed {
            entry.finished_at
        } else {
            None
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_recent_and_falls_when_nothing_comes() {
        let start = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.rate(start), 0);
        for second in 0..=10u64 {
            meter.sample(start + Duration::from_secs(second), second * 1_000_000);
        }
        let now = start + Duration::from_secs(10);
        assert_eq!(meter.rate(now), 1_000_000);
        // Nothing for 2.5 s: the rate over the window is lower.
        let later = now + Duration::from_millis(2500);
        assert!(meter.rate(later) < 1_000_000, "{}", meter.rate(later));
        assert_eq!(meter.rate(now + Duration::from_secs(6)), 0);
        // A restart (fewer bytes) starts over.
        meter.sample(now + Duration::from_secs(7), 10);
        assert_eq!(meter.rate(now + Duration::from_secs(7)), 0);
        assert_eq!(eta_secs(10_000_000, 1_000_000), Some(10));
        assert_eq!(eta_secs(1, 1_000_000), Some(1));
        assert_eq!(eta_secs(5, 0), None);
    }
}
