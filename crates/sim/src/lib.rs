//! A simulator of large Canopy overlays.
//!
//! It runs the real protocol core (`canopy_core::supernode::Supernode` and
//! `canopy_core::leaf::LeafSession`, not a re-implementation) for
//! thousands of supernodes and their leaves in one process, in virtual
//! time: messages are delivered from an event queue after per-link
//! latencies, and every random choice comes from one seeded generator, so
//! the same configuration and seed give the same report.
//!
//! - [`config`]: topology, workload and strategy;
//! - [`workload`]: the vocabulary model behind names and keyword queries;
//! - [`link`]: each link's bandwidth and send queue;
//! - [`world`]: building the overlay and running the event loop;
//! - [`report`]: statistics per run and kind of query, as Markdown and
//!   CSV rows; [`stats`]: their confidence intervals;
//! - [`goals`]: the goals checked against a set of runs;
//! - [`plot`]: the figure (messages per query against success), as SVG;
//! - [`output`]: writing a set of runs as `report.md`, `.csv` and `.svg`;
//! - [`election`], [`election_report`]: supernode election in a population
//!   of mixed capability, with churn (the `canopy-sim-election` binary).

// Statistics and synthetic addresses: counts and indices here are far
// below the limits of the types they are converted between.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

pub mod config;
pub mod election;
pub mod election_report;
pub mod goals;
pub mod link;
pub mod output;
pub mod plot;
pub mod report;
pub mod stats;
pub mod workload;
pub mod world;

pub use config::{Churn, SimConfig, Strategy};
pub use output::write_report;
pub use report::{QueryKind, RunReport};
pub use world::run;
