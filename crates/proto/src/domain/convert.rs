//! Conversion between wire messages and domain messages.
//!
//! Wire to domain is fallible and checks every field a peer controls; the
//! error names the field and what was wrong with it. Domain to wire cannot
//! fail: a domain value is valid by construction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ids::{ContentId, MessageId, NodeId};
use super::message::*;
use crate::limits::*;
use crate::wire;
use crate::wire::envelope::Body;
use crate::wire::hello_reply::Outcome;

/// A message that decoded but breaks a rule: which field, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct InvalidMessage {
    /// The offending field, as `message.field`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

type Result<T> = std::result::Result<T, InvalidMessage>;

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidMessage {
    InvalidMessage {
        field,
        problem: problem.into(),
    }
}

fn max_len(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes, at most {max}", value.len()),
        ));
    }
    Ok(())
}

fn max_count<T>(field: &'static str, items: &[T], max: usize) -> Result<()> {
    if items.len() > max {
        return Err(invalid(
            field,
            format!("{} entries, at most {max}", items.len()),
        ));
    }
    Ok(())
}

fn node_id(field: &'static str, bytes: &[u8]) -> Result<NodeId> {
    let id = NodeId::from_slice(bytes)
        .ok_or_else(|| invalid(field, format!("{} bytes, expected 16", bytes.len())))?;
    if id.0 == [0; 16] {
        return Err(invalid(field, "all zero"));
    }
    Ok(id)
}

fn message_id(field: &'static str, bytes: &[u8]) -> Result<MessageId> {
    MessageId::from_slice(bytes)
        .ok_or_else(|| invalid(field, format!("{} bytes, expected 16", bytes.len())))
}

fn content_id(field: &'static str, bytes: &[u8]) -> Result<ContentId> {
    ContentId::from_slice(bytes)
        .ok_or_else(|| invalid(field, format!("{} bytes, expected 32", bytes.len())))
}

fn socket_addr(field: &'static str, addr: &wire::SocketAddress) -> Result<SocketAddr> {
    let ip = match addr.ip.len() {
        4 => {
            let octets: [u8; 4] = addr.ip[..]
                .try_into()
                .map_err(|_| invalid(field, "bad ip"))?;
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        16 => {
            let octets: [u8; 16] = addr.ip[..]
                .try_into()
                .map_err(|_| invalid(field, "bad ip"))?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        n => return Err(invalid(field, format!("ip of {n} bytes, expected 4 or 16"))),
    };
    let port = u16::try_from(addr.port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| invalid(field, format!("port {} outside 1-65535", addr.port)))?;
    // One form per host: an IPv4-mapped IPv6 address is the IPv4 address.
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

/// A supernode's advertised free leaf slots, at most
/// [`MAX_FREE_LEAF_SLOTS`].
fn free_leaf_slots(field: &'static str, free: Option<u32>) -> Result<Option<u32>> {
    match free {
        Some(free) if free > MAX_FREE_LEAF_SLOTS => Err(invalid(
            field,
            format!("{free} free leaf slots, at most {MAX_FREE_LEAF_SLOTS}"),
        )),
        _ => Ok(free),
    }
}

fn socket_addrs(field: &'static str, addrs: &[wire::SocketAddress]) -> Result<Vec<SocketAddr>> {
    max_count(field, addrs, MAX_ADDRESSES)?;
    addrs.iter().map(|a| socket_addr(field, a)).collect()
}

/// True if `name` is acceptable as a shared file's name: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, no path separators, no control characters, and
/// not `.` or `..`. Such a name is safe to use as a file name on its own.
pub fn is_valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// The field names of one list of shared files: the list, and the
/// `available` of its entries.
struct FileFields {
    list: &'static str,
    available: &'static str,
}

fn shared_file(fields: &FileFields, file: &wire::SharedFile) -> Result<SharedFile> {
    if !is_valid_file_name(&file.name) {
        return Err(invalid(
            fields.list,
            "name must be 1-255 bytes with no '/', '\\', control characters, '.' or '..'",
        ));
    }
    if let Some(available) = file.available {
        if available > file.size {
            return Err(invalid(
                fields.available,
                format!("{available} bytes, more than the file's size {}", file.size),
            ));
        }
    }
    Ok(SharedFile {
        content_id: content_id(fields.list, &file.content_id)?,
        name: file.name.clone(),
        size: file.size,
        available: file.available,
    })
}

fn shared_files(fields: FileFields, files: &[wire::SharedFile]) -> Result<Vec<SharedFile>> {
    max_count(fields.list, files, MAX_FILES_PER_MESSAGE)?;
    files.iter().map(|f| shared_file(&fields, f)).collect()
}

fn hello(hello: &wire::Hello) -> Result<Hello> {
    let role = match wire::Role::try_from(hello.role) {
        Ok(wire::Role::Leaf) => Role::Leaf,
        Ok(wire::Role::Supernode) => Role::Supernode,
        _ => {
            return Err(invalid(
                "hello.role",
                format!("unknown role {}", hello.role),
            ));
        }
    };
    max_len("hello.user_agent", &hello.user_agent, MAX_USER_AGENT_LEN)?;
    max_count("hello.capabilities", &hello.capabilities, MAX_CAPABILITIES)?;
    let listen_addr = hello
        .listen_addr
        .as_ref()
        .map(|a| socket_addr("hello.listen_addr", a))
        .transpose()?;
    let capabilities = hello
        .capabilities
        .iter()
        .filter_map(|c| match wire::Capability::try_from(*c) {
            Ok(wire::Capability::FileIndex) => Some(Capability::FileIndex),
            Ok(wire::Capability::Relay) => Some(Capability::Relay),
            Ok(wire::Capability::RoutingFilter) => Some(Capability::RoutingFilter),
            _ => None,
        })
        .collect();
    Ok(Hello {
        protocol_version: hello.protocol_version,
        role,
        node_id: node_id("hello.node_id", &hello.node_id)?,
        listen_addr,
        user_agent: hello.user_agent.clone(),
        capabilities,
    })
}

fn reject_reason(code: i32) -> RejectReason {
    match wire::RejectReason::try_from(code) {
        Ok(wire::RejectReason::VersionMismatch) => RejectReason::VersionMismatch,
        Ok(wire::RejectReason::Full) => RejectReason::Full,
        Ok(wire::RejectReason::RoleNotAccepted) => RejectReason::RoleNotAccepted,
        Ok(wire::RejectReason::SelfConnection) => RejectReason::SelfConnection,
        Ok(wire::RejectReason::DuplicateConnection) => RejectReason::DuplicateConnection,
        Ok(wire::RejectReason::AddressLimit) => RejectReason::AddressLimit,
        Ok(wire::RejectReason::NodeIdMismatch) => RejectReason::NodeIdMismatch,
        Ok(wire::RejectReason::Unspecified) | Err(_) => RejectReason::Unknown,
    }
}

fn bye_reason(code: i32) -> ByeReason {
    match wire::ByeReason::try_from(code) {
        Ok(wire::ByeReason::Shutdown) => ByeReason::Shutdown,
        Ok(wire::ByeReason::FrameTooLarge) => ByeReason::FrameTooLarge,
        Ok(wire::ByeReason::MalformedMessage) => ByeReason::MalformedMessage,
        Ok(wire::ByeReason::InvalidField) => ByeReason::InvalidField,
        Ok(wire::ByeReason::ProtocolViolation) => ByeReason::ProtocolViolation,
        Ok(wire::ByeReason::HandshakeTimeout) => ByeReason::HandshakeTimeout,
        Ok(wire::ByeReason::IdleTimeout) => ByeReason::IdleTimeout,
        Ok(wire::ByeReason::LimitExceeded) => ByeReason::LimitExceeded,
        Ok(wire::ByeReason::TooSlow) => ByeReason::TooSlow,
        Ok(wire::ByeReason::Unspecified) | Err(_) => ByeReason::Unknown,
    }
}

/// Keeps at most `max` bytes of a peer's free text, cut on a char boundary.
/// Used for Bye and rejection details, which are only ever logged.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn query(query: &wire::Query) -> Result<Query> {
    if query.ttl == 0 {
        return Err(invalid("query.ttl", "must be at least 1"));
    }
    let hops = u8::try_from(query.hops)
        .ok()
        .filter(|hops| *hops <= HARD_MAX_TTL)
        .ok_or_else(|| {
            invalid(
                "query.hops",
                format!("{} exceeds {HARD_MAX_TTL}", query.hops),
            )
        })?;
    max_count("query.keywords", &query.keywords, MAX_KEYWORDS)?;
    for keyword in &query.keywords {
        if keyword.is_empty() {
            return Err(invalid("query.keywords", "empty keyword"));
        }
        max_len("query.keywords", keyword, MAX_KEYWORD_LEN)?;
    }
    let content_id = if query.content_id.is_empty() {
        None
    } else {
        Some(content_id("query.content_id", &query.content_id)?)
    };
    if query.keywords.is_empty() && content_id.is_none() {
        return Err(invalid(
            "query.keywords",
            "a query needs keywords or a content id",
        ));
    }
    if let (Some(min), Some(max)) = (query.min_size, query.max_size) {
        if min > max {
            return Err(invalid(
                "query.min_size",
                format!("{min} is above max_size {max}"),
            ));
        }
    }
    Ok(Query {
        message_id: message_id("query.message_id", &query.message_id)?,
        // Anything above the hard cap is clamped by the receiver; saturate
        // here so the domain type can be small.
        ttl: u8::try_from(query.ttl).unwrap_or(u8::MAX),
        hops,
        keywords: query.keywords.clone(),
        content_id,
        min_size: query.min_size,
        max_size: query.max_size,
    })
}

fn query_hit(hit: &wire::QueryHit) -> Result<QueryHit> {
    let files = shared_files(
        FileFields {
            list: "query_hit.files",
            available: "query_hit.files.available",
        },
        &hit.files,
    )?;
    if files.is_empty() {
        return Err(invalid("query_hit.files", "a hit needs at least one file"));
    }
    let addr = hit
        .source_addr
        .as_ref()
        .ok_or_else(|| invalid("query_hit.source_addr", "missing"))?;
    Ok(QueryHit {
        message_id: message_id("query_hit.message_id", &hit.message_id)?,
        source_node_id: node_id("query_hit.source_node_id", &hit.source_node_id)?,
        source_addr: socket_addr("query_hit.source_addr", addr)?,
        files,
        firewalled: hit.firewalled,
    })
}

fn push(push: &wire::Push) -> Result<Push> {
    let hops = u8::try_from(push.hops)
        .ok()
        .filter(|hops| *hops <= HARD_MAX_TTL)
        .ok_or_else(|| invalid("push.hops", format!("{} exceeds {HARD_MAX_TTL}", push.hops)))?;
    let callback = push
        .callback_addr
        .as_ref()
        .ok_or_else(|| invalid("push.callback_addr", "missing"))?;
    Ok(Push {
        message_id: message_id("push.message_id", &push.message_id)?,
        target_node_id: node_id("push.target_node_id", &push.target_node_id)?,
        content_id: content_id("push.content_id", &push.content_id)?,
        callback_addr: socket_addr("push.callback_addr", callback)?,
        hops,
        punch: push.punch,
        relay: push.relay.as_ref().map(relay_circuit).transpose()?,
    })
}

fn relay_circuit(relay: &wire::RelayCircuit) -> Result<RelayCircuit> {
    let addr = relay
        .addr
        .as_ref()
        .ok_or_else(|| invalid("push.relay.addr", "missing"))?;
    let token = <[u8; 16]>::try_from(relay.token.as_slice()).map_err(|_| {
        invalid(
            "push.relay.token",
            format!("{} bytes, expected 16", relay.token.len()),
        )
    })?;
    if token == [0; 16] {
        return Err(invalid("push.relay.token", "all zero"));
    }
    Ok(RelayCircuit {
        addr: socket_addr("push.relay.addr", addr)?,
        token: CircuitToken(token),
    })
}

/// A supernode's connect-back verdict: the probed address is required.
fn reachability(verdict: &wire::Reachability) -> Result<Message> {
    let probed = verdict
        .probed_addr
        .as_ref()
        .ok_or_else(|| invalid("reachability.probed_addr", "missing"))?;
    Ok(Message::Reachability {
        reachable: verdict.reachable,
        probed_addr: socket_addr("reachability.probed_addr", probed)?,
    })
}

/// A leaf's new listening address: required, a real port.
fn announce(announce: &wire::Announce) -> Result<Message> {
    let addr = announce
        .listen_addr
        .as_ref()
        .ok_or_else(|| invalid("announce.listen_addr", "missing"))?;
    Ok(Message::Announce {
        listen_addr: socket_addr("announce.listen_addr", addr)?,
    })
}

impl TryFrom<wire::Envelope> for Message {
    type Error = InvalidMessage;

    fn try_from(envelope: wire::Envelope) -> Result<Message> {
        let body = envelope.body.ok_or_else(|| {
            invalid(
                "envelope.body",
                "empty or of a type this version does not know",
            )
        })?;
        Ok(match body {
            Body::Hello(h) => Message::Hello(hello(&h)?),
            Body::HelloReply(reply) => {
                let their_hello = reply
                    .hello
                    .as_ref()
                    .ok_or_else(|| invalid("hello_reply.hello", "missing"))?;
                let outcome = match reply.outcome {
                    Some(Outcome::Accepted(a)) => HandshakeOutcome::Accepted {
                        observed_addr: a
                            .observed_addr
                            .as_ref()
                            .map(|addr| socket_addr("accepted.observed_addr", addr))
                            .transpose()?,
                    },
                    Some(Outcome::Rejected(r)) => HandshakeOutcome::Rejected {
                        reason: reject_reason(r.reason),
                        detail: truncated(&r.detail, MAX_DETAIL_LEN),
                        try_supernodes: socket_addrs("rejected.try_supernodes", &r.try_supernodes)?,
                    },
                    None => return Err(invalid("hello_reply.outcome", "missing")),
                };
                Message::HelloReply(HelloReply {
                    hello: hello(their_hello)?,
                    outcome,
                    free_leaf_slots: free_leaf_slots(
                        "hello_reply.free_leaf_slots",
                        reply.free_leaf_slots,
                    )?,
                })
            }
            Body::Ping(p) => Message::Ping { nonce: p.nonce },
            Body::Pong(p) => Message::Pong {
                nonce: p.nonce,
                supernodes: socket_addrs("pong.supernodes", &p.supernodes)?,
                free_leaf_slots: free_leaf_slots("pong.free_leaf_slots", p.free_leaf_slots)?,
            },
            Body::Bye(b) => Message::Bye {
                reason: bye_reason(b.reason),
                detail: truncated(&b.detail, MAX_DETAIL_LEN),
                try_supernodes: socket_addrs("bye.try_supernodes", &b.try_supernodes)?,
            },
            Body::FileList(list) => Message::FileList {
                replace: list.replace,
                files: shared_files(
                    FileFields {
                        list: "file_list.files",
                        available: "file_list.files.available",
                    },
                    &list.files,
                )?,
            },
            Body::FileDelta(delta) => {
                max_count("file_delta.removed", &delta.removed, MAX_FILES_PER_MESSAGE)?;
                Message::FileDelta {
                    added: shared_files(
                        FileFields {
                            list: "file_delta.added",
                            available: "file_delta.added.available",
                        },
                        &delta.added,
                    )?,
                    removed: delta
                        .removed
                        .iter()
                        .map(|id| content_id("file_delta.removed", id))
                        .collect::<Result<_>>()?,
                }
            }
            Body::Query(q) => Message::Query(query(&q)?),
            Body::QueryHit(h) => Message::QueryHit(query_hit(&h)?),
            Body::Push(p) => Message::Push(push(&p)?),
            Body::QueryStatus(status) => Message::QueryStatus {
                message_id: message_id("query_status.message_id", &status.message_id)?,
                results: status.results,
            },
            Body::RoutingFilterPatch(patch) => Message::FilterPatch(filter_patch(patch)?),
            Body::Reachability(verdict) => reachability(&verdict)?,
            Body::Announce(a) => announce(&a)?,
        })
    }
}

fn filter_patch(patch: wire::RoutingFilterPatch) -> Result<FilterPatch> {
    let log2_slots = u8::try_from(patch.log2_slots)
        .ok()
        .filter(|log2| (MIN_FILTER_LOG2_SLOTS..=MAX_FILTER_LOG2_SLOTS).contains(log2))
        .ok_or_else(|| {
            invalid(
                "routing_filter_patch.log2_slots",
                format!(
                    "{} is outside {MIN_FILTER_LOG2_SLOTS}..={MAX_FILTER_LOG2_SLOTS}",
                    patch.log2_slots
                ),
            )
        })?;
    if patch.flips.len() > MAX_FILTER_PATCH_BYTES {
        return Err(invalid(
            "routing_filter_patch.flips",
            format!(
                "{} bytes, more than {MAX_FILTER_PATCH_BYTES}",
                patch.flips.len()
            ),
        ));
    }
    Ok(FilterPatch {
        log2_slots,
        reset: patch.reset,
        flips: patch.flips,
    })
}

fn wire_addr(addr: &SocketAddr) -> wire::SocketAddress {
    // An IPv4-mapped address goes out as the 4 bytes it is.
    let ip = match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    wire::SocketAddress {
        ip,
        port: u32::from(addr.port()),
    }
}

fn wire_file(file: &SharedFile) -> wire::SharedFile {
    wire::SharedFile {
        content_id: file.content_id.0.to_vec(),
        name: file.name.clone(),
        size: file.size,
        available: file.available,
    }
}

fn wire_hello(hello: &Hello) -> wire::Hello {
    wire::Hello {
        protocol_version: hello.protocol_version,
        role: match hello.role {
            Role::Leaf => wire::Role::Leaf,
            Role::Supernode => wire::Role::Supernode,
        } as i32,
        node_id: hello.node_id.0.to_vec(),
        listen_addr: hello.listen_addr.as_ref().map(wire_addr),
        user_agent: hello.user_agent.clone(),
        capabilities: hello
            .capabilities
            .iter()
            .map(|c| match c {
                Capability::FileIndex => wire::Capability::FileIndex as i32,
                Capability::Relay => wire::Capability::Relay as i32,
                Capability::RoutingFilter => wire::Capability::RoutingFilter as i32,
            })
            .collect(),
    }
}

fn wire_reject_reason(reason: RejectReason) -> wire::RejectReason {
    match reason {
        RejectReason::Unknown => wire::RejectReason::Unspecified,
        RejectReason::VersionMismatch => wire::RejectReason::VersionMismatch,
        RejectReason::Full => wire::RejectReason::Full,
        RejectReason::RoleNotAccepted => wire::RejectReason::RoleNotAccepted,
        RejectReason::SelfConnection => wire::RejectReason::SelfConnection,
        RejectReason::DuplicateConnection => wire::RejectReason::DuplicateConnection,
        RejectReason::AddressLimit => wire::RejectReason::AddressLimit,
        RejectReason::NodeIdMismatch => wire::RejectReason::NodeIdMismatch,
    }
}

fn wire_bye_reason(reason: ByeReason) -> wire::ByeReason {
    match reason {
        ByeReason::Unknown => wire::ByeReason::Unspecified,
        ByeReason::Shutdown => wire::ByeReason::Shutdown,
        ByeReason::FrameTooLarge => wire::ByeReason::FrameTooLarge,
        ByeReason::MalformedMessage => wire::ByeReason::MalformedMessage,
        ByeReason::InvalidField => wire::ByeReason::InvalidField,
        ByeReason::ProtocolViolation => wire::ByeReason::ProtocolViolation,
        ByeReason::HandshakeTimeout => wire::ByeReason::HandshakeTimeout,
        ByeReason::IdleTimeout => wire::ByeReason::IdleTimeout,
        ByeReason::LimitExceeded => wire::ByeReason::LimitExceeded,
        ByeReason::TooSlow => wire::ByeReason::TooSlow,
    }
}

impl From<&Message> for wire::Envelope {
    fn from(message: &Message) -> wire::Envelope {
        let body = match message {
            Message::Hello(h) => Body::Hello(wire_hello(h)),
            Message::HelloReply(reply) => Body::HelloReply(wire::HelloReply {
                hello: Some(wire_hello(&reply.hello)),
                outcome: Some(match &reply.outcome {
                    HandshakeOutcome::Accepted { observed_addr } => {
                        Outcome::Accepted(wire::Accepted {
                            observed_addr: observed_addr.as_ref().map(wire_addr),
                        })
                    }
                    HandshakeOutcome::Rejected {
                        reason,
                        detail,
                        try_supernodes,
                    } => Outcome::Rejected(wire::Rejected {
                        reason: wire_reject_reason(*reason) as i32,
                        detail: detail.clone(),
                        try_supernodes: try_supernodes.iter().map(wire_addr).collect(),
                    }),
                }),
                free_leaf_slots: reply.free_leaf_slots,
            }),
            Message::Ping { nonce } => Body::Ping(wire::Ping { nonce: *nonce }),
            Message::Pong {
                nonce,
                supernodes,
                free_leaf_slots,
            } => Body::Pong(wire::Pong {
                nonce: *nonce,
                supernodes: supernodes.iter().map(wire_addr).collect(),
                free_leaf_slots: *free_leaf_slots,
            }),
            Message::Bye {
                reason,
                detail,
                try_supernodes,
            } => Body::Bye(wire::Bye {
                reason: wire_bye_reason(*reason) as i32,
                detail: detail.clone(),
                try_supernodes: try_supernodes.iter().map(wire_addr).collect(),
            }),
            Message::FileList { replace, files } => Body::FileList(wire::FileList {
                replace: *replace,
                files: files.iter().map(wire_file).collect(),
            }),
            Message::FileDelta { added, removed } => Body::FileDelta(wire::FileDelta {
                added: added.iter().map(wire_file).collect(),
                removed: removed.iter().map(|id| id.0.to_vec()).collect(),
            }),
            Message::Query(q) => Body::Query(wire::Query {
                message_id: q.message_id.0.to_vec(),
                ttl: u32::from(q.ttl),
                hops: u32::from(q.hops),
                keywords: q.keywords.clone(),
                content_id: q.content_id.map(|id| id.0.to_vec()).unwrap_or_default(),
                min_size: q.min_size,
                max_size: q.max_size,
            }),
            Message::QueryHit(h) => Body::QueryHit(wire::QueryHit {
                message_id: h.message_id.0.to_vec(),
                source_node_id: h.source_node_id.0.to_vec(),
                source_addr: Some(wire_addr(&h.source_addr)),
                files: h.files.iter().map(wire_file).collect(),
                firewalled: h.firewalled,
            }),
            Message::Push(p) => Body::Push(wire::Push {
                message_id: p.message_id.0.to_vec(),
                target_node_id: p.target_node_id.0.to_vec(),
                content_id: p.content_id.0.to_vec(),
                callback_addr: Some(wire_addr(&p.callback_addr)),
                hops: u32::from(p.hops),
                punch: p.punch,
                relay: p.relay.as_ref().map(|r| wire::RelayCircuit {
                    addr: Some(wire_addr(&r.addr)),
                    token: r.token.0.to_vec(),
                }),
            }),
            Message::QueryStatus {
                message_id,
                results,
            } => Body::QueryStatus(wire::QueryStatus {
                message_id: message_id.0.to_vec(),
                results: *results,
            }),
            Message::FilterPatch(patch) => Body::RoutingFilterPatch(wire::RoutingFilterPatch {
                log2_slots: u32::from(patch.log2_slots),
                reset: patch.reset,
                flips: patch.flips.clone(),
            }),
            Message::Reachability {
                reachable,
                probed_addr,
            } => Body::Reachability(wire::Reachability {
                reachable: *reachable,
                probed_addr: Some(wire_addr(probed_addr)),
            }),
            Message::Announce { listen_addr } => Body::Announce(wire::Announce {
                listen_addr: Some(wire_addr(listen_addr)),
            }),
        };
        wire::Envelope { body: Some(body) }
    }
}
