//! Handshake rules shared by both roles: who we say we are, which Hellos
//! are acceptable at all, and where a peer can be reached.

use std::net::SocketAddr;

use canopy_proto::limits::PROTOCOL_VERSION;
use canopy_proto::{Capability, Hello, NodeId, RejectReason, Role};

/// How this node presents itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Our node id.
    pub node_id: NodeId,
    /// Leaf or supernode.
    pub role: Role,
    /// Where we accept connections, if anywhere.
    pub listen_addr: Option<SocketAddr>,
    /// Names the software, e.g. `canopy/0.1.0`.
    pub user_agent: String,
}

impl Identity {
    /// Our Hello.
    pub fn hello(&self) -> Hello {
        let capabilities = match self.role {
            Role::Supernode => vec![Capability::FileIndex],
            Role::Leaf => Vec::new(),
        };
        Hello {
            protocol_version: PROTOCOL_VERSION,
            role: self.role,
            node_id: self.node_id,
            listen_addr: self.listen_addr,
            user_agent: self.user_agent.clone(),
            capabilities,
        }
    }
}

/// A refusal: the reason code and a sentence for the other side's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The code.
    pub reason: RejectReason,
    /// The sentence.
    pub detail: String,
}

impl Rejection {
    /// A refusal with `reason` and `detail`.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Checks that apply to every Hello, whatever our role: the protocol
/// version, that the node id is the one the peer's key owns
/// (`authenticated`, derived from the static key it proved during the
/// Noise handshake: so no one can claim another node's id), and that the
/// peer is not ourselves.
pub fn check_hello(me: NodeId, authenticated: NodeId, hello: &Hello) -> Result<(), Rejection> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Rejection::new(
            RejectReason::VersionMismatch,
            format!(
                "protocol version {} is not supported; this node speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        ));
    }
    if hello.node_id != authenticated {
        return Err(Rejection::new(
            RejectReason::NodeIdMismatch,
            format!(
                "node id {} is not the one your key owns ({authenticated})",
                hello.node_id
            ),
        ));
    }
    if hello.node_id == me {
        return Err(Rejection::new(
            RejectReason::SelfConnection,
            "that is this node's own id",
        ));
    }
    Ok(())
}

/// Where a peer that announced `advertised` and connected from `observed`
/// can be reached: the advertised port, on the advertised IP unless that is
/// unspecified (0.0.0.0 or ::), in which case on the IP we see it from.
/// Always canonical (an IPv4-mapped IP as IPv4: `family::canonical`).
pub fn reachable_addr(advertised: Option<SocketAddr>, observed: SocketAddr) -> SocketAddr {
    let addr = match advertised {
        Some(addr) if addr.ip().is_unspecified() => SocketAddr::new(observed.ip(), addr.port()),
        Some(addr) => addr,
        None => observed,
    };
    crate::family::canonical(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, id: u8) -> Hello {
        let mut hello = Identity {
            node_id: NodeId([id; 16]),
            role: Role::Leaf,
            listen_addr: None,
            user_agent: "t".into(),
        }
        .hello();
        hello.protocol_version = version;
        hello
    }

    #[test]
    fn version_and_self_are_checked() {
        let me = NodeId([1; 16]);
        let peer = NodeId([2; 16]);
        assert_eq!(check_hello(me, peer, &hello(PROTOCOL_VERSION, 2)), Ok(()));
        assert_eq!(
            check_hello(me, peer, &hello(99, 2)).map_err(|r| r.reason),
            Err(RejectReason::VersionMismatch)
        );
        assert_eq!(
            check_hello(me, me, &hello(PROTOCOL_VERSION, 1)).map_err(|r| r.reason),
            Err(RejectReason::SelfConnection)
        );
    }

    #[test]
    fn a_node_id_not_owned_by_the_key_is_refused() {
        let me = NodeId([1; 16]);
        // Key 3's owner claims node 2's id.
        let rejection = check_hello(me, NodeId([3; 16]), &hello(PROTOCOL_VERSION, 2));
        assert_eq!(
            rejection.map_err(|r| r.reason),
            Err(RejectReason::NodeIdMismatch)
        );
        // Claiming our own id with another key is a mismatch, not a
        // self-connection.
        assert_eq!(
            check_hello(me, NodeId([3; 16]), &hello(PROTOCOL_VERSION, 1)).map_err(|r| r.reason),
            Err(RejectReason::NodeIdMismatch)
        );
    }

    #[test]
    fn an_unspecified_listen_ip_takes_the_observed_one() {
        let observed: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:6346".parse().unwrap();
        let fixed: SocketAddr = "198.51.100.1:6346".parse().unwrap();
        assert_eq!(
            reachable_addr(Some(any), observed),
            "192.0.2.7:6346".parse().unwrap()
        );
        assert_eq!(reachable_addr(Some(fixed), observed), fixed);
        assert_eq!(reachable_addr(None, observed), observed);
    }

    #[test]
    fn a_dual_stack_listener_and_a_mapped_peer_give_canonical_addresses() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:50000".parse().unwrap();
        let any6: SocketAddr = "[::]:6346".parse().unwrap();
        assert_eq!(
            reachable_addr(Some(any6), mapped),
            "192.0.2.7:6346".parse().unwrap()
        );
        assert_eq!(
            reachable_addr(None, mapped),
            "192.0.2.7:50000".parse().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::7]:50000".parse().unwrap();
        assert_eq!(
            reachable_addr(Some(any6), v6),
            "[2001:db8::7]:6346".parse().unwrap()
        );
    }
}
