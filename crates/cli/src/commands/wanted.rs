//! What `canopy get` is asked for: a content id, a `canopy:` link
//! (`canopy:<64 hex>?name=..&size=..`, like a magnet link) or the number
//! of a result of the last search.

use std::path::Path;

use anyhow::{Context as _, bail};
use canopy_daemon::model::{AddDownload, ResultView};
use canopy_proto::ContentId;

use super::last_search::LastSearch;

/// The content `canopy get` is to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// A bare content id.
    Id(ContentId),
    /// A `canopy:` link (the leaf reads its name and size).
    Link {
        /// The id in it.
        id: ContentId,
        /// The whole link.
        link: String,
    },
    /// Result `n` of the last search.
    Found {
        /// Its number.
        n: usize,
        /// Its id.
        id: ContentId,
        /// The result as the search saw it.
        result: ResultView,
    },
}

impl Wanted {
    /// Reads an id, a link, or a result number (looked up in `data_dir`'s
    /// last search).
    pub(crate) fn parse(text: &str, data_dir: Option<&Path>) -> anyhow::Result<Wanted> {
        let text = text.trim();
        if let Some(rest) = text
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("canopy:"))
            .and_then(|_| text.get(7..))
        {
            let id = rest.split_once('?').map_or(rest, |(id, _)| id);
            let id: ContentId = id
                .parse()
                .map_err(|_| anyhow::anyhow!("no content id (64 hex) in the link {text}"))?;
            return Ok(Wanted::Link {
                id,
                link: text.to_owned(),
            });
        }
        if text.len() == 64 {
            if let Ok(id) = text.parse() {
                return Ok(Wanted::Id(id));
            }
        }
        if !text.is_empty() && text.len() < 10 && text.bytes().all(|b| b.is_ascii_digit()) {
            let n: usize = text.parse().context("a result number")?;
            let Some(dir) = data_dir else {
                bail!("no data directory to find the last search in: give --data-dir");
            };
            let search = LastSearch::load(dir)?;
            let result = search.result(n)?.clone();
            let id = result.content_id.parse().map_err(|_| {
                anyhow::anyhow!("result #{n} of the last search has no valid content id")
            })?;
            return Ok(Wanted::Found { n, id, result });
        }
        bail!(
            "not a content id (64 hex), a canopy: link or a result number of the last search: {text}"
        )
    }

    /// Its content id.
    pub(crate) fn id(&self) -> ContentId {
        match self {
            Wanted::Id(id) | Wanted::Link { id, .. } | Wanted::Found { id, .. } => *id,
        }
    }

    /// The request that queues it in the running leaf.
    pub(crate) fn add(&self, name: Option<String>, priority: Option<i32>) -> AddDownload {
        let (id, link, name) = match self {
            Wanted::Id(id) => (Some(id.to_hex()), None, name),
            Wanted::Link { link, .. } => (None, Some(link.clone()), name),
            Wanted::Found { result, .. } if !result.link.is_empty() => {
                (None, Some(result.link.clone()), name)
            }
            Wanted::Found { id, result, .. } => (
                Some(id.to_hex()),
                None,
                name.or_else(|| Some(result.name.clone()).filter(|n| !n.is_empty())),
            ),
        };
        AddDownload {
            id,
            link,
            name,
            priority,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_links_and_numbers_are_read() {
        let hex = "ab".repeat(32);
        let id: ContentId = hex.parse().unwrap();
        assert_eq!(Wanted::parse(&hex, None).unwrap(), Wanted::Id(id));
        let link = format!("canopy:{hex}?name=a%20b.ogg&size=10");
        assert_eq!(
            Wanted::parse(&link, None).unwrap(),
            Wanted::Link {
                id,
                link: link.clone()
            }
        );
        let add = Wanted::parse(&link, None).unwrap().add(None, Some(2));
        assert_eq!(add.link.as_deref(), Some(link.as_str()));
        assert_eq!((add.id, add.priority), (None, Some(2)));
        assert!(Wanted::parse(&format!("CANOPY:{hex}"), None).is_ok());
        assert!(Wanted::parse("canopy:abc?name=x", None).is_err());
        assert!(Wanted::parse("film.mkv", None).is_err());

        let dir = tempfile::tempdir().unwrap();
        assert!(
            Wanted::parse("1", Some(dir.path())).is_err(),
            "no search yet"
        );
        LastSearch {
            query: "x".into(),
            results: vec![ResultView {
                content_id: hex.clone(),
                name: "x.ogg".into(),
                ..ResultView::default()
            }],
        }
        .save(dir.path())
        .unwrap();
        let found = Wanted::parse("1", Some(dir.path())).unwrap();
        assert_eq!(found.id(), id);
        let add = found.add(None, None);
        assert_eq!(add.id.as_deref(), Some(hex.as_str()));
        assert_eq!(add.name.as_deref(), Some("x.ogg"));
        assert!(Wanted::parse("2", Some(dir.path())).is_err());
    }
}
