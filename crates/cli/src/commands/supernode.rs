//! `canopy supernode`: runs a supernode until Ctrl-C or SIGTERM; SIGHUP
//! re-reads its config file and says which changes need a restart.

use std::net::SocketAddr;

use canopy_cli::config::{ConfigError, Origin};
use canopy_cli::settings::supernode::{SupernodeArgs, resolve_peers};
use canopy_node::addr::HostPort;
use canopy_node::metrics;
use canopy_node::supernode::{self, SupernodeOptions};
use tokio_util::task::TaskTracker;

use crate::reload::{Outcome, Reloader, announce};
use crate::shutdown::{Signal, Signals};

/// Everything resolved: ready to run.
pub(crate) struct Settings {
    options: SupernodeOptions,
    peers: Vec<HostPort>,
    metrics: Option<SocketAddr>,
    json: bool,
    reload: Reloader<SupernodeArgs>,
}

/// Resolves the settings; `reload` re-reads them on SIGHUP.
pub(crate) fn resolve(
    args: &SupernodeArgs,
    origin: Origin<'_>,
    reload: Reloader<SupernodeArgs>,
) -> Result<Settings, ConfigError> {
    Ok(Settings {
        options: args.options(origin)?,
        peers: args.peers.clone(),
        metrics: args.metrics,
        json: args.json,
        reload,
    })
}

pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut signals = Signals::new();
    let mut options = settings.options;
    options.peers = resolve_peers(&settings.peers).await;
    let node = supernode::start(options).await?;
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
            "announced": node.announced_addr().to_string(),
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
        if node.announced_addr() != node.local_addr() {
            say!(
                "announced as {} (mapped on the router)",
                node.announced_addr()
            );
        }
    }
    let mut reload = settings.reload;
    while signals.next().await == Signal::Reload {
        // Nothing of a supernode changes live yet: check the file, say
        // what changed, keep running with what is in force.
        let outcome = if reload.path().is_none() {
            Outcome::NoFile
        } else {
            match reload.reread(|args, origin| args.options(origin).map(drop)) {
                Ok(reloaded) => Outcome::Reloaded {
                    applied: Vec::new(),
                    restart_needed: reloaded.changed,
                },
                Err(error) => Outcome::Failed(error),
            }
        };
        announce(settings.json, &outcome)?;
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
