//! One leaf-to-supernode session as a task: dial, run the core's
//! [`LeafSession`], carry out its actions, answer commands from the leaf's
//! coordinator, and report back how it went.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_core::handshake::Identity;
use canopy_core::leaf::{LeafAction, LeafSession};
use canopy_core::push_limits::{ConnectBackConfig, ConnectBackLimiter};
use canopy_core::{ConnId, Time};
use canopy_proto::{ContentId, MessageId, NodeId, SharedFile};
use canopy_transfer::Catalog;
use canopy_transfer::server::ContentServer;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PushRequest;
use super::live::{LiveStart, SearchSnapshot};
use crate::NodeError;
use crate::clock::Clock;
use crate::connection::{self, ConnEvent, LinkContext, Outgoing};
use crate::secure::Side;
use canopy_proto::secure::PublicKey;

/// How often running searches someone follows are checked for their
/// deadline and new results; with none, the session sleeps until the
/// core's next deadline (`LeafSession::poll_timeout`), at most
/// [`MAX_SLEEP`].
const TICK: Duration = Duration::from_millis(50);
/// The longest a session sleeps with no deadline due.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A running search publishes its results at most this often (the first
/// change at once); the tick publishes what waited.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a dial may take.
/// With the supernode election on, a session asks its supernode again
/// this often (whom it knows, how much room it has), as supernodes ask
/// their peers.
const ELECTION_REFRESH: Duration = Duration::from_secs(5 * 60);
/// The free leaf slots a supernode advertises are told the election when
/// they change, and again this often (the election forgets old news).
const FREE_SLOTS_REFRESH: Duration = Duration::from_secs(60);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running search someone follows.
struct Follower {
    updates: watch::Sender<SearchSnapshot>,
    cancel: CancellationToken,
    /// The search's revision last published, and when.
    published: Option<(u64, Time)>,
}

/// What every session of a leaf shares.
#[derive(Debug, Clone)]
pub(super) struct SessionContext {
    pub(super) identity: Identity,
    pub(super) catalog: Catalog,
    pub(super) server: ContentServer,
    /// Pushed uploads being set up at once.
    pub(super) pushes: Arc<Semaphore>,
    /// Hole punches for pushes running at once.
    pub(super) punches: Arc<Semaphore>,
    /// The port our HTTP server listens on (which our hits name), if any:
    /// punches and sessions dial from it (see [`dial`]).
    pub(super) listen_port: Option<u16>,
    /// How often pushes may make us connect out.
    pub(super) connect_backs: ConnectBacks,
    pub(super) tracker: TaskTracker,
    pub(super) link: LinkContext,
    pub(super) shutdown: CancellationToken,
    /// What the supernode election hears, if it runs.
    pub(super) election: Option<crate::election::ElectionSignals>,
}

/// The leaf's budget of connect-backs, shared by its sessions: the core's
/// limiter (overall and per callback IP) on one clock, so a stream of
/// pushes can't make the leaf open connections without bound.
#[derive(Debug, Clone)]
pub(super) struct ConnectBacks {
    limiter: Arc<Mutex<ConnectBackLimiter>>,
    clock: Clock,
    /// Pushes ignored for the rate.
    pub(super) refused: Arc<AtomicU64>,
}

impl ConnectBacks {
    pub(super) fn new() -> Self {
        let clock = Clock::new();
        Self {
            limiter: Arc::new(Mutex::new(ConnectBackLimiter::new(
                ConnectBackConfig::default(),
                clock.now(),
            ))),
            clock,
            refused: Arc::default(),
        }
    }

    /// Takes one connect-back to `callback` from the budget, if allowed.
    pub(super) fn allow(&self, callback: SocketAddr) -> bool {
        let verdict = match self.limiter.lock() {
            Ok(mut limiter) => limiter.allow(callback, self.clock.now()),
            Err(_) => return false,
        };
        match verdict {
            Ok(()) => true,
            Err(refused) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%callback, %refused, "push ignored");
                false
            }
        }
    }
}

/// A request from the coordinator.
pub(super) enum ToSession {
    Search(LiveStart),
    Shares(Vec<SharedFile>),
    Push(PushRequest),
    /// Tell the supernode we listen at `addr` now.
    Announce {
        addr: SocketAddr,
        recheck: bool,
    },
}

/// News for the coordinator.
#[derive(Debug)]
pub(super) enum FromSession {
    Ready {
        addr: SocketAddr,
        /// The supernode's node id (its key's).
        node_id: NodeId,
        observed: Option<SocketAddr>,
        /// Our end of the connection.
        local: Option<SocketAddr>,
        /// Dialed from our listening port.
        from_listen_port: bool,
        /// Its Hello said it relays.
        relays: bool,
    },
    /// The supernode connected back to `probed` (or could not).
    Verdict {
        addr: SocketAddr,
        reachable: bool,
        probed: SocketAddr,
    },
    /// The supernode at `addr` answered our Ping with these.
    Learned {
        addr: SocketAddr,
        supernodes: Vec<SocketAddr>,
    },
    Ended {
        addr: SocketAddr,
        end: SessionEnd,
    },
}

/// How a session with one supernode ended.
#[derive(Debug)]
pub(super) enum SessionEnd {
    Shutdown,
    Unreachable(String),
    Closed { lasted: Duration },
    Rejected(Vec<SocketAddr>),
}

enum Event {
    Connected(Outgoing, PublicKey),
    Conn(ConnEvent),
}

/// Starts a session to `addr` publishing `files`.
pub(super) fn spawn(
    addr: SocketAddr,
    files: Vec<SharedFile>,
    context: SessionContext,
    news: mpsc::Sender<FromSession>,
) -> mpsc::Sender<ToSession> {
    let (to_session, requests) = mpsc::channel(64);
    let tracker = context.tracker.clone();
    tracker.spawn(async move {
        let end = run(addr, files, &context, requests, &news).await;
        let _ = news.send(FromSession::Ended { addr, end }).await;
    });
    to_session
}

async fn run(
    addr: SocketAddr,
    files: Vec<SharedFile>,
    context: &SessionContext,
    mut requests: mpsc::Receiver<ToSession>,
    news: &mpsc::Sender<FromSession>,
) -> SessionEnd {
    let connected = tokio::select! {
        _ = context.shutdown.cancelled() => return SessionEnd::Shutdown,
        result = dial(addr, context.listen_port) => result,
    };
    let (stream, from_listen_port) = match connected {
        Ok(dialed) => dialed,
        Err(error) => return SessionEnd::Unreachable(error),
    };
    let local = stream.local_addr().ok();
    let clock = Clock::new();
    let (events_tx, mut events) = mpsc::channel::<Event>(256);
    connection::spawn(
        ConnId(0),
        stream,
        Side::Initiator,
        events_tx,
        Event::Connected,
        |_, e| Event::Conn(e),
        &context.link,
    );
    let closed = |clock: &Clock| SessionEnd::Closed {
        lasted: Duration::from_millis(clock.now().as_millis()),
    };
    // Nothing arrives if the Noise handshake fails.
    let Some(Event::Connected(outgoing, remote_key)) = events.recv().await else {
        return closed(&clock);
    };
    let mut session =
        LeafSession::new(context.identity.clone(), files).with_ping_key(rand::random());
    if context.election.is_some() {
        // The election wants the supernodes' room fresh.
        session = session.with_refresh(ELECTION_REFRESH);
    }
    session.handle_connected(remote_key.node_id());
    let mut following: HashMap<MessageId, Follower> = HashMap::new();
    let mut end = None;
    // The free leaf slots last told the election.
    let mut reported_free = None;
    while end.is_none() {
        let at_most = if following.is_empty() {
            MAX_SLEEP
        } else {
            TICK
        };
        let wake = clock.wake_at(session.poll_timeout(), at_most);
        tokio::select! {
            biased;
            _ = context.shutdown.cancelled() => {
                session.shutdown();
                end = Some(SessionEnd::Shutdown);
            }
            event = events.recv() => match event {
                Some(Event::Conn(ConnEvent::Messages(messages))) => {
                    for message in messages {
                        session.handle_message(message, clock.now());
                    }
                }
                Some(Event::Conn(ConnEvent::FrameError(error))) => {
                    tracing::warn!(%addr, %error, "bad input from supernode");
                    session.handle_frame_error(&error);
                }
                Some(Event::Conn(ConnEvent::Closed)) | None => end = Some(closed(&clock)),
                Some(Event::Connected(..)) => {}
            },
            request = requests.recv() => match request {
                Some(ToSession::Search(start)) => {
                    let id = crate::random_message_id();
                    match session.start_search(id, &start.request, clock.now()) {
                        Ok(()) => {
                            let _ = start.started.send(Ok(()));
                            following.insert(id, Follower {
                                updates: start.updates,
                                cancel: start.cancel,
                                published: None,
                            });
                        }
                        Err(error) => start.refuse(NodeError::Search(error.to_string())),
                    }
                }
                Some(ToSession::Shares(files)) => session.set_shares(files),
                Some(ToSession::Announce { addr: listen, recheck }) => {
                    session.announce(listen, recheck);
                }
                Some(ToSession::Push(push)) => {
                    let id = crate::random_message_id();
                    let sent = session
                        .send_push(id, push.target, push.content_id, push.callback, push.way)
                        .map_err(|e| NodeError::Search(e.to_string()));
                    let _ = push.reply.send(sent);
                }
                // The coordinator let go of this session: leave politely.
                None => {
                    session.shutdown();
                    end = Some(SessionEnd::Shutdown);
                }
            },
            _ = tokio::time::sleep_until(wake) => session.handle_timeout(clock.now()),
        }
        while let Some(action) = session.poll_action() {
            match action {
                LeafAction::Send(message) => {
                    let pushed = outgoing.send(&message);
                    if pushed.dropped_new || pushed.evicted > 0 {
                        tracing::warn!(%addr, "send queue to supernode full; dropped the least valuable");
                    }
                }
                LeafAction::Close(bye) => {
                    outgoing.close(bye);
                    end.get_or_insert_with(|| closed(&clock));
                }
                LeafAction::Ready {
                    supernode,
                    observed_addr,
                } => {
                    tracing::info!(%addr, supernode = %supernode.node_id, ?observed_addr, "joined supernode");
                    let relays = supernode
                        .capabilities
                        .contains(&canopy_proto::Capability::Relay);
                    let _ = news
                        .send(FromSession::Ready {
                            addr,
                            node_id: supernode.node_id,
                            observed: observed_addr,
                            local,
                            from_listen_port,
                            relays,
                        })
                        .await;
                }
                LeafAction::Reachability {
                    reachable,
                    probed_addr,
                } => {
                    tracing::info!(%addr, reachable, %probed_addr, "supernode connected back to us");
                    let _ = news
                        .send(FromSession::Verdict {
                            addr,
                            reachable,
                            probed: probed_addr,
                        })
                        .await;
                }
                LeafAction::SupernodesLearned(supernodes) => {
                    let _ = news.send(FromSession::Learned { addr, supernodes }).await;
                }
                LeafAction::PushRequested {
                    content_id,
                    relay: Some(circuit),
                    ..
                } => super::relay::relay_upload(context, content_id, circuit),
                LeafAction::PushRequested {
                    content_id,
                    callback_addr,
                    punch: false,
                    relay: None,
                } => push_upload(context, content_id, callback_addr),
                LeafAction::PushRequested {
                    content_id,
                    callback_addr,
                    punch: true,
                    relay: None,
                } => punch_upload(context, content_id, callback_addr),
                LeafAction::Rejected {
                    reason,
                    detail,
                    try_supernodes,
                } => {
                    tracing::info!(%addr, ?reason, %detail, ?try_supernodes, "supernode refused us");
                    if reason == canopy_proto::RejectReason::Full
                        && let Some(election) = &context.election
                    {
                        election.report(crate::election::Signal::RefusedFull);
                    }
                    end = Some(SessionEnd::Rejected(try_supernodes));
                }
            }
        }
        publish_searches(&mut session, &mut following, clock.now());
        if let (Some(election), Some(free)) = (&context.election, session.supernode_free_slots())
            && reported_free.is_none_or(|(was, at): (u32, Time)| {
                was != free || clock.now().since(at) >= FREE_SLOTS_REFRESH
            })
        {
            reported_free = Some((free, clock.now()));
            election.report(crate::election::Signal::FreeSlots {
                supernode: addr,
                free,
            });
        }
    }
    // However the session ended, let the writer finish: ended by the peer
    // (EOF), nothing else would close it and its task would wait forever.
    outgoing.close(None);
    if session.pongs_unsolicited() > 0 {
        tracing::info!(%addr, ignored = session.pongs_unsolicited(), "supernode sent Pongs we never asked for");
    }
    // Dropping the senders without a `done` snapshot tells the followers
    // the search ended with the session.
    following.clear();
    end.unwrap_or_else(|| closed(&clock))
}

/// Dials the supernode at `addr` from our listening port, if we have one,
/// so that behind an endpoint-independent NAT every supernode sees the
/// same external port (what tells the NAT's kind, and what hole punching
/// needs); true if it did. A port that can't be used for this dial (the
/// TIME_WAIT of an earlier session to the same supernode holds the pair:
/// `EADDRINUSE`, `EADDRNOTAVAIL`) gives way to an ephemeral one.
async fn dial(addr: SocketAddr, listen_port: Option<u16>) -> Result<(TcpStream, bool), String> {
    if let Some(port) = listen_port {
        match canopy_transfer::listen::connect_from(port, addr, CONNECT_TIMEOUT).await {
            Ok(stream) => return Ok((stream, true)),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                tracing::debug!(%addr, port, %error, "cannot dial from the listening port; dialing from another");
            }
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                return Err("timed out".into());
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok((stream, false)),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A downloader asked us by push for `content_id`: connect out to it and
/// serve HTTP on that connection.
fn push_upload(context: &SessionContext, content_id: ContentId, callback: SocketAddr) {
    if context.catalog.get(&content_id).is_none() {
        tracing::info!(%content_id, "push for content we do not share; ignored");
        return;
    }
    // The rate first: every push for content we share is counted, allowed
    // or not.
    if !context.connect_backs.allow(callback) {
        return;
    }
    let Ok(permit) = context.pushes.clone().try_acquire_owned() else {
        tracing::info!(%callback, "too many pushes at once; ignored");
        return;
    };
    let server = context.server.clone();
    let us = context.identity.node_id;
    let shutdown = context.shutdown.clone();
    context.tracker.spawn(async move {
        match canopy_transfer::push::connect_back(callback, us, CONNECT_TIMEOUT).await {
            Ok(stream) => {
                tracing::info!(%callback, %content_id, "serving by push");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = server.serve_connection_from(stream, Some(callback)) => {}
                }
            }
            Err(error) => tracing::info!(%callback, %error, "cannot connect back for a push"),
        }
        drop(permit);
    });
}

/// A downloader behind a NAT asked us by push to punch a hole to
/// `callback`: dial it again and again from our HTTP port (the port our
/// hits name; a leaf without one: from one ephemeral port) while it dials
/// us, and serve HTTP on whichever connection comes first, ours or its
/// dial accepted at that port (see `canopy_transfer::punch`). Counted
/// against the connect-back budget like any push, and at most
/// [`canopy_core::punch::MAX_PUNCHES_AT_ONCE`] at once. The callback's IP
/// is the downloader's own, put there by its supernode.
fn punch_upload(context: &SessionContext, content_id: ContentId, callback: SocketAddr) {
    if context.catalog.get(&content_id).is_none() {
        tracing::info!(%content_id, "punch for content we do not share; ignored");
        return;
    }
    if !context.connect_backs.allow(callback) {
        return;
    }
    let Ok(permit) = context.punches.clone().try_acquire_owned() else {
        tracing::info!(%callback, "too many punches at once; ignored");
        return;
    };
    let server = context.server.clone();
    let us = context.identity.node_id;
    let shutdown = context.shutdown.clone();
    let listen_port = context.listen_port;
    context.tracker.spawn(async move {
        let punched = punch_to(&server, listen_port, callback, us);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = punched => outcome,
        };
        // The bound is on punches dialing; serving is the server's slots'.
        drop(permit);
        match outcome {
            Ok((stream, won)) => {
                tracing::info!(%callback, %content_id, ?won, "serving by hole punch");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = server.serve_connection_from(stream, Some(callback)) => {}
                }
            }
            Err(error) => tracing::info!(%callback, %error, "cannot punch a hole for a push"),
        }
    });
}

/// Punches from `listen_port` (the server's, whose doorway hands over the
/// downloader's dial if it is accepted there) or from a port of its own.
async fn punch_to(
    server: &ContentServer,
    listen_port: Option<u16>,
    callback: SocketAddr,
    us: NodeId,
) -> std::io::Result<(TcpStream, canopy_transfer::punch::Won)> {
    use canopy_transfer::punch::{accept_from, punch_back};
    match listen_port {
        Some(port) => {
            let Some(mut expected) = server.doorway().expect_punch(callback) else {
                return Err(std::io::Error::other(
                    "a punch to this address runs already",
                ));
            };
            punch_back(port, callback, us, expected.arrival()).await
        }
        None => {
            let any = canopy_transfer::listen::any_dual_stack(0);
            let listener = canopy_transfer::listen::bind(any).await?;
            let port = listener.local_addr()?.port();
            punch_back(port, callback, us, accept_from(&listener, callback)).await
        }
    }
}

/// Publishes what changed in the followed searches; ends those that are
/// finished (a last snapshot marked `done`) or no longer followed.
fn publish_searches(
    session: &mut LeafSession,
    following: &mut HashMap<MessageId, Follower>,
    now: Time,
) {
    following.retain(|id, follower| {
        if follower.cancel.is_cancelled() || follower.updates.is_closed() {
            session.finish_search(id);
            return false;
        }
        let Some(search) = session.search(id) else {
            return false;
        };
        if search.is_finished(now) {
            if let Some(search) = session.finish_search(id) {
                let hits = search.hits_received();
                follower.updates.send_replace(SearchSnapshot {
                    results: search.into_results(),
                    hits,
                    done: true,
                });
            }
            return false;
        }
        let revision = search.revision();
        let due = match follower.published {
            None => revision > 0,
            Some((sent, at)) => sent != revision && now >= at + PUBLISH_INTERVAL,
        };
        if due {
            follower.published = Some((revision, now));
            follower.updates.send_replace(SearchSnapshot {
                results: search.results().cloned().collect(),
                hits: search.hits_received(),
                done: false,
            });
        }
        true
    });
}
