//! SIGHUP for a running node: re-reads the command line's `--config` file
//! (the command line itself still wins over it), and says which keys
//! changed, so the command applies the ones that can change live and logs
//! the ones that need a restart.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use canopy_cli::config::{self, ConfigError, ConfigFile, LoadError, Origin};

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

    /// Reads the file again and checks the settings with `check`; on an
    /// error the settings in force (and the reading compared with next
    /// time) stay.
    pub(crate) fn reread(
        &mut self,
        check: impl Fn(&A, Origin<'_>) -> Result<(), ConfigError>,
    ) -> Result<Reloaded<A>, String> {
        let loaded = match config::load_command_line::<crate::Cli>(&self.argv) {
            Ok(loaded) => loaded,
            Err(LoadError::Config(error)) => return Err(error.to_string()),
            Err(LoadError::Usage(error)) => return Err(error.to_string()),
        };
        let changed = changed_keys(self.file.as_ref(), loaded.file.as_ref(), &loaded.given);
        let origin = Origin {
            file: loaded.file.as_ref().map(|file| file.path.as_path()),
            given: &loaded.given,
        };
        let args = (self.pick)(loaded.cli.command)
            .ok_or_else(|| String::from("the command line changed"))?;
        check(&args, origin).map_err(|e| e.to_string())?;
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

/// How a SIGHUP went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// There is no `--config` file to re-read.
    NoFile,
    /// Re-read: these keys were applied, these need a restart.
    Reloaded {
        /// Changed keys applied live.
        applied: Vec<String>,
        /// Changed keys that take effect at the next start.
        restart_needed: Vec<String>,
    },
    /// The file is wrong now; the settings in force stay.
    Failed(String),
}

/// Logs how a SIGHUP went and, with `--json`, prints it as a line:
/// `{"event":"reloaded","applied":[..],"restart_needed":[..]}` or
/// `{"event":"reload_failed","error":".."}`.
pub(crate) fn announce(json: bool, outcome: &Outcome) -> anyhow::Result<()> {
    let line = match outcome {
        Outcome::NoFile => {
            tracing::info!("SIGHUP: no --config file to re-read");
            serde_json::json!({"event": "reloaded", "config": null, "applied": [], "restart_needed": []})
        }
        Outcome::Reloaded {
            applied,
            restart_needed,
        } => {
            if restart_needed.is_empty() {
                tracing::info!(?applied, "reloaded the config file");
            } else {
                tracing::warn!(
                    ?applied,
                    ?restart_needed,
                    "reloaded the config file; some changes take effect at the next start"
                );
            }
            serde_json::json!({"event": "reloaded", "applied": applied, "restart_needed": restart_needed})
        }
        Outcome::Failed(error) => {
            tracing::warn!(%error, "config not reloaded; the settings in force stay");
            serde_json::json!({"event": "reload_failed", "error": error})
        }
    };
    if json {
        say!("{line}");
    }
    Ok(())
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
