//! The daemon's download queue against a real overlay on 127.0.0.1: a
//! supernode, a leaf sharing files, and a daemon in a temporary data
//! directory, driven through its `Control` implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_daemon::control::Control;
use canopy_daemon::model::{
    AddDownload, DownloadState, DownloadView, FileKind, SearchSpec, SettingsPatch, SortKey,
};
use canopy_daemon::{Daemon, DaemonHandle, DaemonOptions, QUEUE_FILE, control_file, settings};
use canopy_node::leaf::{LeafHandle, LeafOptions};
use canopy_node::supernode::SupernodeHandle;
use canopy_proto::ContentId;
use canopy_testkit::overlay::{self, PATIENCE, localhost};
use canopy_transfer::download::{partial_name, state_name};

/// A supernode, and the folders of one test.
struct World {
    supernode: SupernodeHandle,
    _root: tempfile::TempDir,
    data: PathBuf,
    downloads: PathBuf,
    shared: PathBuf,
}

impl World {
    async fn new() -> Self {
        overlay::init_logs();
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let downloads = root.path().join("downloads");
        let shared = root.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        Self {
            supernode: overlay::supernode(&[]).await,
            data,
            downloads,
            shared,
            _root: root,
        }
    }

    /// Writes a file of `len` sample bytes into the sharer's folder.
    fn share(&self, name: &str, len: usize, seed: u64) -> (ContentId, Vec<u8>) {
        let bytes = overlay::sample_bytes(len, seed);
        let path = self.shared.join(name);
        std::fs::write(&path, &bytes).unwrap();
        (canopy_share::hash_file(&path).unwrap(), bytes)
    }

    /// A leaf sharing the sharer's folder.
    async fn sharer(&self) -> LeafHandle {
        overlay::leaf(&self.supernode, Some(&self.shared)).await
    }

    fn options(&self) -> DaemonOptions {
        let mut leaf = LeafOptions::new(self.supernode.local_addr());
        leaf.listen = Some(localhost());
        leaf.data_dir = Some(self.data.clone());
        leaf.reconnect = true;
        DaemonOptions {
            leaf,
            control: localhost(),
            downloads_dir: self.downloads.clone(),
            share_downloads: true,
            settings: settings::defaults(),
        }
    }

    async fn daemon_with(&self, options: DaemonOptions) -> DaemonHandle {
        let handle = canopy_daemon::start(options).await.unwrap();
        handle.leaf().wait_connected(PATIENCE).await.unwrap();
        handle
    }

    async fn daemon(&self) -> DaemonHandle {
        self.daemon_with(self.options()).await
    }
}

fn add(id: ContentId) -> AddDownload {
    AddDownload {
        id: Some(id.to_hex()),
        ..AddDownload::default()
    }
}

/// Waits until download `id` satisfies `done`, and returns it.
async fn wait_for(
    daemon: &Arc<Daemon>,
    id: ContentId,
    what: &str,
    done: impl Fn(&DownloadView) -> bool,
) -> DownloadView {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let view = daemon.download(&id.to_hex());
        if let Ok(view) = &view {
            if done(view) {
                return view.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; last {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state_is(state: DownloadState) -> impl Fn(&DownloadView) -> bool {
    move |view| view.state == state
}

#[tokio::test]
async fn a_download_completes_verified_and_a_second_add_returns_the_same_entry() {
    let world = World::new().await;
    let (id, bytes) = world.share("song.mp3", 3 << 20, 1);
    let _sharer = world.sharer().await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    let control = control_file::read(&world.data).expect("control.json written at start");
    assert_eq!(control.url, handle.control_url());
    assert_eq!(control.pid, std::process::id());

    let (view, added) = daemon.add_download(add(id)).await.unwrap();
    assert!(added);
    assert_eq!(view.id, id.to_hex());
    let (again, added) = daemon.add_download(add(id)).await.unwrap();
    assert!(!added, "the same id is never queued twice");
    assert_eq!(again.added_at, view.added_at);
    assert_eq!(daemon.downloads().len(), 1);

    let done = wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    let path = world.downloads.join("song.mp3");
    assert_eq!(done.path.as_deref(), Some(path.to_str().unwrap()));
    assert_eq!(done.size, Some(bytes.len() as u64));
    assert_eq!(done.verified_bytes, bytes.len() as u64);
    assert_eq!(done.name, "song.mp3");
    assert!(done.finished_at.is_some());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(canopy_share::hash_file(&path).unwrap(), id);
    let status = daemon.status().await;
    // Bytes received: the file, its tree and the HTTP heads.
    let received = status.totals.downloaded_bytes;
    let len = bytes.len() as u64;
    assert!((len..len + 64 * 1024).contains(&received), "{received}");
    assert_eq!(status.totals.downloads_active, 0);
    assert_eq!(status.node_id, handle.leaf().node_id().to_string());

    let (again, added) = daemon.add_download(add(id)).await.unwrap();
    assert!(!added);
    assert_eq!(again.state, DownloadState::Done);
    drop(daemon);
    handle.shutdown().await;
    assert!(
        control_file::read(&world.data).is_none(),
        "control.json removed on a clean stop"
    );
}

#[tokio::test]
async fn no_more_than_max_active_downloads_run_at_once() {
    let world = World::new().await;
    // One download that stays running, part-way...
    let (stuck, stuck_bytes) = world.share("stuck.iso", 8 << 20, 51);
    let (_stalling, _source) = stalling_sharer(&world, stuck_bytes, 3 * GROUP).await;
    // ...and one another leaf has whole.
    let other_dir = tempfile::tempdir().unwrap();
    let bytes = overlay::sample_bytes(300_000, 52);
    std::fs::write(other_dir.path().join("next.bin"), &bytes).unwrap();
    let next = canopy_share::hash_file(&other_dir.path().join("next.bin")).unwrap();
    let _other = overlay::leaf(&world.supernode, Some(other_dir.path())).await;

    let mut options = world.options();
    options.settings.max_active_downloads = 1;
    let handle = world.daemon_with(options).await;
    let daemon = handle.control();
    let mut first = add(stuck);
    first.priority = Some(1);
    daemon.add_download(first).await.unwrap();
    daemon.add_download(add(next)).await.unwrap();
    wait_for(&daemon, stuck, "running part-way", |v| {
        v.state == DownloadState::Active && v.verified_bytes >= GROUP
    })
    .await;
    let waiting = daemon.download(&next.to_hex()).unwrap();
    assert_eq!(waiting.state, DownloadState::Queued, "waits for a turn");
    assert_eq!(daemon.status().await.totals.downloads_active, 1);
    // Its turn comes when the running one stops.
    daemon.pause(&stuck.to_hex()).unwrap();
    wait_for(&daemon, next, "done", state_is(DownloadState::Done)).await;
    assert_eq!(
        std::fs::read(world.downloads.join("next.bin")).unwrap(),
        bytes
    );
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_paused_download_waits_and_completes_once_resumed() {
    let world = World::new().await;
    let (id, bytes) = world.share("film.mkv", 2 << 20, 7);
    let _sharer = world.sharer().await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    daemon.add_download(add(id)).await.unwrap();
    let paused = daemon.pause(&id.to_hex()).unwrap();
    assert_eq!(paused.state, DownloadState::Paused);
    assert_eq!(paused.rate, 0);
    assert_eq!(daemon.status().await.totals.downloads_active, 0);
    let resumed = daemon.resume(&id.to_hex()).unwrap();
    assert_ne!(resumed.state, DownloadState::Paused);
    wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    assert_eq!(
        std::fs::read(world.downloads.join("film.mkv")).unwrap(),
        bytes
    );
    // A finished download can be neither paused nor resumed.
    assert_eq!(daemon.pause(&id.to_hex()).unwrap_err().status(), 409);
    assert_eq!(
        daemon
            .pause(&ContentId([9; 32]).to_hex())
            .unwrap_err()
            .status(),
        404
    );
    assert_eq!(daemon.pause("nope").unwrap_err().status(), 400);
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn the_queue_survives_a_crash_and_resumes_by_itself() {
    let world = World::new().await;
    let (id, bytes) = world.share("album.flac", 3 << 20, 3);
    // No one shares it yet: the download stays active, looking for sources.
    let first = world.daemon().await;
    let daemon = first.control();
    daemon
        .update_settings(SettingsPatch {
            max_active_downloads: Some(2),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    daemon.add_download(add(id)).await.unwrap();
    wait_for(&daemon, id, "active", state_is(DownloadState::Active)).await;
    // Wait for queue.json to say so, then die without a clean stop.
    let queue_file = world.data.join(QUEUE_FILE);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&queue_file)
        .is_ok_and(|text| text.contains(&id.to_hex()) && text.contains("\"active\""))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue.json not written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(daemon);
    drop(first);
    assert!(
        control_file::read(&world.data).is_some(),
        "a crash leaves control.json behind"
    );

    let _sharer = world.sharer().await;
    let second = world.daemon().await;
    let daemon = second.control();
    assert_eq!(
        daemon.settings().max_active_downloads,
        2,
        "settings.json read back"
    );
    let done = wait_for(
        &daemon,
        id,
        "done after restart",
        state_is(DownloadState::Done),
    )
    .await;
    assert_eq!(done.name, "album.flac");
    assert_eq!(
        std::fs::read(world.downloads.join("album.flac")).unwrap(),
        bytes
    );
    drop(daemon);
    second.shutdown().await;
}

#[tokio::test]
async fn a_name_collision_gets_a_numbered_name() {
    let world = World::new().await;
    let (id, bytes) = world.share("song.mp3", 100_000, 11);
    let _sharer = world.sharer().await;
    std::fs::create_dir_all(&world.downloads).unwrap();
    let other = world.downloads.join("song.mp3");
    std::fs::write(&other, b"another song").unwrap();
    let handle = world.daemon().await;
    let daemon = handle.control();
    daemon.add_download(add(id)).await.unwrap();
    let done = wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    let renamed = world.downloads.join("song (1).mp3");
    assert_eq!(done.path.as_deref(), Some(renamed.to_str().unwrap()));
    assert_eq!(done.name, "song (1).mp3");
    assert_eq!(std::fs::read(&renamed).unwrap(), bytes);
    assert_eq!(
        std::fs::read(&other).unwrap(),
        b"another song",
        "left alone"
    );
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn content_already_shared_or_at_its_target_is_skipped() {
    let world = World::new().await;
    let (id, _) = world.share("book.pdf", 50_000, 5);
    // The daemon shares the folder itself: no one else has the file.
    let mut options = world.options();
    options.leaf.shares = vec![world.shared.clone()];
    let handle = world.daemon_with(options).await;
    let daemon = handle.control();
    daemon.add_download(add(id)).await.unwrap();
    let skipped = wait_for(&daemon, id, "skipped", state_is(DownloadState::Skipped)).await;
    let shared = world.shared.join("book.pdf");
    assert_eq!(skipped.path.as_deref(), Some(shared.to_str().unwrap()));
    assert!(skipped.error.unwrap().contains("already shared"));
    assert!(
        !world.downloads.join("book.pdf").exists(),
        "nothing downloaded"
    );
    drop(daemon);
    handle.shutdown().await;

    // Not shared, but the same content is where it would be saved.
    let (id, bytes) = world.share("notes.txt", 10_000, 6);
    std::fs::write(world.downloads.join("notes.txt"), &bytes).unwrap();
    let mut options = world.options();
    options.share_downloads = false;
    let handle = world.daemon_with(options).await;
    let daemon = handle.control();
    let mut request = add(id);
    request.name = Some("notes.txt".into());
    daemon.add_download(request).await.unwrap();
    let skipped = wait_for(&daemon, id, "skipped", state_is(DownloadState::Skipped)).await;
    assert!(
        skipped.error.unwrap().contains("already here"),
        "no search needed"
    );
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn cancel_removes_the_entry_and_its_partial_files() {
    let world = World::new().await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    // Nobody has it: it stays active, looking for sources.
    let id = ContentId([0x42; 32]);
    daemon.add_download(add(id)).await.unwrap();
    wait_for(&daemon, id, "active", state_is(DownloadState::Active)).await;
    let partial = world.downloads.join(partial_name(id));
    let state = world.downloads.join(state_name(id));
    std::fs::write(&partial, b"partial").unwrap();
    std::fs::write(&state, b"{}").unwrap();
    daemon.cancel(&id.to_hex()).await.unwrap();
    assert!(daemon.downloads().is_empty());
    assert!(
        !partial.exists() && !state.exists(),
        "partial files removed"
    );
    assert_eq!(daemon.cancel(&id.to_hex()).await.unwrap_err().status(), 404);
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_search_streams_results_filtered_and_sorted() {
    let world = World::new().await;
    world.share("live concert.mp3", 30_000, 1);
    world.share("live concert.mkv", 60_000, 2);
    world.share("live concert notes.txt", 1_000, 3);
    let _sharer = world.sharer().await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    let spec = |kind: Option<FileKind>| SearchSpec {
        query: Some("live concert".into()),
        kind,
        sort: Some(SortKey::Size),
        timeout_secs: Some(1.0),
        ..SearchSpec::default()
    };
    let started = daemon.start_search(spec(None)).await.unwrap();
    assert!(!started.done);
    assert_eq!(started.query, "live concert");
    let mut updates = daemon.watch_search(&started.id).expect("a known search");
    let all = updates.wait_for(|v| v.done).await.unwrap().clone();
    let names: Vec<&str> = all.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "live concert.mkv",
            "live concert.mp3",
            "live concert notes.txt"
        ],
        "largest first"
    );
    assert!(all.results[0].link.starts_with("canopy:"));
    assert_eq!(all.results[0].sources, 1);

    let audio = daemon
        .start_search(spec(Some(FileKind::Audio)))
        .await
        .unwrap();
    let mut updates = daemon.watch_search(&audio.id).unwrap();
    let only = updates.wait_for(|v| v.done).await.unwrap().clone();
    let names: Vec<&str> = only.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["live concert.mp3"]);
    assert!(daemon.forget_search(&audio.id));
    assert!(daemon.watch_search(&audio.id).is_none());
    assert!(!daemon.forget_search(&audio.id));
    let bad = daemon
        .start_search(SearchSpec {
            max_results: Some(0),
            ..spec(None)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.body().field.as_deref(), Some("max_results"));
    drop(daemon);
    handle.shutdown().await;
}

/// A leaf that publishes the sharer's folder but sends downloaders to a
/// source that stops after `stall_after` bytes: a download stays active,
/// part-way, for as long as the test needs.
async fn stalling_sharer(
    world: &World,
    data: Vec<u8>,
    stall_after: u64,
) -> (LeafHandle, canopy_testkit::fake_source::FakeSource) {
    use canopy_testkit::fake_source::{self, Misbehaviour};
    let source = fake_source::start(data, Misbehaviour::StallAfter(stall_after)).await;
    let mut options = overlay::leaf_options(&world.supernode, Some(&world.shared));
    options.advertise = Some(source.addr);
    (overlay::start_leaf(options).await, source)
}

const GROUP: u64 = 1 << 20;

#[tokio::test]
async fn pausing_part_way_keeps_the_verified_bytes_and_cancel_removes_them() {
    let world = World::new().await;
    let (id, bytes) = world.share("big.iso", 8 << 20, 21);
    let (_leaf, _source) = stalling_sharer(&world, bytes, 3 * GROUP).await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    daemon.add_download(add(id)).await.unwrap();
    let part_way = wait_for(&daemon, id, "a group verified", |v| {
        v.state == DownloadState::Active && v.verified_bytes >= GROUP
    })
    .await;
    assert_eq!(part_way.size, Some(8 << 20));
    assert!(part_way.sources >= 1);
    let paused = daemon.pause(&id.to_hex()).unwrap();
    assert_eq!(paused.state, DownloadState::Paused);
    assert!(paused.verified_bytes >= GROUP, "{paused:?}");
    assert_eq!(paused.eta_secs, None);
    let partial = world.downloads.join(partial_name(id));
    let state = world.downloads.join(state_name(id));
    assert!(
        partial.exists() && state.exists(),
        "pause keeps the partial"
    );
    assert!(!world.downloads.join("big.iso").exists());
    daemon.cancel(&id.to_hex()).await.unwrap();
    assert!(!partial.exists() && !state.exists(), "cancel removes it");
    assert!(daemon.downloads().is_empty());
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_crash_part_way_resumes_from_the_bytes_verified_on_disk() {
    let world = World::new().await;
    let len = 8u64 << 20;
    let (id, bytes) = world.share("big.iso", 8 << 20, 22);
    let (stalling, _source) = stalling_sharer(&world, bytes.clone(), 3 * GROUP).await;
    let first = world.daemon().await;
    let daemon = first.control();
    daemon.add_download(add(id)).await.unwrap();
    let part_way = wait_for(&daemon, id, "a group verified", |v| {
        v.state == DownloadState::Active && v.verified_bytes >= GROUP
    })
    .await;
    drop(daemon);
    drop(first);
    stalling.shutdown().await;
    assert!(world.downloads.join(partial_name(id)).exists());

    let sharer = world.sharer().await;
    let second = world.daemon().await;
    let daemon = second.control();
    wait_for(
        &daemon,
        id,
        "done after restart",
        state_is(DownloadState::Done),
    )
    .await;
    assert_eq!(
        std::fs::read(world.downloads.join("big.iso")).unwrap(),
        bytes
    );
    let status = daemon.status().await;
    // Counted as they cross the wire: the file's bytes plus the heads of
    // the HTTP answers (a few hundred bytes each).
    let heads = 64 * 1024;
    assert!(
        status.totals.downloaded_bytes <= len - part_way.verified_bytes + heads,
        "resumed bytes are not counted as downloaded: {}",
        status.totals.downloaded_bytes
    );
    let served = sharer
        .server()
        .stats()
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        served <= len - part_way.verified_bytes + 4096,
        "resumed: {served} bytes served of {len}, {} were verified before the crash",
        part_way.verified_bytes
    );
    drop(daemon);
    second.shutdown().await;
}

#[tokio::test]
async fn a_download_finished_before_a_crash_is_done_after_the_restart() {
    use canopy_core::queue::{DownloadQueue, NewEntry, QueueConfig};
    let world = World::new().await;
    // The file landed, but the crash came before queue.json said so.
    std::fs::create_dir_all(&world.downloads).unwrap();
    std::fs::create_dir_all(&world.data).unwrap();
    let path = world.downloads.join("landed.bin");
    std::fs::write(&path, overlay::sample_bytes(5000, 9)).unwrap();
    let id = canopy_share::hash_file(&path).unwrap();
    let mut queue = DownloadQueue::new(QueueConfig::default());
    queue
        .add(
            NewEntry {
                id,
                name: Some("landed.bin".into()),
                size: Some(5000),
                priority: 0,
            },
            1,
        )
        .unwrap();
    assert_eq!(queue.poll_starts(1), [id]);
    queue
        .set_details(&id, None, None, Some(path.display().to_string()))
        .unwrap();
    let text = serde_json::to_string(&queue.save()).unwrap();
    std::fs::write(world.data.join(QUEUE_FILE), text).unwrap();

    let handle = world.daemon().await;
    let daemon = handle.control();
    let done = wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    assert_eq!(done.path.as_deref(), Some(path.to_str().unwrap()));
    assert_eq!(done.error, None);
    drop(daemon);
    handle.shutdown().await;
    let saved = std::fs::read_to_string(world.data.join(QUEUE_FILE)).unwrap();
    assert!(saved.contains("\"done\""), "{saved}");
}

#[tokio::test]
async fn a_corrupt_queue_file_is_ignored() {
    let world = World::new().await;
    std::fs::create_dir_all(&world.data).unwrap();
    std::fs::write(world.data.join(QUEUE_FILE), b"{\"entries\": [oops").unwrap();
    let handle = world.daemon().await;
    let daemon = handle.control();
    assert!(daemon.downloads().is_empty());
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn max_active_changes_live_and_priority_picks_the_next_download() {
    let world = World::new().await;
    let mut options = world.options();
    options.settings.max_active_downloads = 1;
    let handle = world.daemon_with(options).await;
    let daemon = handle.control();
    // Nobody has these: each stays active, looking for sources.
    let ids: Vec<ContentId> = (1..=3).map(|n| ContentId([n; 32])).collect();
    for id in &ids {
        daemon.add_download(add(*id)).await.unwrap();
    }
    wait_for(
        &daemon,
        ids[0],
        "first active",
        state_is(DownloadState::Active),
    )
    .await;
    let states = |daemon: &Arc<Daemon>| -> Vec<DownloadState> {
        ids.iter()
            .map(|id| daemon.download(&id.to_hex()).unwrap().state)
            .collect()
    };
    assert_eq!(
        states(&daemon),
        [
            DownloadState::Active,
            DownloadState::Queued,
            DownloadState::Queued
        ]
    );
    let raised = daemon.set_priority(&ids[2].to_hex(), 10).unwrap();
    assert_eq!(raised.priority, 10);
    assert_eq!(daemon.downloads()[0].id, ids[2].to_hex(), "queue order");
    daemon.pause(&ids[0].to_hex()).unwrap();
    wait_for(
        &daemon,
        ids[2],
        "the higher priority next",
        state_is(DownloadState::Active),
    )
    .await;
    assert_eq!(
        states(&daemon),
        [
            DownloadState::Paused,
            DownloadState::Queued,
            DownloadState::Active
        ]
    );
    assert_eq!(daemon.status().await.totals.downloads_queued, 1);

    let settings = daemon
        .update_settings(SettingsPatch {
            max_active_downloads: Some(3),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    assert_eq!(settings.max_active_downloads, 3);
    wait_for(
        &daemon,
        ids[1],
        "a third slot used",
        state_is(DownloadState::Active),
    )
    .await;
    assert_eq!(daemon.status().await.totals.downloads_active, 2);
    let refused = daemon
        .update_settings(SettingsPatch {
            max_active_downloads: Some(0),
            ..SettingsPatch::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.body().field.as_deref(),
        Some("max_active_downloads")
    );
    assert_eq!(daemon.settings().max_active_downloads, 3, "unchanged");
    let saved: canopy_daemon::model::Settings =
        serde_json::from_slice(&std::fs::read(world.data.join(settings::SETTINGS_FILE)).unwrap())
            .unwrap();
    assert_eq!(saved, daemon.settings());
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn the_download_rate_limit_holds_every_fetch_to_it() {
    let world = World::new().await;
    let (id, bytes) = world.share("slow.bin", 3 << 20, 31);
    let _sharer = world.sharer().await;
    let mut options = world.options();
    options.settings.download_rate_limit = 1 << 20;
    let handle = world.daemon_with(options).await;
    let daemon = handle.control();
    let started = tokio::time::Instant::now();
    daemon.add_download(add(id)).await.unwrap();
    wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    let took = started.elapsed();
    // 3 MiB at 1 MiB/s, after a burst of an eighth of a second's worth.
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(
        std::fs::read(world.downloads.join("slow.bin")).unwrap(),
        bytes
    );
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_finished_download_is_shared_at_once() {
    let world = World::new().await;
    let (id, _) = world.share("fresh.ogg", 200_000, 41);
    let _sharer = world.sharer().await;
    // No rescans: only sharing the file as it lands can make it shared.
    let handle = world.daemon().await;
    let daemon = handle.control();
    assert_eq!(daemon.status().await.shared_files, 0);
    daemon.add_download(add(id)).await.unwrap();
    wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    // Served from the moment it is complete (the catalog), then counted
    // as shared once the leaf has hashed and published it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while handle.leaf().catalog().get(&id).is_none() || daemon.status().await.shared_files == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not shared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shared = handle.leaf().catalog().get(&id).unwrap();
    assert_eq!(shared.path, world.downloads.join("fresh.ogg"));
    assert_eq!(daemon.status().await.shared_files, 1);
    drop(daemon);
    handle.shutdown().await;
}

/// A sharer's upload limit: a download of ten MiB or so from it is a
/// partial source for several seconds.
const SLOW_SHARER: u64 = 1 << 20;

/// The sources a content-id search from `observer` finds for `id` that
/// are leaf `node`: (partial?) each.
async fn seen_as(observer: &LeafHandle, id: ContentId, node: canopy_proto::NodeId) -> Vec<bool> {
    let request = canopy_core::leaf::SearchRequest::content(id, 4, Duration::from_millis(300));
    let outcome = observer.search(request).await.unwrap();
    outcome
        .results
        .iter()
        .flat_map(|r| r.sources.iter())
        .filter(|s| s.node_id == node)
        .map(|s| s.partial)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_is_a_partial_source_while_it_runs_and_a_whole_one_after() {
    let world = World::new().await;
    let (id, _) = world.share("slow.iso", 12 << 20, 43);
    let mut sharer = overlay::leaf_options(&world.supernode, Some(&world.shared));
    // 12 MiB at 1 MiB/s, fetched in short runs two at a time: a partial
    // source from its first runs' end (about 4 s in) to about 12 s in, a
    // wide window for the observer however loaded the machine.
    sharer.upload_limit = canopy_transfer::bandwidth::RateLimit::new(SLOW_SHARER);
    let _sharer = overlay::start_leaf(sharer).await;
    let observer = overlay::start_leaf(LeafOptions::new(world.supernode.local_addr())).await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    let node = handle.leaf().node_id();
    daemon.add_download(add(id)).await.unwrap();
    let deadline = tokio::time::Instant::now() + 3 * PATIENCE;
    loop {
        // Checked before the search, so that the search would still see a
        // partial source published before the download ended.
        let ended = daemon
            .download(&id.to_hex())
            .is_ok_and(|view| view.state == DownloadState::Done);
        let seen = seen_as(&observer, id, node).await;
        if seen == [true] {
            break;
        }
        assert!(
            !ended && tokio::time::Instant::now() < deadline,
            "never a partial source (download done: {ended}, last seen: {seen:?})"
        );
    }
    wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    while seen_as(&observer, id, node).await != [false] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never a whole source"
        );
    }
    let shared = handle.leaf().catalog().get(&id).unwrap();
    assert_eq!(shared.path, world.downloads.join("slow.iso"));
    assert!(handle.leaf().catalog().get_partial(&id).is_none());
    world
        .supernode
        .wait_for(PATIENCE, |s| s.index_files == 2)
        .await
        .expect("one record for the sharer, one for the daemon");
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_not_shared_after_is_withdrawn_and_not_served() {
    let world = World::new().await;
    let (id, _) = world.share("private.iso", 10 << 20, 44);
    let mut sharer = overlay::leaf_options(&world.supernode, Some(&world.shared));
    // 10 MiB at 1 MiB/s: a partial source from about 4 s to about 10 s in,
    // a wide window.
    sharer.upload_limit = canopy_transfer::bandwidth::RateLimit::new(SLOW_SHARER);
    let _sharer = overlay::start_leaf(sharer).await;
    let mut options = world.options();
    options.share_downloads = false;
    let handle = world.daemon_with(options).await;
    let daemon = handle.control();
    daemon.add_download(add(id)).await.unwrap();
    // A partial source while it runs, shared or not.
    world
        .supernode
        .wait_for(3 * PATIENCE, |s| s.index_files == 2)
        .await
        .expect("published as a partial source");
    wait_for(&daemon, id, "done", state_is(DownloadState::Done)).await;
    world
        .supernode
        .wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .expect("only the sharer's file");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while handle.leaf().catalog().get_partial(&id).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "still served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.leaf().catalog().get(&id).is_none());
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_download_is_no_longer_a_partial_source() {
    let world = World::new().await;
    let (id, bytes) = world.share("paused.iso", 8 << 20, 45);
    // Part-way for good: the source stalls after three groups.
    let (_leaf, _source) = stalling_sharer(&world, bytes, 3 * GROUP).await;
    let observer = overlay::start_leaf(LeafOptions::new(world.supernode.local_addr())).await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    let node = handle.leaf().node_id();
    daemon.add_download(add(id)).await.unwrap();
    // Paused several times: the pause may stop the fetch before it
    // withdraws its partial file itself (each time, by chance), and the
    // daemon must withdraw it then.
    for cycle in 0..4 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while seen_as(&observer, id, node).await != [true] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: never a partial source"
            );
        }
        let paused = daemon.pause(&id.to_hex()).unwrap();
        assert_eq!(paused.state, DownloadState::Paused);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let seen = seen_as(&observer, id, node).await;
            if seen.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: still listed after the pause: {seen:?}"
            );
        }
        assert!(handle.leaf().catalog().get_partial(&id).is_none());
        daemon.resume(&id.to_hex()).unwrap();
    }
    drop(daemon);
    handle.shutdown().await;
}

#[tokio::test]
async fn only_the_latest_32_searches_are_kept() {
    let world = World::new().await;
    let handle = world.daemon().await;
    let daemon = handle.control();
    let spec = SearchSpec {
        query: Some("nothing here".into()),
        timeout_secs: Some(30.0),
        ..SearchSpec::default()
    };
    let first = daemon.start_search(spec.clone()).await.unwrap();
    let mut oldest = daemon.watch_search(&first.id).unwrap();
    let mut ids = vec![first.id.clone()];
    for _ in 0..canopy_daemon::searches::MAX_SEARCHES {
        ids.push(daemon.start_search(spec.clone()).await.unwrap().id);
    }
    assert!(
        daemon.watch_search(&first.id).is_none(),
        "the oldest is forgotten"
    );
    // ...and stopped: its watchers see it end long before its 30 s.
    let ended = tokio::time::timeout(Duration::from_secs(5), oldest.wait_for(|v| v.done)).await;
    assert!(ended.is_ok(), "the forgotten search still runs");
    for id in &ids[1..] {
        assert!(daemon.watch_search(id).is_some(), "{id} kept");
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids are unique");
    drop(daemon);
    handle.shutdown().await;
}
