//! The one place the drivers read the clock: turns `Instant`s into the
//! core's millisecond [`Time`] (and, for the host cache, which outlives
//! the process, the wall clock).

use std::time::Instant;

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
}

/// Wall-clock milliseconds since the Unix epoch, for what outlives the
/// process (the host cache's entries): the core only compares them.
pub fn wall_time() -> Time {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}
