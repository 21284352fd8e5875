//! Which way a connection to a source was made: the path a transfer took.
//!
//! Every connection a [`crate::client::Connector`] opens says its path
//! ([`crate::client::Connected`]); the download sums them per source in
//! its report ([`crate::download::SourceReport::paths`]), and `canopy get
//! --json` prints them as `paths_per_source`. The names are part of that
//! output: `"direct"`, `"push"`, `"hole punch"`, `"relay"`.

use std::fmt;

use serde::Serialize;

/// How a connection to a source came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TransferPath {
    /// We dialed the source's address and it accepted.
    #[serde(rename = "direct")]
    Direct,
    /// The source connected to our callback port, asked by a Push.
    #[serde(rename = "push")]
    Push,
    /// Both sides dialed each other at once through their NATs (a TCP
    /// simultaneous open; see [`crate::punch`]), and our dial completed.
    #[serde(rename = "hole punch")]
    HolePunch,
    /// Both sides connected out to a relaying supernode, which joined
    /// the two connections.
    #[serde(rename = "relay")]
    Relay,
}

impl TransferPath {
    /// The name printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Push => "push",
            Self::HolePunch => "hole punch",
            Self::Relay => "relay",
        }
    }
}

impl fmt::Display for TransferPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_the_display_names() {
        for path in [
            TransferPath::Direct,
            TransferPath::Push,
            TransferPath::HolePunch,
            TransferPath::Relay,
        ] {
            let json = serde_json::to_string(&path).unwrap();
            assert_eq!(json, format!("\"{path}\""));
        }
        assert_eq!(TransferPath::HolePunch.to_string(), "hole punch");
    }
}
