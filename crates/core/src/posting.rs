//! A posting list: the ascending slots of the files whose names have one
//! word, stored for memory.
//!
//! Short lists (most words are rare) are a few inline `u32`s. Past
//! [`PACK_AT`] entries a list is packed: blocks of [`BLOCK`] slots, each
//! block's first slot kept whole in a small head table (with its byte
//! offset) and the rest as LEB128 varints of the gap to the previous slot.
//! The long lists are the common words (extensions, years, "live"), whose
//! gaps are small: one byte a slot instead of four. Reading is sequential
//! within a block; a [`Cursor`] seeks forward by galloping over the heads,
//! so intersecting a short list with a long one skips whole blocks.

use smallvec::SmallVec;

use crate::varint;

/// A file's number in the index.
pub type Slot = u32;

/// Entries past which a list is packed.
pub const PACK_AT: usize = 64;
/// Slots per packed block.
pub const BLOCK: usize = 64;

/// See the module documentation.
#[derive(Debug, Clone)]
pub enum Posting {
    /// Up to [`PACK_AT`] slots.
    Plain(SmallVec<[Slot; 4]>),
    /// Longer lists, delta-encoded.
    Packed(Box<Packed>),
}

impl Default for Posting {
    fn default() -> Self {
        Posting::Plain(SmallVec::new())
    }
}

/// A packed list.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    /// Each block's first slot and where its gaps start in `gaps`.
    heads: Vec<(Slot, u32)>,
    /// Varint gaps, block after block.
    gaps: Vec<u8>,
    len: usize,
    last: Slot,
}

impl Packed {
    fn push(&mut self, slot: Slot) {
        if self.len % BLOCK == 0 {
            let at = u32::try_from(self.gaps.len()).unwrap_or(u32::MAX);
            self.heads.push((slot, at));
        } else {
            varint::put(&mut self.gaps, slot.wrapping_sub(self.last));
        }
        self.last = slot;
        self.len += 1;
    }

    /// Entries in block `block`.
    fn block_len(&self, block: usize) -> usize {
        (self.len - block * BLOCK).min(BLOCK)
    }

    /// The byte range of block `block`'s gaps.
    fn block_gaps(&self, block: usize) -> &[u8] {
        let start = self.heads.get(block).map_or(0, |h| h.1 as usize);
        let end = self
            .heads
            .get(block + 1)
            .map_or(self.gaps.len(), |h| h.1 as usize);
        self.gaps.get(start..end).unwrap_or_default()
    }

    fn block_iter(&self, block: usize) -> impl Iterator<Item = Slot> + '_ {
        let first = self.heads.get(block).map(|h| h.0);
        let gaps = self.block_gaps(block);
        let mut at = 0;
        let mut value = first.unwrap_or(0);
        first.into_iter().chain(
            std::iter::from_fn(move || {
                value = value.wrapping_add(varint::get(gaps, &mut at)?);
                Some(value)
            })
            .take(self.block_len(block).saturating_sub(1)),
        )
    }
}

/// A position in a posting list, for seeking forward through it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor {
    block: usize,
    /// Index within a plain list, or within the current block.
    index: usize,
    /// Byte offset within the current block's gaps.
    at: usize,
    /// The slot at the cursor (valid once `started`).
    value: Slot,
    started: bool,
}

impl Posting {
    /// Appends `slot`, which must be above every slot already held.
    pub fn push(&mut self, slot: Slot) {
        match self {
            Posting::Plain(slots) if slots.len() < PACK_AT => slots.push(slot),
            Posting::Plain(slots) => {
                let mut packed = Packed::default();
                for old in slots.iter() {
                    packed.push(*old);
                }
                packed.push(slot);
                *self = Posting::Packed(Box::new(packed));
            }
            Posting::Packed(packed) => packed.push(slot),
        }
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        match self {
            Posting::Plain(slots) => slots.len(),
            Posting::Packed(packed) => packed.len,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every slot, ascending.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Slot> + '_> {
        match self {
            Posting::Plain(slots) => Box::new(slots.iter().copied()),
            Posting::Packed(packed) => {
                Box::new((0..packed.heads.len()).flat_map(|block| packed.block_iter(block)))
            }
        }
    }

    /// True if `slot` is held.
    pub fn contains(&self, slot: Slot) -> bool {
        match self {
            Posting::Plain(slots) => slots.binary_search(&slot).is_ok(),
            Posting::Packed(packed) => {
                let block = packed.heads.partition_point(|h| h.0 <= slot);
                block > 0 && packed.block_iter(block - 1).any(|s| s == slot)
            }
        }
    }

    /// Moves `cursor` forward to the first slot not below `target` (it
    /// never moves back); true if that slot is `target`.
    pub fn seek(&self, cursor: &mut Cursor, target: Slot) -> bool {
        match self {
            Posting::Plain(slots) => {
                cursor.index = gallop(slots, cursor.index, |s| *s < target);
                slots.get(cursor.index) == Some(&target)
            }
            Posting::Packed(packed) => seek_packed(packed, cursor, target),
        }
    }

    /// Renumbers every slot with `map`, dropping those it maps to `None`;
    /// `map` must keep the order.
    pub fn remap(&mut self, map: impl Fn(Slot) -> Option<Slot>) {
        let slots: Vec<Slot> = self.iter().filter_map(map).collect();
        let mut fresh = Posting::default();
        for slot in slots {
            fresh.push(slot);
        }
        if let Posting::Packed(packed) = &mut fresh {
            packed.heads.shrink_to_fit();
            packed.gaps.shrink_to_fit();
        }
        *self = fresh;
    }

    /// Bytes held outside the list itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Posting::Plain(slots) if slots.spilled() => slots.capacity() * 4,
            Posting::Plain(_) => 0,
            Posting::Packed(packed) => {
                std::mem::size_of::<Packed>()
                    + packed.heads.capacity() * std::mem::size_of::<(Slot, u32)>()
                    + packed.gaps.capacity()
            }
        }
    }
}

fn seek_packed(packed: &Packed, cursor: &mut Cursor, target: Slot) -> bool {
    if cursor.started && cursor.value >= target {
        return cursor.value == target;
    }
    // Whole blocks whose successor starts at or below the target are
    // skipped by galloping over the heads.
    let next = gallop(&packed.heads, cursor.block + 1, |h| h.0 <= target);
    if !cursor.started || next > cursor.block + 1 {
        let Some(block) = next.checked_sub(1) else {
            return false;
        };
        let Some(head) = packed.heads.get(block) else {
            return false;
        };
        *cursor = Cursor {
            block,
            index: 0,
            at: 0,
            value: head.0,
            started: true,
        };
    }
    while cursor.value < target {
        cursor.index += 1;
        if cursor.index >= packed.block_len(cursor.block) {
            // The next block starts above the target (or there is none).
            let Some(head) = packed.heads.get(cursor.block + 1) else {
                return false;
            };
            *cursor = Cursor {
                block: cursor.block + 1,
                index: 0,
                at: 0,
                value: head.0,
                started: true,
            };
            return cursor.value == target;
        }
        let Some(gap) = varint::get(packed.block_gaps(cursor.block), &mut cursor.at) else {
            return false;
        };
        cursor.value = cursor.value.wrapping_add(gap);
    }
    cursor.value == target
}

/// The first position at or after `from` where `before` stops holding, in
/// a list where it holds for a prefix: doubling steps from `from`, then a
/// binary search.
fn gallop<T>(list: &[T], from: usize, before: impl Fn(&T) -> bool) -> usize {
    let mut step = 1;
    let mut low = from;
    while let Some(item) = list.get(low + step - 1) {
        if !before(item) {
            break;
        }
        low += step;
        step *= 2;
    }
    let high = (low + step).min(list.len());
    let window = list.get(low..high).unwrap_or_default();
    low + window.partition_point(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ascending slots with gaps from `seed`: small and large gaps mixed.
    fn slots(count: usize, seed: u64) -> Vec<Slot> {
        let mut state = seed | 1;
        let mut slot = 0u32;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let gap = if state % 5 == 0 {
                    state % 100_000
                } else {
                    state % 4
                };
                slot += 1 + u32::try_from(gap).unwrap_or(0);
                slot
            })
            .collect()
    }

    fn posting(of: &[Slot]) -> Posting {
        let mut posting = Posting::default();
        for slot in of {
            posting.push(*slot);
        }
        posting
    }

    #[test]
    fn iterates_and_finds_what_was_pushed_plain_and_packed() {
        for count in [0, 1, 4, PACK_AT, PACK_AT + 1, BLOCK, BLOCK + 1, 1000] {
            let expected = slots(count, count as u64 + 7);
            let list = posting(&expected);
            assert_eq!(list.len(), count);
            assert_eq!(list.iter().collect::<Vec<_>>(), expected, "{count}");
            for slot in &expected {
                assert!(list.contains(*slot));
                assert!(!list.contains(*slot + 1) || expected.contains(&(*slot + 1)));
            }
            assert!(!list.contains(0));
        }
    }

    #[test]
    fn a_cursor_seeks_like_a_search_of_the_rest() {
        let expected = slots(5000, 42);
        let list = posting(&expected);
        let probes = slots(700, 99);
        let mut cursor = Cursor::default();
        let mut from = 0;
        for target in probes {
            from += expected
                .get(from..)
                .unwrap_or_default()
                .partition_point(|s| *s < target);
            let found = list.seek(&mut cursor, target);
            assert_eq!(found, expected.get(from) == Some(&target), "{target}");
        }
    }

    #[test]
    fn remapping_keeps_order_and_drops_the_dead() {
        let expected = slots(300, 5);
        let mut list = posting(&expected);
        list.remap(|slot| (slot % 3 != 0).then_some(slot / 2));
        let kept: Vec<Slot> = expected
            .iter()
            .filter(|s| *s % 3 != 0)
            .map(|s| s / 2)
            .collect();
        assert_eq!(list.iter().collect::<Vec<_>>(), kept);
    }

    #[test]
    fn galloping_finds_the_first_slot_not_below_the_target() {
        let list: Vec<Slot> = (0..100).map(|n| n * 3).collect();
        for from in [0, 1, 7, 50, 99, 100] {
            for target in [0, 1, 2, 3, 150, 151, 296, 297, 298, 1000] {
                let expected = from
                    + list
                        .get(from..)
                        .unwrap_or_default()
                        .partition_point(|s| *s < target);
                assert_eq!(gallop(&list, from, |s| *s < target), expected);
            }
        }
        assert_eq!(gallop(&[] as &[Slot], 0, |s| *s < 5), 0);
    }

    #[test]
    fn common_words_cost_about_a_byte_a_file() {
        let dense: Vec<Slot> = (0..10_000).map(|n| n * 3).collect();
        let mut list = posting(&dense);
        list.remap(Some); // as after a sweep: no spare capacity
        assert!(list.heap_bytes() < 12_000, "{}", list.heap_bytes());
    }
}
