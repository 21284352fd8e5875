//! BLAKE3 of a whole file: the content id, identical to what `b3sum` prints.

use std::path::Path;

use canopy_proto::ContentId;

/// Files at least this large are hashed with every core (memory-mapped and
/// split across rayon's pool); smaller ones are read on one thread, which is
/// faster for them.
const MULTITHREAD_THRESHOLD: u64 = 1 << 20;

/// Hashes the file at `path`, streaming: memory use does not grow with size.
pub fn hash_file(path: &Path) -> std::io::Result<ContentId> {
    let size = std::fs::metadata(path)?.len();
    let mut hasher = blake3::Hasher::new();
    if size >= MULTITHREAD_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update_reader(std::fs::File::open(path)?)?;
    }
    Ok(ContentId(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_hash_small_and_large() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 5, 1 << 20, (3 << 20) + 17] {
            let data: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            let expected = blake3::hash(&data);
            assert_eq!(
                hash_file(&path).unwrap().0,
                *expected.as_bytes(),
                "size {size}"
            );
        }
    }
}
