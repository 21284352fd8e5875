//! File transfer between leaves.
//!
//! - [`server`]: every leaf serves its shared files over HTTP/1.1, by
//!   content id only (`/content/<id>`, single byte ranges), plus each file's
//!   verification tree (`/tree/<id>`), within a fixed number of upload
//!   slots. Plain `curl` and `aria2c` can download from it.
//! - [`download`]: fetches a file from several sources at once, verifying
//!   every 1 MiB group against the content id before keeping it, into a
//!   temporary file renamed into place only when complete; an interrupted
//!   download resumes from the groups already on disk.
//! - [`push`]: how a firewalled source reaches a downloader: it connects
//!   out to the downloader's callback listener and serves HTTP over that
//!   connection; [`punch`]: hole punching, when the downloader is
//!   firewalled too: both dial each other at once through their NATs;
//!   [`doorway`]: connections at the HTTP port that belong to a punch or a
//!   waiting push; [`path`]: which way each connection was made, as the
//!   download report says; [`relay`]: the last resort, a relaying
//!   supernode in between (and a connector trying the direct ways first).
//! - [`catalog`]: which content ids this leaf serves, and from which files;
//!   [`partial`]: a download served while it runs, from its verified groups.
//! - [`mesh`]: the download mesh, other sources of each content id, handed
//!   out in `X-Alt` headers and fed by `X-Listen` and by downloads.
//! - [`ration`]: super-seeding, the groups a whole file's server offers a
//!   crowd of downloaders (`X-Offer`), so each leaves it once before twice.
//! - [`eyeballs`]: dialing a source known by several addresses, IPv6
//!   first (Happy Eyeballs).
//! - [`listen`]: binding a listener, dual-stack (`[::]`, IPv4 too) by
//!   default.
//! - [`bandwidth`]: global upload and download rate limits, token buckets
//!   shared by every transfer and settable while they run.

pub mod bandwidth;
pub mod catalog;
pub mod client;
pub mod doorway;
pub mod download;
pub mod eyeballs;
pub mod limits;
pub mod listen;
pub mod mesh;
pub mod partial;
pub mod partial_lock;
pub mod path;
pub mod punch;
pub mod push;
pub mod ration;
pub mod relay;
pub mod server;

pub use catalog::Catalog;
