//! `canopy search`: one query through a supernode, results as a table or
//! JSON lines.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::leaf::SearchRequest;
use canopy_node::leaf::{self, LeafOptions};
use canopy_proto::ContentId;

use crate::output;

/// Arguments of `canopy search`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The supernode to ask.
    #[arg(long)]
    supernode: SocketAddr,
    /// Print one JSON object per line per distinct content.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for hits.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// How many supernodes the query may reach (1-7).
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

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| anyhow::anyhow!("--timeout must be a positive number of seconds"))?;
    let leaf = leaf::start(LeafOptions::new(args.supernode)).await?;
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
    let outcome = leaf.search(request).await;
    spinner.finish_and_clear();
    leaf.shutdown().await;
    let outcome = outcome?;
    if args.json {
        output::print_json_lines(&outcome.results)?;
    } else if outcome.results.is_empty() {
        eprintln!("no results");
    } else {
        say!("{}", output::table(&outcome.results).trim_end());
    }
    Ok(())
}
