//! The host cache: the core's address manager
//! ([`canopy_core::addrman::AddrMan`]) kept in the data directory as JSON,
//! written atomically, so the next start knows the same supernodes in the
//! same buckets. Every decision (what to believe, whom to dial) is the
//! core's; this file only reads the wall clock and the RNG and does the
//! file I/O. A file that does not parse, or is too large, is started
//! afresh (with a new bucket key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use canopy_core::addrman::{AddrMan, AddrManStats, Snapshot};

use crate::clock::wall_time;

/// File name inside the data directory.
pub const HOST_CACHE_FILE: &str = "hosts.json";
/// A larger file is not read: a full cache is about 200 KiB.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// The address manager and where it is saved.
#[derive(Debug)]
pub struct HostCache {
    path: Option<PathBuf>,
    manager: AddrMan,
    dirty: bool,
    /// The configured seeds; bootstrap addresses are offered after them.
    configured: Vec<SocketAddr>,
    /// What the bootstrap names resolved to last.
    bootstrap: Vec<SocketAddr>,
    /// Supernodes LAN discovery hears now: offered after the bootstrap's.
    lan: Vec<SocketAddr>,
}

impl HostCache {
    /// The cache in `data_dir` (or one kept in memory only), with `seeds`,
    /// the configured supernodes, kept apart and offered first.
    pub fn load(data_dir: Option<&Path>, seeds: &[SocketAddr]) -> Self {
        let path = data_dir.map(|dir| dir.join(HOST_CACHE_FILE));
        let saved = path.as_deref().and_then(read_snapshot);
        let dirty = saved.is_none();
        let mut manager = match saved {
            Some(snapshot) => AddrMan::restore(snapshot),
            // A new key, saved with the first write.
            None => AddrMan::new(rand::random()),
        };
        manager.set_seeds(seeds.iter().copied());
        Self {
            path,
            manager,
            dirty,
            configured: seeds.to_vec(),
            bootstrap: Vec::new(),
            lan: Vec::new(),
        }
    }

    /// The addresses the bootstrap names (DNS seeds) resolved to: offered
    /// like seeds, after the configured ones, in place of those the last
    /// resolution gave. Not saved.
    pub fn set_bootstrap(&mut self, resolved: &[SocketAddr]) {
        self.bootstrap = resolved.to_vec();
        self.reseed();
    }

    /// The supernodes LAN discovery hears now (a few, its own bounded
    /// table's): offered like seeds, after the configured and the
    /// bootstrap ones, in place of those it heard before, so one that falls
    /// silent stops being offered first. Not saved, and not through the
    /// address manager's learning: it takes no private address from a
    /// stranger, and these come from our own LAN, not from a peer.
    pub fn set_lan(&mut self, supernodes: &[SocketAddr]) {
        self.lan = supernodes.to_vec();
        self.reseed();
    }

    fn reseed(&mut self) {
        let seeds = self
            .configured
            .iter()
            .chain(&self.bootstrap)
            .chain(&self.lan);
        self.manager.set_seeds(seeds.copied());
    }

    /// `from` named `supernodes` in answer to something we asked; the core
    /// decides how many (if any) to keep. Returns how many were added.
    pub fn learn(&mut self, from: SocketAddr, supernodes: &[SocketAddr]) -> usize {
        let added = self
            .manager
            .add(from, supernodes, rand::random(), wall_time());
        if added > 0 {
            self.dirty = true;
        }
        added
    }

    /// We joined the supernode at `addr`.
    pub fn mark_good(&mut self, addr: SocketAddr) {
        self.manager.mark_good(addr, wall_time());
        self.dirty = true;
    }

    /// A dial to `addr` failed.
    pub fn mark_failed(&mut self, addr: SocketAddr) {
        self.manager.mark_failed(addr, wall_time());
        self.dirty = true;
    }

    /// A connection we opened to `addr` at `started` (by [`wall_time`])
    /// ended: a failure unless a handshake completed on it.
    pub fn dial_ended(&mut self, addr: SocketAddr, started: canopy_core::Time) {
        if self
            .manager
            .last_success(addr)
            .is_none_or(|joined| joined < started)
        {
            self.mark_failed(addr);
        }
    }

    /// Whom to dial next: a seed first, else a learned supernode, passing
    /// over those `skip` names.
    pub fn select(&self, skip: impl Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        self.manager.select(rand::random(), wall_time(), skip)
    }

    /// [`HostCache::select`] with the randomness given (a policy's own
    /// seeded generator draws it).
    pub fn select_with(
        &self,
        random: u64,
        skip: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        self.manager.select(random, wall_time(), skip)
    }

    /// Every address known, seeds first.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.manager.addresses()
    }

    /// The address manager itself (for its tables and counters).
    pub fn manager(&self) -> &AddrMan {
        &self.manager
    }

    /// What the manager took and refused.
    pub fn stats(&self) -> &AddrManStats {
        self.manager.stats()
    }

    /// Writes the cache back if it changed and has a file.
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.manager.snapshot()).map_err(std::io::Error::other)?;
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, path)?;
        self.dirty = false;
        Ok(())
    }
}

/// The host cache as a policy's source of candidates
/// ([`canopy_core::discovery::Candidates`]).
impl canopy_core::discovery::Candidates for HostCache {
    fn select(&mut self, random: u64, skip: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        self.select_with(random, skip)
    }
}

fn read_snapshot(path: &Path) -> Option<Snapshot> {
    if std::fs::metadata(path).ok()?.len() > MAX_FILE_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn persisted_with_its_key_and_seeds_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let seed = addr(1);
        let mut cache = HostCache::load(Some(dir.path()), &[seed]);
        assert_eq!(cache.learn(addr(2), &[addr(3), addr(4), seed]), 2);
        cache.mark_good(addr(3));
        cache.save().unwrap();
        let again = HostCache::load(Some(dir.path()), &[]);
        let mut known: Vec<SocketAddr> = again.addresses().collect();
        known.sort();
        assert_eq!(known, vec![addr(3), addr(4)], "the seed is not saved");
        for a in [addr(3), addr(4)] {
            assert_eq!(again.manager().position(a), cache.manager().position(a));
        }
        let reseeded = HostCache::load(Some(dir.path()), &[addr(9)]);
        assert_eq!(reseeded.select(|_| false), Some(addr(9)));
    }

    #[test]
    fn bootstrap_addresses_are_offered_after_the_configured_seeds() {
        let mut cache = HostCache::load(None, &[addr(1)]);
        cache.set_bootstrap(&[addr(2), addr(1), addr(3)]);
        let known: Vec<SocketAddr> = cache.addresses().collect();
        assert_eq!(known, vec![addr(1), addr(2), addr(3)]);
        assert_eq!(cache.select(|a| a == addr(1)), Some(addr(2)));
        // A new resolution replaces the old one's addresses.
        cache.set_bootstrap(&[addr(4)]);
        let known: Vec<SocketAddr> = cache.addresses().collect();
        assert_eq!(known, vec![addr(1), addr(4)]);
    }

    #[test]
    fn lan_supernodes_are_offered_after_the_bootstrap_and_replaced_whole() {
        let mut cache = HostCache::load(None, &[addr(1)]);
        cache.set_bootstrap(&[addr(2)]);
        let lan = SocketAddr::from(([192, 168, 1, 9], 6346));
        cache.set_lan(&[lan]);
        let known: Vec<SocketAddr> = cache.addresses().collect();
        assert_eq!(known, vec![addr(1), addr(2), lan]);
        assert_eq!(cache.select(|a| a.ip().is_loopback()), Some(lan));
        // A new resolution keeps the LAN's; silence on the LAN drops them.
        cache.set_bootstrap(&[addr(3)]);
        assert_eq!(
            cache.addresses().collect::<Vec<_>>(),
            vec![addr(1), addr(3), lan]
        );
        cache.set_lan(&[]);
        assert_eq!(
            cache.addresses().collect::<Vec<_>>(),
            vec![addr(1), addr(3)]
        );
        // Seeds are never saved, LAN ones included.
        assert_eq!(cache.manager().new_len() + cache.manager().tried_len(), 0);
    }

    #[test]
    fn a_corrupt_or_old_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(HOST_CACHE_FILE);
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(
            HostCache::load(Some(dir.path()), &[]).addresses().count(),
            0
        );
        // The old format (a bare list, possibly poisoned) is not trusted.
        std::fs::write(&file, br#"["127.0.0.1:5"]"#).unwrap();
        let mut cache = HostCache::load(Some(dir.path()), &[]);
        assert_eq!(cache.addresses().count(), 0);
        cache.save().unwrap();
        assert!(read_snapshot(&file).is_some(), "rewritten in the new form");
    }
}
