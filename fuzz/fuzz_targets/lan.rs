//! LAN discovery's datagrams (`canopy_core::lan`): what anyone on the LAN
//! can send a node's multicast socket.
//!
//! The first byte picks the source address (a private, a loopback, a
//! public or a link-local IPv6 one); the rest is cut into datagrams of
//! `LEN` bytes (the last one shorter), fed to one node 10 ms apart, its
//! timers run after each. Nothing may panic; a datagram that decodes
//! encodes back to the same bytes; a public source is never taken; every
//! node in the table has the source's IP; the table stays bounded.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use canopy_core::Time;
use canopy_core::lan::{Announce, LEN, LanConfig, LanDiscovery, Rejected};
use canopy_proto::{NodeId, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let ip = match first % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 168, 1, first)),
        1 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        2 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, first)),
        _ => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(first))),
    };
    let public = first % 4 == 2;
    let from = SocketAddr::new(ip, 6346);
    let config = LanConfig::new(NodeId([1; 16]), Role::Supernode, 6346, 0, 7, 9);
    let mut node = LanDiscovery::new(config, Time::ZERO);
    for (i, datagram) in rest.chunks(LEN).enumerate() {
        if let Ok(announce) = Announce::decode(datagram) {
            assert_eq!(&announce.encode()[..], datagram, "round trip");
        }
        let now = Time(i as u64 * 10);
        let heard = node.handle_datagram(from, datagram, now);
        if public {
            assert!(
                matches!(heard, Err(Rejected::NotLan(_) | Rejected::OverBudget)),
                "{heard:?}"
            );
        }
        node.handle_timeout(now);
        while node.poll_action().is_some() {}
    }
    assert!(node.peers().count() <= 4, "4 per source IP");
    assert!(node.peers().all(|peer| peer.ip == ip));
    assert!(node.supernodes().iter().all(|addr| addr.ip() == ip));
});
