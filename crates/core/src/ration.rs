//! Super-seeding: how a node that has a whole file spends its upload when
//! a crowd downloads it at once.
//!
//! In a flash crowd the seed's uplink is the scarce thing: every group
//! must leave it at least once, and each copy of a group it sends twice
//! is a copy the downloaders could have given each other. Left alone, the
//! downloaders ask it for whatever they pick, and in measurements it sent
//! 1.5-1.7 copies of the file before the crowd was done. So, as
//! BitTorrent's super-seeding does, a seed rations its groups: while at
//! least [`RationConfig::crowd`] sharing downloaders (told apart by
//! address and listening port) asked for a file within
//! [`RationConfig::window`], it serves a downloader a group only if no
//! group that downloader still needs (it says which: `X-Need`, the groups
//! it has not got and is not getting elsewhere) has left the seed fewer
//! times. It refuses any
//! other request with the *offer*, the groups the downloader needs that
//! were sent the fewest times, so the downloader asks again inside it.
//! Every group leaves once before any leaves twice, and the crowd spreads
//! the copies.
//!
//! Judged per downloader, never over the whole file, so nobody waits on a
//! group it already has: a downloader that needs only groups that left
//! often (their first copies went to a peer that then died) is served
//! them. The offer is never empty while a request is refused (the groups
//! asked for count as needed), and a list cut short only leaves groups
//! out, so an offer never names a group the downloader doesn't need; a
//! lone downloader, or a client that doesn't say what it needs, is never
//! rationed.
//!
//! I/O-free: time comes in as `now`. Bounded: at most
//! [`RationConfig::contents`] files are tracked (the one asked for longest
//! ago gives way), files of more than [`RationConfig::max_groups`] groups
//! are not rationed, a file remembers at most [`RationConfig::requesters`]
//! requesters, and copies are counted in a byte per group (saturating,
//! which only makes offers wider).

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
    /// Not these groups now: they were sent more often than others the
    /// downloader needs. Ask for groups of `offer` instead.
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

    /// The fewest copies of any group in `lacking`.
    fn fewest(&self, lacking: &GroupSet) -> Option<u8> {
        lacking
            .iter()
            .filter_map(|group| self.sent.get(usize::try_from(group).ok()?).copied())
            .min()
    }

    /// The groups of `lacking` sent the fewest times.
    fn offer(&self, lacking: &GroupSet) -> GroupSet {
        let mut offer = GroupSet::empty(self.size);
        if let Some(fewest) = self.fewest(lacking) {
            for group in lacking.iter() {
                if self.sent.get(usize::try_from(group).unwrap_or(usize::MAX)) == Some(&fewest) {
                    offer.insert(group);
                }
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

    /// A sharing downloader at `requester`, which needs the groups in
    /// `needs`, asks for `asked` groups of `id` (`size` bytes). Nothing is counted until [`Self::record`] (the
    /// request may yet find no upload slot).
    pub fn admit(
        &mut self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        asked: Range<u64>,
        needs: &GroupSet,
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
        // What it lacks: what it said it needs, and what it asks for.
        let mut lacking = fitted(needs, size);
        lacking.insert_run(asked.clone());
        let fewest = crowd.fewest(&lacking);
        if crowd.groups(asked).all(|sent| Some(*sent) == fewest) {
            Ration::Serve
        } else {
            Ration::Refuse {
                offer: crowd.offer(&lacking),
            }
        }
    }

    /// [`Self::admit`], and if served, [`Self::record`] at once: what a
    /// server does, so two requests at once can't both take a group's
    /// one free copy ([`Self::unrecord`] if it then sends nothing).
    pub fn take(
        &mut self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        asked: Range<u64>,
        needs: &GroupSet,
        now: Time,
    ) -> Ration {
        let ration = self.admit(id, size, requester, asked.clone(), needs, now);
        if ration == Ration::Serve {
            self.record(id, asked);
        }
        ration
    }

    /// `groups` of `id` taken with [`Self::take`] were not sent after all
    /// (no upload slot): one copy fewer of each.
    pub fn unrecord(&mut self, id: ContentId, groups: Range<u64>) {
        self.count(id, groups, |sent| sent.saturating_sub(1));
    }

    /// `groups` of `id` are being sent: one more copy of each (crowd or
    /// not: a seed knows what left it before the crowd gathers).
    pub fn record(&mut self, id: ContentId, groups: Range<u64>) {
        self.count(id, groups, |sent| sent.saturating_add(1));
    }

    fn count(&mut self, id: ContentId, groups: Range<u64>, change: impl Fn(u8) -> u8) {
        let Some(crowd) = self.crowds.get_mut(&id) else {
            return;
        };
        let start = usize::try_from(groups.start).unwrap_or(usize::MAX);
        let end = usize::try_from(groups.end).unwrap_or(usize::MAX);
        let len = crowd.sent.len();
        if let Some(counts) = crowd.sent.get_mut(start.min(len)..end.min(len)) {
            for sent in counts {
                *sent = change(*sent);
            }
        }
    }

    /// What a sharing downloader at `requester` that needs `needs`
    /// should ask for next, if a crowd is on (for a `HEAD`, and after a
    /// request is recorded).
    pub fn offer(
        &mut self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        needs: &GroupSet,
        now: Time,
    ) -> Option<GroupSet> {
        let config = self.config.clone();
        let crowd = self.crowd(id, size)?;
        crowd.saw(requester, now, config.requesters);
        let lacking = fitted(needs, size);
        crowd.crowded(&config, now).then(|| crowd.offer(&lacking))
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

/// `needs` as a set of a file of `size` bytes (a set of another size
/// says nothing).
fn fitted(needs: &GroupSet, size: u64) -> GroupSet {
    if needs.size() == size {
        needs.clone()
    } else {
        GroupSet::empty(size)
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

    fn set(size: u64, groups: &[u64]) -> GroupSet {
        let mut set = GroupSet::empty(size);
        for &g in groups {
            set.insert(g);
        }
        set
    }

    /// What a downloader that has `has` needs.
    fn needs(has: &GroupSet) -> GroupSet {
        has.complement()
    }

    fn groups(set: &GroupSet) -> Vec<u64> {
        set.iter().collect()
    }

    fn served(ration: &Ration) -> bool {
        *ration == Ration::Serve
    }

    #[test]
    fn a_lone_downloader_is_never_rationed() {
        let size = 4 * MIB;
        let mut table = SeedRation::new(RationConfig::default());
        let none = GroupSet::empty(size);
        for _ in 0..3 {
            let ration = table.admit(id(1), size, peer(1), 0..4, &needs(&none), at(0));
            assert_eq!(ration, Ration::Serve);
            table.record(id(1), 0..4);
        }
        assert_eq!(
            table.offer(id(1), size, peer(1), &needs(&none), at(1)),
            None
        );
    }

    #[test]
    fn in_a_crowd_every_group_leaves_once_before_any_leaves_twice() {
        let mut table = SeedRation::new(RationConfig::default());
        let size = 4 * MIB;
        let none = GroupSet::empty(size);
        // Two downloaders: the crowd is on from the second. The first's
        // group 0 is counted though no crowd was on yet.
        assert!(served(&table.admit(
            id(1),
            size,
            peer(1),
            0..1,
            &needs(&none),
            at(0)
        )));
        table.record(id(1), 0..1);
        // Group 0 went once, the others never: 0 is refused, with the
        // other three on offer.
        match table.admit(id(1), size, peer(2), 0..2, &needs(&none), at(1)) {
            Ration::Refuse { offer } => assert_eq!(groups(&offer), vec![1, 2, 3]),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(served(&table.admit(
            id(1),
            size,
            peer(2),
            1..3,
            &needs(&none),
            at(1)
        )));
        table.record(id(1), 1..3);
        // The second now has (coming) 1 and 2: only 3 is on its offer.
        let second = set(size, &[1, 2]);
        let offer = table.offer(id(1), size, peer(2), &needs(&second), at(1));
        assert_eq!(offer.as_ref().map(groups), Some(vec![3]));
        // The first has 0: 3 too; 1 is refused it.
        let first = set(size, &[0]);
        assert!(!served(&table.admit(
            id(1),
            size,
            peer(1),
            1..2,
            &needs(&first),
            at(2)
        )));
        assert!(served(&table.admit(
            id(1),
            size,
            peer(1),
            3..4,
            &needs(&first),
            at(2)
        )));
        table.record(id(1), 3..4);
        // Every group left once: all it lacks is on offer again.
        let offer = table.offer(id(1), size, peer(1), &needs(&set(size, &[0, 3])), at(2));
        assert_eq!(offer.as_ref().map(groups), Some(vec![1, 2]));
        assert!(served(&table.admit(
            id(1),
            size,
            peer(1),
            1..3,
            &needs(&first),
            at(2)
        )));
    }

    #[test]
    fn taking_counts_at_once_so_two_requests_cannot_share_a_free_copy() {
        let size = 3 * MIB;
        let mut table = SeedRation::new(RationConfig::default());
        let all = GroupSet::full(size);
        table.admit(id(1), size, peer(1), 1..2, &all, at(0));
        table.record(id(1), 1..2);
        // Groups 0 and 2 have never left: the first takes 0, and the
        // second, at the same moment, is refused 0 (2 is still free).
        assert!(served(&table.take(id(1), size, peer(2), 0..1, &all, at(1))));
        assert!(!served(&table.take(
            id(1),
            size,
            peer(3),
            0..1,
            &all,
            at(1)
        )));
        // The first found no slot after all: the copy is free again.
        table.unrecord(id(1), 0..1);
        assert!(served(&table.take(id(1), size, peer(3), 0..1, &all, at(1))));
    }

    #[test]
    fn a_downloader_lacking_only_often_sent_groups_is_served_them() {
        // Group 0 went twice to a downloader that died; 1-3 went once each
        // and the survivors have them. Over the whole file, 1-3 would be
        // sent first, which nobody needs: judged per downloader, the
        // survivor lacking only 0 gets it.
        let size = 4 * MIB;
        let mut table = SeedRation::new(RationConfig::default());
        let none = GroupSet::empty(size);
        table.admit(id(1), size, peer(9), 0..1, &needs(&none), at(0));
        table.record(id(1), 0..1);
        table.record(id(1), 0..1);
        table.record(id(1), 1..4);
        let survivor = set(size, &[1, 2, 3]);
        table.admit(id(1), size, peer(2), 0..0, &needs(&survivor), at(1));
        let ration = table.admit(id(1), size, peer(1), 0..1, &needs(&survivor), at(1));
        assert!(served(&ration), "{ration:?}");
        let offer = table.offer(id(1), size, peer(1), &needs(&survivor), at(1));
        assert_eq!(offer.as_ref().map(groups), Some(vec![0]));
    }

    #[test]
    fn the_crowd_ends_when_its_members_go_quiet() {
        let config = RationConfig::default();
        let window = config.window.as_secs();
        let mut table = SeedRation::new(config);
        let size = 2 * MIB;
        let none = GroupSet::empty(size);
        table.admit(id(1), size, peer(1), 0..1, &needs(&none), at(0));
        table.record(id(1), 0..1);
        assert!(!served(&table.admit(
            id(1),
            size,
            peer(2),
            0..1,
            &needs(&none),
            at(1)
        )));
        // Long after the first was last seen, the second is alone.
        let later = at(window + 1);
        assert!(served(&table.admit(
            id(1),
            size,
            peer(2),
            0..1,
            &needs(&none),
            later
        )));
    }

    #[test]
    fn a_refusal_always_offers_something_the_downloader_needs() {
        let size = 6 * MIB;
        let mut table = SeedRation::new(RationConfig::default());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..2000 {
            let requester = peer(1 + u16::try_from(next(5)).unwrap_or(0));
            let has: Vec<u64> = (0..6).filter(|_| next(2) == 0).collect();
            let has = set(size, &has);
            let start = next(6);
            let asked = start..(start + 1 + next(2)).min(6);
            match table.admit(id(1), size, requester, asked.clone(), &needs(&has), at(1)) {
                Ration::Serve => table.record(id(1), asked),
                Ration::Refuse { offer } => {
                    assert!(!offer.is_empty());
                    let lacking = offer.iter().all(|g| !has.contains(g) || asked.contains(&g));
                    assert!(lacking, "offered a group it has");
                }
            }
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
        let none = GroupSet::empty(MIB);
        for n in 0..10u8 {
            for port in 0..10u16 {
                table.admit(
                    id(n),
                    MIB,
                    peer(port + 1),
                    0..1,
                    &needs(&none),
                    at(u64::from(port)),
                );
            }
        }
        assert_eq!(table.len(), 4);
        let crowd = table.crowds.get(&id(9)).map(|c| c.seen.len());
        assert_eq!(crowd, Some(3));
        // A file too big to ration is served and not tracked.
        let huge = (config.max_groups + 1) * MIB;
        let mut table = SeedRation::new(config);
        let none = GroupSet::empty(huge);
        for port in 1..4 {
            let ration = table.admit(id(1), huge, peer(port), 0..1, &needs(&none), at(0));
            assert_eq!(ration, Ration::Serve);
        }
        assert!(table.is_empty());
    }

    #[test]
    fn hostile_ranges_and_sets_are_harmless() {
        let size = 2 * MIB;
        let mut table = SeedRation::new(RationConfig::default());
        let none = GroupSet::empty(size);
        table.admit(id(1), size, peer(1), 0..1, &needs(&none), at(0));
        let far = u64::MAX - 1..u64::MAX;
        let ration = table.admit(id(1), size, peer(2), far.clone(), &needs(&none), at(0));
        assert!(served(&ration));
        table.record(id(1), far);
        #[allow(clippy::reversed_empty_ranges)]
        table.record(id(1), 5..1);
        // A set of another file's size says nothing.
        let other = GroupSet::full(64 * MIB);
        let offer = table.offer(id(1), size, peer(2), &other, at(0));
        assert_eq!(offer.map(|o| o.count()), Some(0));
    }
}
