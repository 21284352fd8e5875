//! Exponential backoff with jitter for redialing a peer that went away.
//! The caller supplies the randomness, so the core stays deterministic.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
