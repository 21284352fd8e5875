//! What the CLI's integration tests share: running the `canopy` binary to
//! the end and collecting what it said, starting it as a node that prints
//! a JSON startup line, and stopping that node with SIGTERM. Each test
//! file includes it with `mod support;` and uses the parts it needs; the
//! time a command may take comes from the caller, since the tests wait
//! differently long. `netns` is the network-namespace harness of the
//! tests that build their own networks.

#![allow(dead_code)]

pub(crate) mod netns;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `canopy` binary under test.
pub(crate) const CANOPY: &str = env!("CARGO_BIN_EXE_canopy");

/// How a `canopy` run ended and what it wrote.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `canopy ARGS` to the end; it must finish within `patience`.
pub(crate) async fn canopy(patience: Duration, args: &[&str]) -> Run {
    let output = tokio::time::timeout(patience, Command::new(CANOPY).args(args).output())
        .await
        .expect("canopy did not finish")
        .unwrap();
    Run::from(output)
}

impl From<std::process::Output> for Run {
    fn from(output: std::process::Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Each stdout line, parsed as one JSON object.
pub(crate) fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

/// Starts `canopy ARGS` with the environment variables `envs` set (each to
/// a directory) and returns it with its first stdout line, parsed, which
/// must come within `patience`. The rest of stdout is read and dropped so
/// the node never blocks on a full pipe.
pub(crate) async fn spawn_node(
    patience: Duration,
    args: &[&str],
    envs: &[(&str, &Path)],
) -> (Child, serde_json::Value) {
    let mut child = Command::new(CANOPY)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let hello = startup_line(patience, &mut child)
        .await
        .expect("exited before its startup line");
    (child, hello)
}

/// `child`'s first stdout line (it must come within `patience`), parsed,
/// or `None` if it exited first. The rest of stdout is read and dropped
/// so the child never blocks on a full pipe.
pub(crate) async fn startup_line(
    patience: Duration,
    child: &mut Child,
) -> Option<serde_json::Value> {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(patience, lines.next_line())
        .await
        .expect("no startup line")
        .unwrap()?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(serde_json::from_str(&first).unwrap())
}

/// Sends the node SIGTERM and returns its exit code, which must come
/// within `patience`.
pub(crate) async fn terminate(patience: Duration, mut child: Child) -> Option<i32> {
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    tokio::time::timeout(patience, child.wait())
        .await
        .unwrap()
        .unwrap()
        .code()
}

/// Sends `child` SIGINT, as Ctrl-C does, and returns how it ended and what
/// it wrote, which must come within `patience`.
pub(crate) async fn interrupt(patience: Duration, child: Child) -> std::process::Output {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::timeout(patience, child.wait_with_output())
        .await
        .expect("it stopped on Ctrl-C")
        .unwrap()
}

/// Runs `canopy ARGS` until `done` accepts its result, for at most
/// `patience` (each run and all of them together).
pub(crate) async fn until(
    patience: Duration,
    what: &str,
    args: &[&str],
    done: impl FnMut(&Run) -> bool,
) -> Run {
    retry(patience, what, || canopy(patience, args), done).await
}

/// Runs `attempt` (every 100 ms) until `done` accepts its result; after
/// `patience`, fails saying what it waited for and what the last run
/// printed.
pub(crate) async fn retry<F: std::future::Future<Output = Run>>(
    patience: Duration,
    what: &str,
    mut attempt: impl FnMut() -> F,
    mut done: impl FnMut(&Run) -> bool,
) -> Run {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let run = attempt().await;
        if done(&run) {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {} {}",
            run.stdout,
            run.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `len` bytes that don't compress, the same for the same `seed`.
pub(crate) fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}
