//! Binding a TCP listener, dual-stack when asked for every address.
//!
//! `[::]` means every address of both families: one socket with
//! `IPV6_V6ONLY` off takes IPv6 and IPv4 connections alike (an IPv4 peer
//! appears as `::ffff:a.b.c.d`; callers put addresses in canonical form,
//! `canopy_core::family::canonical`). A host without IPv6 (the kernel
//! refuses the socket or the bind) gets `0.0.0.0` on the same port
//! instead. Any other address is bound as it is.
//!
//! Every listener is bound with `SO_REUSEPORT` so that the node can also
//! *dial from* its listening port ([`connect_from`]): a NAT that maps
//! ports endpoint-independently then shows every peer the same external
//! port, the one the node announced, which is what hole punching and
//! telling the NAT's kind from several observed addresses need. A port
//! another socket holds is still an error: the port is first bound
//! without `SO_REUSEPORT`, which fails if anyone holds it.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};

use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The kernel's accept backlog, as tokio's own `bind` asks.
const BACKLOG: i32 = 1024;

/// Every address of both families on `port`: what a node listens on by
/// default.
pub fn any_dual_stack(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

/// Binds `addr`; `[::]` dual-stack, falling back to `0.0.0.0` on a host
/// without IPv6.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr != any_dual_stack(addr.port()) {
        return listen(addr, false);
    }
    match listen(addr, true) {
        Ok(listener) => Ok(listener),
        Err(error) if no_ipv6(&error) => {
            tracing::info!(%error, "no IPv6 on this host; listening on IPv4 only");
            listen(SocketAddr::from(([0, 0, 0, 0], addr.port())), false)
        }
        Err(error) => Err(error),
    }
}

/// A listener on `addr` (`dual_stack`: an IPv6 socket that takes IPv4
/// too), shareable with sockets that dial from its port.
fn listen(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = socket_for(addr, dual_stack)?;
    // The port must be free: bound first without SO_REUSEPORT, which
    // fails if any socket holds it, then bound for sharing.
    let addr = if addr.port() == 0 {
        socket.bind(&addr.into())?;
        socket.local_addr()?.as_socket().unwrap_or(addr)
    } else {
        socket.bind(&addr.into())?;
        addr
    };
    drop(socket);
    let socket = socket_for(addr, dual_stack)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A non-blocking TCP socket of `addr`'s family with `SO_REUSEADDR`.
fn socket_for(addr: SocketAddr, dual_stack: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Dials `remote` from `local_port`, the port a listener of [`bind`]
/// holds (or any free port), giving up after `timeout`. A NAT that maps
/// endpoint-independently shows `remote` the same external port as
/// everyone else the node dials this way. The socket is of `remote`'s
/// family and bound to every address of it.
pub async fn connect_from(
    local_port: u16,
    remote: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if remote.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    let local = match remote {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], local_port)),
        SocketAddr::V6(_) => any_dual_stack(local_port),
    };
    socket.bind(local)?;
    tokio::time::timeout(timeout, socket.connect(remote))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// True if `error` says the host has no IPv6 (rather than, say, that the
/// port is taken).
fn no_ipv6(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connects to `port` on `ip`, and checks the listener sees the peer
    /// in the family expected.
    async fn reach(listener: &TcpListener, ip: &str) -> SocketAddr {
        let port = listener.local_addr().unwrap().port();
        let target = SocketAddr::new(ip.parse().unwrap(), port);
        let mut client = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut server, peer) = listener.accept().await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut byte = [0];
        server.read_exact(&mut byte).await.unwrap();
        peer
    }

    #[tokio::test]
    async fn one_socket_takes_both_families() {
        let listener = bind(any_dual_stack(0)).await.unwrap();
        assert!(
            listener.local_addr().unwrap().is_ipv6(),
            "this machine must have IPv6 on loopback (::1) for the IPv6 tests: {:?}",
            listener.local_addr()
        );
        let v4 = reach(&listener, "127.0.0.1").await;
        assert_eq!(v4.ip().to_canonical().to_string(), "127.0.0.1");
        let v6 = reach(&listener, "::1").await;
        assert_eq!(v6.ip().to_string(), "::1");
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_not_a_fallback() {
        let first = bind(any_dual_stack(0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        assert!(bind(any_dual_stack(port)).await.is_err());
        let v4 = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert!(bind(v4.local_addr().unwrap()).await.is_err());
    }

    #[tokio::test]
    async fn a_node_dials_from_its_listening_port() {
        let ours = bind(any_dual_stack(0)).await.unwrap();
        let port = ours.local_addr().unwrap().port();
        let theirs = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        for _ in 0..2 {
            let dialed = connect_from(port, theirs.local_addr().unwrap(), Duration::from_secs(5));
            let (dialed, accepted) = tokio::join!(dialed, theirs.accept());
            let (_stream, seen) = accepted.unwrap();
            assert_eq!(seen.port(), port, "seen from the listening port");
            assert_eq!(dialed.unwrap().local_addr().unwrap().port(), port);
        }
        // The listener still takes connections.
        let v4 = reach(&ours, "127.0.0.1").await;
        assert_eq!(v4.ip().to_canonical().to_string(), "127.0.0.1");
    }
}
