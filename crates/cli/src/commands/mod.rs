//! One module per subcommand, and the pieces the commands that talk to
//! the running leaf share.

pub(crate) mod demo;
pub(crate) mod downloads;
pub(crate) mod get;
pub(crate) mod get_daemon;
pub(crate) mod hash;
pub(crate) mod last_search;
pub(crate) mod leaf;
pub(crate) mod queue_control;
pub(crate) mod running;
pub(crate) mod search;
pub(crate) mod search_daemon;
pub(crate) mod show;
pub(crate) mod status;
pub(crate) mod supernode;
pub(crate) mod uploads;
pub(crate) mod wanted;
