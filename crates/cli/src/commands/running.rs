//! Finding the running leaf (`canopy leaf`) through its data directory,
//! for the commands that talk to it (`status`, `downloads`, `uploads`,
//! `pause`/`resume`/`cancel`, and `search`/`get` when one runs), and
//! picking a download of its queue by number or id.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use canopy_cli::config;
use canopy_daemon::client::ControlClient;
use canopy_daemon::model::DownloadView;

/// The data directory a running leaf is looked for in.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DataDir {
    /// The running leaf's data directory [default: the one `canopy leaf`
    /// uses, $XDG_DATA_HOME/canopy].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

impl DataDir {
    /// The directory: the flag's, else the default.
    pub(crate) fn path(&self) -> anyhow::Result<PathBuf> {
        self.data_dir
            .clone()
            .or_else(config::default_data_dir)
            .ok_or_else(|| anyhow!("no data directory: give --data-dir (there is no home folder)"))
    }

    /// The leaf running on this directory, if one is.
    pub(crate) async fn find(&self) -> anyhow::Result<(Option<ControlClient>, PathBuf)> {
        let dir = self.path()?;
        Ok((ControlClient::find(&dir).await, dir))
    }

    /// The leaf running on this directory; an error saying how to start
    /// one if none is.
    pub(crate) async fn leaf(&self) -> anyhow::Result<ControlClient> {
        match self.find().await? {
            (Some(client), _) => Ok(client),
            (None, dir) => Err(anyhow!("{}", no_leaf(&dir))),
        }
    }
}

/// What every command that asks the running leaf takes: where the leaf
/// runs, and `--json`. Each command says what its JSON is by replacing
/// the flag's help (`#[command(mut_arg("json", ...))]`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LeafArgs {
    #[command(flatten)]
    pub(crate) dir: DataDir,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

impl LeafArgs {
    /// The running leaf; an error saying how to start one if none runs.
    pub(crate) async fn leaf(&self) -> anyhow::Result<ControlClient> {
        self.dir.leaf().await
    }
}

/// "no running leaf found in DIR (start one with `canopy leaf`)".
pub(crate) fn no_leaf(dir: &Path) -> String {
    format!(
        "no running leaf found in {} (start one with `canopy leaf`)",
        dir.display()
    )
}

/// How a download is named on the command line: its number in
/// `canopy downloads`, its content id, or a start of it that only it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pick {
    /// 1-based, in queue order.
    Number(usize),
    /// The whole content id (64 hex).
    Id(String),
    /// A start of one (at least [`MIN_PREFIX`] hex digits).
    Prefix(String),
    /// Decimal digits long enough to be either: whichever names a download.
    NumberOrPrefix(usize, String),
}

/// The shortest start of an id accepted.
pub(crate) const MIN_PREFIX: usize = 4;

impl Pick {
    /// Reads `N`, a content id or a start of one.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Pick> {
        let text = text.trim();
        let is_hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
        if text.len() < MIN_PREFIX && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let n: usize = text
                .parse()
                .with_context(|| format!("not a download number: {text}"))?;
            if n == 0 {
                bail!("downloads are numbered from 1 (see `canopy downloads`)");
            }
            return Ok(Pick::Number(n));
        }
        if (MIN_PREFIX..20).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = text.parse::<usize>() {
                return Ok(Pick::NumberOrPrefix(n, text.to_owned()));
            }
        }
        if is_hex && text.len() == 64 {
            return Ok(Pick::Id(text.to_ascii_lowercase()));
        }
        if is_hex && (MIN_PREFIX..64).contains(&text.len()) {
            return Ok(Pick::Prefix(text.to_ascii_lowercase()));
        }
        bail!(
            "not a download number or content id: {text} (give N from `canopy downloads`, \
             or at least {MIN_PREFIX} hex digits of the id)"
        )
    }

    /// The download it names in the running leaf's queue.
    pub(crate) async fn find(&self, client: &ControlClient) -> anyhow::Result<DownloadView> {
        match self {
            Pick::Id(id) => Ok(client.download(id).await?),
            Pick::Number(n) => {
                let queue = client.downloads().await?;
                let count = queue.len();
                queue.into_iter().nth(n - 1).ok_or_else(|| {
                    anyhow!("no download #{n}: the queue has {count} (see `canopy downloads`)")
                })
            }
            Pick::Prefix(prefix) => by_prefix(client.downloads().await?, prefix),
            Pick::NumberOrPrefix(n, prefix) => {
                let queue = client.downloads().await?;
                let numbered = n.checked_sub(1).and_then(|index| queue.get(index)).cloned();
                let prefixed = queue.iter().any(|d| d.id.starts_with(prefix.as_str()));
                match (numbered, prefixed) {
                    (Some(_), true) => bail!(
                        "{n} is both download #{n} and the start of an id: give more of the id"
                    ),
                    (Some(download), false) => Ok(download),
                    (None, _) => by_prefix(queue, prefix),
                }
            }
        }
    }
}

/// The one download whose id starts with `prefix`.
fn by_prefix(queue: Vec<DownloadView>, prefix: &str) -> anyhow::Result<DownloadView> {
    let mut matching: Vec<DownloadView> = queue
        .into_iter()
        .filter(|d| d.id.starts_with(prefix))
        .collect();
    match matching.len() {
        0 => bail!("no download in the queue has an id starting with {prefix}"),
        1 => Ok(matching.remove(0)),
        more => bail!("{more} downloads have ids starting with {prefix}: give more of it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_ids_and_prefixes_are_told_apart() {
        assert_eq!(Pick::parse("3").ok(), Some(Pick::Number(3)));
        assert_eq!(Pick::parse(" 12 ").ok(), Some(Pick::Number(12)));
        let id = "AB".repeat(32);
        assert_eq!(
            Pick::parse(&id).ok(),
            Some(Pick::Id(id.to_ascii_lowercase()))
        );
        assert_eq!(
            Pick::parse("abc123").ok(),
            Some(Pick::Prefix("abc123".into()))
        );
        assert_eq!(
            Pick::parse("1234").ok(),
            Some(Pick::NumberOrPrefix(1234, "1234".into()))
        );
        assert!(Pick::parse("0").is_err(), "numbers start at 1");
        assert!(Pick::parse("abc").is_err(), "too short a prefix");
        assert!(Pick::parse("film.mkv").is_err());
        assert!(Pick::parse("").is_err());
        assert!(Pick::parse(&"a".repeat(65)).is_err());
    }
}
