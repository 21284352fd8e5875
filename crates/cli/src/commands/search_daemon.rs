//! `canopy search` through the running leaf: starts the search through
//! its control API, prints numbered rows as results stream in (Server-Sent
//! Events), ends when the leaf says the search is done or at
//! `--max-results`, and saves the numbered results to `last-search.json`
//! for `canopy get N`.

use std::collections::HashMap;
use std::path::Path;

use canopy_daemon::client::ControlClient;
use canopy_daemon::model::{ResultView, SearchSpec};
use canopy_proto::ContentId;
use indicatif::HumanBytes;
use serde::Serialize;

use super::last_search::LastSearch;
use crate::output;

/// What to search for, from `canopy search`'s arguments.
#[derive(Debug)]
pub(crate) struct Query {
    /// Words that must all appear in a name.
    pub(crate) words: Vec<String>,
    /// Or exactly this content.
    pub(crate) id: Option<ContentId>,
    /// Stop after this many distinct results.
    pub(crate) max_results: usize,
    /// Seconds the leaf waits for hits at most.
    pub(crate) timeout: f64,
    /// JSON lines instead of a table.
    pub(crate) json: bool,
}

/// One numbered result as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    /// Its number, for `canopy get N`.
    n: usize,
    id: &'a str,
    name: &'a str,
    names: &'a [String],
    size: u64,
    /// Sources known when it was printed.
    source_count: usize,
    firewalled_sources: usize,
    link: &'a str,
}

/// The width of the streamed table's name column (rows are printed as
/// they arrive, so they can't be measured first).
const NAME_WIDTH: usize = 40;

fn header() -> String {
    format!(
        "{:>3}  {:<NAME_WIDTH$}  {:>10}  {:>7}  CONTENT ID",
        "#", "NAME", "SIZE", "SOURCES"
    )
}

fn row(n: usize, result: &ResultView) -> String {
    format!(
        "{n:>3}  {:<NAME_WIDTH$}  {:>10}  {:>7}  {}",
        output::fit(&result.name, NAME_WIDTH),
        HumanBytes(result.size).to_string(),
        result.sources,
        result.content_id
    )
}

pub(crate) async fn run(
    client: ControlClient,
    data_dir: &Path,
    query: Query,
) -> anyhow::Result<()> {
    let asked = query
        .id
        .map_or_else(|| query.words.join(" "), |id| id.to_hex());
    let spec = SearchSpec {
        query: query.id.is_none().then(|| asked.clone()),
        id: query.id.map(|id| id.to_hex()),
        max_results: Some(query.max_results),
        timeout_secs: Some(query.timeout),
        ..SearchSpec::default()
    };
    let search = client.start_search(&spec).await?;
    let spinner = output::progress("{spinner} searching {msg}… {elapsed}", None);
    spinner.set_message(asked.clone());
    let mut numbered = Numbered::default();
    let followed = follow(&client, &search.id, &query, &spinner, &mut numbered).await;
    spinner.finish_and_clear();
    // The leaf keeps only its latest searches; this one is ours alone.
    if let Err(error) = client.forget_search(&search.id).await {
        tracing::debug!(%error, "the search could not be forgotten");
    }
    let saved = LastSearch {
        query: asked,
        results: numbered.results,
    };
    if !saved.results.is_empty() {
        saved.save(data_dir).map_err(|e| {
            anyhow::anyhow!(
                "saving the results to {}: {e}",
                data_dir.join(super::last_search::FILE).display()
            )
        })?;
    }
    let interrupted = followed?;
    if saved.results.is_empty() && !query.json {
        eprintln!("no results");
    } else if interrupted && !query.json {
        eprintln!("stopped: {} so far", saved.results.len());
    }
    Ok(())
}

/// The results in the order they were numbered.
#[derive(Debug, Default)]
struct Numbered {
    results: Vec<ResultView>,
    index: HashMap<String, usize>,
}

/// Prints each result as it first arrives; true if Ctrl-C ended it.
async fn follow(
    client: &ControlClient,
    search_id: &str,
    query: &Query,
    spinner: &indicatif::ProgressBar,
    numbered: &mut Numbered,
) -> anyhow::Result<bool> {
    let mut events = client.search_events(search_id).await?;
    let interrupted = super::get::interrupted();
    tokio::pin!(interrupted);
    loop {
        let view = tokio::select! {
            view = events.next() => view?,
            () = &mut interrupted => return Ok(true),
        };
        let Some(view) = view else {
            return Ok(false);
        };
        for result in view.results {
            if let Some(&index) = numbered.index.get(&result.content_id) {
                // Sources and names grow as hits arrive: save the latest.
                numbered.results[index] = result;
                continue;
            }
            if numbered.results.len() >= query.max_results {
                break;
            }
            let n = numbered.results.len() + 1;
            spinner.suspend(|| -> anyhow::Result<()> {
                if query.json {
                    let json = JsonRow {
                        n,
                        id: &result.content_id,
                        name: &result.name,
                        names: &result.names,
                        size: result.size,
                        source_count: result.sources,
                        firewalled_sources: result.firewalled_sources,
                        link: &result.link,
                    };
                    say!("{}", serde_json::to_string(&json)?);
                } else {
                    if n == 1 {
                        say!("{}", header());
                    }
                    say!("{}", row(n, &result));
                }
                Ok(())
            })?;
            numbered.index.insert(result.content_id.clone(), n - 1);
            numbered.results.push(result);
        }
        if view.done || numbered.results.len() >= query.max_results {
            return Ok(false);
        }
    }
}
