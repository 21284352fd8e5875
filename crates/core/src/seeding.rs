//! When to resolve the bootstrap names (DNS seeds) and whether the
//! candidates to dial ran dry: what a supernode's peer discovery
//! ([`crate::discovery`]) and a leaf's supernode set ([`crate::leaf_set`])
//! share. The names are resolved first of all, then again only when no
//! candidate is left, at most once per interval. Once no candidate was
//! left, a machine waits for an event (an end, a resolution, addresses
//! learned), a backoff's end or the next resolution rather than look
//! again at every wake.
//!
//! No I/O and no clock: time comes in as [`Time`].

use std::time::Duration;

use crate::Time;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Seeding {
    /// There are bootstrap names to resolve.
    enabled: bool,
    /// They are resolved again at most this often.
    interval: Duration,
    resolving: bool,
    last_resolve: Option<Time>,
    /// No candidate was left at the last look, then.
    starved: Option<Time>,
}

impl Seeding {
    /// Bootstrap names to resolve (`enabled`), again at most once per
    /// `interval` when no one is left to dial.
    pub fn new(enabled: bool, interval: Duration) -> Self {
        Self {
            enabled,
            interval,
            resolving: false,
            last_resolve: None,
            starved: None,
        }
    }

    /// The first resolution is due: before anything else.
    pub fn first_due(&self) -> bool {
        self.enabled && self.last_resolve.is_none() && !self.resolving
    }

    /// A resolution starts at `now` (the caller asks its driver for it).
    pub fn start(&mut self, now: Time) {
        self.resolving = true;
        self.last_resolve = Some(now);
    }

    /// The resolution ended at `now`: its addresses are candidates.
    pub fn resolved(&mut self, now: Time) {
        self.resolving = false;
        self.last_resolve = Some(now);
        self.starved = None;
    }

    /// A resolution is running.
    pub fn resolving(&self) -> bool {
        self.resolving
    }

    /// Candidates may be on offer again: look at the next wake.
    pub fn fed(&mut self) {
        self.starved = None;
    }

    /// No candidate was left at `now`. True if a new resolution is due
    /// then: it has started (the caller asks its driver for it).
    pub fn starve(&mut self, now: Time) -> bool {
        self.starved = Some(now);
        let due = self.enabled
            && !self.resolving
            && self.last_resolve.is_none_or(|at| now >= at + self.interval);
        if due {
            self.start(now);
        }
        due
    }

    /// When no candidate was left, if none was at the last look.
    pub fn starved(&self) -> Option<Time> {
        self.starved
    }

    /// When the next resolution may start, if there are names and none
    /// is running.
    pub fn next_resolve(&self) -> Option<Time> {
        if !self.enabled || self.resolving {
            return None;
        }
        self.last_resolve.map(|at| at + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_only_when_starved_and_at_most_once_per_interval() {
        let mut seeds = Seeding::new(true, Duration::from_secs(60));
        assert!(seeds.first_due());
        seeds.start(Time(0));
        assert!(!seeds.first_due());
        assert!(!seeds.starve(Time(10)), "one is running");
        seeds.resolved(Time(1_000));
        assert_eq!(seeds.starved(), None, "its addresses are candidates");
        assert!(!seeds.starve(Time(30_000)), "within the interval");
        assert_eq!(seeds.starved(), Some(Time(30_000)));
        assert_eq!(seeds.next_resolve(), Some(Time(61_000)));
        assert!(seeds.starve(Time(61_000)));
        assert!(seeds.resolving());
        assert_eq!(seeds.next_resolve(), None);
        seeds.fed();
        assert_eq!(seeds.starved(), None);
    }

    #[test]
    fn without_names_nothing_is_resolved() {
        let mut seeds = Seeding::new(false, Duration::from_secs(60));
        assert!(!seeds.first_due());
        assert!(!seeds.starve(Time(0)));
        assert_eq!(seeds.starved(), Some(Time(0)));
        assert_eq!(seeds.next_resolve(), None);
    }
}
