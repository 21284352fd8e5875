//! The LAN discovery driver: a task with one UDP socket in the multicast
//! group ([`canopy_core::lan::GROUP_V4`], TTL 1, loopback on, so nodes on
//! one machine hear each other too), carrying out what the core's
//! [`LanDiscovery`] decides and publishing its table as a [`LanView`].
//! Every decision (format, what to believe, when to announce) is the
//! core's; this file owns the socket, the clock and the RNG.
//!
//! The group is joined on the interface of the node's listen address when
//! that is a specific IPv4 address (and datagrams are sent from it), else
//! on the one the kernel picks (the default route's). If the socket can't
//! be set up (no network yet), it tries again every [`RETRY`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use canopy_core::lan::{self, Action, LanConfig, LanDiscovery, LanPeer};
use canopy_proto::{NodeId, Role};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;

/// Setting the socket up again after a failure, this often.
const RETRY: Duration = Duration::from_secs(30);
/// Received datagrams are read into this much; a longer one is refused by
/// its length (a truncated read still says more than [`lan::LEN`]).
const RECEIVE_BUFFER: usize = 512;

/// What the LAN looks like: every node heard, and the supernodes to offer
/// as dial candidates (the freshest first, a few).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanView {
    /// Every node heard lately.
    pub peers: Vec<LanPeer>,
    /// Supernodes' overlay addresses, to dial.
    pub supernodes: Vec<SocketAddr>,
}

/// Who we are on the LAN.
#[derive(Debug, Clone)]
pub struct LanOptions {
    /// Our node id.
    pub node_id: NodeId,
    /// Our role.
    pub role: Role,
    /// Our overlay listen address (a supernode's) or HTTP listen address
    /// (a leaf's): its port is announced, its IP picks the interface.
    pub listen: Option<SocketAddr>,
    /// The group's UDP port.
    pub port: u16,
}

impl LanOptions {
    /// A node `node_id` of `role` listening on `listen`, on the default port.
    pub fn new(node_id: NodeId, role: Role, listen: Option<SocketAddr>) -> Self {
        Self {
            node_id,
            role,
            listen,
            port: lan::PORT,
        }
    }

    /// The interface to join and send on: the listen address's, when it is
    /// a specific IPv4 address off loopback.
    fn interface(&self) -> Option<Ipv4Addr> {
        match self.listen.map(|addr| addr.ip()) {
            Some(IpAddr::V4(v4)) if !v4.is_unspecified() && !v4.is_loopback() => Some(v4),
            _ => None,
        }
    }

    /// The port we serve on, as others on the LAN can reach it: none
    /// when we listen on loopback only.
    fn reachable_port(&self) -> u16 {
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() => addr.port(),
            _ => 0,
        }
    }
}

/// Starts LAN discovery on `tracker` until `shutdown`; returns the view,
/// updated as nodes come and go. Nothing is started (and the view stays
/// empty) for a supernode listening on loopback only: nobody on the LAN
/// could reach it.
pub fn spawn(
    options: LanOptions,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> watch::Receiver<LanView> {
    let (view_tx, view_rx) = watch::channel(LanView::default());
    let port = options.reachable_port();
    if options.role == Role::Supernode && port == 0 {
        tracing::debug!("LAN discovery off: the supernode listens on loopback only");
        return view_rx;
    }
    let clock = Clock::new();
    let (overlay_port, http_port) = match options.role {
        Role::Supernode => (port, 0),
        Role::Leaf => (0, port),
    };
    let config = LanConfig::new(
        options.node_id,
        options.role,
        overlay_port,
        http_port,
        rand::random(),
        rand::random(),
    );
    let core = LanDiscovery::new(config, clock.now());
    tracker.spawn(run(options, core, clock, view_tx, shutdown));
    view_rx
}

/// A socket in the group, or why not.
fn open(options: &LanOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket.set_reuse_port(true)?;
    // Bound to the group itself where the system allows, so only the
    // group's datagrams arrive.
    let bind_ip = if cfg!(target_os = "linux") {
        lan::GROUP_V4
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    socket.bind(&SocketAddrV4::new(bind_ip, options.port).into())?;
    let interface = options.interface().unwrap_or(Ipv4Addr::UNSPECIFIED);
    socket.join_multicast_v4(&lan::GROUP_V4, &interface)?;
    if !interface.is_unspecified() {
        socket.set_multicast_if_v4(&interface)?;
    }
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

async fn run(
    options: LanOptions,
    mut core: LanDiscovery,
    clock: Clock,
    view: watch::Sender<LanView>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    let socket = loop {
        match open(&options) {
            Ok(socket) => break socket,
            Err(error) => {
                // Said once; a machine with no network says it every time.
                if failures == 0 {
                    tracing::warn!(%error, retry_every = ?RETRY, "LAN discovery: cannot join the multicast group");
                } else {
                    tracing::debug!(%error, "LAN discovery: cannot join the multicast group");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    };
    tracing::info!(group = %lan::GROUP_V4, port = options.port, "LAN discovery on");
    let group = SocketAddr::from((lan::GROUP_V4, options.port));
    let mut buffer = [0u8; RECEIVE_BUFFER];
    loop {
        let wait = core
            .poll_timeout()
            .map_or(RETRY, |at| at.since(clock.now()));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                core.shutdown();
                carry_out(&mut core, &socket, group, &view).await;
                break;
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    let bytes = buffer.get(..len).unwrap_or_default();
                    match core.handle_datagram(from, bytes, clock.now()) {
                        Ok(heard) => tracing::trace!(%from, ?heard, "LAN announce"),
                        Err(rejected) => tracing::debug!(%from, %rejected, "LAN datagram refused"),
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "LAN discovery: receive failed");
                    // Don't spin on a persistent error.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::time::sleep(wait) => core.handle_timeout(clock.now()),
        }
        carry_out(&mut core, &socket, group, &view).await;
    }
}

/// Sends what the core asks, and publishes the table when it changed.
async fn carry_out(
    core: &mut LanDiscovery,
    socket: &UdpSocket,
    group: SocketAddr,
    view: &watch::Sender<LanView>,
) {
    let mut changed = false;
    while let Some(action) = core.poll_action() {
        match action {
            Action::Send(datagram) => {
                if let Err(error) = socket.send_to(&datagram, group).await {
                    tracing::debug!(%error, "LAN discovery: send failed");
                }
            }
            Action::PeersChanged => changed = true,
        }
    }
    if changed {
        let mut peers: Vec<LanPeer> = core.peers().cloned().collect();
        peers.sort_by_key(|p| (p.role == Role::Leaf, p.ip, p.node_id));
        let supernodes = core.supernodes();
        tracing::info!(peers = peers.len(), ?supernodes, "LAN neighbours changed");
        view.send_replace(LanView { peers, supernodes });
    }
}
