//! Port mapping on the home router, so a node behind NAT can be reached:
//! the node's listen port is mapped with NAT-PMP (RFC 6886) or UPnP IGD,
//! renewed at half its lease, and removed on shutdown; the mapped external
//! address is what the node announces.
//!
//! - [`policy`]: when to map, renew, retry and give up, I/O-free (time
//!   and the routers' answers in, actions out);
//! - [`natpmp`]: NAT-PMP's messages and a bounded, validated parser;
//! - [`gateway`]: the default gateway, from the kernel's routing table;
//! - [`router`]: one mapping asked for or removed, bounded in time and bytes;
//! - [`driver`]: the tokio task running the policy against the router.
//!
//! Whatever the router answers (errors, garbage, nothing), the node carries
//! on unmapped.

pub mod driver;
pub mod gateway;
pub mod natpmp;
pub mod policy;
pub mod router;

pub use driver::{PortMapConfig, PortMapping, Status, spawn};
pub use policy::{PolicyConfig, Protocol, worth_mapping};
