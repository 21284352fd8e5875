//! Canopy's protocol logic, with no I/O and no clock.
//!
//! Every type here is a state machine in the style of quinn-proto: input
//! arrives through `handle_*` methods together with the current [`Time`],
//! and what the node should do comes out as actions the caller drains with
//! `poll_action`. Nothing here opens a socket or reads a clock, and nothing
//! it does depends on chance (hash tables fed by peers are seeded per
//! process against flooding, but no result depends on their order), so
//! tests drive it deterministically and the simulator runs the very same
//! code as the real nodes.
//!
//! - [`supernode`]: the supernode: handshakes, the index, query flooding,
//!   duplicate suppression, reverse-path routing of hits, keepalive.
//! - [`leaf`]: a leaf's side of its connection to a supernode: handshake,
//!   publishing its files, its searches.
//! - [`discovery`]: a supernode's peer discovery: peers wanted, whom to
//!   dial, per-address backoff with injected jitter, when to resolve the
//!   DNS seeds, and its next deadline.
//! - [`leaf_set`]: a leaf's set of supernodes: how many, which, replacing
//!   a lost one, publishing to all and searching through one.
//! - [`seeding`]: when to resolve the bootstrap names and whether the
//!   candidates to dial ran dry (shared by the two above).
//! - [`search`]: gathers the hits of one search, grouped by content id.
//! - [`addr_limits`]: what one address and one network prefix may hold.
//! - [`relay`]: the relay's policy: circuits by token, admission with a
//!   reason, per-circuit budgets of bytes, time and rate.
//! - [`push_limits`]: how often pushes may name one callback address, and
//!   how often a leaf connects back.
//! - [`punch`]: hole punching's schedule: a dial every 250 ms (the
//!   source: 300 ms) from the listening port for a window, and which
//!   connection won.
//! - [`lan`]: LAN discovery by multicast: the datagram, when to announce,
//!   the table of nodes heard on the LAN.
//! - [`election`]: automatic supernode election: when a capable leaf is
//!   needed as a supernode, and when a supernode steps down.
//! - [`reachability`]: what a leaf knows of its own reachability (public
//!   address, NAT kind, connect-back verdicts) and when it announces a new
//!   listening address.
//! - [`addrman`]: the supernodes a node knows of and whom it dials next,
//!   safe from floods of addresses (eclipse attacks).
//! - [`family`]: addresses in one canonical form (IPv4-mapped IPv6 as
//!   IPv4), and dialing a peer's addresses IPv6 first (Happy Eyeballs).
//! - [`queue`], [`link`], [`result_filter`], [`save_name`]: the leaf
//!   daemon's download queue, `canopy:` links, result filters and the
//!   names files are saved under.
//! - [`download`], [`groups`], [`mesh`]: a download's plan (which groups
//!   to ask which source for, rarest first), the groups a source has, and
//!   the other sources of a content a node has seen lately.
//! - [`ration`]: super-seeding: which groups a node with the whole file
//!   offers a crowd of downloaders, so each leaves it once before twice.
//! - [`index`], [`posting`], [`arena`], [`tokenize`], [`dedup`], [`routes`],
//!   [`hit_check`], [`rate`], [`backoff`]: the parts.

pub mod addr_limits;
pub mod addrman;
pub mod arena;
pub mod backoff;
pub mod dedup;
pub mod discovery;
pub mod download;
pub mod dynamic;
pub mod election;
pub mod family;
pub mod filter_patch;
pub mod groups;
pub mod handshake;
pub mod hit_check;
pub mod index;
pub mod lan;
pub mod leaf;
pub mod leaf_set;
pub mod link;
pub mod mesh;
pub mod posting;
pub mod punch;
pub mod push_limits;
pub mod queue;
pub mod rate;
pub mod ration;
pub mod reachability;
pub mod relay;
pub mod result_filter;
pub mod rng;
pub mod routes;
pub mod routing_filter;
pub mod save_name;
pub mod search;
pub mod seeding;
pub mod supernode;
pub mod time;
pub mod tokenize;
pub mod tree;
pub mod varint;

pub use time::Time;

/// Identifies one connection for the lifetime of a node. The driver hands
/// them out and never reuses one, so a stale id can only miss, never hit a
/// different peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);
