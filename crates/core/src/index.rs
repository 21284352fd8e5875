//! The supernode's index of its leaves' files, and query matching.
//!
//! Each file a leaf publishes gets a slot. Slots are found by keyword (every
//! word of the file's name, see [`crate::tokenize`]), by content id, and by
//! owner, so a leaf's files all leave when the leaf does. Posting sets are
//! ordered, so a search returns the same files in the same order for the
//! same history: the simulator depends on that.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use canopy_proto::{ContentId, SharedFile};

use crate::ConnId;
use crate::tokenize::{tokenize, tokenize_all};

type Slot = u32;

#[derive(Debug)]
struct Entry {
    owner: ConnId,
    file: SharedFile,
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

/// One match: whose file, and the file.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    /// The leaf sharing it.
    pub owner: ConnId,
    /// The file.
    pub file: &'a SharedFile,
}

/// Files of many leaves, searchable by keyword and content id.
#[derive(Debug, Default)]
pub struct FileIndex {
    slots: Vec<Option<Entry>>,
    free: Vec<Slot>,
    by_keyword: HashMap<Box<str>, BTreeSet<Slot>>,
    by_content: HashMap<ContentId, BTreeSet<Slot>>,
    /// Ordered inner maps: a departing owner frees its slots in the same
    /// order every run, so slot reuse (and result order) is deterministic.
    by_owner: HashMap<ConnId, BTreeMap<ContentId, Slot>>,
}

impl FileIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of files indexed, over all leaves.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of files `owner` has published.
    pub fn owner_len(&self, owner: ConnId) -> usize {
        self.by_owner.get(&owner).map_or(0, BTreeMap::len)
    }

    /// Adds `file` for `owner`. Publishing the same content again replaces
    /// the earlier entry (its name or size may have changed).
    pub fn insert(&mut self, owner: ConnId, file: SharedFile) {
        self.remove(owner, &file.content_id);
        let content_id = file.content_id;
        let keywords = tokenize(&file.name);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                // Slots are u32: four billion files is far past any supernode.
                let slot = Slot::try_from(self.slots.len()).unwrap_or(Slot::MAX);
                self.slots.push(None);
                slot
            }
        };
        self.slots[slot as usize] = Some(Entry { owner, file });
        for keyword in keywords {
            self.by_keyword
                .entry(keyword.into())
                .or_default()
                .insert(slot);
        }
        self.by_content.entry(content_id).or_default().insert(slot);
        self.by_owner
            .entry(owner)
            .or_default()
            .insert(content_id, slot);
    }

    /// Removes `owner`'s file with `content_id`, if it has one.
    pub fn remove(&mut self, owner: ConnId, content_id: &ContentId) {
        let Some(files) = self.by_owner.get_mut(&owner) else {
            return;
        };
        let Some(slot) = files.remove(content_id) else {
            return;
        };
        if files.is_empty() {
            self.by_owner.remove(&owner);
        }
        self.release(slot);
    }

    /// Removes every file of `owner`.
    pub fn remove_owner(&mut self, owner: ConnId) {
        if let Some(files) = self.by_owner.remove(&owner) {
            for slot in files.into_values() {
                self.release(slot);
            }
        }
    }

    fn release(&mut self, slot: Slot) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        for keyword in tokenize(&entry.file.name) {
            if let Some(set) = self.by_keyword.get_mut(keyword.as_str()) {
                set.remove(&slot);
                if set.is_empty() {
                    self.by_keyword.remove(keyword.as_str());
                }
            }
        }
        if let Some(set) = self.by_content.get_mut(&entry.file.content_id) {
            set.remove(&slot);
            if set.is_empty() {
                self.by_content.remove(&entry.file.content_id);
            }
        }
        self.free.push(slot);
    }

    /// Up to `limit` files matching `filter`: every keyword a word of the
    /// name, the content id equal if given, the size within bounds.
    pub fn search(&self, filter: &Filter, limit: usize) -> Vec<Match<'_>> {
        if filter.is_empty() || limit == 0 {
            return Vec::new();
        }
        // Start from the smallest candidate set; check the rest per slot.
        let mut sets: Vec<&BTreeSet<Slot>> = Vec::with_capacity(filter.keywords.len() + 1);
        if let Some(id) = &filter.content_id {
            match self.by_content.get(id) {
                Some(set) => sets.push(set),
                None => return Vec::new(),
            }
        }
        for keyword in &filter.keywords {
            match self.by_keyword.get(keyword.as_str()) {
                Some(set) => sets.push(set),
                None => return Vec::new(),
            }
        }
        sets.sort_by_key(|set| set.len());
        let Some((smallest, rest)) = sets.split_first() else {
            return Vec::new();
        };
        smallest
            .iter()
            .filter(|slot| rest.iter().all(|set| set.contains(slot)))
            .filter_map(|slot| self.slots.get(*slot as usize)?.as_ref())
            .filter(|entry| filter.size_matches(entry.file.size))
            .take(limit)
            .map(|entry| Match {
                owner: entry.owner,
                file: &entry.file,
            })
            .collect()
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
        }
    }

    fn names(index: &FileIndex, filter: &Filter) -> Vec<String> {
        index
            .search(filter, 100)
            .iter()
            .map(|m| m.file.name.clone())
            .collect()
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
            !index.by_keyword.contains_key("beta"),
            "empty posting sets are dropped"
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
        // The freed slot is reused.
        index.insert(ConnId(3), file(9, "x", 1));
        assert_eq!(index.slots.len(), 1);
    }

    #[test]
    fn limit_is_respected() {
        let mut index = FileIndex::new();
        for i in 0..50 {
            index.insert(ConnId(1), file(i, "common", 1));
        }
        assert_eq!(index.search(&Filter::new(&["common"], None), 7).len(), 7);
    }
}
