//! The control API's token: 32 random bytes as 64 hex characters in
//! `control.token` in the data directory, readable by its owner only.
//! Local clients (the CLI, a browser through the start-up URL) read it
//! there; anyone who can read it can drive the leaf.
//!
//! Like the node's key file, it is created once, atomically (written to a
//! temporary file, then hard-linked into place, which fails rather than
//! overwrite), and never rewritten; a file others may read, or one that
//! does not hold a well-formed token, is refused with a clear error rather
//! than used or replaced.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::Path;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "control.token";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Hex characters in a token.
const TOKEN_LEN: usize = TOKEN_BYTES * 2;

/// The secret a client shows to use the control API.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in `data_dir`'s `control.token`, created (with the
    /// directory) if there is none.
    pub fn load_or_create(data_dir: &Path) -> io::Result<Token> {
        let path = data_dir.join(TOKEN_FILE);
        match Self::load(&path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        fs::create_dir_all(data_dir)?;
        let token = Token(hex::encode(rand::random::<[u8; TOKEN_BYTES]>()));
        let temporary = data_dir.join(format!(
            ".{TOKEN_FILE}.{}.{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = write_new(&temporary, token.0.as_bytes());
        let linked = written.and_then(|()| fs::hard_link(&temporary, &path));
        let _ = fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created a new control API token");
                Ok(token)
            }
            // Another process created it meanwhile: use theirs.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(error) => Err(annotate(&path, error)),
        }
    }

    /// The token in the file at `path`, checked: a regular file, readable
    /// by its owner only, holding 64 hex characters (a final newline is
    /// allowed, for a file written by hand).
    pub fn load(path: &Path) -> io::Result<Token> {
        let metadata = fs::symlink_metadata(path).map_err(|e| annotate(path, e))?;
        if !metadata.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("token file {}: not a regular file", path.display()),
            ));
        }
        check_permissions(path, &metadata)?;
        let mut file = fs::File::open(path).map_err(|e| annotate(path, e))?;
        let mut text = String::new();
        // One byte more than a token and its newline tells "too long".
        (&mut file)
            .take(TOKEN_LEN as u64 + 2)
            .read_to_string(&mut text)
            .map_err(|e| annotate(path, e))?;
        Self::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "token file {} does not hold a token ({TOKEN_LEN} hex characters); \
                     remove it to have a new one made",
                    path.display()
                ),
            )
        })
    }

    /// A token from its text, if well formed.
    pub fn parse(text: &str) -> Option<Token> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        (text.len() == TOKEN_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Token(text.to_ascii_lowercase()))
    }

    /// The token's text (64 hex characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is this token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, offered: &str) -> bool {
        let ours = self.0.as_bytes();
        let theirs = offered.as_bytes();
        if ours.len() != theirs.len() {
            return false;
        }
        ours.iter().zip(theirs).fold(0u8, |difference, (a, b)| {
            difference | (a ^ b.to_ascii_lowercase())
        }) == 0
    }
}

fn annotate(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("token file {}: {error}", path.display()),
    )
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

#[cfg(unix)]
fn check_permissions(path: &Path, metadata: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "token file {} has mode {mode:o}; it must be readable by its owner only \
                 (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &fs::Metadata) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_loaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = Token::load_or_create(&data).unwrap();
        assert_eq!(first.as_str().len(), 64);
        assert!(first.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        let path = data.join(TOKEN_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = Token::load_or_create(&data).unwrap();
        assert_eq!(again, first);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
        // Two data directories, two tokens.
        let other = Token::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(other, first);
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_token_file_is_refused_and_left_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = Token::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = Token::load_or_create(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("chmod 600"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), first.as_str());
    }

    #[test]
    fn a_malformed_token_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        write_new(&path, b"not a token").unwrap();
        let error = Token::load_or_create(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("64 hex"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), b"not a token");
    }

    #[test]
    fn a_token_with_a_final_newline_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let text = "ab".repeat(32);
        write_new(&path, format!("{text}\n").as_bytes()).unwrap();
        assert_eq!(Token::load(&path).unwrap().as_str(), text);
        write_new(&dir.path().join("long"), "a".repeat(65).as_bytes()).unwrap();
        assert!(Token::load(&dir.path().join("long")).is_err());
    }

    #[test]
    fn matching_is_exact() {
        let token = Token::parse(&"0f".repeat(32)).unwrap();
        assert!(token.matches(&"0f".repeat(32)));
        assert!(token.matches(&"0F".repeat(32)));
        assert!(!token.matches(&"0f".repeat(31)));
        assert!(!token.matches(&format!("{}0e", "0f".repeat(31))));
        assert!(!token.matches(""));
    }
}
