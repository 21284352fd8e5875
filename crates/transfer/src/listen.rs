//! Binding a TCP listener, dual-stack when asked for every address.
//!
//! `[::]` means every address of both families: one socket with
//! `IPV6_V6ONLY` off takes IPv6 and IPv4 connections alike (an IPv4 peer
//! appears as `::ffff:a.b.c.d`; callers put addresses in canonical form,
//! `canopy_core::family::canonical`). A host without IPv6 (the kernel
//! refuses the socket or the bind) gets `0.0.0.0` on the same port
//! instead. Any other address is bound as it is.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

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
        return TcpListener::bind(addr).await;
    }
    match dual_stack(addr) {
        Ok(listener) => Ok(listener),
        Err(error) if no_ipv6(&error) => {
            tracing::info!(%error, "no IPv6 on this host; listening on IPv4 only");
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).await
        }
        Err(error) => Err(error),
    }
}

/// One IPv6 socket that also takes IPv4.
fn dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
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
    }
}
