//! Per-address limits: how many of one kind of thing (leaf slots, peer
//! slots, handshakes in progress, HTTP connections, upload slots) a single
//! IP address, and a single network prefix, may hold at once.
//!
//! A stranger on the open internet can open as many connections as it
//! likes; without these limits one host fills every slot a node has. The
//! prefix is the unit one party usually controls: an IPv4 /24, an IPv6 /48
//! (an IPv4-mapped IPv6 address counts as the IPv4 address it carries).
//! Some addresses are exempt, loopback by default, so tests and benchmarks
//! that run a whole network on one machine are not limited; operators can
//! change the list.
//!
//! A table entry exists only while something is held, so the tables are
//! bounded by the slots themselves.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

/// Bits of an IPv4 address that name its prefix.
pub const IPV4_PREFIX_BITS: u8 = 24;
/// Bits of an IPv6 address that name its prefix.
pub const IPV6_PREFIX_BITS: u8 = 48;

/// How many one IP and one prefix may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimit {
    /// Most held by one IP address.
    pub per_ip: usize,
    /// Most held by one prefix (/24 or /48), all its addresses together.
    pub per_prefix: usize,
}

impl AddressLimit {
    /// A limit of `per_ip` per address and `per_prefix` per prefix.
    pub const fn new(per_ip: usize, per_prefix: usize) -> Self {
        Self { per_ip, per_prefix }
    }
}

/// The addresses exempt by default: loopback, IPv4 and IPv6.
pub fn default_exempt() -> Vec<IpNet> {
    vec![
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

/// The address with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) taken as
/// the IPv4 address it is, so one host cannot count twice.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    crate::family::canonical_ip(ip)
}

/// The prefix `ip` belongs to: its /24 (IPv4) or /48 (IPv6).
pub fn prefix_of(ip: IpAddr) -> IpNet {
    let ip = canonical_ip(ip);
    let bits = match ip {
        IpAddr::V4(_) => IPV4_PREFIX_BITS,
        IpAddr::V6(_) => IPV6_PREFIX_BITS,
    };
    IpNet::new_assert(ip, bits).trunc()
}

/// Which limit a new holder would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The address already holds its share.
    #[error("{ip} already holds {limit}, the most one address may")]
    Address {
        /// The address.
        ip: IpAddr,
        /// Its limit.
        limit: usize,
    },
    /// The address's prefix already holds its share.
    #[error("{prefix} already holds {limit}, the most one network may")]
    Prefix {
        /// The prefix.
        prefix: IpNet,
        /// Its limit.
        limit: usize,
    },
}

/// Counts what each address and prefix holds of one kind of thing.
#[derive(Debug, Clone)]
pub struct AddressCounter {
    limit: AddressLimit,
    exempt: Vec<IpNet>,
    by_ip: HashMap<IpAddr, usize>,
    by_prefix: HashMap<IpNet, usize>,
}

impl AddressCounter {
    /// A counter enforcing `limit` on every address outside `exempt`.
    pub fn new(limit: AddressLimit, exempt: Vec<IpNet>) -> Self {
        Self {
            limit,
            exempt,
            by_ip: HashMap::new(),
            by_prefix: HashMap::new(),
        }
    }

    /// The limit enforced.
    pub fn limit(&self) -> AddressLimit {
        self.limit
    }

    /// True if `ip` is not limited at all.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.exempt.iter().any(|net| net.contains(&ip))
    }

    /// Whether `ip` may take one more, without taking it.
    pub fn check(&self, ip: IpAddr) -> Result<(), LimitExceeded> {
        if self.is_exempt(ip) {
            return Ok(());
        }
        let ip = canonical_ip(ip);
        if self.by_ip.get(&ip).copied().unwrap_or(0) >= self.limit.per_ip {
            return Err(LimitExceeded::Address {
                ip,
                limit: self.limit.per_ip,
            });
        }
        let prefix = prefix_of(ip);
        if self.by_prefix.get(&prefix).copied().unwrap_or(0) >= self.limit.per_prefix {
            return Err(LimitExceeded::Prefix {
                prefix,
                limit: self.limit.per_prefix,
            });
        }
        Ok(())
    }

    /// Takes one for `ip`, or says which limit forbids it. Every `Ok` must be
    /// matched by one [`AddressCounter::release`] of the same address.
    pub fn acquire(&mut self, ip: IpAddr) -> Result<(), LimitExceeded> {
        self.check(ip)?;
        if !self.is_exempt(ip) {
            let ip = canonical_ip(ip);
            *self.by_ip.entry(ip).or_default() += 1;
            *self.by_prefix.entry(prefix_of(ip)).or_default() += 1;
        }
        Ok(())
    }

    /// Gives back one that `ip` took. Entries that reach zero are removed.
    pub fn release(&mut self, ip: IpAddr) {
        if self.is_exempt(ip) {
            return;
        }
        let ip = canonical_ip(ip);
        decrement(&mut self.by_ip, ip);
        decrement(&mut self.by_prefix, prefix_of(ip));
    }

    /// How many `ip` holds (0 for an exempt address).
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.by_ip.get(&canonical_ip(ip)).copied().unwrap_or(0)
    }

    /// Addresses holding anything: the size of the tables.
    pub fn addresses(&self) -> usize {
        self.by_ip.len()
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = map.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn counter(per_ip: usize, per_prefix: usize) -> AddressCounter {
        AddressCounter::new(AddressLimit::new(per_ip, per_prefix), default_exempt())
    }

    #[test]
    fn one_address_takes_its_share_and_no_more() {
        let mut limits = counter(2, 10);
        assert_eq!(limits.acquire(ip("192.0.2.1")), Ok(()));
        assert_eq!(limits.acquire(ip("192.0.2.1")), Ok(()));
        assert!(matches!(
            limits.acquire(ip("192.0.2.1")),
            Err(LimitExceeded::Address { limit: 2, .. })
        ));
        // Another address of the same /24 still may.
        assert_eq!(limits.acquire(ip("192.0.2.2")), Ok(()));
        limits.release(ip("192.0.2.1"));
        assert_eq!(limits.acquire(ip("192.0.2.1")), Ok(()));
    }

    #[test]
    fn a_prefix_is_limited_as_a_whole() {
        let mut limits = counter(4, 5);
        for host in 1..=5 {
            assert_eq!(limits.acquire(ip(&format!("198.51.100.{host}"))), Ok(()));
        }
        let refused = limits.acquire(ip("198.51.100.99"));
        assert_eq!(
            refused,
            Err(LimitExceeded::Prefix {
                prefix: "198.51.100.0/24".parse().unwrap(),
                limit: 5
            })
        );
        // A neighbouring /24 is another party.
        assert_eq!(limits.acquire(ip("198.51.101.1")), Ok(()));
    }

    #[test]
    fn ipv6_counts_by_48_and_mapped_ipv4_counts_as_ipv4() {
        let mut limits = counter(1, 2);
        assert_eq!(limits.acquire(ip("2001:db8:1:1::1")), Ok(()));
        assert_eq!(limits.acquire(ip("2001:db8:1:2::1")), Ok(()));
        assert!(limits.acquire(ip("2001:db8:1:ffff::9")).is_err());
        assert_eq!(limits.acquire(ip("2001:db8:2::1")), Ok(()));

        assert_eq!(limits.acquire(ip("203.0.113.5")), Ok(()));
        assert!(matches!(
            limits.acquire(ip("::ffff:203.0.113.5")),
            Err(LimitExceeded::Address { .. })
        ));
    }

    #[test]
    fn exempt_addresses_are_never_limited_or_counted() {
        let mut limits = counter(1, 1);
        for _ in 0..100 {
            assert_eq!(limits.acquire(ip("127.0.0.1")), Ok(()));
            assert_eq!(limits.acquire(ip("::1")), Ok(()));
        }
        assert_eq!(limits.addresses(), 0);
        let mut strict = AddressCounter::new(AddressLimit::new(1, 1), Vec::new());
        assert_eq!(strict.acquire(ip("127.0.0.1")), Ok(()));
        assert!(strict.acquire(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn released_entries_leave_the_tables() {
        let mut limits = counter(3, 3);
        limits.acquire(ip("192.0.2.1")).unwrap();
        limits.acquire(ip("192.0.2.1")).unwrap();
        limits.release(ip("192.0.2.1"));
        limits.release(ip("192.0.2.1"));
        // A release too many is harmless.
        limits.release(ip("192.0.2.1"));
        assert_eq!(limits.addresses(), 0);
        assert_eq!(limits.held_by(ip("192.0.2.1")), 0);
    }
}
