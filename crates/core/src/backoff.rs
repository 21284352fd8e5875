//! Exponential backoff with jitter for redialing a peer that went away,
//! and [`Retries`], a bounded table of it per address. The caller supplies
//! the randomness, so the core stays deterministic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Time;
use crate::rng::SplitMix64;

/// Delay policy: `initial`, doubling on each failure up to `max`, with up to
/// half of each delay replaced by jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A fresh policy.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1)` picks where in
    /// the upper half of the range it falls.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exponent = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let full = self.initial.saturating_mul(1 << exponent).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        full / 2 + full.mul_f64(jitter / 2.0)
    }

    /// A connection succeeded: start again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Per address, when it may be dialed again and its backoff: at most
/// `capacity` addresses (past it, those no longer waiting are forgotten,
/// then the soonest due). Ordered, so every walk is the same each run.
#[derive(Debug, Clone)]
pub struct Retries {
    initial: Duration,
    max: Duration,
    capacity: usize,
    waiting: BTreeMap<SocketAddr, (Time, Backoff)>,
}

impl Retries {
    /// An empty table of backoffs from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration, capacity: usize) -> Self {
        Self {
            initial,
            max,
            capacity: capacity.max(1),
            waiting: BTreeMap::new(),
        }
    }

    /// `addr` is not to be dialed before its next delay (jitter drawn from
    /// `rng`) has passed; returns when it may be.
    pub fn defer(&mut self, addr: SocketAddr, now: Time, rng: &mut SplitMix64) -> Time {
        let (initial, max) = (self.initial, self.max);
        let entry = self
            .waiting
            .entry(addr)
            .or_insert_with(|| (now, Backoff::new(initial, max)));
        entry.0 = now + entry.1.next_delay(rng.unit());
        let until = entry.0;
        if self.waiting.len() > self.capacity {
            // Only those still waiting matter.
            self.waiting.retain(|_, (until, _)| *until > now);
            while self.waiting.len() > self.capacity {
                let soonest = self
                    .waiting
                    .iter()
                    .filter(|(a, _)| **a != addr)
                    .min_by_key(|(_, (until, _))| *until)
                    .map(|(a, _)| *a);
                match soonest {
                    Some(a) => self.waiting.remove(&a),
                    None => break,
                };
            }
        }
        until
    }

    /// `addr` proved good: its next failure starts from `initial` again
    /// (a wait already running is kept).
    pub fn reset(&mut self, addr: SocketAddr) {
        if let Some((_, backoff)) = self.waiting.get_mut(&addr) {
            backoff.reset();
        }
    }

    /// Forgets `addr` altogether.
    pub fn forget(&mut self, addr: SocketAddr) {
        self.waiting.remove(&addr);
    }

    /// True while `addr` waits out its backoff.
    pub fn is_waiting(&self, addr: SocketAddr, now: Time) -> bool {
        self.waiting
            .get(&addr)
            .is_some_and(|(until, _)| *until > now)
    }

    /// True if `addr` has a backoff (waiting or not).
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.waiting.contains_key(&addr)
    }

    /// When `addr` may be dialed again, if it has a backoff.
    pub fn not_before(&self, addr: SocketAddr) -> Option<Time> {
        self.waiting.get(&addr).map(|(until, _)| *until)
    }

    /// The soonest moment after `now` an address stops waiting.
    pub fn next_expiry(&self, now: Time) -> Option<Time> {
        self.waiting
            .values()
            .map(|(until, _)| *until)
            .filter(|until| *until > now)
            .min()
    }

    /// Addresses with a backoff.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True if no address has a backoff.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn retries_grow_with_jitter_within_bounds_and_stay_bounded() {
        let mut rng = SplitMix64::new(7);
        let mut retries = Retries::new(Duration::from_secs(1), Duration::from_secs(16), 4);
        let mut now = Time(0);
        let mut delays = Vec::new();
        for _ in 0..7 {
            let until = retries.defer(addr(1), now, &mut rng);
            assert!(retries.is_waiting(addr(1), now));
            assert_eq!(retries.next_expiry(now), Some(until));
            delays.push(until.since(now));
            now = until;
            assert!(!retries.is_waiting(addr(1), now), "due at its time");
        }
        for (i, delay) in delays.iter().enumerate() {
            let full = Duration::from_secs(1 << i.min(4));
            assert!(*delay >= full / 2 && *delay <= full, "{i}: {delay:?}");
        }
        assert!(delays[3] > delays[0], "{delays:?}");
        // Not all at the same point of their ranges: jitter.
        let shares: Vec<u128> = delays[4..].iter().map(|d| d.as_millis()).collect();
        assert!(shares.windows(2).any(|w| w[0] != w[1]), "{shares:?}");
        retries.reset(addr(1));
        let until = retries.defer(addr(1), now, &mut rng);
        assert!(until.since(now) <= Duration::from_secs(1));
        for port in 2..20 {
            retries.defer(addr(port), now, &mut rng);
            assert!(retries.len() <= 4);
        }
        assert!(retries.contains(addr(19)), "the newest is kept");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            let mut retries = Retries::new(Duration::from_secs(1), Duration::from_secs(60), 8);
            (0..5)
                .map(|_| retries.defer(addr(1), Time(0), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay(1.0)).collect();
        let secs: Vec<_> = delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(4));
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(500));
    }
}
