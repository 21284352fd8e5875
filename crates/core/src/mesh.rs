//! The download mesh's table: for each content id, the other sources of it
//! a node has seen working lately (complete or partial), so it can tell a
//! downloader of them in an `X-Alt` header and downloaders learn of each
//! other without asking the overlay again.
//!
//! I/O-free and deterministic: time comes in as `now`, tables are ordered
//! maps, ties break by address. Bounded whatever peers announce: at most
//! [`MeshConfig::contents`] content ids (the one touched longest ago gives
//! way), each with at most [`MeshConfig::per_content`] addresses (the one
//! seen longest ago gives way), of which at most [`MeshConfig::per_ip`]
//! share an IP and at most [`MeshConfig::per_prefix`] a network (/24 or
//! /48), so one requester announcing many ports or addresses can't push
//! the others out (loopback and other exempt networks are not capped, as
//! in [`crate::addr_limits`]); entries older than [`MeshConfig::max_age`]
//! are never handed out and are pruned as the content is touched.
//!
//! [`format_alternates`] and [`parse_alternates`] are the header's form:
//! `10.1.2.3:6346, [2001:db8::1]:6346`, read leniently and boundedly;
//! [`alternate_allowed`] says which of the alternates read a downloader
//! should dial, given who told of them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use canopy_proto::ContentId;

use crate::Time;
use crate::addr_limits::{IpNet, canonical_ip, default_exempt, prefix_of};
use crate::addrman::group::learnable;

/// Entries read from one `X-Alt` value at most.
pub const MAX_ALTERNATES_READ: usize = 16;
/// Bytes of one `X-Alt` value read at most.
pub const MAX_ALTERNATES_LEN: usize = 1024;

/// The mesh's bounds.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses kept per content id (the newest).
    pub per_content: usize,
    /// Addresses of one IP kept per content id (the newest), outside
    /// `exempt`.
    pub per_ip: usize,
    /// Addresses of one network (a /24 for IPv4, a /48 for IPv6: see
    /// [`crate::addr_limits::prefix_of`]) kept per content id (the newest),
    /// outside `exempt`.
    pub per_prefix: usize,
    /// Networks not capped per IP or per network (loopback by default).
    pub exempt: Vec<IpNet>,
    /// Content ids kept (the most recently touched).
    pub contents: usize,
    /// An address not seen working for this long is not handed out.
    pub max_age: Duration,
}

impl Default for MeshConfig {
    /// 16 addresses for each of 1,024 contents, seen in the last 10 minutes:
    /// at most 16k entries of about 50 bytes; 2 per IP, 4 per network.
    fn default() -> Self {
        Self {
            per_content: 16,
            per_ip: 2,
            per_prefix: 4,
            exempt: default_exempt(),
            contents: 1024,
            max_age: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
struct Sources {
    /// When the content was last touched, as its key in `by_touch`.
    touched: (Time, u64),
    /// Address → when it was last seen working.
    seen: BTreeMap<SocketAddr, Time>,
}

/// Known sources per content id. See the module documentation.
#[derive(Debug, Clone)]
pub struct Mesh {
    config: MeshConfig,
    contents: BTreeMap<ContentId, Sources>,
    /// (last touch, tie-breaking sequence number) → content: the least
    /// recently touched first.
    by_touch: BTreeMap<(Time, u64), ContentId>,
    next_touch: u64,
    entries: usize,
}

impl Default for Mesh {
    /// An empty mesh with the default bounds.
    fn default() -> Self {
        Self::new(MeshConfig::default())
    }
}

impl Mesh {
    /// An empty mesh.
    pub fn new(config: MeshConfig) -> Self {
        Self {
            config,
            contents: BTreeMap::new(),
            by_touch: BTreeMap::new(),
            next_touch: 0,
            entries: 0,
        }
    }

    /// `addr` served or announced it serves `id` at `now` (refreshes).
    pub fn add(&mut self, id: ContentId, addr: SocketAddr, now: Time) {
        if self.config.per_content == 0 || self.config.contents == 0 {
            return;
        }
        let touch = (now, self.next_touch);
        self.next_touch += 1;
        let max_age = self.config.max_age;
        let per_content = self.config.per_content;
        if let Some(sources) = self.contents.get(&id) {
            self.by_touch.remove(&sources.touched);
        } else {
            while self.contents.len() >= self.config.contents && self.drop_least_recent() {}
        }
        let sources = self.contents.entry(id).or_insert(Sources {
            touched: touch,
            seen: BTreeMap::new(),
        });
        sources.touched = touch;
        self.by_touch.insert(touch, id);
        let before = sources.seen.len();
        // Out with what expired, then the new entry (a clock that went
        // back keeps the later time), then the oldest beyond the bound.
        sources.seen.retain(|_, seen| now.since(*seen) < max_age);
        let seen = sources.seen.entry(addr).or_insert(now);
        *seen = (*seen).max(now);
        let ip = canonical_ip(addr.ip());
        if !self.config.exempt.iter().any(|net| net.contains(&ip)) {
            let prefix = prefix_of(ip);
            keep_newest(&mut sources.seen, self.config.per_ip, |a| {
                canonical_ip(a.ip()) == ip
            });
            keep_newest(&mut sources.seen, self.config.per_prefix, |a| {
                prefix.contains(&canonical_ip(a.ip()))
            });
        }
        while sources.seen.len() > per_content {
            let oldest = sources
                .seen
                .iter()
                .min_by_key(|(addr, seen)| (**seen, **addr))
                .map(|(addr, _)| *addr);
            match oldest {
                Some(oldest) => sources.seen.remove(&oldest),
                None => break,
            };
        }
        self.entries = self.entries - before + sources.seen.len();
    }

    /// `addr` is dead or lied: forget it for `id`.
    pub fn remove(&mut self, id: &ContentId, addr: SocketAddr) {
        let Some(sources) = self.contents.get_mut(id) else {
            return;
        };
        if sources.seen.remove(&addr).is_some() {
            self.entries -= 1;
        }
        if sources.seen.is_empty() {
            let touched = sources.touched;
            self.contents.remove(id);
            self.by_touch.remove(&touched);
        }
    }

    /// Up to `count` alternates for `id`, newest first, none older than
    /// max_age, none with `except`'s IP.
    pub fn pick(
        &self,
        id: &ContentId,
        except: Option<IpAddr>,
        count: usize,
        now: Time,
    ) -> Vec<SocketAddr> {
        let Some(sources) = self.contents.get(id) else {
            return Vec::new();
        };
        let except = except.map(|ip| ip.to_canonical());
        let mut fresh: Vec<(Time, SocketAddr)> = sources
            .seen
            .iter()
            .filter(|(_, seen)| now.since(**seen) < self.config.max_age)
            .filter(|(addr, _)| Some(addr.ip().to_canonical()) != except)
            .map(|(addr, seen)| (*seen, *addr))
            .collect();
        fresh.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        fresh
            .into_iter()
            .take(count)
            .map(|(_, addr)| addr)
            .collect()
    }

    /// Entries in all (expired ones not yet pruned included).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True if no content has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Drops the content touched longest ago; false if there is none.
    fn drop_least_recent(&mut self) -> bool {
        let Some((_, id)) = self.by_touch.pop_first() else {
            return false;
        };
        if let Some(sources) = self.contents.remove(&id) {
            self.entries -= sources.seen.len();
        }
        true
    }
}

/// Whether a downloader should dial `alt`, an alternate that a source at
/// `told_by` named in `X-Alt`. Never an address that can't be a peer
/// (unspecified, port 0, multicast, broadcast, link-local); otherwise as
/// [`crate::addrman::group::learnable`]: only an address of the teller's
/// scope or wider, so a loopback address only from a teller on loopback
/// and a private one (RFC 1918, shared, IPv6 unique local) only from a
/// private or loopback teller. Tests on 127.0.0.x and a LAN keep working,
/// but a source on the internet can't aim its downloaders at their own
/// machine or LAN.
pub fn alternate_allowed(alt: SocketAddr, told_by: IpAddr) -> bool {
    let link_local = match canonical_ip(alt.ip()) {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !link_local && learnable(alt, told_by)
}

/// Drops the oldest of the addresses `matches` picks out of `seen` until
/// at most `limit` are left.
fn keep_newest(
    seen: &mut BTreeMap<SocketAddr, Time>,
    limit: usize,
    matches: impl Fn(&SocketAddr) -> bool,
) {
    while seen.keys().filter(|a| matches(a)).count() > limit {
        let oldest = seen
            .iter()
            .filter(|(a, _)| matches(a))
            .min_by_key(|(a, when)| (**when, **a))
            .map(|(a, _)| *a);
        match oldest {
            Some(oldest) => seen.remove(&oldest),
            None => break,
        };
    }
}

/// The `X-Alt` value for `addrs`: `a:p, [v6]:p`.
pub fn format_alternates(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|addr| match addr {
            // No scope id on the wire: it means nothing to another host.
            SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
            SocketAddr::V4(v4) => v4.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads an `X-Alt` value leniently: at most [`MAX_ALTERNATES_READ`]
/// entries from the first [`MAX_ALTERNATES_LEN`] bytes (an entry cut by
/// that limit is not read), bad entries, unspecified addresses, port 0 and
/// repeats skipped.
pub fn parse_alternates(value: &str) -> Vec<SocketAddr> {
    let read = if value.len() > MAX_ALTERNATES_LEN {
        let mut cut = MAX_ALTERNATES_LEN;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        // Only entries ended by a comma inside the limit.
        let head = &value[..cut];
        head.rfind(',').map_or("", |comma| &head[..comma])
    } else {
        value
    };
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for entry in read.split(',').take(MAX_ALTERNATES_READ) {
        let Ok(addr) = entry.trim().parse::<SocketAddr>() else {
            continue;
        };
        if addr.port() == 0 || addr.ip().is_unspecified() || addrs.contains(&addr) {
            continue;
        }
        addrs.push(addr);
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 6346))
    }

    fn small() -> MeshConfig {
        MeshConfig {
            per_content: 3,
            contents: 2,
            max_age: Duration::from_secs(10),
            ..MeshConfig::default()
        }
    }

    #[test]
    fn one_ip_holds_at_most_its_share_outside_loopback() {
        let mut mesh = Mesh::new(MeshConfig::default());
        for port in 1..=10u16 {
            mesh.add(
                id(1),
                SocketAddr::from(([10, 0, 0, 1], port)),
                Time(u64::from(port)),
            );
        }
        mesh.add(id(1), addr(2), Time(20));
        let picked = mesh.pick(&id(1), None, 16, Time(30));
        assert_eq!(
            picked.len(),
            3,
            "two of 10.0.0.1's newest and 10.0.0.2: {picked:?}"
        );
        assert!(picked.contains(&SocketAddr::from(([10, 0, 0, 1], 10))));
        assert!(picked.contains(&SocketAddr::from(([10, 0, 0, 1], 9))));
        assert_eq!(mesh.len(), 3);
        // Loopback is exempt: several leaves on one test machine.
        for port in 1..=5u16 {
            mesh.add(id(2), SocketAddr::from(([127, 0, 0, 1], port)), Time(40));
        }
        assert_eq!(mesh.pick(&id(2), None, 16, Time(41)).len(), 5);
    }

    #[test]
    fn one_network_holds_at_most_its_share_outside_loopback() {
        let mut mesh = Mesh::new(MeshConfig::default());
        for n in 1..=10u8 {
            mesh.add(id(1), addr(n), Time(u64::from(n)));
        }
        let elsewhere = SocketAddr::from(([10, 0, 1, 1], 6346));
        mesh.add(id(1), elsewhere, Time(20));
        let picked = mesh.pick(&id(1), None, 16, Time(30));
        let mut expected: Vec<SocketAddr> = (7..=10u8).rev().map(addr).collect();
        expected.insert(0, elsewhere);
        assert_eq!(
            picked, expected,
            "the newest 4 of 10.0.0.0/24, and 10.0.1.1"
        );
        // IPv6: per /48.
        for n in 1..=6u16 {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, n, 0, 0, 0, 1);
            mesh.add(id(2), SocketAddr::new(ip.into(), 6346), Time(40));
        }
        assert_eq!(mesh.pick(&id(2), None, 16, Time(41)).len(), 4);
        // Loopback is exempt: several leaves on one test machine.
        for n in 1..=8u8 {
            mesh.add(id(3), SocketAddr::from(([127, 0, 0, n], 6346)), Time(50));
        }
        assert_eq!(mesh.pick(&id(3), None, 16, Time(51)).len(), 8);
    }

    #[test]
    fn picks_newest_first_without_the_requester_or_the_expired() {
        let mut mesh = Mesh::new(MeshConfig::default());
        mesh.add(id(1), addr(1), Time(0));
        mesh.add(id(1), addr(2), Time(1_000));
        mesh.add(id(1), addr(3), Time(2_000));
        mesh.add(id(2), addr(9), Time(2_000));
        assert_eq!(mesh.len(), 4);
        let now = Time(3_000);
        assert_eq!(
            mesh.pick(&id(1), None, 8, now),
            vec![addr(3), addr(2), addr(1)]
        );
        assert_eq!(mesh.pick(&id(1), None, 2, now), vec![addr(3), addr(2)]);
        assert_eq!(
            mesh.pick(&id(1), Some(addr(3).ip()), 8, now),
            vec![addr(2), addr(1)]
        );
        assert!(mesh.pick(&id(7), None, 8, now).is_empty());
        // Ten minutes after the first was seen, it is not handed out.
        let later = Time(600_000);
        assert_eq!(mesh.pick(&id(1), None, 8, later), vec![addr(3), addr(2)]);
        // Refreshing brings it back, newest.
        mesh.add(id(1), addr(1), later);
        assert_eq!(
            mesh.pick(&id(1), None, 8, later),
            vec![addr(1), addr(3), addr(2)]
        );
        assert_eq!(mesh.len(), 4, "a refresh adds no entry");
    }

    #[test]
    fn an_ipv4_mapped_requester_is_excluded_too() {
        let mut mesh = Mesh::new(MeshConfig::default());
        mesh.add(id(1), addr(1), Time(0));
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(mesh.pick(&id(1), Some(mapped), 8, Time(0)).is_empty());
    }

    #[test]
    fn per_content_keeps_the_newest_and_prunes_the_expired() {
        let mut mesh = Mesh::new(small());
        for n in 1..=5 {
            mesh.add(id(1), addr(n), Time(u64::from(n)));
        }
        assert_eq!(mesh.len(), 3);
        assert_eq!(
            mesh.pick(&id(1), None, 8, Time(5)),
            vec![addr(5), addr(4), addr(3)]
        );
        // All three expire; the next add prunes them.
        mesh.add(id(1), addr(6), Time(20_000));
        assert_eq!(mesh.len(), 1);
        assert_eq!(mesh.pick(&id(1), None, 8, Time(20_000)), vec![addr(6)]);
    }

    #[test]
    fn contents_give_way_least_recently_touched_first() {
        let mut mesh = Mesh::new(small());
        mesh.add(id(1), addr(1), Time(0));
        mesh.add(id(2), addr(2), Time(0));
        mesh.add(id(1), addr(3), Time(1)); // touches id 1
        mesh.add(id(3), addr(4), Time(1)); // id 2 gives way
        assert!(mesh.pick(&id(2), None, 8, Time(1)).is_empty());
        assert_eq!(mesh.pick(&id(1), None, 8, Time(1)).len(), 2);
        assert_eq!(mesh.pick(&id(3), None, 8, Time(1)), vec![addr(4)]);
        assert_eq!(mesh.len(), 3);
        // Thousands of contents: still two.
        for n in 0..5_000u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            mesh.add(ContentId(bytes), addr(1), Time(2));
        }
        assert_eq!(mesh.len(), 2);
    }

    #[test]
    fn remove_forgets_and_empties() {
        let mut mesh = Mesh::new(small());
        mesh.add(id(1), addr(1), Time(0));
        mesh.add(id(1), addr(2), Time(0));
        mesh.remove(&id(1), addr(1));
        mesh.remove(&id(1), addr(7));
        mesh.remove(&id(9), addr(1));
        assert_eq!(mesh.pick(&id(1), None, 8, Time(0)), vec![addr(2)]);
        mesh.remove(&id(1), addr(2));
        assert!(mesh.is_empty());
        // The emptied content holds no LRU slot: two others fit.
        mesh.add(id(2), addr(1), Time(1));
        mesh.add(id(3), addr(1), Time(1));
        assert_eq!(mesh.len(), 2);
    }

    #[test]
    fn equal_times_order_by_address() {
        let mut mesh = Mesh::new(MeshConfig::default());
        mesh.add(id(1), addr(3), Time(5));
        mesh.add(id(1), addr(1), Time(5));
        mesh.add(id(1), addr(2), Time(5));
        assert_eq!(
            mesh.pick(&id(1), None, 8, Time(5)),
            vec![addr(1), addr(2), addr(3)]
        );
    }

    #[test]
    fn alternates_that_cannot_be_peers_are_never_allowed() {
        let public: IpAddr = [203, 0, 113, 5].into();
        let lan: IpAddr = [192, 168, 1, 2].into();
        let local: IpAddr = [127, 0, 0, 1].into();
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        for bad in [
            "0.0.0.0:6346",
            "[::]:6346",
            "198.51.100.7:0",
            "224.0.0.1:6346",
            "[ff02::1]:6346",
            "255.255.255.255:6346",
            "169.254.1.1:6346",
            "[fe80::1]:6346",
            "[::ffff:169.254.1.1]:6346",
        ] {
            for told_by in [public, lan, local] {
                assert!(!alternate_allowed(at(bad), told_by), "{bad} from {told_by}");
            }
        }
        for good in ["198.51.100.7:6346", "[2001:db8::1]:6346"] {
            for told_by in [public, lan, local] {
                assert!(
                    alternate_allowed(at(good), told_by),
                    "{good} from {told_by}"
                );
            }
        }
    }

    #[test]
    fn only_a_local_source_may_point_at_local_or_lan_addresses() {
        let public: IpAddr = [203, 0, 113, 5].into();
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        let loopback = ["127.0.0.2:6346", "[::1]:6346", "[::ffff:127.0.0.3]:6346"];
        let private = [
            "10.1.2.3:6346",
            "172.16.0.9:6346",
            "192.168.1.20:6346",
            "[fd12:3456::1]:6346",
        ];
        for alt in loopback.iter().chain(&private) {
            assert!(!alternate_allowed(at(alt), public), "{alt} from public");
            assert!(
                !alternate_allowed(at(alt), "2001:db8::9".parse().unwrap()),
                "{alt} from public v6"
            );
        }
        // Tests on 127.0.0.x keep working, and a LAN.
        for alt in loopback.iter().chain(&private) {
            assert!(alternate_allowed(at(alt), [127, 0, 0, 1].into()), "{alt}");
        }
        for told_by in ["10.0.0.1", "192.168.5.5", "fd00::7"] {
            let told_by: IpAddr = told_by.parse().unwrap();
            for alt in &private {
                assert!(alternate_allowed(at(alt), told_by), "{alt} from {told_by}");
            }
            for alt in &loopback {
                assert!(!alternate_allowed(at(alt), told_by), "{alt} from {told_by}");
            }
        }
    }

    #[test]
    fn alternates_round_trip() {
        let v6: SocketAddr = "[2001:db8::1]:6346".parse().unwrap();
        let scoped: SocketAddr = "[fe80::1%3]:7000".parse().unwrap();
        let text = format_alternates(&[addr(1), v6, scoped]);
        assert_eq!(text, "10.0.0.1:6346, [2001:db8::1]:6346, [fe80::1]:7000");
        let read = parse_alternates(&text);
        assert_eq!(read.len(), 3);
        assert_eq!(&read[..2], &[addr(1), v6]);
        assert_eq!(format_alternates(&[]), "");
        assert!(parse_alternates("").is_empty());
    }

    #[test]
    fn alternates_are_read_leniently_and_boundedly() {
        let read = parse_alternates(
            "junk, 10.0.0.1:6346,, 0.0.0.0:1, [::]:5, 10.0.0.2:0, 10.0.0.1:6346, 10.0.0.3:99999, 10.0.0.4 : 1, 10.0.0.5:6346",
        );
        assert_eq!(read, vec![addr(1), addr(5)]);
        // At most 16 entries read.
        let many: Vec<SocketAddr> = (1..=40).map(addr).collect();
        let read = parse_alternates(&format_alternates(&many));
        assert_eq!(read, many[..16].to_vec());
        // Bad entries count toward the 16.
        let text = format!("{}10.0.0.1:6346", "x,".repeat(16));
        assert!(parse_alternates(&text).is_empty());
        // Past 1 KiB nothing is read, and an entry cut there is dropped.
        let text = format!("{}, 10.0.0.1:6346", " ".repeat(2000));
        assert!(parse_alternates(&text).is_empty());
        let pad = " ".repeat(MAX_ALTERNATES_LEN - "10.0.0.9:6346".len() - 1);
        let text = format!("{pad},10.0.0.9:63461");
        assert_eq!(text.len(), MAX_ALTERNATES_LEN + 1);
        assert!(parse_alternates(&text).is_empty(), "cut at 10.0.0.9:6346");
        let text = format!("{}é, 10.0.0.1:6346", "a".repeat(MAX_ALTERNATES_LEN - 1));
        assert!(parse_alternates(&text).is_empty());
        // A megabyte of commas costs 16 pieces.
        assert!(parse_alternates(&",".repeat(1 << 20)).is_empty());
    }
}
