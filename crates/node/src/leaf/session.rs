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

/// How often running searches are checked for their deadline.
const TICK: Duration = Duration::from_millis(50);
/// A running search publishes its results at most this often (the first
/// change at once); the tick publishes what waited.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a dial may take.
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
    /// How often pushes may make us connect out.
    pub(super) connect_backs: ConnectBacks,
    pub(super) tracker: TaskTracker,
    pub(super) link: LinkContext,
    pub(super) shutdown: CancellationToken,
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
}

/// News for the coordinator.
#[derive(Debug)]
pub(super) enum FromSession {
    Ready {
        addr: SocketAddr,
        /// The supernode's node id (its key's).
        node_id: NodeId,
        observed: Option<SocketAddr>,
        /// Its Hello said it relays.
        relays: bool,
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
        result = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => result,
    };
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return SessionEnd::Unreachable(error.to_string()),
        Err(_) => return SessionEnd::Unreachable("timed out".into()),
    };
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
    session.handle_connected(remote_key.node_id());
    let mut following: HashMap<MessageId, Follower> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    let mut end = None;
    while end.is_none() {
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
                Some(ToSession::Push(push)) => {
                    let id = crate::random_message_id();
                    let sent = match push.relay {
                        Some(token) => session.send_relay_push(id, push.target, push.content_id, push.callback, token),
                        None => session.send_push(id, push.target, push.content_id, push.callback),
                    }
                    .map_err(|e| NodeError::Search(e.to_string()));
                    let _ = push.reply.send(sent);
                }
                // The coordinator let go of this session: leave politely.
                None => {
                    session.shutdown();
                    end = Some(SessionEnd::Shutdown);
                }
            },
            _ = tick.tick() => session.handle_timeout(clock.now()),
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
                            relays,
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
                    relay: None,
                } => push_upload(context, content_id, callback_addr),
                LeafAction::Rejected {
                    reason,
                    detail,
                    try_supernodes,
                } => {
                    tracing::info!(%addr, ?reason, %detail, ?try_supernodes, "supernode refused us");
                    end = Some(SessionEnd::Rejected(try_supernodes));
                }
            }
        }
        publish_searches(&mut session, &mut following, clock.now());
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
