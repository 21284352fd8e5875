//! LAN discovery on a real LAN: four hosts (network namespaces) on one bridge
//! (one /24, a default route as a home router gives), a supernode in one
//! and a leaf in each of two others, started with no `--supernode` and no
//! bootstrap name: both leaves find the supernode by multicast and join
//! it, each hears the other, and a search from the second finds the first
//! one's file, which `canopy get` then downloads across the LAN. A second
//! supernode started later peers with the first, and both leaves take it
//! as their second supernode. Needs root, iproute2 and curl (CI runs as
//! root); fails, never skips, without them.
//! The namespaces are removed at the end, also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use support::netns::{self, Net, require_tools};
use support::{CANOPY, Run, json_lines, terminate};
use tokio::process::Child;

mod support;

const PATIENCE: Duration = Duration::from_secs(60);
const SUBNET: &str = "10.78.0";

/// A switch namespace with a bridge; hosts are plugged into it.
fn lan() -> Net {
    let mut lan = Net::new(format!("cnl{}", std::process::id() % 100_000));
    let switch = lan.add_ns("sw");
    netns::run(
        "ip",
        &["-n", &switch, "link", "add", "br0", "type", "bridge"],
    );
    netns::run("ip", &["-n", &switch, "link", "set", "br0", "up"]);
    lan
}

/// Host `n` at `SUBNET.n`, its `eth0` plugged into the bridge.
fn host(lan: &mut Net, n: u8) -> String {
    let ns = lan.add_ns(&format!("h{n}"));
    let switch = lan.ns("sw");
    let port = format!("p{n}");
    lan.veth(&ns, "eth0", &switch, &port);
    netns::run(
        "ip",
        &["-n", &switch, "link", "set", &port, "master", "br0", "up"],
    );
    lan.addr(&ns, "eth0", &format!("{SUBNET}.{n}/24"));
    // The home router (absent: nothing here leaves the LAN).
    lan.route(&ns, "default", &format!("{SUBNET}.254"));
    ns
}

/// Starts `canopy ARGS` in namespace `ns` (home `home`) and returns it
/// once it printed its startup line.
async fn spawn_in(ns: &str, args: &[&str], home: &Path) -> Child {
    netns::spawn_in(PATIENCE, ns, home, "info", args).await.0
}

/// Runs `canopy ARGS` in namespace `ns` to the end.
async fn canopy_in(ns: &str, args: &[&str]) -> Run {
    netns::run_in(PATIENCE, ns, CANOPY, args).await
}

/// Runs `canopy ARGS` in `ns` until `done` accepts its result.
async fn until_in(ns: &str, what: &str, args: &[&str], done: impl FnMut(&Run) -> bool) -> Run {
    until_program_in(ns, CANOPY, what, args, done).await
}

/// Runs `PROGRAM ARGS` in `ns` until `done` accepts its result.
async fn until_program_in(
    ns: &str,
    program: &str,
    what: &str,
    args: &[&str],
    done: impl FnMut(&Run) -> bool,
) -> Run {
    let attempt = || netns::run_in(PATIENCE, ns, program, args);
    support::retry(PATIENCE, what, attempt, done).await
}

fn status(run: &Run) -> Option<serde_json::Value> {
    (run.code == Some(0))
        .then(|| serde_json::from_str(run.stdout.trim()).ok())
        .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn leaves_on_a_lan_find_its_supernode_and_each_other_with_no_configuration() {
    require_tools(&["ip", "curl"]);
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (share, sn_data, sn2_data, sharer_data, getter_data, downloads) = (
        dir("share"),
        dir("sn"),
        dir("sn2"),
        dir("sharer"),
        dir("getter"),
        dir("downloads"),
    );
    let bytes = support::sample(300_000, 0x1a2b);
    let id = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(Path::new(&share).join("Garden Party.ogg"), &bytes).unwrap();

    let mut lan = lan();
    let (sn_ns, sharer_ns, getter_ns, sn2_ns) = (
        host(&mut lan, 1),
        host(&mut lan, 2),
        host(&mut lan, 3),
        host(&mut lan, 4),
    );
    let supernode_addr = format!("{SUBNET}.1:6346");

    // All defaults: the supernode on 0.0.0.0:6346, the leaves on any port,
    // nobody told of anybody.
    let supernode = spawn_in(
        &sn_ns,
        &["supernode", "--json", "--data-dir", &sn_data],
        &root.path().join("sn-home"),
    )
    .await;
    let sharer = spawn_in(
        &sharer_ns,
        &[
            "leaf",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            &sharer_data,
            "--share",
            &share,
            "--json",
        ],
        &root.path().join("sharer-home"),
    )
    .await;
    let getter = spawn_in(
        &getter_ns,
        &[
            "leaf",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            &getter_data,
            "--downloads",
            &downloads,
            "--json",
        ],
        &root.path().join("getter-home"),
    )
    .await;

    for (ns, data) in [(&sharer_ns, &sharer_data), (&getter_ns, &getter_data)] {
        let run = until_in(
            ns,
            "the leaf to join the LAN's supernode",
            &["status", "--json", "--data-dir", data],
            |run| {
                status(run).is_some_and(|s| {
                    s["supernodes"] == serde_json::json!([supernode_addr.as_str()])
                })
            },
        )
        .await;
        let status = status(&run).unwrap();
        let lan_peers = status["lan_peers"].as_array().unwrap();
        assert!(
            lan_peers
                .iter()
                .any(|p| p["role"] == "supernode" && p["addr"] == supernode_addr.as_str()),
            "{status}"
        );
    }
    // Each leaf hears the other, at its HTTP address.
    let run = until_in(
        &getter_ns,
        "the getter to hear the sharer",
        &["status", "--json", "--data-dir", &getter_data],
        |run| {
            status(run).is_some_and(|s| {
                s["lan_peers"].as_array().is_some_and(|peers| {
                    peers.iter().any(|p| {
                        p["role"] == "leaf"
                            && p["addr"]
                                .as_str()
                                .is_some_and(|a| a.starts_with(&format!("{SUBNET}.2:")))
                    })
                })
            })
        },
    )
    .await;
    assert!(status(&run).is_some(), "{}", run.stdout);

    // A search from the getter finds the sharer's file through the
    // supernode neither was told of.
    let run = until_in(
        &getter_ns,
        "the shared file to be found",
        &[
            "search",
            "--data-dir",
            &getter_data,
            "--json",
            "--timeout",
            "1",
            "garden",
        ],
        |run| run.code == Some(0) && !run.stdout.is_empty(),
    )
    .await;
    let rows = json_lines(&run.stdout);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["name"], "Garden Party.ogg");

    // And downloads it from the sharer, across the LAN.
    let get = canopy_in(&getter_ns, &["get", "1", "--data-dir", &getter_data]).await;
    assert_eq!(get.code, Some(0), "{} {}", get.stdout, get.stderr);
    let fetched = std::fs::read(Path::new(&downloads).join("Garden Party.ogg")).unwrap();
    assert_eq!(blake3::hash(&fetched).to_hex().as_str(), id);

    // A second supernode comes up on the LAN: it peers with the first,
    // and the leaves (which keep two) take it as their second.
    let second = spawn_in(
        &sn2_ns,
        &[
            "supernode",
            "--json",
            "--data-dir",
            &sn2_data,
            "--metrics",
            "127.0.0.1:9346",
        ],
        &root.path().join("sn2-home"),
    )
    .await;
    until_program_in(
        &sn2_ns,
        "curl",
        "the second supernode to peer with the first",
        &["-sf", "http://127.0.0.1:9346/metrics"],
        |run| run.stdout.lines().any(|l| l == "canopy_supernode_peers 1"),
    )
    .await;
    let both = serde_json::json!([supernode_addr.as_str(), format!("{SUBNET}.4:6346")]);
    for (ns, data) in [(&sharer_ns, &sharer_data), (&getter_ns, &getter_data)] {
        until_in(
            ns,
            "the leaf to take the second supernode",
            &["status", "--json", "--data-dir", data],
            |run| status(run).is_some_and(|s| s["supernodes"] == both),
        )
        .await;
    }

    assert_eq!(terminate(PATIENCE, second).await, Some(0));
    assert_eq!(terminate(PATIENCE, getter).await, Some(0));
    assert_eq!(terminate(PATIENCE, sharer).await, Some(0));
    assert_eq!(terminate(PATIENCE, supernode).await, Some(0));
    let prefix = lan.prefix.clone();
    lan.down();
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let leftovers = String::from_utf8_lossy(&left.stdout);
    assert!(
        !leftovers.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left: {leftovers}"
    );
}
