//! The verification tree (`canopy_core::tree`): a source's CV list checked
//! against a content id, then groups checked against the tree.
//!
//! The first byte picks a mode:
//! - 0, hostile: size, id and CV list all from the input, as a hostile
//!   source and a forged hit would give them; nothing may panic, and a
//!   tree accepted must still refuse groups that do not hash to the id.
//! - 1, honest: a file of 2 to 9 groups whose first groups are a fixed
//!   pattern and whose last group is the input; its id is the real BLAKE3
//!   hash of the whole file, its tree the real group CVs. The tree must
//!   verify, every group must pass, and any change (a flipped bit in the
//!   last group or the tree, a cut, a group index out of range) must fail.
//! - 2, single group: the input is the whole file; checked against the id.
#![no_main]

use std::sync::OnceLock;

use canopy_core::tree::{GROUP_LEN, TreeError, VerifiedTree, group_cv};
use canopy_proto::ContentId;
use libfuzzer_sys::fuzz_target;

/// Most groups of a file in the honest mode.
const MAX_GROUPS: usize = 9;

/// The pattern groups: each one's CV, and the hasher that has read the
/// first `k` of them (index `k`), ready to take the last group.
struct Pattern {
    cvs: Vec<[u8; 32]>,
    hashers: Vec<blake3::Hasher>,
}

fn pattern() -> &'static Pattern {
    static PATTERN: OnceLock<Pattern> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let group_len = usize::try_from(GROUP_LEN).unwrap_or(usize::MAX);
        let mut hasher = blake3::Hasher::new();
        let mut hashers = vec![hasher.clone()];
        let mut cvs = Vec::new();
        for index in 0..MAX_GROUPS - 1 {
            let group: Vec<u8> = (0..group_len)
                .map(|i| (i.wrapping_mul(31) ^ index) as u8)
                .collect();
            cvs.push(group_cv(index as u64, &group));
            hasher.update(&group);
            hashers.push(hasher.clone());
        }
        Pattern { cvs, hashers }
    })
}

fn hostile(data: &[u8]) {
    let Some((size, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some((id, rest)) = rest.split_first_chunk::<32>() else {
        return;
    };
    // Mostly small sizes (a CV list the input can fill), sometimes any u64.
    let size = u64::from_le_bytes(*size);
    let size = if size & 1 == 0 {
        (size >> 1) % (MAX_GROUPS as u64 * GROUP_LEN)
    } else {
        size >> 1
    };
    let id = ContentId(*id);
    let Ok(tree) = VerifiedTree::from_bytes(id, size, rest) else {
        return;
    };
    assert_eq!(tree.size(), size);
    // Whatever a source sent, a group must still hash right to pass.
    let group = &rest[..rest.len().min(1024)];
    for index in [0, tree.groups() - 1, tree.groups()] {
        if tree.verify_group(index, group).is_ok() {
            assert!(index < tree.groups());
            if tree.groups() == 1 {
                assert_eq!(*blake3::hash(group).as_bytes(), id.0);
            }
        }
    }
}

fn honest(data: &[u8]) {
    let Some((&shape, last)) = data.split_first() else {
        return;
    };
    if last.is_empty() || last.len() as u64 > GROUP_LEN {
        return;
    }
    let pattern = pattern();
    let groups = 2 + usize::from(shape) % (MAX_GROUPS - 1);
    let last_index = (groups - 1) as u64;
    let size = last_index * GROUP_LEN + last.len() as u64;
    let mut hasher = pattern.hashers[groups - 1].clone();
    hasher.update(last);
    let id = ContentId(*hasher.finalize().as_bytes());
    let mut cvs: Vec<u8> = pattern.cvs[..groups - 1].concat();
    cvs.extend_from_slice(&group_cv(last_index, last));

    let tree = match VerifiedTree::from_bytes(id, size, &cvs) {
        Ok(tree) => tree,
        Err(error) => panic!("an honest tree of {groups} groups fails: {error}"),
    };
    assert_eq!(tree.groups(), last_index + 1);
    assert_eq!(tree.verify_group(last_index, last), Ok(()));
    let (a, b) = last.split_at(usize::from(shape) % last.len());
    assert_eq!(tree.verify_group_parts(last_index, &[a, b]), Ok(()));
    assert_eq!(
        tree.verify_group(last_index + 1, last),
        Err(TreeError::BadGroup(last_index + 1))
    );
    assert_eq!(
        tree.verify_group(last_index, &last[1..]),
        Err(TreeError::BadGroup(last_index))
    );

    let flip = usize::from(shape) * 7919 % last.len();
    let mut bad = last.to_vec();
    bad[flip] ^= 1 << (shape % 8);
    assert_eq!(
        tree.verify_group(last_index, &bad),
        Err(TreeError::GroupMismatch(last_index))
    );

    let mut bad_tree = cvs.clone();
    let flip = usize::from(shape) * 104_729 % bad_tree.len();
    bad_tree[flip] ^= 0x80;
    assert_eq!(
        VerifiedTree::from_bytes(id, size, &bad_tree),
        Err(TreeError::RootMismatch)
    );
    assert!(matches!(
        VerifiedTree::from_bytes(id, size, &cvs[..cvs.len() - 1]),
        Err(TreeError::WrongLength { .. })
    ));
}

fn single_group(file: &[u8]) {
    if file.len() as u64 > GROUP_LEN {
        return;
    }
    let id = ContentId(*blake3::hash(file).as_bytes());
    let size = file.len() as u64;
    let tree = match VerifiedTree::from_bytes(id, size, &[]) {
        Ok(tree) => tree,
        Err(error) => panic!("a single-group file fails: {error}"),
    };
    assert_eq!(tree.groups(), 1);
    assert_eq!(tree.verify_group(0, file), Ok(()));
    assert!(VerifiedTree::from_bytes(id, size, &[0; 32]).is_err());
    if let Some((&first, rest)) = file.split_first() {
        let mut bad = vec![first ^ 1];
        bad.extend_from_slice(rest);
        assert_eq!(tree.verify_group(0, &bad), Err(TreeError::GroupMismatch(0)));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => hostile(rest),
        1 => honest(rest),
        _ => single_group(rest),
    }
});
