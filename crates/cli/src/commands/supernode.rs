//! `canopy supernode`: runs a supernode until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use canopy_node::supernode::{self, SupernodeOptions};

/// Arguments of `canopy supernode`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on, for leaves and supernodes alike.
    #[arg(long, default_value = "0.0.0.0:6346")]
    listen: SocketAddr,
    /// Another supernode to connect to (repeatable); redialed if it goes away.
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Cap on the TTL of incoming queries (1-7).
    #[arg(long, default_value_t = canopy_core::supernode::DEFAULT_TTL_CAP,
          value_parser = clap::value_parser!(u8).range(1..=7))]
    ttl_cap: u8,
    /// Most leaves to accept.
    #[arg(long, default_value_t = 1000)]
    max_leaves: usize,
    /// Most supernode peers.
    #[arg(long, default_value_t = 32)]
    max_peers: usize,
    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut options = SupernodeOptions::new(args.listen);
    options.peers = args.peers;
    options.ttl_cap = args.ttl_cap;
    options.max_leaves = args.max_leaves;
    options.max_supernode_peers = args.max_peers;
    let node = supernode::start(options).await?;
    if args.json {
        let line = serde_json::json!({
            "event": "listening",
            "role": "supernode",
            "addr": node.local_addr().to_string(),
            "node_id": node.node_id().to_hex(),
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
