//! The settings of the long-running commands, each defined once.
//!
//! A setting is one field of its command's clap `Args` struct: the field's
//! attributes give its flag, help, default and value parser (ranges
//! included), its name is the `--config` file's key ([`crate::config`]
//! merges the file in through the same parser), and each command has one
//! conversion from its struct into the node's option types. The leaf's
//! live settings are the control API's `SettingsPatch` fields, flattened
//! into the leaf's flags, so a flag, a file key and an API field are one.

pub mod leaf;
pub mod supernode;
