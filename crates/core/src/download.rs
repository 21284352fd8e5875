//! Download planning: which groups of a file to ask which source for, and
//! what to do when a source misbehaves.
//!
//! The plan hands out requests, each a run of contiguous missing groups,
//! to sources with a free request slot, least busy first, so more sources
//! means more groups in flight. The driver streams each response, verifies
//! every group against the [`crate::tree::VerifiedTree`] and reports it.
//! A source that sends a bad group, truncates a response, fails or stalls
//! is dropped with the reason; its outstanding groups return to the pool
//! and go to the others. A source that is merely busy (no upload slot) is
//! paused, not dropped. Groups verified in an earlier run are never asked
//! for again.
//!
//! Endgame: once no group is missing, a source with nothing in flight
//! helps another source's request, asking for the first group that request
//! has not delivered (one group at a time, so the waste is at most 1 MiB a
//! helper), starting with the request that last made progress longest ago.
//! Whichever copy verifies first counts, and a request whose groups were
//! all delivered by helpers is cancelled. So a source that stalls near the
//! end, or a dead source that happened to be asked first, holds the
//! download up for no longer than the others take to fetch its groups.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::Duration;

use crate::Time;
use crate::tree::{MAX_DOWNLOAD_SIZE, group_count, group_range, group_slot};

/// Tunables of a download.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Requests in flight per source.
    pub requests_per_source: usize,
    /// Groups asked for in one request.
    pub groups_per_request: u64,
    /// A request that makes no progress for this long drops its source.
    pub stall_timeout: Duration,
}

impl Default for DownloadConfig {
    /// Two requests of 16 MiB per source: two of a leaf's four upload
    /// slots, leaving room for other downloaders, and requests large
    /// enough that per-request overhead vanishes (measured on a 1 GiB file:
    /// 4 MiB requests were ~10% slower than 16 MiB ones).
    fn default() -> Self {
        Self {
            requests_per_source: 2,
            groups_per_request: 16,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// A source, by its index in the order it was added.
pub type SourceId = usize;
/// A request, numbered from 1.
pub type RequestId = u64;

/// Something to fetch: `groups` of the file, from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id, for reporting back.
    pub id: RequestId,
    /// Whom to ask.
    pub source: SourceId,
    /// Which groups, in order.
    pub groups: Range<u64>,
}

/// What the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// This source is no longer used, for this reason.
    SourceDropped {
        /// Which.
        source: SourceId,
        /// Why, for the log.
        reason: String,
    },
    /// Stop this request (its source was dropped).
    Cancel(RequestId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Missing,
    InFlight(RequestId),
    Verified,
}

#[derive(Debug)]
struct Source {
    dropped: bool,
    paused_until: Time,
    in_flight: usize,
    bytes: u64,
}

#[derive(Debug)]
struct InFlight {
    source: SourceId,
    groups: Range<u64>,
    /// The next group expected on this request's stream.
    next: u64,
    last_progress: Time,
    /// The request whose group this one fetches again (endgame).
    helps: Option<RequestId>,
}

/// The state of one file's download. See the module documentation.
#[derive(Debug)]
pub struct DownloadPlan {
    size: u64,
    config: DownloadConfig,
    groups: Vec<Group>,
    verified: u64,
    sources: Vec<Source>,
    requests: BTreeMap<RequestId, InFlight>,
    next_request: RequestId,
    events: VecDeque<DownloadEvent>,
}

impl DownloadPlan {
    /// A plan for a file of `size` bytes of which `verified` groups are
    /// already on disk and checked.
    /// `size` must be at most [`MAX_DOWNLOAD_SIZE`]; larger sizes are
    /// clamped so the plan's memory stays bounded whatever the caller does.
    pub fn new(size: u64, verified: impl IntoIterator<Item = u64>, config: DownloadConfig) -> Self {
        let size = size.min(MAX_DOWNLOAD_SIZE);
        let mut groups = vec![Group::Missing; group_slot(group_count(size))];
        let mut done = 0;
        for index in verified {
            if let Some(g) = groups.get_mut(usize::try_from(index).unwrap_or(usize::MAX)) {
                if *g != Group::Verified {
                    *g = Group::Verified;
                    done += 1;
                }
            }
        }
        Self {
            size,
            config,
            groups,
            verified: done,
            sources: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            events: VecDeque::new(),
        }
    }

    /// Adds a source; returns its id.
    pub fn add_source(&mut self) -> SourceId {
        self.sources.push(Source {
            dropped: false,
            paused_until: Time::ZERO,
            in_flight: 0,
            bytes: 0,
        });
        self.sources.len() - 1
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<DownloadEvent> {
        self.events.pop_front()
    }

    /// True when every group is verified.
    pub fn is_complete(&self) -> bool {
        self.verified == self.groups.len() as u64
    }

    /// Sources still in use (not dropped).
    pub fn active_sources(&self) -> usize {
        self.sources.iter().filter(|s| !s.dropped).count()
    }

    /// Sources with a request in flight.
    pub fn busy_sources(&self) -> usize {
        self.sources
            .iter()
            .filter(|s| !s.dropped && s.in_flight > 0)
            .count()
    }

    /// Verified bytes so far, this run and earlier ones.
    pub fn verified_bytes(&self) -> u64 {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| **g == Group::Verified)
            .map(|(i, _)| {
                let r = group_range(self.size, i as u64);
                r.end - r.start
            })
            .sum()
    }

    /// Verified bytes received from `source` in this run.
    pub fn bytes_from(&self, source: SourceId) -> u64 {
        self.sources.get(source).map_or(0, |s| s.bytes)
    }

    /// Indices of the verified groups.
    pub fn verified_groups(&self) -> impl Iterator<Item = u64> + '_ {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| **g == Group::Verified)
            .map(|(i, _)| i as u64)
    }

    /// True if nothing can make progress: groups are missing and every
    /// source has been dropped.
    pub fn is_stuck(&self) -> bool {
        !self.is_complete() && self.active_sources() == 0
    }

    /// The earliest time a paused source may be asked again, if any is paused.
    pub fn next_wakeup(&self, now: Time) -> Option<Time> {
        self.sources
            .iter()
            .filter(|s| !s.dropped && s.paused_until > now)
            .map(|s| s.paused_until)
            .min()
    }

    /// The next request to make, if a source has a free slot and groups
    /// are missing. Call until `None`.
    pub fn next_request(&mut self, now: Time) -> Option<Request> {
        let source = self
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                !s.dropped && s.paused_until <= now && s.in_flight < self.config.requests_per_source
            })
            .min_by_key(|(_, s)| s.in_flight)
            .map(|(id, _)| id)?;
        let Some(start) = self.groups.iter().position(|g| *g == Group::Missing) else {
            return self.endgame_request(source, now);
        };
        let start = start as u64;
        let mut end = start + 1;
        while end - start < self.config.groups_per_request
            && self.groups.get(group_slot(end)) == Some(&Group::Missing)
        {
            end += 1;
        }
        Some(self.start_request(source, start..end, None, now))
    }

    fn start_request(
        &mut self,
        source: SourceId,
        groups: Range<u64>,
        helps: Option<RequestId>,
        now: Time,
    ) -> Request {
        let id = self.next_request;
        self.next_request += 1;
        if helps.is_none() {
            for g in &mut self.groups[group_slot(groups.start)..group_slot(groups.end)] {
                *g = Group::InFlight(id);
            }
        }
        self.sources[source].in_flight += 1;
        self.requests.insert(
            id,
            InFlight {
                source,
                groups: groups.clone(),
                next: groups.start,
                last_progress: now,
                helps,
            },
        );
        Request { id, source, groups }
    }

    /// Nothing is missing: an idle `source` fetches again the first group
    /// another source's request has not delivered yet (see the module
    /// documentation).
    fn endgame_request(&mut self, source: SourceId, now: Time) -> Option<Request> {
        if self.sources[source].in_flight > 0 {
            return None;
        }
        let (helped, group) = self
            .requests
            .iter()
            .filter(|(_, r)| r.helps.is_none() && r.source != source)
            .filter_map(|(id, r)| {
                let group = (r.next..r.groups.end)
                    .find(|g| self.groups.get(group_slot(*g)) == Some(&Group::InFlight(*id)))?;
                Some((r.last_progress, *id, group))
            })
            .min()
            .map(|(_, id, group)| (id, group))?;
        Some(self.start_request(source, group..group + 1, Some(helped), now))
    }

    /// Bytes of `request` arrived (a group not complete yet): a slow
    /// source is not a stalled one. Only "no data for the stall timeout"
    /// drops a source.
    pub fn handle_data_received(&mut self, request: RequestId, now: Time) {
        if let Some(inflight) = self.requests.get_mut(&request) {
            inflight.last_progress = now;
        }
    }

    /// Group `group` of `request` arrived and verified.
    pub fn handle_group_verified(&mut self, request: RequestId, group: u64, now: Time) {
        let Some(inflight) = self.requests.get_mut(&request) else {
            return; // cancelled already
        };
        if group != inflight.next || !inflight.groups.contains(&group) {
            return;
        }
        inflight.next += 1;
        inflight.last_progress = now;
        let source = inflight.source;
        let Some(state) = self.groups.get_mut(group_slot(group)) else {
            return;
        };
        let owner = match *state {
            Group::InFlight(owner) if owner != request => Some(owner),
            _ => None,
        };
        if *state != Group::Verified {
            *state = Group::Verified;
            self.verified += 1;
            let r = group_range(self.size, group);
            self.sources[source].bytes += r.end - r.start;
        }
        // Helpers delivered everything the owner still had to: it is done.
        if let Some(owner) = owner {
            let delivered = self.requests.get(&owner).is_some_and(|r| {
                (r.next..r.groups.end)
                    .all(|g| self.groups.get(group_slot(g)) == Some(&Group::Verified))
            });
            if delivered {
                self.finish(owner);
                self.events.push_back(DownloadEvent::Cancel(owner));
            }
        }
    }

    /// Group `group` of `request` arrived but failed verification.
    pub fn handle_group_bad(&mut self, request: RequestId, group: u64) {
        if let Some(source) = self.requests.get(&request).map(|r| r.source) {
            // The driver stops reading this request itself; no Cancel for it.
            self.finish(request);
            self.drop_source(
                source,
                format!("sent bytes that failed verification (group {group})"),
            );
        }
    }

    /// `request`'s response ended. If it ended before its last group, the
    /// source truncated it and is dropped.
    pub fn handle_request_done(&mut self, request: RequestId) {
        let Some(inflight) = self.requests.get(&request) else {
            return;
        };
        let (source, stopped_at, end) = (inflight.source, inflight.next, inflight.groups.end);
        self.finish(request);
        if stopped_at < end {
            self.drop_source(
                source,
                format!("response ended early, at group {stopped_at}"),
            );
        }
    }

    /// `request` failed outright (connection refused, bad status, ...).
    pub fn handle_request_failed(&mut self, request: RequestId, reason: String) {
        if let Some(source) = self.requests.get(&request).map(|r| r.source) {
            self.finish(request);
            self.drop_source(source, reason);
        }
    }

    /// `request` was refused because the source is busy: try it again
    /// after `retry_after`, and give its groups to others meanwhile.
    pub fn handle_request_busy(&mut self, request: RequestId, retry_after: Duration, now: Time) {
        if let Some(source) = self.requests.get(&request).map(|r| r.source) {
            self.sources[source].paused_until = now + retry_after;
            self.finish(request);
        }
    }

    /// Drops sources whose requests made no progress for the stall timeout.
    pub fn handle_timeout(&mut self, now: Time) {
        let stalled: Vec<SourceId> = self
            .requests
            .values()
            .filter(|r| now.since(r.last_progress) >= self.config.stall_timeout)
            .map(|r| r.source)
            .collect();
        for source in stalled {
            let secs = self.config.stall_timeout.as_secs_f32();
            self.drop_source(source, format!("stalled: no data for {secs:.0} s"));
        }
    }

    /// Ends `request`, returning its unfinished groups to the pool.
    fn finish(&mut self, request: RequestId) {
        let Some(inflight) = self.requests.remove(&request) else {
            return;
        };
        for g in inflight.next..inflight.groups.end {
            if let Some(state) = self.groups.get_mut(group_slot(g)) {
                if *state == Group::InFlight(request) {
                    *state = Group::Missing;
                }
            }
        }
        if let Some(source) = self.sources.get_mut(inflight.source) {
            source.in_flight = source.in_flight.saturating_sub(1);
        }
    }

    fn drop_source(&mut self, source: SourceId, reason: String) {
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        if entry.dropped {
            return;
        }
        entry.dropped = true;
        let doomed: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.source == source)
            .map(|(id, _)| *id)
            .collect();
        for request in doomed {
            self.finish(request);
            self.events.push_back(DownloadEvent::Cancel(request));
        }
        self.events
            .push_back(DownloadEvent::SourceDropped { source, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::GROUP_LEN;

    fn config() -> DownloadConfig {
        DownloadConfig {
            requests_per_source: 1,
            groups_per_request: 2,
            stall_timeout: Duration::from_secs(5),
        }
    }

    /// Serves every request fully and correctly.
    fn complete(plan: &mut DownloadPlan, request: &Request, now: Time) {
        for g in request.groups.clone() {
            plan.handle_group_verified(request.id, g, now);
        }
        plan.handle_request_done(request.id);
    }

    #[test]
    fn requests_spread_over_sources_and_finish() {
        let mut plan = DownloadPlan::new(5 * GROUP_LEN, [], config());
        let (a, b) = (plan.add_source(), plan.add_source());
        let r1 = plan.next_request(Time(0)).unwrap();
        let r2 = plan.next_request(Time(0)).unwrap();
        assert_eq!((r1.source, r1.groups.clone()), (a, 0..2));
        assert_eq!((r2.source, r2.groups.clone()), (b, 2..4));
        assert_eq!(plan.next_request(Time(0)), None, "one request per source");
        complete(&mut plan, &r1, Time(1));
        let r3 = plan.next_request(Time(1)).unwrap();
        assert_eq!((r3.source, r3.groups.clone()), (a, 4..5));
        complete(&mut plan, &r2, Time(2));
        complete(&mut plan, &r3, Time(2));
        assert!(plan.is_complete());
        assert_eq!(plan.bytes_from(a) + plan.bytes_from(b), 5 * GROUP_LEN);
    }

    #[test]
    fn a_bad_group_drops_the_source_and_another_refetches_it() {
        let mut plan = DownloadPlan::new(4 * GROUP_LEN, [], config());
        let (bad, good) = (plan.add_source(), plan.add_source());
        let r1 = plan.next_request(Time(0)).unwrap();
        let r2 = plan.next_request(Time(0)).unwrap();
        assert_eq!(r1.source, bad);
        plan.handle_group_verified(r1.id, 0, Time(1));
        plan.handle_group_bad(r1.id, 1);
        assert!(matches!(
            plan.poll_event(),
            Some(DownloadEvent::SourceDropped { source, .. }) if source == bad
        ));
        assert_eq!(
            plan.poll_event(),
            None,
            "no Cancel for the request that reported"
        );
        complete(&mut plan, &r2, Time(2));
        let r3 = plan.next_request(Time(2)).unwrap();
        assert_eq!((r3.source, r3.groups.clone()), (good, 1..2));
        complete(&mut plan, &r3, Time(3));
        assert!(plan.is_complete());
        assert_eq!(plan.bytes_from(bad), GROUP_LEN, "its good group counts");
    }

    #[test]
    fn a_truncated_or_stalled_response_drops_the_source() {
        let mut plan = DownloadPlan::new(4 * GROUP_LEN, [], config());
        let (a, b) = (plan.add_source(), plan.add_source());
        let r1 = plan.next_request(Time(0)).unwrap();
        let r2 = plan.next_request(Time(0)).unwrap();
        plan.handle_group_verified(r1.id, 0, Time(1));
        plan.handle_request_done(r1.id); // stopped after one of two groups
        match plan.poll_event() {
            Some(DownloadEvent::SourceDropped { source, reason }) => {
                assert_eq!(source, a);
                assert!(reason.contains("ended early"), "{reason}");
            }
            other => panic!("expected a drop, got {other:?}"),
        }
        assert_eq!(plan.active_sources(), 1);
        // b stalls.
        plan.handle_timeout(Time(4_999));
        assert_eq!(plan.active_sources(), 1);
        plan.handle_timeout(Time(5_000));
        assert_eq!(plan.active_sources(), 0);
        assert!(plan.is_stuck());
        assert!(matches!(
            plan.poll_event(),
            Some(DownloadEvent::Cancel(id)) if id == r2.id
        ));
        assert!(matches!(
            plan.poll_event(),
            Some(DownloadEvent::SourceDropped { source, .. }) if source == b
        ));
    }

    #[test]
    fn verified_groups_from_before_are_never_requested() {
        let mut plan = DownloadPlan::new(4 * GROUP_LEN, [0, 1, 3], config());
        plan.add_source();
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!(r.groups, 2..3);
        complete(&mut plan, &r, Time(1));
        assert!(plan.is_complete());
        assert_eq!(plan.bytes_from(0), GROUP_LEN);
    }

    #[test]
    fn a_busy_source_is_paused_not_dropped() {
        let mut plan = DownloadPlan::new(2 * GROUP_LEN, [], config());
        let a = plan.add_source();
        let r = plan.next_request(Time(0)).unwrap();
        plan.handle_request_busy(r.id, Duration::from_secs(2), Time(0));
        assert_eq!(plan.active_sources(), 1);
        assert_eq!(plan.next_request(Time(1_000)), None);
        assert_eq!(plan.next_wakeup(Time(1_000)), Some(Time(2_000)));
        let again = plan.next_request(Time(2_000)).unwrap();
        assert_eq!((again.source, again.groups), (a, 0..2));
    }

    #[test]
    fn an_empty_file_is_one_group() {
        let mut plan = DownloadPlan::new(0, [], config());
        plan.add_source();
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!(r.groups, 0..1);
        complete(&mut plan, &r, Time(0));
        assert!(plan.is_complete());
    }

    #[test]
    fn in_the_endgame_idle_sources_fetch_a_stalled_requests_groups_one_at_a_time() {
        let config = DownloadConfig {
            requests_per_source: 1,
            groups_per_request: 16,
            stall_timeout: Duration::from_secs(5),
        };
        let mut plan = DownloadPlan::new(3 * GROUP_LEN, [], config);
        let dead = plan.add_source();
        let live = plan.add_source();
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.groups.clone()), (dead, 0..3));
        // Nothing missing: the idle live source helps, one group at a time.
        let help = plan.next_request(Time(0)).unwrap();
        assert_eq!((help.source, help.groups.clone()), (live, 0..1));
        assert!(
            plan.next_request(Time(0)).is_none(),
            "the live source is busy"
        );
        complete(&mut plan, &help, Time(1));
        let help = plan.next_request(Time(1)).unwrap();
        assert_eq!(help.groups, 1..2);
        complete(&mut plan, &help, Time(2));
        let help = plan.next_request(Time(2)).unwrap();
        assert_eq!(help.groups, 2..3);
        complete(&mut plan, &help, Time(3));
        assert!(plan.is_complete());
        assert_eq!(plan.bytes_from(live), 3 * GROUP_LEN);
        // The dead source's request is cancelled, the source not dropped.
        assert_eq!(plan.poll_event(), Some(DownloadEvent::Cancel(first.id)));
        assert_eq!(plan.poll_event(), None);
        assert_eq!(plan.active_sources(), 2);
    }

    #[test]
    fn a_slow_owner_and_its_helper_count_each_group_once() {
        let config = DownloadConfig {
            requests_per_source: 1,
            groups_per_request: 16,
            stall_timeout: Duration::from_secs(5),
        };
        let mut plan = DownloadPlan::new(2 * GROUP_LEN, [], config);
        let slow = plan.add_source();
        let fast = plan.add_source();
        let owned = plan.next_request(Time(0)).unwrap();
        let help = plan.next_request(Time(0)).unwrap();
        assert_eq!(help.groups, 0..1);
        // Both deliver group 0; it counts once, for the first.
        plan.handle_group_verified(owned.id, 0, Time(1));
        plan.handle_group_verified(help.id, 0, Time(2));
        plan.handle_request_done(help.id);
        assert_eq!(plan.verified_bytes(), GROUP_LEN);
        assert_eq!(plan.bytes_from(slow), GROUP_LEN);
        assert_eq!(plan.bytes_from(fast), 0);
        // The owner's own group 1 is next for the helper.
        let help = plan.next_request(Time(2)).unwrap();
        assert_eq!((help.source, help.groups.clone()), (fast, 1..2));
        plan.handle_group_verified(owned.id, 1, Time(3));
        plan.handle_request_done(owned.id);
        assert!(plan.is_complete());
        assert!(plan.poll_event().is_none(), "no source was dropped");
    }
}
