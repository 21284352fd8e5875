//! The `canopy` binary against overlays on 127.0.0.1: search output in both
//! formats, search by id, failure against a closed port, and real
//! `canopy supernode` / `canopy leaf` processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use canopy_node::leaf::{self, LeafHandle, LeafOptions};
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use support::{canopy, json_lines, terminate};
use tokio::process::Child;

mod support;

const PATIENCE: Duration = Duration::from_secs(20);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn overlay_with_shared(dir: &Path) -> (Vec<SupernodeHandle>, LeafHandle) {
    let first = supernode::start(SupernodeOptions::new(localhost()))
        .await
        .unwrap();
    let mut options = SupernodeOptions::new(localhost());
    options.peers = vec![first.local_addr()];
    let second = supernode::start(options).await.unwrap();
    second
        .wait_for(PATIENCE, |s| s.supernode_peers == 1)
        .await
        .unwrap();
    let mut leaf_options = LeafOptions::new(first.local_addr());
    leaf_options.listen = Some(localhost());
    leaf_options.shares = vec![dir.to_owned()];
    let sharer = leaf::start(leaf_options).await.unwrap();
    sharer.wait_connected(PATIENCE).await.unwrap();
    first
        .wait_for(PATIENCE, |s| s.index_files == 2)
        .await
        .unwrap();
    (vec![first, second], sharer)
}

#[tokio::test(flavor = "multi_thread")]
async fn search_prints_json_lines_a_table_and_finds_by_id() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Night Train.ogg"), b"night train bytes").unwrap();
    std::fs::write(dir.path().join("Day Bus.ogg"), b"day bus bytes").unwrap();
    let (nodes, sharer) = overlay_with_shared(dir.path()).await;
    let at = nodes[1].local_addr().to_string();

    let run = canopy(
        PATIENCE,
        &[
            "search",
            "--supernode",
            &at,
            "--json",
            "--timeout",
            "1",
            "night",
            "train",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 1);
    let id = blake3::hash(b"night train bytes").to_hex().to_string();
    assert_eq!(lines[0]["id"], id.as_str());
    assert_eq!(lines[0]["name"], "Night Train.ogg");
    assert_eq!(lines[0]["size"], 17);
    let source = sharer.listen_addr().unwrap().to_string();
    assert_eq!(lines[0]["sources"], serde_json::json!([source]));

    let run = canopy(
        PATIENCE,
        &[
            "search",
            "--supernode",
            &at,
            "--json",
            "--timeout",
            "1",
            "--id",
            &id,
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["name"], "Night Train.ogg");

    let run = canopy(
        PATIENCE,
        &["search", "--supernode", &at, "--timeout", "1", "ogg"],
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.starts_with("NAME"), "a table: {}", run.stdout);
    assert!(run.stdout.contains("Day Bus.ogg") && run.stdout.contains("Night Train.ogg"));

    let run = canopy(
        PATIENCE,
        &[
            "search",
            "--supernode",
            &at,
            "--json",
            "--timeout",
            "0.5",
            "nothing",
            "here",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.is_empty(), "no results, no lines");
}

#[tokio::test(flavor = "multi_thread")]
async fn search_against_a_closed_port_fails_with_one_line() {
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = canopy(
        PATIENCE,
        &["search", "--supernode", &port.to_string(), "anything"],
    )
    .await;
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.is_empty());
    let stderr = run.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("cannot reach supernode"), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
}

/// Starts `canopy` with `args`, each node with its own data directory: no
/// host cache shared between runs.
async fn spawn_node(args: &[&str]) -> (Child, serde_json::Value) {
    let data = tempfile::tempdir().unwrap().keep();
    support::spawn_node(PATIENCE, args, &[("XDG_DATA_HOME", &data)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn supernode_and_leaf_processes_serve_a_search_and_stop_on_sigterm() {
    let share = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("Process Proof.txt"), b"proof").unwrap();

    let (first, hello) = spawn_node(&["supernode", "--listen", "127.0.0.1:0", "--json"]).await;
    let first_addr = hello["addr"].as_str().unwrap().to_owned();
    let (second, hello) = spawn_node(&[
        "supernode",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &first_addr,
        "--json",
    ])
    .await;
    let second_addr = hello["addr"].as_str().unwrap().to_owned();
    // `canopy node` is `canopy leaf` (with the election, on by default).
    let (leaf, hello) = spawn_node(&[
        "node",
        "--supernode",
        &first_addr,
        "--share",
        share.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(hello["files"], 1);
    assert!(data.path().join("hash-cache.json").exists());

    // The leaf publishes and the supernodes link up in the background:
    // search until it shows up (each try waits for its own timeout).
    let mut found = Vec::new();
    for _ in 0..20 {
        let run = canopy(
            PATIENCE,
            &[
                "search",
                "--supernode",
                &second_addr,
                "--json",
                "--timeout",
                "0.5",
                "proof",
            ],
        )
        .await;
        found = json_lines(&run.stdout);
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(found.len(), 1, "the leaf's file was never found");
    assert_eq!(found[0]["sources"][0], hello["listen"]);

    assert_eq!(terminate(PATIENCE, leaf).await, Some(0));
    assert_eq!(terminate(PATIENCE, second).await, Some(0));
    assert_eq!(terminate(PATIENCE, first).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_finds_everything_it_planted() {
    let run = canopy(PATIENCE, &["demo", "--json"]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 7, "five searches, two downloads");
    for line in &lines {
        assert_eq!(line["ok"], true, "{line}");
    }
    // The search across three supernodes found alice's file.
    assert_eq!(
        lines[0]["results"][0]["name"],
        "Aurora Borealis - Night Sky.flac"
    );
    // The TTL-2 search found nothing.
    assert_eq!(lines[4]["results"], serde_json::json!([]));
    // Two sources fed the first download; the second came by push.
    assert_eq!(lines[5]["sources_used"], 2);
    let pushed = lines[6]["bytes_per_source"].as_object().unwrap();
    assert!(
        pushed.keys().all(|source| source.ends_with("(push)")),
        "{pushed:?}"
    );
    // Bob listens nowhere, so he can't punch from the port his hit names:
    // his dial reached the downloader's punch port, a push.
    let paths = lines[6]["paths_per_source"].as_object().unwrap();
    assert!(!paths.is_empty(), "{}", lines[6]);
    assert!(
        paths.values().all(|p| p == &serde_json::json!(["push"])),
        "{paths:?}"
    );
    let direct = lines[5]["paths_per_source"].as_object().unwrap();
    assert!(
        direct.values().all(|p| p == &serde_json::json!(["direct"])),
        "{direct:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_names_the_file_and_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("max_leaves = \"many\"\n", "max_leaves"),
        ("ttl_cap = 9\n", "ttl_cap"),
        ("listen = \"not an address\"\n", "listen"),
        ("max_leafs = 3\n", "max_leafs"),
    ] {
        let path = dir.path().join("supernode.toml");
        std::fs::write(&path, text).unwrap();
        let run = canopy(PATIENCE, &["supernode", "--config", path.to_str().unwrap()]).await;
        assert_eq!(run.code, Some(2), "{text}: {}", run.stderr);
        assert!(
            run.stderr.contains("supernode.toml"),
            "names the file: {}",
            run.stderr
        );
        assert!(run.stderr.contains(key), "names `{key}`: {}", run.stderr);
    }
    for (text, key) in [
        ("limit_exempt = [\"everyone\"]\n", "limit_exempt"),
        ("uploads_per_ip = 0\n", "uploads_per_ip"),
        ("http_header_timeout = 0\n", "http_header_timeout"),
    ] {
        let path = dir.path().join("leaf.toml");
        let text = format!("supernodes = [\"127.0.0.1:1\"]\nshares = [\"/tmp\"]\n{text}");
        std::fs::write(&path, &text).unwrap();
        let run = canopy(PATIENCE, &["leaf", "--config", path.to_str().unwrap()]).await;
        assert_eq!(run.code, Some(2), "{text}: {}", run.stderr);
        assert!(run.stderr.contains(key), "names `{key}`: {}", run.stderr);
    }
    // No shares is a download-only leaf; no supernode, no bootstrap name,
    // LAN discovery off and an empty host cache is nowhere to go.
    let path = dir.path().join("leaf.toml");
    let data = dir.path().join("empty-data");
    std::fs::write(
        &path,
        format!("data_dir = \"{}\"\nlan_discovery = false\n", data.display()),
    )
    .unwrap();
    let run = canopy(PATIENCE, &["leaf", "--config", path.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("key `supernodes`"), "{}", run.stderr);
    assert!(
        run.stderr.contains("--supernode") && run.stderr.contains("--bootstrap"),
        "says what to pass: {}",
        run.stderr
    );
    let missing = canopy(PATIENCE, &["leaf", "--config", "/no/such/file.toml"]).await;
    assert_eq!(missing.code, Some(2));
    assert!(
        missing.stderr.contains("/no/such/file.toml"),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_files_configure_nodes_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("From Config.txt"), b"configured").unwrap();
    // The file says port 1; the flag overrides it.
    let sn_config = dir.path().join("supernode.toml");
    std::fs::write(
        &sn_config,
        "listen = \"127.0.0.1:1\"\nmax_leaves = 10\njson = true\n",
    )
    .unwrap();
    let (supernode, hello) = spawn_node(&[
        "supernode",
        "--config",
        sn_config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    let addr = hello["addr"].as_str().unwrap().to_owned();
    assert_ne!(addr, "127.0.0.1:1");
    // Everything for the leaf comes from its file.
    let leaf_config = dir.path().join("leaf.toml");
    std::fs::write(
        &leaf_config,
        format!(
            "supernodes = [\"{addr}\"]\nshares = [\"{}\"]\nlisten = \"127.0.0.1:0\"\ncontrol = \"127.0.0.1:0\"\ndata_dir = \"{}\"\njson = true\n",
            share.path().display(),
            dir.path().join("leaf-data").display()
        ),
    )
    .unwrap();
    let (leaf, hello) = spawn_node(&["leaf", "--config", leaf_config.to_str().unwrap()]).await;
    assert_eq!(hello["files"], 1);
    assert!(dir.path().join("leaf-data/hash-cache.json").exists());
    let mut found = Vec::new();
    for _ in 0..20 {
        let run = canopy(
            PATIENCE,
            &[
                "search",
                "--supernode",
                &addr,
                "--json",
                "--timeout",
                "0.5",
                "config",
            ],
        )
        .await;
        found = json_lines(&run.stdout);
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(found.len(), 1);
    assert_eq!(terminate(PATIENCE, leaf).await, Some(0));
    assert_eq!(terminate(PATIENCE, supernode).await, Some(0));
}
