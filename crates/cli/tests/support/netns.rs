//! The network-namespace harness of the CLI's integration tests: running
//! a command (also inside a namespace) and waiting on a condition, failing
//! loudly when root or a tool is missing, a [`Net`] that owns its
//! namespaces (added under one prefix, joined by veth links, given
//! addresses, routes, sysctls and nftables rules; one home behind one
//! router ready-made) and on drop kills what runs in them and deletes them
//! (also when the test panics), miniupnpd as a home router's UPnP IGD /
//! NAT-PMP server, and `canopy` inside a namespace: started with its JSON
//! startup line, a leaf's common arguments, a search by id. The test files
//! keep only their topology and their scenario.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{CANOPY, Run};

/// Runs a command to the end; it must succeed.
pub(crate) fn run(program: &str, args: &[&str]) -> Output {
    let output = try_run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command to the end, whatever it returns.
pub(crate) fn try_run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// `PROGRAM` to be run inside namespace `ns` (`ip netns exec` execs it, so
/// a spawned child is the program itself).
pub(crate) fn command_in(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// Runs `PROGRAM ARGS` in namespace `ns` to the end, whatever it returns.
pub(crate) fn exec_in(ns: &str, program: &str, args: &[&str]) -> Output {
    command_in(ns, program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?} in {ns}: {e}"))
}

/// Runs `PROGRAM ARGS` in namespace `ns` to the end, without blocking the
/// runtime; it must finish within `patience`.
pub(crate) async fn run_in(patience: Duration, ns: &str, program: &str, args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        patience,
        tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output(),
    )
    .await
    .expect("the command did not finish")
    .unwrap();
    Run::from(output)
}

/// What `canopy search --supernode SUPERNODE --id ID` (one second) run in
/// namespace `ns` prints, as text.
pub(crate) fn search_in(ns: &str, supernode: &str, id: &str) -> String {
    let args = ["search", "--supernode", supernode, "--json"];
    let out = exec_in(
        ns,
        CANOPY,
        &[&args[..], &["--timeout", "1", "--id", id]].concat(),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `done`, checking every 50 ms, for at most `patience`; then
/// fails with what it waited for and the last thing `done` saw.
pub(crate) fn wait_for(
    patience: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + patience;
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

/// Fails loudly unless this runs as root (namespaces need it) and every
/// tool in `tools` is on the PATH.
pub(crate) fn require_tools(tools: &[&str]) {
    let uid = run("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "network namespaces need root (CI runs as root)"
    );
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let package = match *tool {
            "ip" | "ss" => "iproute2",
            "nft" => "nftables",
            "miniupnpd" => "miniupnpd-nftables",
            other => other,
        };
        assert!(
            found,
            "{tool} is missing (.ci/run installs it: apt-get install {package})"
        );
    }
}

/// Namespaces named `<prefix>-<name>`; dropping it kills what runs in
/// them and deletes them (their links go with them).
pub(crate) struct Net {
    /// Unique per test file and process (and per test where several run
    /// at once), e.g. `cpm<pid>`.
    pub(crate) prefix: String,
    made: Vec<String>,
    links: usize,
}

impl Net {
    /// No namespaces yet; `prefix` must keep interface names (prefix, a
    /// number and a letter) within 15 characters.
    pub(crate) fn new(prefix: String) -> Net {
        Net {
            prefix,
            made: Vec::new(),
            links: 0,
        }
    }

    /// One home network behind a router, prefix `tag` and this process's
    /// id: namespaces `home`, `router` and `wan`; `home` at `<lan>.2/24` (its default route the router),
    /// the router at `<lan>.1/24` (`lan0`) and `router_wan/24` (`wan0`),
    /// forwarding, and `wan` at `wan_ip/24` (`eth0`). No NAT rules yet.
    pub(crate) fn one_home(tag: &str, lan: &str, router_wan: &str, wan_ip: &str) -> Net {
        let mut net = Net::new(format!("{tag}{}", std::process::id()));
        let (home, router, wan) = (net.add_ns("home"), net.add_ns("router"), net.add_ns("wan"));
        let gateway = format!("{lan}.1");
        net.link(
            (&home, "eth0", &format!("{lan}.2/24")),
            (&router, "lan0", &format!("{gateway}/24")),
        );
        net.link(
            (&router, "wan0", &format!("{router_wan}/24")),
            (&wan, "eth0", &format!("{wan_ip}/24")),
        );
        net.route(&home, "default", &gateway);
        net.sysctl(&router, "net.ipv4.ip_forward=1");
        net
    }

    /// The full name of namespace `name`.
    pub(crate) fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Adds namespace `name` with its loopback up; returns its full name.
    pub(crate) fn add_ns(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        run("ip", &["netns", "add", &ns]);
        self.made.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair: `a` in `a_ns`, `b` in `b_ns`, both down, no address.
    pub(crate) fn veth(&mut self, a_ns: &str, a: &str, b_ns: &str, b: &str) {
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
        for (ns, tmp, dev) in [(a_ns, &tmp_a, a), (b_ns, &tmp_b, b)] {
            run("ip", &["link", "set", tmp, "netns", ns]);
            run("ip", &["-n", ns, "link", "set", tmp, "name", dev]);
        }
    }

    /// Gives `dev` in `ns` the address `cidr` and brings it up.
    pub(crate) fn addr(&self, ns: &str, dev: &str, cidr: &str) {
        run("ip", &["-n", ns, "addr", "add", cidr, "dev", dev]);
        run("ip", &["-n", ns, "link", "set", dev, "up"]);
    }

    /// A veth pair, each end with its address and up.
    pub(crate) fn link(&mut self, a: (&str, &str, &str), b: (&str, &str, &str)) {
        self.veth(a.0, a.1, b.0, b.1);
        for (ns, dev, cidr) in [a, b] {
            self.addr(ns, dev, cidr);
        }
    }

    /// A route in `ns` to `to` (`default` or a prefix) via `gateway`.
    pub(crate) fn route(&self, ns: &str, to: &str, gateway: &str) {
        run("ip", &["-n", ns, "route", "add", to, "via", gateway]);
    }

    /// Sets `setting` (`key=value`) in `ns`.
    pub(crate) fn sysctl(&self, ns: &str, setting: &str) {
        run("ip", &["netns", "exec", ns, "sysctl", "-qw", setting]);
    }

    /// Loads nftables `rules` (as for `nft -f`) in `ns`; they must apply.
    pub(crate) fn nft(&self, ns: &str, rules: &str) {
        let mut nft = command_in(ns, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules for {ns}");
    }

    /// Kills what runs in the namespaces and deletes them, last made
    /// first; afterwards nothing is left to drop.
    pub(crate) fn down(&mut self) {
        for ns in self.made.drain(..).rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.down();
    }
}

/// miniupnpd (nftables backend) on a router namespace, in the foreground;
/// killed on drop. Its WAN side is `wan0`, its LAN side `lan0`; the
/// router's nftables rules must have its chains ([`MINIUPNPD_CHAINS`]).
pub(crate) struct Miniupnpd {
    child: std::process::Child,
}

/// The chains miniupnpd's nftables backend adds its rules to (table
/// `filter`, family inet, its default names); a router's forward,
/// prerouting and postrouting chains jump to them.
pub(crate) const MINIUPNPD_CHAINS: &str =
    "chain miniupnpd { }\nchain prerouting_miniupnpd { }\nchain postrouting_miniupnpd { }";

impl Miniupnpd {
    /// Starts it in `router` for the LAN `lan` (a /24, e.g.
    /// `10.77.0.0/24`), NAT-PMP on if `natpmp` (UPnP IGD always); its
    /// files are `dir/<name>.{conf,log,err,pid}`. Returns once its sockets
    /// are bound (SSDP, NAT-PMP if on, and its HTTP port, the only TCP
    /// listener in the router), within `patience`.
    pub(crate) fn start(
        router: &str,
        lan: &str,
        natpmp: bool,
        dir: &Path,
        name: &str,
        patience: Duration,
    ) -> Miniupnpd {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan0\nlistening_ip=lan0\nenable_natpmp={}\nenable_upnp=yes\n\
                 secure_mode=yes\nsystem_uptime=no\nuuid=3a9f1a3c-0c43-4bd5-b6e3-9f1d2b0c0f11\n\
                 allow 1024-65535 {lan} 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                if natpmp { "yes" } else { "no" }
            ),
        )
        .unwrap();
        let child = command_in(router, "miniupnpd")
            .args(["-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.join(format!("{name}.pid")))
            .stdout(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("miniupnpd");
        wait_for(patience, "miniupnpd to listen", || {
            let out = exec_in(router, "ss", &["-Hlntu"]);
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

/// Starts `canopy ARGS` in namespace `ns` with `HOME` and `XDG_DATA_HOME`
/// at `dir` (created), `RUST_LOG` set to `log` and its stderr in
/// `dir/stderr.log`; returns it with its first stdout line, parsed, which
/// must come within `patience`.
pub(crate) async fn spawn_in(
    patience: Duration,
    ns: &str,
    dir: &Path,
    log: &str,
    args: &[&str],
) -> (tokio::process::Child, serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, CANOPY])
        .args(args)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let hello = super::startup_line(patience, &mut child)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{args:?} exited before its startup line: {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            )
        });
    (child, hello)
}

/// The arguments of `canopy leaf --json` with supernode `supernode`,
/// sharing `share`, listening on `listen`, its control API on a free
/// loopback port and its data in `data`; a test adds its own flags.
pub(crate) fn leaf_args(supernode: &str, share: &Path, listen: &str, data: &Path) -> Vec<String> {
    let (share, data) = (share.to_str().unwrap(), data.to_str().unwrap());
    [
        "leaf",
        "--supernode",
        supernode,
        "--share",
        share,
        "--listen",
        listen,
        "--control",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--json",
    ]
    .map(str::to_owned)
    .to_vec()
}
