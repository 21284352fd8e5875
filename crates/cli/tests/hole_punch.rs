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
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::CANOPY;
use tokio::io::{AsyncBufReadExt, BufReader};

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
    fn ip(self) -> String {
        format!("10.81.{}.2", self.0)
    }
    fn gateway(self) -> String {
        format!("10.81.{}.1", self.0)
    }
    /// The router's public address: what the world sees the home as.
    fn public(self) -> String {
        format!("93.184.{}.1", self.0)
    }
    /// The supernode's address on this home's side of the WAN.
    fn supernode(self) -> String {
        format!("93.184.{}.2", self.0)
    }
    /// Where the home's leaf listens.
    fn leaf_port(self) -> u16 {
        47_100 + u16::from(self.0)
    }
}

const HOMES: [Home; 2] = [Home(1), Home(2)];

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

/// Waits for `done`, checking every 100 ms, for at most [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match done() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The five namespaces; dropping it kills what runs in them and removes
/// them.
struct Net {
    prefix: String,
    made: Vec<String>,
    links: usize,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        run("ip", &["netns", "add", &ns]);
        self.made.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair: `a` in `a_ns`, `b` in `b_ns`, each with its address.
    fn link(&mut self, a_ns: &str, a: &str, a_cidr: &str, b_ns: &str, b: &str, b_cidr: &str) {
        self.links += 1;
        let (tmp_a, tmp_b) = (
            format!("{}{}a", self.prefix, self.links),
            format!("{}{}b", self.prefix, self.links),
        );
        run(
            "ip",
            &[
                "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
            ],
        );
        run("ip", &["link", "set", &tmp_a, "netns", a_ns]);
        run("ip", &["link", "set", &tmp_b, "netns", b_ns]);
        for (ns, tmp, dev, cidr) in [(a_ns, &tmp_a, a, a_cidr), (b_ns, &tmp_b, b, b_cidr)] {
            run("ip", &["-n", ns, "link", "set", tmp, "name", dev]);
            run("ip", &["-n", ns, "addr", "add", cidr, "dev", dev]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Builds the network; `test` (one letter) keeps the names of tests
    /// running at once apart; `upnp`: that home's router gets miniupnpd's
    /// chains.
    fn up(test: char, upnp: Option<u8>) -> Net {
        let mut net = Net {
            prefix: format!("chp{}{test}", std::process::id()),
            made: Vec::new(),
            links: 0,
        };
        let wan = net.add_ns("wan");
        sysctl(&wan, "net.ipv4.ip_forward=1");
        for home in HOMES {
            let (h, r) = (home.name(), home.router());
            let home_ns = net.add_ns(&h);
            let router_ns = net.add_ns(&r);
            net.link(
                &home_ns,
                "eth0",
                &format!("{}/24", home.ip()),
                &router_ns,
                "lan0",
                &format!("{}/24", home.gateway()),
            );
            net.link(
                &router_ns,
                "wan0",
                &format!("{}/24", home.public()),
                &wan,
                &format!("eth{}", home.0),
                &format!("{}/24", home.supernode()),
            );
            run(
                "ip",
                &[
                    "-n",
                    &home_ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &home.gateway(),
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    &router_ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &home.supernode(),
                ],
            );
            sysctl(&router_ns, "net.ipv4.ip_forward=1");
            // A home router: the LAN goes out masqueraded (port kept when
            // free, one mapping for every destination); from outside only
            // answers come in, to the router or through it; the rest is
            // dropped without a word.
            // With miniupnpd: its chains (table `filter`, family inet,
            // its default names), where its port forwards go.
            let upnp = upnp == Some(home.0);
            let hook = |rule: &'static str| if upnp { rule } else { "" };
            let rules = format!(
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
                hook(
                    "chain miniupnpd { }\nchain prerouting_miniupnpd { }\nchain postrouting_miniupnpd { }"
                ),
            );
            let mut nft = Command::new("ip")
                .args(["netns", "exec", &router_ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("nft");
            std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
            assert!(nft.wait().unwrap().success(), "nft rules for {r}");
        }
        net
    }
}

fn sysctl(ns: &str, setting: &str) {
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", setting]);
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.made {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `canopy ARGS` in namespace `ns`, with its first stdout line parsed; its
/// stderr in `dir/stderr.log`.
async fn spawn_in(
    ns: &str,
    dir: &Path,
    args: &[&str],
) -> (tokio::process::Child, serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, CANOPY])
        .args(args)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("RUST_LOG", "canopy_transfer=debug,canopy_node=debug,info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
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
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            )
        });
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, serde_json::from_str(&first).unwrap())
}

fn require_tools(extra: &[&str]) {
    let uid = run("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "network namespaces need root (CI runs as root)"
    );
    for tool in ["ip", "nft"].iter().chain(extra) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing (.ci/run installs it: nftables, iproute2, miniupnpd-nftables)"
        );
    }
}

/// What a search from `home` for `id` says, as text.
fn search_from(net: &Net, home: Home, id: &str) -> String {
    let supernode = format!("{}:{SUPERNODE_PORT}", home.supernode());
    let out = try_run(
        "ip",
        &[
            "netns",
            "exec",
            &net.ns(&home.name()),
            CANOPY,
            "search",
            "--supernode",
            &supernode,
            "--json",
            "--timeout",
            "1",
            "--id",
            id,
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `canopy get --supernode … --json id` in `home`, into `out`: its JSON
/// report, or why it failed.
fn get_from(net: &Net, home: Home, id: &str, out: &Path) -> Result<serde_json::Value, String> {
    let supernode = format!("{}:{SUPERNODE_PORT}", home.supernode());
    let output = Command::new("ip")
        .args(["netns", "exec", &net.ns(&home.name()), CANOPY])
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
    wait_for("the supernode's probe of the leaf to fail", || {
        let log =
            std::fs::read_to_string(root.join("supernode").join("stderr.log")).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("leaf unreachable") && l.contains(&addr))
        {
            Ok(())
        } else {
            Err(log)
        }
    });
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
    let mut args = vec![
        "leaf",
        "--supernode",
        &supernode,
        "--share",
        share.to_str().unwrap(),
        "--listen",
        &listen,
        "--no-lan-discovery",
        "--control",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ];
    if !mapped {
        args.push("--no-port-mapping");
    }
    let (leaf, hello) = spawn_in(&net.ns(&home.name()), &data, &args).await;
    (leaf, hello, data, (id, bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_leaves_behind_their_own_nats_download_from_each_other_by_hole_punching() {
    require_tools(&[]);
    let root = tempfile::tempdir().unwrap();
    let net = Net::up('a', None);
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
        wait_for("a search to find the other home's file", || {
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
    let unsolicited = try_run(
        "ip",
        &[
            "netns",
            "exec",
            &net.ns("wan"),
            "timeout",
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

/// miniupnpd on `home`'s router, in the foreground; killed on drop.
struct Miniupnpd {
    child: std::process::Child,
}

impl Miniupnpd {
    fn start(net: &Net, home: Home, dir: &Path) -> Miniupnpd {
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan0\nlistening_ip=lan0\nenable_natpmp=yes\nenable_upnp=yes\n\
                 secure_mode=yes\nsystem_uptime=no\nuuid=5b2c7e1a-8d0f-4a61-9c3e-2f7d4b9a0c12\n\
                 allow 1024-65535 10.81.{}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                home.0
            ),
        )
        .unwrap();
        let router = net.ns(&home.router());
        let child = Command::new("ip")
            .args(["netns", "exec", &router, "miniupnpd", "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdout(std::fs::File::create(dir.join("miniupnpd.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("miniupnpd.err")).unwrap())
            .spawn()
            .expect("miniupnpd");
        // Ready once NAT-PMP's socket is bound.
        wait_for("miniupnpd to listen", || {
            let out = try_run("ip", &["netns", "exec", &router, "ss", "-Hlnu"]);
            let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
            if sockets.contains(":5351 ") {
                Ok(())
            } else {
                Err(sockets)
            }
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

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_with_a_mapped_port_is_pushed_to_there_from_behind_another_nat() {
    require_tools(&["miniupnpd", "ss"]);
    let root = tempfile::tempdir().unwrap();
    let (source_home, mapped_home) = (HOMES[0], HOMES[1]);
    let net = Net::up('m', Some(mapped_home.0));
    let supernode = start_supernode(&net, root.path()).await;
    let router = Miniupnpd::start(&net, mapped_home, root.path());

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
    wait_for("a search to find the other home's file", || {
        let found = search_from(&net, mapped_home, &id);
        if found.contains(&seen_at) {
            Ok(())
        } else {
            Err(found)
        }
    });

    // The running leaf downloads it (canopy get through its control API).
    let output = Command::new("ip")
        .args(["netns", "exec", &net.ns(&mapped_home.name()), CANOPY])
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
    wait_for("the leaf to log the download's paths", || {
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
