//! The node-wide download mesh: who else serves a content id.
//!
//! One [`SharedMesh`] per leaf, shared by its server and its downloads: the
//! core's [`Mesh`] table (bounded, I/O-free, aged by the `Time` it is
//! given) behind a mutex, with a monotonic clock of its own turned into
//! that `Time`. The server adds a downloader that says where it listens
//! (`X-Listen`) and hands out a few alternates on every `/content`
//! response (`X-Alt`); downloads add the sources that delivered a
//! verified group (an alternate learned from a header goes in only once
//! it has), and remove the dead and the liars.
//!
//! The headers, as sent on the wire:
//! - `X-Available-Ranges: bytes 0-1048575, 3145728-4194303`: what a
//!   partial source has (absent: the whole file);
//! - `X-Alt: 10.1.2.3:6346, [2001:db8::1]:6346`: other sources of the
//!   same content, at most [`ALTERNATES_PER_RESPONSE`];
//! - `X-Listen: 6346` (request): the port the downloader serves on, at the
//!   address its connection comes from (never an address from a header).
//! - `X-Offer: bytes 0-1048575` (same form as `X-Available-Ranges`): what a
//!   server with the whole file offers a crowd now (see [`crate::ration`]);
//!   absent, it serves any range. On a 416 it is the reason: those groups
//!   were sent more often than these, ask for these instead.
//! - `X-Need: bytes 0-1048575` (request, same form): the groups a sharing
//!   downloader has not got and is not getting elsewhere; a seed rations
//!   only requests that say it, and offers only groups in it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use canopy_core::mesh::{Mesh, MeshConfig};
use canopy_core::time::Time;
use canopy_proto::ContentId;

/// Response header: the byte ranges a partial source can serve.
pub const AVAILABLE_RANGES: &str = "x-available-ranges";
/// Response header: other sources of the same content.
pub const ALT: &str = "x-alt";
/// Response header: the byte ranges a rationing server with the whole
/// file serves now.
pub const OFFER: &str = "x-offer";
/// Request header: the byte ranges a downloader still needs.
pub const NEED: &str = "x-need";
/// Request header: the port the downloader serves HTTP on.
pub const LISTEN: &str = "x-listen";
/// Alternates sent in one response at most.
pub const ALTERNATES_PER_RESPONSE: usize = 8;

/// The mesh shared by a leaf's server and downloads. Cheap to clone:
/// clones share the table.
#[derive(Debug, Clone)]
pub struct SharedMesh {
    mesh: Arc<Mutex<Mesh>>,
    origin: Instant,
}

impl Default for SharedMesh {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedMesh {
    /// An empty mesh with the core's default bounds.
    pub fn new() -> Self {
        Self::with_config(MeshConfig::default())
    }

    /// An empty mesh bounded by `config`.
    pub fn with_config(config: MeshConfig) -> Self {
        Self {
            mesh: Arc::new(Mutex::new(Mesh::new(config))),
            origin: Instant::now(),
        }
    }

    /// `addr` serves `id`, or says it does, now.
    pub fn add(&self, id: ContentId, addr: SocketAddr) {
        let now = self.now();
        self.lock().add(id, addr, now);
    }

    /// `addr` is dead or lied: forget it for `id`.
    pub fn remove(&self, id: &ContentId, addr: SocketAddr) {
        self.lock().remove(id, addr);
    }

    /// Up to `count` alternates for `id`, newest first, none too old, none
    /// at `except`'s IP.
    pub fn pick(&self, id: &ContentId, except: Option<IpAddr>, count: usize) -> Vec<SocketAddr> {
        let now = self.now();
        self.lock().pick(id, except, count, now)
    }

    /// Entries in all.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when the mesh knows no one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mesh's time: milliseconds since it was made.
    fn now(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mesh> {
        self.mesh.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_table_and_the_requester_is_left_out() {
        let mesh = SharedMesh::new();
        let clone = mesh.clone();
        let id = ContentId([7; 32]);
        let a: SocketAddr = "192.0.2.1:6346".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:6346".parse().unwrap();
        mesh.add(id, a);
        clone.add(id, b);
        assert_eq!(mesh.len(), 2);
        let mut all = clone.pick(&id, None, ALTERNATES_PER_RESPONSE);
        all.sort();
        assert_eq!(all, vec![a, b]);
        assert_eq!(mesh.pick(&id, Some(a.ip()), 8), vec![b]);
        assert!(mesh.pick(&ContentId([8; 32]), None, 8).is_empty());
        clone.remove(&id, b);
        assert_eq!(mesh.pick(&id, None, 8), vec![a]);
    }
}
