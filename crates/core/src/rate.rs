//! A token bucket: at most `per_second` events a second on average, with
//! bursts of up to `burst`. Time comes from the caller, as everywhere in
//! the core. Tokens can be taken one per event ([`TokenBucket::allow`]) or
//! spent by the amount of work done ([`TokenBucket::available`], then
//! [`TokenBucket::spend`]).

use crate::Time;

/// Allows `per_second` events a second, `burst` at once.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u64,
    per_second: u64,
    /// Tokens, in thousandths.
    milli_tokens: u64,
    last: Time,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, burst: u32, now: Time) -> Self {
        let burst = u64::from(burst.max(1));
        Self {
            burst,
            per_second: u64::from(per_second),
            milli_tokens: burst.saturating_mul(1000),
            last: now,
        }
    }

    fn refill(&mut self, now: Time) {
        let elapsed = now.as_millis().saturating_sub(self.last.as_millis());
        self.last = now.max(self.last);
        // per_second tokens a second = per_second thousandths a millisecond.
        let refill = elapsed.saturating_mul(self.per_second);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(refill)
            .min(self.burst.saturating_mul(1000));
    }

    /// Whole tokens there are now.
    pub fn available(&mut self, now: Time) -> u64 {
        self.refill(now);
        self.milli_tokens / 1000
    }

    /// Spends `tokens` (at most what there is).
    pub fn spend(&mut self, tokens: u64) {
        self.milli_tokens = self
            .milli_tokens
            .saturating_sub(tokens.saturating_mul(1000));
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Time) -> bool {
        self.refill(now);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let mut bucket = TokenBucket::new(2, 3, Time(0));
        assert_eq!(
            (0..5).filter(|_| bucket.allow(Time(0))).count(),
            3,
            "the burst"
        );
        assert!(!bucket.allow(Time(499)));
        assert!(
            bucket.allow(Time(500)),
            "one more after half a second at 2/s"
        );
        assert!(!bucket.allow(Time(600)));
        // A long pause refills only up to the burst.
        assert_eq!((0..10).filter(|_| bucket.allow(Time(60_000))).count(), 3);
    }

    #[test]
    fn work_is_spent_by_the_amount() {
        let mut bucket = TokenBucket::new(1_000, 5_000, Time(0));
        assert_eq!(bucket.available(Time(0)), 5_000);
        bucket.spend(4_500);
        assert_eq!(bucket.available(Time(0)), 500);
        bucket.spend(9_999);
        assert_eq!(bucket.available(Time(0)), 0);
        assert_eq!(bucket.available(Time(100)), 100, "1,000 a second");
    }
}
