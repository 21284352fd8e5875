//! A leaf's shared folders.
//!
//! [`scan`] walks the folders (never following links, skipping hidden files
//! and names the protocol can't carry), reuses cached hashes for files whose
//! path, size and modification time are unchanged, and hashes the rest with
//! BLAKE3: several files at once, and large files with every core, as
//! `b3sum` does. Hashing also yields each file's verification tree, kept in
//! the cache beside the id, so serving a tree never reads the file. Shared
//! folders are only ever read.

mod cache;
mod hash;
mod scan;

pub use cache::HashCache;
pub use hash::{FileHash, hash_file, hash_file_with_tree};
pub use scan::{LocalFile, ScanReport, scan, scan_file, scan_with};

use std::path::PathBuf;

/// What went wrong with a shared folder or the hash cache.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A path given to share is not a readable directory.
    #[error("{path}: not a directory that can be shared")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Reading a file or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}
