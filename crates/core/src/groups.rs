//! Which 1 MiB groups of a file a source has: a bitset sized by the file,
//! and its form on the wire, the `X-Available-Ranges` header value
//! (`bytes 0-1048575, 3145728-4194303`: inclusive byte ranges, each a run
//! of whole groups, the last group of the file possibly short).
//!
//! The header comes from peers, so reading it is bounded whatever it says:
//! the set never grows beyond the file's group count (itself capped by
//! [`MAX_DOWNLOAD_SIZE`]), at most [`MAX_HEADER_RANGES`] ranges are read,
//! and marking them costs one pass over the set's words, not one step per
//! claimed group. Malformed ranges are skipped rather than failing the
//! whole value: a subset of what a source has is never a lie.

use std::ops::{Range, RangeInclusive};

use crate::tree::{GROUP_LEN, MAX_DOWNLOAD_SIZE, group_count, group_range, group_slot};

/// Ranges read from one `X-Available-Ranges` value at most; the rest are
/// ignored.
pub const MAX_HEADER_RANGES: usize = 1024;

/// The unit the header's ranges are in.
const UNIT: &str = "bytes";

/// A set of 1 MiB groups of one file (a bitset sized by the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSet {
    size: u64,
    groups: u64,
    /// One bit a group; bits past `groups` are always clear.
    words: Vec<u64>,
    count: u64,
}

impl Default for GroupSet {
    /// The empty set of an empty file.
    fn default() -> Self {
        Self::empty(0)
    }
}

impl GroupSet {
    /// No group of a file of `size` bytes (clamped to
    /// [`MAX_DOWNLOAD_SIZE`], so the set takes at most 128 KiB).
    pub fn empty(size: u64) -> Self {
        let size = size.min(MAX_DOWNLOAD_SIZE);
        let groups = group_count(size);
        Self {
            size,
            groups,
            words: vec![0; group_slot(groups.div_ceil(64))],
            count: 0,
        }
    }

    /// Every group of a file of `size` bytes.
    pub fn full(size: u64) -> Self {
        let mut set = Self::empty(size);
        set.insert_run(0..set.groups);
        set
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's group count.
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// Groups in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True if every group of the file is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.groups
    }

    /// True if no group is in the set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True if `group` is in the set (false outside the file).
    pub fn contains(&self, group: u64) -> bool {
        group < self.groups && self.words[word_of(group)] & bit_of(group) != 0
    }

    /// Adds `group`; true if it was not in the set. A group outside the
    /// file is not added (false).
    pub fn insert(&mut self, group: u64) -> bool {
        if group >= self.groups {
            return false;
        }
        let word = &mut self.words[word_of(group)];
        if *word & bit_of(group) != 0 {
            return false;
        }
        *word |= bit_of(group);
        self.count += 1;
        true
    }

    /// Takes `group` out; true if it was in the set.
    pub fn remove(&mut self, group: u64) -> bool {
        if !self.contains(group) {
            return false;
        }
        self.words[word_of(group)] &= !bit_of(group);
        self.count -= 1;
        true
    }

    /// The set's words: bit `g % 64` of word `g / 64` is group `g`; bits
    /// past the file's groups are clear.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// The first group at or after `from` in the set.
    pub fn next_member(&self, from: u64) -> Option<u64> {
        self.next_with(from, true)
    }

    /// Adds every group of `run` (clipped to the file), a word at a time.
    pub fn insert_run(&mut self, run: Range<u64>) {
        let end = run.end.min(self.groups);
        let mut group = run.start;
        while group < end {
            let word = word_of(group);
            let low = group % 64;
            let high = (end - (group - low)).min(64);
            let mask = span_mask(low, high);
            let before = self.words[word];
            self.words[word] |= mask;
            self.count += u64::from((self.words[word] ^ before).count_ones());
            group = group - low + high;
        }
    }

    /// Adds every group of `other` (a set of the same file; groups of a
    /// larger file beyond this one's are ignored).
    pub fn union_with(&mut self, other: &GroupSet) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
        if let Some(last) = self.words.last_mut() {
            let used = self.groups % 64;
            if used != 0 {
                *last &= span_mask(0, used);
            }
        }
        self.count = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    /// Every group of the file not in the set.
    pub fn complement(&self) -> GroupSet {
        let mut other = self.clone();
        for word in &mut other.words {
            *word = !*word;
        }
        if let Some(last) = other.words.last_mut() {
            let used = other.groups % 64;
            if used != 0 {
                *last &= span_mask(0, used);
            }
        }
        other.count = other.groups - self.count;
        other
    }

    /// The groups in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            let base = index as u64 * 64;
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                Some(base + bit)
            })
        })
    }

    /// The runs of consecutive groups in the set, in order.
    pub fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let start = self.next_with(from, true)?;
            let end = self.next_with(start, false).unwrap_or(self.groups);
            from = end;
            Some(start..end)
        })
    }

    /// The first group at or after `from` that is in the set (`present`)
    /// or not, skipping whole words.
    fn next_with(&self, from: u64, present: bool) -> Option<u64> {
        let mut group = from;
        while group < self.groups {
            let word = self.words[word_of(group)];
            let word = if present { word } else { !word };
            let masked = word & !span_mask(0, group % 64);
            if masked != 0 {
                let found = group - group % 64 + u64::from(masked.trailing_zeros());
                return (found < self.groups).then_some(found);
            }
            group = group - group % 64 + 64;
        }
        None
    }

    /// Bytes of the groups in the set.
    pub fn bytes(&self) -> u64 {
        let last = self.groups - 1;
        let short_by = GROUP_LEN - range_len(group_range(self.size, last));
        let full = self.count * GROUP_LEN;
        if self.contains(last) {
            full - short_by
        } else {
            full
        }
    }

    /// True if the inclusive byte range lies wholly inside groups of the set.
    pub fn covers(&self, range: RangeInclusive<u64>) -> bool {
        let (first, last) = (*range.start(), *range.end());
        if first > last || last >= self.size {
            return false;
        }
        let (first, last) = (first / GROUP_LEN, last / GROUP_LEN);
        self.next_with(first, false).is_none_or(|gap| gap > last)
    }

    /// `bytes a-b, c-d`: runs of groups as inclusive byte ranges, whole
    /// ranges only, at most `max_len` bytes (the ranges that do not fit are
    /// left out: a subset of what a source has is never a lie). An empty
    /// set is `bytes`; if even that does not fit, the value is empty.
    pub fn to_header(&self, max_len: usize) -> String {
        if max_len < UNIT.len() {
            return String::new();
        }
        let mut value = String::from(UNIT);
        for (index, run) in self.runs().enumerate() {
            let first = group_range(self.size, run.start).start;
            let end = group_range(self.size, run.end - 1).end;
            if end == first {
                continue; // the one empty group of an empty file
            }
            let separator = if index == 0 { " " } else { ", " };
            let range = format!("{separator}{first}-{}", end - 1);
            if value.len() + range.len() > max_len {
                break;
            }
            value.push_str(&range);
        }
        value
    }

    /// Parses a header value for a file of `size` bytes: only groups wholly
    /// inside the listed ranges count; malformed ranges skipped; at most
    /// [`MAX_HEADER_RANGES`] ranges read. None if it doesn't start
    /// with `bytes`.
    pub fn from_header(value: &str, size: u64) -> Option<Self> {
        let value = value.trim_start();
        let unit = value.get(..UNIT.len())?;
        if !unit.eq_ignore_ascii_case(UNIT) {
            return None;
        }
        let rest = &value[UNIT.len()..];
        if !rest.is_empty() && !rest.starts_with([' ', '\t', '=', ',']) {
            return None; // `bytesfoo`
        }
        // `bytes 0-9` as sent; `bytes=0-9` read too.
        let rest = rest.strip_prefix('=').unwrap_or(rest);
        let mut set = Self::empty(size);
        if set.size == 0 {
            return Some(set);
        }
        let mut ranges: Vec<(u64, u64)> = rest
            .split(',')
            .take(MAX_HEADER_RANGES)
            .filter_map(parse_range)
            .filter(|(first, _)| *first < set.size)
            .map(|(first, last)| (first, last.min(set.size - 1)))
            .collect();
        // The union of the ranges, merged in order, then whole groups in it.
        ranges.sort_unstable();
        let mut merged: Option<(u64, u64)> = None;
        for (first, last) in ranges {
            match merged {
                Some((start, end)) if first <= end.saturating_add(1) => {
                    merged = Some((start, end.max(last)));
                }
                _ => {
                    if let Some(run) = merged {
                        set.insert_bytes(run);
                    }
                    merged = Some((first, last));
                }
            }
        }
        if let Some(run) = merged {
            set.insert_bytes(run);
        }
        Some(set)
    }

    /// Adds the groups wholly inside the inclusive byte range `first..=last`
    /// (`last` below the file's size).
    fn insert_bytes(&mut self, (first, last): (u64, u64)) {
        let start = first.div_ceil(GROUP_LEN);
        let end = if last + 1 >= self.size {
            self.groups
        } else {
            (last + 1) / GROUP_LEN
        };
        if start < end {
            self.insert_run(start..end);
        }
    }
}

/// `a-b` with `a <= b`, surrounding spaces allowed; None otherwise.
fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (first, last) = text.trim().split_once('-')?;
    let first = parse_number(first)?;
    let last = parse_number(last)?;
    (first <= last).then_some((first, last))
}

/// Decimal digits only (no sign, no spaces inside), as HTTP ranges are.
fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn word_of(group: u64) -> usize {
    group_slot(group / 64)
}

fn bit_of(group: u64) -> u64 {
    1 << (group % 64)
}

/// Bits `low..high` of a word (`high` at most 64).
fn span_mask(low: u64, high: u64) -> u64 {
    let upto = if high >= 64 {
        u64::MAX
    } else {
        (1 << high) - 1
    };
    upto & !((1u64 << low) - 1)
}

fn range_len(range: Range<u64>) -> u64 {
    range.end - range.start
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = GROUP_LEN;

    fn set_of(size: u64, groups: &[u64]) -> GroupSet {
        let mut set = GroupSet::empty(size);
        for &g in groups {
            set.insert(g);
        }
        set
    }

    #[test]
    fn the_complement_holds_every_other_group_of_the_file() {
        for groups in [1u64, 63, 64, 65, 130] {
            let set = set_of(groups * MIB, &[0, groups / 2, groups - 1]);
            let other = set.complement();
            assert_eq!(other.count() + set.count(), groups);
            assert!((0..groups).all(|g| other.contains(g) != set.contains(g)));
            assert!(!other.contains(groups), "nothing past the file");
            assert_eq!(other.complement(), set);
        }
    }

    #[test]
    fn insert_contains_count_and_bounds() {
        let mut set = GroupSet::empty(10 * MIB);
        assert_eq!(set.groups(), 10);
        assert!(set.insert(3));
        assert!(!set.insert(3), "already there");
        assert!(!set.insert(10), "outside the file");
        assert!(!set.insert(u64::MAX));
        assert!(set.contains(3) && !set.contains(4) && !set.contains(u64::MAX));
        assert_eq!(set.count(), 1);
        assert!(!set.is_full());
        assert!(GroupSet::full(10 * MIB).is_full());
        assert_eq!(GroupSet::full(10 * MIB).count(), 10);
        assert_eq!(GroupSet::default(), GroupSet::empty(0));
        assert_eq!(GroupSet::default().groups(), 1);
    }

    #[test]
    fn a_huge_size_is_clamped() {
        let set = GroupSet::empty(u64::MAX);
        assert_eq!(set.size(), MAX_DOWNLOAD_SIZE);
        assert_eq!(set.groups(), MAX_DOWNLOAD_SIZE / MIB);
    }

    #[test]
    fn runs_iter_and_insert_run_across_words() {
        let mut set = GroupSet::empty(200 * MIB);
        set.insert_run(60..130);
        set.insert(150);
        set.insert_run(199..500);
        assert_eq!(set.count(), 70 + 1 + 1);
        assert_eq!(
            set.runs().collect::<Vec<_>>(),
            vec![60..130, 150..151, 199..200]
        );
        let listed: Vec<u64> = set.iter().collect();
        assert_eq!(listed.len(), 72);
        assert_eq!(listed[0], 60);
        assert_eq!(*listed.last().unwrap(), 199);
        set.insert_run(0..200);
        assert!(set.is_full());
        assert_eq!(set.runs().collect::<Vec<_>>(), vec![0..200]);
    }

    #[test]
    fn bytes_count_a_short_last_group_short() {
        let size = 2 * MIB + 100;
        assert_eq!(GroupSet::full(size).bytes(), size);
        assert_eq!(set_of(size, &[0]).bytes(), MIB);
        assert_eq!(set_of(size, &[2]).bytes(), 100);
        assert_eq!(GroupSet::full(0).bytes(), 0);
    }

    #[test]
    fn covers_only_ranges_inside_the_set() {
        let size = 4 * MIB + 10;
        let set = set_of(size, &[1, 2, 4]);
        assert!(set.covers(MIB..=3 * MIB - 1));
        assert!(set.covers(MIB + 5..=MIB + 6));
        assert!(!set.covers(MIB - 1..=MIB + 6), "starts in group 0");
        assert!(!set.covers(2 * MIB..=3 * MIB), "ends in group 3");
        assert!(set.covers(4 * MIB..=4 * MIB + 9));
        assert!(!set.covers(4 * MIB..=4 * MIB + 10), "past the end");
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..=4;
        assert!(!set.covers(reversed));
    }

    #[test]
    fn header_round_trips_with_a_short_last_group() {
        let size = 5 * MIB + 7;
        let set = set_of(size, &[0, 1, 3, 5]);
        let header = set.to_header(4096);
        assert_eq!(
            header,
            format!(
                "bytes 0-{}, {}-{}, {}-{}",
                2 * MIB - 1,
                3 * MIB,
                4 * MIB - 1,
                5 * MIB,
                5 * MIB + 6
            )
        );
        assert_eq!(GroupSet::from_header(&header, size), Some(set));
        let full = GroupSet::full(size);
        assert_eq!(full.to_header(100), format!("bytes 0-{}", size - 1));
        assert_eq!(
            GroupSet::from_header(&full.to_header(100), size),
            Some(full)
        );
        let empty = GroupSet::empty(size);
        assert_eq!(empty.to_header(100), "bytes");
        assert_eq!(GroupSet::from_header("bytes", size), Some(empty));
    }

    #[test]
    fn header_is_truncated_to_whole_ranges_within_max_len() {
        let size = 1000 * MIB;
        let set = set_of(size, &(0..1000).step_by(2).collect::<Vec<_>>());
        let header = set.to_header(4096);
        assert!(header.len() <= 4096, "{}", header.len());
        let read = GroupSet::from_header(&header, size).unwrap();
        assert!(read.count() > 10 && read.count() < set.count());
        assert!(
            read.iter().all(|g| set.contains(g)),
            "a subset, never a lie"
        );
        for max_len in [0, 4, 5, 6, 20, 30, 31, 32, 33, 100] {
            let header = set.to_header(max_len);
            assert!(header.len() <= max_len, "{max_len}: {header}");
            if max_len >= 5 {
                let read = GroupSet::from_header(&header, size).unwrap();
                assert!(read.iter().all(|g| set.contains(g)));
            }
        }
    }

    #[test]
    fn only_whole_groups_inside_the_ranges_count() {
        let size = 4 * MIB;
        let read = GroupSet::from_header(&format!("bytes 1-{}", 3 * MIB - 1), size).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![1, 2]);
        let read = GroupSet::from_header(&format!("bytes 0-{}", 2 * MIB - 2), size).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![0]);
        // Two ranges that together cover a group.
        let read =
            GroupSet::from_header(&format!("bytes 0-{}, {}-{}", 99, 100, MIB - 1), size).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![0]);
        // Past the end: clipped to the file.
        let read = GroupSet::from_header(&format!("bytes {}-{}", 3 * MIB, u64::MAX), size).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![3]);
        // Starting past the end: nothing.
        let read = GroupSet::from_header(&format!("bytes {}-{}", 4 * MIB, 9 * MIB), size).unwrap();
        assert!(read.is_empty());
    }

    #[test]
    fn malformed_values_and_ranges() {
        let size = 4 * MIB;
        assert_eq!(GroupSet::from_header("", size), None);
        assert_eq!(GroupSet::from_header("items 0-5", size), None);
        assert_eq!(GroupSet::from_header("bytesfoo 0-5", size), None);
        assert_eq!(GroupSet::from_header("byt", size), None);
        assert_eq!(GroupSet::from_header("é", size), None);
        let lenient = format!(
            "BYTES=x-y, 5-, -5, 9-1, +0-{}, 0-{}, {}--{},,, {}-{}",
            MIB - 1,
            MIB - 1,
            MIB,
            2 * MIB - 1,
            3 * MIB,
            4 * MIB - 1
        );
        let read = GroupSet::from_header(&lenient, size).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![0, 3]);
    }

    #[test]
    fn hostile_values_stay_bounded() {
        let size = MAX_DOWNLOAD_SIZE;
        // Huge numbers: overflowing ones are skipped, huge ends clipped.
        let huge = format!(
            "bytes 0-{}, 99999999999999999999999-1, 0-{}",
            u64::MAX,
            "9".repeat(100_000)
        );
        let read = GroupSet::from_header(&huge, size).unwrap();
        assert!(read.is_full());
        assert_eq!(read.groups(), MAX_DOWNLOAD_SIZE / MIB);
        // Many overlapping whole-file ranges: one pass over the words each.
        let many = format!("bytes {}", vec![format!("0-{}", u64::MAX); 5000].join(", "));
        assert!(GroupSet::from_header(&many, size).unwrap().is_full());
        // 10k commas: only the first MAX_HEADER_RANGES pieces are read.
        let commas = format!("bytes {}0-{}", ",".repeat(10_000), MIB - 1);
        assert!(GroupSet::from_header(&commas, size).unwrap().is_empty());
        let late = format!(
            "bytes {}, 0-{}",
            vec!["1-0"; MAX_HEADER_RANGES].join(","),
            MIB - 1
        );
        assert!(GroupSet::from_header(&late, size).unwrap().is_empty());
        // Reversed and overlapping ranges.
        let mixed = format!(
            "bytes {}-{}, 0-{}, {}-{}",
            2 * MIB,
            0,
            2 * MIB - 1,
            MIB,
            3 * MIB - 1
        );
        let read = GroupSet::from_header(&mixed, 4 * MIB).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        // A claim about a small file never grows its set.
        let read = GroupSet::from_header(&format!("bytes 0-{}", u64::MAX), 3).unwrap();
        assert_eq!((read.groups(), read.count(), read.bytes()), (1, 1, 3));
    }

    #[test]
    fn union_keeps_the_set_within_its_file() {
        let mut small = set_of(3 * MIB, &[0]);
        small.union_with(&GroupSet::full(100 * MIB));
        assert_eq!(small, GroupSet::full(3 * MIB));
        let mut a = set_of(130 * MIB, &[1, 129]);
        a.union_with(&set_of(130 * MIB, &[2, 129]));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 2, 129]);
        assert_eq!(a.count(), 3);
    }
}
