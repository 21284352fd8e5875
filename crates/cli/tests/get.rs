//! The rough edges of standalone `canopy get` and `canopy search`, on the
//! real binary against an overlay on 127.0.0.1: a search returns at
//! `--max-results`, `-o newdir/` makes the folder, an existing target is
//! checked before searching (and an identical one is success), two gets of
//! one id into one folder never share a partial, and Ctrl-C pauses with a
//! line saying how to resume.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::{ContentId, SharedFile};
use canopy_testkit::fake_source::{self, FakeSource, Misbehaviour};
use canopy_testkit::overlay::{PATIENCE, leaf, line, sample_bytes, start_leaf};
use support::{CANOPY, canopy, interrupt};
use tokio::process::{Child, Command};

mod support;

const MIB: usize = 1 << 20;

fn id_of(data: &[u8]) -> ContentId {
    ContentId(*blake3::hash(data).as_bytes())
}

/// A supernode and a leaf sharing `name` with `data`.
async fn sharing(name: &str, data: &[u8]) -> (SupernodeHandle, LeafHandle, tempfile::TempDir) {
    let at = line(1).await.remove(0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), data).unwrap();
    let sharer = leaf(&at, Some(dir.path())).await;
    at.wait_for(PATIENCE, |s| s.index_files == 1).await.unwrap();
    (at, sharer, dir)
}

/// A supernode and a source of `data` that stalls after one group.
async fn stalling(data: &[u8]) -> (SupernodeHandle, LeafHandle, FakeSource) {
    let at = line(1).await.remove(0);
    let source = fake_source::start(data.to_vec(), Misbehaviour::StallAfter(MIB as u64)).await;
    let mut options = LeafOptions::new(at.local_addr());
    options.advertise = Some(source.addr);
    let announcer = start_leaf(options).await;
    announcer
        .set_shares(vec![SharedFile {
            content_id: id_of(data),
            name: "slow.bin".into(),
            size: data.len() as u64,
            available: None,
        }])
        .await
        .unwrap();
    at.wait_for(PATIENCE, |s| s.index_files == 1).await.unwrap();
    (at, announcer, source)
}

/// Starts a `canopy get` that will stall, and waits for its first group.
async fn stalled_get(at: &SupernodeHandle, id: ContentId, into: &Path) -> Child {
    let child = Command::new(CANOPY)
        .args([
            "get",
            "--supernode",
            &at.local_addr().to_string(),
            "--stall-timeout",
            "600",
            "-o",
            &format!("{}/", into.display()),
            &id.to_hex(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let partial = into.join(format!(".canopy-{id}.partial"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Groups come from a random start, so any verified byte counts.
    while std::fs::read(&partial).map_or(0, |d| d.iter().filter(|b| **b != 0).count()) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress on disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn search_returns_as_soon_as_it_has_max_results() {
    let (at, _sharer, _dir) = sharing("Night Train.ogg", b"night train bytes").await;
    // A 60 s timeout: finishing within PATIENCE means it did not wait.
    // A host name is taken as well as an address.
    let run = canopy(
        PATIENCE,
        &[
            "search",
            "--supernode",
            &format!("localhost:{}", at.local_addr().port()),
            "--timeout",
            "60",
            "--max-results",
            "1",
            "night",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and a row: {}", run.stdout);
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[1].starts_with("Night Train.ogg"));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_into_a_new_folder_creates_it_and_saves_inside() {
    let data = sample_bytes(2 * MIB + 3, 21);
    let (at, _sharer, _dir) = sharing("song.ogg", &data).await;
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("new").join("folder");
    let run = canopy(
        PATIENCE,
        &[
            "get",
            "--supernode",
            &at.local_addr().to_string(),
            "--search-timeout",
            "60",
            "-o",
            &format!("{}/", folder.display()),
            &id_of(&data).to_hex(),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(std::fs::read(folder.join("song.ogg")).unwrap(), data);
    assert!(run.stdout.starts_with("saved "), "{}", run.stdout);
    assert!(run.stdout.contains("from 1 source in"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_target_is_checked_before_searching() {
    let at = line(1).await.remove(0);
    let data = b"the file we already have".to_vec();
    let id = id_of(&data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("have.txt");
    std::fs::write(&target, &data).unwrap();
    let args = |id: &str| {
        vec![
            "get".to_owned(),
            "--supernode".to_owned(),
            at.local_addr().to_string(),
            "--search-timeout".to_owned(),
            "60".to_owned(),
            "-o".to_owned(),
            target.display().to_string(),
            id.to_owned(),
        ]
    };
    // Nobody shares it and the search would run 60 s: the file is there.
    let same = args(&id.to_hex());
    let run = canopy(
        PATIENCE,
        &same.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("already there"), "{}", run.stdout);
    // Another content at that name: refused at once, before any search.
    let other = args(&ContentId([7; 32]).to_hex());
    let run = canopy(
        PATIENCE,
        &other.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(std::fs::read(&target).unwrap(), data, "left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gets_of_one_id_into_one_folder_do_not_share_a_partial() {
    let data = sample_bytes(4 * MIB, 22);
    let id = id_of(&data);
    let (at, _announcer, _source) = stalling(&data).await;
    let out = tempfile::tempdir().unwrap();
    let first = stalled_get(&at, id, out.path()).await;
    let run = canopy(
        PATIENCE,
        &[
            "get",
            "--supernode",
            &at.local_addr().to_string(),
            "--search-timeout",
            "60",
            "-o",
            &format!("{}/", out.path().display()),
            &id.to_hex(),
        ],
    )
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("another download of this content"),
        "{}",
        run.stderr
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_pauses_keeping_the_partial_and_says_how_to_resume() {
    let data = sample_bytes(4 * MIB, 23);
    let id = id_of(&data);
    let (at, _announcer, _source) = stalling(&data).await;
    let out = tempfile::tempdir().unwrap();
    let child = stalled_get(&at, id, out.path()).await;
    let output = interrupt(PATIENCE, child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("paused"), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    assert!(out.path().join(format!(".canopy-{id}.partial")).exists());
    assert!(out.path().join(format!(".canopy-{id}.state")).exists());
}
