//! `canopy:` links, the magnet links of Canopy:
//! `canopy:<64 hex content id>?name=<percent-encoded name>&size=<bytes>`,
//! name and size optional.
//!
//! A link is pasted from anywhere, so it is hostile input: its length is
//! capped, every part is checked, and an error says which part is wrong.
//! The name is a claim like a hit's: callers make it safe
//! (`save_name::safe_file_name`) before saving under it.

use std::fmt::Write as _;

use canopy_proto::ContentId;

/// The scheme, with its colon.
pub const SCHEME: &str = "canopy:";
/// Longest link parsed, in bytes.
pub const MAX_LINK_BYTES: usize = 4096;
/// Longest name kept, in bytes once decoded.
pub const MAX_NAME_BYTES: usize = 1024;

/// A parsed `canopy:` link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The content.
    pub content_id: ContentId,
    /// The name it was shared under, if the link says.
    pub name: Option<String>,
    /// Its size, if the link says.
    pub size: Option<u64>,
}

/// Why a link did not parse; each names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Longer than [`MAX_LINK_BYTES`].
    #[error("the link is {0} bytes long, over the {MAX_LINK_BYTES}-byte limit")]
    TooLong(usize),
    /// Not starting with `canopy:`.
    #[error("a link starts with \"canopy:\"")]
    Scheme,
    /// The content id is not 64 hex characters.
    #[error("the content id must be 64 hex characters")]
    ContentId,
    /// `name=` has a broken percent escape, or is too long.
    #[error("name: {0}")]
    Name(&'static str),
    /// `size=` is not a number of bytes.
    #[error("size must be a whole number of bytes")]
    Size,
}

impl Link {
    /// A link to `content_id`.
    pub fn new(content_id: ContentId, name: Option<String>, size: Option<u64>) -> Self {
        Self {
            content_id,
            name,
            size,
        }
    }

    /// Parses a link. Unknown parameters are ignored (later versions may
    /// add some); known ones may appear once.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let text = text.trim();
        if text.len() > MAX_LINK_BYTES {
            return Err(LinkError::TooLong(text.len()));
        }
        let scheme = text.get(..SCHEME.len()).ok_or(LinkError::Scheme)?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(LinkError::Scheme);
        }
        let rest = &text[SCHEME.len()..];
        let (id_part, query) = match rest.split_once('?') {
            Some((id, query)) => (id, Some(query)),
            None => (rest, None),
        };
        if id_part.len() != 64 || !id_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LinkError::ContentId);
        }
        let content_id: ContentId = id_part.parse().map_err(|_| LinkError::ContentId)?;
        let mut link = Link::new(content_id, None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            // Like a magnet link's, parameters this version does not know
            // (or can't read) are passed over.
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            match key {
                "name" if link.name.is_none() => link.name = decode_name(value)?,
                "size" if link.size.is_none() => {
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(LinkError::Size);
                    }
                    link.size = Some(value.parse().map_err(|_| LinkError::Size)?);
                }
                // A repeated name or size: the first one counts.
                "name" | "size" => {}
                _ => {}
            }
        }
        Ok(link)
    }

    /// The link as text; the name percent-encoded.
    pub fn format(&self) -> String {
        let mut out = format!("{SCHEME}{}", self.content_id.to_hex());
        let mut separator = '?';
        if let Some(name) = &self.name {
            out.push(separator);
            out.push_str("name=");
            out.push_str(&encode(name));
            separator = '&';
        }
        if let Some(size) = self.size {
            out.push(separator);
            let _ = write!(out, "size={size}");
        }
        out
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.format())
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes a percent-encoded name (`+` is a space, as forms write it).
/// An empty name is no name; bytes that are not UTF-8 become U+FFFD (the
/// name is only a suggestion, made safe before anything is saved under it).
fn decode_name(value: &str) -> Result<Option<String>, LinkError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex_value);
                let low = bytes.get(i + 2).copied().and_then(hex_value);
                match (high, low) {
                    (Some(high), Some(low)) => out.push(high << 4 | low),
                    _ => return Err(LinkError::Name("a % is not followed by two hex digits")),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    if out.len() > MAX_NAME_BYTES {
        return Err(LinkError::Name("longer than 1024 bytes"));
    }
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ContentId = ContentId([0xab; 32]);

    fn hex() -> String {
        ID.to_hex()
    }

    #[test]
    fn a_link_round_trips_with_and_without_its_parameters() {
        let full = Link::new(ID, Some("My Song (live) é.mp3".into()), Some(1234));
        let text = full.format();
        assert_eq!(
            text,
            format!(
                "canopy:{}?name=My%20Song%20%28live%29%20%C3%A9.mp3&size=1234",
                hex()
            )
        );
        assert_eq!(Link::parse(&text), Ok(full));
        let bare = Link::new(ID, None, None);
        assert_eq!(bare.format(), format!("canopy:{}", hex()));
        assert_eq!(Link::parse(&bare.format()), Ok(bare));
        let sized = Link::new(ID, None, Some(0));
        assert_eq!(Link::parse(&sized.to_string()), Ok(sized));
    }

    #[test]
    fn parsing_is_lenient_on_case_order_plus_and_unknown_keys() {
        let text = format!(
            "  CANOPY:{}?size=7&x=y&name=a+b%2fc  ",
            hex().to_uppercase()
        );
        let link = Link::parse(&text).unwrap();
        assert_eq!(link.content_id, ID);
        assert_eq!(link.name.as_deref(), Some("a b/c"));
        assert_eq!(link.size, Some(7));
    }

    #[test]
    fn each_malformed_part_is_named() {
        let id = hex();
        assert_eq!(Link::parse("magnet:?xt=1"), Err(LinkError::Scheme));
        assert_eq!(Link::parse("can"), Err(LinkError::Scheme));
        assert_eq!(Link::parse("canopy:abc"), Err(LinkError::ContentId));
        assert_eq!(
            Link::parse(&format!("canopy:{}", "g".repeat(64))),
            Err(LinkError::ContentId)
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?size=-1")),
            Err(LinkError::Size)
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?size=99999999999999999999999")),
            Err(LinkError::Size)
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?size=")),
            Err(LinkError::Size)
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?name=%zz")),
            Err(LinkError::Name("a % is not followed by two hex digits"))
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?name=%")),
            Err(LinkError::Name("a % is not followed by two hex digits"))
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?name=%FF")).map(|l| l.name),
            Ok(Some("\u{fffd}".to_owned())),
            "not UTF-8: read lossily"
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?name=")).map(|l| l.name),
            Ok(None),
            "an empty name is no name"
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?name=a&name=b")).map(|l| l.name),
            Ok(Some("a".to_owned())),
            "the first name counts"
        );
        assert_eq!(
            Link::parse(&format!("canopy:{id}?oops&size=3")).map(|l| l.size),
            Ok(Some(3)),
            "what can't be read is passed over"
        );
    }

    #[test]
    fn lengths_are_capped() {
        let long = format!("canopy:{}?name={}", hex(), "a".repeat(MAX_LINK_BYTES));
        assert_eq!(Link::parse(&long), Err(LinkError::TooLong(long.len())));
        let name = format!("canopy:{}?name={}", hex(), "a".repeat(MAX_NAME_BYTES + 1));
        assert_eq!(
            Link::parse(&name),
            Err(LinkError::Name("longer than 1024 bytes"))
        );
        let ok = format!("canopy:{}?name={}", hex(), "a".repeat(MAX_NAME_BYTES));
        assert!(Link::parse(&ok).is_ok());
    }

    #[test]
    fn arbitrary_text_never_panics_and_what_parses_round_trips() {
        const PIECES: &[&str] = &[
            "canopy:",
            "CANOPY:",
            "?",
            "&",
            "=",
            "name",
            "size",
            "%",
            "%2",
            "%C3%A9",
            "%FF",
            "+",
            "0",
            "9",
            "a",
            "F",
            "g",
            "é",
            "\u{202E}",
            " ",
            "18446744073709551616",
            "/",
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % u64::try_from(bound).unwrap_or(1)).unwrap_or(0)
        };
        let mut parsed = 0;
        for round in 0..20_000 {
            let mut text = String::new();
            if round % 2 == 0 {
                text.push_str(&format!("canopy:{}", hex()));
            }
            for _ in 0..next(12) {
                text.push_str(PIECES[next(PIECES.len())]);
            }
            if let Ok(link) = Link::parse(&text) {
                parsed += 1;
                assert!(link.name.as_ref().is_none_or(|n| n.len() <= MAX_NAME_BYTES));
                assert_eq!(Link::parse(&link.format()), Ok(link.clone()), "{text:?}");
            }
        }
        assert!(parsed > 500, "the generator reaches valid links: {parsed}");
    }
}
