//! The settings of the long-running commands, each defined once.
//!
//! A setting is one field of its command's clap `Args` struct: the field's
//! attributes give its flag, help, default and value parser (ranges
//! included), its name is the `--config` file's key ([`crate::config`]
//! merges the file in through the same parser), and each command has one
//! conversion from its struct into the node's option types. The leaf's
//! live settings are the control API's `SettingsPatch` fields, flattened
//! into the leaf's flags, so a flag, a file key and an API field are one.

pub mod election;
pub mod leaf;
pub mod supernode;

#[cfg(test)]
mod tests {
    use clap::{ArgAction, Args as _, Command};

    use super::leaf::LeafArgs;
    use super::supernode::SupernodeArgs;

    /// An empty list in a file is passed as `none` when the list's default
    /// is not empty (`config::file_args`): every such list must take it.
    #[test]
    fn every_list_with_a_default_takes_none() {
        let mut checked = 0;
        for command in [
            SupernodeArgs::augment_args(Command::new("canopy")),
            LeafArgs::augment_args(Command::new("canopy")),
        ] {
            let lists = command.get_arguments().filter(|arg| {
                matches!(arg.get_action(), ArgAction::Append)
                    && !arg.get_default_values().is_empty()
            });
            for arg in lists {
                let flag = format!("--{}=none", arg.get_long().unwrap_or_default());
                let parsed = command
                    .clone()
                    .try_get_matches_from(["canopy", flag.as_str()]);
                assert!(parsed.is_ok(), "{flag}: {parsed:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 2, "limit_exempt, twice");
    }
}
