//! NAT-PMP's messages (RFC 6886) as bytes: the two requests a client sends
//! (external address, map TCP) and a bounded, validated parser for the
//! gateway's answers. No I/O: the driver sends what `encode_*` returns and
//! hands back whatever datagram arrives.
//!
//! Every answer is hostile until checked: its length, version, opcode,
//! result code, the internal port it names, and a lifetime and address that
//! make sense. A datagram that fails any check is an error, never a panic.

use std::net::Ipv4Addr;
use std::time::Duration;

/// The port a NAT-PMP gateway listens on.
pub const PORT: u16 = 5351;
/// The only version this client speaks.
const VERSION: u8 = 0;
/// Opcodes of the requests; an answer's opcode is the request's + 128.
const OP_EXTERNAL_ADDRESS: u8 = 0;
const OP_MAP_TCP: u8 = 2;
const RESPONSE_BIT: u8 = 128;
/// Sizes of the answers (RFC 6886 §3.2 and §3.3).
const EXTERNAL_ADDRESS_LEN: usize = 12;
const MAP_LEN: usize = 16;
/// The largest datagram worth reading: anything longer is not NAT-PMP.
pub const MAX_DATAGRAM: usize = 64;
/// The longest lease we believe (a day); a longer one is clamped.
const MAX_LIFETIME: u32 = 24 * 3600;

/// What a NAT-PMP answer can be wrong about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the answer it should be, or longer than any answer.
    #[error("answer of {0} bytes has the wrong length")]
    Length(usize),
    /// Not version 0 (a PCP server answers with version 2).
    #[error("answer has version {0}")]
    Version(u8),
    /// Not the answer to what we asked.
    #[error("answer has opcode {0}")]
    Opcode(u8),
    /// The gateway refused (RFC 6886 §3.5 result codes).
    #[error("gateway refused with result code {0}")]
    Refused(u16),
    /// A mapping of another internal port than ours.
    #[error("answer maps internal port {0}")]
    InternalPort(u16),
    /// A granted mapping with no lifetime or no external port.
    #[error("answer grants an empty mapping")]
    Empty,
    /// An external address nobody can reach us at.
    #[error("external address {0} is not usable")]
    Address(Ipv4Addr),
}

/// The request for the gateway's external address.
pub fn encode_external_address() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// The request to map TCP `internal_port`, asking for `external_port` for
/// `lifetime` (zero with external port zero deletes the mapping).
pub fn encode_map_tcp(internal_port: u16, external_port: u16, lifetime: Duration) -> [u8; 12] {
    let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    let mut out = [0u8; 12];
    out[0] = VERSION;
    out[1] = OP_MAP_TCP;
    out[4..6].copy_from_slice(&internal_port.to_be_bytes());
    out[6..8].copy_from_slice(&external_port.to_be_bytes());
    out[8..12].copy_from_slice(&seconds.to_be_bytes());
    out
}

/// A granted mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapAnswer {
    /// The port on the gateway's external address.
    pub external_port: u16,
    /// How long the gateway keeps it.
    pub lifetime: Duration,
}

fn header(datagram: &[u8], want_len: usize, opcode: u8) -> Result<(), ParseError> {
    if datagram.len() < want_len || datagram.len() > MAX_DATAGRAM {
        return Err(ParseError::Length(datagram.len()));
    }
    if datagram[0] != VERSION {
        return Err(ParseError::Version(datagram[0]));
    }
    if datagram[1] != opcode | RESPONSE_BIT {
        return Err(ParseError::Opcode(datagram[1]));
    }
    let result = u16::from_be_bytes([datagram[2], datagram[3]]);
    if result != 0 {
        return Err(ParseError::Refused(result));
    }
    Ok(())
}

/// Parses the answer to [`encode_external_address`].
pub fn parse_external_address(datagram: &[u8]) -> Result<Ipv4Addr, ParseError> {
    header(datagram, EXTERNAL_ADDRESS_LEN, OP_EXTERNAL_ADDRESS)?;
    let ip = Ipv4Addr::new(datagram[8], datagram[9], datagram[10], datagram[11]);
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(ParseError::Address(ip));
    }
    Ok(ip)
}

/// Parses the answer to [`encode_map_tcp`] for `internal_port`. With
/// `deleting`, a zero lifetime and port are what success looks like.
pub fn parse_map_tcp(
    datagram: &[u8],
    internal_port: u16,
    deleting: bool,
) -> Result<MapAnswer, ParseError> {
    header(datagram, MAP_LEN, OP_MAP_TCP)?;
    let internal = u16::from_be_bytes([datagram[8], datagram[9]]);
    if internal != internal_port {
        return Err(ParseError::InternalPort(internal));
    }
    let external_port = u16::from_be_bytes([datagram[10], datagram[11]]);
    let lifetime = u32::from_be_bytes([datagram[12], datagram[13], datagram[14], datagram[15]]);
    if !deleting && (external_port == 0 || lifetime == 0) {
        return Err(ParseError::Empty);
    }
    Ok(MapAnswer {
        external_port,
        lifetime: Duration::from_secs(u64::from(lifetime.min(MAX_LIFETIME))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_answer(result: u16, internal: u16, external: u16, lifetime: u32) -> Vec<u8> {
        let mut out = vec![0, 130];
        out.extend_from_slice(&result.to_be_bytes());
        out.extend_from_slice(&7u32.to_be_bytes());
        out.extend_from_slice(&internal.to_be_bytes());
        out.extend_from_slice(&external.to_be_bytes());
        out.extend_from_slice(&lifetime.to_be_bytes());
        out
    }

    #[test]
    fn requests_are_laid_out_as_the_rfc_says() {
        assert_eq!(encode_external_address(), [0, 0]);
        assert_eq!(
            encode_map_tcp(7000, 7001, Duration::from_secs(60)),
            [0, 2, 0, 0, 0x1b, 0x58, 0x1b, 0x59, 0, 0, 0, 60]
        );
    }

    #[test]
    fn a_real_answer_parses() {
        // As miniupnpd sent it.
        let external = [0, 128, 0, 0, 0, 0, 0, 0x13, 93, 184, 0, 1];
        assert_eq!(
            parse_external_address(&external),
            Ok(Ipv4Addr::new(93, 184, 0, 1))
        );
        let map = map_answer(0, 7000, 7000, 60);
        assert_eq!(
            parse_map_tcp(&map, 7000, false),
            Ok(MapAnswer {
                external_port: 7000,
                lifetime: Duration::from_secs(60)
            })
        );
    }

    #[test]
    fn wrong_answers_are_errors() {
        assert_eq!(parse_external_address(&[]), Err(ParseError::Length(0)));
        assert_eq!(
            parse_external_address(&[0, 128, 0, 0]),
            Err(ParseError::Length(4))
        );
        assert_eq!(
            parse_external_address(&[0u8; 65]),
            Err(ParseError::Length(65))
        );
        assert_eq!(
            parse_external_address(&[2, 128, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
            Err(ParseError::Version(2))
        );
        assert_eq!(
            parse_external_address(&[0, 130, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
            Err(ParseError::Opcode(130))
        );
        assert_eq!(
            parse_external_address(&[0, 128, 0, 3, 0, 0, 0, 0, 1, 2, 3, 4]),
            Err(ParseError::Refused(3))
        );
        assert_eq!(
            parse_external_address(&[0, 128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::Address(Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            parse_map_tcp(&map_answer(0, 7001, 7000, 60), 7000, false),
            Err(ParseError::InternalPort(7001))
        );
        assert_eq!(
            parse_map_tcp(&map_answer(0, 7000, 7000, 0), 7000, false),
            Err(ParseError::Empty)
        );
        assert_eq!(
            parse_map_tcp(&map_answer(0, 7000, 0, 60), 7000, false),
            Err(ParseError::Empty)
        );
        assert_eq!(
            parse_map_tcp(&map_answer(2, 7000, 7000, 60), 7000, false),
            Err(ParseError::Refused(2))
        );
    }

    #[test]
    fn a_deletion_answers_zeros_and_lifetimes_are_clamped() {
        assert!(parse_map_tcp(&map_answer(0, 7000, 0, 0), 7000, true).is_ok());
        let long = parse_map_tcp(&map_answer(0, 7000, 7000, u32::MAX), 7000, false);
        assert_eq!(
            long.map(|a| a.lifetime),
            Ok(Duration::from_secs(u64::from(MAX_LIFETIME)))
        );
    }

    #[test]
    fn no_datagram_panics_the_parser() {
        // Every short datagram, and a spread of byte values in each place.
        for len in 0..=MAX_DATAGRAM + 1 {
            for fill in [0u8, 1, 2, 127, 128, 130, 255] {
                let mut datagram = vec![fill; len];
                if len > 1 {
                    datagram[0] = 0;
                    datagram[1] = 130;
                }
                let _ = parse_external_address(&datagram);
                let _ = parse_map_tcp(&datagram, 7000, false);
                let _ = parse_map_tcp(&datagram, 7000, true);
            }
        }
    }
}
