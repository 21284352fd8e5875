//! The leaf's coordinator: keeps the wanted number of supernode sessions
//! (two for a long-running leaf), so losing one supernode loses no search
//! coverage; sends every change of shares to all of them; sends searches
//! and pushes through one that is ready; and chooses whom to dial.
//!
//! Candidates come from the host cache (the core's address manager): the
//! configured supernodes first, always, then supernodes learned from the
//! answers to our Pings and from try-lists, drawn from its tried and new
//! tables. Sessions report back: a handshake marks its supernode tried, a
//! failed dial counts against it. A supernode that failed waits out an
//! exponential backoff before it is tried again. With LAN discovery on,
//! the supernodes heard on the LAN are offered like seeds (after the
//! configured and bootstrap ones) while they are heard, and every node
//! heard is in the status. A leaf listening dual-stack (`[::]`) opens its second session in the family its first
//! is not in, when the cache has such a supernode, so hits name it in
//! both and dual-stack downloaders reach it over IPv6
//! (`canopy_core::family::missing_family`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::backoff::Backoff;
use canopy_core::family::{Family, missing_family};
use canopy_proto::{NodeId, SharedFile};
use canopy_transfer::listen::any_dual_stack;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::reach::ReachDriver;
use super::session::{self, FromSession, SessionContext, SessionEnd, ToSession};
use super::{Command, LeafOptions, LeafStatus};
use crate::NodeError;
use crate::addr::resolve_all;
use crate::hosts::HostCache;
use crate::lan::LanView;

/// How often the coordinator looks for sessions to open.
const TICK: Duration = Duration::from_millis(250);
/// Supernodes whose backoff is remembered, past which the expired ones
/// are forgotten.
const MAX_RETRIES: usize = 2048;
/// A session that lasted this long resets its supernode's backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Bootstrap names are resolved again at most this often.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// A resolution taking longer is given up (it finds nothing).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

struct Link {
    to_session: mpsc::Sender<ToSession>,
    ready: bool,
    /// Its supernode relays.
    relays: bool,
    /// The supernode's node id, once joined.
    node_id: Option<NodeId>,
}

struct Retry {
    not_before: Instant,
    backoff: Backoff,
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
    links: HashMap<SocketAddr, Link>,
    retries: HashMap<SocketAddr, Retry>,
    news_tx: mpsc::Sender<FromSession>,
    last_failure: Option<String>,
    bootstrap: Bootstrap,
    /// The node ids of the supernodes LAN discovery hears, by address: one
    /// we are joined to at another address (a supernode on this machine,
    /// configured as localhost) is not dialed again.
    lan_ids: HashMap<SocketAddr, NodeId>,
}

/// Where the resolution of the bootstrap names is.
struct Bootstrap {
    resolving: bool,
    last: Option<Instant>,
    resolved_tx: mpsc::Sender<Vec<SocketAddr>>,
}

impl LeafTask {
    pub(super) async fn run(mut self) {
        let (news_tx, mut news) = mpsc::channel(256);
        let (resolved_tx, mut resolved) = mpsc::channel(1);
        let mut running = Running {
            links: HashMap::new(),
            retries: HashMap::new(),
            news_tx,
            last_failure: None,
            lan_ids: HashMap::new(),
            bootstrap: Bootstrap {
                resolving: false,
                last: None,
                resolved_tx,
            },
        };
        self.resolve_bootstrap(&mut running);
        let mut lan = self.lan.take();
        let mut tick = tokio::time::interval(TICK);
        loop {
            self.fill(&mut running);
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
                    running.lan_ids = view
                        .peers
                        .iter()
                        .filter_map(|p| Some((p.overlay_addr()?, p.node_id)))
                        .collect();
                    self.status.send_modify(|s| s.lan_peers = view.peers);
                }
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(&running, command).await,
                    None => break,
                },
                _ = tick.tick() => {
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

    /// Opens sessions until the wanted number are open or connecting.
    fn fill(&mut self, running: &mut Running) {
        let now = Instant::now();
        let dual_stack = self
            .options
            .listen
            .is_some_and(|l| l == any_dual_stack(l.port()));
        while running.links.len() < self.options.supernodes_wanted {
            let joined_elsewhere = |addr: &SocketAddr| {
                running
                    .lan_ids
                    .get(addr)
                    .is_some_and(|id| running.links.values().any(|link| link.node_id == Some(*id)))
            };
            let skip = |addr: SocketAddr| {
                running.links.contains_key(&addr)
                    || joined_elsewhere(&addr)
                    || running
                        .retries
                        .get(&addr)
                        .is_some_and(|r| r.not_before > now)
            };
            let wanted = dual_stack
                .then(|| missing_family(running.links.keys().copied()))
                .flatten();
            let next = wanted
                .and_then(|family| {
                    self.hosts
                        .select(|addr| skip(addr) || Family::of(addr) != family)
                })
                .or_else(|| self.hosts.select(skip));
            let Some(addr) = next else {
                // No one left to dial: ask the DNS seeds again.
                let last = running.bootstrap.last;
                if last.is_none_or(|last| now.duration_since(last) >= RESOLVE_INTERVAL) {
                    self.resolve_bootstrap(running);
                }
                break;
            };
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
                    ready: false,
                    relays: false,
                    node_id: None,
                },
            );
        }
    }

    /// Resolves the bootstrap names in the background, unless there are
    /// none or a resolution is running.
    fn resolve_bootstrap(&self, running: &mut Running) {
        if self.options.bootstrap.is_empty() || running.bootstrap.resolving {
            return;
        }
        running.bootstrap.resolving = true;
        running.bootstrap.last = Some(Instant::now());
        let names = self.options.bootstrap.clone();
        let resolved_tx = running.bootstrap.resolved_tx.clone();
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
        running.bootstrap.resolving = false;
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
                    link.ready = true;
                    link.relays = relays;
                    link.node_id = Some(node_id);
                }
                running.retries.remove(&addr);
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
                self.hosts.learn(addr, &supernodes);
            }
            FromSession::Ended { addr, end } => {
                let joined = running.links.remove(&addr).is_some_and(|link| link.ready);
                self.reach.ended(addr);
                self.drive_reach(running);
                // A refusal is an answer (full, say), not a failure to reach.
                let refused = matches!(end, SessionEnd::Rejected(_));
                self.publish_status(running);
                let (failure, stable) = match end {
                    SessionEnd::Shutdown => return !self.context.shutdown.is_cancelled(),
                    SessionEnd::Unreachable(reason) => {
                        (format!("cannot reach supernode {addr}: {reason}"), false)
                    }
                    SessionEnd::Closed { lasted } => (
                        format!("supernode {addr} closed the connection"),
                        lasted > STABLE_SESSION,
                    ),
                    SessionEnd::Rejected(try_list) => {
                        // An answer to our own dial: believed (within limits).
                        self.hosts.learn(addr, &try_list);
                        (format!("supernode {addr} refused us"), false)
                    }
                };
                if !joined && !refused {
                    self.hosts.mark_failed(addr);
                }
                tracing::info!(reason = %failure, "supernode session ended");
                let retry = running.retries.entry(addr).or_insert_with(|| Retry {
                    not_before: Instant::now(),
                    backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
                });
                if stable {
                    retry.backoff.reset();
                }
                retry.not_before = Instant::now() + retry.backoff.next_delay(rand::random::<f64>());
                if running.retries.len() > MAX_RETRIES {
                    // Only those still waiting matter.
                    let now = Instant::now();
                    running.retries.retain(|_, r| r.not_before > now);
                }
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

    /// For a one-shot leaf: is anything connected, connecting, or untried?
    fn has_prospects(&self, running: &Running) -> bool {
        !running.links.is_empty()
            || running.bootstrap.resolving
            || self
                .hosts
                .addresses()
                .any(|addr| !running.retries.contains_key(&addr))
    }

    fn publish_status(&self, running: &Running) {
        let mut ready: Vec<SocketAddr> = running
            .links
            .iter()
            .filter(|(_, link)| link.ready)
            .map(|(addr, _)| *addr)
            .collect();
        ready.sort();
        let mut relays: Vec<SocketAddr> = running
            .links
            .iter()
            .filter(|(_, link)| link.ready && link.relays)
            .map(|(addr, _)| *addr)
            .collect();
        relays.sort();
        self.status.send_modify(|s| {
            s.connected_to = ready.first().copied();
            s.supernodes = ready;
            s.relays = relays;
        });
    }

    fn ready_session(&self, running: &Running) -> Option<mpsc::Sender<ToSession>> {
        let mut ready: Vec<(&SocketAddr, &Link)> =
            running.links.iter().filter(|(_, l)| l.ready).collect();
        ready.sort_by_key(|(addr, _)| **addr);
        ready.first().map(|(_, link)| link.to_session.clone())
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
                Some(via) => match running.links.get(&via).filter(|l| l.ready) {
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
