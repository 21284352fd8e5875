//! `canopy leaf`: a leaf in the overlay, sharing folders (or none: a
//! download-only leaf), until Ctrl-C or SIGTERM; SIGHUP re-reads its
//! config file and hands the live settings and the share list on.

use std::sync::Arc;

use anyhow::Context as _;
use canopy_cli::config::{ConfigError, Origin};
use canopy_cli::settings::leaf::{LIVE_KEYS, LeafArgs, LeafSettings, LiveConfig};
use canopy_node::leaf;
use canopy_node::metrics;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::reload::{Outcome, Reloader, announce, split_live};
use crate::shutdown::{Signal, Signals};

/// Everything resolved: ready to run.
pub(crate) struct Settings {
    resolved: LeafSettings,
    live: LiveConfig,
    reload: Reloader<LeafArgs>,
}

/// Resolves the settings; `reload` re-reads them on SIGHUP.
pub(crate) fn resolve(
    args: &LeafArgs,
    origin: Origin<'_>,
    reload: Reloader<LeafArgs>,
) -> Result<Settings, ConfigError> {
    let resolved = args.settings(origin)?;
    args.check_somewhere_to_go(&resolved, origin)?;
    Ok(Settings {
        resolved,
        live: args.live(),
        reload,
    })
}

pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut signals = Signals::new();
    let hashing = crate::output::progress(
        "{spinner} hashing shared files: {bytes} ({bytes_per_sec})",
        None,
    );
    let bar = hashing.clone();
    let mut resolved = settings.resolved;
    resolved.resolve_supernodes().await;
    let mut options = resolved.leaf;
    options.progress = Some(Arc::new(move |bytes| bar.inc(bytes)));
    let (supernodes, advertise) = (options.supernodes.clone(), options.advertise);
    let leaf = leaf::start(options).await.context("starting the leaf")?;
    hashing.finish_and_clear();
    let metrics = match resolved.metrics {
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
    let joining = if supernodes.is_empty() {
        String::from("supernodes from the host cache")
    } else {
        supernodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if resolved.json {
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
    } else if settings.live.shares.is_empty() {
        say!(
            "leaf {} (download only, sharing nothing), listening on {listen}, joining {joining}",
            leaf.node_id(),
        );
    } else {
        say!(
            "leaf {} sharing {} files, listening on {listen}, joining {joining}",
            leaf.node_id(),
            status.shared_files,
        );
    }
    // What SIGHUP changes live. The daemon follows this channel: a
    // settings patch and share folders added or removed
    // (`LiveConfig::changes`).
    let (live_tx, _live_rx) = watch::channel(settings.live);
    let mut reload = settings.reload;
    while signals.next().await == Signal::Reload {
        if reload.path().is_none() {
            announce(resolved.json, &Outcome::NoFile)?;
            continue;
        }
        let reread = reload.reread(|args, origin| args.settings(origin).map(drop));
        let (live, changed) = match reread {
            Ok(reloaded) => (reloaded.args.live(), reloaded.changed),
            Err(error) => {
                announce(resolved.json, &Outcome::Failed(error))?;
                continue;
            }
        };
        let changes = live_tx.borrow().changes(&live);
        tracing::info!(
            settings = ?changes.patch,
            shares_added = ?changes.added,
            shares_removed = ?changes.removed,
            "live settings after the reload"
        );
        live_tx.send_replace(live);
        let (applied, restart_needed) = split_live(&changed, LIVE_KEYS);
        announce(
            resolved.json,
            &Outcome::Reloaded {
                applied,
                restart_needed,
            },
        )?;
    }
    tracing::info!("shutting down");
    leaf.shutdown().await;
    Ok(())
}
