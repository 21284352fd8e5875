//! Fixed-size identifiers: node ids, message ids and content ids.

use std::fmt;
use std::str::FromStr;

/// Why a hex identifier did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex characters, got {got:?}")]
pub struct ParseIdError {
    expected: usize,
    got: String,
}

macro_rules! fixed_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The id from exactly `LEN` bytes, or `None`.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, two characters a byte.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                let mut bytes = [0u8; $len];
                hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| ParseIdError {
                    expected: $len * 2,
                    got: s.chars().take(80).collect(),
                })?;
                Ok(Self(bytes))
            }
        }
    };
}

fixed_id!(
    /// A node's identity: 16 random bytes, never all zero.
    NodeId,
    16
);
fixed_id!(
    /// A query's identity, used for duplicate suppression and hit routing.
    MessageId,
    16
);
fixed_id!(
    /// A file's identity: the BLAKE3 hash of its whole content, shown as the
    /// 64 lowercase hex characters `b3sum` prints.
    ContentId,
    32
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_round_trips_through_hex() {
        let id = ContentId([0xab; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(text.parse::<ContentId>(), Ok(id));
    }

    #[test]
    fn wrong_length_or_non_hex_is_refused() {
        assert!("abcd".parse::<ContentId>().is_err());
        assert!("zz".repeat(32).parse::<ContentId>().is_err());
        assert!("00".repeat(16).parse::<NodeId>().is_ok());
    }
}
