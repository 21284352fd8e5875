//! The node's hook into port mapping ([`canopy_portmap`]): once the
//! listener is bound, map its port on the home router (if that makes sense
//! for the bound address), wait a bounded time for the first answer so the
//! mapped address is the one announced, and leave the mapper running on
//! the node's tracker: it renews the mapping and removes it when the node
//! shuts down.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_portmap::{PortMapConfig, Status};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long start-up waits for the router before announcing the bound
/// address: a router with NAT-PMP answers in milliseconds, one without it
/// refuses at once (or is given 1.75 s), and UPnP discovery gives up after
/// two searches of 1 s.
const FIRST_ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// The outcome of [`map_listen_port`].
#[derive(Debug, Default)]
pub(crate) struct Mapped {
    /// The mapped external address, if the router granted one in time.
    pub(crate) external: Option<SocketAddr>,
    /// The mapping as it changes (renewed, lost, removed); `None` when
    /// port mapping is off or not for this address.
    pub(crate) status: Option<watch::Receiver<Status>>,
}

/// Maps `bound`'s port with `config` (`None`: port mapping is off) and
/// returns the mapped external address once the router granted it.
pub(crate) async fn map_listen_port(
    config: Option<&PortMapConfig>,
    bound: SocketAddr,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Mapped {
    let Some(mut config) = config.cloned() else {
        return Mapped::default();
    };
    if !canopy_portmap::worth_mapping(bound.ip(), config.gateway.is_some()) {
        tracing::debug!(%bound, "port mapping: not for this address");
        return Mapped::default();
    }
    config.listen = bound;
    let mapping = canopy_portmap::spawn(config, shutdown.clone(), tracker);
    let external = mapping.settled(FIRST_ANSWER_LIMIT).await;
    if external.is_none() && mapping.status() == Status::Pending {
        tracing::info!(%bound, "port mapping: the router has not answered yet; announcing the bound address");
    }
    Mapped {
        external,
        status: Some(mapping.watch()),
    }
}
