//! What a downloader sends a leaf's upload server: the request path
//! (`/content/<id>`, `/tree/<id>`) and the `Range` header, parsed by
//! `canopy_transfer::server::{parse_path, single_range}`.
//!
//! Input: one byte choosing the file size (a small size from the next byte,
//! or any `u64` from the next eight), then the path, a newline, and the
//! Range header's value. A path must name a resource only in its canonical
//! form (any hex case); a range must lie inside the file, since the server
//! seeks to its start and promises `end - start + 1` bytes; and a simple
//! single range must be read as RFC 9110 reads it.
#![no_main]

use canopy_transfer::server::{Resource, parse_path, single_range};
use http::{HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

fn check_path(path: &str) {
    let Some((resource, id)) = parse_path(path) else {
        return;
    };
    let prefix = match resource {
        Resource::Content => "/content/",
        Resource::Tree => "/tree/",
    };
    let rest = path
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{path:?} parsed as {resource:?}"));
    assert!(rest.eq_ignore_ascii_case(&id.to_hex()), "{path:?}");
    assert_eq!(parse_path(&format!("{prefix}{id}")), Some((resource, id)));
}

/// A single range as RFC 9110 section 14.1 reads it, for the forms written
/// `bytes=FIRST-LAST`, `bytes=FIRST-` and `bytes=-SUFFIX` with nothing else
/// in the value. `None` if the value is not of those forms (no opinion);
/// `Some(None)` if it is unsatisfiable or invalid (416).
///
/// Where the parser (`http-range-header`) is stricter than the RFC, the
/// server answers 416 for a range it could serve; harmless, and accepted
/// here: a suffix longer than the file is refused (the RFC would serve the
/// whole file), and numbers with leading zeros or past `u64` are left out.
fn reference_range(text: &str, size: u64) -> Option<Option<(u64, u64)>> {
    let spec = text.strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let digits = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let number = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        (false, false) if digits(first) && digits(last) => {
            let (first, last) = (number(first)?, number(last)?);
            if first > last || first >= size {
                return Some(None);
            }
            Some(Some((first, last.min(size - 1))))
        }
        (false, true) if digits(first) => {
            let first = number(first)?;
            if first >= size {
                return Some(None);
            }
            Some(Some((first, size - 1)))
        }
        (true, false) if digits(last) => {
            let suffix = number(last)?;
            if suffix == 0 || suffix > size {
                return Some(None);
            }
            Some(Some((size - suffix, size - 1)))
        }
        _ => None,
    }
}

fn check_range(value: &[u8], size: u64) {
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let range = single_range(&value, size);
    if let Some(range) = &range {
        assert!(range.start() <= range.end(), "{value:?}: {range:?}");
        assert!(*range.end() < size, "{value:?}: {range:?} on {size} bytes");
    }
    if let Some(expected) = value.to_str().ok().and_then(|t| reference_range(t, size)) {
        let got = range.map(|r| (*r.start(), *r.end()));
        assert_eq!(got, expected, "{value:?} on {size} bytes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (size, rest) = if mode & 1 == 0 {
        let Some((&small, rest)) = rest.split_first() else {
            return;
        };
        (u64::from(small), rest)
    } else {
        let Some((wide, rest)) = rest.split_first_chunk::<8>() else {
            return;
        };
        (u64::from_le_bytes(*wide), rest)
    };
    let (path, range) = match rest.iter().position(|&b| b == b'\n') {
        Some(newline) => (&rest[..newline], &rest[newline + 1..]),
        None => (rest, &[][..]),
    };
    // As the server sees it: the path of a request target hyper accepted...
    if let Ok(uri) = Uri::try_from(path) {
        check_path(uri.path());
    }
    // ...and, stricter than needed, any text at all.
    if let Ok(path) = std::str::from_utf8(path) {
        check_path(path);
    }
    check_range(range, size);
});
