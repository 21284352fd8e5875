//! The keyword workload: a vocabulary with Zipf word frequencies, content
//! names of several words drawn from it (so many contents share words, and
//! a common word matches many of them), and keyword queries made of words
//! of the content a user wants.
//!
//! Words are `w0`, `w1`, ... by rank (`w0` the most frequent): one token
//! each for the core's tokenizer. A name holds distinct words; a query
//! takes one or two words of its content's name, so it matches that
//! content and every other sharing them: a one-word query for a common
//! word has hundreds of answers, and the keyword target (150 results)
//! means something.

use rand::Rng;
use rand::rngs::StdRng;

/// Cumulative Zipf weights over `n` ranks, exponent `s`.
pub fn zipf_table(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    (0..n)
        .map(|rank| {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            total
        })
        .collect()
}

/// A rank drawn from a table of [`zipf_table`].
pub fn zipf_pick(table: &[f64], rng: &mut StdRng) -> usize {
    let total = table.last().copied().unwrap_or(1.0);
    let x = rng.random::<f64>() * total;
    table
        .partition_point(|c| *c < x)
        .min(table.len().saturating_sub(1))
}

/// The shape of the vocabulary and the names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VocabularyModel {
    /// Distinct words.
    pub words: usize,
    /// Zipf exponent of word frequencies.
    pub zipf: f64,
    /// Words in a name: between these two, inclusive.
    pub words_per_name: (usize, usize),
}

impl Default for VocabularyModel {
    /// 2,000 words at Zipf 1 (word frequencies in titles and text follow
    /// Zipf's law with an exponent near 1), names of 2-5 words.
    fn default() -> Self {
        Self {
            words: 2_000,
            zipf: 1.0,
            words_per_name: (2, 5),
        }
    }
}

/// Every content's name, as word ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    names: Vec<Vec<usize>>,
}

impl Workload {
    /// Names for `contents` contents.
    pub fn new(contents: usize, model: VocabularyModel, rng: &mut StdRng) -> Self {
        let table = zipf_table(model.words.max(1), model.zipf);
        let (low, high) = model.words_per_name;
        let high = high.max(low).min(model.words.max(1));
        let low = low.clamp(1, high);
        let names = (0..contents)
            .map(|_| {
                let len = rng.random_range(low..=high);
                let mut words: Vec<usize> = Vec::with_capacity(len);
                // Distinct words; a bounded number of tries.
                for _ in 0..len * 16 {
                    if words.len() >= len {
                        break;
                    }
                    let w = zipf_pick(&table, rng);
                    if !words.contains(&w) {
                        words.push(w);
                    }
                }
                words
            })
            .collect();
        Self { names }
    }

    /// Contents named.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The words of content `k`'s name, by rank.
    pub fn words(&self, k: usize) -> &[usize] {
        self.names.get(k).map_or(&[], Vec::as_slice)
    }

    /// Content `k`'s file name.
    pub fn name(&self, k: usize) -> String {
        let words: Vec<String> = self.words(k).iter().map(|w| word(*w)).collect();
        format!("{}.ogg", words.join(" "))
    }

    /// A user after content `k` types one or two words of its name.
    pub fn query(&self, k: usize, rng: &mut StdRng) -> Vec<String> {
        let words = self.words(k);
        if words.is_empty() {
            return Vec::new();
        }
        let count = rng.random_range(1..=2usize).min(words.len());
        let mut picked: Vec<usize> = Vec::with_capacity(count);
        while picked.len() < count {
            let w = words[rng.random_range(0..words.len())];
            if !picked.contains(&w) {
                picked.push(w);
            }
        }
        picked.into_iter().map(word).collect()
    }

    /// The contents whose names hold every word of `query`.
    pub fn matching(&self, query: &[String]) -> Vec<usize> {
        (0..self.names.len())
            .filter(|k| {
                query
                    .iter()
                    .all(|q| self.words(*k).iter().any(|w| word(*w) == *q))
            })
            .collect()
    }
}

/// The word of rank `rank`.
pub fn word(rank: usize) -> String {
    format!("w{rank}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn word_frequencies_follow_zipf() {
        let mut rng = StdRng::seed_from_u64(1);
        let model = VocabularyModel::default();
        let workload = Workload::new(20_000, model, &mut rng);
        let mut counts = vec![0usize; model.words];
        for k in 0..workload.len() {
            for w in workload.words(k) {
                counts[*w] += 1;
            }
        }
        // Zipf 1: rank 1 about twice rank 2, ten times rank 10 (names hold
        // distinct words, which flattens the head a little).
        let ratio_2 = counts[0] as f64 / counts[1] as f64;
        let ratio_10 = counts[0] as f64 / counts[9] as f64;
        assert!((1.5..2.5).contains(&ratio_2), "{ratio_2} {counts:?}");
        assert!((6.0..14.0).contains(&ratio_10), "{ratio_10}");
        assert!(
            counts[0] > counts[100] * 30,
            "{} {}",
            counts[0],
            counts[100]
        );
    }

    #[test]
    fn many_contents_share_words_and_queries_match_their_content() {
        let mut rng = StdRng::seed_from_u64(2);
        let workload = Workload::new(1_000, VocabularyModel::default(), &mut rng);
        for k in 0..workload.len() {
            let len = workload.words(k).len();
            assert!((2..=5).contains(&len), "{len}");
        }
        // The commonest word is in a large share of the names.
        let common = workload.matching(&[word(0)]);
        assert!(common.len() > 200, "{}", common.len());
        for k in 0..50 {
            let query = workload.query(k, &mut rng);
            assert!((1..=2).contains(&query.len()));
            let matches = workload.matching(&query);
            assert!(matches.contains(&k), "{query:?} {k}");
        }
        // The name tokenizes to its words (and the extension).
        let tokens = canopy_core::tokenize::tokenize(&workload.name(0));
        assert_eq!(tokens.len(), workload.words(0).len() + 1, "{tokens:?}");
    }
}
