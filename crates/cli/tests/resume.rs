//! `canopy get` killed with SIGKILL half-way resumes from the groups it had
//! verified, fetching only the rest.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::time::Duration;

use canopy_node::leaf::LeafOptions;
use canopy_proto::{ContentId, SharedFile};
use canopy_testkit::fake_source::{self, Misbehaviour};
use canopy_testkit::overlay::*;
use support::CANOPY;
use tokio::process::Command;

mod support;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn get_killed_half_way_resumes_without_refetching() {
    init_logs();
    let nodes = line(1).await;
    // Eight groups, fetched from a random start: the stalling source's
    // budget goes to three of them (or a few more if a run wraps), and
    // what a resume keeps is whatever verifies on disk after the kill.
    let data = sample_bytes(8 * MIB, 11);
    let id = ContentId(*blake3::hash(&data).as_bytes());
    let file = SharedFile {
        content_id: id,
        name: "film.mkv".into(),
        size: data.len() as u64,
        available: None,
    };
    // The first source stalls after three groups and never finishes.
    let stalling = fake_source::start(data.clone(), Misbehaviour::StallAfter(3 * MIB as u64)).await;
    let mut options = LeafOptions::new(nodes[0].local_addr());
    options.advertise = Some(stalling.addr);
    let announcer = start_leaf(options).await;
    announcer.set_shares(vec![file]).await.unwrap();
    nodes[0]
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("film.mkv");
    let supernode = nodes[0].local_addr().to_string();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "get",
            "--supernode",
            &supernode,
            "--json",
            "--search-timeout",
            "0.5",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let mut first = Command::new(CANOPY)
        .args(args(&[
            "--stall-timeout",
            "600",
            "-o",
            target.to_str().unwrap(),
            &id.to_hex(),
        ]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Wait until three groups are verified on disk, then pull the plug.
    let partial = out.path().join(format!(".canopy-{id}.partial"));
    let verified_on_disk = || {
        let on_disk = std::fs::read(&partial).unwrap_or_default();
        (0..data.len() / MIB)
            .filter(|g| {
                let group = g * MIB..(g + 1) * MIB;
                on_disk.get(group.clone()) == Some(&data[group])
            })
            .count()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while verified_on_disk() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().await.unwrap(); // SIGKILL: no chance to clean up
    let _ = first.wait().await;
    assert!(!target.exists());
    let kept = verified_on_disk() * MIB;
    assert!(kept >= 3 * MIB && kept < data.len(), "{kept} bytes kept");

    // The stalling source goes; an honest one comes.
    announcer.shutdown().await;
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("film.mkv"), &data).unwrap();
    let honest = leaf(&nodes[0], Some(folder.path())).await;
    nodes[0]
        .wait_for(PATIENCE, |s| s.leaves == 1 && s.index_files == 1)
        .await
        .unwrap();

    let output = Command::new(CANOPY)
        .args(args(&["-o", target.to_str().unwrap(), &id.to_hex()]))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(std::fs::read(&target).unwrap() == data);
    assert_eq!(report["resumed_bytes"], kept as u64);
    let source = honest.listen_addr().unwrap().to_string();
    assert_eq!(
        report["bytes_per_source"][&source],
        (data.len() - kept) as u64
    );
    assert_eq!(report["sources_used"], 1);
    assert_eq!(report["id"], id.to_hex());
    assert_eq!(report["path"], target.to_str().unwrap());
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
}
