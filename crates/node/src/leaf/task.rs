//! The leaf's coordinator: a thin driver of the core's
//! [`canopy_core::leaf_set::LeafSet`], which decides how many supernode
//! sessions to keep (two for a long-running leaf, so losing one supernode
//! loses no search coverage), whom to dial, when a lost one is replaced
//! (per-address backoff with jitter) and which session searches; this
//! task opens the sessions it names, sends every change of shares to all
//! of them, sends searches and pushes through the one it picks, and
//! resolves the bootstrap names when told. It sleeps until the set's or
//! the reachability policy's next deadline, woken early by sessions'
//! news, commands and the LAN, and saves the host cache at least every
//! [`MAX_SLEEP`].
//!
//! Candidates come from the host cache (the core's address manager): the
//! configured supernodes first, always, then supernodes learned from the
//! answers to our Pings and from try-lists, drawn from its tried and new
//! tables. Sessions report back: a handshake marks its supernode tried, a
//! failed dial counts against it. With LAN discovery on, the supernodes
//! heard on the LAN are offered like seeds (after the configured and
//! bootstrap ones) while they are heard, and every node heard is in the
//! status. A leaf listening dual-stack (`[::]`) opens its second session
//! in the family its first is not in, when the cache has such a
//! supernode, so hits name it in both and dual-stack downloaders reach it
//! over IPv6 (`canopy_core::family::missing_family`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::leaf_set::{LeafSet, LeafSetAction, LeafSetConfig, SessionEnd as End};
use canopy_core::rng::SplitMix64;
use canopy_proto::SharedFile;
use canopy_transfer::listen::any_dual_stack;
use tokio::sync::{mpsc, watch};

use super::reach::ReachDriver;
use super::session::{self, FromSession, SessionContext, SessionEnd, ToSession};
use super::{Command, LeafOptions, LeafStatus};
use crate::NodeError;
use crate::addr::resolve_all;
use crate::clock::Clock;
use crate::hosts::HostCache;
use crate::lan::LanView;

/// The longest the coordinator sleeps (the host cache is saved then).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Bootstrap names are resolved again at most this often.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// A resolution taking longer is given up (it finds nothing).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

struct Link {
    to_session: mpsc::Sender<ToSession>,
    /// Its supernode relays.
    relays: bool,
}

pub(super) struct LeafTask {
    pub(super) options: LeafOptions,
    pub(super) context: SessionContext,
    pub(super) files: Vec<SharedFile>,
    pub(super) status: watch::Sender<LeafStatus>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) hosts: HostCache,
    /// What LAN discovery hears, if it is on.
    pub(super) lan: Option<watch::Receiver<LanView>>,
    /// Our reachability: observed addresses, verdicts, the port mapping.
    pub(super) reach: ReachDriver,
}

struct Running {
    /// The policy: which sessions, which one searches.
    set: LeafSet,
    clock: Clock,
    links: HashMap<SocketAddr, Link>,
    news_tx: mpsc::Sender<FromSession>,
    last_failure: Option<String>,
    resolved_tx: mpsc::Sender<Vec<SocketAddr>>,
}

impl LeafTask {
    pub(super) async fn run(mut self) {
        let (news_tx, mut news) = mpsc::channel(256);
        let (resolved_tx, mut resolved) = mpsc::channel(1);
        let dual_stack = self
            .options
            .listen
            .is_some_and(|l| l == any_dual_stack(l.port()));
        let config = LeafSetConfig {
            dual_stack,
            bootstrap: !self.options.bootstrap.is_empty(),
            resolve_interval: RESOLVE_INTERVAL,
            ..LeafSetConfig::new(self.options.supernodes_wanted)
        };
        let mut running = Running {
            set: LeafSet::new(config, SplitMix64::new(rand::random())),
            clock: Clock::new(),
            links: HashMap::new(),
            news_tx,
            last_failure: None,
            resolved_tx,
        };
        let mut lan = self.lan.take();
        loop {
            self.fill(&mut running);
            let wake = running
                .clock
                .wake_at(running.set.poll_timeout(), MAX_SLEEP)
                .min(self.reach.wake_at(MAX_SLEEP));
            tokio::select! {
                biased;
                // Sessions watch the same token and say Bye themselves.
                _ = self.context.shutdown.cancelled() => break,
                Some(event) = news.recv() => {
                    if !self.on_news(&mut running, event) {
                        break;
                    }
                }
                Some(addrs) = resolved.recv() => {
                    if !self.on_resolved(&mut running, addrs) {
                        break;
                    }
                }
                mapping = self.reach.next_mapping() => {
                    self.reach.mapping_changed(mapping);
                    self.drive_reach(&running);
                }
                Some(view) = next_view(&mut lan) => {
                    self.hosts.set_lan(&view.supernodes);
                    running.set.set_lan_ids(
                        view.peers
                            .iter()
                            .filter_map(|p| Some((p.overlay_addr()?, p.node_id))),
                    );
                    self.status.send_modify(|s| s.lan_peers = view.peers);
                }
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(&running, command).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    self.drive_reach(&running);
                    if let Err(error) = self.hosts.save() {
                        tracing::debug!(%error, "could not save the host cache");
                    }
                }
            }
        }
        if let Err(error) = self.hosts.save() {
            tracing::debug!(%error, "could not save the host cache");
        }
    }

    /// Lets the set open sessions (until the wanted number are open or
    /// opening) and ask for the bootstrap names to be resolved.
    fn fill(&mut self, running: &mut Running) {
        running
            .set
            .handle_timeout(running.clock.now(), &mut self.hosts);
        while let Some(action) = running.set.poll_action() {
            match action {
                LeafSetAction::Open(addr) => {
                    tracing::debug!(%addr, "dialing supernode");
                    let to_session = session::spawn(
                        addr,
                        self.files.clone(),
                        self.context.clone(),
                        running.news_tx.clone(),
                    );
                    running.links.insert(
                        addr,
                        Link {
                            to_session,
                            relays: false,
                        },
                    );
                }
                LeafSetAction::Resolve => self.resolve_bootstrap(running),
            }
        }
    }

    /// Resolves the bootstrap names in the background (the set asks for
    /// one resolution at a time).
    fn resolve_bootstrap(&self, running: &Running) {
        let names = self.options.bootstrap.clone();
        let resolved_tx = running.resolved_tx.clone();
        let shutdown = self.context.shutdown.clone();
        self.context.tracker.spawn(async move {
            let resolving = tokio::time::timeout(RESOLVE_TIMEOUT, resolve_all(&names));
            let addrs = tokio::select! {
                _ = shutdown.cancelled() => return,
                resolved = resolving => resolved.unwrap_or_default(),
            };
            let _ = resolved_tx.send(addrs).await;
        });
    }

    /// The bootstrap names resolved to `addrs`; false when a one-shot leaf
    /// has nothing left to try.
    fn on_resolved(&mut self, running: &mut Running, addrs: Vec<SocketAddr>) -> bool {
        running.set.handle_resolved(running.clock.now());
        tracing::info!(found = addrs.len(), addrs = ?addrs, "bootstrap names resolved");
        self.hosts.set_bootstrap(&addrs);
        if addrs.is_empty() {
            let names: Vec<String> = self
                .options
                .bootstrap
                .iter()
                .map(|n| n.to_string())
                .collect();
            running.last_failure = Some(format!(
                "no address found for bootstrap {}",
                names.join(", ")
            ));
        }
        if !self.options.reconnect && !self.has_prospects(running) {
            let failure = running.last_failure.take();
            self.status.send_modify(|s| s.failure = failure);
            return false;
        }
        true
    }

    /// Handles a session's news; false when a one-shot leaf gives up.
    fn on_news(&mut self, running: &mut Running, event: FromSession) -> bool {
        match event {
            FromSession::Ready {
                addr,
                node_id,
                observed,
                local,
                from_listen_port,
                relays,
            } => {
                self.reach.joined(addr, observed, local, from_listen_port);
                if let Some(link) = running.links.get_mut(&addr) {
                    link.relays = relays;
                }
                running.set.handle_ready(addr, node_id);
                self.hosts.mark_good(addr);
                self.status.send_modify(|s| {
                    s.observed_addr = observed.or(s.observed_addr);
                    s.failure = None;
                });
                self.publish_status(running);
                self.drive_reach(running);
            }
            FromSession::Verdict {
                addr,
                reachable,
                probed,
            } => {
                self.reach.verdict(addr, reachable, probed);
                self.drive_reach(running);
            }
            FromSession::Learned { addr, supernodes } => {
                if self.hosts.learn(addr, &supernodes) > 0 {
                    running.set.handle_candidates();
                }
            }
            FromSession::Ended { addr, end } => {
                running.links.remove(&addr);
                self.reach.ended(addr);
                self.drive_reach(running);
                let (failure, ended) = match end {
                    SessionEnd::Shutdown => {
                        running
                            .set
                            .handle_ended(addr, End::Shutdown, running.clock.now());
                        self.publish_status(running);
                        return !self.context.shutdown.is_cancelled();
                    }
                    SessionEnd::Unreachable(reason) => (
                        format!("cannot reach supernode {addr}: {reason}"),
                        End::Unreachable,
                    ),
                    SessionEnd::Closed { lasted } => (
                        format!("supernode {addr} closed the connection"),
                        End::Closed { lasted },
                    ),
                    SessionEnd::Rejected(try_list) => {
                        // An answer to our own dial: believed (within limits).
                        self.hosts.learn(addr, &try_list);
                        (format!("supernode {addr} refused us"), End::Rejected)
                    }
                };
                // The policy backs the address off and says whether the
                // end counts against it (never joined, and not refused).
                if running.set.handle_ended(addr, ended, running.clock.now()) {
                    self.hosts.mark_failed(addr);
                }
                self.publish_status(running);
                tracing::info!(reason = %failure, "supernode session ended");
                running.last_failure = Some(failure);
                if !self.options.reconnect && !self.has_prospects(running) {
                    let failure = running.last_failure.take();
                    self.status.send_modify(|s| s.failure = failure);
                    return false;
                }
            }
        }
        true
    }

    /// Lets the reachability policy act: new sessions' Hellos carry the
    /// address it announces, running sessions are told of a change.
    fn drive_reach(&mut self, running: &Running) {
        self.reach.drive(
            running.links.values().map(|link| &link.to_session),
            &self.status,
        );
        self.context.identity.listen_addr = self.reach.announced();
    }

    /// For a one-shot leaf: is anything connected, connecting, being
    /// resolved, or untried?
    fn has_prospects(&self, running: &Running) -> bool {
        running.set.has_prospects(self.hosts.addresses())
    }

    fn publish_status(&self, running: &Running) {
        let ready: Vec<SocketAddr> = running.set.ready().collect();
        let relays: Vec<SocketAddr> = ready
            .iter()
            .copied()
            .filter(|addr| running.links.get(addr).is_some_and(|link| link.relays))
            .collect();
        self.status.send_modify(|s| {
            s.connected_to = running.set.search_via();
            s.supernodes = ready;
            s.relays = relays;
        });
    }

    /// The session searches and pushes go through: the one the set picks.
    fn ready_session(&self, running: &Running) -> Option<mpsc::Sender<ToSession>> {
        let addr = running.set.search_via()?;
        running.links.get(&addr).map(|link| link.to_session.clone())
    }

    async fn on_command(&mut self, running: &Running, command: Command) {
        match command {
            Command::Search(start) => match self.ready_session(running) {
                Some(session) => {
                    if let Err(mpsc::error::SendError(ToSession::Search(start))) =
                        session.send(ToSession::Search(start)).await
                    {
                        start.refuse(NodeError::NotConnected(
                            "the supernode session ended".into(),
                        ));
                    }
                }
                None => start.refuse(NodeError::NotConnected(
                    "not connected to a supernode".into(),
                )),
            },
            Command::Push(push) => match push.via {
                Some(via) => match running
                    .links
                    .get(&via)
                    .filter(|_| running.set.ready().any(|addr| addr == via))
                {
                    Some(link) => {
                        if let Err(mpsc::error::SendError(ToSession::Push(push))) =
                            link.to_session.send(ToSession::Push(push)).await
                        {
                            let _ = push.reply.send(Err(NodeError::NotConnected(
                                "the supernode session ended".into(),
                            )));
                        }
                    }
                    None => {
                        let _ = push.reply.send(Err(NodeError::NotConnected(format!(
                            "not connected to supernode {via}"
                        ))));
                    }
                },
                None => self.push_anywhere(running, push).await,
            },
            Command::Shares(files) => self.publish(running, files).await,
        }
    }

    /// Sends `push` through the first ready session.
    async fn push_anywhere(&self, running: &Running, push: super::PushRequest) {
        match self.ready_session(running) {
            Some(session) => {
                if let Err(mpsc::error::SendError(ToSession::Push(push))) =
                    session.send(ToSession::Push(push)).await
                {
                    let _ = push.reply.send(Err(NodeError::NotConnected(
                        "the supernode session ended".into(),
                    )));
                }
            }
            None => {
                let _ = push.reply.send(Err(NodeError::NotConnected(
                    "not connected to a supernode".into(),
                )));
            }
        }
    }

    /// Publishes `files` through every session, and to sessions yet to open.
    async fn publish(&mut self, running: &Running, files: Vec<SharedFile>) {
        let whole = files.iter().filter(|f| f.available.is_none()).count();
        self.status.send_modify(|s| s.shared_files = whole);
        for link in running.links.values() {
            let _ = link.to_session.send(ToSession::Shares(files.clone())).await;
        }
        self.files = files;
    }
}

/// The LAN's next view; never, if LAN discovery is off or has stopped.
async fn next_view(lan: &mut Option<watch::Receiver<LanView>>) -> Option<LanView> {
    if let Some(view) = lan {
        if view.changed().await.is_ok() {
            return Some(view.borrow_and_update().clone());
        }
    }
    std::future::pending().await
}
