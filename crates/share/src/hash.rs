//! BLAKE3 of a whole file: the content id, identical to what `b3sum` prints,
//! and the file's verification tree (the chaining values of its 1 MiB
//! groups, see `canopy_core::tree`), both from one read of the file.

use std::os::unix::fs::FileExt;
use std::path::Path;

use canopy_core::tree::{GROUP_LEN, group_count, group_cv, group_len, root_of_cvs};
use canopy_proto::ContentId;
use rayon::prelude::*;

/// A file's content id and the tree a downloader checks it against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    /// BLAKE3 of the whole file.
    pub id: ContentId,
    /// The group chaining values, concatenated; empty for a file of one
    /// group (at most 1 MiB), whose bytes are checked against the id.
    pub tree: Vec<u8>,
}

/// Hashes the file at `path`, streaming: memory use does not grow with size.
pub fn hash_file(path: &Path) -> std::io::Result<ContentId> {
    Ok(hash_file_with_tree(path)?.id)
}

/// Hashes the file at `path` into its id and tree. A file of several groups
/// is hashed a group at a time on every core (each group is a whole BLAKE3
/// subtree), and the groups' chaining values merge into the id, so the file
/// is read once for both. Memory: one 1 MiB buffer per core, plus 32 bytes
/// per MiB of file.
pub fn hash_file_with_tree(path: &Path) -> std::io::Result<FileHash> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let groups = group_count(size);
    if groups == 1 {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&file)?;
        return Ok(FileHash {
            id: ContentId(*hasher.finalize().as_bytes()),
            tree: Vec::new(),
        });
    }
    let cvs: Vec<[u8; 32]> = (0..groups)
        .into_par_iter()
        .map_init(
            || vec![0u8; usize::try_from(GROUP_LEN).unwrap_or(1 << 20)],
            |buffer, index| {
                let chunk = &mut buffer[..group_len(size, index)];
                file.read_exact_at(chunk, index * GROUP_LEN)?;
                Ok(group_cv(index, chunk))
            },
        )
        .collect::<std::io::Result<_>>()?;
    let tree: Vec<u8> = cvs.concat();
    let id = root_of_cvs(&tree).ok_or_else(|| std::io::Error::other("no chaining values"))?;
    Ok(FileHash { id, tree })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_hash_small_and_large() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 5, 1 << 20, (1 << 20) + 1, (3 << 20) + 17] {
            let data: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            let expected = blake3::hash(&data);
            let hashed = hash_file_with_tree(&path).unwrap();
            assert_eq!(hashed.id.0, *expected.as_bytes(), "size {size}");
            assert_eq!(
                hashed.tree,
                canopy_core::tree::tree_of(&data),
                "size {size}"
            );
            assert_eq!(hash_file(&path).unwrap(), hashed.id);
        }
    }
}
