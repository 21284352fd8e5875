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
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::CANOPY;
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(30);
const ROUTER_LAN: &str = "10.77.0.1";
const HOME_IP: &str = "10.77.0.2";
const ROUTER_WAN: &str = "93.184.0.1";
const WAN_IP: &str = "93.184.0.2";
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

/// Waits for `done`, checking every 50 ms, for at most [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match done() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The three namespaces; dropping it kills what runs in them and removes them.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Builds home — router (NAT, miniupnpd's nftables chains) — wan.
    fn up() -> Net {
        let net = Net {
            prefix: format!("cpm{}", std::process::id()),
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
        addr(&wan, "eth0", &format!("{WAN_IP}/24"));
        run(
            "ip",
            &["-n", &home, "route", "add", "default", "via", ROUTER_LAN],
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
        // miniupnpd's nftables backend adds its rules to these chains
        // (table `filter`, family inet, its default names); the home
        // network leaves masqueraded as the router's WAN address.
        let rules = "table inet filter {\n\
            chain forward { type filter hook forward priority 0; policy drop;\n\
              ct state established,related accept; iifname \"lan0\" accept; jump miniupnpd; }\n\
            chain miniupnpd { }\n\
            chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
            chain postrouting { type nat hook postrouting priority 100; policy accept;\n\
              jump postrouting_miniupnpd; oifname \"wan0\" masquerade; }\n\
            chain prerouting_miniupnpd { }\n\
            chain postrouting_miniupnpd { }\n\
            }\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules for the router");
        net
    }

    /// miniupnpd's port forwards (its DNAT chain).
    fn forwards(&self) -> String {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns("router"),
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
    fn fetch_from_wan(&self, url: &str) -> Result<Vec<u8>, String> {
        let out = try_run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns("wan"),
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "5",
                url,
            ],
        );
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
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

/// miniupnpd on the router's LAN side, in the foreground, its log in `log`.
struct Miniupnpd {
    child: std::process::Child,
}

impl Miniupnpd {
    fn start(net: &Net, dir: &Path, natpmp: bool) -> Miniupnpd {
        let conf = dir.join(format!("miniupnpd-{natpmp}.conf"));
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan0\nlistening_ip=lan0\nenable_natpmp={}\nenable_upnp=yes\n\
                 secure_mode=yes\nsystem_uptime=no\nuuid=3a9f1a3c-0c43-4bd5-b6e3-9f1d2b0c0f11\n\
                 allow 1024-65535 10.77.0.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                if natpmp { "yes" } else { "no" }
            ),
        )
        .unwrap();
        let log = dir.join(format!("miniupnpd-{natpmp}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns("router"), "miniupnpd", "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("miniupnpd-{natpmp}.err"))).unwrap())
            .spawn()
            .expect("miniupnpd");
        // Ready once its sockets are bound: SSDP, NAT-PMP if on, and the
        // HTTP port (the only TCP listener in the router).
        let router = net.ns("router");
        wait_for("miniupnpd to listen", || {
            let out = try_run("ip", &["netns", "exec", &router, "ss", "-Hlntu"]);
            let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
            let tcp = sockets.lines().any(|l| l.starts_with("tcp"));
            let ready =
                tcp && sockets.contains(":1900 ") && (!natpmp || sockets.contains(":5351 "));
            if ready { Ok(()) } else { Err(sockets) }
        });
        Miniupnpd { child }
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `canopy ARGS` in namespace `ns` (`ip netns exec` execs it, so the child
/// is canopy itself), with its first stdout line parsed.
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
        .env("RUST_LOG", "canopy_portmap=debug,info")
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
    for tool in ["ip", "ss", "nft", "miniupnpd", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing (.ci/run installs it: miniupnpd-nftables, nftables, iproute2, curl)"
        );
    }
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
    let (leaf, hello) = spawn_in(
        &net.ns("home"),
        &data,
        &[
            "leaf",
            "--supernode",
            &supernode,
            "--share",
            share.to_str().unwrap(),
            "--listen",
            &listen,
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    let log = || std::fs::read_to_string(data.join("stderr.log")).unwrap_or_default();
    let external = format!("{ROUTER_WAN}:{port}");
    assert_eq!(
        hello["listen"],
        external,
        "the leaf announces the mapped address ({via}); its log:\n{}",
        log()
    );
    let forwards = net.forwards();
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
    wait_for("a search from the WAN side to find the leaf", || {
        let out = try_run(
            "ip",
            &[
                "netns",
                "exec",
                &wan,
                CANOPY,
                "search",
                "--supernode",
                &supernode,
                "--json",
                "--timeout",
                "1",
                "--id",
                &id,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.contains(&format!("\"{external}\"")) {
            Ok(())
        } else {
            Err(stdout)
        }
    });
    // And the file comes through the mapping.
    let url = format!("http://{external}/content/{id}");
    let body = net
        .fetch_from_wan(&url)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(body == bytes, "the leaf's file, through the router");

    assert_eq!(support::terminate(PATIENCE, leaf).await, Some(0));
    let forwards = net.forwards();
    assert!(
        !forwards.contains(&format!(":{port}")),
        "the mapping is removed on SIGTERM: {forwards}\nleaf log:\n{}",
        log()
    );
    assert!(log().contains("port mapping removed"), "{}", log());
    assert!(
        net.fetch_from_wan(&url).is_err(),
        "nothing answers at the mapped address after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_maps_its_port_on_miniupnpd_is_reached_through_it_and_unmaps_on_sigterm() {
    require_tools();
    let root = tempfile::tempdir().unwrap();
    let net = Net::up();
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

    let router = Miniupnpd::start(&net, root.path(), true);
    leaf_behind_the_router(&net, root.path(), 47_001, "NAT-PMP").await;
    drop(router);

    // NAT-PMP off: the leaf falls back to UPnP IGD.
    let router = Miniupnpd::start(&net, root.path(), false);
    leaf_behind_the_router(&net, root.path(), 47_002, "UPnP").await;
    drop(router);

    assert_eq!(support::terminate(PATIENCE, supernode).await, Some(0));
}
