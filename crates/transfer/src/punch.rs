//! Hole punching on tokio: the core's schedule ([`canopy_core::punch`])
//! carried out with real sockets, for a downloader and a source that are
//! both behind NATs.
//!
//! The downloader ([`PunchConnector`]), for each connection it wants,
//! listens on a fresh port q (a 4-tuple exists once, so each connection
//! needs its own), sends a Push with `punch` set and the callback
//! `<its IP>:q` (the IP its supernode replaces with the one it sees), and
//! dials the source's hit addresses from q on the schedule. The source
//! ([`punch_back`]), told by the Push, dials the callback from the port
//! its hit names (its HTTP port; a leaf without one: one ephemeral port)
//! on the same schedule. Behind NATs that keep a port's mapping for every
//! destination (endpoint-independent) and keep the port number, each
//! side's SYN leaves from exactly the address the other dials, and each
//! NAT takes the other's SYN for the answer to its own: the dials meet (a
//! TCP simultaneous open), or one side's SYN is accepted by the other's
//! listening port. Whichever connection comes first wins
//! ([`rendezvous`]); the rest are dropped.
//!
//! On the winning connection the source writes the push preamble
//! (`CANOPY-PUSH <node id>`, [`crate::push`]) and serves HTTP, as for any
//! push; the downloader checks the node id. The downloader reports the
//! connection's path: [`TransferPath::HolePunch`] when its own dial
//! completed, [`TransferPath::Push`] when the source's dial reached its
//! listening port. A dial of ours that completes but hears nothing for
//! 2 s reached the source's HTTP server itself (the source is reachable
//! after all, or no longer punching): it is used as it is, a
//! [`TransferPath::Direct`] connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use canopy_core::Time;
use canopy_core::punch::{Action, Punch};
use canopy_proto::NodeId;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub use canopy_core::punch::{PunchConfig, Won};

use crate::client::{ConnectFuture, Connected, Connector};
use crate::listen::{any_dual_stack, connect_from};
use crate::path::TransferPath;
use crate::push::{ConnectRequest, PREAMBLE_TIMEOUT, read_preamble, write_preamble};

/// Addresses of the other side dialed at once (one per family).
const MAX_REMOTES: usize = 2;
/// How long a connection to the downloader's punch port may take to say
/// who it is.
const ACCEPTED_PREAMBLE_TIMEOUT: Duration = Duration::from_secs(3);
/// A punched connection's other end speaks first (the preamble, written
/// the moment it connects); one silent this long after our dial completed
/// is the source's HTTP server itself, reachable after all, waiting for
/// our request.
const SILENT_MEANS_DIRECT: Duration = Duration::from_secs(2);

/// Dials `remotes` (at most [`MAX_REMOTES`] of them, IPv6 first) from
/// `local_port` on `config`'s schedule until a dial connects or
/// `accepted` yields a connection (the other side's dial, accepted on our
/// listening port; `None`: no more will come). Fails with `TimedOut` when
/// the window closes.
pub async fn rendezvous<A>(
    local_port: u16,
    remotes: &[SocketAddr],
    config: PunchConfig,
    accepted: A,
) -> io::Result<(TcpStream, Won)>
where
    A: Future<Output = Option<TcpStream>>,
{
    let remotes: Vec<SocketAddr> = canopy_core::family::dial_order(remotes)
        .into_iter()
        .take(MAX_REMOTES)
        .collect();
    let origin = tokio::time::Instant::now();
    let now = || Time(u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut punch = Punch::new(config, now());
    let mut dials = FuturesUnordered::new();
    let mut accepted = pin!(accepted);
    let mut accepting = true;
    loop {
        while let Some(action) = punch.poll_action(now()) {
            match action {
                Action::Dial { attempt } => {
                    // A dial that connected while we slept is taken, not
                    // abandoned for the next.
                    while let Some(Some((attempt, remote, dialed))) = dials.next().now_or_never() {
                        if let Ok(stream) = dialed {
                            let won = Won::Dialed { attempt };
                            punch.handle_connected(won, now());
                            tracing::debug!(%remote, attempt, "punch: our dial connected");
                            return Ok((stream, won));
                        }
                    }
                    // Dropped at once: a socket in SYN-SENT closes
                    // silently, and the fresh one takes its 4-tuple.
                    dials.clear();
                    for &remote in &remotes {
                        dials.push(async move {
                            let dialed = connect_from(local_port, remote, config.window).await;
                            (attempt, remote, dialed)
                        });
                    }
                }
                Action::GiveUp => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no connection after {} dials in {:?}",
                            punch.attempts(),
                            config.window
                        ),
                    ));
                }
            }
        }
        let wake = punch
            .poll_timeout()
            .map_or(origin, |at| origin + Duration::from_millis(at.as_millis()));
        tokio::select! {
            // A connection beats the timer that would abandon it.
            biased;
            Some((attempt, remote, dialed)) = dials.next(), if !dials.is_empty() => match dialed {
                Ok(stream) => {
                    let won = Won::Dialed { attempt };
                    punch.handle_connected(won, now());
                    tracing::debug!(%remote, attempt, "punch: our dial connected");
                    return Ok((stream, won));
                }
                // Refused or unreachable: the next attempt is on schedule.
                Err(error) => tracing::trace!(%remote, attempt, %error, "punch dial failed"),
            },
            arrived = &mut accepted, if accepting => match arrived {
                Some(stream) => {
                    punch.handle_connected(Won::Accepted, now());
                    tracing::debug!(attempts = punch.attempts(), "punch: the other side's dial accepted");
                    return Ok((stream, Won::Accepted));
                }
                None => accepting = false,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The source's side: dials `callback` from `local_port` until a
/// connection to it is made or `accepted` hands one over (see
/// [`rendezvous`]), then introduces itself as `us` on it (the push
/// preamble). The caller serves HTTP on the stream.
pub async fn punch_back<A>(
    local_port: u16,
    callback: SocketAddr,
    us: NodeId,
    accepted: A,
) -> io::Result<(TcpStream, Won)>
where
    A: Future<Output = Option<TcpStream>>,
{
    let (mut stream, won) =
        rendezvous(local_port, &[callback], PunchConfig::source(), accepted).await?;
    let _ = stream.set_nodelay(true);
    write_preamble(&mut stream, us).await?;
    Ok((stream, won))
}

/// The first connection `listener` accepts from exactly `peer` (others
/// are closed); `None` if the listener fails.
pub async fn accept_from(listener: &TcpListener, peer: SocketAddr) -> Option<TcpStream> {
    let peer = canopy_core::family::canonical(peer);
    loop {
        let (stream, from) = listener.accept().await.ok()?;
        if canopy_core::family::canonical(from) == peer {
            return Some(stream);
        }
        tracing::debug!(%from, %peer, "punch port: connection from someone else; closed");
    }
}

/// The first connection `listener` accepts that introduces itself as
/// `node` (the preamble read); others are closed.
async fn accept_pushed(listener: &TcpListener, node: NodeId) -> Option<TcpStream> {
    loop {
        let (mut stream, from) = listener.accept().await.ok()?;
        match tokio::time::timeout(ACCEPTED_PREAMBLE_TIMEOUT, read_preamble(&mut stream)).await {
            Ok(Some(said)) if said == node => return Some(stream),
            _ => tracing::debug!(%from, %node, "punch port: not the source we wait for; closed"),
        }
    }
}

/// Asks the source, through the overlay, to punch a hole to our port
/// (the argument): it sends a Push with `punch` set and the callback
/// `<our IP>:<port>`.
pub type PunchRequester = Arc<dyn Fn(u16) -> ConnectRequest + Send + Sync>;

/// Reaches a firewalled source from behind our own NAT. See the module
/// docs.
pub struct PunchConnector {
    node: NodeId,
    remotes: Vec<SocketAddr>,
    request: PunchRequester,
    config: PunchConfig,
    slots: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for PunchConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PunchConnector")
            .field("node", &self.node)
            .field("remotes", &self.remotes)
            .finish_non_exhaustive()
    }
}

impl PunchConnector {
    /// Reaches `node`, whose hits name `remotes`, by calling `request`
    /// (which sends the Push) and punching on `config`'s schedule.
    pub fn new(
        node: NodeId,
        remotes: &[SocketAddr],
        request: PunchRequester,
        config: PunchConfig,
    ) -> Self {
        Self {
            node,
            remotes: remotes.to_vec(),
            request,
            config,
            slots: None,
        }
    }

    /// Punches only while it holds one of `slots` (shared by the node's
    /// punches: each dials every interval for the window, so a download
    /// of many firewalled sources does not dial them all at once); the
    /// slot is let go once the punch ends.
    pub fn with_slots(mut self, slots: Arc<Semaphore>) -> Self {
        self.slots = Some(slots);
        self
    }
}

impl Connector for PunchConnector {
    fn connect(&self) -> ConnectFuture {
        let (node, remotes, request, mut config, slots) = (
            self.node,
            self.remotes.clone(),
            self.request.clone(),
            self.config,
            self.slots.clone(),
        );
        Box::pin(async move {
            let slot = match slots {
                Some(slots) => Some(
                    slots
                        .acquire_owned()
                        .await
                        .map_err(|_| io::Error::other("punching stopped"))?,
                ),
                None => None,
            };
            // A fresh port per connection: its own 4-tuple.
            let listener = crate::listen::bind(any_dual_stack(0)).await?;
            let port = listener.local_addr()?.port();
            request(port).await?;
            let deadline = tokio::time::Instant::now() + config.window;
            loop {
                let accepted = accept_pushed(&listener, node);
                let (stream, won) = rendezvous(port, &remotes, config, accepted).await?;
                match introduced(stream, won, node).await {
                    Ok(connected) => {
                        drop(slot);
                        return Ok(connected);
                    }
                    // The source may have abandoned its dial just as ours
                    // met it: punch on for what is left of the window.
                    Err(error) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if left < config.interval {
                            return Err(error);
                        }
                        tracing::debug!(%error, ?left, "punch: punching on");
                        config.window = left;
                    }
                }
            }
        })
    }
}

/// What a punched connection is: one the source's dial made to our port
/// is a push; one ours made is a hole punch if the source introduces
/// itself, or the source's HTTP server itself if it stays silent. A
/// connection that closes or names someone else is cut at once (a reset,
/// so no TIME-WAIT keeps its 4-tuple from the next dial).
async fn introduced(mut stream: TcpStream, won: Won, node: NodeId) -> io::Result<Connected> {
    let _ = stream.set_nodelay(true);
    let path = match won {
        Won::Accepted => TransferPath::Push,
        Won::Dialed { .. } => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(SILENT_MEANS_DIRECT, stream.peek(&mut first)).await {
                Err(_) => TransferPath::Direct,
                Ok(_) => {
                    let said = tokio::time::timeout(PREAMBLE_TIMEOUT, read_preamble(&mut stream))
                        .await
                        .ok()
                        .flatten();
                    if said != Some(node) {
                        // Zero linger: close() resets at once, never blocks.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the punched connection did not come from the source",
                        ));
                    }
                    TransferPath::HolePunch
                }
            }
        }
    };
    Ok(Connected::new(stream, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_window_with_nobody_there_gives_up_in_time() {
        // A port nobody listens on: every dial is refused.
        let nobody = crate::listen::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let remote = nobody.local_addr().unwrap();
        drop(nobody);
        let config = PunchConfig {
            interval: Duration::from_millis(50),
            window: Duration::from_millis(300),
        };
        let started = std::time::Instant::now();
        let outcome = rendezvous(0, &[remote], config, std::future::pending()).await;
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn the_other_sides_dial_accepted_on_our_port_wins_and_strangers_do_not() {
        let listener = crate::listen::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ours = listener.local_addr().unwrap();
        // Our own dials go to a closed port: refused, every one.
        let closed = crate::listen::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let remote = closed.local_addr().unwrap();
        drop(closed);
        let theirs = crate::listen::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let their_addr = theirs.local_addr().unwrap();
        let other_side = async {
            let stranger = TcpStream::connect(ours).await.unwrap();
            let dialed = connect_from(their_addr.port(), ours, Duration::from_secs(5))
                .await
                .unwrap();
            (stranger, dialed)
        };
        let remotes = [remote];
        let (punched, _streams) = tokio::join!(
            rendezvous(
                ours.port(),
                &remotes,
                PunchConfig::source(),
                accept_from(&listener, their_addr),
            ),
            other_side
        );
        let (stream, won) = punched.unwrap();
        assert_eq!(won, Won::Accepted);
        assert_eq!(stream.peer_addr().unwrap(), their_addr, "not the stranger");
    }
}
