//! `canopy leaf`: a leaf in the overlay, sharing folders (or none: a
//! download-only leaf), until Ctrl-C or SIGTERM; SIGHUP re-reads its
//! config file and applies the live settings and the share list at once.

use std::sync::Arc;

use anyhow::Context as _;
use canopy_cli::config::{ConfigError, Origin};
use canopy_cli::settings::leaf::{LIVE_KEYS, LeafArgs, LeafSettings, LiveChanges, LiveConfig};
use canopy_daemon::{DaemonHandle, DaemonOptions};
use canopy_node::metrics;
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
    let election = resolved.election.take().map(|election| {
        let (signals, receiver) = canopy_node::election::ElectionSignals::channel();
        options.election = Some(signals);
        (election, receiver)
    });
    let (supernodes, advertise) = (options.supernodes.clone(), options.advertise);
    let daemon = canopy_daemon::start(DaemonOptions {
        leaf: options,
        control: resolved.control,
        downloads_dir: resolved.downloads_dir.clone(),
        share_downloads: resolved.share_downloads,
        settings: resolved.settings,
    })
    .await
    .context("starting the leaf")?;
    hashing.finish_and_clear();
    let leaf = daemon.leaf();
    // Kept so the election runs as long as the leaf (it stops with it).
    let election_tasks = TaskTracker::new();
    let elected = election.map(|(options, receiver)| {
        canopy_node::election::start(leaf, options, receiver, &election_tasks)
    });
    if let Some(elected) = &elected {
        election_tasks.spawn(say_mode_switches(elected.watch(), resolved.json));
    }
    let metrics = match resolved.metrics {
        Some(addr) => Some(
            metrics::serve(
                addr,
                metrics::leaf_metrics(leaf),
                leaf.shutdown_token(),
                &TaskTracker::new(),
            )
            .await?,
        ),
        None => None,
    };
    let status = leaf.status();
    // What others reach: the advertised address, else the one mapped on
    // the home router, else the bound one.
    let listen = match (leaf.listen_addr(), leaf.announced_addr()) {
        (Some(_), Some(announced)) => announced.to_string(),
        (Some(addr), None) => advertise.unwrap_or(addr).to_string(),
        (None, _) => String::from("none (firewalled)"),
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
            "bound": leaf.listen_addr().map(|a| a.to_string()),
            "files": status.shared_files,
            "supernodes": supernodes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "metrics": metrics.map(|a| a.to_string()),
            "control": daemon.control_url(),
            "ui": daemon.ui_url(),
            "downloads": resolved.downloads_dir.display().to_string(),
        });
        say!("{line}");
    } else if settings.live.shares.is_empty() {
        say!(
            "leaf {} (download only, sharing nothing), listening on {listen}, joining {joining}",
            leaf.node_id(),
        );
    } else {
        say!(
            "leaf {} sharing {} file{}, listening on {listen}, joining {joining}",
            leaf.node_id(),
            status.shared_files,
            if status.shared_files == 1 { "" } else { "s" },
        );
    }
    if !resolved.json {
        say!("web UI: {}", daemon.ui_url());
        say!("downloads go to {}", resolved.downloads_dir.display());
    }
    // The live settings in force (the daemon applied them at start, with
    // what the API changed, saved in settings.json, over them).
    let mut current = settings.live;
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
        // A Ctrl-C or SIGTERM while a new share is being hashed stops the
        // leaf at once; the reload is abandoned with it.
        let changes = current.changes(&live);
        let applying = apply_live(&daemon, &changes);
        tokio::pin!(applying);
        let settings_applied = loop {
            tokio::select! {
                applied = &mut applying => break Some(applied),
                signal = signals.next() => match signal {
                    Signal::Stop => break None,
                    Signal::Reload => tracing::info!("a reload is being applied; this one is ignored"),
                },
            }
        };
        let Some(settings_applied) = settings_applied else {
            break;
        };
        if settings_applied {
            current = live;
        } else {
            // Tried again at the next reload.
            current.shares = live.shares;
        }
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
    daemon.shutdown().await;
    // An elected supernode steps down with the leaf.
    election_tasks.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), election_tasks.wait()).await;
    Ok(())
}

/// Applies what a reload changed to the running leaf: the live settings
/// (rates, slots, downloads at once: as `PATCH /api/settings` would), and
/// the shared folders (added ones are scanned and published at once,
/// removed ones withdrawn). What can't be applied is logged, the rest goes
/// on. False if the settings were refused.
async fn apply_live(daemon: &DaemonHandle, changes: &LiveChanges) -> bool {
    if changes.is_empty() {
        return true;
    }
    tracing::info!(
        settings = ?changes.patch,
        shares_added = ?changes.added,
        shares_removed = ?changes.removed,
        "applying the reloaded live settings"
    );
    let settings_applied = match daemon.update_settings(changes.patch).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot apply the reloaded settings");
            false
        }
    };
    let leaf = daemon.leaf();
    for folder in &changes.removed {
        if let Err(error) = leaf.remove_share(folder.clone()).await {
            tracing::warn!(folder = %folder.display(), %error, "cannot stop sharing");
        }
    }
    for folder in &changes.added {
        if let Err(error) = leaf.add_share(folder.clone()).await {
            tracing::warn!(folder = %folder.display(), %error, "cannot share");
        }
    }
    settings_applied
}

/// Prints each promotion to supernode and each step down, as a line (a
/// JSON event with `--json`), while the election runs.
async fn say_mode_switches(
    mut state: tokio::sync::watch::Receiver<canopy_node::election::ElectionState>,
    json: bool,
) -> std::io::Result<()> {
    let mut was = state.borrow_and_update().supernode;
    while state.changed().await.is_ok() {
        let now = state.borrow_and_update().supernode;
        if now == was {
            continue;
        }
        match (now, json) {
            (Some(addr), false) => {
                say!("promoted to supernode (the network needed one), listening on {addr}");
            }
            (None, false) => say!("stepped down as supernode; its leaves were handed over"),
            (addr, true) => {
                let line = serde_json::json!({
                    "event": if addr.is_some() { "promoted" } else { "stepped_down" },
                    "role": "supernode",
                    "addr": addr.map(|a| a.to_string()),
                });
                say!("{line}");
            }
        }
        was = now;
    }
    Ok(())
}
