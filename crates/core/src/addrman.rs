//! The address manager: which supernodes a node knows of and whom it
//! dials next, built so that no peer can fill it (after Bitcoin Core's
//! addrman; Heilman et al., "Eclipse Attacks on Bitcoin's Peer-to-Peer
//! Network", 2015).
//!
//! - **Seeds** (the configured supernodes) live apart from everything
//!   learned: never evicted, and offered for dialing before any learned
//!   address.
//! - **New** holds addresses peers told us of, **tried** those we have
//!   connected to and completed a handshake with. Both are fixed arrays of
//!   small buckets. A new address goes to a bucket chosen by a keyed hash
//!   of (source group, address group) among the few buckets its source's
//!   group may use, so one source, however many addresses it names, fills
//!   at most [`NEW_BUCKETS_PER_SOURCE`] buckets of [`NEW_BUCKETS`]. A
//!   tried address goes to one of [`TRIED_BUCKETS_PER_GROUP`] buckets of
//!   its own group.
//! - A full new bucket takes an address only in place of a *terrible*
//!   one (not heard of for 30 days, or failing and never reached); a full
//!   tried bucket takes a newly reached address only in place of a stale
//!   tried one. A new address never pushes out a tried one.
//! - One answer adds at most [`MAX_ADDRS_PER_ANSWER`]; one source group at
//!   most [`MAX_ADDRS_PER_SOURCE_WINDOW`] per [`SOURCE_WINDOW`]. Which
//!   answers count at all (only Pongs to our own Pings, try-lists for our
//!   own dials) the state machines decide ([`solicit`]).
//!
//! No I/O, no clock, no randomness of its own: `now` and random numbers
//! come in as arguments. Times are only compared with each other, so a
//! driver that persists the manager passes wall-clock milliseconds. The
//! bucket key is drawn once by the driver and saved with the entries
//! ([`Snapshot`]), so buckets stay where they were across restarts.

pub mod group;
pub mod solicit;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Time;
use crate::family::canonical;
use crate::rng::SplitMix64;
use group::{Group, learnable};

/// Buckets of the new table.
pub const NEW_BUCKETS: usize = 64;
/// Buckets of the tried table.
pub const TRIED_BUCKETS: usize = 16;
/// Addresses per bucket.
pub const BUCKET_SIZE: usize = 16;
/// New buckets one source group can reach: 4 of 64, so one source (or one
/// /16 of sources) fills at most 64 of 1,024 new entries.
pub const NEW_BUCKETS_PER_SOURCE: usize = 4;
/// Tried buckets one address group can reach.
pub const TRIED_BUCKETS_PER_GROUP: usize = 4;
/// Most addresses taken from one answer (a Pong or a try-list).
pub const MAX_ADDRS_PER_ANSWER: usize = 8;
/// Most addresses one source group adds per [`SOURCE_WINDOW`].
pub const MAX_ADDRS_PER_SOURCE_WINDOW: u32 = 32;
/// The window of the per-source budget.
pub const SOURCE_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Source groups whose budget is remembered; beyond, the oldest is forgotten.
pub const MAX_SOURCES_TRACKED: usize = 1024;
/// Most seeds kept.
pub const MAX_SEEDS: usize = 64;

/// An address not heard of for this long is terrible.
const HORIZON: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Failures, never having connected, after which an address is terrible.
const RETRIES: u32 = 3;
/// Failures after which an address whose last success is over a week old
/// is terrible (and a tried one stale).
const MAX_FAILURES: u32 = 10;
const WEEK: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// An address attempted this recently is never terrible (we are finding
/// out) but is unlikely to be selected again.
const RECENT_ATTEMPT: Duration = Duration::from_secs(10 * 60);

/// Which table an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    /// Heard of.
    New,
    /// Connected to.
    Tried,
}

#[derive(Debug, Clone)]
struct Entry {
    table: Table,
    bucket: usize,
    /// Who told us of it (for a tried entry we found ourselves, itself).
    source: IpAddr,
    last_heard: Time,
    last_attempt: Option<Time>,
    last_success: Option<Time>,
    /// Failed attempts since the last success.
    attempts: u32,
}

impl Entry {
    fn fresh(table: Table, bucket: usize, source: IpAddr, now: Time) -> Self {
        Self {
            table,
            bucket,
            source,
            last_heard: now,
            last_attempt: None,
            last_success: None,
            attempts: 0,
        }
    }

    /// Worth nothing: may be replaced by a new address in a full bucket.
    fn is_terrible(&self, now: Time) -> bool {
        if self
            .last_attempt
            .is_some_and(|at| now.since(at) < Duration::from_secs(60))
        {
            return false;
        }
        if now.since(self.last_heard) > HORIZON {
            return true;
        }
        match self.last_success {
            None => self.attempts >= RETRIES,
            Some(at) => now.since(at) > WEEK && self.attempts >= MAX_FAILURES,
        }
    }

    /// A tried entry that has stopped working: it may make room for one
    /// that works now.
    fn is_stale(&self, now: Time) -> bool {
        self.attempts >= RETRIES || self.last_success.is_none_or(|at| now.since(at) > HORIZON)
    }

    /// Selection weight (Bitcoin Core's `GetChance`, in integers): lower
    /// for one attempted just now and for each failure in a row.
    fn weight(&self, now: Time) -> u64 {
        let mut weight: u64 = 1 << 20;
        if self
            .last_attempt
            .is_some_and(|at| now.since(at) < RECENT_ATTEMPT)
        {
            weight /= 100;
        }
        for _ in 0..self.attempts.min(8) {
            weight = weight * 2 / 3;
        }
        weight.max(1)
    }
}

/// What the manager took and refused, for tests, logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrManStats {
    /// Addresses added to the new table.
    pub added: u64,
    /// Addresses beyond the first [`MAX_ADDRS_PER_ANSWER`] of an answer.
    pub over_answer_cap: u64,
    /// Addresses refused because their source group spent its budget.
    pub over_source_budget: u64,
    /// Addresses refused because their bucket was full of good entries.
    pub bucket_full: u64,
    /// Addresses that can't be dialed or that their source may not name.
    pub unlearnable: u64,
}

/// The address manager. See the module documentation.
#[derive(Debug, Clone)]
pub struct AddrMan {
    key: [u8; 32],
    seeds: Vec<SocketAddr>,
    entries: BTreeMap<SocketAddr, Entry>,
    new: Vec<Vec<SocketAddr>>,
    tried: Vec<Vec<SocketAddr>>,
    /// Per source group: when its window started, addresses it added since.
    budgets: BTreeMap<Group, (Time, u32)>,
    stats: AddrManStats,
}

impl AddrMan {
    /// An empty manager whose buckets are placed by `key` (drawn once by
    /// the driver from its RNG, then saved with the entries).
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            seeds: Vec::new(),
            entries: BTreeMap::new(),
            new: vec![Vec::new(); NEW_BUCKETS],
            tried: vec![Vec::new(); TRIED_BUCKETS],
            budgets: BTreeMap::new(),
            stats: AddrManStats::default(),
        }
    }

    /// The configured supernodes: kept apart, always offered first.
    pub fn set_seeds(&mut self, seeds: impl IntoIterator<Item = SocketAddr>) {
        self.seeds.clear();
        for seed in seeds.into_iter().map(canonical) {
            if !self.seeds.contains(&seed) && self.seeds.len() < MAX_SEEDS {
                self.seeds.push(seed);
            }
        }
    }

    /// The seeds, in the order configured.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// Counters.
    pub fn stats(&self) -> &AddrManStats {
        &self.stats
    }

    /// Entries in the new table.
    pub fn new_len(&self) -> usize {
        self.new.iter().map(Vec::len).sum()
    }

    /// Entries in the tried table.
    pub fn tried_len(&self) -> usize {
        self.tried.iter().map(Vec::len).sum()
    }

    /// Which table and bucket `addr` is in, if any.
    pub fn position(&self, addr: SocketAddr) -> Option<(Table, usize)> {
        self.entries.get(&addr).map(|e| (e.table, e.bucket))
    }

    /// When we last completed a handshake with `addr`, if it is known.
    pub fn last_success(&self, addr: SocketAddr) -> Option<Time> {
        self.entries.get(&addr)?.last_success
    }

    /// Every address known: seeds, then tried, then new.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let learned = self
            .tried
            .iter()
            .chain(&self.new)
            .flatten()
            .copied()
            .filter(|addr| !self.seeds.contains(addr));
        self.seeds.iter().copied().chain(learned)
    }

    /// `source` named `addrs` in answer to something we asked (a Pong to
    /// our Ping, a try-list refusing our dial). Takes at most
    /// [`MAX_ADDRS_PER_ANSWER`], starting at a place `random` picks (so
    /// a long list is learned a part at a time, not always its head),
    /// within the source group's budget. Returns how many were added.
    pub fn add(
        &mut self,
        source: SocketAddr,
        addrs: &[SocketAddr],
        random: u64,
        now: Time,
    ) -> usize {
        if addrs.is_empty() {
            return 0;
        }
        let source = canonical(source);
        let source_ip = source.ip();
        let start = usize::try_from(random % addrs.len() as u64).unwrap_or(0);
        let mut considered = 0;
        let mut added = 0;
        for addr in addrs[start..].iter().chain(&addrs[..start]).copied() {
            let addr = canonical(addr);
            if !learnable(addr, source_ip) || addr == source {
                self.stats.unlearnable += 1;
                continue;
            }
            if considered == MAX_ADDRS_PER_ANSWER {
                self.stats.over_answer_cap += 1;
                continue;
            }
            considered += 1;
            if self.seeds.contains(&addr) {
                continue;
            }
            if let Some(entry) = self.entries.get_mut(&addr) {
                entry.last_heard = entry.last_heard.max(now);
                continue;
            }
            if !self.spend_budget(Group::of(source_ip), now) {
                self.stats.over_source_budget += 1;
                continue;
            }
            if self.insert_new(addr, source_ip, now) {
                self.stats.added += 1;
                added += 1;
            } else {
                self.stats.bucket_full += 1;
            }
        }
        added
    }

    /// We connected to `addr` and completed a handshake: it moves to the
    /// tried table (if its bucket has room, or a stale entry to give).
    pub fn mark_good(&mut self, addr: SocketAddr, now: Time) {
        let addr = canonical(addr);
        if !learnable(addr, addr.ip()) {
            return;
        }
        if !self.entries.contains_key(&addr) && !self.insert_tried(addr, addr.ip(), now) {
            // No room in tried: keep it as new, heard of from itself.
            if !self.insert_new(addr, addr.ip(), now) {
                return;
            }
        }
        let Some(entry) = self.entries.get_mut(&addr) else {
            return;
        };
        entry.last_heard = now;
        entry.last_attempt = Some(now);
        entry.last_success = Some(now);
        entry.attempts = 0;
        if entry.table == Table::Tried {
            return;
        }
        let from = entry.bucket;
        let to = self.tried_bucket(addr);
        // (Making room can't evict `addr` from new: it was attempted just now.)
        if self.tried[to].len() >= BUCKET_SIZE && !self.demote_stale(to, now) {
            return; // stays new, with its success on record
        }
        self.new[from].retain(|a| *a != addr);
        self.tried[to].push(addr);
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.table = Table::Tried;
            entry.bucket = to;
        }
    }

    /// A dial to `addr` failed (no connection, or no handshake).
    pub fn mark_failed(&mut self, addr: SocketAddr, now: Time) {
        if let Some(entry) = self.entries.get_mut(&canonical(addr)) {
            entry.attempts = entry.attempts.saturating_add(1);
            entry.last_attempt = Some(now);
        }
    }

    /// Whom to dial next, passing over what `skip` says (connected,
    /// dialing, backing off): the first seed not skipped; else, by a coin
    /// from `random`, the tried or the new table first, an entry picked at
    /// random weighted against recent attempts and failures.
    pub fn select(
        &self,
        random: u64,
        now: Time,
        skip: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        if let Some(seed) = self.seeds.iter().copied().find(|s| !skip(*s)) {
            return Some(seed);
        }
        let mut rng = SplitMix64::new(random);
        let tables = if rng.next_u64() & 1 == 0 {
            [&self.tried, &self.new]
        } else {
            [&self.new, &self.tried]
        };
        for table in tables {
            let candidates: Vec<(SocketAddr, u64)> = table
                .iter()
                .flatten()
                .copied()
                .filter(|addr| !skip(*addr) && !self.seeds.contains(addr))
                .filter_map(|addr| Some((addr, self.entries.get(&addr)?.weight(now))))
                .collect();
            let total: u64 = candidates.iter().map(|(_, w)| w).sum();
            if total == 0 {
                continue;
            }
            let mut pick = rng.next_u64() % total;
            for (addr, weight) in candidates {
                if pick < weight {
                    return Some(addr);
                }
                pick -= weight;
            }
        }
        None
    }

    /// The persisted form.
    pub fn snapshot(&self) -> Snapshot {
        let saved = |table: &[Vec<SocketAddr>]| {
            table
                .iter()
                .flatten()
                .filter_map(|addr| {
                    let e = self.entries.get(addr)?;
                    Some(SavedEntry {
                        addr: *addr,
                        source: e.source,
                        last_heard: e.last_heard.0,
                        last_attempt: e.last_attempt.map(|t| t.0),
                        last_success: e.last_success.map(|t| t.0),
                        attempts: e.attempts,
                    })
                })
                .collect()
        };
        Snapshot {
            format: SNAPSHOT_FORMAT,
            key: self.key,
            tried: saved(&self.tried),
            new: saved(&self.new),
        }
    }

    /// A manager from its persisted form. Every entry goes through the same
    /// rules as when it was learned (buckets recomputed with the saved key,
    /// capacities enforced), so a damaged or edited file can't overfill
    /// it. Seeds are not saved: they come from the configuration.
    pub fn restore(snapshot: Snapshot) -> Self {
        let mut manager = Self::new(snapshot.key);
        if snapshot.format != SNAPSHOT_FORMAT {
            return manager;
        }
        let limit = (NEW_BUCKETS + TRIED_BUCKETS) * BUCKET_SIZE;
        for (table, saved) in [(Table::Tried, snapshot.tried), (Table::New, snapshot.new)] {
            for mut s in saved.into_iter().take(limit) {
                (s.addr, s.source) = (canonical(s.addr), s.source.to_canonical());
                if manager.entries.contains_key(&s.addr) || !learnable(s.addr, s.source) {
                    continue;
                }
                let now = Time(s.last_heard);
                let placed = match table {
                    Table::Tried => manager.insert_tried(s.addr, s.source, now),
                    Table::New => false,
                } || manager.insert_new(s.addr, s.source, now);
                if let (true, Some(entry)) = (placed, manager.entries.get_mut(&s.addr)) {
                    entry.last_attempt = s.last_attempt.map(Time);
                    entry.last_success = s.last_success.map(Time);
                    entry.attempts = s.attempts;
                }
            }
        }
        manager
    }

    fn spend_budget(&mut self, group: Group, now: Time) -> bool {
        if !self.budgets.contains_key(&group) && self.budgets.len() >= MAX_SOURCES_TRACKED {
            let oldest = self
                .budgets
                .iter()
                .min_by_key(|(_, (start, _))| *start)
                .map(|(g, _)| *g);
            if let Some(oldest) = oldest {
                self.budgets.remove(&oldest);
            }
        }
        let (start, used) = self.budgets.entry(group).or_insert((now, 0));
        if now.since(*start) >= SOURCE_WINDOW {
            *start = now;
            *used = 0;
        }
        if *used >= MAX_ADDRS_PER_SOURCE_WINDOW {
            return false;
        }
        *used += 1;
        true
    }

    /// Puts `addr` in its new bucket, in place of a terrible entry if the
    /// bucket is full; false if it is full of good ones.
    fn insert_new(&mut self, addr: SocketAddr, source: IpAddr, now: Time) -> bool {
        let bucket = self.new_bucket(addr, source);
        if self.new[bucket].len() >= BUCKET_SIZE {
            let victim = self.new[bucket]
                .iter()
                .position(|a| self.entries.get(a).is_none_or(|e| e.is_terrible(now)));
            let Some(victim) = victim else {
                return false;
            };
            let gone = self.new[bucket].swap_remove(victim);
            self.entries.remove(&gone);
        }
        self.new[bucket].push(addr);
        self.entries
            .insert(addr, Entry::fresh(Table::New, bucket, source, now));
        true
    }

    /// Puts `addr` (known to no table) straight into its tried bucket.
    fn insert_tried(&mut self, addr: SocketAddr, source: IpAddr, now: Time) -> bool {
        let bucket = self.tried_bucket(addr);
        if self.tried[bucket].len() >= BUCKET_SIZE && !self.demote_stale(bucket, now) {
            return false;
        }
        self.tried[bucket].push(addr);
        self.entries
            .insert(addr, Entry::fresh(Table::Tried, bucket, source, now));
        true
    }

    /// Makes room in tried bucket `bucket` by moving its stalest entry back
    /// to the new table (dropped if that has no room either); false if
    /// every entry still works.
    fn demote_stale(&mut self, bucket: usize, now: Time) -> bool {
        let victim = self.tried[bucket]
            .iter()
            .enumerate()
            .filter(|(_, a)| self.entries.get(*a).is_none_or(|e| e.is_stale(now)))
            .min_by_key(|(_, a)| self.entries.get(*a).and_then(|e| e.last_success))
            .map(|(i, _)| i);
        let Some(victim) = victim else {
            return false;
        };
        let addr = self.tried[bucket].swap_remove(victim);
        if let Some(old) = self.entries.remove(&addr) {
            if self.insert_new(addr, old.source, now) {
                if let Some(entry) = self.entries.get_mut(&addr) {
                    *entry = Entry {
                        table: Table::New,
                        bucket: entry.bucket,
                        ..old
                    };
                }
            }
        }
        true
    }

    fn new_bucket(&self, addr: SocketAddr, source: IpAddr) -> usize {
        let source_group = Group::of(source);
        let mut slot = self.hasher(b"new-slot");
        Group::of(addr.ip()).feed(&mut slot);
        source_group.feed(&mut slot);
        let slot = finish(&slot) % NEW_BUCKETS_PER_SOURCE as u64;
        let mut bucket = self.hasher(b"new-bucket");
        source_group.feed(&mut bucket);
        bucket.update(&slot.to_le_bytes());
        index(finish(&bucket), NEW_BUCKETS)
    }

    fn tried_bucket(&self, addr: SocketAddr) -> usize {
        let mut slot = self.hasher(b"tried-slot");
        slot.update(addr.to_string().as_bytes());
        let slot = finish(&slot) % TRIED_BUCKETS_PER_GROUP as u64;
        let mut bucket = self.hasher(b"tried-bucket");
        Group::of(addr.ip()).feed(&mut bucket);
        bucket.update(&slot.to_le_bytes());
        index(finish(&bucket), TRIED_BUCKETS)
    }

    fn hasher(&self, purpose: &[u8]) -> blake3::Hasher {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(purpose);
        hasher
    }
}

fn finish(hasher: &blake3::Hasher) -> u64 {
    let mut first = [0; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn index(hash: u64, len: usize) -> usize {
    usize::try_from(hash % len as u64).unwrap_or(0)
}

const SNAPSHOT_FORMAT: u32 = 1;

/// What the driver saves and loads (as JSON, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Layout version; another one is started afresh.
    pub format: u32,
    /// The bucket key.
    pub key: [u8; 32],
    /// Tried entries.
    pub tried: Vec<SavedEntry>,
    /// New entries.
    pub new: Vec<SavedEntry>,
}

/// One saved entry; times as the driver's milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEntry {
    /// The address.
    pub addr: SocketAddr,
    /// Who told us of it.
    pub source: IpAddr,
    /// Last heard of.
    pub last_heard: u64,
    /// Last dialed.
    pub last_attempt: Option<u64>,
    /// Last connected to.
    pub last_success: Option<u64>,
    /// Failures since the last success.
    pub attempts: u32,
}

#[cfg(test)]
mod tests;
