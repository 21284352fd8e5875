//! `canopy supernode`'s settings: each flag, file key, default and range
//! once, and the one conversion into [`SupernodeOptions`]. The protocol's
//! settings are the core's `SupernodeConfig` (`SupernodeOptions::protocol`),
//! whose defaults the flags show.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use canopy_core::addr_limits::{AddressLimit, default_exempt};
use canopy_node::addr::{self, HostPort};
use canopy_node::supernode::SupernodeOptions;

use crate::config::{self, ConfigError, Exempt, Origin, at_least_one, seconds};

/// The node's defaults, which the flags' defaults show.
static DEFAULTS: LazyLock<SupernodeOptions> =
    LazyLock::new(|| SupernodeOptions::new(canopy_transfer::listen::any_dual_stack(6346)));

/// Settings of `canopy supernode`. Each has a key of the same name in the
/// `--config` file; flags win over the file.
#[derive(Debug, Clone, clap::Args)]
pub struct SupernodeArgs {
    /// A TOML file with any of the settings below; SIGHUP re-reads it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, for leaves and supernodes alike.
    #[arg(long, default_value_t = DEFAULTS.listen)]
    pub listen: SocketAddr,
    /// Another supernode to connect to, `host[:port]` (port 6346 if left
    /// out; repeatable; `peers` in the file); redialed with backoff if it
    /// goes away. A name stands for every address it has.
    #[arg(long = "peer", value_name = "HOST[:PORT]")]
    pub peers: Vec<HostPort>,
    /// Don't ask the home router (NAT-PMP, UPnP) to forward the listen port
    /// (`port_mapping = false` in the file). With it on, the mapped address
    /// is the one announced, the mapping is renewed, and removed on exit.
    #[arg(long = "no-port-mapping", action = clap::ArgAction::SetFalse)]
    pub port_mapping: bool,
    /// A DNS name listing supernodes to dial when short of peers
    /// (repeatable; `bootstrap` in the file).
    #[arg(long, value_name = "NAME[:PORT]")]
    pub bootstrap: Vec<HostPort>,
    /// Cap on the TTL of incoming queries, 1-7.
    #[arg(long, default_value_t = DEFAULTS.protocol.ttl_cap,
        value_parser = clap::value_parser!(u8).range(1..=7))]
    pub ttl_cap: u8,
    /// Most leaves to accept.
    #[arg(long, default_value_t = DEFAULTS.protocol.max_leaves)]
    pub max_leaves: usize,
    /// Most supernode peers.
    #[arg(long, default_value_t = DEFAULTS.protocol.max_supernode_peers)]
    pub max_peers: usize,
    /// Most files one leaf may publish.
    #[arg(long, default_value_t = DEFAULTS.protocol.max_files_per_leaf)]
    pub max_files_per_leaf: usize,
    /// How leaves' queries travel: `flood` (TTL flooding) or `dynamic`
    /// (probe, then widen until 150 results, 10 for a content id).
    #[arg(long, value_enum, default_value_t = QueryStrategy::Dynamic)]
    pub query_strategy: QueryStrategy,
    /// Queries a leaf may send a second on average; more are dropped.
    #[arg(long, default_value_t = DEFAULTS.protocol.leaf_queries_per_second)]
    pub leaf_queries_per_second: u32,
    /// Queries a leaf may send at once.
    #[arg(long, default_value_t = DEFAULTS.protocol.leaf_query_burst, value_parser = at_least_one::<u32>)]
    pub leaf_query_burst: u32,
    /// Queries a supernode peer may send a second on average; more are
    /// dropped.
    #[arg(long, default_value_t = DEFAULTS.protocol.peer_queries_per_second)]
    pub peer_queries_per_second: u32,
    /// Queries a supernode peer may send at once.
    #[arg(long, default_value_t = DEFAULTS.protocol.peer_query_burst, value_parser = at_least_one::<u32>)]
    pub peer_query_burst: u32,
    /// Bytes the index may take (an estimate per file: record, name and
    /// words); over it, the leaves publishing the most are refused first.
    /// The default is a quarter of this machine's memory (1 GiB where that
    /// can't be read).
    #[arg(long, default_value_t = machine_index_budget().unwrap_or(DEFAULTS.protocol.index_budget_bytes),
        value_parser = at_least_one::<u64>)]
    pub index_budget_bytes: u64,
    /// Words of a file name indexed (1-255); a longer name is found by its
    /// first words only.
    #[arg(long, default_value_t = DEFAULTS.protocol.max_words_per_name,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=255))]
    pub max_words_per_name: usize,
    /// Don't announce this supernode on the LAN by multicast
    /// (`lan_discovery = false` in the file). On, leaves on the LAN find
    /// it with no configuration (unless it listens on loopback only), and
    /// supernodes heard there are dialed as peers.
    #[arg(long = "no-lan-discovery", action = clap::ArgAction::SetFalse)]
    pub lan_discovery: bool,
    /// Supernode peers to keep; beyond --peer, supernodes heard of are
    /// dialed until there are this many.
    #[arg(long, default_value_t = DEFAULTS.peers_wanted)]
    pub peers_wanted: usize,
    /// Leaves one IP address may attach.
    #[arg(long, default_value_t = DEFAULTS.protocol.leaves_per_address.per_ip,
        value_parser = at_least_one::<usize>)]
    pub leaves_per_ip: usize,
    /// Leaves one network (an IPv4 /24, an IPv6 /48) may attach.
    #[arg(long, default_value_t = DEFAULTS.protocol.leaves_per_address.per_prefix,
        value_parser = at_least_one::<usize>)]
    pub leaves_per_network: usize,
    /// Supernode peers that dialed us from one IP address.
    #[arg(long, default_value_t = DEFAULTS.protocol.peers_per_address.per_ip,
        value_parser = at_least_one::<usize>)]
    pub peers_per_ip: usize,
    /// Supernode peers that dialed us from one /24 or /48.
    #[arg(long, default_value_t = DEFAULTS.protocol.peers_per_address.per_prefix,
        value_parser = at_least_one::<usize>)]
    pub peers_per_network: usize,
    /// Handshakes in progress from one IP address; connections beyond are
    /// closed at once.
    #[arg(long, default_value_t = DEFAULTS.protocol.handshakes_per_address.per_ip,
        value_parser = at_least_one::<usize>)]
    pub handshakes_per_ip: usize,
    /// Handshakes in progress from one /24 or /48.
    #[arg(long, default_value_t = DEFAULTS.protocol.handshakes_per_address.per_prefix,
        value_parser = at_least_one::<usize>)]
    pub handshakes_per_network: usize,
    /// Supernode peer slots only peers we dial may take, so inbound floods
    /// can't lock us out of our own network (at most --max-peers).
    #[arg(long, default_value_t = DEFAULTS.protocol.reserved_outbound_peers)]
    pub reserved_outbound_peers: usize,
    /// Relay circuits offered at once (half-open ones included): our own
    /// leaves may then reach a firewalled source that neither a push nor
    /// hole punching reaches through us, the last resort. Each circuit
    /// costs this machine's bandwidth both ways. 0: no relay.
    #[arg(long, default_value_t = DEFAULTS.protocol.relay.slots)]
    pub relay_slots: usize,
    /// Bytes one relay circuit may carry, both ways together (at least
    /// 2 MiB: a whole 1 MiB group must fit); the download goes on over a
    /// new circuit.
    #[arg(long, default_value_t = DEFAULTS.protocol.relay.max_bytes,
        value_parser = clap::value_parser!(u64).range(canopy_core::relay::MIN_MAX_BYTES..))]
    pub relay_max_bytes: u64,
    /// Seconds one relay circuit may last.
    #[arg(long, default_value_t = DEFAULTS.protocol.relay.max_duration.as_secs(),
        value_parser = seconds)]
    pub relay_max_duration: u64,
    /// Bytes a second one relay circuit may carry, both ways together.
    #[arg(long, default_value_t = DEFAULTS.protocol.relay.rate,
        value_parser = at_least_one::<u32>)]
    pub relay_rate: u32,
    /// Relay circuit ends (waiting or open) one IP address may hold.
    #[arg(long, default_value_t = DEFAULTS.protocol.relay.per_ip,
        value_parser = at_least_one::<usize>)]
    pub relay_per_ip: usize,
    /// Addresses (CIDR or single IP, repeatable) the per-address limits do
    /// not apply to; `none` (or `[]` in the file) limits everyone.
    #[arg(long = "limit-exempt", value_name = "CIDR",
        default_values_t = default_exempt().into_iter().map(Exempt::from))]
    pub limit_exempt: Vec<Exempt>,
    /// Where the host cache and the node key are kept [default: $XDG_DATA_HOME/canopy].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How a supernode runs its leaves' queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryStrategy {
    /// Flood with the query's TTL (Gnutella 0.4 style).
    Flood,
    /// Dynamic querying: probe, widen, stop at the target.
    Dynamic,
}

impl SupernodeArgs {
    /// The node's options: the one place a setting meets the node's field.
    /// Checks what one setting says about another.
    pub fn options(&self, origin: Origin<'_>) -> Result<SupernodeOptions, ConfigError> {
        if self.reserved_outbound_peers > self.max_peers {
            return Err(origin.invalid(
                "reserved_outbound_peers",
                format!("must be at most max_peers ({})", self.max_peers),
            ));
        }
        let mut options = SupernodeOptions::new(self.listen);
        // Names are looked up at start (`resolve_peers`).
        options.peers = self
            .peers
            .iter()
            .filter_map(HostPort::socket_addr)
            .collect();
        options.bootstrap.clone_from(&self.bootstrap);
        options.peers_wanted = self.peers_wanted;
        if !self.port_mapping {
            options.port_mapping = None;
        }
        options.lan_discovery = self.lan_discovery;
        let protocol = &mut options.protocol;
        protocol.ttl_cap = self.ttl_cap;
        protocol.max_leaves = self.max_leaves;
        protocol.max_supernode_peers = self.max_peers;
        protocol.max_files_per_leaf = self.max_files_per_leaf;
        protocol.dynamic = match self.query_strategy {
            QueryStrategy::Dynamic => Some(canopy_core::dynamic::DynamicConfig::default()),
            QueryStrategy::Flood => None,
        };
        protocol.leaf_queries_per_second = self.leaf_queries_per_second;
        protocol.leaf_query_burst = self.leaf_query_burst;
        protocol.peer_queries_per_second = self.peer_queries_per_second;
        protocol.peer_query_burst = self.peer_query_burst;
        protocol.index_budget_bytes = self.index_budget_bytes;
        protocol.max_words_per_name = self.max_words_per_name;
        protocol.leaves_per_address =
            AddressLimit::new(self.leaves_per_ip, self.leaves_per_network);
        protocol.peers_per_address = AddressLimit::new(self.peers_per_ip, self.peers_per_network);
        protocol.handshakes_per_address =
            AddressLimit::new(self.handshakes_per_ip, self.handshakes_per_network);
        protocol.reserved_outbound_peers = self.reserved_outbound_peers;
        protocol.relay.slots = self.relay_slots;
        protocol.relay.max_bytes = self.relay_max_bytes;
        protocol.relay.max_duration = std::time::Duration::from_secs(self.relay_max_duration);
        protocol.relay.rate = self.relay_rate;
        protocol.relay.per_ip = self.relay_per_ip;
        protocol.limit_exempt = config::exempt_networks(&self.limit_exempt)
            .map_err(|problem| origin.invalid("limit_exempt", problem))?;
        options.data_dir = self.data_dir.clone().or_else(config::default_data_dir);
        Ok(options)
    }
}

/// Every address of the `--peer` supernodes (names looked up; one that
/// does not resolve is logged and passed over), for
/// [`SupernodeOptions::peers`].
pub async fn resolve_peers(peers: &[HostPort]) -> Vec<std::net::SocketAddr> {
    addr::resolve_all(peers).await
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
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    fn resolve(text: &str) -> Result<SupernodeOptions, String> {
        let path = Path::new("supernode.toml");
        let args = parse::<SupernodeArgs>(text, Some(path)).map_err(|e| e.to_string())?;
        let origin = Origin {
            file: Some(path),
            given: &[],
        };
        args.options(origin).map_err(|e| e.to_string())
    }

    #[test]
    fn no_keys_give_the_nodes_defaults() {
        let options = resolve("").unwrap();
        let core = &*DEFAULTS;
        assert_eq!(options.listen, core.listen);
        assert_eq!(options.protocol.ttl_cap, core.protocol.ttl_cap);
        assert_eq!(options.protocol.max_leaves, core.protocol.max_leaves);
        assert_eq!(
            options.protocol.leaves_per_address,
            core.protocol.leaves_per_address
        );
        assert_eq!(
            options.protocol.handshakes_per_address,
            core.protocol.handshakes_per_address
        );
        assert_eq!(options.protocol.limit_exempt, core.protocol.limit_exempt);
        assert_eq!(options.protocol.relay, core.protocol.relay);
        assert_eq!(
            options.protocol.reserved_outbound_peers,
            core.protocol.reserved_outbound_peers
        );
        assert_eq!(
            options.protocol.index_budget_bytes,
            machine_index_budget().unwrap()
        );
        assert!(options.protocol.dynamic.is_some());
    }

    #[test]
    fn keys_reach_the_options_and_bad_ones_are_named() {
        let options = resolve(
            "max_peers = 9\nleaves_per_network = 3\nquery_strategy = \"flood\"\nlimit_exempt = []\npeers = [\"127.0.0.1:9\"]\n",
        )
        .unwrap();
        assert_eq!(options.protocol.max_supernode_peers, 9);
        assert_eq!(options.protocol.leaves_per_address.per_prefix, 3);
        assert!(options.protocol.dynamic.is_none());
        assert!(options.protocol.limit_exempt.is_empty());
        assert_eq!(options.peers, vec!["127.0.0.1:9".parse().unwrap()]);
        assert!(
            options.port_mapping.is_some(),
            "port mapping is on by default"
        );
        assert!(
            resolve("port_mapping = false\n")
                .unwrap()
                .port_mapping
                .is_none()
        );
        assert!(resolve("").unwrap().lan_discovery, "on by default");
        assert!(!resolve("lan_discovery = false\n").unwrap().lan_discovery);
        for (text, key) in [
            ("ttl_cap = 9\n", "ttl_cap"),
            ("max_words_per_name = 256\n", "max_words_per_name"),
            ("peer_query_burst = 0\n", "peer_query_burst"),
            ("handshakes_per_network = 0\n", "handshakes_per_network"),
            (
                "max_peers = 2\nreserved_outbound_peers = 3\n",
                "reserved_outbound_peers",
            ),
            ("limit_exempt = [\"none\", \"::1\"]\n", "limit_exempt"),
            ("query_strategy = \"gossip\"\n", "query_strategy"),
        ] {
            let error = resolve(text).unwrap_err();
            assert!(
                error.starts_with(&format!("config supernode.toml: key `{key}`: ")),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn the_index_budget_is_a_quarter_of_the_machine() {
        let budget = machine_index_budget().expect("Linux has /proc/meminfo");
        assert!(budget >= 64 << 20);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(meminfo.contains(&format!("{} kB", budget * 4 / 1024)) || budget == 64 << 20);
    }
}
