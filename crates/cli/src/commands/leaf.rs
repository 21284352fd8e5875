//! `canopy leaf`: shares folders through a supernode until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use canopy_core::addr_limits::{AddressLimit, IpNet};
use canopy_node::leaf::{self, LeafOptions};
use canopy_node::metrics;
use canopy_transfer::server::{DEFAULT_UPLOAD_SLOTS, ServerConfig};
use tokio_util::task::TaskTracker;

use crate::config::{self, ConfigError, LeafFile as File, LogFormat, pick};

/// Arguments of `canopy leaf`. Each has a key of the same name in the
/// `--config` file (dashes as underscores); flags win over the file.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A TOML file with any of the settings below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A supernode to join (repeatable; `supernodes` in the file; at least
    /// one). More are learned from supernodes and kept in the host cache.
    #[arg(long = "supernode")]
    supernodes: Vec<SocketAddr>,
    /// How many supernodes to stay connected to and publish to [default: 2].
    #[arg(long)]
    supernodes_wanted: Option<usize>,
    /// A folder to share (repeatable; `shares` in the file; at least one).
    /// Shared folders are only ever read.
    #[arg(long = "share")]
    shares: Vec<PathBuf>,
    /// Where this leaf serves its files over HTTP [default: 0.0.0.0:0].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Announce this address instead of the listening one (a port forward).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Accept no connections: serve downloaders only by push.
    #[arg(long, conflicts_with = "advertise")]
    firewalled: bool,
    /// Uploads at once; more get 503 with Retry-After [default: 4].
    #[arg(long)]
    upload_slots: Option<usize>,
    /// Upload slots one IP address may hold (one /24 or /48 network as
    /// much) [default: 2].
    #[arg(long)]
    uploads_per_ip: Option<usize>,
    /// HTTP connections one IP address may hold (a /24 or /48 network four
    /// times as many); more are closed at once [default: 8].
    #[arg(long)]
    http_connections_per_ip: Option<usize>,
    /// HTTP connections held at once from everyone [default: 256].
    #[arg(long)]
    max_http_connections: Option<usize>,
    /// Seconds a connection has to send a complete request head, on
    /// arrival and between keep-alive requests [default: 10].
    #[arg(long)]
    http_header_timeout: Option<u64>,
    /// Seconds an upload may make no progress (the downloader not reading)
    /// before it is cut and its slot freed [default: 30].
    #[arg(long)]
    upload_stall_timeout: Option<u64>,
    /// Slowest upload kept, in bytes a second over 30 s [default: 1024].
    #[arg(long)]
    min_upload_rate: Option<u64>,
    /// Networks not limited per address (repeatable; `limit_exempt` in the
    /// file) [default: 127.0.0.0/8 and ::1].
    #[arg(long = "limit-exempt")]
    limit_exempt: Vec<IpNet>,
    /// Where the hash cache is kept [default: $XDG_DATA_HOME/canopy].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds between rescans of the shared folders [default: 60].
    #[arg(long)]
    rescan: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// A count of at least 1, from the flag, the file or the default.
fn at_least_one(
    flag: Option<usize>,
    file: Option<usize>,
    default: usize,
    path: Option<&std::path::Path>,
    key: &str,
) -> Result<usize, ConfigError> {
    match pick(flag, file, default) {
        0 => Err(ConfigError::invalid(path, key, "must be at least 1")),
        n => Ok(n),
    }
}

/// Seconds (at least 1) from the flag, the file or the default.
fn seconds(
    flag: Option<u64>,
    file: Option<u64>,
    default: u64,
    path: Option<&std::path::Path>,
    key: &str,
) -> Result<Duration, ConfigError> {
    match pick(flag, file, default) {
        0 => Err(ConfigError::invalid(path, key, "must be at least 1 second")),
        n => Ok(Duration::from_secs(n)),
    }
}

/// The file server's limits.
fn server_config(
    args: &Args,
    file: &File,
    path: Option<&std::path::Path>,
) -> Result<ServerConfig, ConfigError> {
    let defaults = ServerConfig::default();
    let upload_slots = at_least_one(
        args.upload_slots,
        file.upload_slots,
        DEFAULT_UPLOAD_SLOTS,
        path,
        "upload_slots",
    )?;
    let uploads_per_ip = at_least_one(
        args.uploads_per_ip,
        file.uploads_per_ip,
        defaults.uploads_per_address.per_ip,
        path,
        "uploads_per_ip",
    )?;
    let connections_per_ip = at_least_one(
        args.http_connections_per_ip,
        file.http_connections_per_ip,
        defaults.connections_per_address.per_ip,
        path,
        "http_connections_per_ip",
    )?;
    let exempt = if !args.limit_exempt.is_empty() {
        args.limit_exempt.clone()
    } else if let Some(nets) = &file.limit_exempt {
        nets.iter()
            .map(|net| {
                net.parse::<IpNet>().map_err(|_| {
                    ConfigError::invalid(
                        path,
                        "limit_exempt",
                        format!("{net:?} is not a network such as 127.0.0.0/8"),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        defaults.exempt.clone()
    };
    Ok(ServerConfig {
        upload_slots,
        max_connections: at_least_one(
            args.max_http_connections,
            file.max_http_connections,
            defaults.max_connections,
            path,
            "max_http_connections",
        )?,
        connections_per_address: AddressLimit::new(
            connections_per_ip,
            connections_per_ip.saturating_mul(4),
        ),
        uploads_per_address: AddressLimit::new(uploads_per_ip, uploads_per_ip),
        exempt,
        header_timeout: seconds(
            args.http_header_timeout,
            file.http_header_timeout,
            defaults.header_timeout.as_secs(),
            path,
            "http_header_timeout",
        )?,
        write_timeout: seconds(
            args.upload_stall_timeout,
            file.upload_stall_timeout,
            defaults.write_timeout.as_secs(),
            path,
            "upload_stall_timeout",
        )?,
        min_upload_rate: pick(
            args.min_upload_rate,
            file.min_upload_rate,
            defaults.min_upload_rate,
        ),
        rate_window: defaults.rate_window,
    })
}

/// Everything resolved: ready to run.
#[derive(Debug)]
pub(crate) struct Settings {
    options: LeafOptions,
    metrics: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    json: bool,
}

impl Args {
    /// Merges flags, the config file and defaults.
    pub(crate) fn resolve(self, log_format: Option<LogFormat>) -> Result<Settings, ConfigError> {
        let path = self.config.as_deref();
        let file: File = config::load(path)?;
        let server = server_config(&self, &file, path)?;
        let supernodes = if self.supernodes.is_empty() {
            file.supernodes.unwrap_or_default()
        } else {
            self.supernodes
        };
        let Some(first) = supernodes.first().copied() else {
            return Err(ConfigError::invalid(
                path,
                "supernodes",
                "at least one supernode is required (--supernode)",
            ));
        };
        let shares = if self.shares.is_empty() {
            file.shares.unwrap_or_default()
        } else {
            self.shares
        };
        if shares.is_empty() {
            return Err(ConfigError::invalid(
                path,
                "shares",
                "at least one folder to share is required (--share)",
            ));
        }
        let mut options = LeafOptions::new(first);
        options.supernodes = supernodes;
        options.supernodes_wanted = pick(self.supernodes_wanted, file.supernodes_wanted, 2);
        if options.supernodes_wanted == 0 {
            return Err(ConfigError::invalid(
                path,
                "supernodes_wanted",
                "must be at least 1",
            ));
        }
        options.listen = Some(pick(
            self.listen,
            file.listen,
            SocketAddr::from(([0, 0, 0, 0], 0)),
        ));
        options.advertise = self.advertise.or(file.advertise);
        options.firewalled = self.firewalled || file.firewalled.unwrap_or(false);
        if options.firewalled && options.advertise.is_some() {
            return Err(ConfigError::invalid(
                path,
                "advertise",
                "a firewalled leaf announces no address",
            ));
        }
        options.server = server;
        options.shares = shares;
        options.data_dir = self
            .data_dir
            .or(file.data_dir)
            .or_else(config::default_data_dir);
        options.reconnect = true;
        let rescan = pick(self.rescan, file.rescan, 60);
        if rescan == 0 {
            return Err(ConfigError::invalid(
                path,
                "rescan",
                "must be at least 1 second",
            ));
        }
        options.rescan_interval = Some(Duration::from_secs(rescan));
        Ok(Settings {
            options,
            metrics: self.metrics.or(file.metrics),
            log_format: pick(log_format, file.log_format, LogFormat::Text),
            json: self.json || file.json.unwrap_or(false),
        })
    }
}

pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let hashing = crate::output::progress(
        "{spinner} hashing shared files: {bytes} ({bytes_per_sec})",
        None,
    );
    let bar = hashing.clone();
    let mut options = settings.options;
    options.progress = Some(Arc::new(move |bytes| bar.inc(bytes)));
    let (supernodes, advertise) = (options.supernodes.clone(), options.advertise);
    let leaf = leaf::start(options).await.context("starting the leaf")?;
    hashing.finish_and_clear();
    let metrics = match settings.metrics {
        Some(addr) => Some(
            metrics::serve(
                addr,
                metrics::leaf_metrics(&leaf),
                leaf.shutdown_token(),
                &TaskTracker::new(),
            )
            .await?,
        ),
        None => None,
    };
    let status = leaf.status();
    let listen = match leaf.listen_addr() {
        Some(addr) => advertise.unwrap_or(addr).to_string(),
        None => String::from("none (firewalled)"),
    };
    if settings.json {
        let line = serde_json::json!({
            "event": "sharing",
            "role": "leaf",
            "node_id": leaf.node_id().to_hex(),
            "listen": listen,
            "files": status.shared_files,
            "supernodes": supernodes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "metrics": metrics.map(|a| a.to_string()),
        });
        say!("{line}");
    } else {
        say!(
            "leaf {} sharing {} files, listening on {listen}, joining {}",
            leaf.node_id(),
            status.shared_files,
            supernodes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    crate::shutdown::signal().await;
    tracing::info!("shutting down");
    leaf.shutdown().await;
    Ok(())
}
