//! The `canopy` binary against a running leaf's control API: `status`,
//! `downloads`, `uploads`, `pause|resume|cancel`, and `search`/`get`
//! through the leaf, in text and `--json`, plus what every command says
//! when no leaf runs. The leaf here is the control API's HTTP server
//! (`canopy_daemon::api::serve`) over the fake daemon the API's own tests
//! and the `fake_api` example use, with `control.json` and `control.token`
//! in a temporary data directory as a real leaf writes them; `get`'s
//! downloads move through their states as the test scripts them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../daemon/tests/support/fake_control.rs"]
mod fake_control;
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_daemon::api::{self, Token};
use canopy_daemon::client::{CONTROL_FILE, ControlFile};
use canopy_daemon::control::Control;
use canopy_daemon::model::{
    AddDownload, ApiError, DownloadState, DownloadView, SearchSpec, SearchView, Settings,
    SettingsPatch, SharesView, Status, UploadView,
};
use fake_control::{FakeControl, content_id};
use support::{CANOPY, Run, canopy, interrupt, json_lines};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

/// The fake daemon, with downloads that move by themselves each time
/// they are looked at, by the first digit of their id: `d` becomes done
/// after three looks, `f` fails on the second, `e` is skipped at once;
/// others stay where the fake puts them.
struct Scripted {
    fake: FakeControl,
    looks: Mutex<HashMap<String, u32>>,
}

impl Scripted {
    fn looks(&self, id: &str) -> u32 {
        self.looks.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn script(&self, mut view: DownloadView) -> DownloadView {
        let looks = self.looks(&view.id);
        if looks == 0 {
            return view;
        }
        match view.id.as_bytes()[0] {
            b'd' => {
                view.size = Some(3000);
                view.sources = 2;
                if looks >= 4 {
                    view.state = DownloadState::Done;
                    view.verified_bytes = 3000;
                    view.path = Some(format!("/home/user/Downloads/{}", view.name));
                    view.finished_at = Some(1_700_000_100);
                } else {
                    view.state = DownloadState::Active;
                    view.verified_bytes = u64::from(looks - 1) * 1000;
                    view.rate = 1000;
                    view.eta_secs = Some(u64::from(4 - looks));
                    view.active_sources = 2;
                }
            }
            b'f' if looks >= 2 => {
                view.state = DownloadState::Failed;
                view.error = Some("no source has it".into());
            }
            b'f' => view.state = DownloadState::Active,
            b'e' => {
                view.state = DownloadState::Skipped;
                view.error = Some("already shared".into());
                view.path = Some("/srv/music/x.ogg".into());
            }
            _ => {}
        }
        view
    }
}

impl Control for Scripted {
    async fn status(&self) -> Status {
        self.fake.status().await
    }
    async fn start_search(&self, spec: SearchSpec) -> Result<SearchView, ApiError> {
        self.fake.start_search(spec).await
    }
    fn watch_search(&self, id: &str) -> Option<watch::Receiver<SearchView>> {
        self.fake.watch_search(id)
    }
    fn forget_search(&self, id: &str) -> bool {
        self.fake.forget_search(id)
    }
    fn downloads(&self) -> Vec<DownloadView> {
        let queue = self.fake.downloads();
        queue.into_iter().map(|d| self.script(d)).collect()
    }
    fn download(&self, id: &str) -> Result<DownloadView, ApiError> {
        let view = self.fake.download(id)?;
        *self
            .looks
            .lock()
            .unwrap()
            .entry(view.id.clone())
            .or_default() += 1;
        Ok(self.script(view))
    }
    async fn add_download(&self, add: AddDownload) -> Result<(DownloadView, bool), ApiError> {
        self.fake.add_download(add).await
    }
    fn pause(&self, id: &str) -> Result<DownloadView, ApiError> {
        self.fake.pause(id)
    }
    fn resume(&self, id: &str) -> Result<DownloadView, ApiError> {
        self.fake.resume(id)
    }
    fn set_priority(&self, id: &str, priority: i32) -> Result<DownloadView, ApiError> {
        self.fake.set_priority(id, priority)
    }
    async fn cancel(&self, id: &str) -> Result<(), ApiError> {
        self.fake.cancel(id).await
    }
    fn uploads(&self) -> Vec<UploadView> {
        self.fake.uploads()
    }
    fn shares(&self) -> SharesView {
        self.fake.shares()
    }
    async fn add_share(&self, path: String) -> Result<SharesView, ApiError> {
        self.fake.add_share(path).await
    }
    async fn remove_share(&self, path: String) -> Result<SharesView, ApiError> {
        self.fake.remove_share(path).await
    }
    async fn rescan(&self) -> SharesView {
        self.fake.rescan().await
    }
    fn settings(&self) -> Settings {
        self.fake.settings()
    }
    async fn update_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        self.fake.update_settings(patch).await
    }
}

/// A control API listening on 127.0.0.1 with its files in a data
/// directory, as a running leaf has them.
struct Leaf {
    control: Arc<Scripted>,
    url: String,
    shutdown: CancellationToken,
    data: tempfile::TempDir,
}

impl Drop for Leaf {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Leaf {
    async fn start() -> Leaf {
        let data = tempfile::tempdir().unwrap();
        let token = Token::load_or_create(data.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let control = ControlFile {
            url: url.clone(),
            pid: std::process::id(),
        };
        std::fs::write(
            data.path().join(CONTROL_FILE),
            serde_json::to_vec(&control).unwrap(),
        )
        .unwrap();
        let control = Arc::new(Scripted {
            fake: FakeControl::new(true),
            looks: Mutex::default(),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(api::serve(
            control.clone(),
            listener,
            token,
            shutdown.clone(),
        ));
        Leaf {
            control,
            url,
            shutdown,
            data,
        }
    }

    fn dir(&self) -> &str {
        self.data.path().to_str().unwrap()
    }

    /// `canopy ARGS --data-dir DIR`.
    async fn canopy(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--data-dir", self.dir()]);
        canopy(PATIENCE, &all).await
    }

    fn queue(&self) -> Vec<DownloadView> {
        self.control.fake.downloads()
    }

    async fn add(&self, digit: char) -> String {
        let id = content_id(digit);
        let run = self.canopy(&["get", &id, "--detach"]).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        id
    }
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).expect("one JSON document")
}

/// Waits until `condition` holds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_labelled_lines_and_one_json_document() {
    let leaf = Leaf::start().await;
    let run = leaf.canopy(&["status"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "leaf        canopy/0.1.0, node 777777777777");
    assert_eq!(lines[1], format!("control     {}", leaf.url));
    let token = std::fs::read_to_string(leaf.data.path().join("control.token")).unwrap();
    assert_eq!(
        lines[2],
        format!("web UI      {}/?token={}", leaf.url, token.trim())
    );
    assert!(
        run.stdout.contains("supernodes  127.0.0.1:6346\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("shared      3 files, 2.93 KiB\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("downloads   0 active, 0 queued; 20 B received, idle\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("saving to   /home/user/Downloads\n"));
    assert!(run.stdout.contains("uploads     1 active; 10 B sent, idle"));

    let run = leaf.canopy(&["status", "--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let status: Status = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(status, leaf.control.status().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_print_a_table_and_json_lines() {
    let leaf = Leaf::start().await;
    let run = leaf.canopy(&["uploads"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "PEER             NAME                SENT    %     RATE  ID\n\
         127.0.0.1:40000  song.mp3  500 B / 1000 B  50%  250 B/s  555555555555\n"
    );
    let run = leaf.canopy(&["uploads", "--json"]).await;
    let uploads: Vec<UploadView> = json_lines(&run.stdout)
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(uploads, leaf.control.uploads());
}

#[tokio::test(flavor = "multi_thread")]
async fn search_numbers_results_as_they_stream_and_get_takes_a_number() {
    let leaf = Leaf::start().await;
    let run = leaf.canopy(&["search", "song"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[0].starts_with("  #  NAME"), "{}", lines[0]);
    for (n, (digit, name)) in [
        ('a', "song 0.mp3"),
        ('b', "song 1.mp3"),
        ('c', "song 2.mp3"),
    ]
    .into_iter()
    .enumerate()
    {
        let row = lines[n + 1];
        assert!(row.starts_with(&format!("{:>3}  {name}", n + 1)), "{row}");
        assert!(row.ends_with(&content_id(digit)), "{row}");
        assert!(row.contains("1000 B"), "{row}");
    }
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(leaf.data.path().join("last-search.json")).unwrap())
            .unwrap();
    assert_eq!(saved["query"], "song");
    assert_eq!(saved["results"].as_array().unwrap().len(), 3);
    assert_eq!(saved["results"][1]["content_id"], content_id('b'));

    // The search was forgotten in the leaf once read.
    assert!(!leaf.control.forget_search("s1"), "the CLI forgot it");

    let run = leaf
        .canopy(&["search", "song", "--json", "--max-results", "2"])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows = json_lines(&run.stdout);
    assert_eq!(rows.len(), 2, "stops at --max-results: {}", run.stdout);
    assert_eq!(rows[0]["n"], 1);
    assert_eq!(rows[1]["n"], 2);
    assert_eq!(rows[1]["id"], content_id('b'));
    assert_eq!(rows[1]["name"], "song 1.mp3");
    assert_eq!(rows[1]["source_count"], 1);
    assert!(rows[1]["link"].as_str().unwrap().starts_with("canopy:bbbb"));

    let run = leaf.canopy(&["get", "2", "--detach"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "queued song 1.mp3 (bbbbbbbbbbbb) in the leaf; `canopy downloads` shows it\n"
    );
    let queue = leaf.queue();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].id, content_id('b'));
    assert_eq!(queue[0].name, "song 1.mp3");

    let run = leaf.canopy(&["get", "3", "--detach"]).await;
    assert_eq!(
        run.code,
        Some(1),
        "the last search kept two: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("has no result #3: it found 2"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_takes_ids_and_links_and_downloads_lists_the_queue() {
    let leaf = Leaf::start().await;
    let run = leaf.canopy(&["downloads"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "the queue is empty (add to it with `canopy get`)\n"
    );
    let run = leaf.canopy(&["downloads", "--json"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""));

    let first = leaf.add('1').await;
    let link = format!(
        "canopy:{}?name=Night%20Train.ogg&size=1000",
        content_id('2')
    );
    let run = leaf
        .canopy(&["get", &link, "--detach", "--json", "--priority", "-3"])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let added = json(&run.stdout);
    assert_eq!(added["id"], content_id('2'));
    assert_eq!(added["priority"], -3);
    assert_eq!(added["state"], "queued");

    let run = leaf.canopy(&["get", &first, "--detach"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "11111111.bin (111111111111) is already in the queue: queued\n"
    );

    let run = leaf.canopy(&["downloads"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("#  STATE   NAME"), "{}", lines[0]);
    assert!(
        lines[1].starts_with("1  queued  11111111.bin"),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with("111111111111"), "{}", lines[1]);
    assert!(
        lines[2].starts_with("2  queued  Night%20Train.ogg"),
        "{}",
        lines[2]
    );

    let run = leaf.canopy(&["downloads", "--json"]).await;
    let listed: Vec<DownloadView> = json_lines(&run.stdout)
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(listed, leaf.queue());
    assert_eq!(listed.len(), 2);

    let run = leaf.canopy(&["get", "film.mkv"]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("not a content id (64 hex)"),
        "{}",
        run.stderr
    );
    let run = leaf.canopy(&["get", "1"]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("run `canopy search` first"),
        "{}",
        run.stderr
    );
    let run = leaf.canopy(&["get", &first, "-o", "/tmp/x"]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("standalone"), "{}", run.stderr);
    assert_eq!(leaf.queue().len(), 2, "refused requests added nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_cancel_take_a_number_a_prefix_or_an_id() {
    let leaf = Leaf::start().await;
    let first = leaf.add('1').await;
    let second = leaf.add('2').await;
    let state = |id: &str| leaf.queue().iter().find(|d| d.id == id).map(|d| d.state);

    let run = leaf.canopy(&["pause", "2"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "paused 22222222.bin (222222222222)\n");
    assert_eq!(state(&second), Some(DownloadState::Paused));
    assert_eq!(state(&first), Some(DownloadState::Queued));

    let run = leaf.canopy(&["pause", "1111", "--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json(&run.stdout)["state"], "paused");
    assert_eq!(state(&first), Some(DownloadState::Paused));

    let run = leaf.canopy(&["resume", &second]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "resumed 22222222.bin (222222222222): queued\n");
    assert_eq!(state(&second), Some(DownloadState::Queued));
    let run = leaf.canopy(&["resume", "1", "--json"]).await;
    assert_eq!(json(&run.stdout)["id"], first);
    assert_eq!(state(&first), Some(DownloadState::Queued));

    let run = leaf.canopy(&["cancel", "1"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "cancelled 11111111.bin (111111111111); its partial file is removed\n"
    );
    assert_eq!(state(&first), None);
    let run = leaf.canopy(&["cancel", "222222", "--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        json(&run.stdout),
        serde_json::json!({"id": second, "name": "22222222.bin", "cancelled": true})
    );
    assert!(leaf.queue().is_empty());

    for (args, says) in [
        (["pause", "3"], "no download #3: the queue has 0"),
        (
            ["resume", "abcd"],
            "no download in the queue has an id starting with abcd",
        ),
        (["cancel", "x.ogg"], "not a download number or content id"),
    ] {
        let run = leaf.canopy(&args).await;
        assert_eq!(run.code, Some(1), "{args:?}");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let run = leaf.canopy(&["pause", &content_id('9')]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("no download"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_follows_the_download_until_done_failed_or_skipped() {
    let leaf = Leaf::start().await;
    let done = content_id('d');
    let run = leaf.canopy(&["get", &done, "--name", "film.mkv"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "saved /home/user/Downloads/film.mkv (2.93 KiB)\n"
    );
    assert_eq!(leaf.control.looks(&done), 4, "followed through every state");

    let run = leaf.canopy(&["get", &done, "--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let view = json(&run.stdout);
    assert_eq!(view["state"], "done");
    assert_eq!(view["verified_bytes"], 3000);

    let failing = content_id('f');
    let run = leaf.canopy(&["get", &failing]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("ffffffff.bin failed: no source has it"),
        "{}",
        run.stderr
    );
    let run = leaf.canopy(&["get", &failing, "--json"]).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(json(&run.stdout)["state"], "failed");

    let skipped = content_id('e');
    let run = leaf.canopy(&["get", &skipped]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "not downloaded: already shared (/srv/music/x.ogg)\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_following_and_the_download_stays_in_the_leaf() {
    let leaf = Leaf::start().await;
    let id = content_id('9');
    let child = Command::new(CANOPY)
        .args(["get", &id, "--data-dir", leaf.dir()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has looked at the download, it is following (and listening
    // for Ctrl-C).
    eventually("get to follow the download", || {
        leaf.control.looks(&id) >= 1
    })
    .await;
    let output = interrupt(PATIENCE, child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopped following; the download keeps running in the leaf"),
        "{stderr}"
    );
    assert!(stderr.contains("canopy pause 999999999999"), "{stderr}");
    let queue = leaf.queue();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].id, id);
    assert_eq!(queue[0].state, DownloadState::Queued);
}

async fn no_leaf_in(dir: &Path, stale: bool) {
    let shown = dir.display().to_string();
    let message = format!("no running leaf found in {shown} (start one with `canopy leaf`)");
    let id = content_id('a');
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["downloads"],
        &["downloads", "--json"],
        &["uploads"],
        &["uploads", "--json"],
        &["pause", "1"],
        &["resume", "1"],
        &["cancel", &id],
        &["search", "song"],
        &["get", &id],
        &["get", &id, "--detach"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--data-dir", &shown]);
        let run = canopy(PATIENCE, &all).await;
        assert_eq!(run.code, Some(1), "{args:?} (stale: {stale})");
        assert_eq!(run.stdout, "", "{args:?}");
        assert!(run.stderr.contains(&message), "{args:?}: {}", run.stderr);
        if matches!(args[0], "search" | "get") {
            assert!(
                run.stderr.contains("or give --supernode ADDR"),
                "{}",
                run.stderr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_running_leaf_every_command_says_how_to_start_one() {
    let empty = tempfile::tempdir().unwrap();
    no_leaf_in(empty.path(), false).await;

    // A leaf that stopped without removing control.json (kill -9): its
    // port answers nothing.
    let leaf = Leaf::start().await;
    let run = leaf.canopy(&["status"]).await;
    assert_eq!(run.code, Some(0), "it answers while it runs");
    leaf.shutdown.cancel();
    let url = leaf.url.trim_start_matches("http://").to_owned();
    eventually("the API to stop listening", || {
        std::net::TcpStream::connect(&url).is_err()
    })
    .await;
    assert!(leaf.data.path().join(CONTROL_FILE).exists());
    no_leaf_in(leaf.data.path(), true).await;
}
