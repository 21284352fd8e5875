//! The synthetic share: who publishes what, and what is searched for.
//!
//! Every leaf publishes `files` files. A name is
//! `"<artist words> - <title words> <year>.<ext>"`: two artist words and two
//! to four title words drawn from a fixed vocabulary of 4,096 words with
//! Zipf's law (exponent 1: the word of rank r is chosen with probability
//! proportional to 1/r), so a few words ("love", "live", "remix") are in many
//! names and most words in few. A share `popular` of each leaf's files are
//! copies of a pool of 1,000 popular files (same name and content id on every
//! leaf that has them, the pool itself picked with Zipf's law); the rest are
//! distinct, with content ids no other file has. Everything derives from a
//! seed, so two runs with the same seed publish the same files.
//!
//! Queries come in two kinds. A *hit* query is the artist and title words of
//! an existing file: it matches that file and few others. A *miss* query is
//! two words from the rarer half of the vocabulary: both are in the index,
//! so the supernode looks up and intersects their posting sets, but the two
//! rarely share a name, so it usually finds nothing.

use canopy_core::rng::SplitMix64;
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{ContentId, MessageId, NodeId, SharedFile};

/// Words in the vocabulary.
pub const VOCABULARY: usize = 4096;
/// Popular files shared by many leaves.
pub const POPULAR_POOL: u64 = 1000;

/// The most common words, in rank order; the rest are made of syllables.
const COMMON: &[&str] = &[
    "love",
    "live",
    "remix",
    "the",
    "night",
    "best",
    "of",
    "my",
    "song",
    "dance",
    "blue",
    "girl",
    "heart",
    "time",
    "man",
    "world",
    "life",
    "day",
    "baby",
    "dream",
    "fire",
    "rain",
    "light",
    "summer",
    "mix",
    "original",
    "edit",
    "part",
    "vol",
    "album",
    "acoustic",
    "version",
    "radio",
    "club",
    "house",
    "rock",
    "jazz",
    "soul",
    "blues",
    "home",
    "city",
    "road",
    "star",
    "moon",
    "sun",
    "black",
    "white",
    "red",
    "gold",
    "wild",
    "free",
    "young",
    "old",
    "new",
    "little",
    "big",
    "sweet",
    "lost",
    "last",
    "first",
    "one",
    "two",
    "three",
    "king",
    "queen",
    "angel",
    "river",
    "ocean",
    "paris",
    "london",
    "tokyo",
    "berlin",
    "story",
    "tales",
    "letter",
    "music",
    "party",
    "theme",
    "session",
    "concert",
    "tour",
    "demo",
    "instrumental",
    "piano",
    "guitar",
    "strings",
    "choir",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "de", "ba", "zo", "ri", "po", "la", "me", "ti",
    "go", "na", "fe", "ju", "se", "ko", "ha", "yu",
];

const EXTENSIONS: &[&str] = &[
    "mp3", "mp3", "mp3", "flac", "ogg", "mkv", "avi", "pdf", "epub", "zip",
];

/// The core's generator ([`SplitMix64`]), with the ids and keys the load
/// generator draws besides.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.unit()
    }

    /// Uniform in `[0, n)`; 0 if `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// 16 random bytes, never all zero.
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&(self.next_u64() | 1).to_le_bytes());
        out
    }

    /// A random message id.
    pub fn message_id(&mut self) -> MessageId {
        MessageId(self.bytes16())
    }
}

/// Mixes `parts` into one seed.
pub fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5EED, |acc, part| SplitMix64::new(acc ^ part).next_u64())
}

/// The share and the queries of one run.
#[derive(Debug, Clone)]
pub struct Workload {
    seed: u64,
    files_per_leaf: usize,
    popular: f64,
    words: Vec<String>,
    /// Cumulative Zipf weights of the words, normalised to end at 1.
    word_cdf: Vec<f64>,
    /// Cumulative Zipf weights of the popular pool.
    popular_cdf: Vec<f64>,
}

fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|rank| {
            acc += 1.0 / rank as f64;
            acc
        })
        .collect();
    for weight in &mut cdf {
        *weight /= acc;
    }
    cdf
}

fn pick(cdf: &[f64], rng: &mut Rng) -> usize {
    let u = rng.unit();
    cdf.partition_point(|&c| c < u)
        .min(cdf.len().saturating_sub(1))
}

impl Workload {
    /// `files_per_leaf` files a leaf, a share `popular` (0-1) of them from
    /// the popular pool, everything derived from `seed`.
    pub fn new(seed: u64, files_per_leaf: usize, popular: f64) -> Self {
        let mut words: Vec<String> = COMMON.iter().map(|w| (*w).to_owned()).collect();
        let n = SYLLABLES.len();
        let mut i = 0usize;
        while words.len() < VOCABULARY {
            // Two or three syllables, distinct by construction.
            let word = if i < n * n {
                format!("{}{}", SYLLABLES[i / n], SYLLABLES[i % n])
            } else {
                let j = i - n * n;
                format!(
                    "{}{}{}",
                    SYLLABLES[(j / (n * n)) % n],
                    SYLLABLES[(j / n) % n],
                    SYLLABLES[j % n]
                )
            };
            i += 1;
            if !COMMON.contains(&word.as_str()) {
                words.push(word);
            }
        }
        Self {
            seed,
            files_per_leaf,
            popular: popular.clamp(0.0, 1.0),
            words,
            word_cdf: zipf_cdf(VOCABULARY),
            popular_cdf: zipf_cdf(usize::try_from(POPULAR_POOL).unwrap_or(1000)),
        }
    }

    /// Files per leaf.
    pub fn files_per_leaf(&self) -> usize {
        self.files_per_leaf
    }

    /// The static key of leaf number `leaf` (the same every run).
    pub fn leaf_key(&self, leaf: u64) -> StaticKeypair {
        let mut rng = Rng::new(mix(&[self.seed, 1, leaf]));
        let mut private = [0u8; 32];
        private[..16].copy_from_slice(&rng.bytes16());
        private[16..].copy_from_slice(&rng.bytes16());
        StaticKeypair::from_private(private)
    }

    /// The node id of leaf number `leaf`: its key's.
    pub fn leaf_id(&self, leaf: u64) -> NodeId {
        self.leaf_key(leaf).node_id()
    }

    fn word(&self, rng: &mut Rng) -> &str {
        &self.words[pick(&self.word_cdf, rng)]
    }

    /// Words, year and extension of the file drawn from `rng`.
    fn name_parts(&self, rng: &mut Rng) -> (Vec<String>, u64, &'static str) {
        let title_words = 2 + rng.below(3);
        let mut words = Vec::new();
        for _ in 0..2 + title_words {
            words.push(self.word(rng).to_owned());
        }
        let year = 1960 + rng.below(66);
        let ext = EXTENSIONS[usize::try_from(rng.below(EXTENSIONS.len() as u64)).unwrap_or(0)];
        (words, year, ext)
    }

    fn build(&self, file_seed: u64) -> (SharedFile, Vec<String>) {
        let mut rng = Rng::new(file_seed);
        let (words, year, ext) = self.name_parts(&mut rng);
        let name = format!(
            "{} {} - {} {year}.{ext}",
            words[0],
            words[1],
            words[2..].join(" ")
        );
        let mut id = [0u8; 32];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        // Log-uniform between 100 kB and 700 MB.
        // At most 7e8: no truncation.
        #[allow(clippy::cast_possible_truncation)]
        let size = (1e5 * (7000f64).powf(rng.unit())) as u64;
        let file = SharedFile {
            content_id: ContentId(id),
            name,
            size,
            available: None,
        };
        (file, words)
    }

    fn file_seed(&self, leaf: u64, index: usize) -> u64 {
        let mut rng = Rng::new(mix(&[self.seed, 2, leaf, index as u64]));
        if rng.unit() < self.popular {
            let popular = pick(&self.popular_cdf, &mut rng) as u64;
            mix(&[self.seed, 3, popular])
        } else {
            mix(&[self.seed, 4, leaf, index as u64])
        }
    }

    /// The seeds of leaf `leaf`'s files, one per content id.
    fn seeds(&self, leaf: u64) -> Vec<u64> {
        let mut seen = std::collections::HashSet::new();
        let mut seeds = Vec::with_capacity(self.files_per_leaf);
        for index in 0..self.files_per_leaf {
            let mut seed = self.file_seed(leaf, index);
            if !seen.insert(seed) {
                // A popular file drawn twice: this slot gets its own file.
                seed = mix(&[self.seed, 4, leaf, index as u64]);
                seen.insert(seed);
            }
            seeds.push(seed);
        }
        seeds
    }

    /// The files leaf number `leaf` publishes: distinct content ids.
    pub fn leaf_files(&self, leaf: u64) -> Vec<SharedFile> {
        self.seeds(leaf)
            .into_iter()
            .map(|seed| self.build(seed).0)
            .collect()
    }

    /// A query that matches file `index` of leaf `leaf` (its artist and
    /// title words), and so few others.
    pub fn hit_keywords(&self, leaf: u64, index: usize) -> Vec<String> {
        let seeds = self.seeds(leaf);
        let seed = seeds
            .get(index % seeds.len().max(1))
            .copied()
            .unwrap_or_default();
        self.build(seed).1
    }

    /// Two words from the rarer half of the vocabulary: looked up, rarely
    /// found together.
    pub fn miss_keywords(&self, rng: &mut Rng) -> Vec<String> {
        let half = (VOCABULARY / 2) as u64;
        let a = usize::try_from(half + rng.below(half)).unwrap_or(0);
        let mut b = usize::try_from(half + rng.below(half)).unwrap_or(0);
        if a == b {
            b = if b + 1 < VOCABULARY { b + 1 } else { b - 1 };
        }
        vec![self.words[a].clone(), self.words[b].clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_distinct_and_matching() {
        let w = Workload::new(7, 100, 0.2);
        let files = w.leaf_files(3);
        assert_eq!(files, w.leaf_files(3));
        let ids: std::collections::HashSet<_> = files.iter().map(|f| f.content_id).collect();
        assert_eq!(ids.len(), 100);
        let words = w.hit_keywords(3, 5);
        let name = files[5].name.to_lowercase();
        assert!(
            words.iter().all(|k| name.contains(k.as_str())),
            "{name} {words:?}"
        );
        assert_eq!(w.words.len(), VOCABULARY);
    }
}
