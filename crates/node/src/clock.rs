//! The one place the drivers read the clock: turns `Instant`s into the
//! core's millisecond [`Time`] (and, for the host cache, which outlives
//! the process, the wall clock).

use std::time::{Duration, Instant};

use canopy_core::Time;

/// Milliseconds since the node started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        Time(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// When a driver sleeping until the core's `deadline` (its
    /// `poll_timeout`) wakes: the deadline, but no later than `at_most`
    /// from now (a driver also has checks of its own, and a deadline far
    /// off is looked at again anyway).
    pub fn wake_at(&self, deadline: Option<Time>, at_most: Duration) -> tokio::time::Instant {
        let latest = Instant::now() + at_most;
        let wake = deadline
            .and_then(|d| self.start.checked_add(Duration::from_millis(d.as_millis())))
            .map_or(latest, |d| d.min(latest));
        tokio::time::Instant::from_std(wake)
    }
}

/// Wall-clock milliseconds since the Unix epoch, for what outlives the
/// process (the host cache's entries): the core only compares them.
pub fn wall_time() -> Time {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}
