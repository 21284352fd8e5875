//! Dialing a peer known by several addresses, IPv6 first (Happy Eyeballs,
//! RFC 8305): the thin tokio driver of `canopy_core::family::DialRace`.
//! The first attempt that connects wins; the others are dropped (closed).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use canopy_core::Time;
use canopy_core::family::DialRace;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connects to the first of `addrs` that answers, in
/// [`canopy_core::family::dial_order`], each attempt started when the one
/// before failed or after the attempt delay; all within `timeout`.
pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let race = DialRace::new(addrs);
    connect_race(race, timeout).await
}

/// [`connect`] with a given race (its delay, say).
pub async fn connect_race(race: DialRace, timeout: Duration) -> io::Result<TcpStream> {
    tokio::time::timeout(timeout, run(race))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

async fn run(mut race: DialRace) -> io::Result<TcpStream> {
    let start = Instant::now();
    let now = || Time(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut attempts = FuturesUnordered::new();
    let mut last_error = None;
    loop {
        while let Some(addr) = race.poll_dial(now()) {
            tracing::trace!(%addr, "dialing");
            attempts.push(async move { (addr, TcpStream::connect(addr).await) });
        }
        if race.is_lost() {
            return Err(last_error.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no address to dial")
            }));
        }
        let wake = race
            .poll_timeout()
            .map(|at| start + Duration::from_millis(at.as_millis()));
        tokio::select! {
            Some((addr, result)) = attempts.next(), if !attempts.is_empty() => match result {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    tracing::debug!(%addr, %error, "dial failed; next address");
                    race.handle_failure();
                    last_error = Some(error);
                }
            },
            () = sleep_until(wake) => {}
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn ipv6_wins_when_both_answer() {
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let v6 = TcpListener::bind("[::1]:0")
            .await
            .expect("this machine must have IPv6 on loopback (::1)");
        let addrs = [v4.local_addr().unwrap(), v6.local_addr().unwrap()];
        let stream = connect(&addrs, Duration::from_secs(5)).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addrs[1]);
    }

    #[tokio::test]
    async fn a_dead_ipv6_address_falls_back_to_ipv4() {
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A port nobody listens on: refused at once, so IPv4 starts at once.
        let dead = TcpListener::bind("[::1]:0")
            .await
            .expect("this machine must have IPv6 on loopback (::1)")
            .local_addr()
            .unwrap();
        let addrs = [dead, v4.local_addr().unwrap()];
        let stream = connect(&addrs, Duration::from_secs(5)).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addrs[1]);
        assert!(connect(&[dead], Duration::from_secs(5)).await.is_err());
        assert!(connect(&[], Duration::from_secs(5)).await.is_err());
    }
}
