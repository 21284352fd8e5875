//! A leaf behind a real NAT learns its NAT's kind and public address from
//! two supernodes: a `home` namespace (10.78.0.0/24) behind a `router`
//! namespace doing nftables masquerade towards a `wan` namespace holding
//! two supernodes in different /24s (93.184.0.2 on the link, 198.51.100.2
//! routed through it), so both see the router's one WAN address. With
//! plain `masquerade` (which keeps the source port when it can) the leaf,
//! dialing both from its listening port, is seen at one external port, its
//! own: endpoint-independent, port-preserving; with `masquerade random`
//! each supernode sees another port: endpoint-dependent. Both supernodes
//! agree on the public address (confirmed), and connecting back fails
//! (no port forward): not reachable. Needs root, `ip` and `nft` (.ci/run
//! installs them): fails loudly without. The namespaces (`cre<pid>-*`) are
//! built here and removed whatever happens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::CANOPY;
use support::netns::{self, Net, exec_in, require_tools, wait_for};

const PATIENCE: Duration = Duration::from_secs(30);
const ROUTER_WAN: &str = "93.184.0.1";
const SUPERNODE_A: &str = "93.184.0.2";
const SUPERNODE_B: &str = "198.51.100.2";
const SUPERNODE_PORT: u16 = 6346;

/// Builds home — router — wan, without NAT rules yet.
fn up() -> Net {
    let net = Net::one_home("cre", "10.78.0", ROUTER_WAN, SUPERNODE_A);
    // The second supernode's network sits behind the first host, so
    // the router reaches it through wan0 from the same address.
    net.addr(&net.ns("wan"), "lo", &format!("{SUPERNODE_B}/32"));
    net.route(&net.ns("router"), &format!("{SUPERNODE_B}/32"), SUPERNODE_A);
    net
}

/// Replaces the router's NAT rule: `masquerade` plus `options`.
fn masquerade(net: &Net, options: &str) {
    let router = net.ns("router");
    let _ = exec_in(&router, "nft", &["delete", "table", "ip", "nat"]);
    net.nft(
        &router,
        &format!(
            "table ip nat {{\n\
             chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
             oifname \"wan0\" masquerade {options}; }}\n\
             }}\n"
        ),
    );
}

/// `canopy ARGS` in namespace `ns`, its stderr in `dir/stderr.log`.
async fn spawn_in(
    ns: &str,
    dir: &Path,
    args: &[&str],
) -> (tokio::process::Child, serde_json::Value) {
    netns::spawn_in(PATIENCE, ns, dir, "canopy_node=debug,info", args).await
}

/// A leaf in `home` on `port` until its status has a NAT kind and a
/// confirmed public address and a reachability verdict; returns that
/// `reachability` object.
async fn reachability_behind_the_router(net: &Net, root: &Path, port: u16) -> serde_json::Value {
    let data = root.join(format!("leaf-{port}"));
    let a = format!("{SUPERNODE_A}:{SUPERNODE_PORT}");
    let b = format!("{SUPERNODE_B}:{SUPERNODE_PORT}");
    let listen = format!("0.0.0.0:{port}");
    let home = net.ns("home");
    let (leaf, _) = spawn_in(
        &home,
        &data,
        &[
            "leaf",
            "--supernode",
            &a,
            "--supernode",
            &b,
            "--listen",
            &listen,
            "--control",
            "127.0.0.1:0",
            "--no-port-mapping",
            "--no-lan-discovery",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    let mut reach = serde_json::Value::Null;
    wait_for(PATIENCE, "the leaf to settle its reachability", || {
        let out = exec_in(
            &home,
            CANOPY,
            &["status", "--data-dir", data.to_str().unwrap(), "--json"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Ok(status) = serde_json::from_str::<serde_json::Value>(&stdout) {
            reach = status["reachability"].clone();
            let settled = reach["nat"] != "unknown"
                && reach["reachable"] != "unknown"
                && reach["public_addrs"][0]["confirmed"] == true;
            if settled {
                return Ok(());
            }
        }
        Err(format!(
            "{stdout}\nits log:\n{}",
            std::fs::read_to_string(data.join("stderr.log")).unwrap_or_default()
        ))
    });
    assert_eq!(support::terminate(PATIENCE, leaf).await, Some(0));
    reach
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_tells_an_endpoint_independent_nat_from_a_symmetric_one() {
    require_tools(&["ip", "nft"]);
    let root = tempfile::tempdir().unwrap();
    let net = up();
    let mut supernodes = Vec::new();
    for ip in [SUPERNODE_A, SUPERNODE_B] {
        let (supernode, _) = spawn_in(
            &net.ns("wan"),
            &root.path().join(format!("supernode-{ip}")),
            &[
                "supernode",
                "--listen",
                &format!("{ip}:{SUPERNODE_PORT}"),
                "--no-port-mapping",
                "--no-lan-discovery",
                "--json",
            ],
        )
        .await;
        supernodes.push(supernode);
    }

    masquerade(&net, "");
    let reach = reachability_behind_the_router(&net, root.path(), 47_101).await;
    assert_eq!(
        reach["nat"], "endpoint_independent_port_preserving",
        "{reach}"
    );
    assert_eq!(reach["public_addrs"][0]["ip"], ROUTER_WAN, "{reach}");
    assert_eq!(reach["reachable"], "no", "no port forward: {reach}");

    masquerade(&net, "random");
    let reach = reachability_behind_the_router(&net, root.path(), 47_102).await;
    assert_eq!(reach["nat"], "endpoint_dependent", "{reach}");
    assert_eq!(reach["public_addrs"][0]["ip"], ROUTER_WAN, "{reach}");
    assert_eq!(reach["reachable"], "no", "{reach}");

    for supernode in supernodes {
        assert_eq!(support::terminate(PATIENCE, supernode).await, Some(0));
    }
}
