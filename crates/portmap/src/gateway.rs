//! Finding the home router: the IPv4 default gateway, read from the
//! kernel's routing table (`/proc/net/route` on Linux), with a bounded read
//! and a parser that skips any line it does not understand.

use std::io::Read as _;
use std::net::Ipv4Addr;

/// The routing table is read up to this many bytes (a home machine's is a
/// few hundred).
const MAX_ROUTE_TABLE: u64 = 256 * 1024;
/// `RTF_UP | RTF_GATEWAY`.
const FLAGS_UP_GATEWAY: u32 = 0x1 | 0x2;

/// The default gateway the kernel routes through, if there is one.
pub fn default_gateway() -> Option<Ipv4Addr> {
    let file = std::fs::File::open("/proc/net/route").ok()?;
    let mut text = String::new();
    file.take(MAX_ROUTE_TABLE).read_to_string(&mut text).ok()?;
    parse_route_table(&text)
}

/// The gateway of the first default route (destination and mask 0, up,
/// through a gateway) in `/proc/net/route`'s format: a header line, then
/// tab-separated columns with addresses as little-endian hex.
pub fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let [_iface, destination, gateway, flags, _, _, _, mask, ..] = columns[..] else {
            return None;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let flags = hex(flags)?;
        if hex(destination)? != 0 || hex(mask)? != 0 || flags & FLAGS_UP_GATEWAY != FLAGS_UP_GATEWAY
        {
            return None;
        }
        let gateway = Ipv4Addr::from(hex(gateway)?.swap_bytes());
        (!gateway.is_unspecified()).then_some(gateway)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    #[test]
    fn finds_the_default_route() {
        let table = format!(
            "{HEADER}eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        assert_eq!(parse_route_table(&table), Some(Ipv4Addr::new(10, 77, 0, 1)));
    }

    #[test]
    fn no_default_route_or_garbage_is_none() {
        assert_eq!(parse_route_table(""), None);
        assert_eq!(parse_route_table(HEADER), None);
        let local_only =
            format!("{HEADER}eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        assert_eq!(parse_route_table(&local_only), None);
        let garbage = format!("{HEADER}eth0\tzz\tyy\t0003\n\u{0}\u{1}\n\t\t\t\t\t\t\t\t\n");
        assert_eq!(parse_route_table(&garbage), None);
        // A default route that is down.
        let down = format!("{HEADER}eth0\t00000000\t01004D0A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(parse_route_table(&down), None);
    }
}
