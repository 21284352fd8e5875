//! The supernode election's driver: runs [`canopy_core::election`]'s policy
//! beside a leaf, and on its word starts a supernode in this process or
//! steps it down.
//!
//! - **Signals.** The leaf's sessions report through [`ElectionSignals`]
//!   (given in `LeafOptions::election`): a dial refused as full, and the
//!   free leaf slots each supernode advertised (its HelloReply, then the
//!   Pongs answering our Pings). Each evaluation also reads the leaf's
//!   reachability verdict, its upload and download rates over the last
//!   interval (the best kept), the memory available (`/proc/meminfo`'s
//!   `MemAvailable`; unknown elsewhere) and, while a supernode, its leaves.
//! - **Promote.** A supernode is started from [`ElectionOptions::supernode`]
//!   (a configured or ephemeral port; its own key and host cache in the
//!   data directory's `supernode/`), dialing the supernodes the leaf is
//!   joined to as peers: their Pongs and try-lists then name it, which is
//!   how leaves find it. The leaf keeps its sessions and its shares.
//! - **Demote.** The supernode sends each leaf a Bye whose try-list names
//!   the supernodes that advertised the most room, and stops.
//!
//! The policy decides; this file only measures, waits and carries out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use canopy_core::election::{Election, ElectionAction, ElectionConfig};
use canopy_core::rng::SplitMix64;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::leaf::LeafHandle;
use crate::supernode::{self, SupernodeHandle, SupernodeOptions};

/// Signals waiting for the driver; beyond, new ones are dropped (the next
/// Pong says the same again).
const SIGNAL_QUEUE_LEN: usize = 256;

/// What a leaf's sessions tell the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A supernode refused our dial as full.
    RefusedFull,
    /// `supernode` advertised `free` leaf slots.
    FreeSlots {
        /// Where we dialed it.
        supernode: SocketAddr,
        /// The slots it takes now.
        free: u32,
    },
}

/// The sending end the leaf's sessions report through (cheap to clone).
#[derive(Debug, Clone)]
pub struct ElectionSignals {
    tx: mpsc::Sender<Signal>,
}

impl ElectionSignals {
    /// A pair: the sender for `LeafOptions::election`, the receiver for
    /// [`start`].
    pub fn channel() -> (ElectionSignals, mpsc::Receiver<Signal>) {
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE_LEN);
        (ElectionSignals { tx }, rx)
    }

    /// Reports `signal`; dropped if the driver is behind or gone.
    pub fn report(&self, signal: Signal) {
        let _ = self.tx.try_send(signal);
    }
}

/// How to run the election.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The policy's settings.
    pub policy: ElectionConfig,
    /// The supernode started on promotion: its `listen` (port 0 for an
    /// ephemeral one) and protocol settings. Its `peers` are set to the
    /// leaf's supernodes at promotion, and its `data_dir` to `supernode/`
    /// inside `data_dir` below.
    pub supernode: SupernodeOptions,
    /// The leaf's data directory, if any.
    pub data_dir: Option<PathBuf>,
}

/// What the election is doing, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElectionState {
    /// The supernode's listening address while promoted.
    pub supernode: Option<SocketAddr>,
    /// Promotions so far.
    pub promotions: u64,
    /// Step-downs so far.
    pub demotions: u64,
    /// The supernode's leaves, while promoted.
    pub leaves: usize,
}

/// A running election.
#[derive(Debug)]
pub struct ElectionHandle {
    state: watch::Receiver<ElectionState>,
}

impl ElectionHandle {
    /// The current state.
    pub fn state(&self) -> ElectionState {
        self.state.borrow().clone()
    }

    /// Follows the state.
    pub fn watch(&self) -> watch::Receiver<ElectionState> {
        self.state.clone()
    }
}

/// Starts the election beside `leaf`; it stops with the leaf (its
/// shutdown token), stepping the supernode down if one runs (its leaves
/// get the try-list a step-down would give).
pub fn start(
    leaf: &LeafHandle,
    options: ElectionOptions,
    signals: mpsc::Receiver<Signal>,
    tracker: &TaskTracker,
) -> ElectionHandle {
    let (state_tx, state) = watch::channel(ElectionState::default());
    let clock = Clock::new();
    let policy = Election::new(
        options.policy.clone(),
        clock.now(),
        SplitMix64::new(rand::random()),
    );
    let driver = Driver {
        leaf: LeafView {
            status: leaf.watch_status(),
            server: leaf.server().clone(),
            download_limit: leaf.download_limit().clone(),
        },
        options,
        policy,
        clock,
        supernode: None,
        state: state_tx,
        last_bytes: None,
    };
    tracker.spawn(driver.run(signals, leaf.shutdown_token()));
    ElectionHandle { state }
}

/// What the driver reads of the leaf.
struct LeafView {
    status: watch::Receiver<crate::leaf::LeafStatus>,
    server: canopy_transfer::server::ContentServer,
    download_limit: canopy_transfer::bandwidth::RateLimit,
}

struct Driver {
    leaf: LeafView,
    options: ElectionOptions,
    policy: Election,
    clock: Clock,
    supernode: Option<SupernodeHandle>,
    state: watch::Sender<ElectionState>,
    /// Bytes uploaded and downloaded at the last evaluation, and when.
    last_bytes: Option<(u64, u64, canopy_core::Time)>,
}

impl Driver {
    async fn run(mut self, mut signals: mpsc::Receiver<Signal>, shutdown: CancellationToken) {
        loop {
            let wait = self
                .policy
                .poll_timeout()
                .since(self.clock.now())
                .max(Duration::from_millis(1));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                signal = signals.recv() => match signal {
                    Some(signal) => self.handle_signal(signal),
                    // Every sender gone: the leaf stopped.
                    None => break,
                },
                _ = tokio::time::sleep(wait) => self.evaluate().await,
            }
        }
        if let Some(node) = self.supernode.take() {
            // Going away with the leaf: hand the leaves over all the same.
            node.step_down(self.policy.try_list()).await;
        }
    }

    fn handle_signal(&mut self, signal: Signal) {
        let now = self.clock.now();
        match signal {
            Signal::RefusedFull => self.policy.handle_refused_full(now),
            Signal::FreeSlots { supernode, free } => {
                // Our own supernode's room is not the network's.
                let ours = self
                    .supernode
                    .as_ref()
                    .is_some_and(|node| same_node(node, supernode));
                if !ours {
                    self.policy
                        .handle_free_slots(supernode, u64::from(free), now);
                }
            }
        }
    }

    async fn evaluate(&mut self) {
        let now = self.clock.now();
        self.measure(now);
        self.policy.handle_timeout(now);
        match self.policy.poll_action() {
            Some(ElectionAction::Promote) => self.promote().await,
            Some(ElectionAction::Demote { try_list }) => self.demote(try_list).await,
            None => {}
        }
    }

    fn measure(&mut self, now: canopy_core::Time) {
        let status = self.leaf.status.borrow().clone();
        self.policy
            .handle_reachability(status.reachability.reachable);
        let uploaded = self.leaf.server.uploaded_bytes();
        let downloaded = self.leaf.download_limit.transferred();
        if let Some((up, down, at)) = self.last_bytes {
            let millis = now.since(at).as_millis().max(1);
            let rate =
                |bytes: u64| u64::try_from(u128::from(bytes) * 1000 / millis).unwrap_or(u64::MAX);
            self.policy.handle_rates(
                rate(uploaded.saturating_sub(up)),
                rate(downloaded.saturating_sub(down)),
            );
        }
        self.last_bytes = Some((uploaded, downloaded, now));
        if let Some(available) = memory_available() {
            self.policy.handle_memory(available);
        }
        if let Some(node) = &self.supernode {
            // Our own leaf joined to our own supernode is no leaf held.
            let own = status.supernodes.iter().any(|addr| same_node(node, *addr));
            let leaves = node.stats().leaves.saturating_sub(usize::from(own));
            self.policy.handle_leaves(leaves, now);
            self.state.send_modify(|state| state.leaves = leaves);
        }
    }

    async fn promote(&mut self) {
        if self.supernode.is_some() {
            return;
        }
        let mut options = self.options.supernode.clone();
        let joined = self.leaf.status.borrow().supernodes.clone();
        for peer in joined {
            if !options.peers.contains(&peer) {
                options.peers.push(peer);
            }
        }
        options.data_dir = self.options.data_dir.as_ref().map(|d| d.join("supernode"));
        let status = self.policy.status(self.clock.now());
        match supernode::start(options).await {
            Ok(node) => {
                tracing::info!(
                    listen = %node.local_addr(),
                    refusals = status.recent_refusals,
                    free_slots_known = status.free_slots_known,
                    "promoted to supernode: capable, and the network needs one"
                );
                let addr = node.local_addr();
                self.supernode = Some(node);
                self.state.send_modify(|state| {
                    state.supernode = Some(addr);
                    state.promotions += 1;
                    state.leaves = 0;
                });
            }
            Err(error) => {
                // Back to a leaf; tried again after the spacing at most.
                tracing::warn!(%error, "cannot start the supernode we were elected to be");
                self.policy.handle_switch_failed();
            }
        }
    }

    async fn demote(&mut self, try_list: Vec<SocketAddr>) {
        let Some(node) = self.supernode.take() else {
            return;
        };
        tracing::info!(
            leaves = node.stats().leaves,
            ?try_list,
            "stepping down: supernodes are plentiful and we held few leaves"
        );
        node.step_down(try_list).await;
        self.state.send_modify(|state| {
            state.supernode = None;
            state.demotions += 1;
            state.leaves = 0;
        });
    }
}

/// `addr` is `node`'s own listening or announced address.
fn same_node(node: &SupernodeHandle, addr: SocketAddr) -> bool {
    let port = addr.port();
    (node.local_addr().port() == port || node.announced_addr().port() == port)
        && (addr.ip().is_loopback()
            || addr.ip() == node.announced_addr().ip()
            || node.local_addr().ip().is_unspecified()
            || addr.ip() == node.local_addr().ip())
}

/// Memory available for new work, in bytes (`MemAvailable` in
/// `/proc/meminfo`); `None` where that can't be read.
fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_available_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let available = memory_available().expect("/proc/meminfo has MemAvailable");
            assert!(available > 0);
        }
    }
}
