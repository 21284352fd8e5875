//! A small crowd of running leaves, end to end, as separate `canopy`
//! processes on 127.0.0.1: a supernode, a seed leaf whose upload is
//! limited (so the seed alone would take a while for everyone), and three
//! downloading leaves that all queue the file at once. Once one of them
//! has uploaded to the others (it serves its partial download), it is
//! killed with SIGKILL mid-swarm; the other two still finish with the
//! right bytes (that downloaders give each other bytes is shown in
//! canopy-transfer's and canopy-node's swarm tests, where the bytes per
//! source can be read).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Run, canopy, json_lines, terminate};
use tokio::process::Child;

mod support;

const PATIENCE: Duration = Duration::from_secs(90);
/// Eight groups, and a seed that uploads 1 MiB/s to everyone together.
const FILE_BYTES: usize = 8 << 20;
const SEED_RATE: u64 = 1 << 20;

async fn spawn_node(args: &[&str], home: &Path) -> (Child, serde_json::Value) {
    support::spawn_node(PATIENCE, args, &[("XDG_DATA_HOME", home), ("HOME", home)]).await
}

/// Runs `canopy ARGS` until `done` accepts its result.
async fn until(what: &str, args: &[&str], done: impl FnMut(&Run) -> bool) -> Run {
    support::until(PATIENCE, what, args, done).await
}

/// The bytes `data`'s leaf has uploaded so far.
async fn uploaded(data: &str) -> u64 {
    let run = canopy(PATIENCE, &["status", "--json", "--data-dir", data]).await;
    serde_json::from_str::<serde_json::Value>(run.stdout.trim())
        .ok()
        .and_then(|status| status["totals"]["uploaded_bytes"].as_u64())
        .unwrap_or(0)
}

fn sample(len: usize) -> Vec<u8> {
    support::sample(len, 0x2545_f491_4f6c_dd1d)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloader_killed_mid_swarm_stops_none_of_the_others() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let bytes = sample(FILE_BYTES);
    let id = blake3::hash(&bytes).to_hex().to_string();
    let share = dir("share");
    std::fs::write(Path::new(&share).join("Crowd.mkv"), &bytes).unwrap();

    let (supernode, hello) = spawn_node(
        &["supernode", "--listen", "127.0.0.1:0", "--json"],
        &root.path().join("supernode-home"),
    )
    .await;
    let at = hello["addr"].as_str().unwrap().to_owned();
    let seed_data = dir("seed");
    let rate = SEED_RATE.to_string();
    let (seed, _) = spawn_node(
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
            &seed_data,
            "--upload-rate-limit",
            &rate,
            "--json",
        ],
        &root.path().join("seed-home"),
    )
    .await;
    let mut crowd = Vec::new();
    for n in 0..3 {
        let (data, downloads) = (dir(&format!("leaf{n}")), dir(&format!("downloads{n}")));
        let (child, _) = spawn_node(
            &[
                "leaf",
                "--supernode",
                &at,
                "--listen",
                "127.0.0.1:0",
                "--control",
                "127.0.0.1:0",
                "--data-dir",
                &data,
                "--downloads",
                &downloads,
                "--json",
            ],
            &root.path().join(format!("home{n}")),
        )
        .await;
        crowd.push((child, data, downloads));
    }
    // Everyone is up and the seed's file is in the index.
    until(
        "the seed's file to be found",
        &[
            "search",
            "--data-dir",
            &crowd[0].1,
            "--json",
            "--timeout",
            "1",
            "crowd",
        ],
        |run| run.code == Some(0) && run.stdout.contains(&id),
    )
    .await;

    // All at once.
    for (_, data, _) in &crowd {
        let run = canopy(PATIENCE, &["get", &id, "--detach", "--data-dir", data]).await;
        assert_eq!(run.code, Some(0), "{} {}", run.stdout, run.stderr);
    }
    // The victim serves its partial download to the others, then dies.
    let (mut victim, victim_data, _) = crowd.remove(0);
    let deadline = Instant::now() + PATIENCE;
    while uploaded(&victim_data).await == 0 {
        assert!(Instant::now() < deadline, "the victim never uploaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.kill().await.unwrap(); // SIGKILL
    let _ = victim.wait().await;

    for (_, data, downloads) in &crowd {
        let run = until(
            "a survivor's download to finish",
            &["downloads", "--json", "--data-dir", data],
            |run| {
                run.code == Some(0)
                    && json_lines(&run.stdout).iter().any(|d| {
                        d["id"] == id.as_str() && d["state"] != "active" && d["state"] != "queued"
                    })
            },
        )
        .await;
        let entry = json_lines(&run.stdout)
            .into_iter()
            .find(|d| d["id"] == id.as_str())
            .unwrap();
        assert_eq!(entry["state"], "done", "{entry}");
        let saved = std::fs::read(Path::new(downloads).join("Crowd.mkv")).unwrap();
        assert_eq!(blake3::hash(&saved).to_hex().as_str(), id, "verified");
    }
    for (child, _, _) in crowd {
        assert_eq!(terminate(PATIENCE, child).await, Some(0));
    }
    assert_eq!(terminate(PATIENCE, seed).await, Some(0));
    assert_eq!(terminate(PATIENCE, supernode).await, Some(0));
}
