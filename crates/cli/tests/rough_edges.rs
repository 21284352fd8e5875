//! The `canopy` binary's rough edges, each run for real: `hash` takes a
//! file as `b3sum` does; an OS error is said once; logs off a terminal
//! carry no colour codes; a leaf keeps its node id across restarts and
//! runs without shares or supernodes given (its host cache has them);
//! SIGHUP re-reads the config file instead of killing the node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use canopy_node::supernode::{self, SupernodeOptions};
use support::{CANOPY, canopy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

mod support;

const PATIENCE: Duration = Duration::from_secs(20);

/// A running `canopy` node: its JSON stdout lines, its stderr kept.
struct Node {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    /// Starts `canopy args` with `XDG_DATA_HOME=home` (the default data
    /// directory under it), stderr piped.
    async fn start(args: &[&str], home: &Path) -> Self {
        let mut child = Command::new(CANOPY)
            .args(args)
            .env("XDG_DATA_HOME", home)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next JSON line on stdout.
    async fn next_line(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("no line in time")
            .unwrap();
        let Some(line) = line else {
            let mut stderr = String::new();
            let mut pipe = self.child.stderr.take().unwrap();
            let _ = pipe.read_to_string(&mut stderr).await;
            panic!("exited before the line: {stderr}");
        };
        serde_json::from_str(&line).unwrap()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM; the exit code and everything it wrote to stderr.
    async fn stop(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        tokio::time::timeout(PATIENCE, pipe.read_to_string(&mut stderr))
            .await
            .expect("stderr not closed")
            .unwrap();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        (status.code(), stderr)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_takes_a_file_and_prints_what_b3sum_prints() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Night Train.ogg");
    std::fs::write(&file, b"night train bytes").unwrap();
    let path = file.to_str().unwrap();
    let run = canopy(PATIENCE, &["hash", path]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let b3sum = std::process::Command::new("b3sum")
        .arg(path)
        .output()
        .expect("b3sum is installed (.ci/run installs it)");
    let expected = String::from_utf8(b3sum.stdout).unwrap();
    assert_eq!(run.stdout, expected);
    assert!(expected.starts_with(&blake3::hash(b"night train bytes").to_hex().to_string()));
    // A file and a folder together: the file, then the folder's files.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("Day Bus.ogg"), b"day bus bytes").unwrap();
    let run = canopy(PATIENCE, &["hash", path, folder.path().to_str().unwrap()]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(lines[1].ends_with("Day Bus.ogg"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_os_error_is_said_once() {
    // A port someone holds: the supernode can't listen on it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let run = canopy(
        PATIENCE,
        &[
            "supernode",
            "--listen",
            &addr,
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, Some(1));
    let line = run.stderr.lines().last().unwrap();
    assert!(
        line.starts_with("canopy: ") && line.contains(&addr),
        "{line}"
    );
    assert_eq!(line.matches("(os error").count(), 1, "said once: {line}");

    let run = canopy(PATIENCE, &["hash", "/no/such/file"]).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stderr.trim(),
        "canopy: /no/such/file: No such file or directory (os error 2)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_keeps_its_id_and_its_supernodes_without_shares_or_flags() {
    let overlay = supernode::start(SupernodeOptions::new(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .unwrap();
    // A host name, as a person writes it.
    let at = format!("localhost:{}", overlay.local_addr().port());
    // The default data directory ($XDG_DATA_HOME/canopy), no --share.
    let home = tempfile::tempdir().unwrap();
    let mut first = Node::start(
        &[
            "leaf",
            "--supernode",
            &at,
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--json",
        ],
        home.path(),
    )
    .await;
    let hello = first.next_line().await;
    assert_eq!(hello["files"], 0, "a download-only leaf");
    let id = hello["node_id"].as_str().unwrap().to_owned();
    overlay
        .wait_for(PATIENCE, |s| s.leaves == 1)
        .await
        .expect("the leaf attached");
    // The leaf records the supernode that took it in its host cache.
    let hosts = home.path().join("canopy/hosts.json");
    let port = format!(":{}\"", overlay.local_addr().port());
    tokio::time::timeout(PATIENCE, async {
        while !std::fs::read_to_string(&hosts).is_ok_and(|text| text.contains(&port)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the host cache names the supernode");
    let (code, stderr) = first.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colour codes off a terminal");
    assert!(stderr.contains("INFO"), "it logged: {stderr}");
    overlay
        .wait_for(PATIENCE, |s| s.leaves == 0)
        .await
        .expect("the leaf left");

    // Again with no --supernode: the host cache remembers where to go.
    let mut second = Node::start(
        &[
            "leaf",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--json",
        ],
        home.path(),
    )
    .await;
    let hello = second.next_line().await;
    assert_eq!(hello["node_id"], id.as_str(), "the same node id");
    overlay
        .wait_for(PATIENCE, |s| s.leaves == 1)
        .await
        .expect("attached through the host cache");
    assert_eq!(second.stop().await.0, Some(0));
    overlay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_config_and_says_what_changed() {
    let overlay = supernode::start(SupernodeOptions::new(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("Shared On Reload.txt"), b"reloaded").unwrap();
    let config = dir.path().join("leaf.toml");
    let data = dir.path().join("data");
    let base = format!(
        "supernodes = [\"{}\"]\nlisten = \"127.0.0.1:0\"\ncontrol = \"127.0.0.1:0\"\ndata_dir = \"{}\"\njson = true\n",
        overlay.local_addr(),
        data.display()
    );
    std::fs::write(&config, format!("{base}upload_slots = 4\n")).unwrap();
    // The command line sets the download rate: the file's is ignored.
    let mut leaf = Node::start(
        &[
            "leaf",
            "--config",
            config.to_str().unwrap(),
            "--download-rate-limit",
            "1000",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(leaf.next_line().await["event"], "sharing");

    std::fs::write(
        &config,
        format!(
            "{base}upload_slots = 7\nshares = [\"{}\"]\nrescan = 5\ndownload_rate_limit = 5\n",
            share.path().display()
        ),
    )
    .unwrap();
    leaf.signal("HUP");
    let reloaded = leaf.next_line().await;
    assert_eq!(reloaded["event"], "reloaded");
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["shares", "upload_slots"])
    );
    assert_eq!(reloaded["restart_needed"], serde_json::json!(["rescan"]));
    // The folder is shared at once: its file reaches the supernode's index.
    overlay
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .expect("the new share was published");

    // A broken file is refused; the leaf keeps running on what it had.
    std::fs::write(&config, format!("{base}upload_slots = 0\n")).unwrap();
    leaf.signal("HUP");
    let failed = leaf.next_line().await;
    assert_eq!(failed["event"], "reload_failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "config {}: key `upload_slots`: ",
            config.display()
        )),
        "{error}"
    );
    std::fs::write(&config, format!("{base}upload_slots = 7\n")).unwrap();
    leaf.signal("HUP");
    let reloaded = leaf.next_line().await;
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["shares"]),
        "compared with the last good reading"
    );
    overlay
        .wait_for(PATIENCE, |s| s.index_files == 0)
        .await
        .expect("the removed share was withdrawn");
    let (code, stderr) = leaf.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("config not reloaded"), "{stderr}");

    // A supernode without a config file shrugs a SIGHUP off.
    let mut node = Node::start(
        &["supernode", "--listen", "127.0.0.1:0", "--json"],
        dir.path(),
    )
    .await;
    assert_eq!(node.next_line().await["event"], "listening");
    node.signal("HUP");
    let reloaded = node.next_line().await;
    assert_eq!(reloaded["event"], "reloaded");
    assert_eq!(reloaded["config"], serde_json::Value::Null);
    let (code, stderr) = node.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no --config file"), "{stderr}");
    overlay.shutdown().await;
}
