//! The host cache: supernodes this node has heard of (configured, from
//! Pongs, from try-lists), most recently heard first. Kept in the data
//! directory as JSON, written atomically, so the next start tries them
//! first. Bounded; a file that does not parse is started afresh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name inside the data directory.
pub const HOST_CACHE_FILE: &str = "hosts.json";
/// Most addresses remembered.
pub const MAX_HOSTS: usize = 1000;

/// Supernode addresses, most recently heard first.
#[derive(Debug, Default)]
pub struct HostCache {
    path: Option<PathBuf>,
    hosts: Vec<SocketAddr>,
    dirty: bool,
}

impl HostCache {
    /// The cache in `data_dir`, or an empty one kept in memory only.
    pub fn load(data_dir: Option<&Path>) -> Self {
        let Some(dir) = data_dir else {
            return Self::default();
        };
        let path = dir.join(HOST_CACHE_FILE);
        let mut hosts: Vec<SocketAddr> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        hosts.truncate(MAX_HOSTS);
        Self {
            path: Some(path),
            hosts,
            dirty: false,
        }
    }

    /// Remembers `addrs`, as heard of just now.
    pub fn learn(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                continue;
            }
            if self.hosts.first() == Some(&addr) {
                continue;
            }
            self.hosts.retain(|known| *known != addr);
            self.hosts.insert(0, addr);
            self.dirty = true;
        }
        self.hosts.truncate(MAX_HOSTS);
    }

    /// Adds configured addresses behind what the cache already holds: the
    /// cache is tried first, the seeds after it.
    pub fn add_seeds(&mut self, seeds: impl IntoIterator<Item = SocketAddr>) {
        for seed in seeds {
            if !self.hosts.contains(&seed) && self.hosts.len() < MAX_HOSTS {
                self.hosts.push(seed);
                self.dirty = true;
            }
        }
    }

    /// The addresses, most recently heard first.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.hosts
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
        std::fs::write(
            &temporary,
            serde_json::to_vec(&self.hosts).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&temporary, path)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn most_recent_first_bounded_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = HostCache::load(Some(dir.path()));
        cache.learn([
            addr(1),
            addr(2),
            addr(1),
            SocketAddr::from(([0, 0, 0, 0], 9)),
        ]);
        assert_eq!(cache.addresses(), &[addr(1), addr(2)]);
        cache.save().unwrap();
        let again = HostCache::load(Some(dir.path()));
        assert_eq!(again.addresses(), &[addr(1), addr(2)]);
        let mut many = HostCache::default();
        many.learn((1..=2000).map(addr));
        assert_eq!(many.addresses().len(), MAX_HOSTS);
        assert_eq!(many.addresses()[0], addr(2000));
    }

    #[test]
    fn a_corrupt_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HOST_CACHE_FILE), b"{not json").unwrap();
        assert!(HostCache::load(Some(dir.path())).addresses().is_empty());
    }
}
