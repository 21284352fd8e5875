//! The port-mapping policy, free of I/O: when to ask the router for a
//! mapping, with which protocol, when to renew it (at half its lease), how
//! long to wait after a failure (doubling), when to give up, and what
//! address to announce. The driver feeds it the time and the routers'
//! answers and carries out the [`Action`]s it returns; tests drive it with
//! a fake clock.
//!
//! A *round* asks each protocol in turn (the one that worked last first,
//! else the configured order) until one grants the mapping. A round where
//! none does is a failure: the next round waits `first_retry`, doubling up
//! to `max_retry`, and after `max_failures` failed rounds in a row the
//! policy gives up for good (the node carries on unmapped). A renewal that
//! fails keeps the mapping announced until its lease runs out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::time::Time;

/// A way of asking a router for a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// NAT-PMP (RFC 6886): two tiny UDP messages to the gateway.
    NatPmp,
    /// UPnP Internet Gateway Device: SSDP discovery, then SOAP over HTTP.
    Upnp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP",
        })
    }
}

/// The policy's knobs.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The lease asked for; renewed at half of what the router grants.
    pub lease: Duration,
    /// The protocols to try, in order.
    pub order: Vec<Protocol>,
    /// The wait after the first failed round; doubles after each.
    pub first_retry: Duration,
    /// The longest wait between rounds.
    pub max_retry: Duration,
    /// Failed rounds in a row after which the policy gives up, unless a
    /// router granted a mapping before (then it keeps asking every
    /// `max_retry`: a router that mapped once and is down for a while
    /// will likely map again).
    pub max_failures: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            // RFC 6886 recommends two hours.
            lease: Duration::from_secs(2 * 3600),
            // NAT-PMP first: one datagram each way, no multicast, no HTTP.
            order: vec![Protocol::NatPmp, Protocol::Upnp],
            first_retry: Duration::from_secs(30),
            max_retry: Duration::from_secs(30 * 60),
            max_failures: 6,
        }
    }
}

/// The soonest a granted mapping is renewed: a router granting tiny
/// leases must not make us ask it in a loop.
const MIN_RENEW: Duration = Duration::from_secs(5);

/// What a router granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The address others reach us at.
    pub external: SocketAddr,
    /// How long the router keeps the mapping.
    pub lifetime: Duration,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `protocol` for the mapping (a new one or a renewal) for `lease`,
    /// then report with [`Policy::handle_result`].
    Map {
        /// Whom to ask.
        protocol: Protocol,
        /// The lease to ask for.
        lease: Duration,
    },
    /// Remove the mapping made with `protocol` (on shutdown); `external`
    /// is what it granted, if known.
    Unmap {
        /// Whom to ask.
        protocol: Protocol,
        /// The granted address, if any was.
        external: Option<SocketAddr>,
    },
    /// The address to announce changed: the mapped one, or none. Also
    /// emitted once when the first round ends unmapped.
    Announce(Option<SocketAddr>),
}

#[derive(Debug, Clone, Copy)]
struct Current {
    protocol: Protocol,
    external: SocketAddr,
    expires: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started.
    Idle,
    /// The next round starts at this time.
    Waiting(Time),
    /// One request in flight: the round's `index`th protocol.
    Asking(usize),
    /// Mapped; the renewal round starts at this time.
    Mapped(Time),
    /// Too many failed rounds: no more requests.
    GaveUp,
    /// Shut down.
    Stopped,
}

/// The port-mapping state machine.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    state: State,
    /// The protocols of the running round, in the order asked.
    round: Vec<Protocol>,
    current: Option<Current>,
    failures: u32,
    /// A router granted a mapping once: never give up.
    granted_once: bool,
    /// The last address announced; `None` before the first announcement.
    announced: Option<Option<SocketAddr>>,
    actions: VecDeque<Action>,
}

impl Policy {
    /// A policy that has not started.
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            state: State::Idle,
            round: Vec::new(),
            current: None,
            failures: 0,
            granted_once: false,
            announced: None,
            actions: VecDeque::new(),
        }
    }

    /// Starts the first round now.
    pub fn start(&mut self, now: Time) {
        if self.state == State::Idle {
            self.start_round(now);
        }
    }

    /// The mapped address, if any.
    pub fn external(&self) -> Option<SocketAddr> {
        self.current.map(|c| c.external)
    }

    /// Whether the policy stopped asking after too many failures.
    pub fn gave_up(&self) -> bool {
        self.state == State::GaveUp
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Policy::handle_timeout`] next has something to do; `None`
    /// while a request is in flight or when there is nothing left to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        let expiry = self.current.map(|c| c.expires);
        match self.state {
            State::Waiting(at) => Some(expiry.map_or(at, |e| e.min(at))),
            State::Mapped(renew_at) => Some(renew_at),
            State::GaveUp => expiry,
            State::Idle | State::Asking(_) | State::Stopped => None,
        }
    }

    /// Starts whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.expire(now);
        match self.state {
            State::Waiting(at) | State::Mapped(at) if now >= at => self.start_round(now),
            _ => {}
        }
    }

    /// The answer to the last [`Action::Map`]: what was granted, or a
    /// failure (any error, garbage or timeout alike).
    pub fn handle_result(&mut self, now: Time, protocol: Protocol, result: Option<Granted>) {
        let State::Asking(index) = self.state else {
            return;
        };
        if self.round.get(index) != Some(&protocol) {
            return;
        }
        match result {
            Some(granted) => {
                let lifetime = granted.lifetime;
                self.current = Some(Current {
                    protocol,
                    external: granted.external,
                    expires: now + lifetime,
                });
                self.failures = 0;
                self.granted_once = true;
                self.state = State::Mapped(now + (lifetime / 2).max(MIN_RENEW));
                self.announce(Some(granted.external));
            }
            None if index + 1 < self.round.len() => {
                self.state = State::Asking(index + 1);
                self.actions.push_back(Action::Map {
                    protocol: self.round[index + 1],
                    lease: self.config.lease,
                });
            }
            None => self.round_failed(now),
        }
    }

    /// Stops: removes the mapping if there is (or may be) one.
    pub fn shutdown(&mut self) {
        let in_flight = match self.state {
            State::Asking(index) => self.round.get(index).copied(),
            _ => None,
        };
        match (self.current, in_flight) {
            (Some(current), _) => self.actions.push_back(Action::Unmap {
                protocol: current.protocol,
                external: Some(current.external),
            }),
            // A request cut short may have been granted all the same.
            (None, Some(protocol)) => self.actions.push_back(Action::Unmap {
                protocol,
                external: None,
            }),
            (None, None) => {}
        }
        self.current = None;
        self.state = State::Stopped;
    }

    fn start_round(&mut self, now: Time) {
        self.expire(now);
        let mut round = self.config.order.clone();
        if let Some(current) = self.current {
            round.retain(|p| *p != current.protocol);
            round.insert(0, current.protocol);
        }
        self.round = round;
        match self.round.first() {
            Some(&protocol) => {
                self.state = State::Asking(0);
                self.actions.push_back(Action::Map {
                    protocol,
                    lease: self.config.lease,
                });
            }
            None => {
                self.state = State::GaveUp;
                self.announce(None);
            }
        }
    }

    fn round_failed(&mut self, now: Time) {
        self.failures = self.failures.saturating_add(1);
        self.expire(now);
        if self.failures >= self.config.max_failures && !self.granted_once {
            self.state = State::GaveUp;
        } else {
            let doublings = self.failures.saturating_sub(1).min(20);
            let wait = self
                .config
                .first_retry
                .saturating_mul(1 << doublings)
                .min(self.config.max_retry);
            self.state = State::Waiting(now + wait);
        }
        if self.current.is_none() {
            self.announce(None);
        }
    }

    /// Forgets a mapping whose lease ran out.
    fn expire(&mut self, now: Time) {
        if self.current.is_some_and(|c| now >= c.expires) {
            self.current = None;
            self.announce(None);
        }
    }

    fn announce(&mut self, addr: Option<SocketAddr>) {
        if self.announced != Some(addr) {
            self.announced = Some(addr);
            self.actions.push_back(Action::Announce(addr));
        }
    }
}

/// Whether a node listening on `listen` should ask a router for a mapping:
/// on IPv4 (or every address, dual-stack), and on loopback only when the
/// gateway was named (a test's fake router): no router maps loopback, and
/// NAT-PMP and IGD map IPv4 only.
pub fn worth_mapping(listen: std::net::IpAddr, gateway_named: bool) -> bool {
    match listen {
        std::net::IpAddr::V4(ip) => !ip.is_loopback() || gateway_named,
        std::net::IpAddr::V6(ip) => ip.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn config() -> PolicyConfig {
        PolicyConfig {
            lease: 100 * SEC,
            order: vec![Protocol::NatPmp, Protocol::Upnp],
            first_retry: 10 * SEC,
            max_retry: 40 * SEC,
            max_failures: 4,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([93, 184, 0, 1], port))
    }

    fn granted(port: u16, secs: u64) -> Option<Granted> {
        Some(Granted {
            external: addr(port),
            lifetime: Duration::from_secs(secs),
        })
    }

    fn drain(policy: &mut Policy) -> Vec<Action> {
        std::iter::from_fn(|| policy.poll_action()).collect()
    }

    fn map(protocol: Protocol) -> Action {
        Action::Map {
            protocol,
            lease: 100 * SEC,
        }
    }

    #[test]
    fn maps_with_the_first_protocol_and_renews_at_half_the_lease() {
        let mut policy = Policy::new(config());
        let t0 = Time(1_000);
        policy.start(t0);
        assert_eq!(drain(&mut policy), vec![map(Protocol::NatPmp)]);
        assert_eq!(policy.poll_timeout(), None, "nothing due while asking");
        policy.handle_result(t0, Protocol::NatPmp, granted(7000, 60));
        assert_eq!(drain(&mut policy), vec![Action::Announce(Some(addr(7000)))]);
        assert_eq!(policy.poll_timeout(), Some(t0 + 30 * SEC));
        policy.handle_timeout(t0 + 29 * SEC);
        assert_eq!(drain(&mut policy), vec![]);
        policy.handle_timeout(t0 + 30 * SEC);
        assert_eq!(drain(&mut policy), vec![map(Protocol::NatPmp)]);
        // Renewed with the same address: nothing new to announce.
        policy.handle_result(t0 + 31 * SEC, Protocol::NatPmp, granted(7000, 60));
        assert_eq!(drain(&mut policy), vec![]);
        assert_eq!(policy.poll_timeout(), Some(t0 + 61 * SEC));
    }

    #[test]
    fn falls_back_to_the_next_protocol_and_prefers_what_worked() {
        let mut policy = Policy::new(config());
        let t0 = Time(0);
        policy.start(t0);
        drain(&mut policy);
        policy.handle_result(t0, Protocol::NatPmp, None);
        assert_eq!(drain(&mut policy), vec![map(Protocol::Upnp)]);
        policy.handle_result(t0 + SEC, Protocol::Upnp, granted(7001, 100));
        assert_eq!(drain(&mut policy), vec![Action::Announce(Some(addr(7001)))]);
        policy.handle_timeout(t0 + 51 * SEC);
        assert_eq!(drain(&mut policy), vec![map(Protocol::Upnp)]);
    }

    #[test]
    fn after_a_mapping_was_granted_failed_rounds_never_give_up() {
        let mut policy = Policy::new(config());
        let mut now = Time(0);
        policy.start(now);
        drain(&mut policy);
        let granted = Granted {
            external: addr(7000),
            lifetime: 100 * SEC,
        };
        policy.handle_result(now, Protocol::NatPmp, Some(granted));
        drain(&mut policy);
        // The router goes away: renewals fail round after round, far past
        // max_failures, and the policy keeps asking every max_retry.
        let mut waits = Vec::new();
        for _ in 0..8 {
            now = policy.poll_timeout().unwrap();
            policy.handle_timeout(now);
            drain(&mut policy);
            policy.handle_result(now, Protocol::NatPmp, None);
            drain(&mut policy);
            policy.handle_result(now, Protocol::Upnp, None);
            drain(&mut policy);
            waits.push(policy.poll_timeout().map(|at| at.since(now).as_secs()));
        }
        assert!(!policy.gave_up());
        assert_eq!(waits.last(), Some(&Some(40)), "{waits:?}");
    }

    #[test]
    fn failed_rounds_back_off_doubling_then_give_up() {
        let mut policy = Policy::new(config());
        let mut now = Time(0);
        policy.start(now);
        let mut waits = Vec::new();
        for round in 0..4 {
            let actions = drain(&mut policy);
            assert_eq!(
                actions.first(),
                Some(&map(Protocol::NatPmp)),
                "round {round}"
            );
            policy.handle_result(now, Protocol::NatPmp, None);
            drain(&mut policy);
            policy.handle_result(now, Protocol::Upnp, None);
            let actions = drain(&mut policy);
            // The first failed round tells the driver it is settled, unmapped.
            assert_eq!(
                actions,
                if round == 0 {
                    vec![Action::Announce(None)]
                } else {
                    vec![]
                }
            );
            match policy.poll_timeout() {
                Some(at) => {
                    waits.push(at.since(now).as_secs());
                    now = at;
                    policy.handle_timeout(now);
                }
                None => break,
            }
        }
        assert_eq!(waits, vec![10, 20, 40]);
        assert!(policy.gave_up());
        assert_eq!(drain(&mut policy), vec![]);
        policy.handle_timeout(now + 3600 * SEC);
        assert_eq!(drain(&mut policy), vec![], "no request after giving up");
    }

    #[test]
    fn a_failed_renewal_keeps_the_mapping_until_its_lease_ends() {
        let mut policy = Policy::new(config());
        let t0 = Time(0);
        policy.start(t0);
        drain(&mut policy);
        policy.handle_result(t0, Protocol::NatPmp, granted(7000, 40));
        drain(&mut policy);
        policy.handle_timeout(t0 + 20 * SEC);
        drain(&mut policy);
        policy.handle_result(t0 + 20 * SEC, Protocol::NatPmp, None);
        drain(&mut policy);
        policy.handle_result(t0 + 20 * SEC, Protocol::Upnp, None);
        assert_eq!(drain(&mut policy), vec![], "still mapped");
        assert_eq!(policy.external(), Some(addr(7000)));
        // Next round at 30 s, still inside the lease.
        assert_eq!(policy.poll_timeout(), Some(t0 + 30 * SEC));
        policy.handle_timeout(t0 + 30 * SEC);
        drain(&mut policy);
        policy.handle_result(t0 + 30 * SEC, Protocol::NatPmp, None);
        drain(&mut policy);
        policy.handle_result(t0 + 30 * SEC, Protocol::Upnp, None);
        // The lease ends at 40 s, before the next round at 50 s.
        assert_eq!(policy.poll_timeout(), Some(t0 + 40 * SEC));
        policy.handle_timeout(t0 + 40 * SEC);
        assert_eq!(drain(&mut policy), vec![Action::Announce(None)]);
        assert_eq!(policy.external(), None);
    }

    #[test]
    fn a_new_external_address_is_announced() {
        let mut policy = Policy::new(config());
        let t0 = Time(0);
        policy.start(t0);
        drain(&mut policy);
        policy.handle_result(t0, Protocol::NatPmp, granted(7000, 100));
        drain(&mut policy);
        policy.handle_timeout(t0 + 50 * SEC);
        drain(&mut policy);
        policy.handle_result(t0 + 50 * SEC, Protocol::NatPmp, granted(7002, 100));
        assert_eq!(drain(&mut policy), vec![Action::Announce(Some(addr(7002)))]);
    }

    #[test]
    fn tiny_leases_do_not_make_a_loop() {
        let mut policy = Policy::new(config());
        policy.start(Time(0));
        drain(&mut policy);
        policy.handle_result(Time(0), Protocol::NatPmp, granted(7000, 0));
        assert_eq!(policy.poll_timeout(), Some(Time(0) + MIN_RENEW));
    }

    #[test]
    fn only_ipv4_and_every_address_are_worth_mapping() {
        let ip = |s: &str| {
            s.parse::<std::net::IpAddr>()
                .unwrap_or_else(|_| unreachable!())
        };
        assert!(worth_mapping(ip("0.0.0.0"), false));
        assert!(worth_mapping(ip("192.168.1.20"), false));
        assert!(worth_mapping(ip("::"), false));
        assert!(!worth_mapping(ip("127.0.0.1"), false));
        assert!(worth_mapping(ip("127.0.0.1"), true));
        assert!(!worth_mapping(ip("2001:db8::1"), false));
    }

    #[test]
    fn stray_answers_are_ignored() {
        let mut policy = Policy::new(config());
        policy.start(Time(0));
        drain(&mut policy);
        policy.handle_result(Time(0), Protocol::Upnp, granted(7000, 100));
        assert_eq!(drain(&mut policy), vec![]);
        assert_eq!(policy.external(), None);
    }

    #[test]
    fn shutdown_removes_the_mapping_or_a_request_in_flight() {
        let mut policy = Policy::new(config());
        policy.start(Time(0));
        drain(&mut policy);
        policy.handle_result(Time(0), Protocol::Upnp, None);
        policy.handle_result(Time(0), Protocol::NatPmp, granted(7000, 100));
        drain(&mut policy);
        policy.shutdown();
        assert_eq!(
            drain(&mut policy),
            vec![Action::Unmap {
                protocol: Protocol::NatPmp,
                external: Some(addr(7000))
            }]
        );
        assert_eq!(policy.poll_timeout(), None);

        let mut asking = Policy::new(config());
        asking.start(Time(0));
        drain(&mut asking);
        asking.shutdown();
        assert_eq!(
            drain(&mut asking),
            vec![Action::Unmap {
                protocol: Protocol::NatPmp,
                external: None
            }]
        );

        let mut idle = Policy::new(config());
        idle.shutdown();
        assert_eq!(drain(&mut idle), vec![]);
    }
}
