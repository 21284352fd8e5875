//! Rate limits against reflection: how often pushes may name one callback
//! address, and how often a leaf may connect back to anyone.
//!
//! A push asks a firewalled leaf to open a connection to the callback
//! address it carries. Without limits a stranger can turn a stream of
//! small pushes into a stream of connections to an address of its
//! choosing. The supernode counts pushes per callback IP (and per source
//! connection, with a plain [`TokenBucket`]); the leaf counts the
//! connections it opens, overall and per callback IP.
//!
//! [`AddressBuckets`] keeps one small token bucket per IP in two hash
//! generations: entries go into the current one, which becomes the previous
//! one when it holds half the capacity; the old previous one is dropped
//! whole. An address that falls out starts again with a full bucket, which
//! is what a fresh address gets anyway, so forgetting costs nothing but
//! the memory it frees.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::Time;
use crate::addr_limits::canonical_ip;
use crate::rate::TokenBucket;

/// A rate: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events a second on average.
    pub per_second: u32,
    /// Events at once.
    pub burst: u32,
}

impl Rate {
    /// `per_second` a second, `burst` at once.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// A full bucket of this rate.
    pub fn bucket(self, now: Time) -> TokenBucket {
        TokenBucket::new(self.per_second, self.burst, now)
    }
}

/// One token bucket per IP address, at most `capacity` addresses remembered.
#[derive(Debug, Clone)]
pub struct AddressBuckets {
    rate: Rate,
    current: HashMap<IpAddr, TokenBucket>,
    previous: HashMap<IpAddr, TokenBucket>,
    /// Addresses per generation: half the capacity.
    generation: usize,
}

impl AddressBuckets {
    /// Buckets of `rate` for at most `capacity` addresses (at least two).
    pub fn new(rate: Rate, capacity: usize) -> Self {
        Self {
            rate,
            current: HashMap::new(),
            previous: HashMap::new(),
            generation: (capacity / 2).max(1),
        }
    }

    /// Takes a token from `ip`'s bucket if there is one.
    pub fn allow(&mut self, ip: IpAddr, now: Time) -> bool {
        let ip = canonical_ip(ip);
        if !self.current.contains_key(&ip) {
            // Bring it forward from the previous generation (or start it
            // full), rotating first so the current one never overflows.
            if self.current.len() >= self.generation {
                self.previous = std::mem::take(&mut self.current);
            }
            let bucket = self
                .previous
                .remove(&ip)
                .unwrap_or_else(|| self.rate.bucket(now));
            self.current.insert(ip, bucket);
        }
        self.current
            .get_mut(&ip)
            .is_some_and(|bucket| bucket.allow(now))
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a connect-back was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectBackRefused {
    /// Too many connect-backs overall.
    #[error("too many connect-backs at once; pushes beyond the rate are ignored")]
    Overall,
    /// Too many to this callback address.
    #[error("too many connect-backs to {0}; pushes naming it are ignored for now")]
    Target(IpAddr),
}

/// Rates of a leaf's connect-backs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectBackConfig {
    /// All connect-backs together.
    pub overall: Rate,
    /// Connect-backs to one callback IP.
    pub per_target: Rate,
    /// Callback IPs remembered.
    pub targets_remembered: usize,
}

impl Default for ConnectBackConfig {
    /// One download pushes each of its sources once per connection it
    /// wants (two per source at most): a burst of 8 to one downloader and
    /// 32 to all covers honest use many times over, while a push flood
    /// gets a leaf to open at most 8 connections a second.
    fn default() -> Self {
        Self {
            overall: Rate::new(8, 32),
            per_target: Rate::new(2, 8),
            targets_remembered: 4096,
        }
    }
}

/// A leaf's limit on the connections pushes make it open.
#[derive(Debug, Clone)]
pub struct ConnectBackLimiter {
    overall: TokenBucket,
    per_target: AddressBuckets,
}

impl ConnectBackLimiter {
    /// A limiter with full buckets.
    pub fn new(config: ConnectBackConfig, now: Time) -> Self {
        Self {
            overall: config.overall.bucket(now),
            per_target: AddressBuckets::new(config.per_target, config.targets_remembered),
        }
    }

    /// Whether a connect-back to `callback` may be made now; takes a token
    /// from both buckets if so. The target is checked first, so one flooded
    /// address does not use up the overall budget of everyone else.
    pub fn allow(&mut self, callback: SocketAddr, now: Time) -> Result<(), ConnectBackRefused> {
        if !self.per_target.allow(callback.ip(), now) {
            return Err(ConnectBackRefused::Target(canonical_ip(callback.ip())));
        }
        if !self.overall.allow(now) {
            return Err(ConnectBackRefused::Overall);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let mut buckets = AddressBuckets::new(Rate::new(1, 2), 100);
        assert!(buckets.allow(ip(1), Time(0)));
        assert!(buckets.allow(ip(1), Time(0)));
        assert!(!buckets.allow(ip(1), Time(0)), "burst of 2 spent");
        assert!(
            buckets.allow(ip(2), Time(0)),
            "another address is not affected"
        );
        assert!(buckets.allow(ip(1), Time(1_000)), "refilled at 1/s");
        // A mapped IPv4 address is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(!buckets.allow(mapped, Time(1_000)));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut buckets = AddressBuckets::new(Rate::new(1, 1), 10);
        for n in 0..10_000 {
            assert!(buckets.allow(ip(n), Time(0)));
            assert!(buckets.len() <= 10);
        }
        // The latest address is still remembered (and spent).
        assert!(!buckets.allow(ip(9_999), Time(0)));
    }

    #[test]
    fn connect_backs_are_limited_per_target_and_overall() {
        let config = ConnectBackConfig {
            overall: Rate::new(1, 5),
            per_target: Rate::new(1, 2),
            targets_remembered: 100,
        };
        let mut limiter = ConnectBackLimiter::new(config, Time(0));
        let target = SocketAddr::new(ip(1), 9);
        let allowed = (0..100)
            .filter(|_| limiter.allow(target, Time(0)).is_ok())
            .count();
        assert_eq!(allowed, 2, "one target: its burst");
        assert_eq!(
            limiter.allow(target, Time(0)),
            Err(ConnectBackRefused::Target(ip(1)))
        );
        // Many targets: the overall burst (2 already taken of 5).
        let spread = (2..100)
            .filter(|n| limiter.allow(SocketAddr::new(ip(*n), 9), Time(0)).is_ok())
            .count();
        assert_eq!(spread, 3);
        assert_eq!(
            limiter.allow(SocketAddr::new(ip(500), 9), Time(0)),
            Err(ConnectBackRefused::Overall)
        );
    }
}
