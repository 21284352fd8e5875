//! Append-only storage in fixed-size chunks, for the index's records and
//! names: it grows without ever copying a large block, so there is neither
//! the pause of moving a hundred megabytes nor the freed old block that an
//! allocator may keep resident for a while after a doubling.

/// Items per chunk of a [`ChunkedVec`].
const CHUNK_ITEMS: usize = 16 * 1024;
/// Bytes per chunk of a [`TextArena`].
const TEXT_CHUNK: usize = 1 << 20;

/// A vector of `T` in chunks of [`CHUNK_ITEMS`].
#[derive(Debug, Clone)]
pub struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    /// Items held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `item`.
    pub fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_ITEMS => chunk.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_ITEMS);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// The item at `index`.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.chunks
            .get(index / CHUNK_ITEMS)?
            .get(index % CHUNK_ITEMS)
    }

    /// The item at `index`, to change.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(index / CHUNK_ITEMS)?
            .get_mut(index % CHUNK_ITEMS)
    }

    /// Every item, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

/// Strings appended into chunks of [`TEXT_CHUNK`] bytes, each found again
/// by its offset and length. A string never straddles two chunks.
#[derive(Debug, Clone, Default)]
pub struct TextArena {
    chunks: Vec<String>,
}

impl TextArena {
    /// Appends `text` (at most a chunk long); returns its offset, or
    /// `None` if it is too long or offsets ran past `u32`.
    pub fn push(&mut self, text: &str) -> Option<u32> {
        if text.len() > TEXT_CHUNK {
            return None;
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.len() + text.len() <= TEXT_CHUNK);
        if !fits {
            self.chunks.push(String::with_capacity(TEXT_CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut()?;
        let at = u32::try_from(index * TEXT_CHUNK + chunk.len()).ok()?;
        chunk.push_str(text);
        Some(at)
    }

    /// The text of `len` bytes at `at`.
    pub fn get(&self, at: u32, len: usize) -> Option<&str> {
        let at = at as usize;
        let start = at % TEXT_CHUNK;
        self.chunks.get(at / TEXT_CHUNK)?.get(start..start + len)
    }

    /// Bytes of text held.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(String::len).sum()
    }

    /// True if `len` more bytes would still have offsets within `u32`.
    pub fn has_room(&self, len: usize) -> bool {
        (self.chunks.len() + 1) * TEXT_CHUNK + len <= u32::MAX as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_vec_indexes_across_chunks() {
        let mut items = ChunkedVec::default();
        for n in 0..(2 * CHUNK_ITEMS + 5) {
            items.push(n);
        }
        assert_eq!(items.len(), 2 * CHUNK_ITEMS + 5);
        assert_eq!(items.get(CHUNK_ITEMS), Some(&CHUNK_ITEMS));
        assert_eq!(items.get(2 * CHUNK_ITEMS + 5), None);
        if let Some(item) = items.get_mut(7) {
            *item = 70;
        }
        assert_eq!(items.iter().nth(7), Some(&70));
        assert_eq!(items.iter().count(), items.len());
    }

    #[test]
    fn texts_never_straddle_chunks() {
        let mut arena = TextArena::default();
        let word = "x".repeat(1000);
        let mut placed = Vec::new();
        for _ in 0..(3 * TEXT_CHUNK / 1000) {
            placed.push(arena.push(&word));
        }
        for at in placed {
            let at = at.unwrap_or(u32::MAX);
            assert_eq!(arena.get(at, 1000), Some(word.as_str()));
        }
        assert_eq!(arena.bytes(), 3 * TEXT_CHUNK / 1000 * 1000);
        assert_eq!(arena.push(&"y".repeat(TEXT_CHUNK + 1)), None);
    }
}
