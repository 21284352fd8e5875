//! The supernode's side of last-hop routing filters (see
//! [`crate::routing_filter`] and [`crate::filter_patch`]): the filter of
//! what its own leaves share, published to the supernode peers that speak
//! filters as patches, and the filter each peer published to it, which
//! decides where a query on its last hop goes.
//!
//! Bounds: one table we publish and one per peer we hold, each at most
//! 128 KiB (32 peers: 4 MiB at worst); patches taken from a peer are held
//! to a byte rate (a token bucket) and one that doesn't check out is a
//! protocol violation. The bytes both ways and the tables' memory are
//! counted in [`FilterStats`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use canopy_proto::{ContentId, FilterPatch};

use crate::filter_patch::{self, PatchError};
use crate::push_limits::Rate;
use crate::rate::TokenBucket;
use crate::routing_filter::{EntryHash, FilterSource, RoutingFilter, file_entries};
use crate::{ConnId, Time};

/// How often a changed filter is published, by default.
pub const FILTER_PUBLISH_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes of patches a peer may send a second, in bursts of a whole
/// largest table and then some.
pub const FILTER_PATCH_RATE: Rate = Rate::new(16 * 1024, 512 * 1024);

/// What the filters cost and saved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilterStats {
    /// Bytes of patches sent (flips only, framing apart).
    pub bytes_sent: u64,
    /// Bytes of patches received.
    pub bytes_received: u64,
    /// Patch parts sent.
    pub patches_sent: u64,
    /// Bytes of the tables held: the one published and the peers'.
    pub memory_bytes: usize,
    /// Query copies not sent because the peer's filter ruled them out.
    pub queries_skipped: u64,
    /// Peers whose filter we hold.
    pub peers_with_filters: usize,
    /// Distinct keywords and content ids in the filter published last.
    pub published_entries: usize,
}

/// Why a peer's patch was refused: the reason in its Bye.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// It doesn't check out.
    #[error("routing filter patch refused: {0}")]
    Bad(#[from] PatchError),
    /// Over the byte rate.
    #[error("routing filter patches over {} bytes a second", FILTER_PATCH_RATE.per_second)]
    TooFast,
}

/// The filters of one supernode.
#[derive(Debug)]
pub struct LastHopFilters {
    source: FilterSource,
    /// The source changed since the last publish.
    dirty: bool,
    /// Something was added since the last publish: it goes out at the
    /// next call (the supernode calls at once after each list or delta
    /// it indexes), since a peer's copy without it hides the file from
    /// last-hop queries (removals can wait: they only let queries through).
    added: bool,
    /// What every peer in `synced` holds from us.
    published: Option<RoutingFilter>,
    /// Peers that speak filters and hold `published`.
    synced: BTreeSet<ConnId>,
    /// What each peer that speaks filters published to us, and its budget.
    received: BTreeMap<ConnId, (Option<RoutingFilter>, TokenBucket)>,
    next_publish: Time,
    interval: Duration,
    stats: FilterStats,
}

impl Default for LastHopFilters {
    fn default() -> Self {
        Self::new(FILTER_PUBLISH_INTERVAL)
    }
}

impl LastHopFilters {
    /// Filters published (when changed) every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            source: FilterSource::new(),
            dirty: false,
            added: false,
            published: None,
            synced: BTreeSet::new(),
            received: BTreeMap::new(),
            next_publish: Time(0),
            interval,
            stats: FilterStats::default(),
        }
    }

    /// A file `name` with `content_id` entered the index.
    pub fn file_added(&mut self, name: &str, content_id: &ContentId, max_words: usize) {
        self.source.add(&file_entries(name, content_id, max_words));
        self.dirty = true;
        self.added = true;
    }

    /// A file left the index (its name as indexed).
    pub fn file_removed(&mut self, name: &str, content_id: &ContentId, max_words: usize) {
        self.source
            .remove(&file_entries(name, content_id, max_words));
        self.dirty = true;
    }

    /// A supernode peer that speaks filters joined: it gets the whole
    /// filter at the next publish (at once if there is one already).
    pub fn peer_joined(&mut self, conn: ConnId, now: Time) -> Vec<FilterPatch> {
        self.received
            .insert(conn, (None, FILTER_PATCH_RATE.bucket(now)));
        let parts = match &self.published {
            Some(published) => filter_patch::patch(None, published),
            None => Vec::new(),
        };
        if self.published.is_some() {
            self.synced.insert(conn);
        }
        self.count_sent(&parts, 1);
        self.update_memory();
        parts
    }

    /// A connection closed.
    pub fn peer_left(&mut self, conn: ConnId) {
        self.synced.remove(&conn);
        if self.received.remove(&conn).is_some() {
            self.update_memory();
        }
    }

    /// The patches due at `now`, each for every connection listed: the
    /// change since the last publish for the peers that hold it, the
    /// whole filter for those that hold nothing yet. Due at once when
    /// something was added or a peer holds nothing yet; removals alone
    /// wait for the interval.
    pub fn publish(&mut self, now: Time) -> Vec<(Vec<ConnId>, FilterPatch)> {
        self.publish_parts(now)
    }

    /// When [`LastHopFilters::publish`] has something to send: at once
    /// (`Time::ZERO`) after an addition or for a peer holding nothing yet,
    /// at the interval's end for removals alone; `None` when nothing
    /// changed.
    pub fn next_publish(&self) -> Option<Time> {
        let unsynced = self.received.keys().any(|conn| !self.synced.contains(conn));
        if self.added || unsynced {
            Some(Time::ZERO)
        } else {
            self.dirty.then_some(self.next_publish)
        }
    }

    fn publish_parts(&mut self, now: Time) -> Vec<(Vec<ConnId>, FilterPatch)> {
        let unsynced: Vec<ConnId> = self
            .received
            .keys()
            .filter(|conn| !self.synced.contains(conn))
            .copied()
            .collect();
        let removals_due = self.dirty && now >= self.next_publish;
        if !self.added && !removals_due && unsynced.is_empty() {
            return Vec::new();
        }
        self.next_publish = now + self.interval;
        self.added = false;
        let new = self.source.filter();
        let mut out = Vec::new();
        let synced: Vec<ConnId> = self.synced.iter().copied().collect();
        if !synced.is_empty() {
            let parts = filter_patch::patch(self.published.as_ref(), &new);
            self.count_sent(&parts, synced.len());
            out.extend(parts.into_iter().map(|part| (synced.clone(), part)));
        }
        if !unsynced.is_empty() {
            let parts = filter_patch::patch(None, &new);
            self.count_sent(&parts, unsynced.len());
            out.extend(parts.into_iter().map(|part| (unsynced.clone(), part)));
            self.synced.extend(unsynced);
        }
        self.published = Some(new);
        self.stats.published_entries = self.source.len();
        self.dirty = false;
        self.update_memory();
        out
    }

    /// A patch part from peer `conn`. An error is the reason to close it.
    pub fn receive(
        &mut self,
        conn: ConnId,
        patch: &FilterPatch,
        now: Time,
    ) -> Result<(), ReceiveError> {
        let (held, bucket) = self
            .received
            .entry(conn)
            .or_insert_with(|| (None, FILTER_PATCH_RATE.bucket(now)));
        let bytes = u64::try_from(patch.flips.len()).unwrap_or(u64::MAX);
        // An empty part costs a byte: it is a message all the same.
        let cost = bytes.max(1);
        if bucket.available(now) < cost {
            return Err(ReceiveError::TooFast);
        }
        bucket.spend(cost);
        filter_patch::apply(held, patch)?;
        self.stats.bytes_received += bytes;
        self.update_memory();
        Ok(())
    }

    /// Of `targets`, the ones a query needing `entries` should go to on
    /// its last hop: those whose filter may match, and those that sent
    /// none. The rest are counted as saved.
    pub fn last_hop(&mut self, targets: Vec<ConnId>, entries: &[EntryHash]) -> Vec<ConnId> {
        let before = targets.len();
        let kept: Vec<ConnId> = targets
            .into_iter()
            .filter(|conn| self.may_match(*conn, entries))
            .collect();
        self.stats.queries_skipped += (before - kept.len()) as u64;
        kept
    }

    /// True unless `conn`'s filter rules out a query needing `entries`.
    pub fn may_match(&self, conn: ConnId, entries: &[EntryHash]) -> bool {
        match self.received.get(&conn) {
            Some((Some(filter), _)) => filter.may_match(entries),
            _ => true,
        }
    }

    /// True if any peer sent a filter (else there is nothing to judge by).
    pub fn any_received(&self) -> bool {
        self.stats.peers_with_filters > 0
    }

    /// The counters.
    pub fn stats(&self) -> FilterStats {
        self.stats
    }

    fn count_sent(&mut self, parts: &[FilterPatch], peers: usize) {
        for part in parts {
            self.stats.bytes_sent += (part.flips.len() * peers) as u64;
            self.stats.patches_sent += peers as u64;
        }
    }

    fn update_memory(&mut self) {
        let held = self.received.values().filter_map(|(f, _)| f.as_ref());
        self.stats.peers_with_filters = held.clone().count();
        self.stats.memory_bytes = self.published.as_ref().map_or(0, RoutingFilter::bytes)
            + held.map(RoutingFilter::bytes).sum::<usize>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing_filter::query_entries;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    /// Carries every patch `from` publishes at `now` (to its connection
    /// `to_at_from`) to `to` (where it comes in on `from_at_to`).
    fn deliver(
        from: &mut LastHopFilters,
        to: &mut LastHopFilters,
        (to_at_from, from_at_to): (ConnId, ConnId),
        now: Time,
    ) {
        for (conns, part) in from.publish(now) {
            assert_eq!(conns, vec![to_at_from]);
            to.receive(from_at_to, &part, now).unwrap();
        }
    }

    #[test]
    fn a_last_hop_query_goes_only_where_it_may_match() {
        let (mut a, mut b) = (LastHopFilters::default(), LastHopFilters::default());
        let (a_at_b, b_at_a) = (ConnId(1), ConnId(2));
        a.peer_joined(b_at_a, Time(0));
        b.peer_joined(a_at_b, Time(0));
        a.file_added("Blue Moon.mp3", &id(1), 32);
        deliver(&mut a, &mut b, (b_at_a, a_at_b), Time(0));
        let moon = query_entries(&["moon".into()], None);
        let sun = query_entries(&["sun".into()], None);
        let unknown = ConnId(9);
        assert_eq!(
            b.last_hop(vec![a_at_b, unknown], &moon),
            vec![a_at_b, unknown]
        );
        assert_eq!(b.last_hop(vec![a_at_b, unknown], &sun), vec![unknown]);
        assert_eq!(b.stats().queries_skipped, 1);

        // An addition travels at once: a copy without it would hide it.
        a.file_added("Sun King.flac", &id(2), 32);
        deliver(&mut a, &mut b, (b_at_a, a_at_b), Time(1_000));
        assert!(b.may_match(a_at_b, &sun));
        // A removal waits for the interval (it only lets queries through).
        a.file_removed("Blue Moon.mp3", &id(1), 32);
        assert!(a.publish(Time(5_000)).is_empty(), "not due yet");
        assert!(b.may_match(a_at_b, &moon));
        deliver(&mut a, &mut b, (b_at_a, a_at_b), Time(11_000));
        assert!(!b.may_match(a_at_b, &moon));
        assert!(b.may_match(a_at_b, &sun));
        assert!(a.publish(Time(30_000)).is_empty(), "nothing changed");
        assert!(a.stats().bytes_sent > 0 && b.stats().bytes_received == a.stats().bytes_sent);
        assert_eq!(b.stats().peers_with_filters, 1);
    }

    #[test]
    fn a_peer_joining_later_gets_the_whole_filter() {
        let mut a = LastHopFilters::default();
        a.file_added("red fox", &id(1), 32);
        a.peer_joined(ConnId(1), Time(0));
        let mut b1 = LastHopFilters::default();
        deliver(&mut a, &mut b1, (ConnId(1), ConnId(1)), Time(0));
        let mut b2 = LastHopFilters::default();
        let parts = a.peer_joined(ConnId(2), Time(1));
        assert!(parts[0].reset);
        for part in &parts {
            b2.receive(ConnId(2), part, Time(1)).unwrap();
        }
        let fox = query_entries(&["fox".into()], Some(&id(1)));
        assert!(b2.may_match(ConnId(2), &fox));
        a.peer_left(ConnId(1));
        a.peer_left(ConnId(2));
        assert!(a.publish(Time(60_000)).is_empty(), "nobody to tell");
    }

    #[test]
    fn bad_or_flooding_patches_are_refused() {
        let mut b = LastHopFilters::default();
        let bad = FilterPatch {
            log2_slots: 10,
            reset: false,
            flips: vec![1],
        };
        assert!(matches!(
            b.receive(ConnId(1), &bad, Time(0)),
            Err(ReceiveError::Bad(PatchError::NoTable(10)))
        ));
        let big = FilterPatch {
            log2_slots: 20,
            reset: true,
            flips: vec![1; 48 * 1024],
        };
        let mut refused = false;
        for _ in 0..20 {
            if b.receive(ConnId(1), &big, Time(0)) == Err(ReceiveError::TooFast) {
                refused = true;
                break;
            }
        }
        assert!(refused, "past the burst, patches are refused");
        assert!(b.stats().memory_bytes <= 128 * 1024);
    }
}
