//! Hole punching between two home networks, each behind its own NAT.
//!
//! ```text
//!  home1 10.81.1.2 ── router1 (nftables masquerade) 93.184.1.1 ─┐
//!                                                                wan: the supernode at
//!  home2 10.81.2.2 ── router2 (nftables masquerade) 93.184.2.1 ─┘  93.184.1.2 / 93.184.2.2
//! ```
//!
//! Each router does what a home router does: masquerade (Linux keeps the
//! source port when it is free, and maps one port the same way for every
//! destination) and stateful filtering (nothing unsolicited gets in, to the
//! router or through it: dropped, not refused). A `canopy leaf` in each home
//! shares a file, with no port mapping and no LAN discovery: the supernode
//! can't reach either (its probe is dropped), so hits say both are
//! firewalled. A `canopy get --supernode` in each home downloads the other
//! home's file: a push alone can't get in (the downloader is behind a NAT
//! too), so both sides dial each other at once from the ports the other
//! dials and the NATs let the SYNs in as answers. The file must verify and
//! every connection's path must be "hole punch".
//!
//! And the mapped case: home 2's router runs miniupnpd, its leaf maps its
//! port, and that leaf (the daemon, through `canopy get`) downloads home
//! 1's file: the source connects once to the mapped port, where the
//! leaf's HTTP server hands the pushed connection to the download: path
//! "push".
//!
//! Needs root, `ip` and `nft`, and `miniupnpd` for the mapped case
//! (.ci/run installs them): fails loudly without. The namespaces
//! (`chp<pid><test>-…`) are built here and removed whatever happens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::CANOPY;
use support::netns::{
    self, Miniupnpd, Net, command_in, exec_in, leaf_args, require_tools, search_in, wait_for,
};

const PATIENCE: Duration = Duration::from_secs(60);
const SUPERNODE_PORT: u16 = 6346;

/// One home: its number (1 or 2) names its addresses.
#[derive(Clone, Copy)]
struct Home(u8);

impl Home {
    fn name(self) -> String {
        format!("home{}", self.0)
    }
    fn router(self) -> String {
        format!("router{}", self.0)
    }
    /// `10.81.<home>.<host>` on the home's LAN: 1 the router, 2 the home.
    fn lan(self, host: u8) -> String {
        format!("10.81.{}.{host}", self.0)
    }
    /// `93.184.<home>.<host>` on the home's side of the WAN: 1 the router,
    /// 2 the supernode.
    fn wan(self, host: u8) -> String {
        format!("93.184.{}.{host}", self.0)
    }
    /// The router's public address: what the world sees the home as.
    fn public(self) -> String {
        self.wan(1)
    }
    /// The supernode's address on this home's side of the WAN.
    fn supernode(self) -> String {
        self.wan(2)
    }
    /// Where the home's leaf listens.
    fn leaf_port(self) -> u16 {
        47_100 + u16::from(self.0)
    }
}

const HOMES: [Home; 2] = [Home(1), Home(2)];

/// Builds the five namespaces; `test` (one letter) keeps the names of
/// tests running at once apart; `upnp`: that home's router gets
/// miniupnpd's chains.
fn up(test: char, upnp: Option<u8>) -> Net {
    let mut net = Net::new(format!("chp{}{test}", std::process::id()));
    let wan = net.add_ns("wan");
    net.sysctl(&wan, "net.ipv4.ip_forward=1");
    for home in HOMES {
        let home_ns = net.add_ns(&home.name());
        let router_ns = net.add_ns(&home.router());
        net.link(
            (&home_ns, "eth0", &format!("{}/24", home.lan(2))),
            (&router_ns, "lan0", &format!("{}/24", home.lan(1))),
        );
        net.link(
            (&router_ns, "wan0", &format!("{}/24", home.public())),
            (
                &wan,
                &format!("eth{}", home.0),
                &format!("{}/24", home.supernode()),
            ),
        );
        net.route(&home_ns, "default", &home.lan(1));
        net.route(&router_ns, "default", &home.supernode());
        net.sysctl(&router_ns, "net.ipv4.ip_forward=1");
        // A home router: the LAN goes out masqueraded (port kept when
        // free, one mapping for every destination); from outside only
        // answers come in, to the router or through it; the rest is
        // dropped without a word.
        // With miniupnpd: its chains, where its port forwards go.
        let upnp = upnp == Some(home.0);
        let hook = |rule: &'static str| if upnp { rule } else { "" };
        net.nft(
            &router_ns,
            &format!(
                "table inet filter {{\n\
                chain input {{ type filter hook input priority 0; policy drop;\n\
                  iifname \"lo\" accept; iifname \"lan0\" accept; ct state established,related accept; }}\n\
                chain forward {{ type filter hook forward priority 0; policy drop;\n\
                  ct state established,related accept; iifname \"lan0\" oifname \"wan0\" accept; {} }}\n\
                chain prerouting {{ type nat hook prerouting priority -100; policy accept; {} }}\n\
                chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
                  {} oifname \"wan0\" masquerade; }}\n\
                {}\n\
                }}\n",
                hook("jump miniupnpd;"),
                hook("jump prerouting_miniupnpd;"),
                hook("jump postrouting_miniupnpd;"),
                hook(netns::MINIUPNPD_CHAINS),
            ),
        );
    }
    net
}

/// `canopy ARGS` in namespace `ns`, its stderr in `dir/stderr.log`.
async fn spawn_in(
    ns: &str,
    dir: &Path,
    args: &[&str],
) -> (tokio::process::Child, serde_json::Value) {
    netns::spawn_in(
        PATIENCE,
        ns,
        dir,
        "canopy_transfer=debug,canopy_node=debug,info",
        args,
    )
    .await
}

/// What a search from `home` for `id` says, as text.
fn search_from(net: &Net, home: Home, id: &str) -> String {
    let supernode = format!("{}:{SUPERNODE_PORT}", home.supernode());
    search_in(&net.ns(&home.name()), &supernode, id)
}

/// `canopy get --supernode … --json id` in `home`, into `out`: its JSON
/// report, or why it failed.
fn get_from(net: &Net, home: Home, id: &str, out: &Path) -> Result<serde_json::Value, String> {
    let supernode = format!("{}:{SUPERNODE_PORT}", home.supernode());
    let output = command_in(&net.ns(&home.name()), CANOPY)
        .args(["get", "--supernode", &supernode, "--json", "-o"])
        .arg(out)
        .arg(id)
        .env("RUST_LOG", "canopy_transfer=debug,canopy_node=debug,info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "exit {:?}: {stdout}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))
}

/// Waits until the supernode has found `home`'s leaf unreachable (its
/// probe dropped by the router): from then on hits say it is firewalled.
/// (While the probe runs they say it is not.)
fn wait_until_firewalled(root: &Path, home: Home) {
    let addr = format!("addr={}:{}", home.public(), home.leaf_port());
    wait_for(
        PATIENCE,
        "the supernode's probe of the leaf to fail",
        || {
            let log = std::fs::read_to_string(root.join("supernode").join("stderr.log"))
                .unwrap_or_default();
            if log
                .lines()
                .any(|l| l.contains("leaf unreachable") && l.contains(&addr))
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
}

/// The supernode, on the WAN.
async fn start_supernode(net: &Net, root: &Path) -> tokio::process::Child {
    let (supernode, _) = spawn_in(
        &net.ns("wan"),
        &root.join("supernode"),
        &[
            "supernode",
            "--listen",
            &format!("0.0.0.0:{SUPERNODE_PORT}"),
            "--no-port-mapping",
            "--no-lan-discovery",
            "--json",
        ],
    )
    .await;
    supernode
}

/// A leaf in `home` sharing a file of several groups (so a download
/// takes several connections: the tree, then two at once), its port
/// mapped on the router if `mapped`. The leaf, its startup line, its
/// data directory and the file's id and bytes.
async fn start_leaf(
    net: &Net,
    root: &Path,
    home: Home,
    mapped: bool,
) -> (
    tokio::process::Child,
    serde_json::Value,
    std::path::PathBuf,
    (String, Vec<u8>),
) {
    let dir = root.join(home.name());
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let bytes = support::sample(3 * 1024 * 1024 + 1234, u64::from(home.0));
    let id = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(share.join(format!("from home {}.bin", home.0)), &bytes).unwrap();
    let data = dir.join("leaf");
    let supernode = format!("{}:{SUPERNODE_PORT}", home.supernode());
    let listen = format!("0.0.0.0:{}", home.leaf_port());
    let mut args = leaf_args(&supernode, &share, &listen, &data);
    args.push("--no-lan-discovery".to_owned());
    if !mapped {
        args.push("--no-port-mapping".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (leaf, hello) = spawn_in(&net.ns(&home.name()), &data, &args).await;
    (leaf, hello, data, (id, bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_leaves_behind_their_own_nats_download_from_each_other_by_hole_punching() {
    require_tools(&["ip", "nft"]);
    let root = tempfile::tempdir().unwrap();
    let net = up('a', None);
    let supernode = start_supernode(&net, root.path()).await;

    let mut leaves = Vec::new();
    let mut files = Vec::new();
    for home in HOMES {
        let (leaf, hello, data, file) = start_leaf(&net, root.path(), home, false).await;
        assert_eq!(
            hello["listen"],
            format!("0.0.0.0:{}", home.leaf_port()),
            "{hello}"
        );
        leaves.push((leaf, data));
        files.push(file);
    }

    // Each file is found from the other home at the other router's public
    // address (the IP the supernode sees, the port announced), firewalled:
    // the supernode's probe was dropped by the router.
    for home in HOMES {
        wait_until_firewalled(root.path(), home);
    }
    for (home, other) in [(HOMES[1], HOMES[0]), (HOMES[0], HOMES[1])] {
        let (id, _) = &files[usize::from(other.0 - 1)];
        let seen_at = format!("{}:{}", other.public(), other.leaf_port());
        wait_for(PATIENCE, "a search to find the other home's file", || {
            let found = search_from(&net, home, id);
            if found.contains(&seen_at) {
                Ok(())
            } else {
                Err(found)
            }
        });
    }
    // Nothing unsolicited gets through a router: the leaf's port is
    // closed from the WAN (checked with a dial from the supernode's side).
    let unsolicited = exec_in(
        &net.ns("wan"),
        "timeout",
        &[
            "3",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/{}",
                HOMES[0].public(),
                HOMES[0].leaf_port()
            ),
        ],
    );
    assert!(
        !unsolicited.status.success(),
        "the router let an unsolicited connection in"
    );

    for (home, other) in [(HOMES[1], HOMES[0]), (HOMES[0], HOMES[1])] {
        let (id, bytes) = &files[usize::from(other.0 - 1)];
        let out = root.path().join(format!("got-in-{}", home.name()));
        let report = get_from(&net, home, id, &out).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(
                root.path()
                    .join(other.name())
                    .join("leaf")
                    .join("stderr.log"),
            )
            .unwrap_or_default();
            panic!(
                "{} could not download {}'s file: {e}\nthe source's log:\n{log}",
                home.name(),
                other.name()
            )
        });
        let path = report["path"].as_str().unwrap();
        assert!(
            std::fs::read(path).unwrap() == *bytes,
            "the downloaded file is the other home's"
        );
        let paths = report["paths_per_source"].as_object().unwrap();
        assert_eq!(paths.len(), 1, "one source: {report}");
        let (label, taken) = paths.iter().next().unwrap();
        assert!(
            label.starts_with(&format!("{}:{}", other.public(), other.leaf_port())),
            "the source is the other home's router: {report}"
        );
        assert_eq!(
            taken,
            &serde_json::json!(["hole punch"]),
            "every connection was punched: {report}"
        );
    }

    for (leaf, _) in leaves {
        assert_eq!(support::terminate(PATIENCE, leaf).await, Some(0));
    }
    assert_eq!(support::terminate(PATIENCE, supernode).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_with_a_mapped_port_is_pushed_to_there_from_behind_another_nat() {
    require_tools(&["ip", "nft", "miniupnpd", "ss"]);
    let root = tempfile::tempdir().unwrap();
    let (source_home, mapped_home) = (HOMES[0], HOMES[1]);
    let net = up('m', Some(mapped_home.0));
    let supernode = start_supernode(&net, root.path()).await;
    let router = Miniupnpd::start(
        &net.ns(&mapped_home.router()),
        &format!("10.81.{}.0/24", mapped_home.0),
        true,
        root.path(),
        "miniupnpd",
        PATIENCE,
    );

    let (source, _, source_data, (id, bytes)) =
        start_leaf(&net, root.path(), source_home, false).await;
    let (leaf, hello, data, _) = start_leaf(&net, root.path(), mapped_home, true).await;
    let log = |dir: &Path| std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert_eq!(
        hello["listen"],
        format!("{}:{}", mapped_home.public(), mapped_home.leaf_port()),
        "the leaf announces its mapped address: {hello}\n{}",
        log(&data)
    );
    wait_until_firewalled(root.path(), source_home);
    let seen_at = format!("{}:{}", source_home.public(), source_home.leaf_port());
    wait_for(PATIENCE, "a search to find the other home's file", || {
        let found = search_from(&net, mapped_home, &id);
        if found.contains(&seen_at) {
            Ok(())
        } else {
            Err(found)
        }
    });

    // The running leaf downloads it (canopy get through its control API).
    let output = command_in(&net.ns(&mapped_home.name()), CANOPY)
        .args(["get", "--json", "--data-dir"])
        .arg(&data)
        .arg(&id)
        .env("HOME", &data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "canopy get: {stdout}\n{}\nthe leaf's log:\n{}\nthe source's log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        log(&data),
        log(&source_data)
    );
    let view: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(view["state"], "done", "{view}");
    let path = view["path"].as_str().unwrap();
    assert!(std::fs::read(path).unwrap() == bytes, "verified");
    // The daemon says how each source was reached: the source's one dial
    // to the mapped port, handed over by the HTTP server.
    let pushed = format!("\"{seen_at} (push)\": [\"push\"]");
    wait_for(PATIENCE, "the leaf to log the download's paths", || {
        let text = log(&data);
        match text.lines().find(|l| l.contains("download verified")) {
            Some(line) if line.contains(&pushed) => Ok(()),
            Some(line) => Err(line.to_owned()),
            None => Err(text),
        }
    });

    drop(router);
    for child in [leaf, source, supernode] {
        assert_eq!(support::terminate(PATIENCE, child).await, Some(0));
    }
}
