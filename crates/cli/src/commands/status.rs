//! `canopy status`: what the running leaf is doing: its supernodes,
//! whether others can reach it (and its NAT), what it hears on the LAN,
//! shares, and transfer totals, and the URL that opens its web UI.

use std::net::SocketAddr;

use canopy_daemon::model::Status;
use indicatif::HumanBytes;

use super::running::LeafArgs;
use super::show;

/// Arguments of `canopy status`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("json", |json| json.help(
    "Print the leaf's status as one JSON document (the API's `Status`)"
)))]
pub(crate) struct Args {
    #[command(flatten)]
    leaf: LeafArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.leaf.leaf().await?;
    let status = client.status().await?;
    if args.leaf.json {
        say!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    say!("{}", text(&status, client.url(), &client.ui_url()));
    Ok(())
}

/// The status as lines of `label  value`.
fn text(status: &Status, url: &str, ui_url: &str) -> String {
    let listening = match &status.listen {
        Some(listen) => match seen_elsewhere(listen, status.observed_addr.as_deref()) {
            Some(seen) => format!("{listen} (supernodes see us as {seen})"),
            None => listen.clone(),
        },
        None => "no direct address (firewalled: reached by push)".to_owned(),
    };
    let supernodes = if status.supernodes.is_empty() {
        "none yet".to_owned()
    } else {
        status.supernodes.join(", ")
    };
    let totals = &status.totals;
    let lines = [
        (
            "leaf",
            format!(
                "{}, node {}",
                status.version,
                show::short_id(&status.node_id)
            ),
        ),
        ("control", url.to_owned()),
        // The log-in URL: it carries the token, and sets the UI's cookie.
        ("web UI", ui_url.to_owned()),
        ("listening", listening),
        ("reachable", reachable(status)),
        ("NAT", nat(status)),
        ("supernodes", supernodes),
        ("on the LAN", lan(status)),
        (
            "shared",
            format!(
                "{}, {}",
                show::count(status.shared_files, "file", "files"),
                HumanBytes(status.shared_bytes)
            ),
        ),
        (
            "downloads",
            format!(
                "{} active, {} queued; {} received, {}",
                totals.downloads_active,
                totals.downloads_queued,
                HumanBytes(totals.downloaded_bytes),
                rate_now(totals.download_rate)
            ),
        ),
        ("saving to", status.downloads_dir.clone()),
        (
            "uploads",
            format!(
                "{} active; {} sent, {}",
                totals.uploads_active,
                HumanBytes(totals.uploaded_bytes),
                rate_now(totals.upload_rate)
            ),
        ),
    ];
    lines
        .iter()
        .map(|(label, value)| format!("{label:<11} {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether others can connect to us, and at which public address:
/// "yes, at 203.0.113.7 (confirmed by two supernodes)".
fn reachable(status: &Status) -> String {
    let reach = &status.reachability;
    let verdict = match reach.reachable.as_str() {
        "yes" => "yes: a supernode connected back to us",
        "no" => "no: others reach us by push",
        _ => "not known yet",
    };
    let public: Vec<String> = reach
        .public_addrs
        .iter()
        .map(|addr| {
            let word = if addr.confirmed {
                "confirmed by two supernodes"
            } else {
                "one supernode's word"
            };
            format!("{} ({word})", addr.ip)
        })
        .collect();
    if public.is_empty() {
        verdict.to_owned()
    } else {
        format!("{verdict}; public address {}", public.join(", "))
    }
}

/// Our NAT's kind in words.
fn nat(status: &Status) -> String {
    match status.reachability.nat.as_str() {
        "none" => "none (supernodes see our own address)",
        "endpoint_independent" => "endpoint-independent (one external port for every peer)",
        "endpoint_independent_port_preserving" => {
            "endpoint-independent, keeps our port (one external port for every peer)"
        }
        "endpoint_dependent" => "endpoint-dependent (symmetric: another port for each peer)",
        _ => "not known yet (needs two supernodes)",
    }
    .to_owned()
}

/// What LAN discovery hears: "none heard", or "2 supernodes (A, B), 1 leaf".
fn lan(status: &Status) -> String {
    let of_role = |role: &str| -> Vec<&str> {
        status
            .lan_peers
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.addr.as_str())
            .collect()
    };
    let (supernodes, leaves) = (of_role("supernode"), of_role("leaf"));
    let mut parts = Vec::new();
    if !supernodes.is_empty() {
        parts.push(format!(
            "{} ({})",
            show::count(supernodes.len(), "supernode", "supernodes"),
            supernodes.join(", ")
        ));
    }
    if !leaves.is_empty() {
        parts.push(show::count(leaves.len(), "leaf", "leaves"));
    }
    if parts.is_empty() {
        "none heard".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The address supernodes see us at, if its IP is not the one we listen
/// on (a NAT); the port they see is the one we dialled out from, not news.
fn seen_elsewhere(listen: &str, observed: Option<&str>) -> Option<String> {
    let ip_of = |addr: &str| {
        addr.parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| addr.to_owned())
    };
    let seen = ip_of(observed?);
    (seen != ip_of(listen)).then_some(seen)
}

/// "1.00 MiB/s now", "idle".
fn rate_now(rate: u64) -> String {
    if rate == 0 {
        "idle".to_owned()
    } else {
        format!("{} now", show::rate(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lan_line_counts_what_is_heard() {
        let mut status = Status::default();
        assert_eq!(lan(&status), "none heard");
        let neighbour = |role: &str, addr: &str| canopy_daemon::model::LanNeighbour {
            node_id: "ab".repeat(16),
            role: role.to_owned(),
            addr: addr.to_owned(),
        };
        status.lan_peers = vec![
            neighbour("supernode", "192.168.1.2:6346"),
            neighbour("leaf", "192.168.1.3:40000"),
            neighbour("leaf", "192.168.1.4"),
        ];
        assert_eq!(lan(&status), "1 supernode (192.168.1.2:6346), 2 leaves");
        let text = text(
            &status,
            "http://127.0.0.1:6349",
            "http://127.0.0.1:6349/?token=x",
        );
        assert!(text.contains("\non the LAN  1 supernode"), "{text}");
    }

    #[test]
    fn the_reachability_lines_say_what_supernodes_found() {
        let mut status = Status::default();
        assert_eq!(reachable(&status), "not known yet");
        assert_eq!(nat(&status), "not known yet (needs two supernodes)");
        status.reachability.reachable = "yes".into();
        status.reachability.nat = "endpoint_dependent".into();
        status.reachability.public_addrs = vec![canopy_daemon::model::PublicAddr {
            ip: "203.0.113.7".into(),
            confirmed: false,
        }];
        assert_eq!(
            reachable(&status),
            "yes: a supernode connected back to us; public address 203.0.113.7 (one supernode's word)"
        );
        let text = text(&status, "http://127.0.0.1:6349", "http://x");
        assert!(text.contains("\nNAT         endpoint-dependent"), "{text}");
    }

    #[test]
    fn only_another_ip_is_news() {
        assert_eq!(
            seen_elsewhere("127.0.0.1:4000", Some("127.0.0.1:50802")),
            None
        );
        assert_eq!(
            seen_elsewhere("192.168.1.5:4000", Some("203.0.113.7:61000")),
            Some("203.0.113.7".to_owned())
        );
        assert_eq!(seen_elsewhere("192.168.1.5:4000", None), None);
    }
}
