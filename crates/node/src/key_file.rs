//! The node's persistent identity: its static X25519 private key in the
//! data directory (32 raw bytes, mode 0600), one file per role
//! (`supernode.key`, `leaf.key`), so a supernode and a leaf sharing a data
//! directory on one machine are still two nodes. Its node id derives from
//! the key ([`canopy_proto::secure::PublicKey::node_id`]), so a node keeps
//! its id across restarts.
//!
//! The file is created on first start, atomically (written to a temporary
//! file, then linked into place, which fails rather than overwrite), and
//! never rewritten. A file another user could read, or of the wrong
//! length, is refused with a clear error rather than used or replaced.

use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use canopy_proto::Role;
use canopy_proto::secure::{KEY_LEN, StaticKeypair};

/// The key file's name in the data directory for a node of `role`.
pub fn key_file_name(role: Role) -> &'static str {
    match role {
        Role::Supernode => "supernode.key",
        Role::Leaf => "leaf.key",
    }
}

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Group or others may access it.
    #[error(
        "key file {path} has mode {mode:o}; it must be readable by its owner only (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It does not hold exactly one key.
    #[error("key file {path} holds {len} bytes, not a {KEY_LEN}-byte key")]
    BadLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// No key could be generated.
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// The key in `dir`'s key file for `role`, created (with `dir`) if there
/// is none.
pub fn load_or_create(dir: &Path, role: Role) -> Result<StaticKeypair, KeyFileError> {
    let name = key_file_name(role);
    let path = dir.join(name);
    match load(&path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let io_error = |source| KeyFileError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    let key = StaticKeypair::generate().map_err(|e| KeyFileError::Generate(e.to_string()))?;
    let temporary = dir.join(format!(
        ".{name}.{}.{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = write_new(&temporary, key.private_bytes());
    let linked = written.and_then(|()| fs::hard_link(&temporary, &path));
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), node_id = %key.node_id(), "created a new node key");
            Ok(key)
        }
        // Another process created it meanwhile: use theirs.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => load(&path),
        Err(error) => Err(io_error(error)),
    }
}

/// The key in `path`, checked.
pub fn load(path: &Path) -> Result<StaticKeypair, KeyFileError> {
    let io_error = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = open_no_follow(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    check_permissions(path, &metadata)?;
    if metadata.len() != KEY_LEN as u64 {
        return Err(KeyFileError::BadLength {
            path: path.to_owned(),
            len: metadata.len(),
        });
    }
    let mut private = [0u8; KEY_LEN];
    file.read_exact(&mut private).map_err(io_error)?;
    Ok(StaticKeypair::from_private(private))
}

/// Creates `path` (which must not exist) readable by its owner only, with
/// `bytes`, flushed to disk.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Opens `path` for reading if it is a regular file (not a symlink
/// planted in its place).
fn open_no_follow(path: &Path) -> io::Result<fs::File> {
    if !fs::symlink_metadata(path)?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    fs::File::open(path)
}

#[cfg(unix)]
fn check_permissions(path: &Path, metadata: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_loaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(&data, Role::Leaf).unwrap();
        let path = data.join(key_file_name(Role::Leaf));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = load_or_create(&data, Role::Leaf).unwrap();
        assert_eq!(again.public(), first.public());
        assert_eq!(again.node_id(), first.node_id());
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
    }

    #[test]
    fn a_supernode_and_a_leaf_sharing_a_data_directory_are_two_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let supernode = load_or_create(dir.path(), Role::Supernode).unwrap();
        let leaf = load_or_create(dir.path(), Role::Leaf).unwrap();
        assert_ne!(supernode.node_id(), leaf.node_id());
        let again = load_or_create(dir.path(), Role::Supernode).unwrap();
        assert_eq!(again.node_id(), supernode.node_id());
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_key_file_is_refused_and_left_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), Role::Leaf).unwrap();
        let path = dir.path().join(key_file_name(Role::Leaf));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(dir.path(), Role::Leaf).unwrap_err();
        assert!(matches!(
            error,
            KeyFileError::Permissions { mode: 0o644, .. }
        ));
        assert!(error.to_string().contains("chmod 600"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), first.private_bytes());
    }

    #[test]
    fn a_key_file_of_the_wrong_length_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(key_file_name(Role::Leaf));
        write_new(&path, b"short").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Role::Leaf),
            Err(KeyFileError::BadLength { len: 5, .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"short");
    }
}
