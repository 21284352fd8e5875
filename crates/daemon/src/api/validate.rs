//! The shape checks the OpenAPI document promises (ranges, lengths,
//! patterns), made here once so that every [`Control`](crate::control::Control)
//! gets only requests the document allows; what a value means (is the
//! folder there, is that id queued) is the daemon's to check.

use crate::model::{AddDownload, ApiError, SearchSpec, SettingsPatch, SharePath};

/// Longest search query, characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most extensions in a filter.
pub const MAX_EXTENSIONS: usize = 32;
/// Longest extension, characters.
pub const MAX_EXTENSION_CHARS: usize = 16;
/// Longest name or link, characters.
pub const MAX_NAME_CHARS: usize = 1024;
/// Longest path, bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Whether `id` is a content id: 64 hex characters.
pub fn is_content_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `id` could be a search id: 1-64 of `A-Za-z0-9_-`.
pub fn is_search_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `link` has the shape of a `canopy:` link (the document's
/// pattern): `canopy:<64 hex>`, then optionally `?` and `name=<text>` or
/// `size=<1-19 digits>` parameters joined by `&`.
pub fn is_link(link: &str) -> bool {
    if link.chars().count() > MAX_NAME_CHARS {
        return false;
    }
    let Some(rest) = link.strip_prefix("canopy:") else {
        return false;
    };
    let (id, query) = match rest.split_once('?') {
        Some((id, query)) => (id, Some(query)),
        None => (rest, None),
    };
    is_content_id(id)
        && query.is_none_or(|query| {
            query.split('&').all(|parameter| {
                if let Some(name) = parameter.strip_prefix("name=") {
                    !name.contains('#')
                } else if let Some(size) = parameter.strip_prefix("size=") {
                    (1..=19).contains(&size.len()) && size.bytes().all(|b| b.is_ascii_digit())
                } else {
                    false
                }
            })
        })
}

/// A search as the document allows it.
pub fn search(spec: &SearchSpec) -> Result<(), ApiError> {
    match (&spec.query, &spec.id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either query or id, not both".into(),
            ));
        }
        (None, None) => return Err(ApiError::field("query", "give a query or an id")),
        _ => {}
    }
    if let Some(query) = &spec.query {
        if query.trim().is_empty() {
            return Err(ApiError::field("query", "empty"));
        }
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(ApiError::field(
                "query",
                format!("longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
    }
    if spec.id.as_deref().is_some_and(|id| !is_content_id(id)) {
        return Err(ApiError::field(
            "id",
            "not a content id (64 hex characters)",
        ));
    }
    // min_size over max_size is a filter nothing passes, not an error.
    if spec.extensions.len() > MAX_EXTENSIONS {
        return Err(ApiError::field(
            "extensions",
            format!("more than {MAX_EXTENSIONS}"),
        ));
    }
    for (index, extension) in spec.extensions.iter().enumerate() {
        if extension.is_empty()
            || extension.len() > MAX_EXTENSION_CHARS
            || !extension.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ApiError::field(
                &format!("extensions[{index}]"),
                format!("not an extension (1-{MAX_EXTENSION_CHARS} letters or digits, no dot)"),
            ));
        }
    }
    if spec
        .max_results
        .is_some_and(|max| !(1..=1000).contains(&max))
    {
        return Err(ApiError::field("max_results", "not within 1-1000"));
    }
    if spec
        .timeout_secs
        .is_some_and(|timeout| !(0.1..=60.0).contains(&timeout))
    {
        return Err(ApiError::field("timeout_secs", "not within 0.1-60"));
    }
    Ok(())
}

/// A download request as the document allows it.
pub fn add_download(add: &AddDownload) -> Result<(), ApiError> {
    match (&add.id, &add.link) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either id or link, not both".into(),
            ));
        }
        (None, None) => return Err(ApiError::field("id", "give an id or a link")),
        _ => {}
    }
    if add.id.as_deref().is_some_and(|id| !is_content_id(id)) {
        return Err(ApiError::field(
            "id",
            "not a content id (64 hex characters)",
        ));
    }
    if add.link.as_deref().is_some_and(|link| !is_link(link)) {
        return Err(ApiError::field(
            "link",
            "not a canopy: link (canopy:<64 hex>?name=..&size=..)",
        ));
    }
    if add
        .name
        .as_deref()
        .is_some_and(|name| name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS)
    {
        return Err(ApiError::field(
            "name",
            format!("empty or longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// A share path as the document allows it.
pub fn share_path(share: &SharePath) -> Result<(), ApiError> {
    if !share.path.starts_with('/') {
        return Err(ApiError::field("path", "not an absolute path"));
    }
    if share.path.len() > MAX_PATH_BYTES || share.path.contains('\0') {
        return Err(ApiError::field(
            "path",
            format!("over {MAX_PATH_BYTES} bytes or holding a NUL"),
        ));
    }
    Ok(())
}

/// A settings change as the document allows it.
pub fn settings(patch: &SettingsPatch) -> Result<(), ApiError> {
    if patch
        .upload_slots
        .is_some_and(|slots| !(1..=1000).contains(&slots))
    {
        return Err(ApiError::field("upload_slots", "not within 1-1000"));
    }
    if patch
        .max_active_downloads
        .is_some_and(|active| !(1..=100).contains(&active))
    {
        return Err(ApiError::field("max_active_downloads", "not within 1-100"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches() {
        let ok = SearchSpec {
            query: Some("free music".into()),
            ..SearchSpec::default()
        };
        assert!(search(&ok).is_ok());
        let field = |spec: SearchSpec| match search(&spec) {
            Err(ApiError::BadField { field, .. }) => field,
            other => format!("{other:?}"),
        };
        assert_eq!(field(SearchSpec::default()), "query");
        assert_eq!(
            field(SearchSpec {
                id: Some("abc".into()),
                ..SearchSpec::default()
            }),
            "id"
        );
        assert_eq!(
            field(SearchSpec {
                max_results: Some(0),
                ..ok.clone()
            }),
            "max_results"
        );
        assert_eq!(
            field(SearchSpec {
                timeout_secs: Some(f64::NAN),
                ..ok.clone()
            }),
            "timeout_secs"
        );
        assert_eq!(
            field(SearchSpec {
                extensions: vec!["mp3".into(), ".ogg".into()],
                ..ok.clone()
            }),
            "extensions[1]"
        );
    }

    #[test]
    fn downloads_and_settings() {
        assert!(
            add_download(&AddDownload {
                id: Some("a".repeat(64)),
                ..AddDownload::default()
            })
            .is_ok()
        );
        assert!(add_download(&AddDownload::default()).is_err());
        assert!(
            add_download(&AddDownload {
                link: Some("magnet:?x".into()),
                ..AddDownload::default()
            })
            .is_err()
        );
        assert!(
            settings(&SettingsPatch {
                upload_slots: Some(0),
                ..SettingsPatch::default()
            })
            .is_err()
        );
        assert!(settings(&SettingsPatch::default()).is_ok());
        let id = "a".repeat(64);
        assert!(is_link(&format!("canopy:{id}")));
        assert!(is_link(&format!("canopy:{id}?name=a%20b.mp3&size=12")));
        assert!(!is_link(&format!("canopy:{id}?size=x")));
        assert!(!is_link(&format!("canopy:{id}?colour=red")));
        assert!(!is_link("canopy:!"));
    }
}
