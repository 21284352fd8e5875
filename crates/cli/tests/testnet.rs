//! The multi-host testnet (`deploy/testnet/testnet.sh test`): hosts in
//! network namespaces on a bridge, one leaf behind an nftables NAT. A
//! search and downloads cross hosts, the NAT'd leaf serves by push, and a
//! supernode killed with SIGKILL leaves its leaf recovering elsewhere; an
//! IPv6-only host and a dual-stack one download from each other (and a
//! dual-stack host joined over IPv4 from the dual-stack one) over IPv6,
//! verified, the address each transfer came from checked. The script
//! tears everything down, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_multi_host_testnet_scenario_passes() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        is_root,
        "the testnet needs root for network namespaces (.ci/run runs as root)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/testnet/testnet.sh");
    let work = tempfile::tempdir().unwrap();
    let status = Command::new(&script)
        .arg("test")
        .env("CANOPY", env!("CARGO_BIN_EXE_canopy"))
        .env("TESTNET_WORK", work.path())
        .status()
        .expect("running deploy/testnet/testnet.sh");
    // Whatever happened, nothing may be left behind.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftovers = String::from_utf8_lossy(&left.stdout);
    assert!(
        !leftovers.lines().any(|l| l.starts_with("cn-")),
        "namespaces left: {leftovers}"
    );
    assert!(
        status.success(),
        "the testnet scenario failed (its output is above)"
    );
}
