//! What deploy/ ships: the example config files hold every key of their
//! command and parse as they are; the systemd units pass
//! `systemd-analyze verify` (the leaf's as a user unit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use canopy_cli::config::{Origin, parse};
use canopy_cli::settings::leaf::LeafArgs;
use canopy_cli::settings::supernode::SupernodeArgs;
use clap::Args;

const CANOPY: &str = env!("CARGO_BIN_EXE_canopy");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// Every key of a command `T` is in `text`, set or commented out.
fn assert_every_key<T: Args>(text: &str, file: &str) {
    let command = T::augment_args(clap::Command::new("canopy"));
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        if key == "config" || arg.get_long().is_none() {
            continue;
        }
        let listed = text.lines().any(|line| {
            line.trim_start_matches("# ")
                .starts_with(&format!("{key} ="))
        });
        assert!(listed, "{file} does not show the key `{key}`");
    }
}

#[test]
fn the_example_configs_show_every_key_and_parse() {
    let file = deploy("supernode.example.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_every_key::<SupernodeArgs>(&text, "supernode.example.toml");
    let args = parse::<SupernodeArgs>(&text, Some(&file)).unwrap();
    args.options(Origin::default()).unwrap();

    let file = deploy("leaf.example.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_every_key::<LeafArgs>(&text, "leaf.example.toml");
    let args = parse::<LeafArgs>(&text, Some(&file)).unwrap();
    let settings = args.settings(Origin::default()).unwrap();
    assert_eq!(settings.settings.max_active_downloads, 3);
}

/// `unit` with its `canopy` binary replaced by the one under test, so
/// `systemd-analyze` finds it, written into `dir`.
fn unit_for_test(unit: &str, installed_at: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).unwrap();
    assert!(text.contains(installed_at), "{unit} runs {installed_at}");
    let path = dir.join(unit);
    std::fs::write(&path, text.replace(installed_at, CANOPY)).unwrap();
    path
}

fn verify(user: bool, unit: &Path, runtime: &Path) {
    let mut command = Command::new("systemd-analyze");
    if user {
        command.arg("--user").env("XDG_RUNTIME_DIR", runtime);
    }
    let output = command
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", unit.display());
    assert!(stderr.trim().is_empty(), "{}: {stderr}", unit.display());
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let supernode = unit_for_test(
        "canopy-supernode.service",
        "/usr/local/bin/canopy",
        dir.path(),
    );
    verify(false, &supernode, runtime.path());
    let leaf = unit_for_test("canopy-leaf.service", "%h/.cargo/bin/canopy", dir.path());
    let text = std::fs::read_to_string(&leaf).unwrap();
    assert!(
        text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{text}"
    );
    assert!(text.contains("--config %E/canopy/leaf.toml"), "{text}");
    assert!(
        text.contains("WantedBy=default.target"),
        "a user unit: {text}"
    );
    verify(true, &leaf, runtime.path());
}
