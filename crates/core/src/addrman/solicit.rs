//! Pings we sent and await answers to: a Pong is believed (its addresses
//! taken) only if it echoes the nonce of a Ping we sent on that very
//! connection and have not seen answered. Nonces are a keyed hash of a
//! counter, so a peer can't guess the next one from the last.

/// Pings awaiting an answer per connection; an older one is forgotten when
/// a newer one needs its place (pings go out every 30 s at most).
pub const MAX_OUTSTANDING_PINGS: usize = 4;

/// Produces ping nonces a peer cannot predict.
#[derive(Clone)]
pub struct NonceSource {
    key: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret.
        f.debug_struct("NonceSource")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl NonceSource {
    /// Nonces keyed with `key`, which the driver draws from its RNG.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key, counter: 0 }
    }

    /// The next nonce.
    pub fn next_nonce(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let hash = blake3::keyed_hash(&self.key, &self.counter.to_le_bytes());
        let mut first = [0; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

/// A key for deterministic runs (tests, the simulator) when the driver
/// gives none: derived from something public, so never for real nodes.
pub fn public_key_for(seed: &[u8]) -> [u8; 32] {
    blake3::derive_key("canopy 2026 ping nonces (not secret)", seed)
}

/// The unanswered pings of one connection.
#[derive(Debug, Clone, Default)]
pub struct Outstanding {
    nonces: [Option<u64>; MAX_OUTSTANDING_PINGS],
    next: usize,
}

impl Outstanding {
    /// We sent a Ping with `nonce`.
    pub fn sent(&mut self, nonce: u64) {
        self.nonces[self.next] = Some(nonce);
        self.next = (self.next + 1) % MAX_OUTSTANDING_PINGS;
    }

    /// A Pong echoed `nonce`: true (and forgotten) if it answers a Ping
    /// of ours; false for a Pong nobody asked for, or a second answer.
    pub fn answered(&mut self, nonce: u64) -> bool {
        match self.nonces.iter_mut().find(|n| **n == Some(nonce)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_pings_are_answered_and_each_once() {
        let mut nonces = NonceSource::new([7; 32]);
        let (a, b) = (nonces.next_nonce(), nonces.next_nonce());
        assert_ne!(a, b);
        assert_ne!(a, 1, "not a plain counter");
        let mut outstanding = Outstanding::default();
        outstanding.sent(a);
        assert!(!outstanding.answered(b));
        assert!(!outstanding.answered(0));
        assert!(outstanding.answered(a));
        assert!(!outstanding.answered(a), "a replay is unsolicited");
        for _ in 0..MAX_OUTSTANDING_PINGS + 1 {
            outstanding.sent(nonces.next_nonce());
        }
        let other_key = NonceSource::new([8; 32]).next_nonce();
        assert_ne!(other_key, a, "the key decides the nonces");
    }
}
