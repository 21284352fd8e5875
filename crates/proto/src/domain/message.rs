//! The messages two Canopy nodes exchange, as validated domain values.

use std::fmt;
use std::net::SocketAddr;

use super::ids::{ContentId, MessageId, NodeId};

/// What a node is in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A home node: shares, searches, downloads.
    Leaf,
    /// Indexes its leaves' files and routes queries.
    Supernode,
}

/// Optional features a node announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Keeps an index of its leaves' files and answers from it.
    FileIndex,
    /// Relays circuits for its own leaves (see `Push::relay`).
    Relay,
    /// Sends and takes last-hop routing filters.
    RoutingFilter,
}

/// Who a node is: the first thing it says on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version spoken.
    pub protocol_version: u32,
    /// Leaf or supernode.
    pub role: Role,
    /// The node's identity.
    pub node_id: NodeId,
    /// Where the node accepts connections, if anywhere. An unspecified IP
    /// means "the address you see me from".
    pub listen_addr: Option<SocketAddr>,
    /// Free text naming the software.
    pub user_agent: String,
    /// Features announced; unknown ones are dropped while decoding.
    pub capabilities: Vec<Capability>,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A reason this version does not know.
    Unknown,
    /// Protocol versions differ.
    VersionMismatch,
    /// No room for another connection of this role.
    Full,
    /// This role is not accepted here.
    RoleNotAccepted,
    /// The dialer has the acceptor's own node id.
    SelfConnection,
    /// A connection to this node id exists already.
    DuplicateConnection,
    /// The dialer's address or network holds its share of connections.
    AddressLimit,
    /// The Hello's node id is not the one the sender's authenticated
    /// static key derives.
    NodeIdMismatch,
}

/// How a handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The connection is open for business.
    Accepted {
        /// The address the acceptor saw the dialer connect from.
        observed_addr: Option<SocketAddr>,
    },
    /// Refused; the acceptor closes the connection.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// A human-readable explanation.
        detail: String,
        /// Other supernodes to try instead.
        try_supernodes: Vec<SocketAddr>,
    },
}

/// The acceptor's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// Who the acceptor is.
    pub hello: Hello,
    /// Accepted or rejected.
    pub outcome: HandshakeOutcome,
    /// From a supernode: the leaves it takes now, after this connection
    /// (at most [`crate::limits::MAX_FREE_LEAF_SLOTS`]); `None` from
    /// leaves and older supernodes.
    pub free_leaf_slots: Option<u32>,
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByeReason {
    /// A reason this version does not know.
    Unknown,
    /// The sender is shutting down.
    Shutdown,
    /// A frame over the size limit arrived.
    FrameTooLarge,
    /// A frame did not decode.
    MalformedMessage,
    /// A field was missing or out of range.
    InvalidField,
    /// A message the role or the connection's state forbids.
    ProtocolViolation,
    /// The handshake took too long.
    HandshakeTimeout,
    /// Nothing arrived for too long.
    IdleTimeout,
    /// A limit was exceeded.
    LimitExceeded,
    /// The peer read too slowly; its send queue stayed full.
    TooSlow,
}

/// One shared file: what is indexed and what a hit returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedFile {
    /// BLAKE3 of the whole content.
    pub content_id: ContentId,
    /// File name without directories: 1-255 bytes, no separators or controls.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes verified so far of a file still downloading (a partial
    /// source), at most `size`; `None` when the leaf has the whole file.
    pub available: Option<u64>,
}

/// A search travelling the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Names this query everywhere it goes.
    pub message_id: MessageId,
    /// Supernodes it may still reach; at least 1.
    pub ttl: u8,
    /// Supernodes it has crossed.
    pub hops: u8,
    /// All must match words of a file's name.
    pub keywords: Vec<String>,
    /// Only this content, if set.
    pub content_id: Option<ContentId>,
    /// Inclusive lower size bound.
    pub min_size: Option<u64>,
    /// Inclusive upper size bound.
    pub max_size: Option<u64>,
}

/// Files matching a query, all shared by one leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryHit {
    /// The query answered.
    pub message_id: MessageId,
    /// The leaf sharing the files.
    pub source_node_id: NodeId,
    /// Where to reach that leaf (if firewalled: where it connects from).
    pub source_addr: SocketAddr,
    /// At least one file.
    pub files: Vec<SharedFile>,
    /// The leaf accepts no connections; reach it with a [`Push`].
    pub firewalled: bool,
}

/// Asks a firewalled leaf to connect out to a downloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// For duplicate suppression.
    pub message_id: MessageId,
    /// The firewalled leaf.
    pub target_node_id: NodeId,
    /// The file wanted.
    pub content_id: ContentId,
    /// Where the leaf should connect to.
    pub callback_addr: SocketAddr,
    /// Supernodes crossed so far.
    pub hops: u8,
    /// Dial the callback again and again from the listening port (hole
    /// punching by TCP simultaneous open), not just once.
    pub punch: bool,
    /// Meet the downloader at this relay instead.
    pub relay: Option<RelayCircuit>,
}

/// Where a downloader and a firewalled leaf meet through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayCircuit {
    /// The relaying supernode.
    pub addr: SocketAddr,
    /// Names the circuit: 16 random bytes the downloader chose.
    pub token: CircuitToken,
}

/// The 16 bytes naming a relay circuit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CircuitToken(pub [u8; 16]);

impl fmt::Debug for CircuitToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CircuitToken({self})")
    }
}

impl fmt::Display for CircuitToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a handshake.
    Hello(Hello),
    /// Answers a Hello.
    HelloReply(HelloReply),
    /// Liveness probe.
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Answer to a Ping.
    Pong {
        /// The Ping's nonce.
        nonce: u64,
        /// Supernodes the sender knows.
        supernodes: Vec<SocketAddr>,
        /// From a supernode: the leaves it takes now (at most
        /// [`crate::limits::MAX_FREE_LEAF_SLOTS`]); `None` from leaves and
        /// older supernodes.
        free_leaf_slots: Option<u32>,
    },
    /// The last message on a connection.
    Bye {
        /// Why.
        reason: ByeReason,
        /// A human-readable explanation.
        detail: String,
        /// From a supernode stepping down: supernodes its leaves may join
        /// instead (at most 32).
        try_supernodes: Vec<SocketAddr>,
    },
    /// Part of a leaf's full list of shared files.
    FileList {
        /// First part: forget what was published before.
        replace: bool,
        /// The files.
        files: Vec<SharedFile>,
    },
    /// A change to a leaf's shared files.
    FileDelta {
        /// Newly shared.
        added: Vec<SharedFile>,
        /// No longer shared.
        removed: Vec<ContentId>,
    },
    /// A search.
    Query(Query),
    /// An answer to a search.
    QueryHit(QueryHit),
    /// A request for a firewalled leaf to connect out.
    Push(Push),
    /// How many results a leaf has kept for one of its queries.
    QueryStatus {
        /// The leaf's query.
        message_id: MessageId,
        /// Results kept; `u32::MAX` means "enough, stop".
        results: u32,
    },
    /// Supernode to leaf: what connecting back to the leaf found.
    Reachability {
        /// A TCP connection to `probed_addr` opened.
        reachable: bool,
        /// Where the supernode tried: the leaf's announced port on the IP
        /// it sees the leaf connect from.
        probed_addr: SocketAddr,
    },
    /// Leaf to supernode: where the leaf accepts connections now (only
    /// the port counts, on the IP the supernode sees).
    Announce {
        /// The new listening address.
        listen_addr: SocketAddr,
    },
    /// A part of a change to a supernode's routing filter.
    FilterPatch(FilterPatch),
}

/// A part of a change to a routing filter (`canopy/v1/routing.proto`).
/// The size and length are checked here; the positions where they are
/// applied (`canopy_core::filter_patch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPatch {
    /// The table's size: `2^log2_slots` bits.
    pub log2_slots: u8,
    /// Start from an empty table of this size.
    pub reset: bool,
    /// The positions to flip, ascending, as delta varints from zero.
    pub flips: Vec<u8>,
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloReply(_) => "hello_reply",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::FilterPatch(_) => "filter_patch",
            Message::Bye { .. } => "bye",
            Message::FileList { .. } => "file_list",
            Message::FileDelta { .. } => "file_delta",
            Message::Query(_) => "query",
            Message::QueryHit(_) => "query_hit",
            Message::Push(_) => "push",
            Message::QueryStatus { .. } => "query_status",
            Message::Reachability { .. } => "reachability",
            Message::Announce { .. } => "announce",
        }
    }
}
