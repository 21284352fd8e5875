//! Super-seeding: how a node that has a whole file spends its upload when
//! a crowd downloads it at once.
//!
//! In a flash crowd the seed's uplink is the scarce thing: every group
//! must leave it at least once, and each copy of a group it sends twice
//! is a copy the downloaders could have given each other. Left alone, the
//! downloaders ask it for whatever they pick, and in measurements it sent
//! 1.5-1.7 copies of the file before the crowd was done. So, as
//! BitTorrent's super-seeding does, a seed rations its groups: while at
//! least [`RationConfig::crowd`] sharing downloaders (requests with
//! `X-Listen`, told apart by address and port) asked for a file within
//! [`RationConfig::window`], it serves a request only if every group in it
//! has been sent as few times as any group of the file (the *offer*), and
//! refuses any other with the offer, so the downloader asks again inside
//! it. Every group leaves once before any leaves twice; the crowd spreads
//! the copies. The offer is never empty (some group is always sent the
//! fewest times), so a download is never refused everything; a lone
//! downloader, or a client that doesn't share, is never rationed.
//!
//! I/O-free: time comes in as `now`. Bounded: at most
//! [`RationConfig::contents`] files are tracked (the one asked for longest
//! ago gives way), files of more than [`RationConfig::max_groups`] groups
//! are not rationed, a file remembers at most [`RationConfig::requesters`]
//! requesters, and copies are counted in a byte per group (saturating,
//! which only makes the offer wider).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::time::Duration;

use canopy_proto::ContentId;
use lru::LruCache;

use crate::Time;
use crate::groups::GroupSet;
use crate::tree::group_count;

/// The rationing's knobs.
#[derive(Debug, Clone)]
pub struct RationConfig {
    /// Requesters seen within this long are the crowd.
    pub window: Duration,
    /// Rationing starts with this many requesters in the window.
    pub crowd: usize,
    /// Files tracked at once.
    pub contents: usize,
    /// Files of more groups than this are served without rationing.
    pub max_groups: u64,
    /// Requesters remembered per file (the one seen longest ago gives way).
    pub requesters: usize,
}

impl Default for RationConfig {
    /// A crowd is two sharing downloaders within 30 s; 64 files of up to
    /// 16 GiB tracked, 32 requesters each: at most about 1 MiB of counts.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            crowd: 2,
            contents: 64,
            max_groups: 16 * 1024,
            requesters: 32,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ration {
    /// Serve it (and [`SeedRation::record`] it once it goes out).
    Serve,
    /// Not these groups now: they were sent more often than others. Ask
    /// for groups of `offer` instead.
    Refuse {
        /// The groups sent the fewest times.
        offer: GroupSet,
    },
}

#[derive(Debug)]
struct Crowd {
    size: u64,
    /// Copies of each group started, saturating.
    sent: Vec<u8>,
    /// Requester → when it last asked.
    seen: BTreeMap<SocketAddr, Time>,
}

impl Crowd {
    fn new(size: u64) -> Self {
        let groups = usize::try_from(group_count(size)).unwrap_or(0);
        Self {
            size,
            sent: vec![0; groups],
            seen: BTreeMap::new(),
        }
    }

    fn saw(&mut self, requester: SocketAddr, now: Time, most: usize) {
        self.seen.insert(requester, now);
        while self.seen.len() > most.max(1) {
            let oldest = self.seen.iter().min_by_key(|(_, at)| **at).map(|(a, _)| *a);
            match oldest {
                Some(addr) => self.seen.remove(&addr),
                None => break,
            };
        }
    }

    fn crowded(&self, config: &RationConfig, now: Time) -> bool {
        self.seen
            .values()
            .filter(|at| now.since(**at) < config.window)
            .count()
            >= config.crowd
    }

    fn fewest(&self) -> u8 {
        self.sent.iter().copied().min().unwrap_or(0)
    }

    fn offer(&self) -> GroupSet {
        let fewest = self.fewest();
        let mut offer = GroupSet::empty(self.size);
        for (group, sent) in (0u64..).zip(&self.sent) {
            if *sent == fewest {
                offer.insert(group);
            }
        }
        offer
    }

    fn groups(&self, groups: Range<u64>) -> impl Iterator<Item = &u8> {
        let start = usize::try_from(groups.start).unwrap_or(usize::MAX);
        let end = usize::try_from(groups.end).unwrap_or(usize::MAX);
        self.sent
            .get(start.min(self.sent.len())..end.min(self.sent.len()))
            .unwrap_or(&[])
            .iter()
    }
}

/// Per file, how often each group was sent and who asked lately. See the
/// module documentation.
#[derive(Debug)]
pub struct SeedRation {
    config: RationConfig,
    crowds: LruCache<ContentId, Crowd>,
}

impl SeedRation {
    /// An empty table.
    pub fn new(config: RationConfig) -> Self {
        let contents = NonZeroUsize::new(config.contents).unwrap_or(NonZeroUsize::MIN);
        Self {
            config,
            crowds: LruCache::new(contents),
        }
    }

    /// The crowd of `id` (`size` bytes), made if new; none for a file too
    /// big to ration.
    fn crowd(&mut self, id: ContentId, size: u64) -> Option<&mut Crowd> {
        if size == 0 || group_count(size) > self.config.max_groups {
            return None;
        }
        let crowd = self.crowds.get_or_insert_mut(id, || Crowd::new(size));
        if crowd.size != size {
            *crowd = Crowd::new(size); // the same id, another size: start over
        }
        Some(crowd)
    }

    /// A sharing downloader at `requester` asks for `groups` of `id`
    /// (`size` bytes). Nothing is counted until [`Self::record`] (the
    /// request may yet find no upload slot).
    pub fn admit(
        &mut self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        groups: Range<u64>,
        now: Time,
    ) -> Ration {
        let config = self.config.clone();
        let Some(crowd) = self.crowd(id, size) else {
            return Ration::Serve;
        };
        crowd.saw(requester, now, config.requesters);
        if !crowd.crowded(&config, now) {
            return Ration::Serve;
        }
        let fewest = crowd.fewest();
        if crowd.groups(groups).all(|sent| *sent == fewest) {
            Ration::Serve
        } else {
            Ration::Refuse {
                offer: crowd.offer(),
            }
        }
    }

    /// `groups` of `id` are being sent: one more copy of each (crowd or
    /// not: a seed knows what left it before the crowd gathers).
    pub fn record(&mut self, id: ContentId, groups: Range<u64>) {
        let Some(crowd) = self.crowds.get_mut(&id) else {
            return;
        };
        let start = usize::try_from(groups.start).unwrap_or(usize::MAX);
        let end = usize::try_from(groups.end).unwrap_or(usize::MAX);
        let len = crowd.sent.len();
        if let Some(counts) = crowd.sent.get_mut(start.min(len)..end.min(len)) {
            for sent in counts {
                *sent = sent.saturating_add(1);
            }
        }
    }

    /// What a sharing downloader at `requester` asking only what there is
    /// (`HEAD`) is told to ask for, if a crowd is on.
    pub fn offer(
        &mut self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        now: Time,
    ) -> Option<GroupSet> {
        let config = self.config.clone();
        let crowd = self.crowd(id, size)?;
        crowd.saw(requester, now, config.requesters);
        crowd.crowded(&config, now).then(|| crowd.offer())
    }

    /// The offer for `id` after what was recorded, if a crowd is on.
    pub fn current_offer(&mut self, id: &ContentId, now: Time) -> Option<GroupSet> {
        let config = self.config.clone();
        let crowd = self.crowds.get(id)?;
        crowd.crowded(&config, now).then(|| crowd.offer())
    }

    /// Files tracked.
    pub fn len(&self) -> usize {
        self.crowds.len()
    }

    /// True if no file is tracked.
    pub fn is_empty(&self) -> bool {
        self.crowds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::GROUP_LEN;

    const MIB: u64 = GROUP_LEN;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    fn at(secs: u64) -> Time {
        Time::ZERO + Duration::from_secs(secs)
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn served(ration: &Ration) -> bool {
        *ration == Ration::Serve
    }

    #[test]
    fn a_lone_downloader_is_never_rationed() {
        let mut table = SeedRation::new(RationConfig::default());
        for _ in 0..3 {
            let ration = table.admit(id(1), 4 * MIB, peer(1), 0..4, at(0));
            assert_eq!(ration, Ration::Serve);
            table.record(id(1), 0..4);
        }
        assert_eq!(table.offer(id(1), 4 * MIB, peer(1), at(1)), None);
        assert_eq!(table.current_offer(&id(1), at(1)), None);
    }

    #[test]
    fn in_a_crowd_every_group_leaves_once_before_any_leaves_twice() {
        let mut table = SeedRation::new(RationConfig::default());
        let size = 4 * MIB;
        // Two downloaders: the crowd is on from the second.
        assert!(served(&table.admit(id(1), size, peer(1), 0..1, at(0))));
        table.record(id(1), 0..1);
        // Group 0 went once; the others not at all: 0 is refused, with
        // the offer of the other three.
        match table.admit(id(1), size, peer(2), 0..2, at(1)) {
            Ration::Refuse { offer } => {
                assert_eq!(offer.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            table.admit(id(1), size, peer(2), 1..3, at(1)),
            Ration::Serve
        );
        table.record(id(1), 1..3);
        assert_eq!(
            table
                .current_offer(&id(1), at(1))
                .map(|o| o.iter().collect::<Vec<_>>()),
            Some(vec![3])
        );
        assert!(!served(&table.admit(id(1), size, peer(1), 1..2, at(2))));
        assert!(served(&table.admit(id(1), size, peer(1), 3..4, at(2))));
        table.record(id(1), 3..4);
        // Every group went once: the whole file is on offer again.
        assert_eq!(
            table.offer(id(1), size, peer(2), at(2)).map(|o| o.count()),
            Some(4)
        );
        assert!(served(&table.admit(id(1), size, peer(2), 0..4, at(2))));
    }

    #[test]
    fn the_crowd_ends_when_its_members_go_quiet() {
        let config = RationConfig::default();
        let window = config.window.as_secs();
        let mut table = SeedRation::new(config);
        let size = 2 * MIB;
        table.admit(id(1), size, peer(1), 0..1, at(0));
        table.record(id(1), 0..1);
        assert!(!served(&table.admit(id(1), size, peer(2), 0..1, at(1))));
        // Long after the first was last seen, the second is alone.
        assert!(served(&table.admit(
            id(1),
            size,
            peer(2),
            0..1,
            at(window + 1)
        )));
    }

    #[test]
    fn the_offer_is_never_empty() {
        let mut table = SeedRation::new(RationConfig::default());
        let size = 3 * MIB;
        table.admit(id(1), size, peer(1), 0..1, at(0));
        for round in 0..300u64 {
            let group = round % 3;
            let requester = peer(1 + u16::try_from(round % 5).unwrap_or(0));
            match table.admit(id(1), size, requester, group..group + 1, at(1)) {
                Ration::Serve => table.record(id(1), group..group + 1),
                Ration::Refuse { offer } => assert!(!offer.is_empty()),
            }
            let offer = table.current_offer(&id(1), at(1));
            assert!(offer.is_none_or(|o| !o.is_empty()));
        }
    }

    #[test]
    fn tables_stay_bounded() {
        let config = RationConfig {
            contents: 4,
            requesters: 3,
            ..RationConfig::default()
        };
        let mut table = SeedRation::new(config.clone());
        for n in 0..10u8 {
            for port in 0..10u16 {
                table.admit(id(n), MIB, peer(port + 1), 0..1, at(u64::from(port)));
            }
        }
        assert_eq!(table.len(), 4);
        let crowd = table.crowds.get(&id(9)).map(|c| c.seen.len());
        assert_eq!(crowd, Some(3));
        // A file too big to ration is served and not tracked.
        let huge = (config.max_groups + 1) * MIB;
        let mut table = SeedRation::new(config);
        for port in 1..4 {
            assert_eq!(
                table.admit(id(1), huge, peer(port), 0..1, at(0)),
                Ration::Serve
            );
        }
        assert!(table.is_empty());
    }

    #[test]
    fn hostile_ranges_past_the_end_are_harmless() {
        let mut table = SeedRation::new(RationConfig::default());
        table.admit(id(1), 2 * MIB, peer(1), 0..1, at(0));
        let ration = table.admit(id(1), 2 * MIB, peer(2), u64::MAX - 1..u64::MAX, at(0));
        assert!(served(&ration));
        table.record(id(1), u64::MAX - 1..u64::MAX);
        #[allow(clippy::reversed_empty_ranges)]
        table.record(id(1), 5..1);
        assert_eq!(
            table.current_offer(&id(1), at(0)).map(|o| o.count()),
            Some(2)
        );
    }
}
