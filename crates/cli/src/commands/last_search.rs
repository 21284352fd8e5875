//! `last-search.json` in the data directory: the numbered results of the
//! last `canopy search` made through the running leaf, so that
//! `canopy get 3` can name one of them.

use std::io::{self, Read as _};
use std::path::Path;

use anyhow::{Context as _, anyhow};
use canopy_daemon::model::ResultView;
use serde::{Deserialize, Serialize};

/// Its name in the data directory.
pub(crate) const FILE: &str = "last-search.json";

/// The largest file read back (a search keeps at most 1000 results).
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The last search and its results, result N at index N - 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LastSearch {
    /// What was asked: the words, or the content id.
    pub(crate) query: String,
    /// The results in the order they were numbered.
    pub(crate) results: Vec<ResultView>,
}

impl LastSearch {
    /// Writes it into `dir`, replacing the previous one at once (a reader
    /// never sees half a file).
    pub(crate) fn save(&self, dir: &Path) -> io::Result<()> {
        let temporary = dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, dir.join(FILE))
    }

    /// The one saved in `dir`.
    pub(crate) fn load(dir: &Path) -> anyhow::Result<LastSearch> {
        let path = dir.join(FILE);
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(file) => file
                .take(MAX_BYTES)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", path.display()))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(anyhow!(
                    "no search to take a result number from in {} (run `canopy search` first)",
                    dir.display()
                ));
            }
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// Result `n` (1-based).
    pub(crate) fn result(&self, n: usize) -> anyhow::Result<&ResultView> {
        n.checked_sub(1)
            .and_then(|index| self.results.get(index))
            .ok_or_else(|| {
                anyhow!(
                    "the last search (\"{}\") has no result #{n}: it found {}",
                    self.query,
                    self.results.len()
                )
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn results_are_saved_and_found_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let error = LastSearch::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("run `canopy search` first"), "{error}");
        let search = LastSearch {
            query: "night train".into(),
            results: vec![
                ResultView {
                    name: "one.ogg".into(),
                    ..ResultView::default()
                },
                ResultView {
                    name: "two.ogg".into(),
                    ..ResultView::default()
                },
            ],
        };
        search.save(dir.path()).unwrap();
        let loaded = LastSearch::load(dir.path()).unwrap();
        assert_eq!(loaded, search);
        assert_eq!(loaded.result(2).unwrap().name, "two.ogg");
        assert!(loaded.result(0).is_err());
        let error = loaded.result(3).unwrap_err().to_string();
        assert!(error.contains("no result #3: it found 2"), "{error}");
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(LastSearch::load(dir.path()).is_err());
    }
}
