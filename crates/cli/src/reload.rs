//! SIGHUP for a running node: re-reads the command line's `--config` file
//! (the command line itself still wins over it), and says which keys
//! changed, so the command applies the ones that can change live and logs
//! the ones that need a restart.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use canopy_cli::config::{self, ConfigFile, LoadError, Origin};

/// Re-reads a command's settings as it was started.
pub(crate) struct Reloader<A> {
    argv: Vec<OsString>,
    pick: fn(crate::Command) -> Option<A>,
    file: Option<ConfigFile>,
    given: Vec<String>,
}

/// What a reload found.
pub(crate) struct Reloaded<A> {
    /// The command's settings now.
    pub(crate) args: A,
    /// Keys whose value in the file changed (added, removed or edited),
    /// leaving out those the command line sets.
    pub(crate) changed: Vec<String>,
}

impl<A> Reloader<A> {
    /// For the command started with `argv` (which read `file`, and set the
    /// keys `given` itself), whose settings `pick` takes out of the parsed
    /// command line.
    pub(crate) fn new(
        (argv, file, given): (Vec<OsString>, Option<ConfigFile>, Vec<String>),
        pick: fn(crate::Command) -> Option<A>,
    ) -> Self {
        Self {
            argv,
            pick,
            file,
            given,
        }
    }

    /// The config file, if there is one to re-read.
    pub(crate) fn path(&self) -> Option<&PathBuf> {
        self.file.as_ref().map(|file| &file.path)
    }

    /// Where the settings came from, for errors.
    pub(crate) fn origin(&self) -> Origin<'_> {
        Origin {
            file: self.file.as_ref().map(|file| file.path.as_path()),
            given: &self.given,
        }
    }

    /// Reads the file again. On an error the settings in force stay.
    pub(crate) fn reread(&mut self) -> Result<Reloaded<A>, String> {
        let loaded = match config::load_command_line::<crate::Cli>(&self.argv) {
            Ok(loaded) => loaded,
            Err(LoadError::Config(error)) => return Err(error.to_string()),
            Err(LoadError::Usage(error)) => return Err(error.to_string()),
        };
        let changed = changed_keys(self.file.as_ref(), loaded.file.as_ref(), &loaded.given);
        let args = (self.pick)(loaded.cli.command)
            .ok_or_else(|| String::from("the command line changed"))?;
        self.file = loaded.file;
        self.given = loaded.given;
        Ok(Reloaded { args, changed })
    }
}

/// The keys whose values differ between two readings of a file, but for
/// the ones the command line sets.
fn changed_keys(
    before: Option<&ConfigFile>,
    after: Option<&ConfigFile>,
    given: &[String],
) -> Vec<String> {
    let empty = toml::Table::new();
    let before = before.map_or(&empty, |file| &file.table);
    let after = after.map_or(&empty, |file| &file.table);
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .filter(|key| !given.contains(key))
        .cloned()
        .collect()
}

/// Splits `changed` into the keys applied live and those needing a restart.
pub(crate) fn split_live(changed: &[String], live_keys: &[&str]) -> (Vec<String>, Vec<String>) {
    changed
        .iter()
        .cloned()
        .partition(|key| live_keys.contains(&key.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile {
            path: PathBuf::from("x.toml"),
            table: text.parse().unwrap(),
        }
    }

    #[test]
    fn changed_keys_are_edits_additions_and_removals_not_flags() {
        let before = file("a = 1\nb = 2\nc = 3\n");
        let after = file("a = 1\nb = 5\nd = 4\ne = 1\n");
        let given = vec![String::from("e")];
        assert_eq!(
            changed_keys(Some(&before), Some(&after), &given),
            vec!["b", "c", "d"]
        );
        let (live, restart) = split_live(&["b".into(), "c".into()], &["c"]);
        assert_eq!((live, restart), (vec!["c".into()], vec!["b".into()]));
    }
}
