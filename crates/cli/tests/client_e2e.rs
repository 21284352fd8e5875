//! The CLI against real leaves, end to end: a supernode, a leaf sharing a
//! file and a second leaf, all `canopy` processes on 127.0.0.1 (port 0,
//! temporary data directories). Through the second leaf `canopy search`
//! finds the file, `canopy get 1` downloads it (verified here against
//! BLAKE3 as `b3sum` computes it), `canopy downloads` shows it done, and
//! `canopy uploads` on the first leaf shows the upload while it runs (the
//! first leaf's upload rate is limited so that it lasts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::{CANOPY, Run, canopy, json_lines, terminate};
use tokio::process::{Child, Command};

mod support;

const PATIENCE: Duration = Duration::from_secs(60);
/// The shared file's size, and the sharing leaf's upload rate: the
/// upload lasts about four seconds.
const FILE_BYTES: usize = 4 << 20;
const UPLOAD_RATE: u64 = 1 << 20;

/// Starts `canopy ARGS` (its home in `home`) and returns it with its first
/// stdout line, parsed.
async fn spawn_node(args: &[&str], home: &Path) -> (Child, serde_json::Value) {
    support::spawn_node(PATIENCE, args, &[("XDG_DATA_HOME", home), ("HOME", home)]).await
}

/// Runs `canopy ARGS` until `done` accepts its result.
async fn until(what: &str, args: &[&str], done: impl FnMut(&Run) -> bool) -> Run {
    support::until(PATIENCE, what, args, done).await
}

fn sample(len: usize) -> Vec<u8> {
    support::sample(len, 0x9e37_79b9_7f4a_7c15)
}

#[tokio::test(flavor = "multi_thread")]
async fn search_and_get_through_a_running_leaf_and_watch_the_upload() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (share, sharer_data, getter_data, downloads) =
        (dir("share"), dir("sharer"), dir("getter"), dir("downloads"));
    let bytes = sample(FILE_BYTES);
    let id = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(Path::new(&share).join("Harbour Lights.flac"), &bytes).unwrap();

    let (supernode, hello) = spawn_node(
        &["supernode", "--listen", "127.0.0.1:0", "--json"],
        &root.path().join("supernode-home"),
    )
    .await;
    let at = hello["addr"].as_str().unwrap().to_owned();
    let rate = UPLOAD_RATE.to_string();
    let (sharer, _) = spawn_node(
        &[
            "leaf",
            "--supernode",
            &at,
            "--share",
            &share,
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            &sharer_data,
            "--upload-rate-limit",
            &rate,
            "--json",
        ],
        &root.path().join("sharer-home"),
    )
    .await;
    let (getter, _) = spawn_node(
        &[
            "leaf",
            "--supernode",
            &at,
            "--listen",
            "127.0.0.1:0",
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
    for data in [&sharer_data, &getter_data] {
        until(
            "the leaf's control API",
            &["status", "--data-dir", data],
            |run| run.code == Some(0),
        )
        .await;
    }

    // The sharer publishes in the background: search until it is found.
    let run = until(
        "the shared file to be found",
        &[
            "search",
            "--data-dir",
            &getter_data,
            "--json",
            "--timeout",
            "1",
            "harbour",
        ],
        |run| run.code == Some(0) && !run.stdout.is_empty(),
    )
    .await;
    let rows = json_lines(&run.stdout);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert_eq!(rows[0]["n"], 1);
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["name"], "Harbour Lights.flac");
    assert_eq!(rows[0]["size"], FILE_BYTES);
    assert!(Path::new(&getter_data).join("last-search.json").exists());

    let get = Command::new(CANOPY)
        .args(["get", "1", "--data-dir", &getter_data])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // While it runs, the sharer lists the upload.
    let run = until(
        "the sharer to list the upload",
        &["uploads", "--json", "--data-dir", &sharer_data],
        |run| run.code == Some(0) && run.stdout.contains(&id),
    )
    .await;
    let uploads = json_lines(&run.stdout);
    let upload = uploads
        .iter()
        .find(|u| u["content_id"] == id.as_str())
        .unwrap();
    assert_eq!(upload["name"], "Harbour Lights.flac");
    assert!(upload["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let text = canopy(PATIENCE, &["uploads", "--data-dir", &sharer_data]).await;
    assert!(text.stdout.starts_with("PEER"), "{}", text.stdout);

    let output = tokio::time::timeout(PATIENCE, get.wait_with_output())
        .await
        .expect("the download finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let saved = Path::new(&downloads).join("Harbour Lights.flac");
    assert_eq!(stdout, format!("saved {} (4.00 MiB)\n", saved.display()));
    let fetched = std::fs::read(&saved).unwrap();
    assert_eq!(blake3::hash(&fetched).to_hex().as_str(), id, "verified");
    assert_eq!(fetched, bytes);

    let run = canopy(
        PATIENCE,
        &["downloads", "--json", "--data-dir", &getter_data],
    )
    .await;
    let queue = json_lines(&run.stdout);
    assert_eq!(queue.len(), 1, "{}", run.stdout);
    assert_eq!(queue[0]["id"], id.as_str());
    assert_eq!(queue[0]["state"], "done");
    assert_eq!(queue[0]["verified_bytes"], FILE_BYTES);
    let run = canopy(PATIENCE, &["downloads", "--data-dir", &getter_data]).await;
    assert!(run.stdout.contains("1  done"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains(&format!("    saved to: {}\n", saved.display())),
        "{}",
        run.stdout
    );

    let run = canopy(PATIENCE, &["status", "--json", "--data-dir", &sharer_data]).await;
    let status: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(
        status["totals"]["uploaded_bytes"].as_u64().unwrap() >= FILE_BYTES as u64,
        "{status}"
    );

    assert_eq!(terminate(PATIENCE, getter).await, Some(0));
    assert_eq!(terminate(PATIENCE, sharer).await, Some(0));
    assert_eq!(terminate(PATIENCE, supernode).await, Some(0));
    assert!(
        !Path::new(&getter_data).join("control.json").exists(),
        "a clean stop removes control.json"
    );
    let run = canopy(PATIENCE, &["status", "--data-dir", &getter_data]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("no running leaf found"),
        "{}",
        run.stderr
    );
}
