//! The leaf a person runs (`canopy leaf`): one long-running leaf with a
//! download queue, live searches, shares and settings, driven through a
//! control API (HTTP + JSON, a token in the data directory) and a web UI
//! served from the same origin.
//!
//! - [`model`]: the API's JSON types, shared by the server, the CLI's
//!   client and (as JSON) the web UI;
//! - [`control`]: what the API can ask of the daemon, as a trait, so the
//!   HTTP layer is tested against a fake;
//! - [`api`]: the HTTP server of the control API and the web UI;
//! - [`client`]: the API's client, for the CLI;
//! - [`daemon`]: the daemon implementing [`control::Control`], and [`start`];
//! - [`searches`], `downloads`, [`settings`], [`control_file`], `persist`:
//!   its parts; `backend`: its one door to the leaf, the download engine
//!   and the HTTP server.

pub mod api;
mod backend;
pub mod client;
pub mod control;
pub mod control_file;
pub mod daemon;
mod downloads;
pub mod model;
mod persist;
pub mod searches;
pub mod settings;

pub use daemon::{Daemon, DaemonError, DaemonHandle, DaemonOptions, QUEUE_FILE, start};
