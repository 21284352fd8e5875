//! What a leaf knows of its own reachability, from what its supernodes
//! tell it: its public address, its NAT's kind, whether connecting back to
//! it works, and when to announce a new listening address.
//!
//! Inputs, per supernode session: the supernode's address, the address it
//! observed us connect from (`Accepted.observed_addr`), our end of the
//! connection, and whether we dialed from our listening port; the
//! connect-back verdicts (`Reachability` messages); the port mapping's
//! state. Outputs: a [`ReachStatus`] and [`ReachAction::Announce`].
//!
//! - **Public address.** An observed IP is a claim. With one supernode (or
//!   all of them in one /24 or /48), its word is taken, marked unconfirmed.
//!   Once two supernodes in different groups agree on an IP it is
//!   confirmed, and a confirmed address moves only when two groups agree on
//!   another: one lying supernode can't move it. Kept per family.
//! - **NAT kind.** An observed IP that is our socket's own: no NAT.
//!   Otherwise, sessions dialed from the listening port (as
//!   `canopy_transfer::listen::connect_from` does) are compared: the same
//!   external port at two supernodes is an endpoint-independent mapping
//!   (port-preserving if it is our port), different ports an
//!   endpoint-dependent one (symmetric). Fewer than two: unknown (the last
//!   definite answer is kept). IPv4's sessions decide when there are any.
//! - **Reachable.** Yes if a supernode connected back to the port we
//!   announce now, no if every verdict for it failed (or we accept no
//!   connections at all), unknown before any verdict.
//! - **Announce.** The address to announce is the advertised one, else the
//!   mapped one, else the bound one. When it changes, or a confirmed public
//!   IP moves (reachability must be checked again at the new IP), every
//!   session announces it: at most once per [`ANNOUNCE_SPACING`], a change
//!   within it waiting for the end (so a flapping mapping makes no storm;
//!   supernodes ignore Announces closer than 30 s).
//!
//! I/O-free and deterministic: time comes in, [`Reachability::poll_timeout`]
//! says when to call [`Reachability::poll_action`] again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::addr_limits::{IpNet, prefix_of};
use crate::family::{Family, canonical, canonical_ip};
use crate::{ConnId, Time};

/// Announces are this far apart at least (a supernode takes one per leaf
/// every 30 s; the margin covers the trip).
pub const ANNOUNCE_SPACING: Duration = Duration::from_secs(35);

/// Sessions whose observations are kept; beyond, new ones are ignored
/// (a leaf keeps a handful).
const MAX_SESSIONS: usize = 64;

/// How a NAT maps our connections, as far as our supernodes show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Not enough sessions to tell.
    Unknown,
    /// Supernodes see the address our socket has: no NAT.
    None,
    /// Every supernode sees the same external port for our listening
    /// port: hole punching can work.
    EndpointIndependent {
        /// The external port is our own.
        port_preserving: bool,
    },
    /// Supernodes see different external ports: a symmetric NAT.
    EndpointDependent,
}

impl NatKind {
    /// A short name for status output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Unknown => "unknown",
            NatKind::None => "none",
            NatKind::EndpointIndependent {
                port_preserving: true,
            } => "endpoint_independent_port_preserving",
            NatKind::EndpointIndependent {
                port_preserving: false,
            } => "endpoint_independent",
            NatKind::EndpointDependent => "endpoint_dependent",
        }
    }
}

/// Whether others can connect to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reachable {
    /// No verdict yet for the address we announce.
    Unknown,
    /// A supernode connected back to it.
    Yes,
    /// Every supernode that tried failed, or we accept no connections.
    No,
}

impl Reachable {
    /// `yes`, `no` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Reachable::Unknown => "unknown",
            Reachable::Yes => "yes",
            Reachable::No => "no",
        }
    }
}

/// Our public IP in one family, as believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicAddr {
    /// The IP.
    pub ip: IpAddr,
    /// Two supernodes in different /24s (/48s) agreed on it; false: one
    /// supernode's word.
    pub confirmed: bool,
}

/// What the leaf knows of its reachability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachStatus {
    /// Connecting back to us works.
    pub reachable: Reachable,
    /// Our NAT's kind.
    pub nat: NatKind,
    /// Our public IP per family (IPv4 first).
    pub public: Vec<PublicAddr>,
    /// The address we announce, if we accept connections.
    pub announced: Option<SocketAddr>,
}

impl Default for ReachStatus {
    /// Nothing known yet.
    fn default() -> Self {
        Self {
            reachable: Reachable::Unknown,
            nat: NatKind::Unknown,
            public: Vec::new(),
            announced: None,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReachAction {
    /// Every session announces `addr` (a session that told its supernode
    /// this address already sends nothing unless `recheck`), and new
    /// sessions say it in their Hello.
    Announce {
        /// The listening address to announce.
        addr: SocketAddr,
        /// Send even if unchanged: our public IP moved, so supernodes must
        /// probe again.
        recheck: bool,
    },
}

/// One supernode session, as the driver reports it when it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The supernode's address (its IP's /24 or /48 is its group).
    pub supernode: SocketAddr,
    /// Where the supernode sees us connect from.
    pub observed: SocketAddr,
    /// Our end of the connection, if known.
    pub local: Option<SocketAddr>,
    /// The session was dialed from our listening port.
    pub from_listen_port: bool,
}

/// What the policy is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachConfig {
    /// The bound listening address; `None`: we accept no connections.
    pub bound: Option<SocketAddr>,
    /// An address announced instead of the bound or mapped one.
    pub advertise: Option<SocketAddr>,
    /// The external address a port mapping granted before start.
    pub mapped: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    observation: Observation,
    /// The latest connect-back verdict: reachable, at which port.
    verdict: Option<(bool, u16)>,
}

/// The policy. See the module documentation.
#[derive(Debug)]
pub struct Reachability {
    config: ReachConfig,
    sessions: BTreeMap<ConnId, Session>,
    /// Believed public IP per family: IPv4, IPv6.
    public: [Option<PublicAddr>; 2],
    /// The last definite NAT kind.
    nat: NatKind,
    /// The address to announce now.
    announced: Option<SocketAddr>,
    /// An Announce waits: with a recheck if true.
    pending: Option<bool>,
    /// When the last Announce went out.
    last_sent: Option<Time>,
    actions: VecDeque<ReachAction>,
}

impl Reachability {
    /// The policy at start: `config.mapped` (if any) is what the sessions'
    /// Hellos announce.
    pub fn new(config: ReachConfig) -> Self {
        let mut policy = Self {
            config,
            sessions: BTreeMap::new(),
            public: [None, None],
            nat: NatKind::Unknown,
            announced: None,
            pending: None,
            last_sent: None,
            actions: VecDeque::new(),
        };
        policy.announced = policy.wanted_addr();
        policy
    }

    /// The address sessions should announce now (and new ones in Hello).
    pub fn announced(&self) -> Option<SocketAddr> {
        self.announced
    }

    /// What we know.
    pub fn status(&self) -> ReachStatus {
        ReachStatus {
            reachable: self.reachable(),
            nat: self.nat,
            public: self.public.iter().flatten().copied().collect(),
            announced: self.announced,
        }
    }

    /// Session `session` joined a supernode.
    pub fn handle_joined(&mut self, session: ConnId, observation: Observation, now: Time) {
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&session) {
            return;
        }
        let observation = Observation {
            supernode: canonical(observation.supernode),
            observed: canonical(observation.observed),
            local: observation.local.map(canonical),
            ..observation
        };
        self.sessions.insert(
            session,
            Session {
                observation,
                verdict: None,
            },
        );
        self.update(now);
    }

    /// Session `session` ended: its claims go with it (what was believed
    /// stays).
    pub fn handle_ended(&mut self, session: ConnId, now: Time) {
        if self.sessions.remove(&session).is_some() {
            self.update(now);
        }
    }

    /// Session `session`'s supernode connected back to `probed` (or
    /// could not).
    pub fn handle_verdict(&mut self, session: ConnId, reachable: bool, probed: SocketAddr) {
        if let Some(state) = self.sessions.get_mut(&session) {
            state.verdict = Some((reachable, probed.port()));
        }
    }

    /// The port mapping now grants `external` (`None`: unmapped, lost or
    /// not yet).
    pub fn handle_mapping(&mut self, external: Option<SocketAddr>, now: Time) {
        if self.config.mapped != external {
            self.config.mapped = external;
            self.update(now);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self, now: Time) -> Option<ReachAction> {
        if let (Some(recheck), Some(addr)) = (self.pending, self.announced) {
            if self.poll_timeout().is_some_and(|due| now >= due) {
                self.pending = None;
                self.last_sent = Some(now);
                self.actions
                    .push_back(ReachAction::Announce { addr, recheck });
            }
        }
        self.actions.pop_front()
    }

    /// When a waiting Announce is due, if one waits.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.pending?;
        Some(match self.last_sent {
            Some(at) => at + ANNOUNCE_SPACING,
            None => Time::ZERO,
        })
    }

    /// Advertised, else mapped, else bound; nothing if we don't listen.
    fn wanted_addr(&self) -> Option<SocketAddr> {
        let bound = self.config.bound?;
        Some(
            self.config
                .advertise
                .or(self.config.mapped)
                .unwrap_or(bound),
        )
    }

    /// Recomputes beliefs after an input; schedules an Announce if the
    /// address to announce changed or a confirmed public IP moved.
    fn update(&mut self, _now: Time) {
        let mut moved = false;
        for family in [Family::V4, Family::V6] {
            moved |= self.update_public(family);
        }
        self.update_nat();
        let wanted = self.wanted_addr();
        if wanted != self.announced {
            self.announced = wanted;
            self.pending = Some(self.pending.unwrap_or(false));
        }
        if moved && self.announced.is_some() {
            self.pending = Some(true);
        }
        if self.announced.is_none() {
            self.pending = None;
        }
    }

    /// Updates the believed public IP of `family`; true if a believed IP
    /// moved to another.
    fn update_public(&mut self, family: Family) -> bool {
        let slot = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        // Per claimed IP, the supernode groups claiming it; and the claim
        // of the oldest session.
        let mut claims: BTreeMap<IpAddr, BTreeSet<IpNet>> = BTreeMap::new();
        let mut groups = BTreeSet::new();
        let mut oldest = None;
        for session in self.sessions.values() {
            let observed = session.observation.observed;
            if Family::of(observed) != family {
                continue;
            }
            let group = prefix_of(session.observation.supernode.ip());
            groups.insert(group);
            claims.entry(observed.ip()).or_default().insert(group);
            oldest.get_or_insert(observed.ip());
        }
        let current = self.public[slot];
        let agreed: Vec<(IpAddr, usize)> = claims
            .iter()
            .map(|(ip, groups)| (*ip, groups.len()))
            .filter(|(_, n)| *n >= 2)
            .collect();
        let next = if !agreed.is_empty() {
            // Agreement: keep ours if it is among the agreed, else the
            // best agreed (most groups; the lowest IP among equals).
            let keep = current.filter(|c| agreed.iter().any(|(ip, _)| *ip == c.ip));
            let ip = match keep {
                Some(c) => c.ip,
                None => {
                    let most = agreed.iter().map(|(_, n)| *n).max().unwrap_or(2);
                    agreed
                        .iter()
                        .find(|(_, n)| *n == most)
                        .map_or(IpAddr::from([0, 0, 0, 0]), |(ip, _)| *ip)
                }
            };
            Some(PublicAddr {
                ip,
                confirmed: true,
            })
        } else {
            match (current, groups.len()) {
                // A confirmed address moves only by agreement.
                (Some(c), _) if c.confirmed => Some(c),
                // One group: take its word, unconfirmed.
                (_, 1) => oldest.map(|ip| PublicAddr {
                    ip,
                    confirmed: false,
                }),
                // Disagreement, or nobody: keep what we had, else the
                // oldest session's word.
                (Some(c), _) => Some(c),
                (None, _) => oldest.map(|ip| PublicAddr {
                    ip,
                    confirmed: false,
                }),
            }
        };
        self.public[slot] = next;
        matches!((current, next), (Some(a), Some(b)) if a.ip != b.ip)
    }

    /// Tells the NAT's kind from the sessions, IPv4's if there are any.
    fn update_nat(&mut self) {
        let has_v4 = self
            .sessions
            .values()
            .any(|s| Family::of(s.observation.observed) == Family::V4);
        let family = if has_v4 { Family::V4 } else { Family::V6 };
        let mut direct = 0;
        let mut translated = 0;
        let mut listen_ports: BTreeMap<SocketAddr, (u16, Option<u16>)> = BTreeMap::new();
        for session in self.sessions.values() {
            let o = &session.observation;
            if Family::of(o.observed) != family {
                continue;
            }
            match o.local {
                Some(local) if canonical_ip(local.ip()) == o.observed.ip() => direct += 1,
                _ => {
                    translated += 1;
                    if o.from_listen_port {
                        listen_ports
                            .insert(o.supernode, (o.observed.port(), o.local.map(|l| l.port())));
                    }
                }
            }
        }
        let kind = if translated == 0 && direct > 0 {
            NatKind::None
        } else if listen_ports.len() >= 2 {
            let mut ports = listen_ports.values();
            let first = ports.next().copied();
            match first {
                Some((port, local)) if ports.all(|(p, _)| *p == port) => {
                    let ours = local.or(self.config.bound.map(|b| b.port()));
                    NatKind::EndpointIndependent {
                        port_preserving: ours == Some(port),
                    }
                }
                _ => NatKind::EndpointDependent,
            }
        } else {
            NatKind::Unknown
        };
        if kind != NatKind::Unknown {
            self.nat = kind;
        }
    }

    fn reachable(&self) -> Reachable {
        let Some(announced) = self.announced else {
            return Reachable::No;
        };
        let verdicts = self
            .sessions
            .values()
            .filter_map(|s| s.verdict)
            .filter(|(_, port)| *port == announced.port());
        let mut any = false;
        for (reachable, _) in verdicts {
            if reachable {
                return Reachable::Yes;
            }
            any = true;
        }
        if any {
            Reachable::No
        } else {
            Reachable::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const BOUND: &str = "192.168.1.10:6346";

    fn policy() -> Reachability {
        Reachability::new(ReachConfig {
            bound: Some(addr(BOUND)),
            advertise: None,
            mapped: None,
        })
    }

    /// Supernode `supernode` sees us at `observed`, dialed from our
    /// listening port on our LAN address.
    fn seen(supernode: &str, observed: &str) -> Observation {
        Observation {
            supernode: addr(supernode),
            observed: addr(observed),
            local: Some(addr(BOUND)),
            from_listen_port: true,
        }
    }

    fn drain(policy: &mut Reachability, now: Time) -> Vec<ReachAction> {
        std::iter::from_fn(|| policy.poll_action(now)).collect()
    }

    fn public(policy: &Reachability) -> Option<PublicAddr> {
        policy.status().public.first().copied()
    }

    #[test]
    fn one_supernode_is_believed_but_unconfirmed() {
        let mut p = policy();
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        assert_eq!(
            public(&p),
            Some(PublicAddr {
                ip: "203.0.113.5".parse().unwrap(),
                confirmed: false
            })
        );
    }

    #[test]
    fn two_groups_agreeing_confirm_the_address() {
        let mut p = policy();
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        // The same /24 is one party: not confirmation.
        p.handle_joined(
            ConnId(2),
            seen("198.51.100.2:6346", "203.0.113.5:6346"),
            Time(0),
        );
        assert!(!public(&p).unwrap().confirmed);
        p.handle_joined(
            ConnId(3),
            seen("192.0.2.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        assert!(public(&p).unwrap().confirmed);
        assert_eq!(
            public(&p).unwrap().ip,
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn one_liar_cannot_move_a_confirmed_address() {
        let mut p = policy();
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        p.handle_joined(
            ConnId(2),
            seen("192.0.2.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        drain(&mut p, Time(0));
        // A third says another IP; then one of the honest ones leaves.
        p.handle_joined(
            ConnId(3),
            seen("100.64.0.1:6346", "6.6.6.6:6346"),
            Time(1000),
        );
        p.handle_ended(ConnId(1), Time(2000));
        let believed = public(&p).unwrap();
        assert_eq!(believed.ip, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert!(believed.confirmed);
        assert_eq!(drain(&mut p, Time(2000)), vec![], "nothing to re-announce");
        // Two groups agreeing on a new IP move it, and reachability is
        // checked again there.
        p.handle_joined(
            ConnId(4),
            seen("198.18.0.1:6346", "6.6.6.6:6346"),
            Time(3000),
        );
        assert_eq!(public(&p).unwrap().ip, "6.6.6.6".parse::<IpAddr>().unwrap());
        assert_eq!(
            drain(&mut p, Time(3000)),
            vec![ReachAction::Announce {
                addr: addr(BOUND),
                recheck: true
            }]
        );
    }

    #[test]
    fn families_are_believed_apart() {
        let mut p = Reachability::new(ReachConfig {
            bound: Some(addr("[::]:6346")),
            advertise: None,
            mapped: None,
        });
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        p.handle_joined(
            ConnId(2),
            seen("[2001:db8:1::1]:6346", "[2001:db8:9::5]:6346"),
            Time(0),
        );
        let ips: Vec<String> = p.status().public.iter().map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, ["203.0.113.5", "2001:db8:9::5"]);
    }

    #[test]
    fn no_nat_when_the_observed_ip_is_our_own() {
        let mut p = policy();
        let mut direct = seen("198.51.100.1:6346", BOUND);
        direct.local = Some(addr(BOUND));
        p.handle_joined(ConnId(1), direct, Time(0));
        assert_eq!(p.status().nat, NatKind::None);
    }

    #[test]
    fn the_same_external_port_everywhere_is_endpoint_independent() {
        let mut p = policy();
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        assert_eq!(p.status().nat, NatKind::Unknown, "one session can't tell");
        p.handle_joined(
            ConnId(2),
            seen("192.0.2.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        assert_eq!(
            p.status().nat,
            NatKind::EndpointIndependent {
                port_preserving: true
            }
        );

        let mut q = policy();
        q.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:40001"),
            Time(0),
        );
        q.handle_joined(
            ConnId(2),
            seen("192.0.2.1:6346", "203.0.113.5:40001"),
            Time(0),
        );
        assert_eq!(
            q.status().nat,
            NatKind::EndpointIndependent {
                port_preserving: false
            }
        );
    }

    #[test]
    fn different_external_ports_are_a_symmetric_nat() {
        let mut p = policy();
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:40001"),
            Time(0),
        );
        p.handle_joined(
            ConnId(2),
            seen("192.0.2.1:6346", "203.0.113.5:40002"),
            Time(0),
        );
        assert_eq!(p.status().nat, NatKind::EndpointDependent);
        // The verdict stays when a session goes.
        p.handle_ended(ConnId(2), Time(1));
        assert_eq!(p.status().nat, NatKind::EndpointDependent);
    }

    #[test]
    fn sessions_not_from_the_listening_port_do_not_tell_the_kind() {
        let mut p = policy();
        let mut a = seen("198.51.100.1:6346", "203.0.113.5:40001");
        let mut b = seen("192.0.2.1:6346", "203.0.113.5:40002");
        a.from_listen_port = false;
        b.from_listen_port = false;
        p.handle_joined(ConnId(1), a, Time(0));
        p.handle_joined(ConnId(2), b, Time(0));
        assert_eq!(p.status().nat, NatKind::Unknown);
    }

    #[test]
    fn verdicts_for_the_announced_port_decide_reachability() {
        let mut p = policy();
        assert_eq!(p.status().reachable, Reachable::Unknown);
        p.handle_joined(
            ConnId(1),
            seen("198.51.100.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        p.handle_joined(
            ConnId(2),
            seen("192.0.2.1:6346", "203.0.113.5:6346"),
            Time(0),
        );
        p.handle_verdict(ConnId(1), false, addr("203.0.113.5:6346"));
        assert_eq!(p.status().reachable, Reachable::No);
        p.handle_verdict(ConnId(2), true, addr("203.0.113.5:6346"));
        assert_eq!(p.status().reachable, Reachable::Yes);
        // A verdict about another port (an older announcement) is stale.
        p.handle_mapping(Some(addr("203.0.113.5:41000")), Time(0));
        assert_eq!(p.status().reachable, Reachable::Unknown);
        // Unknown sessions' verdicts are ignored.
        p.handle_verdict(ConnId(9), true, addr("203.0.113.5:41000"));
        assert_eq!(p.status().reachable, Reachable::Unknown);

        let firewalled = Reachability::new(ReachConfig {
            bound: None,
            advertise: None,
            mapped: None,
        });
        assert_eq!(firewalled.status().reachable, Reachable::No);
        assert_eq!(firewalled.announced(), None);
    }

    #[test]
    fn a_mapping_granted_changed_or_lost_is_announced() {
        let mut p = policy();
        assert_eq!(p.announced(), Some(addr(BOUND)));
        assert_eq!(drain(&mut p, Time(0)), vec![], "the Hello said it");
        let mapped = addr("203.0.113.5:6346");
        p.handle_mapping(Some(mapped), Time(6_000));
        assert_eq!(p.announced(), Some(mapped));
        assert_eq!(
            drain(&mut p, Time(6_000)),
            vec![ReachAction::Announce {
                addr: mapped,
                recheck: false
            }]
        );
        // Renewed to another address: announced once the spacing allows.
        let renewed = addr("203.0.113.77:6346");
        p.handle_mapping(Some(renewed), Time(10_000));
        assert_eq!(drain(&mut p, Time(10_000)), vec![]);
        let due = p.poll_timeout().unwrap();
        assert_eq!(due, Time(6_000) + ANNOUNCE_SPACING);
        assert_eq!(
            drain(&mut p, due),
            vec![ReachAction::Announce {
                addr: renewed,
                recheck: false
            }]
        );
        // Lost: back to the bound address.
        p.handle_mapping(None, due + ANNOUNCE_SPACING);
        assert_eq!(
            drain(&mut p, due + ANNOUNCE_SPACING),
            vec![ReachAction::Announce {
                addr: addr(BOUND),
                recheck: false
            }]
        );
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn an_advertised_address_is_never_replaced() {
        let advertised = addr("198.51.100.200:7000");
        let mut p = Reachability::new(ReachConfig {
            bound: Some(addr(BOUND)),
            advertise: Some(advertised),
            mapped: None,
        });
        p.handle_mapping(Some(addr("203.0.113.5:6346")), Time(0));
        assert_eq!(p.announced(), Some(advertised));
        assert_eq!(drain(&mut p, Time(0)), vec![]);
    }

    #[test]
    fn a_flapping_mapping_makes_no_storm() {
        let mut p = policy();
        let mut sent = 0;
        // A mapping granted and lost every second for ten minutes.
        for second in 0..600u64 {
            let now = Time(second * 1000);
            let mapping = (second % 2 == 0).then(|| addr("203.0.113.5:6346"));
            p.handle_mapping(mapping, now);
            sent += drain(&mut p, now).len();
        }
        let most = 600 / ANNOUNCE_SPACING.as_secs() + 1;
        assert!(sent as u64 <= most, "{sent} announces, at most {most}");
        assert!(sent >= 2, "the changes are still announced: {sent}");
    }

    #[test]
    fn new_sessions_agreeing_with_us_announce_nothing() {
        let mut p = policy();
        for id in 0..20 {
            let supernode = format!("{}.0.0.1:6346", 10 + id);
            p.handle_joined(
                ConnId(id),
                seen(&supernode, "203.0.113.5:6346"),
                Time(id * 10),
            );
            p.handle_ended(ConnId(id), Time(id * 10 + 5));
        }
        assert_eq!(drain(&mut p, Time(1_000)), vec![]);
    }
}
