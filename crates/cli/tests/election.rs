//! `canopy leaf` elects itself supernode: two `canopy supernode`s of one
//! leaf slot each, a sharer filling one, and a reachable leaf (thresholds
//! lowered, as flags) that is refused by the full one says it was
//! promoted; a standalone search through the supernode it started finds
//! the sharer's file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::{CANOPY, Run, json_lines, spawn_node, until};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PATIENCE: Duration = Duration::from_secs(30);

/// Starts `canopy ARGS` in `home` and hands every stdout line, parsed, to
/// the returned channel.
fn spawn_following(
    args: &[&str],
    home: &Path,
) -> (
    Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let mut child = Command::new(CANOPY)
        .args(args)
        .env("XDG_DATA_HOME", home)
        .env("HOME", home)
        .stdout(Stdio::piped())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(home.with_extension("log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = tx.send(value);
            }
        }
    });
    (child, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reachable_leaf_in_a_full_network_says_it_was_promoted_and_its_supernode_serves_searches()
{
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let home = |name: &str| root.path().join(format!("{name}-home"));
    let share = dir("share");
    std::fs::write(Path::new(&share).join("elected by the cli.txt"), b"hello").unwrap();

    let supernode = |peer: Option<String>| {
        let mut args = vec![
            "supernode".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--max-leaves".into(),
            "1".into(),
            "--no-lan-discovery".into(),
            "--no-port-mapping".into(),
            "--json".into(),
        ];
        if let Some(peer) = peer {
            args.extend(["--peer".into(), peer]);
        }
        args
    };
    let args = supernode(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_s1, hello) = spawn_node(PATIENCE, &args, &[("HOME", &home("s1"))]).await;
    let s1 = hello["addr"].as_str().unwrap().to_owned();
    let args = supernode(Some(s1.clone()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_s2, hello) = spawn_node(PATIENCE, &args, &[("HOME", &home("s2"))]).await;
    let s2 = hello["addr"].as_str().unwrap().to_owned();

    // The sharer fills the first supernode.
    let sharer_data = dir("sharer");
    let (_sharer, _) = spawn_node(
        PATIENCE,
        &[
            "leaf",
            "--supernode",
            &s1,
            "--share",
            &share,
            // Only the first: the candidate needs room at the second.
            "--supernodes-wanted",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            &sharer_data,
            "--no-lan-discovery",
            "--no-port-mapping",
            "--no-auto-supernode",
            "--json",
        ],
        &[
            ("XDG_DATA_HOME", &home("sharer")),
            ("HOME", &home("sharer")),
        ],
    )
    .await;
    until(
        PATIENCE,
        "the sharer to join",
        &["status", "--data-dir", &sharer_data, "--json"],
        |run: &Run| {
            run.code == Some(0)
                && json_lines(&run.stdout).first().is_some_and(|status| {
                    status["supernodes"]
                        .as_array()
                        .is_some_and(|list| !list.is_empty())
                })
        },
    )
    .await;

    // The candidate knows both; the first refuses it as full, the second
    // takes it and finds it reachable.
    let candidate_data = dir("candidate");
    let (_candidate, mut lines) = spawn_following(
        &[
            "leaf",
            "--supernode",
            &s1,
            "--supernode",
            &s2,
            "--supernodes-wanted",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            &candidate_data,
            "--no-lan-discovery",
            "--no-port-mapping",
            "--supernode-listen",
            "127.0.0.1:0",
            "--election-interval",
            "1",
            "--election-min-uptime",
            "0",
            "--election-min-upload-rate",
            "0",
            "--election-min-download-rate",
            "0",
            "--election-min-memory",
            "0",
            "--election-scarce-free-slots",
            "0",
            "--json",
        ],
        &home("candidate"),
    );
    let promoted = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.recv().await {
            if line["event"] == "promoted" {
                return line;
            }
        }
        panic!("the candidate exited without being promoted");
    })
    .await
    .unwrap_or_else(|_| {
        let log = std::fs::read_to_string(home("candidate").with_extension("log"));
        panic!(
            "the candidate was never promoted; its log:\n{}",
            log.unwrap_or_default()
        )
    });
    let elected = promoted["addr"].as_str().unwrap().to_owned();
    assert_ne!(elected, s1);
    assert_ne!(elected, s2);

    // A standalone search through the elected supernode finds the file
    // (its query crosses to the first supernode's sharer).
    let run = until(
        PATIENCE,
        "a search through the elected supernode to find the file",
        &[
            "search",
            "--supernode",
            &elected,
            "--json",
            "--timeout",
            "3",
            "elected",
        ],
        |run: &Run| run.code == Some(0) && run.stdout.contains("elected by the cli.txt"),
    )
    .await;
    assert!(run.stdout.contains("elected by the cli.txt"));
}
