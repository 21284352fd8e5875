//! The supernode's index of its leaves' files, and query matching.
//!
//! A supernode holds thousands of leaves with hundreds of files each, so
//! the index is built for memory first. Every file is one 56-byte
//! [`Record`] in a vector (its number is its slot), its name lives in one
//! shared text arena, and the lookup tables hold slot numbers only:
//!
//! - by keyword: a keyed 64-bit hash of every word of the name (see
//!   [`crate::tokenize`]) maps to the ascending list of slots whose names
//!   have that word ([`crate::posting`]: packed, about a byte a slot for
//!   common words). Two words would have to collide in a hash keyed with
//!   this process's random key for a query to see a wrong match;
//! - by content id: a hash table of the newest slot for each content id,
//!   the others chained through the records;
//! - by owner: each leaf's slots, so all its files leave with it.
//!
//! Slots are handed out in increasing order and never reused until a
//! sweep, so posting lists stay sorted by construction (a query with
//! several words walks the shortest list and binary-searches the others)
//! and removal is O(1): a removed record is marked dead and its postings
//! are left for the sweep. When dead records outnumber live ones, the
//! sweep renumbers the live ones in order, repacks the names and rewrites
//! every list, so removal costs amortised constant time and memory stays
//! proportional to what is indexed. Results come back in slot order, the
//! same for the same history: the simulator depends on that.
//!
//! A file still downloading (a partial source, `SharedFile::available`)
//! keeps how much of it is there as a 16-bit share of its size in what
//! was the record's padding: hits give it back rounded down, never above
//! the size. A leaf publishing the same content id again updates its
//! record (in place when only that share changed, as a download's
//! progress does), never adds a second one.
//!
//! Bounds against what peers send: a name is indexed by its first
//! [`DEFAULT_MAX_WORDS`] words (configurable; a name with more is still
//! stored whole, but its later words find nothing); every file is charged
//! an estimate of the bytes it costs ([`FileIndex::bytes`]) to its owner,
//! so the supernode can hold the index to a budget and refuse the largest
//! publishers first; and a search examines at most a budget of candidate
//! postings ([`FileIndex::search_within`]), so a query whose filter
//! rejects everything (`min_size` = u64::MAX on a common word) costs a
//! bounded walk, not a whole posting list.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use canopy_proto::{ContentId, SharedFile};
use hashbrown::HashTable;

use crate::ConnId;
use crate::arena::{ChunkedVec, TextArena};
use crate::posting::{Cursor, Posting, Slot};
use crate::tokenize::{tokenize, tokenize_all};

/// The owner number of a removed record, and the end of a content chain.
const NONE: u32 = u32::MAX;
/// Dead records tolerated before a sweep, however small the index.
const SWEEP_FLOOR: usize = 4096;
/// Words of a name indexed, by default: names past it are indexed by their
/// first words. Real names have a dozen at most.
pub const DEFAULT_MAX_WORDS: usize = 32;
/// Bytes charged per file for its record and its content-table entry.
pub const FILE_BYTES: u64 = 56 + 8;
/// Bytes charged per indexed word of a name: a posting entry and its share
/// of the keyword table (a packed list entry is a byte, a plain one four; a
/// new word's table entry is tens).
pub const WORD_BYTES: u64 = 8;

/// One indexed file: 56 bytes, its name in the arena.
#[derive(Debug, Clone)]
struct Record {
    /// How much of a partial file its owner has (see [`encode_partial`]):
    /// 0 for a whole file. In what would otherwise be padding.
    partial: u16,
    content_id: ContentId,
    size: u64,
    name_at: u32,
    /// Names are at most `MAX_NAME_LEN` (255) bytes.
    name_len: u8,
    /// The owner's number, [`NONE`] once removed.
    owner: u32,
    /// The next (older) record with the same content id, or [`NONE`].
    next_same: Slot,
    /// Words of the name indexed (at most `u8::MAX`).
    words: u8,
}

// The record's size is what the index's memory estimate and its budget
// count on: a new field must fit in the padding.
const _: () = assert!(std::mem::size_of::<Record>() == 56);

/// Steps of a partial file's share: `available` is kept as a fraction of
/// the size in these steps.
const PARTIAL_STEPS: u64 = u16::MAX as u64 - 1;

/// `available` bytes of a file of `size` bytes as a record keeps it: 0
/// for a whole file (`None`), else 1 + the share of the size in
/// [`PARTIAL_STEPS`] steps, rounded down.
fn encode_partial(available: Option<u64>, size: u64) -> u16 {
    let Some(available) = available else {
        return 0;
    };
    if size == 0 {
        return 1;
    }
    let steps = u128::from(available.min(size)) * u128::from(PARTIAL_STEPS) / u128::from(size);
    u16::try_from(steps + 1).unwrap_or(u16::MAX)
}

/// The bytes a record's `partial` stands for in a file of `size` bytes.
/// Never more than the leaf said (nor the size): the share was rounded
/// down, so rounding its bytes up lands at most on the bytes it came from,
/// and exactly on them more often.
fn decode_partial(partial: u16, size: u64) -> Option<u64> {
    let steps = u128::from(partial.checked_sub(1)?);
    let bytes = (steps * u128::from(size)).div_ceil(u128::from(PARTIAL_STEPS));
    Some(u64::try_from(bytes).unwrap_or(size).min(size))
}

impl Record {
    fn is_live(&self) -> bool {
        self.owner != NONE
    }

    /// Bytes charged for this record (see [`FileIndex::bytes`]).
    fn charge(&self) -> u64 {
        file_charge(usize::from(self.name_len), usize::from(self.words))
    }
}

/// Bytes charged for a file with a name of `name_len` bytes and `words`
/// indexed words.
fn file_charge(name_len: usize, words: usize) -> u64 {
    FILE_BYTES + name_len as u64 + words as u64 * WORD_BYTES
}

fn same_content(records: &ChunkedVec<Record>, slot: Slot, id: &ContentId) -> bool {
    records
        .get(slot as usize)
        .is_some_and(|record| record.content_id == *id)
}

/// The keys of the keyword table are already keyed hashes: use them as is.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[derive(Debug, Default)]
struct Owner {
    number: u32,
    /// Its slots, ascending; dead ones linger until the sweep.
    slots: SlotRuns,
    live: usize,
    /// Bytes charged for its live files.
    bytes: u64,
}

/// Ascending slots as runs of consecutive ones: a leaf's files are
/// published together, so its slots are mostly one run (8 bytes, not 4
/// per file).
#[derive(Debug, Default)]
struct SlotRuns {
    /// (first slot, length) of each run.
    runs: Vec<(Slot, u32)>,
}

impl SlotRuns {
    /// Appends `slot`, above every slot already held.
    fn push(&mut self, slot: Slot) {
        if let Some((first, len)) = self.runs.last_mut() {
            if first.checked_add(*len) == Some(slot) {
                *len += 1;
                return;
            }
        }
        self.runs.push((slot, 1));
    }

    /// The lowest slot held.
    fn first(&self) -> Option<Slot> {
        self.runs.first().map(|(first, _)| *first)
    }

    fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.runs
            .iter()
            .flat_map(|(first, len)| (0..*len).map(move |i| first + i))
    }
}

/// What a query asks for, already tokenized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Every keyword must be a word of the name.
    pub keywords: Vec<String>,
    /// Only this content, if set.
    pub content_id: Option<ContentId>,
    /// Inclusive size bounds.
    pub min_size: Option<u64>,
    /// Inclusive size bounds.
    pub max_size: Option<u64>,
}

impl Filter {
    /// A filter for query `terms`, tokenized the way names are.
    pub fn new<S: AsRef<str>>(terms: &[S], content_id: Option<ContentId>) -> Self {
        Self {
            keywords: tokenize_all(terms),
            content_id,
            min_size: None,
            max_size: None,
        }
    }

    fn size_matches(&self, size: u64) -> bool {
        self.min_size.is_none_or(|min| size >= min) && self.max_size.is_none_or(|max| size <= max)
    }

    /// True if there is nothing a file could match (no keyword, no id).
    pub fn is_empty(&self) -> bool {
        self.keywords.is_empty() && self.content_id.is_none()
    }
}

/// Why a file was not indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It would take the index past `budget` bytes: `needed` are charged
    /// for it, `used` are in use.
    OverBudget {
        /// Bytes the file is charged.
        needed: u64,
        /// Bytes charged to the files indexed.
        used: u64,
    },
    /// Four billion files, or four GiB of names.
    Full,
}

/// What a search found, and what it cost.
#[derive(Debug)]
pub struct Found<'a> {
    /// The matches, at most the limit.
    pub matches: Vec<Match<'a>>,
    /// Candidate files examined (postings or content-chain entries read).
    pub examined: usize,
    /// True if the scan budget ran out before the candidates did.
    pub exhausted: bool,
}

/// One match: whose file, and the file.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    /// The leaf sharing it.
    pub owner: ConnId,
    /// The file's content id.
    pub content_id: &'a ContentId,
    /// Its name.
    pub name: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// For a file still downloading, about how many bytes of it its owner
    /// has (rounded down); `None` for a whole file.
    pub available: Option<u64>,
}

impl Match<'_> {
    /// The file, as it goes into a hit.
    pub fn to_shared_file(&self) -> SharedFile {
        SharedFile {
            content_id: *self.content_id,
            name: self.name.to_owned(),
            size: self.size,
            available: self.available,
        }
    }
}

/// Files of many leaves, searchable by keyword and content id.
#[derive(Debug)]
pub struct FileIndex {
    records: ChunkedVec<Record>,
    names: TextArena,
    live: usize,
    by_keyword: HashMap<u64, Posting, BuildHasherDefault<PassThrough>>,
    by_content: HashTable<Slot>,
    owners: HashMap<ConnId, Owner>,
    /// Owner numbers in use, to their connections.
    owner_conns: Vec<ConnId>,
    free_numbers: Vec<u32>,
    /// The key of every hash taken of what peers sent.
    hash_key: RandomState,
    /// Bytes charged to the live files.
    bytes: u64,
    /// Words of a name indexed.
    max_words: usize,
}

impl Default for FileIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl FileIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            records: ChunkedVec::default(),
            names: TextArena::default(),
            live: 0,
            by_keyword: HashMap::default(),
            by_content: HashTable::new(),
            owners: HashMap::new(),
            owner_conns: Vec::new(),
            free_numbers: Vec::new(),
            hash_key: RandomState::new(),
            bytes: 0,
            max_words: DEFAULT_MAX_WORDS,
        }
    }

    /// Indexes names by their first `max_words` words (at least one, at
    /// most 255) from now on.
    pub fn set_max_words(&mut self, max_words: usize) {
        self.max_words = max_words.clamp(1, usize::from(u8::MAX));
    }

    /// Bytes charged to the files indexed: an estimate of the memory they
    /// take (per file its record and content-table entry, its name, and a
    /// posting entry per indexed word), exact to the byte for the same
    /// files however they came and went, so budgets and tests can rely
    /// on it.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes charged to `owner`'s files.
    pub fn owner_bytes(&self, owner: ConnId) -> u64 {
        self.owners.get(&owner).map_or(0, |o| o.bytes)
    }

    /// The owner charged the most bytes (the lowest connection id among
    /// equals, so the choice does not depend on hashing).
    pub fn largest_owner(&self) -> Option<(ConnId, u64)> {
        self.owners
            .iter()
            .map(|(conn, owner)| (*conn, owner.bytes))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    /// Number of files indexed, over all leaves.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of files `owner` has published.
    pub fn owner_len(&self, owner: ConnId) -> usize {
        self.owners.get(&owner).map_or(0, |o| o.live)
    }

    /// Names are indexed by their first this many words.
    pub fn max_words(&self) -> usize {
        self.max_words
    }

    /// The name of `owner`'s live file with `content_id`, if it has one.
    pub fn owned_name(&self, owner: ConnId, content_id: &ContentId) -> Option<&str> {
        let slot = self.owned_slot(owner, content_id)?;
        self.records.get(slot as usize).map(|r| self.name_of(r))
    }

    /// Every live file of `owner`: its name and content id.
    pub fn owned_files(&self, owner: ConnId) -> Vec<(&str, ContentId)> {
        let Some(entry) = self.owners.get(&owner) else {
            return Vec::new();
        };
        entry
            .slots
            .iter()
            .filter_map(|slot| self.records.get(slot as usize))
            .filter(|record| record.owner == entry.number)
            .map(|record| (self.name_of(record), record.content_id))
            .collect()
    }

    fn name_of(&self, record: &Record) -> &str {
        self.names
            .get(record.name_at, usize::from(record.name_len))
            .unwrap_or_default()
    }

    fn keyword_hash(&self, keyword: &str) -> u64 {
        self.hash_key.hash_one(keyword)
    }

    /// Adds `file` for `owner`. Publishing the same content again replaces
    /// the earlier entry (its name, size or availability may have changed;
    /// there is never a second one). Returns false if the index is full
    /// (four billion files, or four GiB of names).
    pub fn insert(&mut self, owner: ConnId, file: SharedFile) -> bool {
        self.insert_within(owner, &file, u64::MAX).is_ok()
    }

    /// [`FileIndex::insert`], unless the index would then be charged more
    /// than `budget` bytes (the file's earlier entry, if any, is removed
    /// either way).
    pub fn insert_within(
        &mut self,
        owner: ConnId,
        file: &SharedFile,
        budget: u64,
    ) -> Result<(), Refused> {
        // Names are validated at the wire (255 bytes at most); cut anything
        // longer at a character boundary rather than trust it.
        let mut name = file.name.as_str();
        while name.len() > usize::from(u8::MAX) {
            let mut end = usize::from(u8::MAX);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name = &name[..end];
        }
        let partial = encode_partial(file.available, file.size);
        if let Some(slot) = self.owned_slot(owner, &file.content_id) {
            // A partial source's progress (or its completion): the same
            // name and size, only the share changes. Updated in place, so
            // a download's updates cost no dead records.
            let same = self
                .records
                .get(slot as usize)
                .is_some_and(|r| r.size == file.size && self.name_of(r) == name);
            if same {
                if let Some(record) = self.records.get_mut(slot as usize) {
                    record.partial = partial;
                }
                return Ok(());
            }
        }
        self.remove(owner, &file.content_id);
        let mut words = tokenize(name);
        words.truncate(self.max_words);
        let charge = file_charge(name.len(), words.len());
        if self.bytes.saturating_add(charge) > budget {
            return Err(Refused::OverBudget {
                needed: charge,
                used: self.bytes,
            });
        }
        let full = |index: &Self| {
            index.records.len() >= (NONE - 1) as usize || !index.names.has_room(name.len())
        };
        if full(self) {
            self.sweep();
            if full(self) {
                return Err(Refused::Full);
            }
        }
        let Ok(slot) = Slot::try_from(self.records.len()) else {
            return Err(Refused::Full);
        };
        let Some(name_at) = self.names.push(name) else {
            return Err(Refused::Full);
        };
        let number = self.owner_number(owner);
        let hash = self.hash_key.hash_one(file.content_id);
        let next_same = match self
            .by_content
            .find_mut(hash, |s| same_content(&self.records, *s, &file.content_id))
        {
            Some(head) => std::mem::replace(head, slot),
            None => {
                let records = &self.records;
                let key = &self.hash_key;
                self.by_content.insert_unique(hash, slot, |s| {
                    records
                        .get(*s as usize)
                        .map_or(0, |r| key.hash_one(r.content_id))
                });
                NONE
            }
        };
        self.records.push(Record {
            partial,
            content_id: file.content_id,
            size: file.size,
            name_at,
            name_len: u8::try_from(name.len()).unwrap_or(u8::MAX),
            owner: number,
            next_same,
            words: u8::try_from(words.len()).unwrap_or(u8::MAX),
        });
        for keyword in words {
            let hash = self.keyword_hash(&keyword);
            self.by_keyword.entry(hash).or_default().push(slot);
        }
        if let Some(entry) = self.owners.get_mut(&owner) {
            entry.slots.push(slot);
            entry.live += 1;
            entry.bytes += charge;
        }
        self.live += 1;
        self.bytes += charge;
        Ok(())
    }

    fn owner_number(&mut self, owner: ConnId) -> u32 {
        if let Some(entry) = self.owners.get(&owner) {
            return entry.number;
        }
        let number = match self.free_numbers.pop() {
            Some(number) => {
                self.owner_conns[number as usize] = owner;
                number
            }
            None => {
                self.owner_conns.push(owner);
                u32::try_from(self.owner_conns.len() - 1).unwrap_or(NONE)
            }
        };
        self.owners.insert(
            owner,
            Owner {
                number,
                ..Owner::default()
            },
        );
        number
    }

    /// True if `owner` has published a file with `content_id`.
    pub fn contains(&self, owner: ConnId, content_id: &ContentId) -> bool {
        self.owned_slot(owner, content_id).is_some()
    }

    /// The slot of `owner`'s live record of `content_id`.
    fn owned_slot(&self, owner: ConnId, content_id: &ContentId) -> Option<Slot> {
        let (number, lowest) = self
            .owners
            .get(&owner)
            .map(|o| (o.number, o.slots.first().unwrap_or(NONE)))?;
        let hash = self.hash_key.hash_one(content_id);
        let mut at = self
            .by_content
            .find(hash, |s| same_content(&self.records, *s, content_id))
            .copied()
            .unwrap_or(NONE);
        // Chains run newest first, and nothing older than the owner's first
        // file is the owner's: a leaf publishing a popular file looks at the
        // copies published since it joined, not at every copy.
        while let Some(record) = self.records.get(at as usize).filter(|_| at >= lowest) {
            if record.owner == number && record.content_id == *content_id {
                return Some(at);
            }
            at = record.next_same;
        }
        None
    }

    /// Removes `owner`'s file with `content_id`, if it has one.
    pub fn remove(&mut self, owner: ConnId, content_id: &ContentId) {
        if !self.owners.contains_key(&owner) {
            return;
        }
        if let Some(at) = self.owned_slot(owner, content_id) {
            let charge = self.records.get(at as usize).map_or(0, Record::charge);
            self.kill(at);
            if let Some(entry) = self.owners.get_mut(&owner) {
                entry.live -= 1;
                entry.bytes = entry.bytes.saturating_sub(charge);
            }
        }
        self.release_owner_if_empty(owner);
        self.maybe_sweep();
    }

    /// Removes every file of `owner`.
    pub fn remove_owner(&mut self, owner: ConnId) {
        let Some(entry) = self.owners.remove(&owner) else {
            return;
        };
        for slot in entry.slots.iter() {
            if self.records.get(slot as usize).map(|r| r.owner) == Some(entry.number) {
                self.kill(slot);
            }
        }
        self.free_numbers.push(entry.number);
        self.maybe_sweep();
    }

    fn release_owner_if_empty(&mut self, owner: ConnId) {
        if self.owners.get(&owner).is_some_and(|o| o.live == 0) {
            if let Some(entry) = self.owners.remove(&owner) {
                self.free_numbers.push(entry.number);
            }
        }
    }

    /// Marks `slot` dead and unlinks it from its content chain; its
    /// postings wait for the sweep.
    fn kill(&mut self, slot: Slot) {
        let Some(record) = self.records.get(slot as usize) else {
            return;
        };
        let (content_id, next) = (record.content_id, record.next_same);
        let hash = self.hash_key.hash_one(content_id);
        let records = &mut self.records;
        if let Ok(head) = self
            .by_content
            .find_entry(hash, |s| same_content(records, *s, &content_id))
        {
            if *head.get() == slot {
                if next == NONE {
                    head.remove();
                } else {
                    *head.into_mut() = next;
                }
            } else {
                let mut at = *head.get();
                while let Some(record) = records.get_mut(at as usize) {
                    if record.next_same == slot {
                        record.next_same = next;
                        break;
                    }
                    at = record.next_same;
                }
            }
        }
        if let Some(record) = self.records.get_mut(slot as usize) {
            record.owner = NONE;
            record.next_same = NONE;
            self.bytes = self.bytes.saturating_sub(record.charge());
        }
        self.live -= 1;
    }

    fn maybe_sweep(&mut self) {
        let dead = self.records.len() - self.live;
        if dead > SWEEP_FLOOR && dead > self.live {
            self.sweep();
        }
    }

    /// Renumbers the live records in order, repacks their names and
    /// rewrites every table, dropping what the dead ones left behind.
    fn sweep(&mut self) {
        let mut renumbered: Vec<Slot> = vec![NONE; self.records.len()];
        let mut records = ChunkedVec::default();
        let mut names = TextArena::default();
        for (old, record) in self.records.iter().enumerate() {
            if !record.is_live() {
                continue;
            }
            let (Ok(new), Some(name_at)) = (
                Slot::try_from(records.len()),
                names.push(self.name_of(record)),
            ) else {
                break;
            };
            if let Some(entry) = renumbered.get_mut(old) {
                *entry = new;
            }
            records.push(Record {
                name_at,
                ..record.clone()
            });
        }
        let map = |slot: Slot| renumbered.get(slot as usize).copied().unwrap_or(NONE);
        for slot in 0..records.len() {
            if let Some(record) = records.get_mut(slot) {
                record.next_same = map(record.next_same);
            }
        }
        for head in self.by_content.iter_mut() {
            *head = map(*head);
        }
        self.by_keyword.retain(|_, posting| {
            posting.remap(|slot| Some(map(slot)).filter(|new| *new != NONE));
            !posting.is_empty()
        });
        for owner in self.owners.values_mut() {
            let mut kept = SlotRuns::default();
            for slot in owner.slots.iter().map(map).filter(|slot| *slot != NONE) {
                kept.push(slot);
            }
            owner.slots = kept;
        }
        self.records = records;
        self.names = names;
    }

    /// Up to `limit` files matching `filter`: every keyword a word of the
    /// name, the content id equal if given, the size within bounds.
    pub fn search(&self, filter: &Filter, limit: usize) -> Vec<Match<'_>> {
        self.search_within(filter, limit, usize::MAX).matches
    }

    /// [`FileIndex::search`], examining at most `budget` candidate files
    /// (entries of the shortest posting list, or of the content chain).
    pub fn search_within(&self, filter: &Filter, limit: usize, budget: usize) -> Found<'_> {
        let nothing = Found {
            matches: Vec::new(),
            examined: 0,
            exhausted: false,
        };
        if filter.is_empty() || limit == 0 {
            return nothing;
        }
        let mut postings: Vec<&Posting> = Vec::with_capacity(filter.keywords.len());
        for keyword in &filter.keywords {
            match self.by_keyword.get(&self.keyword_hash(keyword)) {
                Some(posting) => postings.push(posting),
                None => return nothing,
            }
        }
        postings.sort_by_key(|p| p.len());
        let (candidates, others): (Box<dyn Iterator<Item = Slot> + '_>, &[&Posting]) =
            match &filter.content_id {
                Some(id) => (Box::new(self.content_chain(id)), &postings),
                None => match postings.split_first() {
                    Some((shortest, rest)) => (shortest.iter(), rest),
                    None => return nothing,
                },
            };
        let mut examined = 0;
        let candidates = candidates.take(budget).inspect(|_| examined += 1);
        // Candidates from a posting list ascend, so every other list is
        // walked forward once with a galloping cursor (a query of two
        // common words costs about the shorter list, not a binary search
        // per candidate); a content chain's candidates descend.
        let ascending = filter.content_id.is_none();
        let mut cursors = vec![Cursor::default(); others.len()];
        let mut has_words = |slot: Slot| {
            others
                .iter()
                .zip(cursors.iter_mut())
                .all(|(posting, cursor)| {
                    if ascending {
                        posting.seek(cursor, slot)
                    } else {
                        posting.contains(slot)
                    }
                })
        };
        let matches = candidates
            .filter(|slot| has_words(*slot))
            .filter_map(|slot| {
                let record = self.records.get(slot as usize)?;
                let owner = *self.owner_conns.get(record.owner as usize)?;
                (record.is_live() && filter.size_matches(record.size)).then(|| Match {
                    owner,
                    content_id: &record.content_id,
                    name: self.name_of(record),
                    size: record.size,
                    available: decode_partial(record.partial, record.size),
                })
            })
            .filter(|m| filter.content_id.is_none_or(|id| *m.content_id == id))
            .take(limit)
            .collect();
        Found {
            exhausted: examined >= budget,
            matches,
            examined,
        }
    }

    /// The slots holding `id`, newest first.
    fn content_chain<'a>(&'a self, id: &ContentId) -> impl Iterator<Item = Slot> + 'a {
        let hash = self.hash_key.hash_one(id);
        let head = self
            .by_content
            .find(hash, |s| same_content(&self.records, *s, id))
            .copied()
            .unwrap_or(NONE);
        std::iter::successors(Some(head), |slot| {
            self.records.get(*slot as usize).map(|r| r.next_same)
        })
        .take_while(|slot| *slot != NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: u8, name: &str, size: u64) -> SharedFile {
        SharedFile {
            content_id: ContentId([id; 32]),
            name: name.into(),
            size,
            available: None,
        }
    }

    fn names(index: &FileIndex, filter: &Filter) -> Vec<String> {
        index
            .search(filter, 100)
            .iter()
            .map(|m| m.name.to_owned())
            .collect()
    }

    #[test]
    fn record_is_compact() {
        assert_eq!(std::mem::size_of::<Record>(), 56);
    }

    fn partial(id: u8, name: &str, size: u64, available: u64) -> SharedFile {
        SharedFile {
            available: Some(available),
            ..file(id, name, size)
        }
    }

    fn by_id(index: &FileIndex, id: u8) -> Vec<(ConnId, String, Option<u64>)> {
        index
            .search(&Filter::new::<&str>(&[], Some(ContentId([id; 32]))), 100)
            .iter()
            .map(|m| (m.owner, m.name.to_owned(), m.available))
            .collect()
    }

    #[test]
    fn a_partial_share_comes_back_rounded_down_never_above_the_size() {
        for size in [0, 1, 7, 1 << 20, 10_000_019, u64::MAX / 3, u64::MAX] {
            for available in [0, 1, size / 3, size / 2, size.saturating_sub(1), size] {
                let kept = decode_partial(encode_partial(Some(available), size), size);
                let kept = kept.expect("a partial file stays partial");
                assert!(kept <= available, "{kept} > {available} of {size}");
                // Within one step of the share.
                assert!(
                    available - kept <= size / PARTIAL_STEPS + 1,
                    "{kept} too far below {available} of {size}"
                );
            }
            assert_eq!(decode_partial(encode_partial(None, size), size), None);
            // A claim above the size is kept as the size.
            let over = decode_partial(encode_partial(Some(u64::MAX), size), size);
            assert_eq!(over, Some(size));
        }
        assert_eq!(decode_partial(encode_partial(Some(50), 100), 100), Some(50));
    }

    #[test]
    fn a_partial_file_is_found_with_about_what_it_has() {
        let mut index = FileIndex::new();
        index.insert(ConnId(1), file(1, "film.mkv", 1000));
        index.insert(ConnId(2), partial(1, "film.mkv", 1000, 250));
        let mut found = by_id(&index, 1);
        found.sort();
        assert_eq!(
            found,
            vec![
                (ConnId(1), "film.mkv".into(), None),
                (ConnId(2), "film.mkv".into(), Some(250)),
            ]
        );
        let hit = index.search(&Filter::new(&["film"], None), 10);
        let files: Vec<SharedFile> = hit.iter().map(Match::to_shared_file).collect();
        assert!(files.contains(&partial(1, "film.mkv", 1000, 250)));
        assert!(files.contains(&file(1, "film.mkv", 1000)));
    }

    #[test]
    fn publishing_the_same_id_again_updates_the_one_record() {
        let mut index = FileIndex::new();
        index.insert(ConnId(1), file(9, "other.txt", 5));
        index.insert(ConnId(2), partial(1, "film.mkv", 1000, 100));
        let bytes = index.bytes();
        let records = index.records.len();
        // Progress: the same name and size, updated in place.
        for available in [200, 600, 999] {
            index.insert(ConnId(2), partial(1, "film.mkv", 1000, available));
            assert_eq!(
                by_id(&index, 1),
                vec![(ConnId(2), "film.mkv".into(), Some(available))]
            );
        }
        // Complete: no longer partial.
        index.insert(ConnId(2), file(1, "film.mkv", 1000));
        assert_eq!(by_id(&index, 1), vec![(ConnId(2), "film.mkv".into(), None)]);
        assert_eq!(index.records.len(), records, "updated in place");
        assert_eq!(index.bytes(), bytes);
        assert_eq!((index.len(), index.owner_len(ConnId(2))), (2, 1));
        assert!(index.contains(ConnId(2), &ContentId([1; 32])));
        assert!(!index.contains(ConnId(1), &ContentId([1; 32])));
        // Renamed: replaced, still one record, found by its new name only.
        index.insert(ConnId(2), partial(1, "renamed film.mkv", 1000, 10));
        assert_eq!(
            by_id(&index, 1),
            vec![(ConnId(2), "renamed film.mkv".into(), Some(10))]
        );
        assert_eq!((index.len(), index.owner_len(ConnId(2))), (2, 1));
        assert!(names(&index, &Filter::new(&["film"], None)) == vec!["renamed film.mkv"]);
        assert!(names(&index, &Filter::new(&["renamed"], None)) == vec!["renamed film.mkv"]);
        index.remove(ConnId(2), &ContentId([1; 32]));
        assert!(by_id(&index, 1).is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn every_keyword_must_match_a_word() {
        let mut index = FileIndex::new();
        index.insert(ConnId(1), file(1, "Blue Moon - Live.mp3", 10));
        index.insert(ConnId(1), file(2, "Blue Sky.ogg", 20));
        index.insert(ConnId(2), file(3, "Moonlight Sonata.flac", 30));
        assert_eq!(names(&index, &Filter::new(&["blue"], None)).len(), 2);
        assert_eq!(
            names(&index, &Filter::new(&["BLUE moon"], None)),
            vec!["Blue Moon - Live.mp3"]
        );
        assert!(names(&index, &Filter::new(&["blue", "nothing"], None)).is_empty());
        // Words, not substrings: "moon" does not match "Moonlight".
        assert_eq!(
            names(&index, &Filter::new(&["moon"], None)),
            vec!["Blue Moon - Live.mp3"]
        );
    }

    #[test]
    fn content_id_and_size_bounds_filter() {
        let mut index = FileIndex::new();
        index.insert(ConnId(1), file(1, "a song.mp3", 10));
        index.insert(ConnId(2), file(1, "same content other name.mp3", 10));
        index.insert(ConnId(2), file(2, "b song.mp3", 50));
        let by_id = Filter::new::<&str>(&[], Some(ContentId([1; 32])));
        assert_eq!(index.search(&by_id, 10).len(), 2);
        let by_id_and_word = Filter::new(&["other"], Some(ContentId([1; 32])));
        assert_eq!(
            names(&index, &by_id_and_word),
            vec!["same content other name.mp3"]
        );
        let mut bounded = Filter::new(&["song"], None);
        bounded.min_size = Some(11);
        assert_eq!(names(&index, &bounded), vec!["b song.mp3"]);
        bounded.min_size = None;
        bounded.max_size = Some(10);
        assert_eq!(names(&index, &bounded), vec!["a song.mp3"]);
    }

    #[test]
    fn a_leaving_owner_takes_all_its_files_and_keywords() {
        let mut index = FileIndex::new();
        index.insert(ConnId(1), file(1, "alpha beta", 1));
        index.insert(ConnId(1), file(2, "gamma", 1));
        index.insert(ConnId(2), file(3, "alpha", 1));
        index.remove_owner(ConnId(1));
        assert_eq!(index.len(), 1);
        assert_eq!(index.owner_len(ConnId(1)), 0);
        assert!(names(&index, &Filter::new(&["gamma"], None)).is_empty());
        assert!(
            index
                .search(&Filter::new::<&str>(&[], Some(ContentId([2; 32]))), 9)
                .is_empty()
        );
        assert_eq!(names(&index, &Filter::new(&["alpha"], None)), vec!["alpha"]);
        index.sweep();
        assert_eq!(index.records.len(), 1);
        assert!(
            !index.by_keyword.contains_key(&index.keyword_hash("beta")),
            "empty posting lists are dropped by the sweep"
        );
        assert_eq!(names(&index, &Filter::new(&["alpha"], None)), vec!["alpha"]);
    }

    #[test]
    fn republishing_replaces_and_remove_is_exact() {
        let mut index = FileIndex::new();
        index.insert(ConnId(1), file(1, "old name", 1));
        index.insert(ConnId(1), file(1, "new name", 1));
        assert_eq!(index.len(), 1);
        assert!(names(&index, &Filter::new(&["old"], None)).is_empty());
        index.remove(ConnId(2), &ContentId([1; 32]));
        assert_eq!(index.len(), 1, "another owner's remove does nothing");
        index.remove(ConnId(1), &ContentId([1; 32]));
        assert!(index.is_empty());
        assert_eq!(index.owner_len(ConnId(1)), 0);
    }

    #[test]
    fn copies_of_one_content_chain_and_unlink_in_any_order() {
        let mut index = FileIndex::new();
        for owner in 1..=4 {
            index.insert(ConnId(owner), file(7, "shared song", 5));
        }
        let by_id = Filter::new::<&str>(&[], Some(ContentId([7; 32])));
        let owners = |index: &FileIndex| -> Vec<u64> {
            index.search(&by_id, 10).iter().map(|m| m.owner.0).collect()
        };
        assert_eq!(owners(&index), vec![4, 3, 2, 1], "newest first");
        index.remove(ConnId(3), &ContentId([7; 32])); // middle
        index.remove(ConnId(4), &ContentId([7; 32])); // head
        index.remove(ConnId(1), &ContentId([7; 32])); // tail
        assert_eq!(owners(&index), vec![2]);
        index.sweep();
        assert_eq!(owners(&index), vec![2]);
        assert_eq!(
            names(&index, &Filter::new(&["song"], None)),
            vec!["shared song"]
        );
    }

    #[test]
    fn sweeps_keep_every_live_file_findable() {
        let mut index = FileIndex::new();
        // Many leaves come and go; every third stays.
        for owner in 0..3000u64 {
            for f in 0..5u8 {
                let mut id = [f; 32];
                id[..8].copy_from_slice(&owner.to_be_bytes());
                let name = format!("track{f} owner{owner} common");
                index.insert(
                    ConnId(owner),
                    SharedFile {
                        content_id: ContentId(id),
                        name,
                        size: 1,
                        available: None,
                    },
                );
            }
            if owner % 3 != 0 {
                index.remove_owner(ConnId(owner));
            }
        }
        assert_eq!(index.len(), 1000 * 5);
        assert!(
            index.records.len() < 3 * index.len(),
            "swept as it went: {} records for {} files",
            index.records.len(),
            index.len()
        );
        let found = index.search(&Filter::new(&["common"], None), usize::MAX);
        assert_eq!(found.len(), 5000);
        assert!(found.iter().all(|m| m.owner.0 % 3 == 0));
        assert_eq!(
            names(&index, &Filter::new(&["owner2997", "track4"], None)),
            vec!["track4 owner2997 common"]
        );
        let mut id = [2; 32];
        id[..8].copy_from_slice(&2997u64.to_be_bytes());
        let by_id = Filter::new::<&str>(&[], Some(ContentId(id)));
        assert_eq!(index.search(&by_id, 10).len(), 1);
    }

    #[test]
    fn overlong_names_are_cut_at_a_character_boundary() {
        let mut index = FileIndex::new();
        let long = "é".repeat(200); // 400 bytes
        index.insert(ConnId(1), file(1, &long, 1));
        let found = index.search(&Filter::new::<&str>(&[], Some(ContentId([1; 32]))), 1);
        assert_eq!(found[0].name.len(), 254);
    }

    #[test]
    fn limit_is_respected() {
        let mut index = FileIndex::new();
        for i in 0..50 {
            index.insert(ConnId(1), file(i, "common", 1));
        }
        assert_eq!(index.search(&Filter::new(&["common"], None), 7).len(), 7);
    }

    #[test]
    fn a_search_examines_at_most_its_budget() {
        let mut index = FileIndex::new();
        for i in 0..10_000u32 {
            let mut id = [0; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let file = SharedFile {
                content_id: ContentId(id),
                name: format!("common word {i}"),
                size: 100,
                available: None,
            };
            index.insert(ConnId(1), file);
        }
        // Nothing can match: without a budget the whole list is walked.
        let mut never = Filter::new(&["common"], None);
        never.min_size = Some(u64::MAX);
        let all = index.search_within(&never, 200, usize::MAX);
        assert_eq!((all.matches.len(), all.examined), (0, 10_000));
        assert!(!all.exhausted);
        let bounded = index.search_within(&never, 200, 1_000);
        assert_eq!((bounded.matches.len(), bounded.examined), (0, 1_000));
        assert!(bounded.exhausted);
        // An honest query stops at its limit long before the budget.
        let honest = index.search_within(&Filter::new(&["common"], None), 200, 1_000);
        assert_eq!((honest.matches.len(), honest.examined), (200, 200));
        assert!(!honest.exhausted);
    }

    #[test]
    fn names_are_indexed_by_their_first_words() {
        let mut index = FileIndex::new();
        index.set_max_words(3);
        index.insert(ConnId(1), file(1, "one two three four five", 1));
        assert_eq!(names(&index, &Filter::new(&["three"], None)).len(), 1);
        assert!(names(&index, &Filter::new(&["four"], None)).is_empty());
        assert_eq!(index.bytes(), FILE_BYTES + 23 + 3 * WORD_BYTES);
    }

    #[test]
    fn bytes_are_charged_to_owners_and_refunded() {
        let mut index = FileIndex::new();
        let charge = FILE_BYTES + 5 + WORD_BYTES; // "alpha": one word
        assert_eq!(
            index.insert_within(ConnId(1), &file(1, "alpha", 1), charge),
            Ok(())
        );
        assert_eq!(
            index.insert_within(ConnId(2), &file(2, "gamma", 1), charge),
            Err(Refused::OverBudget {
                needed: charge,
                used: charge
            })
        );
        assert_eq!(
            index.insert_within(ConnId(2), &file(2, "gamma", 1), 2 * charge),
            Ok(())
        );
        index.insert(ConnId(2), file(3, "delta", 1));
        assert_eq!(index.bytes(), 3 * charge);
        assert_eq!(index.owner_bytes(ConnId(2)), 2 * charge);
        assert_eq!(index.largest_owner(), Some((ConnId(2), 2 * charge)));
        // Republishing replaces, never double-charges.
        index.insert(ConnId(2), file(3, "delta", 1));
        assert_eq!(index.bytes(), 3 * charge);
        index.remove(ConnId(2), &ContentId([3; 32]));
        assert_eq!(index.owner_bytes(ConnId(2)), charge);
        index.remove_owner(ConnId(1));
        assert_eq!(index.bytes(), charge);
        index.sweep();
        assert_eq!(index.bytes(), charge);
    }
}
