//! Address families: the one canonical form of an address, and the order
//! and pace in which a node dials a peer it knows by several addresses
//! (Happy Eyeballs, RFC 8305), IPv6 first.
//!
//! A dual-stack socket sees an IPv4 peer as `::ffff:a.b.c.d`; that and
//! `a.b.c.d` are one host, so every address is put in [`canonical`] form
//! before it is compared, counted, stored or announced.
//!
//! Between two nodes that both have IPv6 there is usually no NAT, so
//! [`DialRace`] tries IPv6 first, interleaving the families (v6, v4, v6,
//! …), and starts the next attempt when the previous one failed or after
//! [`ATTEMPT_DELAY`] without an answer, whichever comes first; the first
//! connection to succeed wins and the driver drops the others. No I/O and
//! no clock: the driver passes the time in.
//!
//! For a dual-stack leaf to be found in both families at all, its
//! supernodes must see it in both (a hit carries the IP a supernode saw
//! the leaf connect from, never one it claims): [`missing_family`] tells
//! it which family its next supernode session should use.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::time::Time;

/// RFC 8305's recommended "Connection Attempt Delay": how long one attempt
/// runs alone before the next starts.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Most addresses one race tries (a peer's addresses come from the wire).
pub const MAX_ADDRESSES: usize = 8;

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) taken as the
/// IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `addr` with its IP in canonical form (see [`canonical_ip`]).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (and IPv4-mapped IPv6).
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `addr`, canonical.
    pub fn of(addr: SocketAddr) -> Self {
        if canonical(addr).is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }
}

/// The family a dual-stack node's next session should be in, given the
/// addresses of the sessions it has open: the one none of them is in, once
/// at least one is open (the first goes wherever the host cache says).
pub fn missing_family(open: impl IntoIterator<Item = SocketAddr>) -> Option<Family> {
    let (mut v4, mut v6) = (false, false);
    for addr in open {
        match Family::of(addr) {
            Family::V4 => v4 = true,
            Family::V6 => v6 = true,
        }
    }
    match (v4, v6) {
        (true, false) => Some(Family::V6),
        (false, true) => Some(Family::V4),
        _ => None,
    }
}

/// The order to dial `addrs` in: canonical, duplicates dropped, IPv6 first,
/// then the families alternating (RFC 8305 section 4), each family keeping
/// the order it was given in; at most [`MAX_ADDRESSES`].
pub fn dial_order(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut seen = BTreeSet::new();
    let (mut v6, mut v4) = (Vec::new(), Vec::new());
    for addr in addrs.iter().copied().map(canonical) {
        if !seen.insert(addr) {
            continue;
        }
        if addr.is_ipv6() {
            v6.push(addr);
        } else {
            v4.push(addr);
        }
    }
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        let (a, b) = (v6.next(), v4.next());
        if a.is_none() && b.is_none() {
            break;
        }
        out.extend(a);
        out.extend(b);
    }
    out.truncate(MAX_ADDRESSES);
    out
}

/// One connection race over a peer's addresses.
#[derive(Debug, Clone)]
pub struct DialRace {
    order: Vec<SocketAddr>,
    /// How many of `order` were started.
    started: usize,
    /// Attempts started and not yet failed.
    running: usize,
    /// When the latest attempt started.
    last_start: Option<Time>,
    delay: Duration,
}

impl DialRace {
    /// A race over `addrs` (see [`dial_order`]) with [`ATTEMPT_DELAY`].
    pub fn new(addrs: &[SocketAddr]) -> Self {
        Self::with_delay(addrs, ATTEMPT_DELAY)
    }

    /// A race whose attempts start `delay` apart.
    pub fn with_delay(addrs: &[SocketAddr], delay: Duration) -> Self {
        Self {
            order: dial_order(addrs),
            started: 0,
            running: 0,
            last_start: None,
            delay,
        }
    }

    /// The addresses in the order they are tried.
    pub fn order(&self) -> &[SocketAddr] {
        &self.order
    }

    /// The next address to dial now, if its turn has come: the first at
    /// once, each later one when no attempt is running or `delay` after
    /// the previous started.
    pub fn poll_dial(&mut self, now: Time) -> Option<SocketAddr> {
        let next = *self.order.get(self.started)?;
        let due = match self.last_start {
            None => true,
            Some(_) if self.running == 0 => true,
            Some(last) => now >= last + self.delay,
        };
        if !due {
            return None;
        }
        self.started += 1;
        self.running += 1;
        self.last_start = Some(now);
        Some(next)
    }

    /// An attempt failed: the next may start at once.
    pub fn handle_failure(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// When [`poll_dial`](Self::poll_dial) should be called again, if an
    /// address is left and an attempt is running.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.started >= self.order.len() {
            return None;
        }
        match self.last_start {
            Some(last) if self.running > 0 => Some(last + self.delay),
            _ => None,
        }
    }

    /// True once every address was tried and every attempt failed.
    pub fn is_lost(&self) -> bool {
        self.started >= self.order.len() && self.running == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        assert_eq!(canonical(a("[::ffff:10.0.0.1]:5")), a("10.0.0.1:5"));
        assert_eq!(canonical(a("[2001:db8::1]:5")), a("[2001:db8::1]:5"));
        assert_eq!(canonical(a("[::1]:5")), a("[::1]:5"), "loopback stays IPv6");
    }

    #[test]
    fn ipv6_first_then_alternating() {
        let order = dial_order(&[
            a("192.0.2.1:1"),
            a("192.0.2.2:1"),
            a("[::ffff:192.0.2.1]:1"),
            a("[2001:db8::1]:1"),
            a("192.0.2.3:1"),
        ]);
        assert_eq!(
            order,
            vec![
                a("[2001:db8::1]:1"),
                a("192.0.2.1:1"),
                a("192.0.2.2:1"),
                a("192.0.2.3:1"),
            ]
        );
        let many: Vec<SocketAddr> = (1..=20).map(|p| a(&format!("[::1]:{p}"))).collect();
        assert_eq!(dial_order(&many).len(), MAX_ADDRESSES);
    }

    #[test]
    fn the_fallback_starts_after_the_delay_or_a_failure() {
        let mut race = DialRace::new(&[a("192.0.2.1:1"), a("[2001:db8::1]:1"), a("192.0.2.2:1")]);
        let t0 = Time(1_000);
        assert_eq!(race.poll_dial(t0), Some(a("[2001:db8::1]:1")));
        assert_eq!(race.poll_dial(t0), None, "IPv6 runs alone at first");
        assert_eq!(race.poll_timeout(), Some(t0 + ATTEMPT_DELAY));
        assert_eq!(race.poll_dial(t0 + Duration::from_millis(249)), None);
        let t1 = t0 + ATTEMPT_DELAY;
        assert_eq!(
            race.poll_dial(t1),
            Some(a("192.0.2.1:1")),
            "IPv4 after 250 ms"
        );
        // Both fail: the last starts at once, without waiting.
        race.handle_failure();
        race.handle_failure();
        assert_eq!(race.poll_dial(t1), Some(a("192.0.2.2:1")));
        assert_eq!(race.poll_timeout(), None, "nothing left to start");
        assert!(!race.is_lost());
        race.handle_failure();
        assert!(race.is_lost());
    }

    #[test]
    fn the_next_session_goes_to_the_family_missing() {
        assert_eq!(missing_family([]), None, "the first goes anywhere");
        assert_eq!(missing_family([a("192.0.2.1:1")]), Some(Family::V6));
        assert_eq!(
            missing_family([a("[::ffff:192.0.2.1]:1")]),
            Some(Family::V6)
        );
        assert_eq!(missing_family([a("[2001:db8::1]:1")]), Some(Family::V4));
        assert_eq!(
            missing_family([a("[2001:db8::1]:1"), a("192.0.2.1:1")]),
            None,
            "both there"
        );
    }

    #[test]
    fn an_empty_race_is_lost_at_once() {
        let mut race = DialRace::new(&[]);
        assert_eq!(race.poll_dial(Time::ZERO), None);
        assert!(race.is_lost());
    }
}
