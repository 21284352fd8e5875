//! One module per subcommand.

pub(crate) mod demo;
pub(crate) mod get;
pub(crate) mod hash;
pub(crate) mod leaf;
pub(crate) mod search;
pub(crate) mod supernode;
