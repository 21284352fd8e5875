//! `canopy leaf`: shares folders through a supernode until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use canopy_node::leaf::{self, LeafOptions};
use canopy_node::metrics;
use canopy_transfer::server::DEFAULT_UPLOAD_SLOTS;
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
        options.upload_slots = pick(self.upload_slots, file.upload_slots, DEFAULT_UPLOAD_SLOTS);
        if options.upload_slots == 0 {
            return Err(ConfigError::invalid(
                path,
                "upload_slots",
                "must be at least 1",
            ));
        }
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
