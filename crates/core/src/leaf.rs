//! A leaf's side of its connection to a supernode.
//!
//! The leaf opens with Hello; once accepted it publishes its full file list
//! (in frame-sized parts, the first replacing whatever the supernode had),
//! then only deltas as its shares change. Searches are started here and
//! their hits gathered into [`SearchSession`]s. The supernode's
//! connect-back verdicts come out as [`LeafAction::Reachability`], and
//! [`LeafSession::announce`] tells it a new listening address.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use canopy_proto::limits::{HARD_MAX_TTL, MAX_FILES_PER_MESSAGE};
use canopy_proto::{
    ByeReason, CircuitToken, ContentId, FrameError, HandshakeOutcome, Hello, Message, MessageId,
    NodeId, Push, Query, RejectReason, RelayCircuit, Role, SharedFile,
};

use crate::Time;
use crate::addrman::solicit::{NonceSource, Outstanding, public_key_for};
use crate::handshake::{Identity, check_hello};
use crate::search::SearchSession;

/// Most searches one leaf runs at once.
pub const MAX_CONCURRENT_SEARCHES: usize = 64;

/// What the driver must do, or should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafAction {
    /// Send this to the supernode.
    Send(Message),
    /// Send what is queued, then the Bye if given, and close.
    Close(Option<(ByeReason, String)>),
    /// The supernode accepted us.
    Ready {
        /// Who it is.
        supernode: Hello,
        /// How it sees our address.
        observed_addr: Option<SocketAddr>,
    },
    /// The supernode refused us; a Close follows.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Its explanation.
        detail: String,
        /// Where it suggests we go instead.
        try_supernodes: Vec<SocketAddr>,
    },
    /// The supernode named other supernodes, in answer to our Ping.
    SupernodesLearned(Vec<SocketAddr>),
    /// The supernode connected back to `probed_addr` (or could not).
    Reachability {
        /// A TCP connection opened.
        reachable: bool,
        /// Where it tried: our announced port on the IP it sees.
        probed_addr: SocketAddr,
    },
    /// A downloader asks us, through the overlay, to connect out to
    /// `callback_addr` and serve `content_id` (we are firewalled).
    PushRequested {
        /// The file wanted.
        content_id: ContentId,
        /// Where to connect.
        callback_addr: SocketAddr,
        /// Dial it again and again from our listening port for a while
        /// (hole punching, see [`crate::punch`]), not just once.
        punch: bool,
        /// Meet the downloader at this relay instead (our supernode
        /// passed it on; the downloader's set its address).
        relay: Option<RelayCircuit>,
    },
}

/// A search as the user asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    /// Words that must all appear in a name.
    pub keywords: Vec<String>,
    /// Or exactly this content.
    pub content_id: Option<ContentId>,
    /// Inclusive size bounds.
    pub min_size: Option<u64>,
    /// Inclusive size bounds.
    pub max_size: Option<u64>,
    /// How far the query may travel.
    pub ttl: u8,
    /// How long to wait for hits.
    pub timeout: Duration,
    /// Stop once this many distinct contents are found.
    pub max_results: usize,
}

impl SearchRequest {
    /// A search for files whose names hold every word of `words`; it ends
    /// at `timeout` or once it has `max_results` contents.
    pub fn keywords<S: AsRef<str>>(
        words: &[S],
        ttl: u8,
        timeout: Duration,
        max_results: usize,
    ) -> Self {
        Self {
            keywords: words.iter().map(|w| w.as_ref().to_owned()).collect(),
            content_id: None,
            min_size: None,
            max_size: None,
            ttl,
            timeout,
            max_results,
        }
    }

    /// A search for one content id. It runs its whole `timeout`, gathering
    /// every source: an id names one content, so no count can end it early.
    pub fn content(id: ContentId, ttl: u8, timeout: Duration) -> Self {
        Self {
            content_id: Some(id),
            max_results: usize::MAX,
            ..Self::keywords::<&str>(&[], ttl, timeout, 0)
        }
    }
}

/// How a pushed source is to reach us ([`LeafSession::send_push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushWay {
    /// It connects to the callback address.
    Connect,
    /// It punches a hole to the callback address: dials it again and
    /// again from its listening port while we dial it (see
    /// [`crate::punch`]).
    Punch,
    /// It meets us at our supernode's relay, for this circuit.
    Relay(CircuitToken),
}

/// Why a search could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// The handshake has not completed (or the connection is gone).
    #[error("not connected to a supernode")]
    NotConnected,
    /// Neither keywords nor a content id.
    #[error("a search needs keywords or a content id")]
    Empty,
    /// Too many searches at once.
    #[error("at most {MAX_CONCURRENT_SEARCHES} searches may run at once")]
    TooMany,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    New,
    AwaitingReply,
    Ready,
    Closed,
}

/// The leaf-to-supernode session. See the module documentation.
#[derive(Debug)]
pub struct LeafSession {
    identity: Identity,
    state: State,
    shares: BTreeMap<ContentId, SharedFile>,
    published: BTreeMap<ContentId, SharedFile>,
    searches: HashMap<MessageId, SearchSession>,
    /// When each search last told the supernode its count, and the count.
    statuses: HashMap<MessageId, (Time, usize)>,
    actions: VecDeque<LeafAction>,
    last_heard: Option<Time>,
    nonces: NonceSource,
    /// Our Pings not answered yet.
    pings: Outstanding,
    pongs_unsolicited: u64,
    /// The leaf slots the supernode last said it has free.
    supernode_free_slots: Option<u32>,
    /// Ask the supernode again (a Ping) this often: whom it knows and how
    /// much room it has. `None`: only once, on joining.
    refresh: Option<Duration>,
    /// When we last asked.
    last_asked: Option<Time>,
    /// The node id the supernode's authenticated key owns.
    supernode_id: Option<NodeId>,
    /// An Announce waits for the handshake to complete.
    announce_when_ready: bool,
}

/// A leaf tells its supernode how many results a search has kept at most
/// this often (LimeWire's leaves answer such requests every few seconds).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// A supernode pings a quiet leaf every 30 s; a leaf that hears nothing
/// for this long takes the supernode for gone (a dead host sends no FIN).
pub const SUPERNODE_SILENCE_LIMIT: Duration = Duration::from_secs(90);

impl LeafSession {
    /// A session for a leaf that shares `shares`.
    pub fn new(identity: Identity, shares: Vec<SharedFile>) -> Self {
        let identity_seed = identity.node_id.0;
        Self {
            identity,
            state: State::New,
            shares: by_id(shares),
            published: BTreeMap::new(),
            searches: HashMap::new(),
            statuses: HashMap::new(),
            actions: VecDeque::new(),
            last_heard: None,
            nonces: NonceSource::new(public_key_for(&identity_seed)),
            pings: Outstanding::default(),
            pongs_unsolicited: 0,
            supernode_free_slots: None,
            refresh: None,
            last_asked: None,
            supernode_id: None,
            announce_when_ready: false,
        }
    }

    /// Keys the ping nonces with `key`, drawn from the driver's RNG (the
    /// default is derived from the node id: fine for tests and the
    /// simulator, predictable for a real node).
    #[must_use]
    pub fn with_ping_key(mut self, key: [u8; 32]) -> Self {
        self.nonces = NonceSource::new(key);
        self
    }

    /// Pings the supernode again every `every` once joined (the first
    /// goes on joining), so what it knows (other supernodes, its free leaf
    /// slots) stays fresh; off by default (the simulator's traffic).
    #[must_use]
    pub fn with_refresh(mut self, every: Duration) -> Self {
        self.refresh = Some(every);
        self
    }

    /// Pongs that answered no Ping of ours (ignored).
    pub fn pongs_unsolicited(&self) -> u64 {
        self.pongs_unsolicited
    }

    /// The leaf slots the supernode last advertised free (its HelloReply,
    /// then the Pongs answering our Pings), if it said.
    pub fn supernode_free_slots(&self) -> Option<u32> {
        self.supernode_free_slots
    }

    /// Periodic check: a supernode silent past [`SUPERNODE_SILENCE_LIMIT`]
    /// (or a handshake that never completes in as long) ends the session.
    /// Also reports searches whose count moved since their last status.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.state == State::Closed {
            return;
        }
        let last = *self.last_heard.get_or_insert(now);
        if now.since(last) >= SUPERNODE_SILENCE_LIMIT {
            self.close(Some((
                ByeReason::IdleTimeout,
                "nothing heard from the supernode".into(),
            )));
            return;
        }
        let mut moved: Vec<(MessageId, usize)> = self
            .searches
            .iter()
            .map(|(id, search)| (*id, search.kept()))
            .filter(|(id, kept)| self.statuses.get(id).is_some_and(|(_, sent)| sent != kept))
            .collect();
        // The same order every run (the map is a hash map).
        moved.sort_unstable_by_key(|(id, _)| id.0);
        for (id, kept) in moved {
            self.report_status(id, kept, now);
        }
        if let Some(every) = self.refresh
            && self.state == State::Ready
            && self
                .last_asked
                .is_none_or(|asked| now.since(asked) >= every)
        {
            self.ask(now);
        }
    }

    /// Pings the supernode: the Pong names the supernodes it knows and its
    /// free leaf slots.
    fn ask(&mut self, now: Time) {
        self.last_asked = Some(now);
        let nonce = self.nonces.next_nonce();
        self.pings.sent(nonce);
        self.send(Message::Ping { nonce });
    }

    /// When [`LeafSession::handle_timeout`] has something to do next: the
    /// supernode's silence limit, or a search's status report whose count
    /// moved; due at once before the first timeout (which starts the
    /// silence clock), `None` once closed.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.state == State::Closed {
            return None;
        }
        let Some(last) = self.last_heard else {
            return Some(Time::ZERO);
        };
        let statuses = self.searches.iter().filter_map(|(id, search)| {
            let (at, sent) = self.statuses.get(id)?;
            (*sent != search.kept()).then_some(*at + STATUS_INTERVAL)
        });
        // With refresh on, the next Ping to the supernode.
        let refresh = match (self.refresh, self.last_asked) {
            (Some(every), Some(asked)) if self.state == State::Ready => Some(asked + every),
            _ => None,
        };
        statuses
            .chain([last + SUPERNODE_SILENCE_LIMIT])
            .chain(refresh)
            .min()
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<LeafAction> {
        self.actions.pop_front()
    }

    /// True once the supernode has accepted us.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The link is up, its peer authenticated as the owner of node id
    /// `authenticated` (the supernode's HelloReply must claim that id):
    /// open the handshake.
    pub fn handle_connected(&mut self, authenticated: NodeId) {
        if self.state == State::New {
            self.supernode_id = Some(authenticated);
            self.state = State::AwaitingReply;
            self.actions
                .push_back(LeafAction::Send(Message::Hello(self.identity.hello())));
        }
    }

    /// The framing broke: say why and close.
    pub fn handle_frame_error(&mut self, error: &FrameError) {
        let reason = match error {
            FrameError::TooLarge { .. } => ByeReason::FrameTooLarge,
            FrameError::Malformed(_) => ByeReason::MalformedMessage,
            FrameError::Invalid(_) => ByeReason::InvalidField,
            FrameError::Io(_) => {
                self.close(None);
                return;
            }
        };
        self.close(Some((reason, error.to_string())));
    }

    /// A message from the supernode.
    pub fn handle_message(&mut self, message: Message, now: Time) {
        self.last_heard = Some(now);
        match (self.state, message) {
            (State::Closed, _) => {}
            (State::Ready, Message::Bye { try_supernodes, .. }) if !try_supernodes.is_empty() => {
                // Our supernode stepping down names where to go: an answer
                // on the connection we dialed, believed as a refusal's
                // try-list is.
                self.actions
                    .push_back(LeafAction::SupernodesLearned(try_supernodes));
                self.close(None);
            }
            (_, Message::Bye { .. }) => self.close(None),
            (State::AwaitingReply, Message::HelloReply(reply)) => {
                if reply.free_leaf_slots.is_some() {
                    self.supernode_free_slots = reply.free_leaf_slots;
                }
                match reply.outcome {
                    HandshakeOutcome::Rejected {
                        reason,
                        detail,
                        try_supernodes,
                    } => {
                        self.actions.push_back(LeafAction::Rejected {
                            reason,
                            detail,
                            try_supernodes,
                        });
                        self.close(None);
                    }
                    HandshakeOutcome::Accepted { observed_addr } => {
                        if reply.hello.role != Role::Supernode {
                            self.violation("a leaf answered where a supernode was expected");
                            return;
                        }
                        // Set by `handle_connected`, which starts AwaitingReply.
                        let Some(authenticated) = self.supernode_id else {
                            self.violation("no authenticated key for this supernode");
                            return;
                        };
                        if let Err(rejection) =
                            check_hello(self.identity.node_id, authenticated, &reply.hello)
                        {
                            self.violation(&rejection.detail);
                            return;
                        }
                        self.state = State::Ready;
                        self.actions.push_back(LeafAction::Ready {
                            supernode: reply.hello,
                            observed_addr,
                        });
                        self.publish_full_list();
                        self.announce_if_waiting();
                        // Ask which other supernodes it knows: the leaf keeps
                        // more than one, and remembers them for next time.
                        self.ask(now);
                    }
                }
            }
            (State::Ready, Message::Ping { nonce }) => {
                self.actions.push_back(LeafAction::Send(Message::Pong {
                    nonce,
                    supernodes: Vec::new(),
                    free_leaf_slots: None,
                }));
            }
            (
                State::Ready,
                Message::Pong {
                    nonce,
                    supernodes,
                    free_leaf_slots,
                },
            ) => {
                // Only the answer to our own Ping is believed: addresses
                // pushed at us uninvited are how a host cache is poisoned.
                if !self.pings.answered(nonce) {
                    self.pongs_unsolicited += 1;
                    return;
                }
                if free_leaf_slots.is_some() {
                    self.supernode_free_slots = free_leaf_slots;
                }
                if !supernodes.is_empty() {
                    self.actions
                        .push_back(LeafAction::SupernodesLearned(supernodes));
                }
            }
            (State::Ready, Message::Push(push)) => {
                // Pushes for others would be a supernode's mistake; ignore them.
                if push.target_node_id == self.identity.node_id {
                    self.actions.push_back(LeafAction::PushRequested {
                        content_id: push.content_id,
                        callback_addr: push.callback_addr,
                        punch: push.punch,
                        relay: push.relay,
                    });
                }
            }
            (
                State::Ready,
                Message::Reachability {
                    reachable,
                    probed_addr,
                },
            ) => {
                self.actions.push_back(LeafAction::Reachability {
                    reachable,
                    probed_addr,
                });
            }
            (State::Ready, Message::QueryHit(hit)) => {
                if let Some(search) = self.searches.get_mut(&hit.message_id) {
                    search.handle_hit(&hit, now);
                    let kept = search.kept();
                    self.report_status(hit.message_id, kept, now);
                }
            }
            (_, other) => {
                self.violation(&format!(
                    "{} is not allowed from a supernode here",
                    other.kind()
                ));
            }
        }
    }

    /// The leaf's shares changed: publish the difference once connected.
    pub fn set_shares(&mut self, shares: Vec<SharedFile>) {
        self.shares = by_id(shares);
        if self.state == State::Ready {
            self.publish_delta();
        }
    }

    /// Sends a query; its hits gather in a session under `message_id`.
    pub fn start_search(
        &mut self,
        message_id: MessageId,
        request: &SearchRequest,
        now: Time,
    ) -> Result<(), SearchError> {
        if self.state != State::Ready {
            return Err(SearchError::NotConnected);
        }
        if request.keywords.iter().all(|k| k.trim().is_empty()) && request.content_id.is_none() {
            return Err(SearchError::Empty);
        }
        if self.searches.len() >= MAX_CONCURRENT_SEARCHES {
            return Err(SearchError::TooMany);
        }
        let query = Query {
            message_id,
            ttl: request.ttl.clamp(1, HARD_MAX_TTL),
            hops: 0,
            keywords: request
                .keywords
                .iter()
                .filter(|k| !k.trim().is_empty())
                .cloned()
                .collect(),
            content_id: request.content_id,
            min_size: request.min_size,
            max_size: request.max_size,
        };
        let mut session = SearchSession::new(message_id, now, request.timeout, request.max_results);
        if let Some(id) = request.content_id {
            session = session.only(id);
        }
        self.searches.insert(message_id, session);
        self.actions
            .push_back(LeafAction::Send(Message::Query(query)));
        Ok(())
    }

    /// Asks firewalled leaf `target` to serve `content_id` to us, reaching
    /// us the `way` given at `callback_addr` (for a relay, the push's
    /// required callback field; the supernode names the relay).
    pub fn send_push(
        &mut self,
        message_id: MessageId,
        target: NodeId,
        content_id: ContentId,
        callback_addr: SocketAddr,
        way: PushWay,
    ) -> Result<(), SearchError> {
        if self.state != State::Ready {
            return Err(SearchError::NotConnected);
        }
        self.send(Message::Push(Push {
            message_id,
            target_node_id: target,
            content_id,
            callback_addr,
            hops: 0,
            punch: way == PushWay::Punch,
            relay: match way {
                PushWay::Relay(token) => Some(RelayCircuit {
                    // A placeholder: only the supernode says where it is.
                    addr: callback_addr,
                    token,
                }),
                PushWay::Connect | PushWay::Punch => None,
            },
        }));
        Ok(())
    }

    /// Our listening address is now `addr`: tell the supernode (once the
    /// handshake completed; a Hello not sent yet carries it) if it is not
    /// what it was told, or anyway if `recheck` (it probes again). The
    /// supernode takes one Announce per 30 s; the caller spaces them
    /// (`canopy_core::reachability`).
    pub fn announce(&mut self, addr: SocketAddr, recheck: bool) {
        let changed = self.identity.listen_addr != Some(addr);
        self.identity.listen_addr = Some(addr);
        if !changed && !recheck {
            return;
        }
        match self.state {
            State::Ready => self.send(Message::Announce { listen_addr: addr }),
            State::AwaitingReply => self.announce_when_ready = true,
            State::New | State::Closed => {}
        }
    }

    fn announce_if_waiting(&mut self) {
        if std::mem::take(&mut self.announce_when_ready) {
            if let Some(listen_addr) = self.identity.listen_addr {
                self.send(Message::Announce { listen_addr });
            }
        }
    }

    /// A running search.
    pub fn search(&self, message_id: &MessageId) -> Option<&SearchSession> {
        self.searches.get(message_id)
    }

    /// Ends a search and hands over what it found.
    pub fn finish_search(&mut self, message_id: &MessageId) -> Option<SearchSession> {
        let session = self.searches.remove(message_id)?;
        // Nobody waits for more: the supernode may stop looking.
        if self.statuses.remove(message_id).is_some() && self.state == State::Ready {
            self.send(Message::QueryStatus {
                message_id: *message_id,
                results: u32::MAX,
            });
        }
        Some(session)
    }

    /// Tells the supernode what a search has kept, at most once per
    /// [`STATUS_INTERVAL`] and only when the count moved.
    fn report_status(&mut self, message_id: MessageId, kept: usize, now: Time) {
        let due = match self.statuses.get(&message_id) {
            None => true,
            Some((at, sent)) => *sent != kept && now >= *at + STATUS_INTERVAL,
        };
        if due {
            self.statuses.insert(message_id, (now, kept));
            self.send(Message::QueryStatus {
                message_id,
                results: u32::try_from(kept).unwrap_or(u32::MAX - 1),
            });
        }
    }

    /// Leaves politely.
    pub fn shutdown(&mut self) {
        self.close(Some((ByeReason::Shutdown, "leaf shutting down".into())));
    }

    fn close(&mut self, bye: Option<(ByeReason, String)>) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.actions.push_back(LeafAction::Close(bye));
        }
    }

    fn violation(&mut self, detail: &str) {
        self.close(Some((ByeReason::ProtocolViolation, detail.to_owned())));
    }

    fn publish_full_list(&mut self) {
        let files: Vec<SharedFile> = self.shares.values().cloned().collect();
        let mut chunks = files.chunks(MAX_FILES_PER_MESSAGE);
        // The first part always goes, even empty: it resets the supernode's view.
        let first = chunks.next().unwrap_or(&[]).to_vec();
        self.send(Message::FileList {
            replace: true,
            files: first,
        });
        for chunk in chunks {
            self.send(Message::FileList {
                replace: false,
                files: chunk.to_vec(),
            });
        }
        self.published = self.shares.clone();
    }

    fn publish_delta(&mut self) {
        let added: Vec<SharedFile> = self
            .shares
            .iter()
            .filter(|(id, file)| self.published.get(id) != Some(file))
            .map(|(_, file)| file.clone())
            .collect();
        let removed: Vec<ContentId> = self
            .published
            .keys()
            .filter(|id| !self.shares.contains_key(id))
            .copied()
            .collect();
        for chunk in removed.chunks(MAX_FILES_PER_MESSAGE) {
            self.send(Message::FileDelta {
                added: Vec::new(),
                removed: chunk.to_vec(),
            });
        }
        for chunk in added.chunks(MAX_FILES_PER_MESSAGE) {
            self.send(Message::FileDelta {
                added: chunk.to_vec(),
                removed: Vec::new(),
            });
        }
        self.published = self.shares.clone();
    }

    fn send(&mut self, message: Message) {
        self.actions.push_back(LeafAction::Send(message));
    }
}

/// The shares by content id; of two with the same id, a whole file wins
/// over a partial one (a download of something already shared).
fn by_id(files: Vec<SharedFile>) -> BTreeMap<ContentId, SharedFile> {
    let mut shares = BTreeMap::new();
    for file in files {
        match shares.entry(file.content_id) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(file);
            }
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                if entry.get().available.is_some() || file.available.is_none() {
                    entry.insert(file);
                }
            }
        }
    }
    shares
}
