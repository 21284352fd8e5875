//! One download of a content into a folder at a time: an exclusive
//! `flock` on `dir/.canopy-<id>.lock`, beside the partial and state files
//! it guards, held for the whole download. A second download of the same
//! id into the same folder (another process, or another task) fails at
//! once instead of writing into the same partial.
//!
//! The lock file is removed when the lock is released. Removing a locked
//! file races with someone who opened it just before: after taking the
//! lock, the holder checks the name still points at the file it locked,
//! and starts over if not.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use canopy_proto::ContentId;

/// The lock file's name for content `id`.
pub fn lock_name(id: ContentId) -> String {
    format!(".canopy-{id}.lock")
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone holds it.
    #[error("another download of this content into {0} is running")]
    Busy(PathBuf),
    /// The lock file could not be opened (a link there, permissions...).
    #[error("{path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A held lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct PartialLock {
    path: PathBuf,
    /// Holds the flock; closing it releases the lock.
    _file: File,
}

impl PartialLock {
    /// Takes the lock for content `id` in `dir`, or fails at once.
    pub fn acquire(dir: &Path, id: ContentId) -> Result<Self, LockError> {
        let path = dir.join(lock_name(id));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // A few rounds at most: each retry means a holder just released.
        for _ in 0..8 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io)?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(LockError::Busy(dir.to_owned())),
                Err(error) => return Err(io(error.into())),
            }
            let ours = file.metadata().map_err(io)?;
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                    return Ok(Self { path, _file: file });
                }
                // The holder removed it as we opened it: start over.
                _ => continue,
            }
        }
        Err(LockError::Busy(dir.to_owned()))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PartialLock {
    fn drop(&mut self) {
        // Removed while still held, so no one can lock the old file and
        // believe it is the current one (they check the name after).
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_second_lock_fails_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let id = ContentId([3; 32]);
        let first = PartialLock::acquire(dir.path(), id).unwrap();
        assert!(first.path().exists());
        assert!(matches!(
            PartialLock::acquire(dir.path(), id),
            Err(LockError::Busy(_))
        ));
        // Another id in the same folder is another lock.
        let other = PartialLock::acquire(dir.path(), ContentId([4; 32])).unwrap();
        drop(first);
        assert!(
            !dir.path().join(lock_name(id)).exists(),
            "removed on release"
        );
        let again = PartialLock::acquire(dir.path(), id).unwrap();
        drop((again, other));
    }

    #[test]
    fn a_link_at_the_lock_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let id = ContentId([5; 32]);
        let elsewhere = dir.path().join("victim");
        std::fs::write(&elsewhere, b"keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(lock_name(id))).unwrap();
        assert!(matches!(
            PartialLock::acquire(dir.path(), id),
            Err(LockError::Io { .. })
        ));
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
    }
}
