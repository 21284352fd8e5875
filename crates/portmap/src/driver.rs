//! The tokio driver: one task that runs the [`Policy`] against the real
//! router (one request at a time, each bounded by [`Router`]), publishes
//! the mapped address in a `watch` channel, and on shutdown removes the
//! mapping (within [`UNMAP_TIMEOUT`]) before it ends.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use canopy_core::time::Time;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::default_gateway;
use crate::natpmp;
use crate::policy::{Action, Policy, PolicyConfig};
use crate::router::{MapError, Router};

/// How long removing the mapping may hold up shutdown.
pub const UNMAP_TIMEOUT: Duration = Duration::from_secs(2);
/// The SSDP multicast group UPnP devices listen on.
pub const SSDP_MULTICAST: SocketAddr = SocketAddr::V4(SocketAddrV4::new(
    std::net::Ipv4Addr::new(239, 255, 255, 250),
    1900,
));

/// What to map, and where the router is.
#[derive(Debug, Clone)]
pub struct PortMapConfig {
    /// The address the node's listener is bound to: its port is mapped.
    pub listen: SocketAddr,
    /// The NAT-PMP gateway; `None`: the default gateway, port 5351.
    pub gateway: Option<SocketAddrV4>,
    /// Where UPnP's SSDP searches go.
    pub ssdp: SocketAddr,
    /// When to map, renew, retry and give up.
    pub policy: PolicyConfig,
}

impl PortMapConfig {
    /// The defaults for a node listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            gateway: None,
            ssdp: SSDP_MULTICAST,
            policy: PolicyConfig::default(),
        }
    }
}

/// Where the mapping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The first round has not ended.
    Pending,
    /// Mapped: others reach us at this address.
    Mapped(SocketAddr),
    /// Not mapped (no router, a router that refused or answered nonsense,
    /// or shut down).
    Unmapped,
}

/// The running port mapper, as its owner sees it.
#[derive(Debug, Clone)]
pub struct PortMapping {
    status: watch::Receiver<Status>,
}

impl PortMapping {
    /// Where the mapping stands now.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Follows the status as it changes.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until the first round ends (or `limit` passes) and returns
    /// the mapped address, if any.
    pub async fn settled(&self, limit: Duration) -> Option<SocketAddr> {
        let mut status = self.status.clone();
        let _ = tokio::time::timeout(limit, status.wait_for(|s| *s != Status::Pending)).await;
        match self.status() {
            Status::Mapped(addr) => Some(addr),
            Status::Pending | Status::Unmapped => None,
        }
    }
}

/// Starts mapping `config.listen`'s port on `tracker`; the task removes the
/// mapping and ends when `shutdown` is cancelled.
pub fn spawn(
    config: PortMapConfig,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> PortMapping {
    let (tx, rx) = watch::channel(Status::Pending);
    tracker.spawn(run(config, tx, shutdown));
    PortMapping { status: rx }
}

async fn run(config: PortMapConfig, status: watch::Sender<Status>, shutdown: CancellationToken) {
    let router = match locate(&config).await {
        Ok(router) => router,
        Err(error) => {
            tracing::info!(%error, "port mapping: no router to ask; carrying on unmapped");
            status.send_replace(Status::Unmapped);
            return;
        }
    };
    tracing::debug!(?router, "port mapping: asking the router");
    let origin = Instant::now();
    let now = || Time(u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut policy = Policy::new(config.policy);
    policy.start(now());
    'run: loop {
        while let Some(action) = policy.poll_action() {
            match action {
                Action::Map { protocol, lease } => {
                    let result = tokio::select! {
                        result = router.map(protocol, lease) => result,
                        () = shutdown.cancelled() => break 'run,
                    };
                    match &result {
                        Ok(granted) => tracing::debug!(%protocol, external = %granted.external,
                            lifetime = ?granted.lifetime, "port mapping granted"),
                        Err(error) => tracing::debug!(%protocol, %error, "port mapping failed"),
                    }
                    policy.handle_result(now(), protocol, result.ok());
                }
                Action::Announce(Some(external)) => {
                    tracing::info!(%external, local = %router.local, "port mapped on the router");
                    status.send_replace(Status::Mapped(external));
                }
                Action::Announce(None) => {
                    tracing::info!(
                        local = %router.local,
                        gave_up = policy.gave_up(),
                        "port not mapped: no router granted it; carrying on unmapped"
                    );
                    status.send_replace(Status::Unmapped);
                }
                Action::Unmap { .. } => {}
            }
        }
        let Some(at) = policy.poll_timeout() else {
            shutdown.cancelled().await;
            break;
        };
        let deadline = origin + Duration::from_millis(at.as_millis());
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => policy.handle_timeout(now()),
            () = shutdown.cancelled() => break,
        }
    }
    policy.shutdown();
    while let Some(action) = policy.poll_action() {
        if let Action::Unmap { protocol, external } = action {
            match tokio::time::timeout(UNMAP_TIMEOUT, router.unmap(protocol, external)).await {
                Ok(Ok(())) => tracing::info!(%protocol, "port mapping removed"),
                Ok(Err(error)) => tracing::warn!(%protocol, %error, "port mapping not removed"),
                Err(_) => tracing::warn!(%protocol, "port mapping not removed: no answer in time"),
            }
        }
    }
    status.send_replace(Status::Unmapped);
}

/// The router to ask and our address on its LAN.
async fn locate(config: &PortMapConfig) -> Result<Router, MapError> {
    let natpmp = match config.gateway {
        Some(gateway) => gateway,
        None => SocketAddrV4::new(default_gateway().ok_or(MapError::NoGateway)?, natpmp::PORT),
    };
    let ip = match config.listen.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => ip,
        // Listening everywhere: the address the route to the gateway leaves from.
        _ => {
            let probe = UdpSocket::bind("0.0.0.0:0").await?;
            probe.connect(natpmp).await?;
            match probe.local_addr()?.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => return Err(MapError::NoGateway),
            }
        }
    };
    Ok(Router::new(
        natpmp,
        config.ssdp,
        SocketAddrV4::new(ip, config.listen.port()),
    ))
}
