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
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::CANOPY;
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(30);
const ROUTER_LAN: &str = "10.78.0.1";
const HOME_IP: &str = "10.78.0.2";
const ROUTER_WAN: &str = "93.184.0.1";
const SUPERNODE_A: &str = "93.184.0.2";
const SUPERNODE_B: &str = "198.51.100.2";
const SUPERNODE_PORT: u16 = 6346;

/// Runs a command to the end; it must succeed.
fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command to the end, whatever it returns.
fn try_run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// The three namespaces; dropping it kills what runs in them and removes
/// them.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Builds home — router — wan, without NAT rules yet.
    fn up() -> Net {
        let net = Net {
            prefix: format!("cre{}", std::process::id()),
        };
        let (home, router, wan) = (net.ns("home"), net.ns("router"), net.ns("wan"));
        for ns in [&home, &router, &wan] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let veth = |a_ns: &str, a: &str, b_ns: &str, b: &str| {
            let (tmp_a, tmp_b) = (format!("{}a{a}", net.prefix), format!("{}b{b}", net.prefix));
            run(
                "ip",
                &[
                    "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
                ],
            );
            run("ip", &["link", "set", &tmp_a, "netns", a_ns]);
            run("ip", &["link", "set", &tmp_b, "netns", b_ns]);
            run("ip", &["-n", a_ns, "link", "set", &tmp_a, "name", a]);
            run("ip", &["-n", b_ns, "link", "set", &tmp_b, "name", b]);
        };
        veth(&home, "eth0", &router, "lan0");
        veth(&router, "wan0", &wan, "eth0");
        let addr = |ns: &str, dev: &str, cidr: &str| {
            run("ip", &["-n", ns, "addr", "add", cidr, "dev", dev]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        };
        addr(&home, "eth0", &format!("{HOME_IP}/24"));
        addr(&router, "lan0", &format!("{ROUTER_LAN}/24"));
        addr(&router, "wan0", &format!("{ROUTER_WAN}/24"));
        addr(&wan, "eth0", &format!("{SUPERNODE_A}/24"));
        // The second supernode's network sits behind the first host, so
        // the router reaches it through wan0 from the same address.
        addr(&wan, "lo", &format!("{SUPERNODE_B}/32"));
        run(
            "ip",
            &["-n", &home, "route", "add", "default", "via", ROUTER_LAN],
        );
        run(
            "ip",
            &[
                "-n",
                &router,
                "route",
                "add",
                &format!("{SUPERNODE_B}/32"),
                "via",
                SUPERNODE_A,
            ],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        net
    }

    /// Replaces the router's NAT rule: `masquerade` plus `options`.
    fn masquerade(&self, options: &str) {
        let router = self.ns("router");
        let _ = try_run(
            "ip",
            &[
                "netns", "exec", &router, "nft", "delete", "table", "ip", "nat",
            ],
        );
        let rules = format!(
            "table ip nat {{\n\
             chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n\
             oifname \"wan0\" masquerade {options}; }}\n\
             }}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules for the router");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in ["home", "router", "wan"] {
            let ns = self.ns(name);
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// `canopy ARGS` in namespace `ns`, with its first stdout line parsed.
async fn spawn_in(
    ns: &str,
    home: &Path,
    args: &[&str],
) -> (tokio::process::Child, serde_json::Value) {
    std::fs::create_dir_all(home).unwrap();
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, CANOPY])
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("RUST_LOG", "canopy_node=debug,info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(home.join("stderr.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("no startup line")
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "{args:?} exited before its startup line: {}",
                std::fs::read_to_string(home.join("stderr.log")).unwrap_or_default()
            )
        });
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, serde_json::from_str(&first).unwrap())
}

fn require_tools() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "network namespaces need root (CI runs as root)"
    );
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing (.ci/run installs it: nftables, iproute2)"
        );
    }
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
    let deadline = Instant::now() + PATIENCE;
    let reach = loop {
        let out = try_run(
            "ip",
            &[
                "netns",
                "exec",
                &home,
                CANOPY,
                "status",
                "--data-dir",
                data.to_str().unwrap(),
                "--json",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Ok(status) = serde_json::from_str::<serde_json::Value>(&stdout) {
            let reach = status["reachability"].clone();
            let settled = reach["nat"] != "unknown"
                && reach["reachable"] != "unknown"
                && reach["public_addrs"][0]["confirmed"] == true;
            if settled {
                break reach;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the leaf never settled its reachability: {stdout}\nits log:\n{}",
            std::fs::read_to_string(data.join("stderr.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(support::terminate(PATIENCE, leaf).await, Some(0));
    reach
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_tells_an_endpoint_independent_nat_from_a_symmetric_one() {
    require_tools();
    let root = tempfile::tempdir().unwrap();
    let net = Net::up();
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

    net.masquerade("");
    let reach = reachability_behind_the_router(&net, root.path(), 47_101).await;
    assert_eq!(
        reach["nat"], "endpoint_independent_port_preserving",
        "{reach}"
    );
    assert_eq!(reach["public_addrs"][0]["ip"], ROUTER_WAN, "{reach}");
    assert_eq!(reach["reachable"], "no", "no port forward: {reach}");

    net.masquerade("random");
    let reach = reachability_behind_the_router(&net, root.path(), 47_102).await;
    assert_eq!(reach["nat"], "endpoint_dependent", "{reach}");
    assert_eq!(reach["public_addrs"][0]["ip"], ROUTER_WAN, "{reach}");
    assert_eq!(reach["reachable"], "no", "{reach}");

    for supernode in supernodes {
        assert_eq!(support::terminate(PATIENCE, supernode).await, Some(0));
    }
}
