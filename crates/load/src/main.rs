//! `canopy-load`: drives a Canopy supernode with real connections and
//! reports what it measured. See `benches/README.md`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use canopy_load::{leaves, overlay, raw_relay, relay};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "canopy-load",
    version,
    about = "Load generator for Canopy supernodes"
)]
enum Command {
    /// Many leaves on one supernode: memory per leaf, connect time, search latency.
    Leaves(leaves::Args),
    /// Queries a second one supernode (or the raw relay) forwards.
    Relay(relay::Args),
    /// The reference: forwards every frame to every other connection, no logic.
    RawRelay(raw_relay::Args),
    /// Search latency across an overlay of supernodes under background load.
    Overlay(overlay::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Leaves(args) => leaves::run(args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::RawRelay(args) => raw_relay::run(args).await,
        Command::Overlay(args) => overlay::run(args).await,
    }
}
