//! How results are shown: a table for people, one JSON object per line for
//! scripts.

use std::time::Duration;

use canopy_core::search::SearchResult;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde::Serialize;

/// A progress indicator on stderr, drawn only on a terminal, ticking on
/// its own; `template` is indicatif's (a bar if `len` is given).
pub(crate) fn progress(template: &str, len: Option<u64>) -> ProgressBar {
    let fallback = if len.is_some() {
        ProgressStyle::default_bar()
    } else {
        ProgressStyle::default_spinner()
    };
    let bar = ProgressBar::new(len.unwrap_or(0))
        .with_style(ProgressStyle::with_template(template).unwrap_or(fallback));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// One search result as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct JsonResult {
    pub id: String,
    pub name: String,
    /// Every name sources give, most common first.
    pub names: Vec<String>,
    pub size: u64,
    pub sources: Vec<String>,
}

impl From<&SearchResult> for JsonResult {
    fn from(result: &SearchResult) -> Self {
        Self {
            id: result.content_id.to_hex(),
            name: result.name.clone(),
            names: result.names.clone(),
            size: result.size,
            sources: result.sources.iter().map(|s| s.addr.to_string()).collect(),
        }
    }
}

/// Cuts `text` to `width` characters, marking the cut.
pub(crate) fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The results as an aligned table, most sources first.
pub(crate) fn table(results: &[SearchResult]) -> String {
    let mut rows: Vec<&SearchResult> = results.iter().collect();
    rows.sort_by(|a, b| {
        b.sources
            .len()
            .cmp(&a.sources.len())
            .then(a.name.cmp(&b.name))
    });
    let name_width = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 48);
    let mut out = format!(
        "{:<name_width$}  {:>10}  {:<24}  {}\n",
        "NAME", "SIZE", "SOURCES", "CONTENT ID"
    );
    for result in rows {
        let sources = match result.sources.as_slice() {
            [] => String::from("-"),
            [one] => one.addr.to_string(),
            [first, rest @ ..] => format!("{} +{}", first.addr, rest.len()),
        };
        out.push_str(&format!(
            "{:<name_width$}  {:>10}  {:<24}  {}\n",
            fit(&result.name, name_width),
            HumanBytes(result.size).to_string(),
            sources,
            result.content_id
        ));
    }
    out
}
