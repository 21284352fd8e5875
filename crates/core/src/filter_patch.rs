//! Routing filter patches: how a [`RoutingFilter`] travels from one
//! supernode to a peer and stays current (QRP's RESET and PATCH, as flip
//! lists).
//!
//! A patch is the set of bit positions where the new table differs from
//! the one the peer holds, ascending, written as delta varints (`crate::varint`) and
//! cut into [`PatchPart`]s of at most [`MAX_PART_BYTES`]. Every part
//! starts its deltas from zero, so each stands alone: the flips can be cut
//! anywhere between two positions and applying the parts one after another
//! gives the same table. A part with `reset` first replaces the table with
//! an empty one of its size: the first patch a peer gets, and any patch
//! after the table was resized. A peer's filter is updated only by parts
//! that check out; a bad one is refused with the reason and the table is
//! left as it was before that part.

use crate::routing_filter::{MAX_LOG2_SLOTS, MIN_LOG2_SLOTS, RoutingFilter};
use crate::varint;

/// Most bytes of flips in one part (it travels in one frame of at most
/// 64 KiB).
pub use canopy_proto::limits::MAX_FILTER_PATCH_BYTES as MAX_PART_BYTES;

/// One part of a patch: the wire's message (`canopy/v1/routing.proto`).
pub use canopy_proto::FilterPatch as PatchPart;

/// Why a part was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The size is outside the bounds.
    #[error("table of 2^{0} bits is outside 2^{MIN_LOG2_SLOTS}..=2^{MAX_LOG2_SLOTS}")]
    Size(u8),
    /// A patch without a reset for a table we don't hold (none yet, or of
    /// another size).
    #[error("a patch for a table of 2^{0} bits without a reset, but none of that size is held")]
    NoTable(u8),
    /// More bytes than a part may carry.
    #[error("{0} bytes of flips, more than {MAX_PART_BYTES}")]
    TooLong(usize),
    /// A varint runs past the end or past 32 bits.
    #[error("a malformed varint at byte {0}")]
    Varint(usize),
    /// A position repeats or goes past the table.
    #[error("position {0} is out of order or past the table")]
    Position(u64),
}

/// The parts that turn `old` (what the peer holds; `None`: nothing yet)
/// into `new`. Empty if nothing changed.
pub fn patch(old: Option<&RoutingFilter>, new: &RoutingFilter) -> Vec<PatchPart> {
    let log2_slots = new.log2_slots();
    let (flips, reset) = match old.and_then(|old| old.differences(new)) {
        Some(flips) => (flips, false),
        None => {
            let empty = RoutingFilter::empty(log2_slots);
            (empty.differences(new).unwrap_or_default(), true)
        }
    };
    if flips.is_empty() && !reset {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut current = PatchPart {
        log2_slots,
        reset,
        flips: Vec::new(),
    };
    let mut last = 0u32;
    for position in flips {
        if current.flips.len() + 5 > MAX_PART_BYTES {
            parts.push(std::mem::replace(
                &mut current,
                PatchPart {
                    log2_slots,
                    reset: false,
                    flips: Vec::new(),
                },
            ));
            last = 0;
        }
        varint::put(&mut current.flips, position - last);
        last = position;
    }
    parts.push(current);
    parts
}

/// A part with `positions` (ascending) as its flips: for tests and for
/// cutting a patch by hand.
pub fn part_of(log2_slots: u8, reset: bool, positions: &[u32]) -> PatchPart {
    let mut flips = Vec::new();
    let mut last = 0;
    for &position in positions {
        varint::put(&mut flips, position - last);
        last = position;
    }
    PatchPart {
        log2_slots,
        reset,
        flips,
    }
}

/// Applies `part` to the filter held for a peer (`None`: none yet). On an
/// error `held` is unchanged.
pub fn apply(held: &mut Option<RoutingFilter>, part: &PatchPart) -> Result<(), PatchError> {
    if !(MIN_LOG2_SLOTS..=MAX_LOG2_SLOTS).contains(&part.log2_slots) {
        return Err(PatchError::Size(part.log2_slots));
    }
    if part.flips.len() > MAX_PART_BYTES {
        return Err(PatchError::TooLong(part.flips.len()));
    }
    let positions = decode(part)?;
    let mut table = match held {
        _ if part.reset => RoutingFilter::empty(part.log2_slots),
        Some(table) if table.log2_slots() == part.log2_slots => table.clone(),
        _ => return Err(PatchError::NoTable(part.log2_slots)),
    };
    for position in positions {
        table.flip(position);
    }
    *held = Some(table);
    Ok(())
}

/// The positions of a part, checked: each below the table's size, strictly
/// ascending.
fn decode(part: &PatchPart) -> Result<Vec<u32>, PatchError> {
    let slots = 1u64 << part.log2_slots;
    let mut positions = Vec::new();
    let (mut at, mut last): (usize, Option<u64>) = (0, None);
    while at < part.flips.len() {
        let start = at;
        let delta = u64::from(varint::get(&part.flips, &mut at).ok_or(PatchError::Varint(start))?);
        let position = last.map_or(delta, |last| last + delta);
        if position >= slots || (last.is_some() && delta == 0) {
            return Err(PatchError::Position(position));
        }
        positions.push(u32::try_from(position).map_err(|_| PatchError::Position(position))?);
        last = Some(position);
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use crate::routing_filter::EntryHash;

    fn filter(log2: u8, entries: impl IntoIterator<Item = u64>) -> RoutingFilter {
        let mut filter = RoutingFilter::empty(log2);
        for entry in entries {
            filter.insert(EntryHash(entry));
        }
        filter
    }

    #[test]
    fn a_first_patch_resets_and_later_ones_carry_only_changes() {
        let first = filter(12, 0..100);
        let parts = patch(None, &first);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].reset);
        let mut held = None;
        apply(&mut held, &parts[0]).unwrap();
        assert_eq!(held.as_ref(), Some(&first));

        let second = filter(12, 0..110);
        let parts = patch(held.as_ref(), &second);
        assert!(!parts[0].reset);
        assert!(
            parts[0].flips.len() < 60,
            "ten entries' bits, a few bytes each"
        );
        apply(&mut held, &parts[0]).unwrap();
        assert_eq!(held.as_ref(), Some(&second));
        assert!(patch(held.as_ref(), &second).is_empty(), "nothing changed");

        // Resized: a reset again.
        let bigger = filter(14, 0..110);
        let parts = patch(held.as_ref(), &bigger);
        assert!(parts[0].reset);
        apply(&mut held, &parts[0]).unwrap();
        assert_eq!(held.as_ref(), Some(&bigger));
    }

    #[test]
    fn patches_apply_in_any_split() {
        // Property: the flips between two random tables, cut into parts at
        // random places, applied one after another, give the new table.
        let mut rng = SplitMix64::new(3);
        for _ in 0..200 {
            let log2 = 10 + u8::try_from(rng.below(6)).unwrap();
            let old = filter(log2, (0..rng.below(300)).map(|_| rng.next_u64()));
            let new = filter(log2, (0..rng.below(300)).map(|_| rng.next_u64()));
            let flips = old.differences(&new).unwrap();
            let mut held = Some(old.clone());
            let mut rest = flips.as_slice();
            while !rest.is_empty() {
                let cut = 1 + usize::try_from(rng.below(rest.len() as u64)).unwrap();
                let (part, after) = rest.split_at(cut);
                apply(&mut held, &part_of(log2, false, part)).unwrap();
                rest = after;
            }
            assert_eq!(held.as_ref(), Some(&new));
        }
    }

    #[test]
    fn a_full_table_comes_in_parts_within_the_frame_bound() {
        // Every bit of the largest table set: the worst case.
        let mut full = RoutingFilter::empty(MAX_LOG2_SLOTS);
        for position in 0..(1u32 << MAX_LOG2_SLOTS) {
            full.flip(position);
        }
        let parts = patch(None, &full);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.flips.len() <= MAX_PART_BYTES));
        assert!(parts[0].reset && parts[1..].iter().all(|p| !p.reset));
        let mut held = None;
        for part in &parts {
            apply(&mut held, part).unwrap();
        }
        assert_eq!(held.as_ref(), Some(&full));
    }

    #[test]
    fn bad_parts_are_refused_and_change_nothing() {
        let before = filter(10, 0..20);
        let mut held = Some(before.clone());
        let cases = [
            (part_of(9, true, &[]), PatchError::Size(9)),
            (part_of(21, true, &[]), PatchError::Size(21)),
            (part_of(11, false, &[1]), PatchError::NoTable(11)),
            (part_of(10, false, &[1024]), PatchError::Position(1024)),
            (
                PatchPart {
                    log2_slots: 10,
                    reset: false,
                    flips: vec![1, 0],
                },
                PatchError::Position(1),
            ),
            (
                PatchPart {
                    log2_slots: 10,
                    reset: false,
                    flips: vec![0x80, 0x80],
                },
                PatchError::Varint(0),
            ),
            (
                PatchPart {
                    log2_slots: 10,
                    reset: false,
                    flips: vec![0xff, 0xff, 0xff, 0xff, 0x7f],
                },
                PatchError::Varint(0),
            ),
            (
                PatchPart {
                    log2_slots: 10,
                    reset: true,
                    flips: vec![0; MAX_PART_BYTES + 1],
                },
                PatchError::TooLong(MAX_PART_BYTES + 1),
            ),
        ];
        for (part, error) in cases {
            assert_eq!(apply(&mut held, &part), Err(error.clone()), "{error}");
            assert_eq!(held.as_ref(), Some(&before));
        }
        let mut nothing = None;
        assert_eq!(
            apply(&mut nothing, &part_of(10, false, &[])),
            Err(PatchError::NoTable(10))
        );
    }
}
