//! Shared helpers: see the `canopy-testkit` crate.

pub(crate) use canopy_testkit::overlay::*;
