//! `canopy search`: one query through a supernode, results as a table or
//! JSON lines, each printed as it arrives; it ends as soon as it has
//! `--max-results` contents, else at `--timeout`. With a leaf running on
//! the data directory (and no `--supernode`), the search goes through it
//! ([`super::search_daemon`]); otherwise a throwaway leaf asks
//! `--supernode` (standalone).

use std::time::Duration;

use std::collections::HashSet;

use canopy_core::leaf::SearchRequest;
use canopy_core::search::SearchResult;
use canopy_node::addr::HostPort;
use canopy_node::leaf::{self, LeafHandle, LeafOptions};
use canopy_proto::ContentId;
use indicatif::HumanBytes;

use crate::output;

/// Arguments of `canopy search`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The supernode to ask, standalone (without the running leaf; by
    /// default the search goes through the leaf running on --data-dir):
    /// host[:port] (default port 6346); every address the name has is
    /// tried.
    #[arg(long)]
    supernode: Option<HostPort>,
    #[command(flatten)]
    leaf: super::running::DataDir,
    /// Print one JSON object per line per distinct content.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for hits at most.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// How many supernodes the query may reach (1-7; standalone).
    #[arg(long, default_value_t = canopy_core::supernode::DEFAULT_TTL_CAP,
          value_parser = clap::value_parser!(u8).range(1..=7))]
    ttl: u8,
    /// Stop after this many distinct results.
    #[arg(long, default_value_t = 200)]
    max_results: usize,
    /// Search for exactly this content id (64 hex characters, as b3sum prints).
    #[arg(long, conflicts_with = "terms")]
    id: Option<ContentId>,
    /// Words that must all appear in a file's name.
    #[arg(required_unless_present = "id")]
    terms: Vec<String>,
}

/// Widths of the streamed table's columns (rows are printed as they
/// arrive, so they can't be measured first).
const NAME_WIDTH: usize = 40;

fn header() -> String {
    format!(
        "{:<NAME_WIDTH$}  {:>10}  {:>7}  CONTENT ID",
        "NAME", "SIZE", "SOURCES"
    )
}

fn row(result: &SearchResult) -> String {
    format!(
        "{:<NAME_WIDTH$}  {:>10}  {:>7}  {}",
        output::fit(&result.name, NAME_WIDTH),
        HumanBytes(result.size).to_string(),
        result.sources.len(),
        result.content_id
    )
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| anyhow::anyhow!("--timeout must be a positive number of seconds"))?;
    let Some(supernode) = &args.supernode else {
        let (client, dir) = args.leaf.find().await?;
        let Some(client) = client else {
            anyhow::bail!(
                "{}; or give --supernode ADDR to search without one",
                super::running::no_leaf(&dir)
            );
        };
        let query = super::search_daemon::Query {
            words: args.terms,
            id: args.id,
            max_results: args.max_results,
            timeout: args.timeout,
            json: args.json,
        };
        return super::search_daemon::run(client, &dir, query).await;
    };
    let supernodes = super::get::resolve(supernode).await?;
    let mut options = LeafOptions::new(supernodes[0]);
    options.supernodes = supernodes;
    let leaf = leaf::start(options).await?;
    let outcome = stream(&leaf, &args, timeout).await;
    leaf.shutdown().await;
    outcome
}

/// Prints each content as it first arrives (a table row, or a JSON line
/// with the sources known then); returns when the search ends: at its
/// timeout, or as soon as it has `--max-results` contents.
async fn stream(leaf: &LeafHandle, args: &Args, timeout: Duration) -> anyhow::Result<()> {
    leaf.wait_connected(Duration::from_secs(10)).await?;
    let spinner = output::progress("{spinner} searching {msg}… {elapsed}", None);
    spinner.set_message(
        args.id
            .map_or_else(|| args.terms.join(" "), |id| id.to_hex()),
    );
    let request = match args.id {
        Some(id) => SearchRequest::content(id, args.ttl, timeout),
        None => SearchRequest::keywords(&args.terms, args.ttl, timeout, args.max_results),
    };
    let mut live = leaf.search_live(request).await?;
    let mut printed: HashSet<(ContentId, u64)> = HashSet::new();
    loop {
        let ended = live.updates.changed().await.is_err();
        let snapshot = live.updates.borrow_and_update().clone();
        for result in &snapshot.results {
            if !printed.insert((result.content_id, result.size)) {
                continue;
            }
            spinner.suspend(|| -> anyhow::Result<()> {
                if args.json {
                    say!(
                        "{}",
                        serde_json::to_string(&output::JsonResult::from(result))?
                    );
                } else {
                    if printed.len() == 1 {
                        say!("{}", header());
                    }
                    say!("{}", row(result));
                }
                Ok(())
            })?;
        }
        if snapshot.done {
            break;
        }
        if ended {
            spinner.finish_and_clear();
            anyhow::bail!("the connection to the supernode ended during the search");
        }
    }
    spinner.finish_and_clear();
    if printed.is_empty() && !args.json {
        eprintln!("no results");
    }
    Ok(())
}
