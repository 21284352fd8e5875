//! `canopy supernode`: runs a supernode until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use canopy_core::addr_limits::{AddressLimit, IpNet};
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
    /// Queries a supernode peer may send a second on average; more are
    /// dropped [default: 2000].
    #[arg(long)]
    peer_queries_per_second: Option<u32>,
    /// Queries a supernode peer may send at once [default: 4000].
    #[arg(long)]
    peer_query_burst: Option<u32>,
    /// Bytes the index may take (an estimate per file: record, name and
    /// words); over it, the leaves publishing the most are refused first
    /// [default: a quarter of the machine's memory, or 1 GiB where that
    /// can't be read].
    #[arg(long)]
    index_budget_bytes: Option<u64>,
    /// Words of a file name indexed; a longer name is found by its first
    /// words only [default: 32].
    #[arg(long)]
    max_words_per_name: Option<usize>,
    /// Supernode peers to keep; beyond --peer, supernodes heard of are
    /// dialed until there are this many [default: 8].
    #[arg(long)]
    peers_wanted: Option<usize>,
    /// Leaves one IP address may attach [default: 4].
    #[arg(long)]
    leaves_per_ip: Option<usize>,
    /// Leaves one network (an IPv4 /24, an IPv6 /48) may attach [default: 32].
    #[arg(long)]
    leaves_per_network: Option<usize>,
    /// Supernode peers that dialed us from one IP address [default: 2].
    #[arg(long)]
    peers_per_ip: Option<usize>,
    /// Supernode peers that dialed us from one /24 or /48 [default: 4].
    #[arg(long)]
    peers_per_network: Option<usize>,
    /// Handshakes in progress from one IP address; connections beyond are
    /// closed at once [default: 8].
    #[arg(long)]
    handshakes_per_ip: Option<usize>,
    /// Handshakes in progress from one /24 or /48 [default: 32].
    #[arg(long)]
    handshakes_per_network: Option<usize>,
    /// Supernode peer slots only peers we dial may take, so inbound floods
    /// can't lock us out of our own network [default: 8].
    #[arg(long)]
    reserved_outbound_peers: Option<usize>,
    /// Addresses (CIDR or single IP, repeatable) the per-address limits do
    /// not apply to; `none` limits everyone [default: 127.0.0.0/8, ::1].
    #[arg(long = "limit-exempt", value_name = "CIDR")]
    limit_exempt: Vec<String>,
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
        options.peer_queries_per_second = pick(
            self.peer_queries_per_second,
            file.peer_queries_per_second,
            defaults.peer_queries_per_second,
        );
        options.peer_query_burst = pick(
            self.peer_query_burst,
            file.peer_query_burst,
            defaults.peer_query_burst,
        );
        options.index_budget_bytes = pick(
            self.index_budget_bytes,
            file.index_budget_bytes,
            machine_index_budget().unwrap_or(defaults.index_budget_bytes),
        );
        options.max_words_per_name = pick(
            self.max_words_per_name,
            file.max_words_per_name,
            defaults.max_words_per_name,
        );
        for (key, value) in [
            ("peer_query_burst", u64::from(options.peer_query_burst)),
            ("index_budget_bytes", options.index_budget_bytes),
            ("max_words_per_name", options.max_words_per_name as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(path, key, "must be at least 1"));
            }
        }
        if options.max_words_per_name > 255 {
            return Err(ConfigError::invalid(
                path,
                "max_words_per_name",
                format!("must be 1-255, not {}", options.max_words_per_name),
            ));
        }
        options.peers_wanted = pick(self.peers_wanted, file.peers_wanted, defaults.peers_wanted);
        let limit = |flag_ip, file_ip, flag_net, file_net, default: AddressLimit, key| {
            let limit = AddressLimit::new(
                pick(flag_ip, file_ip, default.per_ip),
                pick(flag_net, file_net, default.per_prefix),
            );
            if limit.per_ip == 0 || limit.per_prefix == 0 {
                return Err(ConfigError::invalid(path, key, "must be at least 1"));
            }
            Ok(limit)
        };
        options.leaves_per_address = limit(
            self.leaves_per_ip,
            file.leaves_per_ip,
            self.leaves_per_network,
            file.leaves_per_network,
            defaults.leaves_per_address,
            "leaves_per_ip",
        )?;
        options.peers_per_address = limit(
            self.peers_per_ip,
            file.peers_per_ip,
            self.peers_per_network,
            file.peers_per_network,
            defaults.peers_per_address,
            "peers_per_ip",
        )?;
        options.handshakes_per_address = limit(
            self.handshakes_per_ip,
            file.handshakes_per_ip,
            self.handshakes_per_network,
            file.handshakes_per_network,
            defaults.handshakes_per_address,
            "handshakes_per_ip",
        )?;
        options.reserved_outbound_peers = pick(
            self.reserved_outbound_peers,
            file.reserved_outbound_peers,
            defaults.reserved_outbound_peers,
        );
        if options.reserved_outbound_peers > options.max_supernode_peers {
            return Err(ConfigError::invalid(
                path,
                "reserved_outbound_peers",
                format!(
                    "must be at most max_peers ({})",
                    options.max_supernode_peers
                ),
            ));
        }
        options.limit_exempt = if !self.limit_exempt.is_empty() {
            parse_exempt(&self.limit_exempt)
                .map_err(|problem| ConfigError::invalid(None, "limit_exempt", problem))?
        } else if let Some(list) = &file.limit_exempt {
            parse_exempt(list)
                .map_err(|problem| ConfigError::invalid(path, "limit_exempt", problem))?
        } else {
            defaults.limit_exempt
        };
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

/// The exempt list: networks (`10.0.0.0/8`) or single addresses, or the
/// one word `none` for an empty list (an empty array does too in a file).
fn parse_exempt(items: &[String]) -> Result<Vec<IpNet>, String> {
    if items.iter().any(|item| item == "none") {
        return if items.len() == 1 {
            Ok(Vec::new())
        } else {
            Err("`none` can't be combined with addresses".into())
        };
    }
    items
        .iter()
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not an address or a network (CIDR)"))
        })
        .collect()
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

/// The index budget sized for this machine: a quarter of its memory (so a
/// supernode that fills its index still leaves room for its connections
/// and for everything else on the box), at least 64 MiB. `None` where the
/// machine's memory can't be read (not Linux).
fn machine_index_budget() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((total_kib.saturating_mul(1024) / 4).max(64 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_exempt_list_takes_networks_addresses_or_none() {
        let parsed = parse_exempt(&items(&["10.0.0.0/8", "192.0.2.7", "::1"])).unwrap();
        assert_eq!(
            parsed,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ]
        );
        assert_eq!(parse_exempt(&items(&["none"])).unwrap(), Vec::new());
        assert!(parse_exempt(&items(&["none", "10.0.0.0/8"])).is_err());
        let error = parse_exempt(&items(&["localhost"])).unwrap_err();
        assert!(error.contains("`localhost`"), "{error}");
    }

    #[test]
    fn the_index_budget_is_a_quarter_of_the_machine() {
        let budget = super::machine_index_budget().expect("Linux has /proc/meminfo");
        assert!(budget >= 64 << 20);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(meminfo.contains(&format!("{} kB", budget * 4 / 1024)) || budget == 64 << 20);
    }
}
