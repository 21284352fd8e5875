//! Talking to the home router: a mapping asked for and removed with NAT-PMP
//! (our own client over [`crate::natpmp`]) or UPnP IGD (`igd-next`). Every
//! exchange is bounded in time and in bytes, and every answer is checked:
//! whatever the router says, the result is a [`Granted`] or a
//! [`MapError`], never a panic or a hang.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_core::addrman::group::Scope;
use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout, timeout_at};

use crate::natpmp::{self, ParseError};
use crate::policy::{Granted, Protocol};

/// NAT-PMP's first retransmission wait (RFC 6886 §3.1); it doubles. We stop
/// after three sends (1.75 s) rather than the RFC's nine: a router that
/// has not answered by then is not there, and the policy asks again later.
const NATPMP_FIRST_WAIT: Duration = Duration::from_millis(250);
const NATPMP_SENDS: u32 = 3;
/// How long one SSDP search waits for the router's answer, and how many
/// searches are sent (a search is one datagram each way: one may be lost).
const SSDP_TIMEOUT: Duration = Duration::from_secs(1);
const SSDP_SEARCHES: u32 = 2;
/// The longest a whole UPnP mapping (discovery, description, SOAP calls)
/// may take.
const UPNP_TIMEOUT: Duration = Duration::from_secs(6);
/// What the mapping is called in the router's table.
const DESCRIPTION: &str = "canopy";

/// Why a mapping was not made (or removed).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// No router to ask: no IPv4 default gateway, or no IPv4 route to it.
    #[error("no IPv4 gateway")]
    NoGateway,
    /// A socket could not be opened or used.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no answer in time")]
    Timeout,
    /// NAT-PMP's answer was wrong or a refusal.
    #[error("NAT-PMP: {0}")]
    NatPmp(#[from] ParseError),
    /// UPnP discovery or a UPnP call failed.
    #[error("UPnP: {0}")]
    Upnp(String),
    /// The router's own external address is not a public one (another
    /// NAT behind it, or carrier-grade NAT): a mapping on it would not
    /// make us reachable, so none is asked for.
    #[error("the router's external address {0} is not public (a NAT behind another?)")]
    NotPublic(Ipv4Addr),
}

/// Where the router is and what to map.
#[derive(Debug, Clone)]
pub struct Router {
    /// The NAT-PMP gateway (the default gateway, port 5351).
    pub natpmp: SocketAddrV4,
    /// Where SSDP searches go (the multicast group, or a test's router).
    pub ssdp: SocketAddr,
    /// Our address on the router's LAN and the port to map.
    pub local: SocketAddrV4,
    /// The UPnP gateway found last, kept while it works (renewals and the
    /// removal on shutdown skip discovery).
    upnp: Arc<Mutex<Option<Gateway<Tokio>>>>,
}

impl Router {
    /// The router at `natpmp` (NAT-PMP) and reached by SSDP at `ssdp`,
    /// mapping `local`'s port.
    pub fn new(natpmp: SocketAddrV4, ssdp: SocketAddr, local: SocketAddrV4) -> Self {
        Self {
            natpmp,
            ssdp,
            local,
            upnp: Arc::new(Mutex::new(None)),
        }
    }

    /// Asks `protocol` for the mapping for `lease`.
    pub async fn map(&self, protocol: Protocol, lease: Duration) -> Result<Granted, MapError> {
        match protocol {
            Protocol::NatPmp => self.natpmp_map(lease).await,
            Protocol::Upnp => {
                let result = timeout(UPNP_TIMEOUT, self.upnp_map(lease))
                    .await
                    .map_err(|_| MapError::Timeout)
                    .and_then(|r| r);
                if result.is_err() {
                    // Found afresh next time: the router may have changed.
                    self.forget_upnp();
                }
                result
            }
        }
    }

    /// Removes the mapping made with `protocol` (`external`: as granted).
    pub async fn unmap(
        &self,
        protocol: Protocol,
        external: Option<SocketAddr>,
    ) -> Result<(), MapError> {
        match protocol {
            Protocol::NatPmp => {
                let port = self.local.port();
                let request = natpmp::encode_map_tcp(port, 0, Duration::ZERO);
                let socket = self.natpmp_socket().await?;
                exchange(&socket, &request, |d| natpmp::parse_map_tcp(d, port, true)).await?;
                Ok(())
            }
            Protocol::Upnp => {
                let port = external.map_or(self.local.port(), |a| a.port());
                let remove = async {
                    let gateway = self.upnp_gateway().await?;
                    gateway
                        .remove_port(PortMappingProtocol::TCP, port)
                        .await
                        .map_err(|e| MapError::Upnp(e.to_string()))
                };
                timeout(UPNP_TIMEOUT, remove)
                    .await
                    .map_err(|_| MapError::Timeout)?
            }
        }
    }

    async fn natpmp_socket(&self) -> Result<UdpSocket, MapError> {
        let socket = UdpSocket::bind(SocketAddrV4::new(*self.local.ip(), 0)).await?;
        // Connected: datagrams from anyone but the gateway never reach us.
        socket.connect(self.natpmp).await?;
        Ok(socket)
    }

    async fn natpmp_map(&self, lease: Duration) -> Result<Granted, MapError> {
        let socket = self.natpmp_socket().await?;
        let ip = exchange(
            &socket,
            &natpmp::encode_external_address(),
            natpmp::parse_external_address,
        )
        .await?;
        if !public(ip) {
            return Err(MapError::NotPublic(ip));
        }
        let port = self.local.port();
        let request = natpmp::encode_map_tcp(port, port, lease);
        let answer = exchange(&socket, &request, |d| natpmp::parse_map_tcp(d, port, false)).await?;
        Ok(Granted {
            external: SocketAddr::from((ip, answer.external_port)),
            lifetime: answer.lifetime,
        })
    }

    fn forget_upnp(&self) {
        if let Ok(mut cached) = self.upnp.lock() {
            *cached = None;
        }
    }

    async fn upnp_gateway(&self) -> Result<Gateway<Tokio>, MapError> {
        if let Some(gateway) = self.upnp.lock().ok().and_then(|c| c.clone()) {
            return Ok(gateway);
        }
        let options = || {
            let mut options = SearchOptions::default();
            options.bind_addr = SocketAddr::from((*self.local.ip(), 0));
            options.broadcast_address = self.ssdp;
            options.timeout = Some(SSDP_TIMEOUT);
            options.single_search_timeout = Some(SSDP_TIMEOUT);
            // A router named by its address (not found by multicast) is the
            // one whose URLs we follow, wherever it is (even on loopback,
            // which igd-next refuses otherwise).
            if !self.ssdp.ip().is_multicast() {
                options.allowed_gateway_ips = vec![self.ssdp.ip()];
            }
            options
        };
        let mut found = Err(MapError::Timeout);
        for _ in 0..SSDP_SEARCHES {
            found = igd_next::aio::tokio::search_gateway(options())
                .await
                .map_err(|e| MapError::Upnp(format!("discovery: {e}")));
            if found.is_ok() {
                break;
            }
        }
        let gateway = found?;
        if let Ok(mut cached) = self.upnp.lock() {
            *cached = Some(gateway.clone());
        }
        Ok(gateway)
    }

    async fn upnp_map(&self, lease: Duration) -> Result<Granted, MapError> {
        let gateway = self.upnp_gateway().await?;
        let ip = match gateway.get_external_ip().await {
            Ok(IpAddr::V4(ip)) if public(ip) => ip,
            Ok(IpAddr::V4(ip)) if usable(ip) => return Err(MapError::NotPublic(ip)),
            Ok(other) => return Err(MapError::Upnp(format!("external address {other}"))),
            Err(e) => return Err(MapError::Upnp(format!("external address: {e}"))),
        };
        let local = SocketAddr::V4(self.local);
        let seconds = u32::try_from(lease.as_secs()).unwrap_or(u32::MAX);
        let tcp = PortMappingProtocol::TCP;
        let port = self.local.port();
        let (external_port, lifetime) = match gateway
            .add_port(tcp, port, local, seconds, DESCRIPTION)
            .await
        {
            Ok(()) => (port, lease),
            // Renewed just as often: the mapping goes on shutdown.
            Err(AddPortError::OnlyPermanentLeasesSupported) => {
                gateway
                    .add_port(tcp, port, local, 0, DESCRIPTION)
                    .await
                    .map_err(|e| MapError::Upnp(e.to_string()))?;
                (port, lease)
            }
            Err(AddPortError::PortInUse) => {
                let any = gateway
                    .add_any_port(tcp, local, seconds, DESCRIPTION)
                    .await
                    .map_err(|e| MapError::Upnp(e.to_string()))?;
                (any, lease)
            }
            Err(e) => return Err(MapError::Upnp(e.to_string())),
        };
        if external_port == 0 {
            return Err(MapError::Upnp("external port 0".into()));
        }
        Ok(Granted {
            external: SocketAddr::from((ip, external_port)),
            lifetime,
        })
    }
}

/// An external address others on the internet could reach us at: not a
/// private, shared (carrier-grade NAT) or link-local one.
fn public(ip: Ipv4Addr) -> bool {
    usable(ip) && Scope::of(IpAddr::V4(ip)) == Scope::Global
}

/// An address at all (not unspecified, broadcast, multicast or loopback).
fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

/// Sends `request` up to [`NATPMP_SENDS`] times, waiting 250 ms, then
/// doubling, for an answer `parse` accepts. A refusal ends it at once; other
/// bad datagrams (stale answers, garbage) are skipped until the time is up.
async fn exchange<T>(
    socket: &UdpSocket,
    request: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, ParseError>,
) -> Result<T, MapError> {
    let mut buf = [0u8; natpmp::MAX_DATAGRAM + 1];
    let mut wait = NATPMP_FIRST_WAIT;
    let mut last_error = None;
    for _ in 0..NATPMP_SENDS {
        socket.send(request).await?;
        let deadline = Instant::now() + wait;
        loop {
            let Ok(received) = timeout_at(deadline, socket.recv(&mut buf)).await else {
                break;
            };
            let len = received?;
            match parse(buf.get(..len).unwrap_or(&[])) {
                Ok(value) => return Ok(value),
                Err(e @ (ParseError::Refused(_) | ParseError::Version(_))) => return Err(e.into()),
                Err(e) => last_error = Some(e),
            }
        }
        wait *= 2;
    }
    Err(last_error.map_or(MapError::Timeout, MapError::NatPmp))
}
