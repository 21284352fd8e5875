//! The relay across real NATs: two home networks, each behind a router
//! doing nftables `masquerade random` with a forward policy that drops
//! anything unsolicited (a symmetric NAT: a push can't get in, hole
//! punching can't guess the port), and a public `wan` namespace between
//! them where a supernode runs with `--relay-slots`. A firewalled leaf in
//! home A shares files; `canopy get` in home B finds them, its push fails,
//! and the download goes through the relay and completes verified, a file
//! bigger than a circuit's byte limit too (over new circuits), with the
//! circuits counted in the supernode's metrics. Needs root, `ip`, `nft`
//! and `curl` (.ci/run installs them): fails loudly without. The
//! namespaces (`crl<pid>-*`) are built here and removed whatever happens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::CANOPY;
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(30);
/// A relayed download waits out the push first (15 s).
const DOWNLOAD_PATIENCE: Duration = Duration::from_secs(120);
const SUPERNODE_PORT: u16 = 6346;
const METRICS: &str = "127.0.0.1:9346";
/// A circuit's byte limit: the least there is (2 MiB).
const RELAY_MAX_BYTES: u64 = 2 << 20;

/// One home network behind its router, as the wan sees it.
struct Home {
    /// Namespace names.
    home: &'static str,
    router: &'static str,
    /// The home's /24 (`10.7x.0`).
    lan: &'static str,
    /// The router's wan /24 (`93.184.x`), the wan namespace at `.2`.
    wan: &'static str,
}

const HOME_A: Home = Home {
    home: "ha",
    router: "ra",
    lan: "10.71.0",
    wan: "93.184.1",
};
const HOME_B: Home = Home {
    home: "hb",
    router: "rb",
    lan: "10.72.0",
    wan: "93.184.2",
};

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

/// The five namespaces; dropping it kills what runs in them and removes them.
struct Net {
    prefix: String,
}

const NAMESPACES: [&str; 5] = ["wan", "ra", "ha", "rb", "hb"];

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn up() -> Net {
        let net = Net {
            prefix: format!("crl{}", std::process::id()),
        };
        for name in NAMESPACES {
            let ns = net.ns(name);
            run("ip", &["netns", "add", &ns]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        let wan = net.ns("wan");
        run(
            "ip",
            &[
                "netns",
                "exec",
                &wan,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        for (i, home) in [HOME_A, HOME_B].iter().enumerate() {
            net.home_up(i, home);
        }
        net
    }

    /// home — router (symmetric NAT) — wan.
    fn home_up(&self, i: usize, home: &Home) {
        let (h, r, wan) = (self.ns(home.home), self.ns(home.router), self.ns("wan"));
        let veth = |tag: &str, a_ns: &str, a: &str, b_ns: &str, b: &str| {
            let (tmp_a, tmp_b) = (
                format!("{}{i}{tag}a", self.prefix),
                format!("{}{i}{tag}b", self.prefix),
            );
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
        let wan_dev = format!("w{i}");
        veth("l", &h, "eth0", &r, "lan0");
        veth("w", &r, "wan0", &wan, &wan_dev);
        let addr = |ns: &str, dev: &str, cidr: String| {
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", dev]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        };
        addr(&h, "eth0", format!("{}.2/24", home.lan));
        addr(&r, "lan0", format!("{}.1/24", home.lan));
        addr(&r, "wan0", format!("{}.1/24", home.wan));
        addr(&wan, &wan_dev, format!("{}.2/24", home.wan));
        let gateway = format!("{}.1", home.lan);
        run(
            "ip",
            &["-n", &h, "route", "add", "default", "via", &gateway],
        );
        let upstream = format!("{}.2", home.wan);
        run(
            "ip",
            &["-n", &r, "route", "add", "default", "via", &upstream],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        // A symmetric NAT: each connection out gets a random port, and
        // nothing unsolicited gets in.
        let rules = "table inet nat {\n\
              chain postrouting { type nat hook postrouting priority 100; policy accept;\n\
                oifname \"wan0\" masquerade random; }\n\
            }\n\
            table inet filter {\n\
              chain forward { type filter hook forward priority 0; policy drop;\n\
                ct state established,related accept; iifname \"lan0\" accept; }\n\
            }\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &r, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules for {r}");
    }

    /// The supernode's metrics, read from inside the wan namespace.
    fn metrics(&self) -> String {
        let out = try_run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns("wan"),
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{METRICS}/metrics"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in NAMESPACES {
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

/// A metric's value in Prometheus text, 0 if absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
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
        .env("RUST_LOG", "info")
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
    for tool in ["ip", "nft", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing (.ci/run installs it: nftables, iproute2, curl)"
        );
    }
}

/// The last lines of the log a node spawned with [`spawn_in`] at `home`.
fn log_tail(home: &Path) -> String {
    let log = std::fs::read_to_string(home.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `canopy get` from home B of `id` into `into`: its JSON report. On
/// failure, the source's and the supernode's logs (under `root`) too.
async fn get_from_home_b(net: &Net, root: &Path, id: &str, into: &Path) -> serde_json::Value {
    let supernode = format!("{}.2:{SUPERNODE_PORT}", HOME_B.wan);
    let out = tokio::time::timeout(
        DOWNLOAD_PATIENCE,
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &net.ns(HOME_B.home), CANOPY, "get"])
            .args(["--supernode", &supernode, "--json", "-o"])
            .arg(format!("{}/", into.display()))
            .arg(id)
            .env("RUST_LOG", "info")
            .output(),
    )
    .await
    .expect("canopy get finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "canopy get failed: {}\n{}\n--- the source:\n{}\n--- the supernode:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log_tail(&root.join("source")),
        log_tail(&root.join("supernode")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a report line");
    serde_json::from_str(last).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_between_two_symmetric_nats_go_through_the_relay() {
    require_tools();
    let root = tempfile::tempdir().unwrap();
    let net = Net::up();
    let (supernode, _) = spawn_in(
        &net.ns("wan"),
        &root.path().join("supernode"),
        &[
            "supernode",
            "--listen",
            &format!("0.0.0.0:{SUPERNODE_PORT}"),
            "--no-port-mapping",
            "--no-lan-discovery",
            "--relay-slots",
            "8",
            "--relay-per-ip",
            "8",
            "--relay-max-bytes",
            &RELAY_MAX_BYTES.to_string(),
            "--metrics",
            METRICS,
            "--json",
        ],
    )
    .await;

    // The source: firewalled in home A (its router lets nothing in).
    let share = root.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let small = support::sample(1_500_000, 1);
    let big = support::sample(7 * (1 << 20) + 5, 2);
    std::fs::write(share.join("small.bin"), &small).unwrap();
    std::fs::write(share.join("big.bin"), &big).unwrap();
    let source_data = root.path().join("source");
    let (source, _) = spawn_in(
        &net.ns(HOME_A.home),
        &source_data,
        &[
            "leaf",
            "--supernode",
            &format!("{}.2:{SUPERNODE_PORT}", HOME_A.wan),
            "--share",
            share.to_str().unwrap(),
            "--no-port-mapping",
            "--no-lan-discovery",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            source_data.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    wait_for("the source's files indexed", || {
        let text = net.metrics();
        match metric(&text, "canopy_index_files") {
            2 => Ok(()),
            n => Err(format!("{n} files")),
        }
    });

    for (name, data) in [("small.bin", &small), ("big.bin", &big)] {
        let id = blake3::hash(data).to_hex().to_string();
        let into = root.path().join(format!("got-{name}"));
        std::fs::create_dir_all(&into).unwrap();
        let report = get_from_home_b(&net, root.path(), &id, &into).await;
        let got = std::fs::read(into.join(name)).unwrap();
        assert!(got == *data, "{name} came whole and verified");
        let sources = report["bytes_per_source"].as_object().unwrap();
        assert!(
            sources.keys().any(|label| label.contains("relay via")),
            "{report}"
        );
        assert!(
            report["dropped_sources"].as_object().unwrap().is_empty(),
            "never dropped as a liar: {report}"
        );
        // Every connection that brought bytes came through the relay.
        let paths = report["paths_per_source"].as_object().unwrap();
        let relayed = |ways: &serde_json::Value| {
            ways.as_array()
                .is_some_and(|ways| !ways.is_empty() && ways.iter().all(|way| way == "relay"))
        };
        assert!(!paths.is_empty() && paths.values().all(relayed), "{report}");
    }
    let text = net.metrics();
    assert!(metric(&text, "canopy_relay_circuits_total") >= 2, "{text}");
    assert!(
        metric(&text, "canopy_relay_cut_bytes_total") >= 1,
        "the big file outgrew a circuit: {text}"
    );
    assert!(
        metric(&text, "canopy_relay_bytes_total") >= (small.len() + big.len()) as u64,
        "{text}"
    );

    assert_eq!(support::terminate(PATIENCE, source).await, Some(0));
    assert_eq!(support::terminate(PATIENCE, supernode).await, Some(0));
}
