//! Configuration files for the long-running commands, and how they merge
//! with the command line.
//!
//! Every setting is defined once, as a field of the command's clap `Args`
//! struct ([`crate::settings`]): its flag, its help, its default and its
//! value parser (ranges included) are that field's attributes. A
//! `--config` file's key is the field's name (`--max-leaves` is
//! `max_leaves`; a repeatable flag's key is the list's name: `--peer` is
//! `peers = [...]`), and its value goes through the very same value
//! parser as the flag, so a file can hold nothing a flag couldn't. A flag
//! given on the command line wins over the file; the field's default fills
//! in the rest. Unknown keys are errors, so a typo is caught, not ignored.
//! Every error names the file and the key, and the command exits with
//! status 2.
//!
//! How: the file's keys are turned into the flags they stand for
//! (`max_leaves = 5` is `--max-leaves=5`), each checked alone so its error
//! names its key, then appended to the command line for the keys the
//! command line did not give, and the whole is parsed once more.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use canopy_core::addr_limits::IpNet;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: Option<PathBuf>,
    key: Option<String>,
    problem: String,
}

impl ConfigError {
    /// `key`'s value is out of range or otherwise unusable.
    pub fn invalid(file: Option<&Path>, key: &str, problem: impl Into<String>) -> Self {
        Self {
            file: file.map(Path::to_owned),
            key: Some(key.to_owned()),
            problem: problem.into(),
        }
    }

    /// A problem with the file as a whole.
    fn whole(file: Option<&Path>, problem: impl Into<String>) -> Self {
        Self {
            file: file.map(Path::to_owned),
            key: None,
            problem: problem.into(),
        }
    }

    /// The key at fault, if one is.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "config {}", file.display())?,
            None => f.write_str("configuration")?,
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// A config file as read: its path and its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its keys, as written.
    pub table: toml::Table,
}

impl ConfigFile {
    /// Reads and parses `path` (syntax only: the keys are checked against
    /// the command by [`file_args`]).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole(Some(path), e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            table: parse_table(&text, Some(path))?,
        })
    }
}

/// Parses `text`, the contents of the config file `path` (named in
/// errors), as a TOML table.
pub fn parse_table(text: &str, path: Option<&Path>) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::whole(path, syntax_problem(text, &e)))
}

/// A TOML syntax error with the line it is on.
fn syntax_problem(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!("line {line}: {}", error.message().trim())
        }
        None => error.message().trim().to_owned(),
    }
}

/// Arguments that are not settings, so never keys of a file.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// The flags `table`'s keys stand for in `command` (built, so global
/// flags are in it), leaving out the keys `given` says the command line
/// already set. Each key is checked alone by its flag's own parser, so an
/// error names its key.
pub fn file_args(
    command: &Command,
    table: &toml::Table,
    path: Option<&Path>,
    given: &dyn Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigError> {
    let mut all = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str() && !NOT_KEYS.contains(&key.as_str()));
        let Some((arg, long)) = arg.and_then(|arg| Some((arg, arg.get_long()?))) else {
            return Err(ConfigError::invalid(
                path,
                key,
                format!("unknown key; the keys are: {}", keys(command).join(", ")),
            ));
        };
        let flag = |text: &str| OsString::from(format!("--{long}={text}"));
        let bad = |problem: String| ConfigError::invalid(path, key, problem);
        let args: Vec<OsString> = match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                let toml::Value::Boolean(on) = value else {
                    return Err(bad(format!("expected true or false, not {value}")));
                };
                // The flag is given when the file asks for what it does.
                let flag_means = matches!(arg.get_action(), ArgAction::SetTrue);
                if *on == flag_means {
                    vec![OsString::from(format!("--{long}"))]
                } else {
                    Vec::new()
                }
            }
            ArgAction::Append => {
                let toml::Value::Array(items) = value else {
                    return Err(bad(format!("expected a list, such as [{value}]")));
                };
                if items.is_empty() && !arg.get_default_values().is_empty() {
                    // An empty list where the default is not empty: the
                    // flag's own word for "none".
                    vec![flag("none")]
                } else {
                    items
                        .iter()
                        .map(|item| scalar(item).map(|text| flag(&text)))
                        .collect::<Result<_, _>>()
                        .map_err(bad)?
                }
            }
            _ => vec![flag(&scalar(value).map_err(bad)?)],
        };
        if args.is_empty() {
            continue;
        }
        // Checked alone, by the flag's parser, so the error is this key's.
        let mut alone = command.clone();
        let argv = std::iter::once(OsString::from("canopy")).chain(args.iter().cloned());
        if let Err(error) = alone.try_get_matches_from_mut(argv) {
            return Err(bad(clap_problem(&error)));
        }
        if !given(key) {
            all.extend(args);
        }
    }
    Ok(all)
}

/// Every key a file for `command` may hold.
fn keys(command: &Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !NOT_KEYS.contains(&id.as_str()))
        .collect()
}

/// One value of a key, as the flag's text.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(_) | toml::Value::Array(_) | toml::Value::Table(_) => {
            Err(format!("expected one value, not {value}"))
        }
        toml::Value::Datetime(_) => Err(format!("expected a number or a string, not {value}")),
    }
}

/// What a clap error says, without its `error:` prefix, usage and hints.
fn clap_problem(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.as_str()),
        _ => None,
    };
    if let Some(source) = std::error::Error::source(error) {
        let source = source.to_string();
        return match value {
            Some(value) if !source.contains(value) => format!("`{value}`: {source}"),
            _ => source,
        };
    }
    if let (Some(value), Some(ContextValue::Strings(valid))) =
        (value, error.get(ContextKind::ValidValue))
    {
        return format!("`{value}` is not one of: {}", valid.join(", "));
    }
    let text = error.render().to_string();
    text.lines()
        .map(|line| line.trim().trim_start_matches("error:").trim())
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .filter(|line| !line.starts_with("Usage:"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses `text` as the `--config` file (named `path` in errors) of a
/// command whose settings are `T`: every key checked, defaults filled.
/// What the fuzz target runs.
pub fn parse<T: clap::Args + clap::FromArgMatches>(
    text: &str,
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    let table = parse_table(text, path)?;
    let mut command = T::augment_args(<Logging as clap::Args>::augment_args(Command::new(
        "canopy",
    )));
    command.build();
    let args = file_args(&command, &table, path, &|_| false)?;
    let argv = std::iter::once(OsString::from("canopy")).chain(args);
    let matches = command
        .try_get_matches_from_mut(argv)
        .map_err(|e| ConfigError::whole(path, clap_problem(&e)))?;
    T::from_arg_matches(&matches).map_err(|e| ConfigError::whole(path, clap_problem(&e)))
}

/// A command line, with its subcommand's `--config` file merged in.
#[derive(Debug)]
pub struct Loaded<C> {
    /// The parsed command: flags, then the file, then defaults.
    pub cli: C,
    /// The file read, if `--config` was given.
    pub file: Option<ConfigFile>,
    /// The keys the command line set itself (the file's are ignored).
    pub given: Vec<String>,
}

impl<C> Loaded<C> {
    /// Where the settings came from, for errors found after parsing.
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            file: self.file.as_ref().map(|file| file.path.as_path()),
            given: &self.given,
        }
    }
}

/// Where a command's settings came from: errors found after parsing (one
/// setting against another) name the file only for keys the command line
/// did not set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// The config file, if any.
    pub file: Option<&'a Path>,
    /// Keys set on the command line.
    pub given: &'a [String],
}

impl Origin<'_> {
    /// `key`'s value is unusable.
    pub fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        let from_flag = self.given.iter().any(|given| given == key);
        ConfigError::invalid(if from_flag { None } else { self.file }, key, problem)
    }
}

/// Why a command line could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The command line itself is wrong: clap prints it and exits.
    Usage(clap::Error),
    /// The config file is.
    Config(ConfigError),
}

/// Parses `argv` as a `C`, then merges the subcommand's `--config` file,
/// if it has one. Run again on SIGHUP to reload.
pub fn load_command_line<C: clap::Parser>(argv: &[OsString]) -> Result<Loaded<C>, LoadError> {
    let mut command = C::command();
    command.build();
    let matches = command
        .try_get_matches_from_mut(argv.iter().cloned())
        .map_err(LoadError::Usage)?;
    let Some((name, sub_matches)) = matches.subcommand() else {
        return finish(argv, None, Vec::new());
    };
    let Ok(Some(path)) = sub_matches.try_get_one::<PathBuf>("config") else {
        return finish(argv, None, Vec::new());
    };
    let file = ConfigFile::read(path).map_err(LoadError::Config)?;
    let Some(sub) = command.find_subcommand(name) else {
        return finish(argv, None, Vec::new());
    };
    let given_keys: Vec<String> = sub
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .filter(|id| on_command_line(&matches, sub_matches, id))
        .collect();
    let extra = file_args(sub, &file.table, Some(&file.path), &|key| {
        given_keys.iter().any(|given| given == key)
    })
    .map_err(LoadError::Config)?;
    let mut merged = argv.to_vec();
    merged.extend(extra);
    finish(&merged, Some(file), given_keys)
}

fn finish<C: clap::Parser>(
    argv: &[OsString],
    file: Option<ConfigFile>,
    given: Vec<String>,
) -> Result<Loaded<C>, LoadError> {
    match C::try_parse_from(argv) {
        Ok(cli) => Ok(Loaded { cli, file, given }),
        // Every key parsed alone, so what is left is keys in conflict.
        Err(error) => match &file {
            Some(file) => Err(LoadError::Config(ConfigError::whole(
                Some(&file.path),
                clap_problem(&error),
            ))),
            None => Err(LoadError::Usage(error)),
        },
    }
}

/// Whether the command line set `id` (itself, or as a global flag before
/// the subcommand).
fn on_command_line(top: &ArgMatches, sub: &ArgMatches, id: &str) -> bool {
    let typed = |m: &ArgMatches| {
        m.try_contains_id(id).unwrap_or(false)
            && m.value_source(id) == Some(ValueSource::CommandLine)
    };
    typed(sub) || typed(top)
}

/// The flag shared by every command, here so [`parse`] knows it as a key.
#[derive(Debug, Clone, clap::Args)]
pub struct Logging {
    /// Log lines as text or JSON (filter with RUST_LOG, e.g. `canopy_node=debug`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The default data directory: `$XDG_DATA_HOME/canopy` on Linux.
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("canopy"))
}

/// A value parser: a count or amount of at least 1.
pub fn at_least_one<T: FromStr + TryFrom<u64>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => T::try_from(n).map_err(|_| format!("{n} is too large")),
        Err(e) => Err(e.to_string()),
    }
}

/// A value parser: seconds, at least 1.
pub fn seconds(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// One entry of a `limit_exempt` list: a network (`10.0.0.0/8`), a single
/// address, or `none` (an empty list: limit everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exempt(Option<IpNet>);

impl FromStr for Exempt {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Self(None));
        }
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(|net| Self(Some(net)))
            .map_err(|_| format!("`{text}` is not an address or a network (CIDR)"))
    }
}

impl fmt::Display for Exempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(net) => net.fmt(f),
            None => f.write_str("none"),
        }
    }
}

impl From<IpNet> for Exempt {
    fn from(net: IpNet) -> Self {
        Self(Some(net))
    }
}

/// The exempt networks a list stands for; `none` must stand alone.
pub fn exempt_networks(items: &[Exempt]) -> Result<Vec<IpNet>, String> {
    if items.iter().any(|item| item.0.is_none()) {
        return if items.len() == 1 {
            Ok(Vec::new())
        } else {
            Err("`none` can't be combined with addresses".into())
        };
    }
    Ok(items.iter().filter_map(|item| item.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args, PartialEq)]
    struct Sample {
        /// How many.
        #[arg(long, default_value_t = 7, value_parser = at_least_one::<usize>)]
        max_leaves: usize,
        /// Where.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Others.
        #[arg(long = "peer")]
        peers: Vec<std::net::SocketAddr>,
        /// Loud.
        #[arg(long)]
        json: bool,
        /// Not limited.
        #[arg(long, default_values_t = [Exempt::from(IpNet::from(IpAddr::from([127, 0, 0, 1])))])]
        limit_exempt: Vec<Exempt>,
    }

    fn load_text(text: &str) -> Result<Sample, String> {
        parse::<Sample>(text, Some(Path::new("node.toml"))).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_loads_and_no_keys_are_the_defaults() {
        let sample = load_text(
            "max_leaves = 5\nlisten = \"127.0.0.1:1\"\npeers = [\"127.0.0.1:2\"]\njson = true\n",
        )
        .unwrap();
        assert_eq!(sample.max_leaves, 5);
        assert_eq!(sample.listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(sample.peers, vec!["127.0.0.1:2".parse().unwrap()]);
        assert!(sample.json);
        let empty = load_text("").unwrap();
        assert_eq!(empty.max_leaves, 7, "the field's default");
        assert_eq!((empty.listen, empty.json), (None, false));
        assert_eq!(exempt_networks(&empty.limit_exempt).unwrap().len(), 1);
        // An empty list where the default is not: none at all.
        let none = load_text("limit_exempt = []\n").unwrap();
        assert_eq!(exempt_networks(&none.limit_exempt).unwrap(), Vec::new());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        for (text, key, says) in [
            ("max_leaves = \"many\"\n", "max_leaves", "`many`"),
            ("max_leaves = 0\n", "max_leaves", "at least 1"),
            ("listen = \"nowhere\"\n", "listen", "`nowhere`"),
            ("max_leafs = 3\n", "max_leafs", "unknown key"),
            ("peers = \"127.0.0.1:2\"\n", "peers", "a list"),
            ("json = 1\n", "json", "true or false"),
            (
                "limit_exempt = [\"everyone\"]\n",
                "limit_exempt",
                "`everyone`",
            ),
        ] {
            let error = load_text(text).unwrap_err();
            assert!(error.starts_with("config node.toml: "), "{error}");
            assert!(error.contains(&format!("key `{key}`")), "{error}");
            assert!(error.contains(says), "{text}: {error}");
        }
        let syntax = load_text("max_leaves = \n").unwrap_err();
        assert!(syntax.contains("line 1"), "{syntax}");
        let unknown = load_text("config = \"x\"\n").unwrap_err();
        assert!(unknown.contains("unknown key"), "{unknown}");
    }

    #[test]
    fn the_exempt_list_takes_networks_addresses_or_none() {
        let items: Vec<Exempt> = ["10.0.0.0/8", "192.0.2.7", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            exempt_networks(&items).unwrap(),
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ]
        );
        let none: Exempt = "none".parse().unwrap();
        assert_eq!(exempt_networks(&[none]).unwrap(), Vec::new());
        assert!(exempt_networks(&[none, items[0]]).is_err());
        let error = "localhost".parse::<Exempt>().unwrap_err();
        assert!(error.contains("`localhost`"), "{error}");
    }
}
