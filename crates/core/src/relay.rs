//! The relay's policy: a supernode that offers it (operator opt-in,
//! [`RelayConfig::slots`] > 0) joins a downloader and a firewalled source
//! that could reach each other no other way, as the last resort.
//!
//! A circuit is named by a 16-byte token the downloader chose. The
//! supernode core registers it ([`Relay::register`]) when its own leaf's
//! push asks for a relay; nobody else can open one. The two halves then
//! dial the relay and say which they are: the source `serve`s, the
//! downloader `connect`s. Each is admitted or refused with a reason
//! ([`Refusal`]): no slot free, its IP holds its share, the token unknown
//! or expired, its half already taken. An admitted half waits for the
//! other until the token's deadline; the pair is a circuit with a budget
//! ([`CircuitBudget`]): bytes both ways together, a deadline and a rate.
//!
//! Everything is bounded: tokens (registered, not yet paired) in a table of
//! [`RelayConfig::max_tokens`] that expire after
//! [`RelayConfig::token_lifetime`]; circuits (a slot each, from the first
//! half admitted until both halves are gone) at [`RelayConfig::slots`];
//! halves per IP at [`RelayConfig::per_ip`]. Time is passed in; nothing
//! here does I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use canopy_proto::CircuitToken;

use crate::Time;
use crate::addr_limits::canonical_ip;

/// A relay's tunables. The default relays nothing (`slots` 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Circuits at once (half-open ones included); 0: no relay.
    pub slots: usize,
    /// Bytes one circuit may carry, both ways together.
    pub max_bytes: u64,
    /// How long one circuit may last, from its pairing.
    pub max_duration: Duration,
    /// Bytes a second one circuit may carry, both ways together.
    pub rate: u32,
    /// Halves one IP may hold at once (open or waiting).
    pub per_ip: usize,
    /// Tokens registered and not yet paired, at most.
    pub max_tokens: usize,
    /// How long a registered token waits for its halves.
    pub token_lifetime: Duration,
}

/// The default per-circuit byte budget: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// The default per-circuit duration: 10 minutes.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(10 * 60);
/// The default per-circuit rate: 1 MiB/s.
pub const DEFAULT_RATE: u32 = 1 << 20;
/// The least byte budget a circuit is given, whatever the configuration:
/// a download verifies 1 MiB groups, so a circuit must carry a whole one
/// with its request and headers, or a relayed download would never move.
pub const MIN_MAX_BYTES: u64 = 2 << 20;
/// The default number of halves one IP may hold.
pub const DEFAULT_PER_IP: usize = 4;

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            slots: 0,
            max_bytes: DEFAULT_MAX_BYTES,
            max_duration: DEFAULT_MAX_DURATION,
            rate: DEFAULT_RATE,
            per_ip: DEFAULT_PER_IP,
            max_tokens: 1024,
            token_lifetime: Duration::from_secs(30),
        }
    }
}

impl RelayConfig {
    /// Whether this supernode relays at all.
    pub fn enabled(&self) -> bool {
        self.slots > 0
    }
}

/// The first word of a relay request line (the source's and the
/// downloader's), which can't be mistaken for a Noise message: that starts
/// with a 2-byte length of at most 1,024, so a first byte of 0-4.
pub const REQUEST_WORD: &str = "CANOPY-RELAY";
/// The longest request or answer line, newline included.
pub const MAX_LINE: usize = 96;

/// The request line `half` of circuit `token` opens with.
pub fn request_line(half: Half, token: CircuitToken) -> String {
    format!("{REQUEST_WORD} {} {token}\n", half.as_str())
}

/// Reads a request line (without its newline): the half and the token.
pub fn parse_request(line: &str) -> Option<(Half, CircuitToken)> {
    let mut words = line.split(' ');
    if words.next()? != REQUEST_WORD {
        return None;
    }
    let half = Half::parse(words.next()?)?;
    let token = parse_token(words.next()?)?;
    words.next().is_none().then_some((half, token))
}

/// A token from its 32 lowercase or uppercase hex digits.
pub fn parse_token(hex: &str) -> Option<CircuitToken> {
    let digits = hex.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let mut token = [0u8; 16];
    for (byte, pair) in token.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(CircuitToken(token))
}

/// What the relay granted a half: the circuit's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Bytes the circuit may carry, both ways together.
    pub max_bytes: u64,
    /// Seconds it may last from its pairing.
    pub max_seconds: u64,
}

/// The answer line to an admitted half.
pub fn ok_line(config: &RelayConfig) -> String {
    format!(
        "OK {} {}\n",
        config.max_bytes,
        config.max_duration.as_secs()
    )
}

/// The answer line to a refused half.
pub fn refused_line(refusal: Refusal) -> String {
    format!("REFUSED {}\n", refusal.reason())
}

/// Reads an answer line (without its newline): the grant, or the refusal
/// (`None` inside: a reason we don't know, or no answer line at all).
pub fn parse_answer(line: &str) -> Result<Grant, Option<Refusal>> {
    let mut words = line.split(' ');
    match words.next() {
        Some("OK") => {
            let max_bytes = words.next().and_then(|w| w.parse().ok()).ok_or(None)?;
            let max_seconds = words.next().and_then(|w| w.parse().ok()).ok_or(None)?;
            Ok(Grant {
                max_bytes,
                max_seconds,
            })
        }
        Some("REFUSED") => Err(words.next().and_then(Refusal::parse)),
        _ => Err(None),
    }
}

/// Which end of a circuit a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    /// The firewalled source, which will serve HTTP.
    Serve,
    /// The downloader.
    Connect,
}

impl Half {
    /// Its word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Half::Serve => "serve",
            Half::Connect => "connect",
        }
    }

    /// The half a word names.
    pub fn parse(word: &str) -> Option<Half> {
        match word {
            "serve" => Some(Half::Serve),
            "connect" => Some(Half::Connect),
            _ => None,
        }
    }
}

/// Why a half was refused; its [`Refusal::reason`] goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// This supernode does not relay.
    Disabled,
    /// Every slot is taken.
    NoSlots,
    /// The half's IP holds its share of halves.
    PerIp,
    /// No such token was registered (or it was forgotten long ago).
    UnknownToken,
    /// The token was registered but its time ran out.
    ExpiredToken,
    /// That half of the circuit is taken already.
    HalfTaken,
    /// The line was not a relay request (or came too slowly).
    BadRequest,
}

impl Refusal {
    /// Every refusal, for metrics.
    pub const ALL: [Refusal; 7] = [
        Refusal::Disabled,
        Refusal::NoSlots,
        Refusal::PerIp,
        Refusal::UnknownToken,
        Refusal::ExpiredToken,
        Refusal::HalfTaken,
        Refusal::BadRequest,
    ];

    /// One word, for the wire (`REFUSED <reason>`) and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Disabled => "relay-disabled",
            Refusal::NoSlots => "no-slots",
            Refusal::PerIp => "per-ip-limit",
            Refusal::UnknownToken => "unknown-token",
            Refusal::ExpiredToken => "expired-token",
            Refusal::HalfTaken => "half-taken",
            Refusal::BadRequest => "bad-request",
        }
    }

    /// The refusal a word names (the downloader reads it back).
    pub fn parse(word: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.reason() == word)
    }

    /// Whether the relay may take the same request later (it is full now),
    /// as opposed to never (the request itself is wrong).
    pub fn is_busy(self) -> bool {
        matches!(self, Refusal::NoSlots | Refusal::PerIp)
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// An admitted half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The first half: wait for the other until `until`, then give up
    /// ([`Relay::abandon`]).
    Wait {
        /// The token's deadline.
        until: Time,
    },
    /// The second half: the circuit is whole; splice it within `budget`,
    /// then [`Relay::close`] it.
    Paired {
        /// The circuit's limits.
        budget: CircuitBudget,
    },
}

/// Why a circuit was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its bytes are spent.
    Bytes,
    /// Its time is up.
    Duration,
}

/// What a circuit may send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Send this many bytes now (at least 1, at most asked).
    Send(usize),
    /// Nothing for now: ask again after this long.
    Wait(Duration),
    /// Close the circuit.
    Cut(Cut),
}

/// One circuit's limits, kept as it carries bytes: the total both ways,
/// a deadline, a rate (a token bucket of bytes, a second's worth at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBudget {
    bytes_left: u64,
    deadline: Time,
    rate: u32,
    /// Tokens in thousandths of a byte, and when last refilled.
    milli_tokens: u64,
    last: Time,
}

impl CircuitBudget {
    /// The budget of a circuit paired at `now` under `config`.
    pub fn new(config: &RelayConfig, now: Time) -> Self {
        let rate = config.rate.max(1);
        Self {
            bytes_left: config.max_bytes,
            deadline: now + config.max_duration,
            rate,
            milli_tokens: u64::from(rate) * 1000,
            last: now,
        }
    }

    /// When the circuit must end.
    pub fn deadline(&self) -> Time {
        self.deadline
    }

    /// Bytes it may still carry.
    pub fn bytes_left(&self) -> u64 {
        self.bytes_left
    }

    /// Up to `want` bytes to send now, a wait, or the end. What is granted
    /// is spent.
    pub fn take(&mut self, want: usize, now: Time) -> Take {
        if now >= self.deadline {
            return Take::Cut(Cut::Duration);
        }
        if self.bytes_left == 0 {
            return Take::Cut(Cut::Bytes);
        }
        // A token bucket of bytes, in thousandths: `rate` a second, a
        // second's worth at once.
        let elapsed = now.as_millis().saturating_sub(self.last.as_millis());
        self.last = now.max(self.last);
        let full = u64::from(self.rate) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(self.rate)))
            .min(full);
        let available = self.milli_tokens / 1000;
        if available == 0 {
            // Until one byte's worth has come in.
            let missing = 1000 - self.milli_tokens % 1000;
            let millis = missing.div_ceil(u64::from(self.rate)).max(1);
            let wait = Duration::from_millis(millis).min(self.deadline.since(now));
            return Take::Wait(wait.max(Duration::from_millis(1)));
        }
        let want = u64::try_from(want).unwrap_or(u64::MAX).max(1);
        let granted = want.min(available).min(self.bytes_left);
        self.milli_tokens -= granted * 1000;
        self.bytes_left -= granted;
        Take::Send(usize::try_from(granted).unwrap_or(usize::MAX))
    }
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Circuits holding a slot now (half-open ones included).
    pub circuits_open: usize,
    /// Circuits paired, ever.
    pub circuits_total: u64,
    /// Tokens registered, ever.
    pub tokens_registered: u64,
    /// Tokens not registered because the table was full.
    pub tokens_dropped: u64,
    /// Halves refused, by reason (in the order of [`Refusal::ALL`]).
    pub refusals: [u64; 7],
    /// Circuits cut at their byte budget.
    pub cut_bytes: u64,
    /// Circuits cut at their deadline.
    pub cut_duration: u64,
    /// Bytes carried, both ways.
    pub bytes_relayed: u64,
}

impl RelayStats {
    /// Halves refused for `refusal`.
    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refusals[refusal.index()]
    }
}

/// A registered token and the halves it holds.
#[derive(Debug, Clone)]
struct Circuit {
    expires: Time,
    serve: Option<IpAddr>,
    connect: Option<IpAddr>,
    /// Both halves came: the token can't be used again.
    paired: bool,
}

impl Circuit {
    fn holds_slot(&self) -> bool {
        self.serve.is_some() || self.connect.is_some()
    }

    fn half(&mut self, half: Half) -> &mut Option<IpAddr> {
        match half {
            Half::Serve => &mut self.serve,
            Half::Connect => &mut self.connect,
        }
    }
}

/// Tokens remembered after they expired, so a late half hears
/// "expired-token", not "unknown-token"; at most this many.
const EXPIRED_REMEMBERED: usize = 1024;

/// The relay's state: tokens, slots, halves per IP, counters.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    circuits: HashMap<CircuitToken, Circuit>,
    /// Expired tokens, with when they are forgotten.
    expired: HashMap<CircuitToken, Time>,
    per_ip: HashMap<IpAddr, usize>,
    stats: RelayStats,
}

impl Relay {
    /// A relay under `config` with no circuits (a byte budget below
    /// [`MIN_MAX_BYTES`] is raised to it).
    pub fn new(mut config: RelayConfig) -> Self {
        config.max_bytes = config.max_bytes.max(MIN_MAX_BYTES);
        Self {
            config,
            circuits: HashMap::new(),
            expired: HashMap::new(),
            per_ip: HashMap::new(),
            stats: RelayStats::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> RelayStats {
        let mut stats = self.stats.clone();
        stats.circuits_open = self.slots_taken();
        stats
    }

    fn slots_taken(&self) -> usize {
        self.circuits.values().filter(|c| c.holds_slot()).count()
    }

    /// Our own leaf asked for circuit `token`: its halves may come until
    /// the token's lifetime has passed. False if the relay is off, the
    /// token is known already, or the table is full (counted).
    pub fn register(&mut self, token: CircuitToken, now: Time) -> bool {
        if !self.config.enabled() {
            return false;
        }
        self.handle_timeout(now);
        if self.circuits.contains_key(&token) {
            return false;
        }
        if self.circuits.len() >= self.config.max_tokens {
            self.stats.tokens_dropped += 1;
            return false;
        }
        self.expired.remove(&token);
        self.circuits.insert(
            token,
            Circuit {
                expires: now + self.config.token_lifetime,
                serve: None,
                connect: None,
                paired: false,
            },
        );
        self.stats.tokens_registered += 1;
        true
    }

    /// Counts a refusal the driver decided on its own (a bad line).
    pub fn count_refusal(&mut self, refusal: Refusal) {
        self.stats.refusals[refusal.index()] += 1;
    }

    fn refuse(&mut self, refusal: Refusal) -> Result<Admitted, Refusal> {
        self.count_refusal(refusal);
        Err(refusal)
    }

    /// A connection from `ip` asks to be `half` of circuit `token`.
    pub fn admit(
        &mut self,
        token: CircuitToken,
        half: Half,
        ip: IpAddr,
        now: Time,
    ) -> Result<Admitted, Refusal> {
        if !self.config.enabled() {
            return self.refuse(Refusal::Disabled);
        }
        self.handle_timeout(now);
        let ip = canonical_ip(ip);
        let taken = self.slots_taken();
        let held = self.per_ip.get(&ip).copied().unwrap_or(0);
        let Some(circuit) = self.circuits.get(&token) else {
            let refusal = if self.expired.contains_key(&token) {
                Refusal::ExpiredToken
            } else {
                Refusal::UnknownToken
            };
            return self.refuse(refusal);
        };
        let first = !circuit.holds_slot();
        let taken_half = match half {
            Half::Serve => circuit.serve.is_some(),
            Half::Connect => circuit.connect.is_some(),
        };
        if circuit.paired || taken_half {
            return self.refuse(Refusal::HalfTaken);
        }
        if first && taken >= self.config.slots {
            return self.refuse(Refusal::NoSlots);
        }
        if held >= self.config.per_ip {
            return self.refuse(Refusal::PerIp);
        }
        *self.per_ip.entry(ip).or_insert(0) += 1;
        let Some(circuit) = self.circuits.get_mut(&token) else {
            return self.refuse(Refusal::UnknownToken);
        };
        *circuit.half(half) = Some(ip);
        if first {
            return Ok(Admitted::Wait {
                until: circuit.expires,
            });
        }
        circuit.paired = true;
        self.stats.circuits_total += 1;
        Ok(Admitted::Paired {
            budget: CircuitBudget::new(&self.config, now),
        })
    }

    /// `half` of `token` is gone before its pair came (it gave up, its
    /// connection closed, the deadline passed): its place is free again
    /// and, if it was the only one, the slot.
    pub fn abandon(&mut self, token: CircuitToken, half: Half) {
        let Some(circuit) = self.circuits.get_mut(&token) else {
            return;
        };
        if circuit.paired {
            return;
        }
        if let Some(ip) = circuit.half(half).take() {
            release(&mut self.per_ip, ip);
        }
    }

    /// The circuit `token` ended (after pairing), cut short for `cut` if
    /// it was: its slot and IP counts are free.
    pub fn close(&mut self, token: CircuitToken, cut: Option<Cut>) {
        match cut {
            Some(Cut::Bytes) => self.stats.cut_bytes += 1,
            Some(Cut::Duration) => self.stats.cut_duration += 1,
            None => {}
        }
        let Some(circuit) = self.circuits.remove(&token) else {
            return;
        };
        for ip in [circuit.serve, circuit.connect].into_iter().flatten() {
            release(&mut self.per_ip, ip);
        }
    }

    /// Counts bytes a circuit carried (as it goes, so metrics move while a
    /// long transfer runs).
    pub fn count_bytes(&mut self, bytes: u64) {
        self.stats.bytes_relayed = self.stats.bytes_relayed.saturating_add(bytes);
    }

    /// When [`Relay::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.circuits
            .values()
            .filter(|c| !c.paired)
            .map(|c| c.expires)
            .chain(self.expired.values().copied())
            .min()
    }

    /// Forgets tokens whose time ran out unpaired (a half still waiting
    /// gets its [`Relay::abandon`] from the driver at the same deadline),
    /// and expired tokens remembered long enough.
    pub fn handle_timeout(&mut self, now: Time) {
        let lifetime = self.config.token_lifetime;
        let mut gone = Vec::new();
        self.circuits.retain(|token, circuit| {
            if circuit.paired || circuit.expires > now {
                return true;
            }
            gone.push((*token, circuit.serve.take(), circuit.connect.take()));
            false
        });
        for (token, serve, connect) in gone {
            for ip in [serve, connect].into_iter().flatten() {
                release(&mut self.per_ip, ip);
            }
            if self.expired.len() < EXPIRED_REMEMBERED {
                self.expired.insert(token, now + lifetime);
            }
        }
        self.expired.retain(|_, forget_at| *forget_at > now);
    }
}

fn release(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(count) = per_ip.get_mut(&ip) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            per_ip.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn config() -> RelayConfig {
        RelayConfig {
            slots: 2,
            max_bytes: 10_000,
            max_duration: Duration::from_secs(60),
            rate: 1_000,
            per_ip: 2,
            max_tokens: 4,
            token_lifetime: Duration::from_secs(30),
        }
    }

    fn token(n: u8) -> CircuitToken {
        CircuitToken([n; 16])
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn lines_read_back() {
        let line = request_line(Half::Serve, token(0xab));
        assert_eq!(
            parse_request(line.trim_end_matches('\n')),
            Some((Half::Serve, token(0xab)))
        );
        assert_eq!(parse_request("CANOPY-RELAY serve 00"), None);
        assert_eq!(parse_request("CANOPY-RELAY listen 0"), None);
        let config = config();
        assert_eq!(
            parse_answer(ok_line(&config).trim_end()),
            Ok(Grant {
                max_bytes: 10_000,
                max_seconds: 60
            })
        );
        for refusal in Refusal::ALL {
            assert_eq!(
                parse_answer(refused_line(refusal).trim_end()),
                Err(Some(refusal))
            );
        }
        assert_eq!(parse_answer("HTTP/1.1 200 OK"), Err(None));
        assert!(request_line(Half::Connect, token(0xff)).len() <= MAX_LINE);
    }

    #[test]
    fn off_by_default() {
        let mut relay = Relay::new(RelayConfig::default());
        assert!(!relay.register(token(1), Time::ZERO));
        assert_eq!(
            relay.admit(token(1), Half::Serve, ip(1), Time::ZERO),
            Err(Refusal::Disabled)
        );
        assert_eq!(relay.stats().refused(Refusal::Disabled), 1);
    }

    #[test]
    fn halves_pair_by_token() {
        let mut relay = Relay::new(config());
        let now = Time(1_000);
        assert!(relay.register(token(1), now));
        assert_eq!(
            relay.admit(token(1), Half::Serve, ip(1), now),
            Ok(Admitted::Wait {
                until: now + Duration::from_secs(30)
            })
        );
        assert_eq!(
            relay.admit(token(1), Half::Serve, ip(3), now),
            Err(Refusal::HalfTaken)
        );
        let Ok(Admitted::Paired { budget }) = relay.admit(token(1), Half::Connect, ip(2), now)
        else {
            panic!("the second half pairs");
        };
        assert_eq!(budget.deadline(), now + Duration::from_secs(60));
        assert_eq!(budget.bytes_left(), MIN_MAX_BYTES, "raised to the least");
        let stats = relay.stats();
        assert_eq!((stats.circuits_open, stats.circuits_total), (1, 1));
        // A paired token can't be used again.
        assert_eq!(
            relay.admit(token(1), Half::Connect, ip(2), now),
            Err(Refusal::HalfTaken)
        );
        relay.count_bytes(500);
        relay.close(token(1), None);
        let stats = relay.stats();
        assert_eq!((stats.circuits_open, stats.bytes_relayed), (0, 500));
        assert_eq!(
            relay.admit(token(1), Half::Serve, ip(1), now),
            Err(Refusal::UnknownToken)
        );
    }

    #[test]
    fn unknown_tokens_are_refused() {
        let mut relay = Relay::new(config());
        assert_eq!(
            relay.admit(token(9), Half::Connect, ip(1), Time::ZERO),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(relay.stats().refused(Refusal::UnknownToken), 1);
    }

    #[test]
    fn slots_are_counted_from_the_first_half() {
        let mut relay = Relay::new(config());
        let now = Time::ZERO;
        for n in 1..=3 {
            assert!(relay.register(token(n), now));
        }
        assert!(relay.admit(token(1), Half::Serve, ip(1), now).is_ok());
        assert!(relay.admit(token(2), Half::Serve, ip(2), now).is_ok());
        assert_eq!(
            relay.admit(token(3), Half::Serve, ip(3), now),
            Err(Refusal::NoSlots)
        );
        // The second half of a held circuit needs no new slot.
        assert!(matches!(
            relay.admit(token(1), Half::Connect, ip(3), now),
            Ok(Admitted::Paired { .. })
        ));
        // A half that gives up frees its slot.
        relay.abandon(token(2), Half::Serve);
        assert!(relay.admit(token(3), Half::Serve, ip(3), now).is_ok());
        assert_eq!(relay.stats().refused(Refusal::NoSlots), 1);
    }

    #[test]
    fn one_ip_holds_its_share() {
        let mut relay = Relay::new(RelayConfig {
            slots: 10,
            ..config()
        });
        let now = Time::ZERO;
        for n in 1..=3 {
            assert!(relay.register(token(n), now));
        }
        assert!(relay.admit(token(1), Half::Serve, ip(1), now).is_ok());
        assert!(relay.admit(token(2), Half::Serve, ip(1), now).is_ok());
        assert_eq!(
            relay.admit(token(3), Half::Serve, ip(1), now),
            Err(Refusal::PerIp)
        );
        assert!(relay.admit(token(3), Half::Serve, ip(2), now).is_ok());
        relay.abandon(token(1), Half::Serve);
        assert!(relay.admit(token(1), Half::Serve, ip(1), now).is_ok());
    }

    #[test]
    fn tokens_expire_and_say_so() {
        let mut relay = Relay::new(config());
        assert!(relay.register(token(1), Time::ZERO));
        assert!(
            relay
                .admit(token(1), Half::Serve, ip(1), Time::ZERO)
                .is_ok()
        );
        assert_eq!(relay.poll_timeout(), Some(Time(30_000)));
        relay.handle_timeout(Time(30_000));
        let stats = relay.stats();
        assert_eq!(stats.circuits_open, 0, "the waiting half's slot is free");
        assert_eq!(
            relay.admit(token(1), Half::Connect, ip(2), Time(30_001)),
            Err(Refusal::ExpiredToken)
        );
        // Forgotten a lifetime later.
        relay.handle_timeout(Time(60_000));
        assert_eq!(relay.poll_timeout(), None);
        assert_eq!(
            relay.admit(token(1), Half::Connect, ip(2), Time(60_001)),
            Err(Refusal::UnknownToken)
        );
    }

    #[test]
    fn the_token_table_is_bounded() {
        let mut relay = Relay::new(config());
        for n in 1..=4 {
            assert!(relay.register(token(n), Time::ZERO));
        }
        assert!(!relay.register(token(5), Time::ZERO));
        assert!(!relay.register(token(1), Time::ZERO), "no re-registering");
        assert_eq!(relay.stats().tokens_dropped, 1);
        // Expired ones make room.
        assert!(relay.register(token(5), Time(30_000)));
    }

    #[test]
    fn a_budget_cuts_at_its_bytes() {
        let mut budget = CircuitBudget::new(
            &RelayConfig {
                rate: 1_000_000,
                ..config()
            },
            Time::ZERO,
        );
        assert_eq!(budget.take(6_000, Time::ZERO), Take::Send(6_000));
        assert_eq!(budget.take(6_000, Time(1)), Take::Send(4_000));
        assert_eq!(budget.take(1, Time(2)), Take::Cut(Cut::Bytes));
    }

    #[test]
    fn a_budget_cuts_at_its_deadline() {
        let mut budget = CircuitBudget::new(&config(), Time::ZERO);
        assert_eq!(budget.take(10, Time(59_999)), Take::Send(10));
        assert_eq!(budget.take(10, Time(60_000)), Take::Cut(Cut::Duration));
    }

    #[test]
    fn a_budget_holds_its_rate() {
        // 1,000 bytes a second, a second's worth at once.
        let mut budget = CircuitBudget::new(&config(), Time::ZERO);
        assert_eq!(budget.take(5_000, Time::ZERO), Take::Send(1_000));
        let Take::Wait(wait) = budget.take(5_000, Time::ZERO) else {
            panic!("an empty bucket waits");
        };
        assert!(wait >= Duration::from_millis(1) && wait <= Duration::from_millis(2));
        // Half a second later, half a second's worth.
        assert_eq!(budget.take(5_000, Time(500)), Take::Send(500));
        // Over four seconds, at most the rate (plus the first burst).
        let mut sent = 0;
        let mut now = Time(500);
        while now < Time(4_500) {
            match budget.take(5_000, now) {
                Take::Send(n) => sent += n,
                Take::Wait(wait) => now = now + wait,
                Take::Cut(cut) => panic!("cut early: {cut:?}"),
            }
        }
        assert!((3_900..=4_100).contains(&sent), "sent {sent}");
    }
}
