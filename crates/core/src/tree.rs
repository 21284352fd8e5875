//! The verification tree: how a downloader checks every chunk of a file
//! against its content id alone.
//!
//! A file is cut into groups of [`GROUP_LEN`] bytes (the last may be
//! shorter). BLAKE3 is itself a tree over 1 KiB chunks, and because a group
//! is a power-of-two number of chunks, each group is a whole subtree: its
//! chaining value (CV) can be computed alone, and the CVs of all groups
//! merge, by BLAKE3's own rule (the left subtree holds the largest power of
//! two of groups that leaves the right one non-empty), into the root hash,
//! which is the content id.
//!
//! So a source sends the list of group CVs (32 bytes a MiB: 32 KiB for a
//! GiB); the downloader merges them and checks the root against the id.
//! Then each group that arrives is hashed and compared with its CV before a
//! byte of it is kept. A file of a single group has no CV list: its bytes
//! are checked against the id directly.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use canopy_proto::ContentId;

/// Bytes per group: 1 MiB, a power-of-two number of BLAKE3 chunks.
pub const GROUP_LEN: u64 = 1 << 20;

/// The largest file Canopy will download: 1 TiB, so a million groups and a
/// 32 MiB tree at most. A size in a hit is a peer's claim; anything larger
/// is refused before a byte is allocated for it.
pub const MAX_DOWNLOAD_SIZE: u64 = 1 << 40;

/// A group index as a `usize`, for indexing in-memory tables. Sizes are
/// capped at [`MAX_DOWNLOAD_SIZE`], so indices stay far below `u32::MAX`.
pub fn group_slot(index: u64) -> usize {
    usize::try_from(index).unwrap_or(usize::MAX)
}

/// Why a tree or a group did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The CV list has the wrong length for the file's size.
    #[error("expected {expected} bytes of chaining values, got {got}")]
    WrongLength {
        /// Expected bytes.
        expected: usize,
        /// Received bytes.
        got: usize,
    },
    /// The CVs do not merge into the content id.
    #[error("chaining values do not match the content id")]
    RootMismatch,
    /// A group's bytes do not match its CV.
    #[error("group {0} does not match its chaining value")]
    GroupMismatch(u64),
    /// A group index or length outside the file.
    #[error("group {0} is outside the file or has the wrong length")]
    BadGroup(u64),
}

/// How many groups a file of `size` bytes has (an empty file has one, empty).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_LEN).max(1)
}

/// The byte range of group `index` in a file of `size` bytes.
pub fn group_range(size: u64, index: u64) -> std::ops::Range<u64> {
    let start = index.saturating_mul(GROUP_LEN).min(size);
    let end = start.saturating_add(GROUP_LEN).min(size);
    start..end
}

/// The length of group `index` of a file of `size` bytes (at most 1 MiB).
pub fn group_len(size: u64, index: u64) -> usize {
    let range = group_range(size, index);
    group_slot(range.end - range.start)
}

/// The CV of group `index`, whose bytes are `data`. Only files of two or
/// more groups have CVs, and none of their groups is empty.
pub fn group_cv(index: u64, data: &[u8]) -> ChainingValue {
    debug_assert!(!data.is_empty(), "multi-group files have no empty group");
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * GROUP_LEN);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Merges the CVs of groups `cvs` (a whole subtree) into one CV.
fn merge_non_root(cvs: &[ChainingValue]) -> ChainingValue {
    match cvs {
        [one] => *one,
        _ => {
            let left = left_len(cvs.len());
            let (l, r) = cvs.split_at(left);
            merge_subtrees_non_root(&merge_non_root(l), &merge_non_root(r), Mode::Hash)
        }
    }
}

/// Groups in the left subtree of `n` groups: the largest power of two below n.
fn left_len(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The CVs of a file of several groups, verified: they merge into `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTree {
    size: u64,
    id: ContentId,
    /// Empty for a single-group file.
    cvs: Vec<ChainingValue>,
}

impl VerifiedTree {
    /// Checks `bytes` (the concatenated CVs a source sent) against `id`.
    pub fn from_bytes(id: ContentId, size: u64, bytes: &[u8]) -> Result<Self, TreeError> {
        let groups = group_count(size);
        let expected = if groups == 1 {
            0
        } else {
            group_slot(groups).saturating_mul(32)
        };
        if bytes.len() != expected {
            return Err(TreeError::WrongLength {
                expected,
                got: bytes.len(),
            });
        }
        let cvs = split_cvs(bytes);
        if cvs.len() >= 2 && merge_cvs(&cvs) != id {
            return Err(TreeError::RootMismatch);
        }
        Ok(Self { size, id, cvs })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of groups.
    pub fn groups(&self) -> u64 {
        group_count(self.size)
    }

    /// Checks the bytes of group `index`.
    pub fn verify_group(&self, index: u64, data: &[u8]) -> Result<(), TreeError> {
        self.verify_group_parts(index, &[data])
    }

    /// Checks group `index` given as consecutive `parts` (the pieces it
    /// arrived in), without gathering them into one buffer.
    pub fn verify_group_parts<P: AsRef<[u8]>>(
        &self,
        index: u64,
        parts: &[P],
    ) -> Result<(), TreeError> {
        let range = group_range(self.size, index);
        let len: u64 = parts.iter().map(|p| p.as_ref().len() as u64).sum();
        if index >= self.groups() || len != range.end - range.start {
            return Err(TreeError::BadGroup(index));
        }
        let mut hasher = blake3::Hasher::new();
        let ok = if self.cvs.is_empty() {
            for part in parts {
                hasher.update(part.as_ref());
            }
            *hasher.finalize().as_bytes() == self.id.0
        } else {
            hasher.set_input_offset(index * GROUP_LEN);
            for part in parts {
                hasher.update(part.as_ref());
            }
            self.cvs.get(group_slot(index)) == Some(&hasher.finalize_non_root())
        };
        if ok {
            Ok(())
        } else {
            Err(TreeError::GroupMismatch(index))
        }
    }
}

/// The content id that the CVs `bytes` (of two or more groups) merge
/// into, or `None` for fewer than two CVs or a length that is not a whole
/// number of CVs. Lets a source hash each group once, in parallel, and get
/// both the id and the tree it serves.
pub fn root_of_cvs(bytes: &[u8]) -> Option<ContentId> {
    if bytes.len() < 64 || bytes.len() % 32 != 0 {
        return None;
    }
    Some(merge_cvs(&split_cvs(bytes)))
}

/// `bytes` cut into 32-byte CVs (a trailing partial CV is ignored; callers
/// check the length first).
fn split_cvs(bytes: &[u8]) -> Vec<ChainingValue> {
    bytes
        .chunks_exact(32)
        .map(|c| {
            let mut cv = [0u8; 32];
            cv.copy_from_slice(c);
            cv
        })
        .collect()
}

/// The content id two or more group CVs merge into, by BLAKE3's own rule.
fn merge_cvs(cvs: &[ChainingValue]) -> ContentId {
    let (l, r) = cvs.split_at(left_len(cvs.len()));
    let root = merge_subtrees_root(&merge_non_root(l), &merge_non_root(r), Mode::Hash);
    ContentId(*root.as_bytes())
}

/// The tree of `data` held in memory, as a source serves it: the CVs of
/// its groups, concatenated; empty for a single-group file.
pub fn tree_of(data: &[u8]) -> Vec<u8> {
    let size = data.len() as u64;
    if group_count(size) == 1 {
        return Vec::new();
    }
    data.chunks(group_slot(GROUP_LEN))
        .enumerate()
        .flat_map(|(index, group)| group_cv(index as u64, group))
        .collect()
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn the_tree_of_groups_merges_into_the_blake3_hash() {
        let g = GROUP_LEN as usize;
        for len in [
            0,
            1,
            1024,
            g - 1,
            g,
            g + 1,
            2 * g,
            3 * g + 5,
            4 * g,
            5 * g,
            7 * g + 1,
        ] {
            let bytes = data(len);
            let id = ContentId(*blake3::hash(&bytes).as_bytes());
            let encoded = tree_of(&bytes);
            let tree = VerifiedTree::from_bytes(id, len as u64, &encoded)
                .unwrap_or_else(|e| panic!("len {len}: {e}"));
            for i in 0..tree.groups() {
                let r = group_range(len as u64, i);
                assert_eq!(
                    tree.verify_group(i, &bytes[r.start as usize..r.end as usize]),
                    Ok(())
                );
            }
        }
    }

    #[test]
    fn a_group_in_pieces_verifies_like_the_whole() {
        let len = 2 * GROUP_LEN as usize + 777;
        let bytes = data(len);
        let id = ContentId(*blake3::hash(&bytes).as_bytes());
        let tree = VerifiedTree::from_bytes(id, len as u64, &tree_of(&bytes)).unwrap();
        let group = &bytes[GROUP_LEN as usize..2 * GROUP_LEN as usize];
        for cut in [1, 1000, 1024, 65_536, GROUP_LEN as usize - 1] {
            let (a, b) = group.split_at(cut);
            assert_eq!(tree.verify_group_parts(1, &[a, b]), Ok(()), "cut at {cut}");
        }
        let mut bad = group.to_vec();
        bad[5] ^= 1;
        let (a, b) = bad.split_at(3);
        assert_eq!(
            tree.verify_group_parts(1, &[a, b]),
            Err(TreeError::GroupMismatch(1))
        );
        let small =
            VerifiedTree::from_bytes(ContentId(*blake3::hash(b"tiny").as_bytes()), 4, &[]).unwrap();
        assert_eq!(
            small.verify_group_parts(0, &[&b"ti"[..], &b"ny"[..]]),
            Ok(())
        );
    }

    #[test]
    fn a_flipped_bit_is_caught_in_the_tree_and_in_a_group() {
        let len = 3 * GROUP_LEN as usize + 100;
        let bytes = data(len);
        let id = ContentId(*blake3::hash(&bytes).as_bytes());
        let mut encoded = tree_of(&bytes);
        encoded[40] ^= 1;
        assert_eq!(
            VerifiedTree::from_bytes(id, len as u64, &encoded),
            Err(TreeError::RootMismatch)
        );
        encoded[40] ^= 1;
        assert!(matches!(
            VerifiedTree::from_bytes(id, len as u64, &encoded[..64]),
            Err(TreeError::WrongLength { .. })
        ));
        let tree = VerifiedTree::from_bytes(id, len as u64, &encoded).unwrap();
        let mut group = bytes[GROUP_LEN as usize..2 * GROUP_LEN as usize].to_vec();
        group[12345] ^= 0x80;
        assert_eq!(
            tree.verify_group(1, &group),
            Err(TreeError::GroupMismatch(1))
        );
        assert_eq!(
            tree.verify_group(1, &group[..10]),
            Err(TreeError::BadGroup(1))
        );
        assert_eq!(tree.verify_group(9, &group), Err(TreeError::BadGroup(9)));
    }

    #[test]
    fn a_single_group_file_is_checked_against_the_id() {
        let bytes = data(5000);
        let id = ContentId(*blake3::hash(&bytes).as_bytes());
        let tree = VerifiedTree::from_bytes(id, 5000, &[]).unwrap();
        assert_eq!(tree.verify_group(0, &bytes), Ok(()));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(tree.verify_group(0, &bad), Err(TreeError::GroupMismatch(0)));
    }

    #[test]
    fn the_cvs_merge_into_the_content_id() {
        for len in [(1 << 20) + 1, 3 << 20, (5 << 20) + 77] {
            let bytes = data(len);
            let tree = tree_of(&bytes);
            assert_eq!(
                root_of_cvs(&tree),
                Some(ContentId(*blake3::hash(&bytes).as_bytes())),
                "{len} bytes"
            );
        }
        assert_eq!(root_of_cvs(&[0; 32]), None);
        assert_eq!(root_of_cvs(&[0; 70]), None);
    }
}
