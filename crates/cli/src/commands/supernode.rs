//! `canopy supernode`: runs a supernode until Ctrl-C or SIGTERM; SIGHUP
//! re-reads its config file and says which changes need a restart.

use std::net::SocketAddr;

use canopy_cli::config::{ConfigError, Origin};
use canopy_cli::settings::supernode::SupernodeArgs;
use canopy_node::metrics;
use canopy_node::supernode::{self, SupernodeOptions};
use tokio_util::task::TaskTracker;

use crate::reload::Reloader;
use crate::shutdown::{Signal, Signals};

/// Everything resolved: ready to run.
pub(crate) struct Settings {
    options: SupernodeOptions,
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
        metrics: args.metrics,
        json: args.json,
        reload,
    })
}

pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut signals = Signals::new();
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
    let mut reload = settings.reload;
    while signals.next().await == Signal::Reload {
        // Nothing of a supernode changes live yet: check the file, say
        // what changed, keep running with what is in force.
        let Some(path) = reload.path().cloned() else {
            tracing::info!("SIGHUP: no --config file to re-read");
            continue;
        };
        let outcome = reload.reread().and_then(|reloaded| {
            reloaded
                .args
                .options(reload.origin())
                .map_err(|e| e.to_string())?;
            Ok(reloaded.changed)
        });
        match outcome {
            Ok(changed) => {
                tracing::info!(
                    config = %path.display(),
                    restart_needed = ?changed,
                    "reloaded the config file; these keys take effect at the next start"
                );
                if settings.json {
                    let line = serde_json::json!({
                        "event": "reloaded",
                        "applied": [],
                        "restart_needed": changed,
                    });
                    say!("{line}");
                }
            }
            Err(error) => tracing::warn!(%error, "config not reloaded; the settings in force stay"),
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
