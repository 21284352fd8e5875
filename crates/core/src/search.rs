//! One search, from the searching leaf's side: collects the hits that come
//! back for its message id and groups them by content id and size, each
//! with the list of leaves that have it. Bounded in results, in sizes per
//! content id and in sources per result.
//!
//! A hit's size is a peer's claim. Grouping by (id, size), not by id with
//! the first hit's size, means a hostile source claiming a wrong size makes
//! its own group and never poisons the honest one; a downloader picks the
//! group most sources agree on ([`most_agreed`]), and the tree, which
//! merges into the id only for the true size, settles it.
//!
//! A result's sources are complete and partial ones alike (a partial one
//! is a leaf still downloading the file, serving what it has verified):
//! each source says which it is.
//!
//! A leaf attached to several supernodes, some over IPv4 and some over
//! IPv6, comes back in hits with an address of each family (every one the
//! IP its supernode saw it connect from). A source keeps one of each: the
//! IPv6 one first (no NAT in the way, usually), the IPv4 one as
//! [`Source::fallback`]; a reachable address wins over a firewalled one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use canopy_proto::{ContentId, MessageId, NodeId, QueryHit};

use crate::Time;

/// Most sources kept for one content.
pub const MAX_SOURCES_PER_RESULT: usize = 64;
/// Most distinct sizes kept for one content id (a hostile peer can claim
/// any size; one true size plus a few lies is all a search needs to keep).
pub const MAX_SIZES_PER_CONTENT: usize = 16;
/// Most distinct names kept for one result: the first ones heard, each
/// counted once per source (names past these are not counted).
pub const MAX_NAMES_PER_RESULT: usize = 8;

/// A leaf that has a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its node id.
    pub node_id: NodeId,
    /// Where to reach it (if firewalled: where it connects from); of its
    /// addresses, the one to try first (IPv6 over IPv4).
    pub addr: SocketAddr,
    /// Its address in the other family, if a hit gave one: the fallback
    /// when `addr` can't be reached (Happy Eyeballs,
    /// [`crate::family::DialRace`]).
    pub fallback: Option<SocketAddr>,
    /// It accepts no connections: ask it to connect out with a push.
    pub firewalled: bool,
    /// It is still downloading the file (the hit's file said how much it
    /// has): it serves what it has verified so far.
    pub partial: bool,
    /// For a partial source, about how many bytes it has verified, as its
    /// latest hit said (`None` for a whole source).
    pub available: Option<u64>,
}

impl Source {
    /// Every address to dial, in order: [`addr`](Self::addr), then
    /// [`fallback`](Self::fallback).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr).chain(self.fallback).collect()
    }

    /// Takes in another hit's address for this source; true if anything
    /// changed. A reachable address replaces a firewalled one; an IPv6
    /// one goes first, the other family's kept as the fallback; one
    /// address per family (the latest reachable one is not taken over the
    /// first: a source is not moved around by every hit).
    fn learn_addr(&mut self, addr: SocketAddr, firewalled: bool) -> bool {
        let addr = crate::family::canonical(addr);
        if firewalled || addr == self.addr || Some(addr) == self.fallback {
            return false;
        }
        if self.firewalled {
            // Reachable after all, at this address.
            self.firewalled = false;
            self.addr = addr;
            self.fallback = None;
            return true;
        }
        if addr.is_ipv6() == self.addr.is_ipv6() {
            return false;
        }
        if addr.is_ipv6() {
            self.fallback = Some(self.addr);
            self.addr = addr;
        } else if self.fallback.is_none() {
            self.fallback = Some(addr);
        } else {
            return false;
        }
        true
    }
}

/// One distinct content found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResult {
    /// What it is.
    pub content_id: ContentId,
    /// The name most of its sources give (the first heard among equals);
    /// a peer's claim: sanitize it before saving under it.
    pub name: String,
    /// The distinct names its sources give, most common first (first heard
    /// among equals), at most [`MAX_NAMES_PER_RESULT`]; `names[0] == name`.
    pub names: Vec<String>,
    /// Its size, as these sources claim it.
    pub size: u64,
    /// Every leaf reported to have it, in order of arrival.
    pub sources: Vec<Source>,
}

/// The state of one search.
#[derive(Debug, Clone)]
pub struct SearchSession {
    message_id: MessageId,
    deadline: Time,
    max_results: usize,
    results: BTreeMap<(ContentId, u64), SearchResult>,
    hits_received: usize,
    first_hit_at: Option<Time>,
    only: Option<ContentId>,
    /// Per result, each kept name and how many sources gave it, in order
    /// of arrival.
    name_counts: BTreeMap<(ContentId, u64), Vec<(String, usize)>>,
    /// Bumped whenever a hit changed the results.
    revision: u64,
}

impl SearchSession {
    /// A search for `message_id` that runs until `now + timeout` or until it
    /// has `max_results` distinct contents.
    pub fn new(message_id: MessageId, now: Time, timeout: Duration, max_results: usize) -> Self {
        Self {
            message_id,
            deadline: now + timeout,
            max_results: max_results.max(1),
            results: BTreeMap::new(),
            hits_received: 0,
            first_hit_at: None,
            only: None,
            name_counts: BTreeMap::new(),
            revision: 0,
        }
    }

    /// Keeps only files with content id `id`, whatever else a hit carries.
    pub fn only(mut self, id: ContentId) -> Self {
        self.only = Some(id);
        self
    }

    /// The query's message id.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// When the search gives up waiting.
    pub fn deadline(&self) -> Time {
        self.deadline
    }

    /// Takes in a hit; hits for other searches are ignored.
    pub fn handle_hit(&mut self, hit: &QueryHit, now: Time) {
        if hit.message_id != self.message_id {
            return;
        }
        self.hits_received += 1;
        self.first_hit_at.get_or_insert(now);
        for file in &hit.files {
            let source = Source {
                node_id: hit.source_node_id,
                addr: hit.source_addr,
                fallback: None,
                firewalled: hit.firewalled,
                partial: file.available.is_some(),
                available: file.available,
            };
            if self.only.is_some_and(|id| id != file.content_id) {
                continue;
            }
            let key = (file.content_id, file.size);
            if !self.results.contains_key(&key) {
                let sizes = self
                    .results
                    .range((file.content_id, 0)..=(file.content_id, u64::MAX))
                    .count();
                if self.results.len() >= self.max_results || sizes >= MAX_SIZES_PER_CONTENT {
                    continue;
                }
                self.results.insert(
                    key,
                    SearchResult {
                        content_id: file.content_id,
                        name: file.name.clone(),
                        names: vec![file.name.clone()],
                        size: file.size,
                        sources: Vec::new(),
                    },
                );
                self.revision += 1;
            }
            if let Some(result) = self.results.get_mut(&key) {
                let known = result
                    .sources
                    .iter_mut()
                    .find(|s| s.node_id == source.node_id);
                if let Some(known) = known {
                    if known.learn_addr(source.addr, source.firewalled) {
                        self.revision += 1;
                    }
                    // A partial source heard of again has more, or the
                    // whole file: its download went on or finished.
                    let more = match (known.available, source.available) {
                        (Some(had), Some(has)) => has > had,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    if more {
                        known.partial = source.partial;
                        known.available = source.available;
                        self.revision += 1;
                    }
                } else if result.sources.len() < MAX_SOURCES_PER_RESULT {
                    result.sources.push(source.clone());
                    let counts = self.name_counts.entry(key).or_default();
                    count_name(counts, &file.name);
                    result.names = ranked_names(counts);
                    if let Some(first) = result.names.first() {
                        result.name.clone_from(first);
                    }
                    self.revision += 1;
                }
            }
        }
    }

    /// A number that changes whenever the results change (a new content,
    /// source or name): what a caller streaming results compares.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// True once the deadline passed or enough results arrived.
    pub fn is_finished(&self, now: Time) -> bool {
        now >= self.deadline || self.results.len() >= self.max_results
    }

    /// Hit messages received so far (each may carry several files).
    pub fn hits_received(&self) -> usize {
        self.hits_received
    }

    /// When the first hit arrived.
    pub fn first_hit_at(&self) -> Option<Time> {
        self.first_hit_at
    }

    /// Results kept so far, one per file and source: what a supernode
    /// running the query dynamically counts towards its target.
    pub fn kept(&self) -> usize {
        self.results.values().map(|r| r.sources.len()).sum()
    }

    /// The results so far, by content id, then size.
    pub fn results(&self) -> impl Iterator<Item = &SearchResult> {
        self.results.values()
    }

    /// The results, consuming the session.
    pub fn into_results(self) -> Vec<SearchResult> {
        self.results.into_values().collect()
    }
}

/// Counts one source's `name` (a new name only while fewer than
/// [`MAX_NAMES_PER_RESULT`] are kept).
fn count_name(counts: &mut Vec<(String, usize)>, name: &str) {
    if let Some((_, count)) = counts.iter_mut().find(|(known, _)| known == name) {
        *count += 1;
    } else if counts.len() < MAX_NAMES_PER_RESULT {
        counts.push((name.to_owned(), 1));
    }
}

/// The names, most common first; a stable sort keeps arrival order among
/// equals.
fn ranked_names(counts: &[(String, usize)]) -> Vec<String> {
    let mut ranked: Vec<&(String, usize)> = counts.iter().collect();
    ranked.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    ranked.into_iter().map(|(name, _)| name.clone()).collect()
}

/// Of the results for `id`, the group (one size) that most sources agree
/// on; among equals, the smaller size (a lie can only be told once per
/// source, and a smaller claim costs less to disprove).
pub fn most_agreed(results: &[SearchResult], id: ContentId) -> Option<&SearchResult> {
    results
        .iter()
        .filter(|r| r.content_id == id)
        .max_by(|a, b| {
            a.sources
                .len()
                .cmp(&b.sources.len())
                .then(b.size.cmp(&a.size))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_proto::SharedFile;

    fn hit(message: u8, source: u8, files: &[u8]) -> QueryHit {
        QueryHit {
            message_id: MessageId([message; 16]),
            source_node_id: NodeId([source; 16]),
            source_addr: SocketAddr::from(([127, 0, 0, source], 1000)),
            files: files
                .iter()
                .map(|id| SharedFile {
                    content_id: ContentId([*id; 32]),
                    name: format!("file {id}"),
                    size: u64::from(*id),
                    available: None,
                })
                .collect(),
            firewalled: false,
        }
    }

    #[test]
    fn hits_group_by_content_with_distinct_sources() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        search.handle_hit(&hit(1, 1, &[10, 11]), Time(5));
        search.handle_hit(&hit(1, 2, &[10]), Time(6));
        search.handle_hit(&hit(1, 2, &[10]), Time(7)); // same source again
        search.handle_hit(&hit(9, 3, &[10]), Time(8)); // another search's hit
        let results: Vec<_> = search.results().cloned().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].sources.len(), 2);
        assert_eq!(results[1].sources.len(), 1);
        assert_eq!(search.hits_received(), 3);
        assert_eq!(search.first_hit_at(), Some(Time(5)));
    }

    #[test]
    fn sources_say_whether_they_are_partial_and_finishing_clears_it() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        let mut partial = hit(1, 1, &[10]);
        partial.files[0].available = Some(4);
        search.handle_hit(&partial, Time(1));
        search.handle_hit(&hit(1, 2, &[10]), Time(2));
        let partial_of = |search: &SearchSession| -> Vec<(u8, bool, Option<u64>)> {
            search
                .results()
                .flat_map(|r| {
                    r.sources
                        .iter()
                        .map(|s| (s.node_id.0[0], s.partial, s.available))
                })
                .collect()
        };
        assert_eq!(
            partial_of(&search),
            vec![(1, true, Some(4)), (2, false, None)]
        );
        let revision = search.revision();
        search.handle_hit(&partial, Time(3));
        assert_eq!(search.revision(), revision, "nothing new");
        // Progress is taken, never a step back.
        partial.files[0].available = Some(7);
        search.handle_hit(&partial, Time(3));
        partial.files[0].available = Some(5);
        search.handle_hit(&partial, Time(3));
        assert_eq!(
            partial_of(&search),
            vec![(1, true, Some(7)), (2, false, None)]
        );
        assert!(search.revision() > revision);
        search.handle_hit(&hit(1, 1, &[10]), Time(4));
        assert_eq!(
            partial_of(&search),
            vec![(1, false, None), (2, false, None)]
        );
        // A complete source never turns partial again.
        search.handle_hit(&partial, Time(5));
        assert_eq!(
            partial_of(&search),
            vec![(1, false, None), (2, false, None)]
        );
    }

    fn sized(message: u8, source: u8, id: u8, size: u64) -> QueryHit {
        let mut hit = hit(message, source, &[id]);
        hit.files[0].size = size;
        hit
    }

    #[test]
    fn a_wrong_size_makes_its_own_group_and_the_most_agreed_wins() {
        let id = ContentId([7; 32]);
        let mut search = SearchSession::new(
            MessageId([1; 16]),
            Time(0),
            Duration::from_secs(5),
            usize::MAX,
        )
        .only(id);
        // The liar answers first, with a size of its own.
        search.handle_hit(&sized(1, 9, 7, 1 << 40), Time(1));
        search.handle_hit(&sized(1, 1, 7, 5000), Time(2));
        search.handle_hit(&sized(1, 2, 7, 5000), Time(3));
        let results = search.into_results();
        assert_eq!(results.len(), 2);
        let honest = results.iter().find(|r| r.size == 5000).unwrap();
        assert_eq!(honest.sources.len(), 2, "the lie did not touch it");
        let best = most_agreed(&results, id).unwrap();
        assert_eq!((best.size, best.sources.len()), (5000, 2));
        assert!(most_agreed(&results, ContentId([8; 32])).is_none());
    }

    #[test]
    fn sizes_per_content_are_bounded() {
        let mut search = SearchSession::new(
            MessageId([1; 16]),
            Time(0),
            Duration::from_secs(5),
            usize::MAX,
        );
        for source in 0..50u8 {
            search.handle_hit(&sized(1, source, 7, u64::from(source) + 1), Time(1));
        }
        assert_eq!(search.results().count(), MAX_SIZES_PER_CONTENT);
    }

    #[test]
    fn a_search_by_id_keeps_only_that_id() {
        let mut search = SearchSession::new(
            MessageId([1; 16]),
            Time(0),
            Duration::from_secs(5),
            usize::MAX,
        )
        .only(ContentId([2; 32]));
        search.handle_hit(&hit(1, 1, &[1, 2, 3]), Time(1));
        let ids: Vec<_> = search.results().map(|r| r.content_id).collect();
        assert_eq!(ids, vec![ContentId([2; 32])]);
        assert!(!search.is_finished(Time(4_999)), "runs its whole timeout");
    }

    fn named(source: u8, name: &str) -> QueryHit {
        let mut hit = hit(1, source, &[7]);
        hit.files[0].name = name.to_owned();
        hit
    }

    #[test]
    fn names_are_ranked_by_how_many_sources_give_them() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        search.handle_hit(&named(1, "rare.iso"), Time(1));
        search.handle_hit(&named(2, "common.iso"), Time(2));
        search.handle_hit(&named(3, "common.iso"), Time(3));
        search.handle_hit(&named(3, "common.iso"), Time(3)); // same source: counted once
        search.handle_hit(&named(4, "other.iso"), Time(4));
        let result = search.results().next().unwrap().clone();
        assert_eq!(result.name, "common.iso");
        assert_eq!(result.names, vec!["common.iso", "rare.iso", "other.iso"]);
    }

    #[test]
    fn names_are_bounded() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        for source in 0..40u8 {
            search.handle_hit(&named(source, &format!("name {source}")), Time(1));
        }
        let result = search.results().next().unwrap();
        assert_eq!(result.names.len(), MAX_NAMES_PER_RESULT);
        assert_eq!(result.name, "name 0", "first heard among equals");
        assert_eq!(result.sources.len(), 40);
    }

    #[test]
    fn the_revision_moves_only_when_results_change() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        let start = search.revision();
        search.handle_hit(&hit(1, 1, &[10]), Time(1));
        let after_first = search.revision();
        assert!(after_first > start);
        search.handle_hit(&hit(1, 1, &[10]), Time(2)); // nothing new
        search.handle_hit(&hit(9, 2, &[10]), Time(2)); // another search
        assert_eq!(search.revision(), after_first);
        search.handle_hit(&hit(1, 2, &[10]), Time(3)); // a new source
        assert!(search.revision() > after_first);
    }

    #[test]
    fn finishes_at_the_deadline_or_the_result_count() {
        let mut search = SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(1), 2);
        assert!(!search.is_finished(Time(999)));
        assert!(search.is_finished(Time(1000)));
        search.handle_hit(&hit(1, 1, &[1, 2, 3]), Time(1));
        assert_eq!(search.results().count(), 2, "capped at max_results");
        assert!(search.is_finished(Time(1)));
    }

    #[test]
    fn a_source_seen_over_both_families_is_tried_over_ipv6_first() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        let at = |addr: &str, firewalled: bool| {
            let mut h = hit(1, 7, &[10]);
            h.source_addr = addr.parse().unwrap();
            h.firewalled = firewalled;
            h
        };
        let source = |search: &SearchSession| search.results().next().unwrap().sources[0].clone();
        search.handle_hit(&at("192.0.2.7:6346", false), Time(1));
        assert_eq!(
            source(&search).addrs(),
            vec!["192.0.2.7:6346".parse().unwrap()]
        );
        let before = search.revision();
        search.handle_hit(&at("[2001:db8::7]:6346", false), Time(2));
        let both = source(&search);
        assert_eq!(both.addr, "[2001:db8::7]:6346".parse().unwrap());
        assert_eq!(both.fallback, Some("192.0.2.7:6346".parse().unwrap()));
        assert!(search.revision() > before);
        // Neither another address of a family it has nor a firewalled one
        // changes it.
        search.handle_hit(&at("[2001:db8::8]:6346", false), Time(3));
        search.handle_hit(&at("192.0.2.8:6346", false), Time(3));
        search.handle_hit(&at("198.51.100.1:6346", true), Time(3));
        assert_eq!(source(&search), both);
        assert_eq!(search.results().next().unwrap().sources.len(), 1);
    }

    #[test]
    fn a_firewalled_source_found_reachable_in_the_other_family_is_dialed_there() {
        let mut search =
            SearchSession::new(MessageId([1; 16]), Time(0), Duration::from_secs(5), 10);
        let mut behind_nat = hit(1, 7, &[10]);
        behind_nat.source_addr = "192.0.2.7:40000".parse().unwrap();
        behind_nat.firewalled = true;
        search.handle_hit(&behind_nat, Time(1));
        let mut open = hit(1, 7, &[10]);
        open.source_addr = "[2001:db8::7]:6346".parse().unwrap();
        search.handle_hit(&open, Time(2));
        let source = search.results().next().unwrap().sources[0].clone();
        assert!(!source.firewalled);
        assert_eq!(source.addrs(), vec!["[2001:db8::7]:6346".parse().unwrap()]);
    }
}
