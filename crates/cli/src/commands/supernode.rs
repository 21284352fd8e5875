//! `canopy supernode`: runs a supernode until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use canopy_node::metrics;
use canopy_node::supernode::{self, SupernodeOptions};
use tokio_util::task::TaskTracker;

use crate::config::{self, ConfigError, LogFormat, QueryStrategy, SupernodeFile as File, pick};

/// Arguments of `canopy supernode`. Each has a key of the same name in the
/// `--config` file (dashes as underscores); flags win over the file.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A TOML file with any of the settings below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, for leaves and supernodes alike [default: 0.0.0.0:6346].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Another supernode to connect to (repeatable; `peers` in the file);
    /// redialed with backoff if it goes away.
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Cap on the TTL of incoming queries, 1-7 [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=7))]
    ttl_cap: Option<u8>,
    /// Most leaves to accept [default: 1000].
    #[arg(long)]
    max_leaves: Option<usize>,
    /// Most supernode peers [default: 32].
    #[arg(long)]
    max_peers: Option<usize>,
    /// Most files one leaf may publish [default: 10000].
    #[arg(long)]
    max_files_per_leaf: Option<usize>,
    /// How leaves' queries travel: `flood` (TTL flooding) or `dynamic`
    /// (probe, then widen until 150 results, 10 for a content id) [default: dynamic].
    #[arg(long, value_enum)]
    query_strategy: Option<QueryStrategy>,
    /// Queries a leaf may send a second on average; more are dropped [default: 5].
    #[arg(long)]
    leaf_queries_per_second: Option<u32>,
    /// Queries a leaf may send at once [default: 20].
    #[arg(long)]
    leaf_query_burst: Option<u32>,
    /// Supernode peers to keep; beyond --peer, supernodes heard of are
    /// dialed until there are this many [default: 8].
    #[arg(long)]
    peers_wanted: Option<usize>,
    /// Where the host cache is kept [default: $XDG_DATA_HOME/canopy].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// Everything resolved: ready to run.
#[derive(Debug)]
pub(crate) struct Settings {
    options: SupernodeOptions,
    metrics: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    json: bool,
}

impl Args {
    /// Merges flags, the config file and defaults.
    pub(crate) fn resolve(self, log_format: Option<LogFormat>) -> Result<Settings, ConfigError> {
        let path = self.config.as_deref();
        let file: File = config::load(path)?;
        let defaults = SupernodeOptions::new(SocketAddr::from(([0, 0, 0, 0], 6346)));
        let mut options = SupernodeOptions::new(pick(self.listen, file.listen, defaults.listen));
        options.peers = if self.peers.is_empty() {
            file.peers.unwrap_or_default()
        } else {
            self.peers
        };
        options.ttl_cap = pick(self.ttl_cap, file.ttl_cap, defaults.ttl_cap);
        if !(1..=7).contains(&options.ttl_cap) {
            return Err(ConfigError::invalid(
                path,
                "ttl_cap",
                format!("must be 1-7, not {}", options.ttl_cap),
            ));
        }
        options.max_leaves = pick(self.max_leaves, file.max_leaves, defaults.max_leaves);
        options.max_supernode_peers =
            pick(self.max_peers, file.max_peers, defaults.max_supernode_peers);
        options.max_files_per_leaf = pick(
            self.max_files_per_leaf,
            file.max_files_per_leaf,
            defaults.max_files_per_leaf,
        );
        options.leaf_queries_per_second = pick(
            self.leaf_queries_per_second,
            file.leaf_queries_per_second,
            defaults.leaf_queries_per_second,
        );
        options.leaf_query_burst = pick(
            self.leaf_query_burst,
            file.leaf_query_burst,
            defaults.leaf_query_burst,
        );
        options.peers_wanted = pick(self.peers_wanted, file.peers_wanted, defaults.peers_wanted);
        options.dynamic = match pick(
            self.query_strategy,
            file.query_strategy,
            QueryStrategy::Dynamic,
        ) {
            QueryStrategy::Dynamic => Some(canopy_core::dynamic::DynamicConfig::default()),
            QueryStrategy::Flood => None,
        };
        options.data_dir = self
            .data_dir
            .or(file.data_dir)
            .or_else(config::default_data_dir);
        if options.leaf_query_burst == 0 {
            return Err(ConfigError::invalid(
                path,
                "leaf_query_burst",
                "must be at least 1",
            ));
        }
        Ok(Settings {
            options,
            metrics: self.metrics.or(file.metrics),
            log_format: pick(log_format, file.log_format, LogFormat::Text),
            json: self.json || file.json.unwrap_or(false),
        })
    }
}

pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let node = supernode::start(settings.options).await?;
    let metrics = match settings.metrics {
        Some(addr) => Some(
            metrics::serve(
                addr,
                metrics::supernode_metrics(&node),
                node.shutdown_token(),
                &TaskTracker::new(),
            )
            .await?,
        ),
        None => None,
    };
    if settings.json {
        let line = serde_json::json!({
            "event": "listening",
            "role": "supernode",
            "addr": node.local_addr().to_string(),
            "node_id": node.node_id().to_hex(),
            "metrics": metrics.map(|a| a.to_string()),
        });
        say!("{line}");
    } else {
        say!(
            "supernode {} listening on {}",
            node.node_id(),
            node.local_addr()
        );
    }
    crate::shutdown::signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
