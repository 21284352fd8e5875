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
use std::time::Duration;

use support::CANOPY;
use support::netns::{Net, exec_in, require_tools, spawn_in, wait_for};

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

/// The two homes and the wan between them.
struct Homes {
    net: Net,
}

impl Homes {
    fn up() -> Homes {
        let mut net = Net::new(format!("crl{}", std::process::id()));
        let wan = net.add_ns("wan");
        net.sysctl(&wan, "net.ipv4.ip_forward=1");
        for (i, home) in [HOME_A, HOME_B].iter().enumerate() {
            home_up(&mut net, i, home);
        }
        Homes { net }
    }

    fn ns(&self, name: &str) -> String {
        self.net.ns(name)
    }

    /// The supernode's metrics, read from inside the wan namespace.
    fn metrics(&self) -> String {
        let out = exec_in(
            &self.ns("wan"),
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                &format!("http://{METRICS}/metrics"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// home — router (symmetric NAT) — wan.
fn home_up(net: &mut Net, i: usize, home: &Home) {
    let (h, r, wan) = (
        net.add_ns(home.home),
        net.add_ns(home.router),
        net.ns("wan"),
    );
    net.link(
        (&h, "eth0", &format!("{}.2/24", home.lan)),
        (&r, "lan0", &format!("{}.1/24", home.lan)),
    );
    net.link(
        (&r, "wan0", &format!("{}.1/24", home.wan)),
        (&wan, &format!("w{i}"), &format!("{}.2/24", home.wan)),
    );
    net.route(&h, "default", &format!("{}.1", home.lan));
    net.route(&r, "default", &format!("{}.2", home.wan));
    net.sysctl(&r, "net.ipv4.ip_forward=1");
    // A symmetric NAT: each connection out gets a random port, and
    // nothing unsolicited gets in.
    net.nft(
        &r,
        "table inet nat {\n\
           chain postrouting { type nat hook postrouting priority 100; policy accept;\n\
             oifname \"wan0\" masquerade random; }\n\
         }\n\
         table inet filter {\n\
           chain forward { type filter hook forward priority 0; policy drop;\n\
             ct state established,related accept; iifname \"lan0\" accept; }\n\
         }\n",
    );
}

/// A metric's value in Prometheus text, 0 if absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The last lines of the log a node spawned with [`spawn_in`] at `home`.
fn log_tail(home: &Path) -> String {
    let log = std::fs::read_to_string(home.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `canopy get` from home B of `id` into `into`: its JSON report. On
/// failure, the source's and the supernode's logs (under `root`) too.
async fn get_from_home_b(net: &Homes, root: &Path, id: &str, into: &Path) -> serde_json::Value {
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
    require_tools(&["ip", "nft", "curl"]);
    let root = tempfile::tempdir().unwrap();
    let net = Homes::up();
    let (supernode, _) = spawn_in(
        PATIENCE,
        &net.ns("wan"),
        &root.path().join("supernode"),
        "info",
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
        PATIENCE,
        &net.ns(HOME_A.home),
        &source_data,
        "info",
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
    wait_for(PATIENCE, "the source's files indexed", || {
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
