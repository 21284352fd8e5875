//! `canopy leaf`: shares folders through a supernode until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use canopy_node::leaf::{self, LeafOptions};

/// Arguments of `canopy leaf`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The supernode to join.
    #[arg(long)]
    supernode: SocketAddr,
    /// A folder to share (repeatable). Shared folders are only ever read.
    #[arg(long = "share", required = true)]
    shares: Vec<PathBuf>,
    /// Where this leaf serves its files over HTTP.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Announce this address instead of the listening one (a port forward).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Accept no connections: serve downloaders only by push.
    #[arg(long, conflicts_with = "advertise")]
    firewalled: bool,
    /// Uploads at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = canopy_transfer::server::DEFAULT_UPLOAD_SLOTS)]
    upload_slots: usize,
    /// Where the hash cache is kept [default: the platform's data directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds between rescans of the shared folders.
    #[arg(long, default_value_t = 60)]
    rescan: u64,
    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// The default data directory: `$XDG_DATA_HOME/canopy` on Linux.
pub(crate) fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("canopy"))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let hashing = crate::output::progress(
        "{spinner} hashing shared files: {bytes} ({bytes_per_sec})",
        None,
    );
    let bar = hashing.clone();
    let mut options = LeafOptions::new(args.supernode);
    options.listen = Some(args.listen);
    options.advertise = args.advertise;
    options.firewalled = args.firewalled;
    options.upload_slots = args.upload_slots;
    options.shares = args.shares;
    options.data_dir = args.data_dir.or_else(default_data_dir);
    options.reconnect = true;
    options.rescan_interval = Some(Duration::from_secs(args.rescan.max(1)));
    options.progress = Some(Arc::new(move |bytes| bar.inc(bytes)));
    let leaf = leaf::start(options).await.context("starting the leaf")?;
    hashing.finish_and_clear();
    let status = leaf.status();
    let listen = match leaf.listen_addr() {
        Some(addr) => args.advertise.unwrap_or(addr).to_string(),
        None => String::from("none (firewalled)"),
    };
    if args.json {
        let line = serde_json::json!({
            "event": "sharing",
            "role": "leaf",
            "node_id": leaf.node_id().to_hex(),
            "listen": listen,
            "files": status.shared_files,
            "supernode": args.supernode.to_string(),
        });
        say!("{line}");
    } else {
        say!(
            "leaf {} sharing {} files, listening on {listen}, joining {}",
            leaf.node_id(),
            status.shared_files,
            args.supernode
        );
    }
    crate::shutdown::signal().await;
    tracing::info!("shutting down");
    leaf.shutdown().await;
    Ok(())
}
