//! Download planning: which groups of a file to ask which source for, and
//! what to do when a source misbehaves.
//!
//! Sources are complete (they have the whole file: [`DownloadPlan::add_source`])
//! or partial (downloaders themselves, serving the groups they have verified
//! so far: [`DownloadPlan::add_partial_source`]). A partial source is first
//! asked what it has (a [`RequestKind::Probe`], the driver's `HEAD` for
//! `X-Available-Ranges`); every response's ranges update it
//! ([`DownloadPlan::handle_availability`]), and one that has nothing the
//! download still misses is probed again every `probe_interval`, never
//! dropped for it: it may still grow. While some group no active source
//! has (no complete source left, no partial one that has it), the plan is
//! starving ([`DownloadPlan::is_starving`]): the driver asks for more
//! sources, though it gives up only once no source is left at all.
//!
//! A complete source may ration its upload among a crowd (super-seeding,
//! see [`crate::ration`]): it says which groups it offers now
//! ([`DownloadPlan::handle_offer`]) or refuses a request with an offer
//! ([`DownloadPlan::handle_request_offered`], never taken for a lie). It
//! is then asked, rarest first, only for groups of its offer, and when it
//! offers nothing the download misses it is probed each `probe_interval`
//! like a partial source; it still counts as having every group, so it
//! keeps the download from starving.
//!
//! The plan hands out requests to sources with a free request slot, least
//! busy first, so more sources means more groups in flight. Which groups:
//!
//! - How many: a source's first runs are short (`swarm_groups_per_request`)
//!   and double while its requests take less than `request_time` (2 s),
//!   up to `groups_per_request`, halving when one takes over twice that:
//!   a fast source soon gets 16 MiB requests, a slow one (a seed a whole
//!   crowd shares) never ties up many groups that peers could soon give.
//! - From complete sources only: a run of up to that many
//!   missing groups, the first run at a group picked at random (from the
//!   configured seed), the next ones following on from it, wrapping at the
//!   end of the file. Downloaders that start together from one seed so
//!   fetch different parts, and disk writes stay sequential within runs.
//! - Once any partial source is in the download: rarest first among the
//!   missing groups the chosen source has (how many partial sources have a
//!   group, counted incrementally; complete sources count for every group
//!   alike, so once), random among equals, the run extended over following
//!   groups that are missing and that the source has, up to
//!   `swarm_groups_per_request` (short runs, so freshly verified groups
//!   spread quickly). The search starts at a random group and takes the
//!   first group held by as few sources as possible (no partial source,
//!   for a complete source; only itself, for a partial one), found a word
//!   at a time from sets of the groups none or one source has; failing
//!   that, the rarest among the next [`RAREST_SCAN_GROUPS`] it has.
//!
//! The driver streams each response, verifies every group against the
//! [`crate::tree::VerifiedTree`] and reports it. A source that sends a bad
//! group, truncates a response, fails or stalls is dropped with the
//! reason; its outstanding groups return to the pool and go to the others.
//! So is a partial source that answers 416 for a range whose groups it
//! all said it had ([`DownloadPlan::handle_request_unavailable`]); a 416
//! for a range it claimed only part of (or none of) is honest (a server
//! serves only ranges wholly inside its verified groups) and only teaches
//! the plan what it has. A source that is
//! merely busy (no upload slot) is paused, not dropped. Groups verified in
//! an earlier run are never asked for again.
//!
//! Endgame, per source: once no group a source has is missing, that source,
//! when it has nothing in flight, may help another source's request: at
//! once when no missing group can be asked of anyone (the download's own
//! endgame, as BitTorrent's), before that only for a request that made no
//! progress for half the stall timeout (in a swarm a partial peer often
//! has nothing we miss, and its upload is worth more to the others than a
//! second copy of a group already on its way). A helper asks
//! for the last group that request has not delivered and it has (the
//! request's own stream works from its first, so the two meet instead of
//! racing for one group; one group at a time, so the waste is at most
//! 1 MiB a helper), starting with the request that last made progress
//! longest ago; helpers spread over the groups before two fetch the same
//! one, a group gets a second helper only once neither its owner nor its
//! first helper made progress for half the stall timeout (a helper that
//! sent no byte in a tenth of it, or whose source never sent one when
//! asked before, does not count: it may be dead; and a source that has
//! sent bytes may join a first helper that has not), and never a third
//! (every extra copy would spend a slow link's upload). Whichever copy verifies
//! first counts, and every other request left with nothing but verified
//! groups (the owner, the other helpers of that group) is cancelled at
//! once, freeing its source's slot. So a source that stalls near the end,
//! or a dead source that happened to be asked first, holds the download
//! up for no longer than the others take to fetch its groups.
//!
//! Work per request is at most a few passes over the file's groups a word
//! at a time and [`RAREST_SCAN_GROUPS`] looked at one by one; a source
//! that had nothing to be asked for is not looked at again until a group
//! goes back to the pool or it says it has more. So a file of a million
//! groups with 64 sources stays cheap. No randomness but the seeded
//! generator, so a plan is replayable.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::Duration;

use crate::Time;
use crate::groups::GroupSet;
use crate::rng::SplitMix64;
use crate::tree::{MAX_DOWNLOAD_SIZE, group_count, group_range, group_slot};

/// Tunables of a download.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Requests in flight per source.
    pub requests_per_source: usize,
    /// Groups asked for in one request while every source is complete, at
    /// most (see `request_time`).
    pub groups_per_request: u64,
    /// Groups asked for in one request once any partial source is known.
    pub swarm_groups_per_request: u64,
    /// A request that makes no progress for this long drops its source.
    pub stall_timeout: Duration,
    /// How often a partial source that has nothing the download misses is
    /// asked again what it has.
    pub probe_interval: Duration,
    /// Seeds the choice among equals (the driver passes a random one, so
    /// downloaders of one file pick differently).
    pub seed: u64,
    /// How long one request should take: a source's first requests are
    /// short (`swarm_groups_per_request`), and its runs double while its
    /// requests take less than this and halve when they take more than
    /// twice as long, so a fast source soon gets `groups_per_request` and
    /// a slow one (a seed a crowd shares) never holds groups for long.
    /// Zero: every run as long as allowed from the start.
    pub request_time: Duration,
}

impl Default for DownloadConfig {
    /// Two requests per source: two of a leaf's four upload slots, leaving
    /// room for other downloaders. Up to 16 MiB a request from a fast
    /// source, so per-request overhead vanishes (measured on a 1 GiB file:
    /// 4 MiB requests were ~10% slower than 16 MiB ones), sized to about
    /// two seconds of a source's rate. In a swarm, 2 MiB requests at most,
    /// so what one downloader verifies is soon somewhere else too; partial
    /// sources with nothing new asked again every second.
    fn default() -> Self {
        Self {
            requests_per_source: 2,
            groups_per_request: 16,
            swarm_groups_per_request: 2,
            stall_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(1),
            seed: 0,
            request_time: Duration::from_secs(2),
        }
    }
}

/// Groups looked at one by one, at most, when choosing the rarest of the
/// groups a source has that more than the fewest possible sources have.
pub const RAREST_SCAN_GROUPS: u64 = 4096;

/// A source, by its index in the order it was added.
pub type SourceId = usize;
/// A request, numbered from 1.
pub type RequestId = u64;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// The bytes of the request's groups.
    Data,
    /// Only which groups the source has (`HEAD`, for `X-Available-Ranges`);
    /// the request's groups are empty.
    Probe,
}

/// Something to fetch: `groups` of the file, from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id, for reporting back.
    pub id: RequestId,
    /// Whom to ask.
    pub source: SourceId,
    /// Which groups, in order (empty for a probe).
    pub groups: Range<u64>,
    /// Data or a probe.
    pub kind: RequestKind,
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

/// What the plan knows of the groups a source has.
#[derive(Debug)]
enum Has {
    /// Added as complete (a search hit's word); it has said nothing itself.
    Assumed,
    /// It said itself that it has the whole file.
    Whole,
    /// Partial, not asked yet.
    Unknown,
    /// Partial: these groups, as it said (only ever grows).
    Some(GroupSet),
}

impl Has {
    fn is_complete(&self) -> bool {
        matches!(self, Has::Assumed | Has::Whole)
    }

    fn contains(&self, group: u64) -> bool {
        match self {
            Has::Assumed | Has::Whole => true,
            Has::Unknown => false,
            Has::Some(set) => set.contains(group),
        }
    }

    fn set(&self) -> Option<&GroupSet> {
        match self {
            Has::Some(set) => Some(set),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Source {
    dropped: bool,
    paused_until: Time,
    in_flight: usize,
    bytes: u64,
    has: Has,
    /// A partial source with nothing we miss: when to ask it again.
    probe_at: Option<Time>,
    /// It had no missing group to be asked for when the pool's version
    /// was this: no need to look again until a group goes back to the pool
    /// or it says it has more.
    nothing_at: Option<u64>,
    /// It was asked for data in this run.
    asked: bool,
    /// Some of its bytes arrived in this run.
    sent: bool,
    /// Groups its next run may have (see `DownloadConfig::request_time`).
    run: u64,
    /// A complete source that rations its upload (super-seeding: see
    /// [`crate::ration`]): the groups it offers now. Runs are chosen only
    /// among them; it still counts as having every group.
    offer: Option<GroupSet>,
    /// Requests it refused with an offer since it last sent a byte: past
    /// [`FREE_REFUSALS`], each pauses it, longer and longer.
    refusals: u32,
}

/// Refusals with an offer in a row a source may make before it is paused
/// for them (an honest seed refuses only when its counts moved since the
/// last offer; one that keeps refusing is not asked again at once).
pub const FREE_REFUSALS: u32 = 3;

#[derive(Debug)]
struct InFlight {
    source: SourceId,
    kind: RequestKind,
    groups: Range<u64>,
    /// The next group expected on this request's stream.
    next: u64,
    last_progress: Time,
    /// When it was made.
    started: Time,
    /// Any of its bytes arrived.
    received: bool,
    /// Its source was asked for data before and never sent a byte: maybe
    /// dead.
    suspect: bool,
    /// The request whose group this one fetches again (endgame).
    helps: Option<RequestId>,
}

/// The state of one file's download. See the module documentation.
#[derive(Debug)]
pub struct DownloadPlan {
    size: u64,
    config: DownloadConfig,
    groups: Vec<Group>,
    /// The groups in state `Missing`, for word-at-a-time scans.
    missing: GroupSet,
    verified: u64,
    sources: Vec<Source>,
    requests: BTreeMap<RequestId, InFlight>,
    next_request: RequestId,
    events: VecDeque<DownloadEvent>,
    /// Per group, how many active partial sources say they have it.
    holders: Holders,
    /// Groups not verified that no active partial source has (so only a
    /// complete source can give them).
    unheld: u64,
    /// Active sources with the whole file.
    complete_sources: usize,
    /// Active partial sources.
    partial_sources: usize,
    /// Active partial sources not asked yet what they have.
    unknown_sources: usize,
    /// Bumped whenever a group goes back to the pool (`Missing`).
    pool_version: u64,
    /// Where the next run from complete sources starts looking.
    cursor: u64,
    rng: SplitMix64,
    /// Words and groups looked at while choosing groups, for tests that
    /// bound the work.
    #[cfg(test)]
    visited: u64,
}

impl DownloadPlan {
    /// A plan for a file of `size` bytes of which `verified` groups are
    /// already on disk and checked.
    /// `size` must be at most [`MAX_DOWNLOAD_SIZE`]; larger sizes are
    /// clamped so the plan's memory stays bounded whatever the caller does.
    pub fn new(size: u64, verified: impl IntoIterator<Item = u64>, config: DownloadConfig) -> Self {
        let size = size.min(MAX_DOWNLOAD_SIZE);
        let count = group_count(size);
        let mut groups = vec![Group::Missing; group_slot(count)];
        let mut missing = GroupSet::full(size);
        let mut done = 0;
        for index in verified {
            if let Some(g) = groups.get_mut(group_slot(index)) {
                if *g != Group::Verified {
                    *g = Group::Verified;
                    missing.remove(index);
                    done += 1;
                }
            }
        }
        let mut rng = SplitMix64::new(config.seed);
        let cursor = rng.below(count);
        Self {
            size,
            config,
            groups,
            missing,
            verified: done,
            sources: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            events: VecDeque::new(),
            holders: Holders::default(),
            unheld: count - done,
            complete_sources: 0,
            partial_sources: 0,
            unknown_sources: 0,
            pool_version: 0,
            cursor,
            rng,
            #[cfg(test)]
            visited: 0,
        }
    }

    /// Adds a source that has the whole file; returns its id.
    pub fn add_source(&mut self) -> SourceId {
        self.push_source(Has::Assumed)
    }

    /// Adds a partial source (a downloader itself); what it has is unknown,
    /// so it is probed first. Returns its id.
    pub fn add_partial_source(&mut self) -> SourceId {
        self.push_source(Has::Unknown)
    }

    fn push_source(&mut self, has: Has) -> SourceId {
        if matches!(has, Has::Unknown) {
            self.unknown_sources += 1;
        }
        if has.is_complete() {
            self.complete_sources += 1;
        } else {
            self.partial_sources += 1;
        }
        self.sources.push(Source {
            dropped: false,
            paused_until: Time::ZERO,
            in_flight: 0,
            bytes: 0,
            has,
            probe_at: None,
            nothing_at: None,
            asked: false,
            sent: false,
            refusals: 0,
            run: if self.config.request_time.is_zero() {
                u64::MAX
            } else {
                self.config.swarm_groups_per_request.max(1)
            },
            offer: None,
        });
        self.sources.len() - 1
    }

    /// True if `source` is partial: added as one and not yet known to have
    /// the whole file, or added as complete but found to be partial.
    pub fn is_partial(&self, source: SourceId) -> bool {
        self.sources
            .get(source)
            .is_some_and(|s| !s.has.is_complete())
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

    /// The groups not verified and not on their way from any source: what
    /// a rationing seed is told the download needs (`X-Need`).
    pub fn needed(&self) -> GroupSet {
        self.missing.clone()
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
    /// source has been dropped. A partial source that has nothing the
    /// download misses keeps it from being stuck: it may still grow, and is
    /// probed again.
    pub fn is_stuck(&self) -> bool {
        !self.is_complete() && self.active_sources() == 0
    }

    /// True if some group not verified yet has no active source that has
    /// it: no complete source is left and no partial source says it has
    /// that group (and every partial source has been asked what it has).
    /// The download may still finish (a partial source may grow) so it is
    /// not stuck, but it should look for more sources. Constant time (the
    /// count is kept as sources and groups change).
    pub fn is_starving(&self) -> bool {
        !self.is_complete()
            && self.complete_sources == 0
            && self.unknown_sources == 0
            && self.unheld > 0
    }

    /// The earliest time a paused source may be asked again or a partial
    /// source probed again, if any waits for that.
    pub fn next_wakeup(&self, now: Time) -> Option<Time> {
        self.sources
            .iter()
            .filter(|s| !s.dropped)
            .flat_map(|s| {
                let paused = (s.paused_until > now).then_some(s.paused_until);
                let probe = s
                    .probe_at
                    .filter(|at| *at > now && s.in_flight == 0)
                    .map(|at| at.max(s.paused_until));
                [paused, probe]
            })
            .flatten()
            .min()
    }

    /// The next request to make, if a source has a free slot and
    /// something to do. Call until `None`. Probes of sources not asked yet
    /// come first (they are cheap, and what they tell makes the choices
    /// that follow better), then the least busy sources.
    pub fn next_request(&mut self, now: Time) -> Option<Request> {
        let mut ready: Vec<(bool, usize, SourceId)> = self
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                !s.dropped && s.paused_until <= now && s.in_flight < self.config.requests_per_source
            })
            .map(|(id, s)| (!matches!(s.has, Has::Unknown), s.in_flight, id))
            .collect();
        ready.sort_unstable();
        ready
            .into_iter()
            .find_map(|(_, _, source)| self.request_for(source, now))
    }

    /// What `source` (ready for another request) should be asked, if
    /// anything.
    fn request_for(&mut self, source: SourceId, now: Time) -> Option<Request> {
        let (unknown, in_flight, probe_at) = {
            let s = &self.sources[source];
            (matches!(s.has, Has::Unknown), s.in_flight, s.probe_at)
        };
        if unknown {
            return (in_flight == 0).then(|| self.start_probe(source, now));
        }
        // The pool only shrinks but when its version moves, and what the
        // source has only changes through set_has: nothing then, nothing now.
        if self.sources[source].nothing_at != Some(self.pool_version) {
            if let Some(run) = self.pick_run(source) {
                return Some(self.start_request(source, run, None, now));
            }
            self.sources[source].nothing_at = Some(self.pool_version);
        }
        if let Some(help) = self.endgame_request(source, now) {
            return Some(help);
        }
        // A partial source with nothing we miss, or a complete one that
        // offers nothing we miss: ask again later.
        let rationed = self.sources[source].offer.is_some();
        if (self.sources[source].has.is_complete() && !rationed) || in_flight > 0 {
            return None;
        }
        match probe_at {
            Some(at) if at <= now => Some(self.start_probe(source, now)),
            Some(_) => None,
            None => {
                self.sources[source].probe_at = Some(now + self.config.probe_interval);
                None
            }
        }
    }

    /// The run of missing groups `source` should be asked for next.
    fn pick_run(&mut self, source: SourceId) -> Option<Range<u64>> {
        let swarm = self.partial_sources > 0 || self.sources[source].offer.is_some();
        let start = if swarm {
            self.rarest_for(source)?
        } else {
            self.missing
                .next_member(self.cursor)
                .or_else(|| self.missing.next_member(0))?
        };
        let limit = if swarm {
            self.config.swarm_groups_per_request
        } else {
            self.config.groups_per_request
        }
        .min(self.sources[source].run)
        .max(1);
        let (has, offer) = (&self.sources[source].has, &self.sources[source].offer);
        let mut end = start + 1;
        while end - start < limit
            && self.missing.contains(end)
            && has.contains(end)
            && offer.as_ref().is_none_or(|o| o.contains(end))
        {
            end += 1;
        }
        if !swarm {
            self.cursor = end;
        }
        Some(start..end)
    }

    /// Among the missing groups `source` has, one that the fewest partial
    /// sources have, random among equals. The scan starts at a random
    /// group and wraps. First, a word at a time, the groups held by the
    /// fewest sources possible (none for a complete source, then one; one,
    /// itself, for a partial source): the first found is taken. Else one
    /// by one, the rarest of the next [`RAREST_SCAN_GROUPS`] (a reservoir
    /// of one among the equals seen), stopping early at a group only two
    /// have. So a request costs at most a few passes over the words, not
    /// one over the groups with a random number each.
    fn rarest_for(&mut self, source: SourceId) -> Option<u64> {
        let count = self.groups.len() as u64;
        let start = self.rng.below(count);
        // What it can be asked for: what it has, or what it offers.
        let complete = self.sources[source].has.is_complete();
        let has = self.sources[source]
            .offer
            .as_ref()
            .or(self.sources[source].has.set())
            .map(GroupSet::words);
        let missing = self.missing.words();
        let mut visited = 0u64;
        let candidates = |index: usize| {
            missing.get(index).copied().unwrap_or(0)
                & has.map_or(u64::MAX, |w| w.get(index).copied().unwrap_or(0))
        };
        let counted = !self.holders.counts.is_empty();
        let none = |index: usize| {
            if counted {
                self.holders.none.words().get(index).copied().unwrap_or(0)
            } else {
                u64::MAX
            }
        };
        let one = |index: usize| {
            if counted {
                self.holders.one.words().get(index).copied().unwrap_or(0)
            } else {
                0
            }
        };
        let mut found = None;
        if complete {
            found = first_set_from(count, start, |i| candidates(i) & none(i), &mut visited);
        }
        if found.is_none() {
            found = first_set_from(count, start, |i| candidates(i) & one(i), &mut visited);
        }
        if found.is_none() {
            let floor = 2;
            let mut best = u32::MAX;
            let mut ties = 0u64;
            let mut looked = 0u64;
            let mut from = start;
            // How far past the start the last group looked at was: the
            // scan ends where it began.
            let mut last_distance = None;
            while looked < RAREST_SCAN_GROUPS {
                let Some(group) = first_set_from(count, from, candidates, &mut visited) else {
                    break;
                };
                let distance = (group + count - start) % count;
                if last_distance.is_some_and(|last| distance <= last) {
                    break;
                }
                last_distance = Some(distance);
                looked += 1;
                let holders = self.holders.count(group);
                if holders < best {
                    best = holders;
                    ties = 1;
                    found = Some(group);
                } else if holders == best {
                    ties += 1;
                    if self.rng.below(ties) == 0 {
                        found = Some(group);
                    }
                }
                from = (group + 1) % count;
                if holders <= floor {
                    break;
                }
            }
            visited += looked;
        }
        #[cfg(test)]
        {
            self.visited += visited;
        }
        #[cfg(not(test))]
        let _ = visited;
        found
    }

    fn start_probe(&mut self, source: SourceId, now: Time) -> Request {
        self.sources[source].probe_at = None;
        self.insert_request(source, RequestKind::Probe, 0..0, None, now)
    }

    fn start_request(
        &mut self,
        source: SourceId,
        groups: Range<u64>,
        helps: Option<RequestId>,
        now: Time,
    ) -> Request {
        self.insert_request(source, RequestKind::Data, groups, helps, now)
    }

    fn insert_request(
        &mut self,
        source: SourceId,
        kind: RequestKind,
        groups: Range<u64>,
        helps: Option<RequestId>,
        now: Time,
    ) -> Request {
        let id = self.next_request;
        self.next_request += 1;
        if helps.is_none() {
            for index in groups.clone() {
                if let Some(g) = self.groups.get_mut(group_slot(index)) {
                    *g = Group::InFlight(id);
                    self.missing.remove(index);
                }
            }
        }
        let suspect =
            kind == RequestKind::Data && self.sources[source].asked && !self.sources[source].sent;
        self.sources[source].in_flight += 1;
        if kind == RequestKind::Data {
            self.sources[source].asked = true;
        }
        self.requests.insert(
            id,
            InFlight {
                source,
                kind,
                groups: groups.clone(),
                next: groups.start,
                last_progress: now,
                started: now,
                received: false,
                suspect,
                helps,
            },
        );
        Request {
            id,
            source,
            groups,
            kind,
        }
    }

    /// Nothing `source` has is missing: if idle, it fetches again the last
    /// group another source's request has not delivered yet and it has
    /// (see the module documentation).
    fn endgame_request(&mut self, source: SourceId, now: Time) -> Option<Request> {
        let helper = &self.sources[source];
        if helper.in_flight > 0 {
            return None;
        }
        // Helpers spread over the groups before doubling up on one. A
        // group gets a second helper only once neither its owner nor its
        // first helper made progress for half the stall timeout, and never
        // a third: every copy is a slot of a source and upload of a peer.
        // A helper whose first byte has not come within a tenth of the
        // stall timeout, or whose source never sent a byte when asked
        // before, costs no one's upload and may be dead: it does not count
        // (dead helpers must not keep a live one away); nor does a first
        // helper keep away a source that has sent bytes while it and its
        // source have sent none.
        let first_byte = self.config.stall_timeout / 10;
        let proven = helper.sent;
        let mut helpers: BTreeMap<u64, (usize, Time, bool)> = BTreeMap::new();
        for r in self.requests.values().filter(|r| {
            r.helps.is_some() && (r.received || (!r.suspect && now.since(r.started) < first_byte))
        }) {
            let unproven = !r.received && !self.sources[r.source].sent;
            let entry = helpers
                .entry(r.groups.start)
                .or_insert((0, r.last_progress, true));
            entry.0 += 1;
            entry.1 = entry.1.max(r.last_progress);
            entry.2 &= unproven;
        }
        let patience = self.config.stall_timeout / 2;
        // Before the endgame (while a missing group can still be asked of
        // someone), a request gets a first helper only once it stalls for
        // half the stall timeout: in a swarm a partial source often has
        // nothing we miss, and its upload is worth more to the others than
        // a second copy of a group already on its way.
        let endgame = !self.missing_fetchable();
        // A rationing seed helps with what it offers while it offers a
        // group still missing; once it offers none (it was told the
        // download needs nothing else, so its offer can't name a group on
        // its way), with any: asked for one it doesn't offer, it serves
        // it or offers a missing one.
        let offers_missing = helper
            .offer
            .as_ref()
            .map(|o| o.iter().any(|g| self.missing.contains(g)));
        let (_, _, helped, group) = self
            .requests
            .iter()
            .filter(|(_, r)| r.kind == RequestKind::Data && r.helps.is_none() && r.source != source)
            .filter_map(|(id, r)| {
                (r.next..r.groups.end)
                    .filter(|g| {
                        self.groups.get(group_slot(*g)) == Some(&Group::InFlight(*id))
                            && helper.has.contains(*g)
                            && (offers_missing.is_none_or(|useful| !useful)
                                || helper.offer.as_ref().is_none_or(|o| o.contains(*g)))
                    })
                    .filter_map(|g| {
                        let (count, progress, unproven) =
                            helpers.get(&g).copied().unwrap_or((0, Time::ZERO, true));
                        let allowed = match count {
                            0 => endgame || now.since(r.last_progress) >= patience,
                            1 => {
                                (proven && unproven)
                                    || now.since(progress.max(r.last_progress)) >= patience
                            }
                            _ => false,
                        };
                        allowed.then_some((count, r.last_progress, *id, Reverse(g)))
                    })
                    .min()
            })
            .min()?;
        let Reverse(group) = group;
        Some(self.start_request(source, group..group + 1, Some(helped), now))
    }

    /// What `source` says it has now (a response's `X-Available-Ranges`;
    /// the driver passes [`GroupSet::full`] for a response of a partial
    /// source without it: it is complete now). What a partial source said
    /// before stays: a source's groups only grow, and a long list may have
    /// been cut short.
    pub fn handle_availability(&mut self, source: SourceId, groups: GroupSet, now: Time) {
        let _ = now; // taken like every handler's, for the driver's sake
        let Some(entry) = self.sources.get(source) else {
            return;
        };
        if entry.dropped {
            return;
        }
        let reported = self.fit(groups);
        let has = match &entry.has {
            _ if reported.is_full() => Has::Whole,
            Has::Whole => Has::Whole,
            Has::Some(before) => {
                let mut grown = before.clone();
                grown.union_with(&reported);
                if grown.is_full() {
                    Has::Whole
                } else {
                    Has::Some(grown)
                }
            }
            Has::Assumed | Has::Unknown => Has::Some(reported),
        };
        self.set_has(source, has);
        self.sources[source].probe_at = None;
    }

    /// What a complete `source` offers now (a response's `X-Offer`, see
    /// [`crate::ration`]): runs are asked of it only among these groups,
    /// and when it offers nothing the download misses it is asked again
    /// every `probe_interval`. `None` (a response without the header): it
    /// serves anything again. Ignored for a partial source, whose
    /// availability says what it has.
    pub fn handle_offer(&mut self, source: SourceId, offer: Option<GroupSet>, now: Time) {
        let _ = now; // taken like every handler's, for the driver's sake
        let offer = offer.map(|o| self.fit(o));
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        if entry.dropped || !entry.has.is_complete() || entry.offer == offer {
            return;
        }
        entry.offer = offer;
        entry.nothing_at = None;
        entry.probe_at = None;
    }

    /// A complete source refused a data request because it rations its
    /// upload, offering `offer` instead: not a lie, only a pointer to
    /// other groups. The request's groups go back to the pool and the
    /// source is asked again at once, within its offer; past
    /// [`FREE_REFUSALS`] refusals in a row without a byte between, only
    /// after a pause (one probe interval, doubling up to 32). A refusal
    /// whose offer holds every group refused makes no sense (a rationing
    /// seed serves what it offers) and drops the source.
    pub fn handle_request_offered(&mut self, request: RequestId, offer: GroupSet, now: Time) {
        let Some(inflight) = self.requests.get(&request) else {
            return;
        };
        let source = inflight.source;
        let asked = inflight.next..inflight.groups.end;
        let offer = self.fit(offer);
        let nonsense = !asked.is_empty() && asked.clone().all(|g| offer.contains(g));
        self.finish(request);
        if nonsense {
            self.drop_source(
                source,
                format!(
                    "refused groups {}..{} it offered (416)",
                    asked.start, asked.end
                ),
            );
            return;
        }
        self.handle_offer(source, Some(offer), now);
        let interval = self.config.probe_interval;
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        entry.refusals = entry.refusals.saturating_add(1);
        if let Some(over) = entry.refusals.checked_sub(FREE_REFUSALS + 1) {
            entry.paused_until = now + interval * 2u32.pow(over.min(5));
        }
    }

    /// A probe answered (availability already given through
    /// [`Self::handle_availability`]; if it was not, the source is taken to
    /// have nothing yet). The next probe of the source comes no sooner than
    /// `probe_interval` from `now`.
    pub fn handle_probe_done(&mut self, request: RequestId, now: Time) {
        let Some(inflight) = self.requests.get(&request) else {
            return;
        };
        if inflight.kind != RequestKind::Probe {
            return;
        }
        let source = inflight.source;
        self.finish(request);
        if matches!(self.sources[source].has, Has::Unknown) {
            self.set_has(source, Has::Some(GroupSet::empty(self.size)));
        }
        self.sources[source].probe_at = Some(now + self.config.probe_interval);
    }

    /// A data request was refused with 416, the source saying it has
    /// `groups`. If the source had claimed all the requested groups (it
    /// said it has each of them, or that it has the whole file), it lied
    /// and is dropped: a server answers 206 for any range wholly inside
    /// its verified groups. Else (a range it had claimed only part of, or
    /// none) it only turned out to lack some: what it has is updated and
    /// the groups go back to the pool.
    pub fn handle_request_unavailable(&mut self, request: RequestId, groups: GroupSet, now: Time) {
        let Some(inflight) = self.requests.get(&request) else {
            return;
        };
        let source = inflight.source;
        let asked = inflight.next..inflight.groups.end;
        let claimed = inflight.kind == RequestKind::Data
            && match &self.sources[source].has {
                Has::Whole => !asked.is_empty(),
                Has::Some(set) => !asked.is_empty() && asked.clone().all(|g| set.contains(g)),
                Has::Assumed | Has::Unknown => false,
            };
        self.finish(request);
        if claimed {
            // The driver stops this request itself; no Cancel for it.
            self.drop_source(
                source,
                format!(
                    "claimed groups {}..{} it did not serve (416)",
                    asked.start, asked.end
                ),
            );
        } else {
            self.handle_availability(source, groups, now);
        }
    }

    /// A set of another size's groups read as one of this file's.
    fn fit(&self, groups: GroupSet) -> GroupSet {
        if groups.size() == self.size {
            return groups;
        }
        let mut fitted = GroupSet::empty(self.size);
        let count = fitted.groups();
        for group in groups.iter().take_while(|g| *g < count) {
            fitted.insert(group);
        }
        fitted
    }

    /// Replaces what `source` has, keeping the counts right.
    fn set_has(&mut self, source: SourceId, has: Has) {
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        let before = std::mem::replace(&mut entry.has, has);
        entry.nothing_at = None;
        if entry.dropped {
            return;
        }
        let after = &entry.has;
        if before.is_complete() {
            self.complete_sources -= 1;
        } else {
            self.partial_sources -= 1;
        }
        if after.is_complete() {
            self.complete_sources += 1;
        } else {
            self.partial_sources += 1;
        }
        if matches!(before, Has::Unknown) {
            self.unknown_sources -= 1;
        }
        if matches!(after, Has::Unknown) {
            self.unknown_sources += 1;
        }
        self.holders
            .change(&self.groups, &mut self.unheld, before.set(), after.set());
    }

    /// Bytes of `request` arrived (a group not complete yet): a slow
    /// source is not a stalled one. Only "no data for the stall timeout"
    /// drops a source.
    pub fn handle_data_received(&mut self, request: RequestId, now: Time) {
        if let Some(inflight) = self.requests.get_mut(&request) {
            inflight.last_progress = now;
            inflight.received = true;
            if let Some(source) = self.sources.get_mut(inflight.source) {
                source.sent = true;
                source.refusals = 0;
            }
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
        inflight.received = true;
        let source = inflight.source;
        self.sources[source].sent = true;
        self.sources[source].refusals = 0;
        let Some(state) = self.groups.get_mut(group_slot(group)) else {
            return;
        };
        if *state != Group::Verified {
            *state = Group::Verified;
            self.missing.remove(group);
            self.verified += 1;
            if self.holders.count(group) == 0 {
                self.unheld -= 1;
            }
            let r = group_range(self.size, group);
            self.sources[source].bytes += r.end - r.start;
        }
        // Every other request with nothing left to fetch now stops, so it
        // frees its source's slot: the owner, when helpers delivered all it
        // still had to; the other helpers of this group; this request, if
        // it reached groups helpers delivered already.
        let done: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(id, r)| {
                let left = r.next..r.groups.end;
                (**id == request || left.contains(&group))
                    && !left.is_empty()
                    && left
                        .clone()
                        .all(|g| self.groups.get(group_slot(g)) == Some(&Group::Verified))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.finish(id);
            self.events.push_back(DownloadEvent::Cancel(id));
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
    /// source truncated it and is dropped. (For a probe, the same as
    /// [`Self::handle_probe_done`].)
    pub fn handle_request_done(&mut self, request: RequestId) {
        let Some(inflight) = self.requests.get(&request) else {
            return;
        };
        if inflight.kind == RequestKind::Probe {
            let now = inflight.last_progress;
            self.handle_probe_done(request, now);
            return;
        }
        let (source, stopped_at, end) = (inflight.source, inflight.next, inflight.groups.end);
        if stopped_at == end && inflight.helps.is_none() {
            let took = inflight.last_progress.since(inflight.started);
            let asked = inflight.groups.end - inflight.groups.start;
            self.size_runs(source, asked, took);
        }
        self.finish(request);
        if stopped_at < end {
            self.drop_source(
                source,
                format!("response ended early, at group {stopped_at}"),
            );
        }
    }

    /// Sizes `source`'s runs by how long its last full run of `asked`
    /// groups took (see `DownloadConfig::request_time`).
    fn size_runs(&mut self, source: SourceId, asked: u64, took: Duration) {
        let target = self.config.request_time;
        if target.is_zero() {
            return;
        }
        let most = self.config.groups_per_request.max(1);
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        if asked < entry.run {
            return; // a shorter run (the source had no more) tells nothing
        }
        if took < target {
            entry.run = (entry.run * 2).min(most);
        } else if took > target * 2 {
            entry.run = (entry.run / 2).max(1);
        }
    }

    /// Some missing group (not in flight) has an active source that can be
    /// asked for it: the download is not in its endgame yet.
    fn missing_fetchable(&self) -> bool {
        if self.missing.is_empty() {
            return false;
        }
        if self.complete_sources > 0 {
            return true;
        }
        if self.holders.counts.is_empty() {
            return false;
        }
        let none = self.holders.none.words();
        self.missing
            .words()
            .iter()
            .enumerate()
            .any(|(index, missing)| missing & !none.get(index).copied().unwrap_or(0) != 0)
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
                    self.missing.insert(g);
                    self.pool_version += 1;
                }
            }
        }
        if let Some(source) = self.sources.get_mut(inflight.source) {
            source.in_flight = source.in_flight.saturating_sub(1);
        }
    }

    /// Stops using `source` for `reason` (the plan's own, or one the
    /// driver found, such as an alternate learned from a liar): its
    /// requests are cancelled and their groups go back to the pool.
    pub fn drop_source(&mut self, source: SourceId, reason: String) {
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        if entry.dropped {
            return;
        }
        entry.dropped = true;
        if entry.has.is_complete() {
            self.complete_sources -= 1;
        } else {
            self.partial_sources -= 1;
        }
        if matches!(entry.has, Has::Unknown) {
            self.unknown_sources -= 1;
        }
        self.holders
            .change(&self.groups, &mut self.unheld, entry.has.set(), None);
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

/// The first group at or after `start`, wrapping at `count`, whose bit is
/// set in `word(index)`; `visited` counts the words looked at.
fn first_set_from(
    count: u64,
    start: u64,
    word: impl Fn(usize) -> u64,
    visited: &mut u64,
) -> Option<u64> {
    let words = group_slot(count.div_ceil(64));
    if words == 0 {
        return None;
    }
    let start = start.min(count - 1);
    let first = group_slot(start / 64);
    let below_start = (1u64 << (start % 64)) - 1;
    for step in 0..=words {
        let index = (first + step) % words;
        *visited += 1;
        let mut bits = word(index);
        if step == 0 {
            bits &= !below_start;
        } else if step == words {
            bits &= below_start;
        }
        if bits != 0 {
            let group = index as u64 * 64 + u64::from(bits.trailing_zeros());
            if group < count {
                return Some(group);
            }
        }
    }
    None
}

/// How many active partial sources have each group, and which groups
/// none or only one of them has (for word-at-a-time scans).
#[derive(Debug, Default)]
struct Holders {
    /// Per group; empty (all 0) until a partial source says what it has.
    counts: Vec<u32>,
    /// The groups no partial source has (valid once `counts` is not empty).
    none: GroupSet,
    /// The groups exactly one partial source has.
    one: GroupSet,
}

impl Holders {
    /// How many active partial sources have `group`.
    fn count(&self, group: u64) -> u32 {
        self.counts.get(group_slot(group)).copied().unwrap_or(0)
    }

    /// Moves one source's contribution from `before` to `after`, a word at
    /// a time: only the groups that changed are touched. `unheld` (the
    /// groups not verified that no one has) follows.
    fn change(
        &mut self,
        groups: &[Group],
        unheld: &mut u64,
        before: Option<&GroupSet>,
        after: Option<&GroupSet>,
    ) {
        if before.is_none() && after.is_none() {
            return;
        }
        if self.counts.is_empty() {
            let size = before.or(after).map_or(0, GroupSet::size);
            self.counts.resize(groups.len(), 0);
            self.none = GroupSet::full(size);
            self.one = GroupSet::empty(size);
        }
        let words = |set: Option<&GroupSet>, index: usize| {
            set.and_then(|s| s.words().get(index).copied()).unwrap_or(0)
        };
        let count = before
            .map_or(0, |s| s.words().len())
            .max(after.map_or(0, |s| s.words().len()));
        for index in 0..count {
            let (old, new) = (words(before, index), words(after, index));
            for (mut changed, up) in [(new & !old, true), (old & !new, false)] {
                while changed != 0 {
                    let slot = index * 64 + changed.trailing_zeros() as usize;
                    changed &= changed - 1;
                    let Some(held) = self.counts.get_mut(slot) else {
                        continue;
                    };
                    let was = *held;
                    *held = if up {
                        was.saturating_add(1)
                    } else {
                        was.saturating_sub(1)
                    };
                    let now = *held;
                    let group = slot as u64;
                    let open = groups.get(slot) != Some(&Group::Verified);
                    match (was, now) {
                        (0, 1) => {
                            self.none.remove(group);
                            self.one.insert(group);
                            if open {
                                *unheld -= 1;
                            }
                        }
                        (1, 0) => {
                            self.one.remove(group);
                            self.none.insert(group);
                            if open {
                                *unheld += 1;
                            }
                        }
                        (1, 2) => {
                            self.one.remove(group);
                        }
                        (2, 1) => {
                            self.one.insert(group);
                        }
                        _ => {}
                    }
                }
            }
        }
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
            // Runs as long as allowed from the start (sizing by time has
            // its own test).
            request_time: Duration::ZERO,
            ..DownloadConfig::default()
        }
    }

    /// A plan whose random start (for complete sources) is group 0, so the
    /// groups are asked for in order: a seed found, not a rule bent.
    fn plan_in_order(size: u64, verified: &[u64], config: DownloadConfig) -> DownloadPlan {
        (0..)
            .map(|seed| {
                let config = DownloadConfig {
                    seed,
                    ..config.clone()
                };
                DownloadPlan::new(size, verified.iter().copied(), config)
            })
            .find(|plan| plan.cursor == 0)
            .unwrap()
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
        let mut plan = plan_in_order(5 * GROUP_LEN, &[], config());
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
        let mut plan = plan_in_order(4 * GROUP_LEN, &[], config());
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
        let mut plan = plan_in_order(4 * GROUP_LEN, &[], config());
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
        let mut plan = plan_in_order(2 * GROUP_LEN, &[], config());
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
            request_time: Duration::ZERO,
            ..DownloadConfig::default()
        };
        let mut plan = plan_in_order(3 * GROUP_LEN, &[], config);
        let dead = plan.add_source();
        let live = plan.add_source();
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.groups.clone()), (dead, 0..3));
        // Nothing missing: the idle live source helps, one group at a time,
        // from the last (the owner's stream would start from the first).
        let help = plan.next_request(Time(0)).unwrap();
        assert_eq!((help.source, help.groups.clone()), (live, 2..3));
        assert!(
            plan.next_request(Time(0)).is_none(),
            "the live source is busy"
        );
        complete(&mut plan, &help, Time(1));
        let help = plan.next_request(Time(1)).unwrap();
        assert_eq!(help.groups, 1..2);
        complete(&mut plan, &help, Time(2));
        let help = plan.next_request(Time(2)).unwrap();
        assert_eq!(help.groups, 0..1);
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
            ..DownloadConfig::default()
        };
        let mut plan = plan_in_order(2 * GROUP_LEN, &[], config);
        let slow = plan.add_source();
        let fast = plan.add_source();
        let owned = plan.next_request(Time(0)).unwrap();
        assert_eq!((owned.source, owned.groups.clone()), (slow, 0..2));
        let help = plan.next_request(Time(0)).unwrap();
        assert_eq!(
            (help.source, help.groups.clone()),
            (fast, 1..2),
            "the last group: the owner streams from its first"
        );
        // Both deliver group 1; it counts once, for the first.
        plan.handle_group_verified(owned.id, 0, Time(1));
        plan.handle_group_verified(owned.id, 1, Time(2));
        plan.handle_request_done(owned.id);
        // The helper's copy, done for, was cancelled; were it reported
        // still, it would count for nothing.
        assert_eq!(plan.poll_event(), Some(DownloadEvent::Cancel(help.id)));
        plan.handle_group_verified(help.id, 1, Time(3));
        plan.handle_request_done(help.id);
        assert!(plan.is_complete());
        assert_eq!(plan.verified_bytes(), 2 * GROUP_LEN);
        assert_eq!(plan.bytes_from(slow), 2 * GROUP_LEN);
        assert_eq!(plan.bytes_from(fast), 0);
        assert!(plan.poll_event().is_none(), "no source was dropped");
    }

    #[test]
    fn idle_sources_pile_no_more_than_two_helpers_on_a_group() {
        let config = DownloadConfig {
            requests_per_source: 1,
            stall_timeout: Duration::from_secs(5),
            ..DownloadConfig::default()
        };
        let mut plan = DownloadPlan::new(2 * GROUP_LEN, [0], config);
        let owner = plan.add_source();
        for _ in 0..10 {
            plan.add_source();
        }
        let owned = plan.next_request(Time(0)).unwrap();
        assert_eq!((owned.source, owned.groups.clone()), (owner, 1..2));
        let mut helpers = Vec::new();
        for now in [0, 1_000, 2_499, 2_500, 3_000, 4_999] {
            while let Some(r) = plan.next_request(Time(now)) {
                assert_eq!(r.groups, 1..2);
                // Alive: its first bytes came (a helper that sends
                // nothing at all soon stops counting).
                plan.handle_data_received(r.id, Time(now));
                helpers.push((now, r));
            }
        }
        let when: Vec<u64> = helpers.iter().map(|(now, _)| *now).collect();
        assert_eq!(
            when,
            [0, 2_500],
            "a second helper only once the group made no progress for half the stall timeout"
        );
        // The owner's copy verifies first: the helpers' are cancelled.
        plan.handle_data_received(helpers[0].1.id, Time(4_000));
        plan.handle_group_verified(owned.id, 1, Time(4_500));
        plan.handle_request_done(owned.id);
        assert!(plan.is_complete());
        let events: Vec<DownloadEvent> = std::iter::from_fn(|| plan.poll_event()).collect();
        let cancelled: Vec<DownloadEvent> = helpers
            .iter()
            .map(|(_, r)| DownloadEvent::Cancel(r.id))
            .collect();
        assert_eq!(events, cancelled);
        assert!(plan.requests.is_empty(), "no slot held");
        assert_eq!(plan.active_sources(), 11);
    }

    #[test]
    fn a_helper_that_sends_nothing_does_not_keep_a_live_one_away() {
        let config = DownloadConfig {
            requests_per_source: 1,
            stall_timeout: Duration::from_secs(30),
            ..DownloadConfig::default()
        };
        let mut plan = DownloadPlan::new(2 * GROUP_LEN, [0], config);
        plan.add_source();
        let (dead, live) = (plan.add_source(), plan.add_source());
        let owned = plan.next_request(Time(0)).unwrap();
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.groups.clone()), (dead, 1..2));
        assert_eq!(plan.next_request(Time(2_999)), None);
        // No byte from it in a tenth of the stall timeout: the live source
        // helps, long before half the stall timeout.
        let second = plan.next_request(Time(3_000)).unwrap();
        assert_eq!((second.source, second.groups.clone()), (live, 1..2));
        complete(&mut plan, &second, Time(3_100));
        let events: Vec<DownloadEvent> = std::iter::from_fn(|| plan.poll_event()).collect();
        assert_eq!(
            events,
            [
                DownloadEvent::Cancel(owned.id),
                DownloadEvent::Cancel(first.id)
            ]
        );
    }

    #[test]
    fn a_source_that_sent_bytes_joins_a_helper_that_sent_none() {
        let config = DownloadConfig {
            requests_per_source: 1,
            groups_per_request: 1,
            stall_timeout: Duration::from_secs(30),
            ..DownloadConfig::default()
        };
        let mut plan = plan_in_order(2 * GROUP_LEN, &[], config);
        let dead = plan.add_source();
        let (live, fresh) = (plan.add_source(), plan.add_source());
        let owned = plan.next_request(Time(0)).unwrap();
        assert_eq!((owned.source, owned.groups.clone()), (dead, 0..1));
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.groups.clone()), (live, 1..2));
        let helper = plan.next_request(Time(0)).unwrap();
        assert_eq!((helper.source, helper.groups.clone()), (fresh, 0..1));
        complete(&mut plan, &first, Time(10));
        // Neither the owner nor the helper sent a byte yet; the live
        // source did: it joins at once.
        let help = plan.next_request(Time(10)).unwrap();
        assert_eq!((help.source, help.groups.clone()), (live, 0..1));
        complete(&mut plan, &help, Time(20));
        assert!(plan.is_complete());
        let events: Vec<DownloadEvent> = std::iter::from_fn(|| plan.poll_event()).collect();
        assert_eq!(
            events,
            [
                DownloadEvent::Cancel(owned.id),
                DownloadEvent::Cancel(helper.id)
            ]
        );
    }

    #[test]
    fn when_a_helper_verifies_a_group_the_other_copies_are_cancelled() {
        let config = DownloadConfig {
            requests_per_source: 1,
            stall_timeout: Duration::from_secs(4),
            ..DownloadConfig::default()
        };
        let mut plan = DownloadPlan::new(2 * GROUP_LEN, [0], config);
        let owner = plan.add_source();
        let (a, b) = (plan.add_source(), plan.add_source());
        let owned = plan.next_request(Time(0)).unwrap();
        assert_eq!((owned.source, owned.groups.clone()), (owner, 1..2));
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.groups.clone()), (a, 1..2));
        plan.handle_data_received(first.id, Time(0));
        assert_eq!(plan.next_request(Time(1_000)), None);
        let second = plan.next_request(Time(2_000)).unwrap();
        assert_eq!((second.source, second.groups.clone()), (b, 1..2));
        // The second helper delivers first: the owner and the first helper
        // stop, their slots free.
        complete(&mut plan, &second, Time(2_500));
        assert!(plan.is_complete());
        let events: Vec<DownloadEvent> = std::iter::from_fn(|| plan.poll_event()).collect();
        assert_eq!(
            events,
            [
                DownloadEvent::Cancel(owned.id),
                DownloadEvent::Cancel(first.id)
            ]
        );
        assert!(plan.requests.is_empty());
        assert_eq!(plan.bytes_from(b), GROUP_LEN);
    }

    fn swarm_config() -> DownloadConfig {
        DownloadConfig {
            requests_per_source: 1,
            groups_per_request: 16,
            swarm_groups_per_request: 1,
            stall_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            seed: 7,
            request_time: Duration::ZERO,
        }
    }

    fn set(size: u64, groups: &[u64]) -> GroupSet {
        let mut set = GroupSet::empty(size);
        for &g in groups {
            set.insert(g);
        }
        set
    }

    /// Answers the probe `next_request` hands out for `source` with `has`.
    fn probe(plan: &mut DownloadPlan, source: SourceId, has: GroupSet, now: Time) {
        let request = plan.next_request(now).unwrap();
        assert_eq!((request.source, request.kind), (source, RequestKind::Probe));
        assert!(request.groups.is_empty());
        plan.handle_availability(source, has, now);
        plan.handle_probe_done(request.id, now);
    }

    #[test]
    fn rarest_first_picks_the_group_fewest_sources_have() {
        let size = 5 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let p1 = plan.add_partial_source();
        let p2 = plan.add_partial_source();
        let p3 = plan.add_partial_source();
        probe(&mut plan, p1, set(size, &[0, 1, 2]), Time(0));
        probe(&mut plan, p2, set(size, &[1, 2]), Time(0));
        probe(&mut plan, p3, set(size, &[2]), Time(0));
        let complete = plan.add_source();
        // Group 0 is held by one source, 1 by two, 2 by three, 3 and 4 by
        // the complete source alone.
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!((r.source, r.groups, r.kind), (p1, 0..1, RequestKind::Data));
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!((r.source, r.groups), (p2, 1..2));
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!((r.source, r.groups), (p3, 2..3));
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!(r.source, complete);
        assert!(r.groups == (3..4) || r.groups == (4..5), "{:?}", r.groups);
    }

    #[test]
    fn ties_are_broken_by_the_seed() {
        // A partial source with all but the last of 65 groups: 64 equals.
        let size = 65 * GROUP_LEN;
        let first_pick = |seed| {
            let config = DownloadConfig {
                seed,
                ..swarm_config()
            };
            let mut plan = DownloadPlan::new(size, [], config);
            let partial = plan.add_partial_source();
            probe(
                &mut plan,
                partial,
                set(size, &(0..64).collect::<Vec<_>>()),
                Time(0),
            );
            plan.next_request(Time(0)).unwrap().groups.start
        };
        let picks: std::collections::BTreeSet<u64> = (0..8).map(first_pick).collect();
        assert!(picks.len() >= 5, "{picks:?}");
        assert_eq!(first_pick(3), first_pick(3), "a seed replays");
        // Downloaders with only the seed start at different groups too,
        // with short runs (until the seed proves fast).
        let starts: Vec<Range<u64>> = (0..12)
            .map(|seed| {
                let config = DownloadConfig {
                    seed,
                    ..DownloadConfig::default()
                };
                let mut plan = DownloadPlan::new(64 * GROUP_LEN, [], config);
                plan.add_source();
                plan.next_request(Time(0)).unwrap().groups
            })
            .collect();
        let distinct: std::collections::BTreeSet<u64> = starts.iter().map(|r| r.start).collect();
        assert!(distinct.len() >= 8, "{starts:?}");
        assert!(
            starts.iter().all(|r| r.end - r.start == 2 || r.end == 64),
            "{starts:?}"
        );
    }

    #[test]
    fn a_partial_source_is_only_asked_for_what_it_has() {
        let size = 10 * GROUP_LEN;
        let config = DownloadConfig {
            requests_per_source: 4,
            swarm_groups_per_request: 4,
            ..swarm_config()
        };
        let mut plan = DownloadPlan::new(size, [], config);
        let partial = plan.add_partial_source();
        probe(&mut plan, partial, set(size, &[2, 3, 4, 7]), Time(0));
        let mut asked = Vec::new();
        while let Some(r) = plan.next_request(Time(0)) {
            assert_eq!(r.kind, RequestKind::Data);
            asked.push(r);
        }
        let mut groups: Vec<Range<u64>> = asked.iter().map(|r| r.groups.clone()).collect();
        groups.sort_by_key(|g| g.start);
        assert!(
            groups == vec![2..5, 7..8]
                || groups == vec![2..3, 3..5, 7..8]
                || groups == vec![2..4, 4..5, 7..8],
            "{groups:?}"
        );
        for r in &asked {
            complete(&mut plan, r, Time(1));
        }
        assert_eq!(plan.verified_bytes(), 4 * GROUP_LEN);
        assert_eq!(plan.next_request(Time(1)), None, "it has nothing else");
        assert!(!plan.is_stuck(), "it may still grow");
    }

    #[test]
    fn a_partial_source_of_unknown_availability_is_probed_first() {
        let size = 4 * GROUP_LEN;
        let config = DownloadConfig {
            requests_per_source: 2,
            ..swarm_config()
        };
        let mut plan = DownloadPlan::new(size, [], config);
        let partial = plan.add_partial_source();
        assert!(plan.is_partial(partial));
        let p = plan.next_request(Time(0)).unwrap();
        assert_eq!(
            (p.source, p.kind, p.groups),
            (partial, RequestKind::Probe, 0..0)
        );
        assert_eq!(plan.next_request(Time(0)), None, "one probe, no data yet");
        plan.handle_availability(partial, set(size, &[1]), Time(5));
        plan.handle_probe_done(p.id, Time(5));
        let r = plan.next_request(Time(5)).unwrap();
        assert_eq!((r.kind, r.groups), (RequestKind::Data, 1..2));
        // A probe answered without ranges given: taken as nothing yet, asked
        // again a probe interval later.
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let partial = plan.add_partial_source();
        let p = plan.next_request(Time(0)).unwrap();
        plan.handle_probe_done(p.id, Time(0));
        assert_eq!(plan.next_request(Time(0)), None);
        assert_eq!(plan.next_wakeup(Time(0)), Some(Time(1_000)));
        let again = plan.next_request(Time(1_000)).unwrap();
        assert_eq!((again.source, again.kind), (partial, RequestKind::Probe));
    }

    #[test]
    fn a_416_for_claimed_groups_drops_the_liar() {
        let size = 4 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let liar = plan.add_partial_source();
        probe(&mut plan, liar, set(size, &[0]), Time(0));
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!(r.groups, 0..1);
        plan.handle_request_unavailable(r.id, set(size, &[]), Time(1));
        match plan.poll_event() {
            Some(DownloadEvent::SourceDropped { source, reason }) => {
                assert_eq!(source, liar);
                assert!(reason.contains("claimed groups"), "{reason}");
                assert!(reason.contains("did not serve"), "{reason}");
            }
            other => panic!("expected a drop, got {other:?}"),
        }
        assert_eq!(
            plan.poll_event(),
            None,
            "no Cancel for the request that reported"
        );
        assert!(plan.is_stuck());
        // Its group went back to the pool.
        assert!(plan.missing.contains(0));
        assert_eq!(plan.partial_sources, 0);
        // So is a source that said it had the whole file.
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let whole = plan.add_partial_source();
        probe(&mut plan, whole, GroupSet::full(size), Time(0));
        assert!(!plan.is_partial(whole));
        let r = plan.next_request(Time(0)).unwrap();
        plan.handle_request_unavailable(r.id, set(size, &[1]), Time(1));
        assert!(matches!(
            plan.poll_event(),
            Some(DownloadEvent::SourceDropped { source, .. }) if source == whole
        ));
    }

    #[test]
    fn a_416_for_unclaimed_groups_only_teaches_what_the_source_has() {
        let size = 4 * GROUP_LEN;
        let mut plan = plan_in_order(size, &[], swarm_config());
        // Added as complete on a hit's word; it never said so itself.
        let source = plan.add_source();
        let r = plan.next_request(Time(0)).unwrap();
        assert_eq!(r.groups, 0..4);
        plan.handle_request_unavailable(r.id, set(size, &[3]), Time(1));
        assert_eq!(plan.poll_event(), None, "not dropped");
        assert!(plan.is_partial(source));
        let r = plan.next_request(Time(1)).unwrap();
        assert_eq!((r.source, r.groups), (source, 3..4));
    }

    #[test]
    fn a_416_for_a_partly_claimed_range_is_not_a_lie() {
        // The server answers 206 only for a range wholly inside its
        // verified groups: a range it had only partly claimed gets an
        // honest 416.
        let size = 8 * GROUP_LEN;
        let config = DownloadConfig {
            requests_per_source: 2,
            groups_per_request: 4,
            ..swarm_config()
        };
        let mut plan = plan_in_order(size, &[], config);
        // Added as complete on a hit's word; it has groups 0..5.
        let source = plan.add_source();
        let first = plan.next_request(Time(0)).unwrap();
        let second = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.groups.clone(), second.groups.clone()), (0..4, 4..8));
        let has = set(size, &[0, 1, 2, 3, 4]);
        plan.handle_availability(source, has.clone(), Time(1));
        complete(&mut plan, &first, Time(1));
        plan.handle_request_unavailable(second.id, has, Time(2));
        assert_eq!(plan.poll_event(), None, "not dropped");
        assert_eq!(plan.active_sources(), 1);
        let again = plan.next_request(Time(2)).unwrap();
        assert_eq!((again.source, again.groups), (source, 4..5));
    }

    #[test]
    fn a_partial_source_with_nothing_useful_is_probed_again() {
        let size = 2 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let complete = plan.add_source();
        let partial = plan.add_partial_source();
        probe(&mut plan, partial, set(size, &[]), Time(0));
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.kind), (complete, RequestKind::Data));
        // The complete source is busy; the partial one has nothing.
        assert_eq!(plan.next_request(Time(0)), None);
        assert_eq!(plan.next_wakeup(Time(0)), Some(Time(1_000)));
        assert_eq!(plan.next_request(Time(999)), None);
        probe(&mut plan, partial, set(size, &[0, 1]), Time(1_000));
        assert!(!plan.is_partial(partial), "it has the whole file now");
        let r = plan.next_request(Time(1_000)).unwrap();
        assert_eq!((r.source, r.kind), (partial, RequestKind::Data));
        // With the complete source gone, a partial one keeps the download
        // from being stuck.
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let partial = plan.add_partial_source();
        probe(&mut plan, partial, set(size, &[]), Time(0));
        assert_eq!(plan.next_request(Time(0)), None);
        assert!(!plan.is_stuck());
        assert_eq!(plan.active_sources(), 1);
    }

    #[test]
    fn without_its_complete_source_a_swarm_lacking_a_group_is_starving() {
        let size = 4 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let seed = plan.add_source();
        let a = plan.add_partial_source();
        let b = plan.add_partial_source();
        assert!(!plan.is_starving(), "a complete source has everything");
        probe(&mut plan, a, set(size, &[0, 1]), Time(0));
        assert!(!plan.is_starving());
        plan.drop_source(seed, "gone".into());
        assert!(!plan.is_starving(), "b may have the rest: not asked yet");
        probe(&mut plan, b, set(size, &[1, 2]), Time(0));
        // Group 3: nobody left has it. Not stuck (they may grow), but
        // starving: more sources are needed.
        assert!(plan.is_starving());
        assert!(!plan.is_stuck());
        plan.handle_availability(b, set(size, &[3]), Time(1));
        assert!(!plan.is_starving(), "b has it now");
        // Dropping the only holder of a group starves it again; verifying
        // the groups nobody has ends it.
        plan.drop_source(b, "gone".into());
        assert!(plan.is_starving());
        let mut plan = DownloadPlan::new(size, [3], swarm_config());
        let a = plan.add_partial_source();
        probe(&mut plan, a, set(size, &[0, 1]), Time(0));
        assert!(plan.is_starving(), "group 2");
        let mut plan = DownloadPlan::new(size, [2, 3], swarm_config());
        let a = plan.add_partial_source();
        probe(&mut plan, a, set(size, &[0, 1]), Time(0));
        assert!(!plan.is_starving());
        while let Some(r) = plan.next_request(Time(0)) {
            complete(&mut plan, &r, Time(0));
        }
        assert!(plan.is_complete());
        assert!(!plan.is_starving());
        // Stuck is starving too.
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let seed = plan.add_source();
        plan.drop_source(seed, "gone".into());
        assert!(plan.is_stuck() && plan.is_starving());
    }

    #[test]
    fn a_partial_source_helps_in_the_endgame_with_what_it_has() {
        let size = 2 * GROUP_LEN;
        let config = DownloadConfig {
            swarm_groups_per_request: 2,
            ..swarm_config()
        };
        let mut plan = DownloadPlan::new(size, [], config);
        let seed = plan.add_source();
        let partial = plan.add_partial_source();
        probe(&mut plan, partial, set(size, &[1]), Time(0));
        // Group 0 is the rarest; the run goes on over group 1.
        let owned = plan.next_request(Time(0)).unwrap();
        assert_eq!((owned.source, owned.groups.clone()), (seed, 0..2));
        // Nothing the partial source has is missing: it helps, with group 1
        // (it does not have group 0, the first undelivered).
        let help = plan.next_request(Time(0)).unwrap();
        assert_eq!((help.source, help.groups.clone()), (partial, 1..2));
        complete(&mut plan, &help, Time(1));
        plan.handle_group_verified(owned.id, 0, Time(2));
        assert!(plan.is_complete());
        assert_eq!(plan.poll_event(), Some(DownloadEvent::Cancel(owned.id)));
        assert_eq!(plan.bytes_from(partial), GROUP_LEN);
        assert_eq!(plan.bytes_from(seed), GROUP_LEN);
    }

    #[test]
    fn a_rationing_seed_is_asked_only_for_what_it_offers() {
        let size = 8 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let seed = plan.add_source();
        // Not rationing yet: any group may be asked for.
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!(first.source, seed);
        // It refuses, offering groups 5 and 6: not a lie.
        plan.handle_request_offered(first.id, set(size, &[5, 6]), Time(1));
        assert_eq!(plan.poll_event(), None);
        assert_eq!(plan.active_sources(), 1);
        assert!(!plan.is_partial(seed), "it still has every group");
        let next = plan.next_request(Time(1)).unwrap();
        assert!(
            [5..6, 6..7].contains(&next.groups),
            "asked {:?}, outside its offer",
            next.groups
        );
        complete(&mut plan, &next, Time(2));
        let other = if next.groups.start == 5 { 6 } else { 5 };
        let last = plan.next_request(Time(2)).unwrap();
        assert_eq!(last.groups, other..other + 1);
        complete(&mut plan, &last, Time(3));
        // Nothing it offers is missing: nothing asked until the probe
        // interval has passed, then a probe for a fresh offer.
        assert_eq!(plan.next_request(Time(3)), None);
        assert!(!plan.is_starving(), "a complete source has every group");
        let wake = plan.next_wakeup(Time(3)).unwrap();
        assert_eq!(wake, Time(3) + swarm_config().probe_interval);
        let probe = plan.next_request(wake).unwrap();
        assert_eq!((probe.source, probe.kind), (seed, RequestKind::Probe));
        // It serves anything again (no X-Offer): the rest come.
        plan.handle_offer(seed, None, wake);
        plan.handle_probe_done(probe.id, wake);
        let mut now = wake;
        while !plan.is_complete() {
            let request = plan.next_request(now).unwrap();
            complete(&mut plan, &request, now);
            now = now + Duration::from_millis(10);
        }
    }

    #[test]
    fn a_rationing_seed_offering_nothing_missing_helps_in_the_endgame() {
        let size = 2 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let seed = plan.add_source();
        let partial = plan.add_partial_source();
        probe(&mut plan, partial, set(size, &[0, 1]), Time(0));
        plan.handle_offer(seed, Some(set(size, &[1])), Time(0));
        // The seed asked for group 1 (all it offers), the peer for group 0.
        let a = plan.next_request(Time(0)).unwrap();
        let b = plan.next_request(Time(0)).unwrap();
        let by_seed = if a.source == seed { &a } else { &b };
        assert_eq!(by_seed.groups, 1..2);
        complete(&mut plan, by_seed, Time(1));
        // Nothing is missing but group 0, on its way from the peer, and
        // the seed's offer names no missing group: in the endgame it
        // helps with group 0 (told that nothing else is needed, it
        // serves it).
        let help = plan.next_request(Time(1)).unwrap();
        assert_eq!((help.source, help.groups), (seed, 0..1));
    }

    #[test]
    fn a_seed_that_keeps_refusing_is_paused_and_one_refusing_what_it_offers_dropped() {
        let size = 8 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let seed = plan.add_source();
        let mut now = Time(0);
        let interval = swarm_config().probe_interval;
        // Refused with an offer of other groups, again and again: asked
        // again at once the first few times, then only after a pause.
        for refusal in 1..=FREE_REFUSALS + 2 {
            let request = plan.next_request(now).unwrap();
            let other = (request.groups.start + 4) % 8;
            plan.handle_request_offered(request.id, set(size, &[other]), now);
            if refusal <= FREE_REFUSALS {
                assert!(plan.next_wakeup(now).is_none_or(|at| at <= now));
            } else {
                assert_eq!(plan.next_request(now), None, "refusal {refusal}: paused");
                let wake = plan.next_wakeup(now).unwrap();
                let pause = interval * 2u32.pow(refusal - FREE_REFUSALS - 1);
                assert_eq!(wake, now + pause);
                now = wake;
            }
        }
        // A byte from it and the count starts over.
        let request = plan.next_request(now).unwrap();
        plan.handle_data_received(request.id, now);
        plan.handle_request_offered(
            request.id,
            set(size, &[(request.groups.start + 4) % 8]),
            now,
        );
        assert!(plan.next_request(now).is_some(), "asked again at once");
        // Refusing the very groups it offers is nonsense: dropped.
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let seed2 = plan.add_source();
        let request = plan.next_request(Time(0)).unwrap();
        let offered: Vec<u64> = request.groups.clone().collect();
        plan.handle_request_offered(request.id, set(size, &offered), Time(0));
        assert!(matches!(
            plan.poll_event(),
            Some(DownloadEvent::SourceDropped { source, .. }) if source == seed2
        ));
        let _ = seed;
    }

    /// Serves `request` fully, its groups spread evenly from `start` to
    /// `end`.
    fn complete_over(plan: &mut DownloadPlan, request: &Request, start: Time, end: Time) {
        plan.handle_data_received(request.id, start);
        let groups = request.groups.end - request.groups.start;
        for (i, g) in request.groups.clone().enumerate() {
            let at = start.0 + (end.0 - start.0) * (i as u64 + 1) / groups;
            plan.handle_group_verified(request.id, g, Time(at));
        }
        plan.handle_request_done(request.id);
    }

    #[test]
    fn runs_grow_while_a_source_is_fast_and_shrink_when_it_is_slow() {
        let config = DownloadConfig {
            requests_per_source: 1,
            seed: 1,
            ..DownloadConfig::default()
        };
        let mut plan = DownloadPlan::new(400 * GROUP_LEN, [], config);
        plan.add_source();
        let mut lengths = Vec::new();
        let mut now = 0;
        // Fast: each request takes 100 ms, so runs double up to 16.
        for _ in 0..6 {
            let r = plan.next_request(Time(now)).unwrap();
            lengths.push(r.groups.end - r.groups.start);
            complete_over(&mut plan, &r, Time(now), Time(now + 100));
            now += 100;
        }
        assert_eq!(lengths, [2, 4, 8, 16, 16, 16]);
        // Slow now: 10 s a request, so runs halve down to one group.
        lengths.clear();
        for _ in 0..6 {
            let r = plan.next_request(Time(now)).unwrap();
            lengths.push(r.groups.end - r.groups.start);
            complete_over(&mut plan, &r, Time(now), Time(now + 10_000));
            now += 10_000;
        }
        assert_eq!(lengths, [16, 8, 4, 2, 1, 1]);
        // In between (3 s for one group, between one and two request
        // times): the run stays.
        let r = plan.next_request(Time(now)).unwrap();
        complete_over(&mut plan, &r, Time(now), Time(now + 3_000));
        now += 3_000;
        let r = plan.next_request(Time(now)).unwrap();
        assert_eq!(r.groups.end - r.groups.start, 1);
    }

    #[test]
    fn before_the_endgame_an_idle_source_does_not_copy_a_group_on_its_way() {
        // A swarm: the seed busy with a request, a partial peer with
        // nothing we miss but that group, other groups still missing (only
        // the seed has them): the peer waits instead of fetching a second
        // copy, unless the seed's request stalls for half the stall timeout.
        let size = 8 * GROUP_LEN;
        let config = DownloadConfig {
            requests_per_source: 1,
            stall_timeout: Duration::from_secs(10),
            ..DownloadConfig::default()
        };
        let mut plan = DownloadPlan::new(size, [], config);
        let seed = plan.add_source();
        let peer = plan.add_partial_source();
        let first = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.kind), (peer, RequestKind::Probe));
        let asked = plan.next_request(Time(0)).unwrap();
        assert_eq!(asked.source, seed);
        let g = asked.groups.start;
        let mut peer_has = GroupSet::empty(size);
        peer_has.insert(g);
        plan.handle_availability(peer, peer_has.clone(), Time(0));
        plan.handle_probe_done(first.id, Time(0));
        // The data requests made at `t`, the peer's probes answered.
        let data_at = |plan: &mut DownloadPlan, t: u64| {
            let mut data = Vec::new();
            while let Some(r) = plan.next_request(Time(t)) {
                if r.kind == RequestKind::Probe {
                    plan.handle_availability(r.source, peer_has.clone(), Time(t));
                    plan.handle_probe_done(r.id, Time(t));
                } else {
                    data.push(r);
                }
            }
            data
        };
        assert_eq!(data_at(&mut plan, 1_000), [], "no second copy yet");
        plan.handle_data_received(asked.id, Time(1_000));
        assert_eq!(data_at(&mut plan, 5_900), [], "still flowing");
        let help = data_at(&mut plan, 6_000);
        assert_eq!(help.len(), 1, "{help:?}");
        let help = help[0].clone();
        assert_eq!(
            (help.source, help.groups),
            (peer, g..g + 1),
            "stalled: helped"
        );
    }

    #[test]
    fn a_complete_only_download_completes_in_runs_of_groups_per_request() {
        let size = 64 * GROUP_LEN + 5;
        let config = DownloadConfig {
            requests_per_source: 1,
            seed: 12_345,
            request_time: Duration::ZERO,
            ..DownloadConfig::default()
        };
        let mut plan = DownloadPlan::new(size, [], config);
        plan.add_source();
        let mut runs = Vec::new();
        while let Some(r) = plan.next_request(Time(0)) {
            assert_eq!(r.kind, RequestKind::Data);
            runs.push(r.groups.clone());
            complete(&mut plan, &r, Time(0));
        }
        assert!(plan.is_complete());
        assert_eq!(plan.verified_bytes(), size);
        let short = runs.iter().filter(|r| r.end - r.start != 16).count();
        assert!(short <= 2, "{runs:?}");
        // Each run follows on from the one before, wrapping once.
        let wraps = runs.windows(2).filter(|w| w[1].start != w[0].end).count();
        assert!(wraps <= 1, "{runs:?}");
        assert!(plan.poll_event().is_none());
    }

    #[test]
    fn availability_only_grows_and_counts_follow_drops() {
        let size = 3 * GROUP_LEN;
        let mut plan = DownloadPlan::new(size, [], swarm_config());
        let a = plan.add_partial_source();
        let b = plan.add_partial_source();
        probe(&mut plan, a, set(size, &[0]), Time(0));
        probe(&mut plan, b, set(size, &[0, 1]), Time(0));
        // A shorter list (cut to fit a header) does not shrink what a has.
        plan.handle_availability(a, set(size, &[1]), Time(0));
        assert_eq!(plan.holders.counts, vec![2, 2, 0]);
        plan.drop_source(b, "told of by a liar".into());
        assert_eq!(plan.holders.counts, vec![1, 1, 0]);
        assert!(matches!(
            plan.poll_event(),
            Some(DownloadEvent::SourceDropped { source, reason }) if source == b && reason.contains("liar")
        ));
        plan.handle_availability(a, GroupSet::full(size), Time(0));
        assert_eq!(plan.holders.counts, vec![0, 0, 0]);
        assert_eq!((plan.complete_sources, plan.partial_sources), (1, 0));
        // Back to runs of complete sources.
        let r = plan.next_request(Time(0)).unwrap();
        assert!(r.groups.end - r.groups.start >= 1);
        assert_eq!(plan.sources[a].in_flight, 1);
    }

    #[test]
    fn a_terabyte_file_with_many_partial_sources_stays_cheap() {
        let size = MAX_DOWNLOAD_SIZE;
        let config = DownloadConfig {
            requests_per_source: 2,
            ..swarm_config()
        };
        let mut plan = DownloadPlan::new(size, [], config);
        let groups = group_count(size);
        let words = groups.div_ceil(64);
        for n in 0..16u64 {
            let source = plan.add_partial_source();
            let request = plan.next_request(Time(0)).unwrap();
            let mut has = GroupSet::empty(size);
            has.insert_run(n * groups / 32..(n + 16) * groups / 32);
            plan.handle_availability(source, has, Time(0));
            plan.handle_probe_done(request.id, Time(0));
        }
        // A complete source too: it is asked for what no partial one has.
        let complete = plan.add_source();
        let mut made = Vec::new();
        while let Some(r) = plan.next_request(Time(0)) {
            assert_eq!(r.kind, RequestKind::Data);
            made.push(r);
        }
        assert_eq!(made.len(), 17 * 2);
        for r in made.iter().filter(|r| r.source == complete) {
            assert!(r.groups.start >= groups / 32 * 31, "{:?}", r.groups);
        }
        // At most a few passes over the words per request, and a bounded
        // number of groups looked at one by one: not the whole file.
        let per_request = 3 * words + RAREST_SCAN_GROUPS;
        assert!(
            plan.visited <= made.len() as u64 * per_request,
            "{} words and groups for {} requests",
            plan.visited,
            made.len()
        );
        // Idle partial sources with nothing to offer cost one pass each,
        // not one per call.
        for _ in 0..32 {
            let source = plan.add_partial_source();
            probe(&mut plan, source, GroupSet::empty(size), Time(0));
        }
        let before = plan.visited;
        for _ in 0..100 {
            assert_eq!(plan.next_request(Time(0)), None);
        }
        let idle = plan.visited - before;
        assert!(
            idle <= 32 * 3 * words,
            "{idle} words and groups for 100 calls"
        );
        // A group back in the pool: each looks again, once.
        plan.handle_request_failed(made[0].id, "gone".into());
        let before = plan.visited;
        for _ in 0..100 {
            while plan.next_request(Time(0)).is_some() {}
        }
        let idle = plan.visited - before;
        assert!(idle <= 48 * (3 * words + RAREST_SCAN_GROUPS), "{idle}");
    }

    #[test]
    fn helpers_spread_over_the_groups_before_doubling_up() {
        let config = DownloadConfig {
            requests_per_source: 1,
            groups_per_request: 16,
            ..DownloadConfig::default()
        };
        let mut plan = plan_in_order(2 * GROUP_LEN, &[], config);
        let slow = plan.add_source();
        let (a, b, c) = (plan.add_source(), plan.add_source(), plan.add_source());
        let owned = plan.next_request(Time(0)).unwrap();
        assert_eq!((owned.source, owned.groups), (slow, 0..2));
        let first = plan.next_request(Time(0)).unwrap();
        let second = plan.next_request(Time(0)).unwrap();
        assert_eq!((first.source, first.groups), (a, 1..2));
        assert_eq!((second.source, second.groups), (b, 0..1));
        // Both alive. A second helper on a group only once it made no
        // progress for half the stall timeout (10 s by default).
        plan.handle_data_received(first.id, Time(0));
        plan.handle_data_received(second.id, Time(0));
        assert_eq!(plan.next_request(Time(4_999)), None);
        let third = plan.next_request(Time(5_000)).unwrap();
        assert_eq!((third.source, third.groups), (c, 1..2));
    }

    /// The plan's incremental counts, recomputed from scratch.
    fn check_counts(plan: &DownloadPlan) {
        let mut missing = GroupSet::empty(plan.size);
        for (index, state) in plan.groups.iter().enumerate() {
            if *state == Group::Missing {
                missing.insert(index as u64);
            }
        }
        assert_eq!(plan.missing, missing);
        let active = || plan.sources.iter().filter(|s| !s.dropped);
        assert_eq!(
            plan.complete_sources,
            active().filter(|s| s.has.is_complete()).count()
        );
        assert_eq!(
            plan.partial_sources,
            active().filter(|s| !s.has.is_complete()).count()
        );
        for (index, held) in plan.holders.counts.iter().enumerate() {
            let counted = active()
                .filter(|s| s.has.set().is_some_and(|set| set.contains(index as u64)))
                .count();
            assert_eq!(*held as usize, counted, "group {index}");
            let group = index as u64;
            assert_eq!(plan.holders.none.contains(group), counted == 0, "{index}");
            assert_eq!(plan.holders.one.contains(group), counted == 1, "{index}");
        }
        let unheld = (0..plan.groups.len() as u64)
            .filter(|g| {
                plan.groups[group_slot(*g)] != Group::Verified && plan.holders.count(*g) == 0
            })
            .count() as u64;
        assert_eq!(plan.unheld, unheld);
        assert_eq!(
            plan.unknown_sources,
            active().filter(|s| matches!(s.has, Has::Unknown)).count()
        );
        for (id, source) in plan.sources.iter().enumerate() {
            let requests = plan.requests.values().filter(|r| r.source == id).count();
            assert_eq!(source.in_flight, requests, "source {id}");
        }
        for (id, r) in &plan.requests {
            let has = &plan.sources[r.source].has;
            for g in r.next..r.groups.end {
                assert!(
                    has.contains(g),
                    "request {id} asks for group {g} its source lacks"
                );
                if r.helps.is_none() {
                    let state = plan.groups[group_slot(g)];
                    assert!(state == Group::InFlight(*id) || state == Group::Verified);
                }
            }
        }
    }

    /// A swarm driven at random: partial sources that grow, one that lies,
    /// busy answers, answers in any order. The counts stay right, no source
    /// is asked for what it lacks, the liar is dropped, and it completes.
    #[test]
    fn a_random_swarm_keeps_its_counts_and_completes() {
        // Whether the liar is asked for a group it lied about before others
        // fetch it is chance: most seeds must catch it.
        let mut liars_caught = 0;
        for seed in 0..20u64 {
            let mut rng = SplitMix64::new(seed);
            let size = 40 * GROUP_LEN + 3;
            let config = DownloadConfig {
                requests_per_source: 2,
                groups_per_request: 4,
                swarm_groups_per_request: 2,
                stall_timeout: Duration::from_secs(5),
                probe_interval: Duration::from_secs(1),
                seed,
                request_time: Duration::ZERO,
            };
            let mut plan = DownloadPlan::new(size, [0, 7], config);
            let mut truth = vec![GroupSet::full(size)];
            plan.add_source();
            assert!(!plan.is_starving());
            for _ in 0..6 {
                plan.add_partial_source();
                let mut has = GroupSet::empty(size);
                for _ in 0..rng.below(10) {
                    has.insert(rng.below(40));
                }
                truth.push(has);
            }
            let liar = 6;
            let mut pending: Vec<Request> = Vec::new();
            let mut now = Time(0);
            let mut liar_dropped = false;
            for _ in 0..20_000 {
                while let Some(r) = plan.next_request(now) {
                    pending.push(r);
                }
                while let Some(event) = plan.poll_event() {
                    match event {
                        DownloadEvent::Cancel(id) => pending.retain(|r| r.id != id),
                        DownloadEvent::SourceDropped { source, reason } => {
                            assert_eq!(source, liar, "{reason}");
                            assert!(reason.contains("claimed"), "{reason}");
                            liar_dropped = true;
                        }
                    }
                }
                check_counts(&plan);
                if plan.is_complete() {
                    break;
                }
                assert!(!plan.is_stuck());
                for has in truth.iter_mut().skip(1) {
                    if rng.below(4) == 0 {
                        has.insert(rng.below(40));
                    }
                }
                if pending.is_empty() {
                    now = plan
                        .next_wakeup(now)
                        .unwrap_or(now + Duration::from_millis(100));
                    continue;
                }
                let r = pending.swap_remove(group_slot(rng.below(pending.len() as u64)));
                let source = r.source;
                let mut told = truth[source].clone();
                if source == liar {
                    told.insert_run(30..41);
                }
                let partial = source != 0;
                match r.kind {
                    RequestKind::Probe => {
                        plan.handle_availability(source, told, now);
                        plan.handle_probe_done(r.id, now);
                    }
                    RequestKind::Data if r.groups.clone().any(|g| !truth[source].contains(g)) => {
                        assert_eq!(source, liar, "asked {source} for {:?}", r.groups);
                        plan.handle_request_unavailable(r.id, truth[source].clone(), now);
                    }
                    RequestKind::Data if partial && rng.below(8) == 0 => {
                        plan.handle_request_busy(r.id, Duration::from_millis(300), now);
                    }
                    RequestKind::Data => {
                        if partial {
                            plan.handle_availability(source, told, now);
                        }
                        for g in r.groups.clone() {
                            plan.handle_group_verified(r.id, g, now);
                        }
                        plan.handle_request_done(r.id);
                    }
                }
                check_counts(&plan);
                now = now + Duration::from_millis(10);
            }
            assert!(plan.is_complete(), "seed {seed}");
            assert_eq!(plan.verified_bytes(), size);
            let from_partials: u64 = (1..7).map(|s| plan.bytes_from(s)).sum();
            liars_caught += u32::from(liar_dropped);
            assert!(from_partials > 0, "seed {seed}: partial sources served");
        }
        assert!(
            liars_caught >= 15,
            "{liars_caught} of 20: its lies were asked for"
        );
    }
}
