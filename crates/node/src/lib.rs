//! The tokio side of Canopy: sockets, tasks and timers around the protocol
//! core in `canopy-core`, which makes every decision.
//!
//! How the tasks divide the work (one node, either role):
//! - one *connection* task pair per TCP connection ([`connection`]), after
//!   a Noise handshake ([`secure`]) that authenticates the peer's static
//!   key: the reader decrypts and decodes frames and hands them to the node
//!   task; the writer drains a bounded queue of outgoing messages;
//! - one *node* task ([`supernode`] or [`leaf`]) that owns the core state
//!   machine, feeds it events and the time, and carries out its actions;
//! - for a supernode, an accept loop and one dialer per configured peer,
//!   redialing with backoff;
//! - with LAN discovery on, a [`lan`] task in the multicast group whose
//!   view of the LAN feeds the host cache (supernodes to dial) and the
//!   leaf's status;
//! - for a leaf, the HTTP file server of `canopy-transfer` on its listen
//!   address; [`get`] runs a short-lived leaf that finds sources and drives
//!   a verified multi-source download;
//! - for a leaf with the supernode election on, an [`election`] task that
//!   measures, asks the core's policy, and starts or steps down a
//!   supernode in the same process;
//! - for either role, once the listener is bound, a port mapper
//!   (`canopy-portmap`, hooked in by `portmap`) asks the home router to
//!   forward the listen port; the mapped address is the one announced, and
//!   the mapping goes at shutdown.
//!
//! Shutdown follows mini-redis: a `CancellationToken` tells every task to
//! stop, the node task says Bye to every peer, and a `TaskTracker` waits for
//! the writers to flush.

pub mod addr;
pub mod clock;
pub mod connection;
pub mod election;
pub mod fetch;
pub mod get;
pub mod hosts;
pub mod key_file;
pub mod lan;
pub mod leaf;
pub mod metrics;
pub mod outbox;
mod portmap;
pub mod relay;
pub mod secure;
pub mod send_queue;
pub mod supernode;
pub mod traffic;

use std::net::SocketAddr;

/// Errors starting or talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Could not bind the listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// No supernode accepted us (refused, unreachable, or timed out).
    #[error("{0}")]
    NotConnected(String),
    /// A shared folder could not be scanned.
    #[error(transparent)]
    Share(#[from] canopy_share::ShareError),
    /// A search could not run.
    #[error("search failed: {0}")]
    Search(String),
    /// The node's key file could not be loaded or created.
    #[error(transparent)]
    Key(#[from] key_file::KeyFileError),
    /// Nobody reachable has the content.
    #[error("no source found for {0}")]
    NotFound(canopy_proto::ContentId),
    /// The download failed.
    #[error(transparent)]
    Download(#[from] canopy_transfer::download::DownloadError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// A folder to stop sharing was not shared.
    #[error("{}: not a shared folder", .0.display())]
    NotShared(std::path::PathBuf),
}

/// The static key of a node of `role`: `given`, else the one in
/// `data_dir`'s key file for the role (created on first start), else a
/// fresh ephemeral one.
pub fn node_key(
    given: Option<&canopy_proto::secure::StaticKeypair>,
    data_dir: Option<&std::path::Path>,
    role: canopy_proto::Role,
) -> Result<canopy_proto::secure::StaticKeypair, NodeError> {
    if let Some(key) = given {
        return Ok(key.clone());
    }
    match data_dir {
        Some(dir) => Ok(key_file::load_or_create(dir, role)?),
        None => ephemeral_key(),
    }
}

/// A fresh key pair for a node without a data directory.
pub fn ephemeral_key() -> Result<canopy_proto::secure::StaticKeypair, NodeError> {
    canopy_proto::secure::StaticKeypair::generate()
        .map_err(|e| NodeError::Key(key_file::KeyFileError::Generate(e.to_string())))
}

/// A random query id.
pub fn random_message_id() -> canopy_proto::MessageId {
    canopy_proto::MessageId(rand::random())
}
