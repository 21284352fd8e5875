//! Address groups and scopes: what the address manager buckets by, and
//! which addresses a source may name at all.
//!
//! A group is the network an address belongs to as an attacker would have
//! to acquire it: the /16 for IPv4 (as Bitcoin Core's addrman; a /24 is
//! cheap to get many of from one hosting provider, 256 of them share a
//! /16), the /32 for IPv6 (a provider's allocation; a /48 is one site and
//! every customer gets many). IPv4-mapped IPv6 addresses count as IPv4.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The network prefix an address is grouped under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// An IPv4 /16.
    V4([u8; 2]),
    /// An IPv6 /32.
    V6([u8; 4]),
}

impl Group {
    /// The group of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Group::V4([o[0], o[1]])
            }
            IpAddr::V6(v6) => {
                let s = v6.octets();
                Group::V6([s[0], s[1], s[2], s[3]])
            }
        }
    }

    /// Bytes to hash: a family tag, then the prefix.
    pub(crate) fn feed(self, hasher: &mut blake3::Hasher) {
        match self {
            Group::V4(prefix) => hasher.update(&[4]).update(&prefix),
            Group::V6(prefix) => hasher.update(&[6]).update(&prefix),
        };
    }
}

/// How far an address reaches. Ordered: a source may name only addresses
/// of its own scope or wider, so a stranger on the internet can't steer us
/// to dial into our own machine or LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This machine.
    Loopback,
    /// A private or link-local network.
    Local,
    /// The internet.
    Global,
}

impl Scope {
    /// The scope of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) if v4.is_loopback() => Scope::Loopback,
            IpAddr::V4(v4) if v4.is_private() || v4.is_link_local() || is_shared(v4) => {
                Scope::Local
            }
            IpAddr::V6(v6) if v6.is_loopback() => Scope::Loopback,
            IpAddr::V6(v6) if v6.is_unique_local() || v6.is_unicast_link_local() => Scope::Local,
            _ => Scope::Global,
        }
    }
}

/// True if `addr` can be dialed at all and `source` may tell us of it.
pub fn learnable(addr: SocketAddr, source: IpAddr) -> bool {
    let ip = canonical(addr.ip());
    let dialable = addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    dialable && Scope::of(ip) >= Scope::of(source)
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    crate::family::canonical_ip(ip)
}

/// 100.64.0.0/10, carrier-grade NAT: not reachable from the internet.
fn is_shared(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    o[0] == 100 && (o[1] & 0xc0) == 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn groups_are_prefixes() {
        assert_eq!(Group::of(ip("203.0.113.9")), Group::of(ip("203.0.7.1")));
        assert_ne!(Group::of(ip("203.0.113.9")), Group::of(ip("203.1.113.9")));
        assert_eq!(
            Group::of(ip("::ffff:203.0.1.1")),
            Group::of(ip("203.0.2.2"))
        );
        assert_eq!(
            Group::of(ip("2001:db8:1::1")),
            Group::of(ip("2001:db8:ffff::1"))
        );
        assert_ne!(Group::of(ip("2001:db8::1")), Group::of(ip("2001:db9::1")));
    }

    #[test]
    fn strangers_cannot_name_local_addresses() {
        let stranger = ip("198.51.100.7");
        let local: SocketAddr = "192.168.1.1:80".parse().unwrap();
        let here: SocketAddr = "127.0.0.1:22".parse().unwrap();
        let far: SocketAddr = "203.0.113.5:6346".parse().unwrap();
        assert!(!learnable(local, stranger));
        assert!(!learnable(here, stranger));
        assert!(learnable(far, stranger));
        assert!(learnable(local, ip("10.0.0.2")));
        assert!(learnable(here, ip("127.0.0.1")));
        assert!(!learnable("0.0.0.0:1".parse().unwrap(), ip("127.0.0.1")));
        assert!(!learnable("203.0.113.5:0".parse().unwrap(), stranger));
        assert!(!learnable("224.0.0.1:9".parse().unwrap(), ip("127.0.0.1")));
    }
}
