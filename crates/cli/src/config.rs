//! Configuration files for the long-running commands.
//!
//! `canopy supernode --config FILE` and `canopy leaf --config FILE` read a
//! TOML file whose keys are the command's flags, with dashes written as
//! underscores (`--max-leaves` is `max_leaves`; repeatable flags are
//! arrays: `peers`, `shares`). A flag given on the command line wins over
//! the file; defaults fill in the rest. Unknown keys are errors, so a typo
//! is caught, not ignored. Every error names the file and the key, and the
//! command exits with status 2.
//!
//! The file types of both commands ([`SupernodeFile`], [`LeafFile`]) are
//! here, in the library, so [`parse`] can be fuzzed on arbitrary text.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug)]
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

/// Reads `path` as a `T`, or gives `T::default()` when there is no file.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let fail = |key: Option<String>, problem: String| ConfigError {
        file: Some(path.to_owned()),
        key,
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(None, e.to_string()))?;
    parse(&text, Some(path))
}

/// Parses `text`, the contents of the config file `path` (named in errors),
/// as a `T`.
pub fn parse<T: DeserializeOwned>(text: &str, path: Option<&Path>) -> Result<T, ConfigError> {
    let fail = |key: Option<String>, problem: String| ConfigError {
        file: path.map(Path::to_owned),
        key,
        problem,
    };
    let document =
        toml::Deserializer::parse(text).map_err(|e| fail(None, syntax_problem(text, &e)))?;
    serde_path_to_error::deserialize(document).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != ".").then_some(key);
        fail(key, e.into_inner().message().to_owned())
    })
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

/// The default data directory: `$XDG_DATA_HOME/canopy` on Linux.
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("canopy"))
}

/// The value from the command line, else the file, else the default.
pub fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `--config` file of `canopy supernode`: its flags, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupernodeFile {
    pub listen: Option<SocketAddr>,
    pub peers: Option<Vec<SocketAddr>>,
    pub ttl_cap: Option<u8>,
    pub max_leaves: Option<usize>,
    pub max_peers: Option<usize>,
    pub max_files_per_leaf: Option<usize>,
    pub query_strategy: Option<QueryStrategy>,
    pub leaf_queries_per_second: Option<u32>,
    pub leaf_query_burst: Option<u32>,
    pub peer_queries_per_second: Option<u32>,
    pub peer_query_burst: Option<u32>,
    pub index_budget_bytes: Option<u64>,
    pub max_words_per_name: Option<usize>,
    pub peers_wanted: Option<usize>,
    pub leaves_per_ip: Option<usize>,
    pub leaves_per_network: Option<usize>,
    pub peers_per_ip: Option<usize>,
    pub peers_per_network: Option<usize>,
    pub handshakes_per_ip: Option<usize>,
    pub handshakes_per_network: Option<usize>,
    pub reserved_outbound_peers: Option<usize>,
    pub limit_exempt: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub json: Option<bool>,
}

/// How a supernode runs its leaves' queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueryStrategy {
    /// Flood with the query's TTL (Gnutella 0.4 style).
    Flood,
    /// Dynamic querying: probe, widen, stop at the target.
    Dynamic,
}

/// The `--config` file of `canopy leaf`: its flags, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafFile {
    pub supernodes: Option<Vec<SocketAddr>>,
    pub supernodes_wanted: Option<usize>,
    pub shares: Option<Vec<PathBuf>>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub firewalled: Option<bool>,
    pub upload_slots: Option<usize>,
    pub uploads_per_ip: Option<usize>,
    pub http_connections_per_ip: Option<usize>,
    pub max_http_connections: Option<usize>,
    pub http_header_timeout: Option<u64>,
    pub upload_stall_timeout: Option<u64>,
    pub min_upload_rate: Option<u64>,
    pub limit_exempt: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub rescan: Option<u64>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub json: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        max_leaves: Option<usize>,
        listen: Option<std::net::SocketAddr>,
    }

    fn load_text(text: &str) -> Result<Sample, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        load::<Sample>(Some(&path)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_loads_and_no_file_is_the_default() {
        assert_eq!(
            load_text("max_leaves = 5\nlisten = \"127.0.0.1:1\"\n").unwrap(),
            Sample {
                max_leaves: Some(5),
                listen: Some("127.0.0.1:1".parse().unwrap()),
            }
        );
        assert_eq!(load::<Sample>(None).unwrap(), Sample::default());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let wrong_type = load_text("max_leaves = \"many\"\n").unwrap_err();
        assert!(wrong_type.contains("node.toml"), "{wrong_type}");
        assert!(wrong_type.contains("key `max_leaves`"), "{wrong_type}");
        let bad_addr = load_text("listen = \"nowhere\"\n").unwrap_err();
        assert!(bad_addr.contains("key `listen`"), "{bad_addr}");
        let unknown = load_text("max_leafs = 3\n").unwrap_err();
        assert!(unknown.contains("max_leafs"), "{unknown}");
        let syntax = load_text("max_leaves = \n").unwrap_err();
        assert!(syntax.contains("line 1"), "{syntax}");
    }
}
