//! Hole punching's schedule: when to dial, for how long, which way won.
//!
//! Two leaves that both sit behind NATs can't dial each other: each NAT
//! drops what it did not see asked for. If both dial at once, from the
//! ports the other dials, each NAT sees its own side's SYN go out first
//! and lets the other's in as the answer: a TCP simultaneous open (or, if
//! one side's SYN arrives while the other has no dial in flight, an
//! ordinary accept on the listening port). Both sides run a [`Punch`]:
//! the downloader from the moment it sends its Push (with `punch` set),
//! the source from the moment the Push arrives.
//!
//! A dial is attempted every [`PunchConfig::interval`]; each attempt has
//! until the next to complete, when the driver abandons it (a socket
//! still in SYN-SENT closes silently) and dials afresh, so a fresh SYN
//! leaves at most once per interval whatever the network answers. A
//! refused dial waits for its slot too. After [`PunchConfig::window`]
//! with no connection the punch gives up. The first connection ends it,
//! our own dial ([`Won::Dialed`]) or one the other side made to our
//! listening port ([`Won::Accepted`]); the driver drops the rest.
//!
//! No I/O and no clock: time comes in as [`Time`], the driver sleeps
//! until [`Punch::poll_timeout`] and asks [`Punch::poll_action`].

use std::time::Duration;

use crate::Time;

/// Between two dials of the downloader's punch.
pub const ATTEMPT_INTERVAL: Duration = Duration::from_millis(250);
/// Between two dials of the source's punch: not the downloader's, so the
/// two schedules drift past each other. With equal intervals they lock in
/// phase: the downloader dials as it sends its Push and the source as the
/// Push arrives, so when the Push's trip is about as long as a SYN's,
/// every SYN of the downloader reaches the source just as the source
/// abandons its dial for the next, and the connection the NATs let
/// through is dropped at every attempt (seen on the home testnet in about
/// half the runs).
pub const SOURCE_ATTEMPT_INTERVAL: Duration = Duration::from_millis(300);
/// How long a source dials a downloader that asked for a punch.
pub const SOURCE_WINDOW: Duration = Duration::from_secs(8);
/// How long a downloader dials a source: longer than the source's, since
/// it starts before its Push has crossed the overlay.
pub const DOWNLOADER_WINDOW: Duration = Duration::from_secs(10);
/// Punches a leaf runs at once for the pushes it was sent; more are
/// ignored (each sends a SYN every [`ATTEMPT_INTERVAL`]).
pub const MAX_PUNCHES_AT_ONCE: usize = 8;
/// Punches a leaf's downloads run at once (one per connection wanted from
/// a firewalled source); more wait for one to end.
pub const MAX_DOWNLOAD_PUNCHES_AT_ONCE: usize = 16;

/// A punch's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchConfig {
    /// Between two dials (at least 10 ms).
    pub interval: Duration,
    /// From the first dial to giving up.
    pub window: Duration,
}

impl PunchConfig {
    /// The source's side: dialing the downloader's callback.
    pub const fn source() -> Self {
        Self {
            interval: SOURCE_ATTEMPT_INTERVAL,
            window: SOURCE_WINDOW,
        }
    }

    /// The downloader's side: dialing the source's address.
    pub const fn downloader() -> Self {
        Self {
            interval: ATTEMPT_INTERVAL,
            window: DOWNLOADER_WINDOW,
        }
    }
}

/// What the driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Abandon the dial in flight, if any, and dial again (attempt
    /// `attempt`, from 1); it may take until the next one.
    Dial {
        /// Which attempt this is.
        attempt: u32,
    },
    /// The window closed without a connection: drop every dial, fail.
    GiveUp,
}

/// Which connection ended the punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Won {
    /// Our own dial completed (a simultaneous open when the other side
    /// dialed too).
    Dialed {
        /// The attempt that connected.
        attempt: u32,
    },
    /// The other side's dial reached our listening port.
    Accepted,
}

/// How a punch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected, this way, this long after the start.
    Connected {
        /// Which way.
        won: Won,
        /// From the start.
        after: Duration,
    },
    /// The window closed after this many dials.
    GaveUp {
        /// Dials made.
        attempts: u32,
    },
}

/// One punch's schedule. See the module docs.
#[derive(Debug, Clone)]
pub struct Punch {
    config: PunchConfig,
    started: Time,
    /// When the next dial is due.
    next: Time,
    attempts: u32,
    outcome: Option<Outcome>,
}

impl Punch {
    /// A punch starting at `now`: its first dial is due at once.
    pub fn new(mut config: PunchConfig, now: Time) -> Self {
        config.interval = config.interval.max(Duration::from_millis(10));
        Self {
            config,
            started: now,
            next: now,
            attempts: 0,
            outcome: None,
        }
    }

    /// When the window closes.
    pub fn deadline(&self) -> Time {
        self.started + self.config.window
    }

    /// What to do at `now`, if anything; nothing once it ended (and
    /// [`Action::GiveUp`] exactly once, when the window closes).
    pub fn poll_action(&mut self, now: Time) -> Option<Action> {
        if self.outcome.is_some() {
            return None;
        }
        if now >= self.deadline() {
            self.outcome = Some(Outcome::GaveUp {
                attempts: self.attempts,
            });
            return Some(Action::GiveUp);
        }
        if now < self.next {
            return None;
        }
        self.attempts += 1;
        // A late driver does not catch up with a burst: the next dial is
        // an interval after this one.
        self.next = now + self.config.interval;
        Some(Action::Dial {
            attempt: self.attempts,
        })
    }

    /// When to call [`Self::poll_action`] next; `None` once it ended.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.outcome.is_some() {
            return None;
        }
        Some(self.next.min(self.deadline()))
    }

    /// A connection came, `won` this way: the punch ends (the first one
    /// counts; later ones and those after giving up are ignored).
    pub fn handle_connected(&mut self, won: Won, now: Time) {
        if self.outcome.is_none() {
            self.outcome = Some(Outcome::Connected {
                won,
                after: now.since(self.started),
            });
        }
    }

    /// How it ended, once it did.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Dials made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Time {
        Time(millis)
    }

    /// Every action until it ends, polling at each timeout.
    fn run(punch: &mut Punch, until: Time) -> Vec<(u64, Action)> {
        let mut seen = Vec::new();
        while let Some(wake) = punch.poll_timeout() {
            if wake > until {
                break;
            }
            while let Some(action) = punch.poll_action(wake) {
                seen.push((wake.as_millis(), action));
            }
        }
        seen
    }

    #[test]
    fn dials_at_once_then_every_interval_and_gives_up_at_the_window() {
        let config = PunchConfig {
            interval: Duration::from_millis(250),
            window: Duration::from_secs(1),
        };
        let mut punch = Punch::new(config, ms(1000));
        let seen = run(&mut punch, ms(10_000));
        assert_eq!(
            seen,
            vec![
                (1000, Action::Dial { attempt: 1 }),
                (1250, Action::Dial { attempt: 2 }),
                (1500, Action::Dial { attempt: 3 }),
                (1750, Action::Dial { attempt: 4 }),
                (2000, Action::GiveUp),
            ]
        );
        assert_eq!(punch.outcome(), Some(Outcome::GaveUp { attempts: 4 }));
        assert_eq!(punch.poll_timeout(), None);
        assert_eq!(punch.poll_action(ms(5000)), None, "GiveUp only once");
    }

    #[test]
    fn nothing_is_due_between_attempts() {
        let mut punch = Punch::new(PunchConfig::downloader(), ms(0));
        assert_eq!(punch.poll_action(ms(0)), Some(Action::Dial { attempt: 1 }));
        assert_eq!(punch.poll_action(ms(0)), None);
        assert_eq!(punch.poll_action(ms(249)), None);
        assert_eq!(punch.poll_timeout(), Some(ms(250)));
        assert_eq!(
            punch.poll_action(ms(250)),
            Some(Action::Dial { attempt: 2 })
        );
    }

    #[test]
    fn a_late_driver_gets_one_dial_not_a_burst() {
        let mut punch = Punch::new(PunchConfig::downloader(), ms(0));
        assert_eq!(punch.poll_action(ms(0)), Some(Action::Dial { attempt: 1 }));
        // Woken a second late: one dial, and the next an interval on.
        assert_eq!(
            punch.poll_action(ms(1000)),
            Some(Action::Dial { attempt: 2 })
        );
        assert_eq!(punch.poll_action(ms(1000)), None);
        assert_eq!(punch.poll_timeout(), Some(ms(1250)));
    }

    #[test]
    fn the_first_connection_wins_and_ends_it() {
        let mut punch = Punch::new(PunchConfig::downloader(), ms(0));
        let seen = run(&mut punch, ms(600));
        assert_eq!(seen.len(), 3, "dials at 0, 250 and 500: {seen:?}");
        punch.handle_connected(Won::Dialed { attempt: 3 }, ms(620));
        punch.handle_connected(Won::Accepted, ms(630));
        assert_eq!(
            punch.outcome(),
            Some(Outcome::Connected {
                won: Won::Dialed { attempt: 3 },
                after: Duration::from_millis(620),
            })
        );
        assert_eq!(punch.poll_timeout(), None);
        assert_eq!(punch.poll_action(ms(20_000)), None, "no GiveUp after a win");
        assert_eq!(punch.attempts(), 3);
    }

    #[test]
    fn an_accept_before_any_dial_wins_too() {
        let mut punch = Punch::new(PunchConfig::source(), ms(0));
        punch.handle_connected(Won::Accepted, ms(0));
        assert_eq!(punch.poll_action(ms(0)), None);
        assert!(matches!(
            punch.outcome(),
            Some(Outcome::Connected {
                won: Won::Accepted,
                ..
            })
        ));
    }

    #[test]
    fn a_connection_after_giving_up_changes_nothing() {
        let mut punch = Punch::new(PunchConfig::source(), ms(0));
        let seen = run(&mut punch, ms(60_000));
        assert_eq!(seen.last(), Some(&(8000, Action::GiveUp)));
        assert_eq!(seen.len(), 28, "27 dials in 8 s, then GiveUp");
        punch.handle_connected(Won::Accepted, ms(8001));
        assert_eq!(punch.outcome(), Some(Outcome::GaveUp { attempts: 27 }));
    }

    #[test]
    fn the_two_sides_schedules_do_not_lock_in_phase() {
        // The source starts as the Push arrives, here 1 ms after the
        // downloader, whose SYNs take no time: they would reach it 1 ms
        // before each of its dials is abandoned if both kept one interval.
        let downloader: Vec<u64> = run(
            &mut Punch::new(PunchConfig::downloader(), ms(0)),
            ms(60_000),
        )
        .into_iter()
        .filter(|(_, action)| matches!(action, Action::Dial { .. }))
        .map(|(at, _)| at)
        .collect();
        let source: Vec<u64> = run(&mut Punch::new(PunchConfig::source(), ms(1)), ms(60_000))
            .into_iter()
            .map(|(at, _)| at)
            .collect();
        // How far from the source's next dial (when its dial in flight
        // is dropped) each of the downloader's SYNs arrives.
        let room = |arrives: u64| {
            source
                .iter()
                .find(|&&next| next > arrives)
                .map(|next| next - arrives)
        };
        let roomy = downloader
            .iter()
            .filter_map(|&at| room(at))
            .filter(|&left| left >= 50)
            .count();
        assert!(
            roomy >= 10,
            "SYNs arriving 50 ms or more before the source redials: {roomy}"
        );
    }

    #[test]
    fn the_interval_has_a_floor() {
        let config = PunchConfig {
            interval: Duration::ZERO,
            window: Duration::from_millis(100),
        };
        let mut punch = Punch::new(config, ms(0));
        let seen = run(&mut punch, ms(1000));
        assert_eq!(seen.len(), 11, "10 dials 10 ms apart, then GiveUp");
    }
}
