//! The multi-host testnets, in network namespaces (root needed; .ci/run
//! runs as root), each a script that tears everything down, also when it
//! fails:
//!
//! - `deploy/testnet/testnet.sh test`: hosts on a bridge, one leaf behind
//!   an nftables NAT. A search and downloads cross hosts, the NAT'd leaf
//!   serves by push, and a supernode killed with SIGKILL leaves its leaf
//!   recovering elsewhere; an IPv6-only host and a dual-stack one download
//!   from each other (and a dual-stack host joined over IPv4 from the
//!   dual-stack one) over IPv6, verified, the address each transfer came
//!   from checked.
//! - `deploy/testnet/homes.sh test`: two homes behind two different
//!   nftables routers (one port-preserving with miniupnpd, one with random
//!   ports and no UPnP), leaves on the open internet (one behind its own
//!   host firewall) and two relaying supernodes. Every leaf downloads every
//!   other leaf's file through its own running leaf; each transfer must
//!   verify and take the path expected of it (direct, mapped port, LAN,
//!   push, hole punch, relay: the relay only where the NATs leave no other
//!   way), printed as a matrix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One testnet at a time: each is timed against its own waits, and two
/// at once on two cores would only make both slower.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `deploy/testnet/<script> test`; its namespaces start with `prefix`.
fn run_testnet(script: &str, prefix: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        is_root,
        "the testnets need root for network namespaces (.ci/run runs as root)"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/testnet")
        .join(script);
    let work = tempfile::tempdir().unwrap();
    let status = Command::new(&path)
        .arg("test")
        .env("CANOPY", env!("CARGO_BIN_EXE_canopy"))
        .env("TESTNET_WORK", work.path())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    // Whatever happened, nothing may be left behind.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftovers = String::from_utf8_lossy(&left.stdout);
    assert!(
        !leftovers.lines().any(|l| l.starts_with(prefix)),
        "namespaces left: {leftovers}"
    );
    assert!(status.success(), "{script} failed (its output is above)");
}

#[test]
fn the_multi_host_testnet_scenario_passes() {
    run_testnet("testnet.sh", "cn-");
}

#[test]
fn every_pair_of_leaves_behind_home_routers_transfers() {
    run_testnet("homes.sh", "ch-");
}
