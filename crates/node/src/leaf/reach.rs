//! The leaf coordinator's hold on its reachability: feeds the core's
//! [`Reachability`] policy what the sessions hear (observed addresses,
//! connect-back verdicts) and what the port mapping does, and carries out
//! its Announces: new sessions say the address in their Hello, running
//! ones send an Announce, and [`super::LeafHandle::announced_addr`]
//! follows. The policy decides; this only relays.

use std::collections::HashMap;
use std::net::SocketAddr;

use canopy_core::ConnId;
use canopy_core::reachability::{Observation, ReachAction, ReachConfig, ReachStatus, Reachability};
use canopy_portmap::Status;
use tokio::sync::{mpsc, watch};

use super::LeafStatus;
use super::session::ToSession;
use crate::clock::Clock;

/// The policy and what it needs from the coordinator.
pub(super) struct ReachDriver {
    policy: Reachability,
    clock: Clock,
    /// The address announced now, shared with the handle.
    announced: watch::Sender<Option<SocketAddr>>,
    /// The port mapping as it changes, if one is attempted.
    mapping: Option<watch::Receiver<Status>>,
    /// The policy's id for each session, by supernode address.
    ids: HashMap<SocketAddr, ConnId>,
    next_id: u64,
}

impl ReachDriver {
    pub(super) fn new(
        config: ReachConfig,
        announced: watch::Sender<Option<SocketAddr>>,
        mapping: Option<watch::Receiver<Status>>,
    ) -> Self {
        Self {
            policy: Reachability::new(config),
            clock: Clock::new(),
            announced,
            mapping,
            ids: HashMap::new(),
            next_id: 0,
        }
    }

    /// What the policy knows now.
    pub(super) fn status(&self) -> ReachStatus {
        self.policy.status()
    }

    /// The address sessions announce now.
    pub(super) fn announced(&self) -> Option<SocketAddr> {
        self.policy.announced()
    }

    /// The session to `supernode` joined, seen from `observed`.
    pub(super) fn joined(
        &mut self,
        supernode: SocketAddr,
        observed: Option<SocketAddr>,
        local: Option<SocketAddr>,
        from_listen_port: bool,
    ) {
        self.next_id += 1;
        let id = ConnId(self.next_id);
        self.ids.insert(supernode, id);
        if let Some(observed) = observed {
            let observation = Observation {
                supernode,
                observed,
                local,
                from_listen_port,
            };
            self.policy.handle_joined(id, observation, self.clock.now());
        }
    }

    /// The supernode at `supernode` connected back to `probed`, or not.
    pub(super) fn verdict(&mut self, supernode: SocketAddr, reachable: bool, probed: SocketAddr) {
        if let Some(id) = self.ids.get(&supernode) {
            self.policy.handle_verdict(*id, reachable, probed);
        }
    }

    /// The session to `supernode` ended.
    pub(super) fn ended(&mut self, supernode: SocketAddr) {
        if let Some(id) = self.ids.remove(&supernode) {
            self.policy.handle_ended(id, self.clock.now());
        }
    }

    /// The port mapping changed to `status`.
    pub(super) fn mapping_changed(&mut self, status: Status) {
        let external = match status {
            Status::Mapped(addr) => Some(addr),
            Status::Pending | Status::Unmapped => None,
        };
        self.policy.handle_mapping(external, self.clock.now());
    }

    /// The port mapping's next status; never, if there is no mapping or
    /// its driver stopped.
    pub(super) async fn next_mapping(&mut self) -> Status {
        if let Some(mapping) = &mut self.mapping {
            if mapping.changed().await.is_ok() {
                return *mapping.borrow_and_update();
            }
            self.mapping = None;
        }
        std::future::pending().await
    }

    /// When the policy next has something to do, no later than
    /// `at_most` from now.
    pub(super) fn wake_at(&self, at_most: std::time::Duration) -> tokio::time::Instant {
        self.clock.wake_at(self.policy.poll_timeout(), at_most)
    }

    /// Carries out what the policy asks (Announces through `sessions`)
    /// and publishes the address and the status.
    pub(super) fn drive<'a>(
        &mut self,
        sessions: impl Iterator<Item = &'a mpsc::Sender<ToSession>> + Clone,
        status: &watch::Sender<LeafStatus>,
    ) {
        let now = self.clock.now();
        while let Some(action) = self.policy.poll_action(now) {
            match action {
                ReachAction::Announce { addr, recheck } => {
                    tracing::info!(%addr, recheck, "announcing our listening address to every supernode");
                    for session in sessions.clone() {
                        if session
                            .try_send(ToSession::Announce { addr, recheck })
                            .is_err()
                        {
                            tracing::debug!(%addr, "a session's inbox is full; its Announce is lost");
                        }
                    }
                }
            }
        }
        let announced = self.policy.announced();
        self.announced.send_if_modified(|current| {
            let changed = *current != announced;
            *current = announced;
            changed
        });
        let reach = self.policy.status();
        status.send_if_modified(|current| {
            let changed = current.reachability != reach;
            current.reachability = reach;
            changed
        });
    }
}
