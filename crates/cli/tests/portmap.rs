//! Port mapping against a real home router: Debian's `miniupnpd`
//! (nftables backend) in a router namespace doing nftables NAT between a
//! `home` namespace (10.77.0.0/24) and a `wan` namespace (93.184.0.0/24).
//! A leaf in `home` maps its port (NAT-PMP, then, with NAT-PMP switched
//! off on the router, UPnP IGD), announces the router's WAN address, is
//! found at it by a search from `wan` and serves a file there through the
//! mapping; after SIGTERM the mapping is gone from miniupnpd's nftables
//! chain and the port no longer answers. Needs root, `ip`, `nft`,
//! `miniupnpd` and `curl` (.ci/run installs them): fails loudly without.
//! The namespaces are built here and removed whatever happens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::netns::{
    self, Miniupnpd, Net, exec_in, leaf_args, require_tools, search_in, wait_for,
};

const PATIENCE: Duration = Duration::from_secs(30);
const HOME_IP: &str = "10.77.0.2";
const ROUTER_WAN: &str = "93.184.0.1";
const WAN_IP: &str = "93.184.0.2";
const SUPERNODE_PORT: u16 = 6346;

/// Builds home — router (NAT, miniupnpd's nftables chains) — wan.
fn up() -> Net {
    let net = Net::one_home("cpm", "10.77.0", ROUTER_WAN, WAN_IP);
    let router = net.ns("router");
    // miniupnpd's nftables backend adds its rules to its chains; the home
    // network leaves masqueraded as the router's WAN address.
    net.nft(
        &router,
        &format!(
            "table inet filter {{\n\
             chain forward {{ type filter hook forward priority 0; policy drop;\n\
               ct state established,related accept; iifname \"lan0\" accept; jump miniupnpd; }}\n\
             chain prerouting {{ type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }}\n\
             chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
               jump postrouting_miniupnpd; oifname \"wan0\" masquerade; }}\n\
             {}\n\
             }}\n",
            netns::MINIUPNPD_CHAINS
        ),
    );
    net
}

/// miniupnpd's port forwards (its DNAT chain).
fn forwards_of(net: &Net) -> String {
    let out = netns::run(
        "ip",
        &[
            "netns",
            "exec",
            &net.ns("router"),
            "nft",
            "list",
            "chain",
            "inet",
            "filter",
            "prerouting_miniupnpd",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` from the WAN side: the body, or why it failed.
fn fetch_from_wan(net: &Net, url: &str) -> Result<Vec<u8>, String> {
    let out = exec_in(
        &net.ns("wan"),
        "curl",
        &["-sS", "--fail", "--max-time", "5", url],
    );
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// miniupnpd on the router's LAN side, NAT-PMP on or off.
fn miniupnpd(net: &Net, dir: &Path, natpmp: bool) -> Miniupnpd {
    let name = format!("miniupnpd-{natpmp}");
    Miniupnpd::start(
        &net.ns("router"),
        "10.77.0.0/24",
        natpmp,
        dir,
        &name,
        PATIENCE,
    )
}

/// `canopy ARGS` in namespace `ns`, its stderr in `dir/stderr.log`.
async fn spawn_in(
    ns: &str,
    dir: &Path,
    args: &[&str],
) -> (tokio::process::Child, serde_json::Value) {
    netns::spawn_in(PATIENCE, ns, dir, "canopy_portmap=debug,info", args).await
}

/// One leaf's life behind the router: mapped, found and fetched at the
/// router's WAN address, unmapped on SIGTERM.
async fn leaf_behind_the_router(net: &Net, root: &Path, port: u16, via: &str) {
    let share = root.join(format!("share-{port}"));
    std::fs::create_dir_all(&share).unwrap();
    let bytes = support::sample(200_000, u64::from(port));
    let id = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(share.join(format!("mapped port {port}.bin")), &bytes).unwrap();
    let supernode = format!("{WAN_IP}:{SUPERNODE_PORT}");
    let listen = format!("0.0.0.0:{port}");
    let data = root.join(format!("leaf-{port}"));
    let args = leaf_args(&supernode, &share, &listen, &data);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (leaf, hello) = spawn_in(&net.ns("home"), &data, &args).await;
    let log = || std::fs::read_to_string(data.join("stderr.log")).unwrap_or_default();
    let external = format!("{ROUTER_WAN}:{port}");
    assert_eq!(
        hello["listen"],
        external,
        "the leaf announces the mapped address ({via}); its log:\n{}",
        log()
    );
    let forwards = forwards_of(net);
    assert!(
        forwards.contains(&format!("dnat ip to {HOME_IP}:{port}")),
        "miniupnpd forwards the port: {forwards}"
    );
    let granted = log()
        .lines()
        .filter(|line| line.contains("port mapping granted"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(
        granted.len() == 1 && granted[0].contains(via),
        "mapped once, with {via}:\n{}",
        log()
    );

    // The supernode (on the WAN side) hands out the mapped address.
    let wan = net.ns("wan");
    wait_for(
        PATIENCE,
        "a search from the WAN side to find the leaf",
        || {
            let found = search_in(&wan, &supernode, &id);
            if found.contains(&format!("\"{external}\"")) {
                Ok(())
            } else {
                Err(found)
            }
        },
    );
    // And the file comes through the mapping.
    let url = format!("http://{external}/content/{id}");
    let body = fetch_from_wan(net, &url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(body == bytes, "the leaf's file, through the router");

    assert_eq!(support::terminate(PATIENCE, leaf).await, Some(0));
    let forwards = forwards_of(net);
    assert!(
        !forwards.contains(&format!(":{port}")),
        "the mapping is removed on SIGTERM: {forwards}\nleaf log:\n{}",
        log()
    );
    assert!(log().contains("port mapping removed"), "{}", log());
    assert!(
        fetch_from_wan(net, &url).is_err(),
        "nothing answers at the mapped address after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_maps_its_port_on_miniupnpd_is_reached_through_it_and_unmaps_on_sigterm() {
    require_tools(&["ip", "ss", "nft", "miniupnpd", "curl"]);
    let root = tempfile::tempdir().unwrap();
    let net = up();
    let (supernode, _) = spawn_in(
        &net.ns("wan"),
        &root.path().join("supernode"),
        &[
            "supernode",
            "--listen",
            &format!("{WAN_IP}:{SUPERNODE_PORT}"),
            "--no-port-mapping",
            "--json",
        ],
    )
    .await;

    let router = miniupnpd(&net, root.path(), true);
    leaf_behind_the_router(&net, root.path(), 47_001, "NAT-PMP").await;
    drop(router);

    // NAT-PMP off: the leaf falls back to UPnP IGD.
    let router = miniupnpd(&net, root.path(), false);
    leaf_behind_the_router(&net, root.path(), 47_002, "UPnP").await;
    drop(router);

    assert_eq!(support::terminate(PATIENCE, supernode).await, Some(0));
}
