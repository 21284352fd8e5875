//! Addresses as a person writes them: a host name or an IP address, with
//! or without a port (`DEFAULT_PORT` when left out), IPv6 in brackets when
//! a port follows. A name is resolved to every address it has, so a DNS
//! seed naming several supernodes offers them all.
//!
//! Accepted: `host`, `host:port`, `1.2.3.4`, `1.2.3.4:port`, `::1`,
//! `[::1]`, `[::1]:port`. A name is letters, digits, `-`, `_` and dots,
//! at most 253 characters; port 0 is refused (it can't be dialed).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The port a Canopy node listens on when none is given.
pub const DEFAULT_PORT: u16 = 6346;
/// Longest host name (as DNS allows).
const MAX_NAME_LEN: usize = 253;

/// A host (name or IP address) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// Nothing given.
    #[error("empty address")]
    Empty,
    /// The port is not a number from 1 to 65535.
    #[error("invalid port {0:?} (expected 1-65535)")]
    Port(String),
    /// The host is neither an IP address nor a valid name.
    #[error("invalid host {0:?}")]
    Host(String),
    /// `[` without its `]`, or text after `]` that is not `:port`.
    #[error("invalid bracketed IPv6 address {0:?} (expected [v6] or [v6]:port)")]
    Brackets(String),
}

impl HostPort {
    /// `ip:port`.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP address, if the host is one (no lookup needed).
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    /// The socket address, if the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Every address the host has (an IP address is its own), in the
    /// order the resolver gave them, without repeats.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let name = match &self.host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => name,
        };
        let mut found = Vec::new();
        for addr in tokio::net::lookup_host((name.as_str(), self.port)).await? {
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
        if found.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{name} has no address"),
            ));
        }
        Ok(found)
    }
}

/// Every address of every host in `list`, without repeats; a host that
/// does not resolve is logged and passed over.
pub async fn resolve_all(list: &[HostPort]) -> Vec<SocketAddr> {
    let lookups = list
        .iter()
        .map(|host| async move { (host, host.resolve().await) });
    let mut all = Vec::new();
    for (host, result) in futures_util::future::join_all(lookups).await {
        match result {
            Ok(addrs) => {
                tracing::debug!(%host, ?addrs, "resolved");
                for addr in addrs {
                    if !all.contains(&addr) {
                        all.push(addr);
                    }
                }
            }
            Err(error) => tracing::warn!(%host, %error, "cannot resolve"),
        }
    }
    all
}

fn parse_port(text: &str) -> Result<u16, HostPortError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(HostPortError::Port(text.to_owned())),
    }
}

fn is_valid_name(name: &str) -> bool {
    // One trailing dot (a fully qualified name) is fine.
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(HostPortError::Empty);
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| HostPortError::Brackets(text.to_owned()))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| HostPortError::Host(inside.to_owned()))?;
            let port = match after {
                "" => DEFAULT_PORT,
                _ => parse_port(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| HostPortError::Brackets(text.to_owned()))?,
                )?,
            };
            return Ok(Self {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        // Two colons or more without brackets: a bare IPv6 address.
        if text.matches(':').count() > 1 {
            let ip: Ipv6Addr = text
                .parse()
                .map_err(|_| HostPortError::Host(text.to_owned()))?;
            return Ok(Self {
                host: Host::Ip(IpAddr::V6(ip)),
                port: DEFAULT_PORT,
            });
        }
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (text, DEFAULT_PORT),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self {
                host: Host::Ip(ip),
                port,
            });
        }
        // All digits and dots but not an address (`1.2.3`, `300.1.1.1`):
        // a typo, not a name.
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') || !is_valid_name(host) {
            return Err(HostPortError::Host(host.to_owned()));
        }
        Ok(Self {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self::from_socket_addr(addr)
    }
}

impl<'de> serde::Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HostPort {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    #[test]
    fn every_form_a_person_writes() {
        let cases = [
            ("example.org", "example.org:6346"),
            ("Example.ORG:7000", "example.org:7000"),
            (
                "seed-1.canopy_net.example.",
                "seed-1.canopy_net.example.:6346",
            ),
            ("localhost", "localhost:6346"),
            ("1.2.3.4", "1.2.3.4:6346"),
            ("1.2.3.4:80", "1.2.3.4:80"),
            ("[::1]", "[::1]:6346"),
            ("[2001:db8::7]:9", "[2001:db8::7]:9"),
            ("::1", "[::1]:6346"),
            ("2001:db8::7", "[2001:db8::7]:6346"),
            (" host:1 ", "host:1"),
        ];
        for (text, shown) in cases {
            let parsed = parse(text);
            assert_eq!(parsed.to_string(), shown, "{text:?}");
            // What is shown parses back to the same.
            assert_eq!(parse(shown), parsed, "{shown:?}");
        }
        assert_eq!(
            parse("1.2.3.4").socket_addr(),
            Some("1.2.3.4:6346".parse().unwrap())
        );
        assert_eq!(parse("host").socket_addr(), None);
        assert_eq!(parse("host").port(), DEFAULT_PORT);
    }

    #[test]
    fn what_is_refused_and_why() {
        let refused = [
            ("", HostPortError::Empty),
            ("   ", HostPortError::Empty),
            ("host:", HostPortError::Port(String::new())),
            ("host:0", HostPortError::Port("0".into())),
            ("host:65536", HostPortError::Port("65536".into())),
            ("host:+80", HostPortError::Port("+80".into())),
            ("host:http", HostPortError::Port("http".into())),
            (":80", HostPortError::Host(String::new())),
            ("bad host", HostPortError::Host("bad host".into())),
            ("a..b", HostPortError::Host("a..b".into())),
            ("-a.b", HostPortError::Host("-a.b".into())),
            (".a", HostPortError::Host(".a".into())),
            ("1.2.3", HostPortError::Host("1.2.3".into())),
            ("300.1.1.1:5", HostPortError::Host("300.1.1.1".into())),
            ("h\u{e9}te", HostPortError::Host("h\u{e9}te".into())),
            ("[::1", HostPortError::Brackets("[::1".into())),
            ("[::1]80", HostPortError::Brackets("[::1]80".into())),
            ("[1.2.3.4]", HostPortError::Host("1.2.3.4".into())),
            ("[::1]:0", HostPortError::Port("0".into())),
            ("1:2:3", HostPortError::Host("1:2:3".into())),
        ];
        for (text, why) in refused {
            assert_eq!(text.parse::<HostPort>(), Err(why), "{text:?}");
        }
        let long = format!("{}.org", "a".repeat(250));
        assert!(long.parse::<HostPort>().is_err());
        let label = format!("{}.org", "a".repeat(64));
        assert!(label.parse::<HostPort>().is_err());
    }

    #[test]
    fn deserialized_from_a_string() {
        let list: Vec<HostPort> =
            serde_json::from_str(r#"["seed.example", "[::1]:7", "10.0.0.1"]"#).unwrap();
        assert_eq!(list[0].to_string(), "seed.example:6346");
        assert_eq!(list[1].to_string(), "[::1]:7");
        assert_eq!(
            serde_json::to_string(&list[2]).unwrap(),
            r#""10.0.0.1:6346""#
        );
        let bad = serde_json::from_str::<HostPort>(r#""a b""#).unwrap_err();
        assert!(bad.to_string().contains("invalid host"), "{bad}");
    }

    #[tokio::test]
    async fn names_resolve_to_every_address() {
        // An IP address resolves to itself without a lookup.
        assert_eq!(
            parse("192.0.2.1:5").resolve().await.unwrap(),
            vec!["192.0.2.1:5".parse::<SocketAddr>().unwrap()]
        );
        // localhost: every address the resolver has for it (127.0.0.1, and
        // ::1 where configured), each once, on the port given.
        let found = parse("localhost:7777").resolve().await.unwrap();
        assert!(
            found.contains(&"127.0.0.1:7777".parse().unwrap()),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .all(|a| a.port() == 7777 && a.ip().is_loopback())
        );
        let all = resolve_all(&[
            parse("localhost:7777"),
            parse("127.0.0.1:7777"),
            parse("no-such-host.invalid"),
        ])
        .await;
        assert_eq!(all, found, "repeats dropped, the unresolvable passed over");
    }
}
