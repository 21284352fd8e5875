//! Global bandwidth limits: one token bucket per direction, shared by every
//! transfer in that direction, its rate settable while transfers run
//! (0 = unlimited).
//!
//! A transfer reserves a chunk of the bucket (a 32nd of a second's worth)
//! before each read and waits until the bucket has filled up to its
//! reservation. Reservations are
//! served in the order they were made and are at most one chunk each, so
//! every running transfer gets its turn each round (fair), and a waiting
//! transfer sleeps until its turn rather than polling (no busy loop). Bytes
//! let through over any span `t` are at most `rate * t + burst`, the burst
//! being an eighth of a second's worth. Bytes reserved but not read (a
//! short read, the end of a stream) are given back.
//!
//! - [`RateLimit`]: the bucket, cheap to clone.
//! - [`Throttled`]: any reader (a file, a socket) read through a limit.
//! - [`ThrottledConnector`]: a download [`Connector`] whose connections
//!   are read through a limit, so every download through it is limited.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::client::{ConnectFuture, Connected, Connector};

/// Smallest burst whatever the rate.
const MIN_BURST: u64 = 16 * 1024;
/// Largest burst (and chunk).
const MAX_BURST: u64 = 4 * 1024 * 1024;
/// Smallest turn: reads smaller than this would cost more in wake-ups
/// than they save in smoothness.
const MIN_CHUNK: u64 = 4 * 1024;
/// A waiting transfer looks again at least this often, so a rate raised
/// (or lifted) while it waits takes effect quickly.
const MAX_SLEEP: Duration = Duration::from_millis(200);
const NANOS: u128 = 1_000_000_000;

/// The burst a bucket of `rate` bytes a second holds.
fn burst_of(rate: u64) -> u64 {
    (rate / 8).clamp(MIN_BURST, MAX_BURST)
}

/// The most one turn takes: a 32nd of a second's worth, so that with many
/// transfers sharing a low rate each still gets a turn every few seconds
/// (a downloader that hears nothing for long takes its source for stalled).
fn chunk_of(rate: u64) -> u64 {
    (rate / 32).clamp(MIN_CHUNK, burst_of(rate))
}

/// The bucket, counted in totals since it was made: `reserved` bytes were
/// handed out, `allowed` (scaled by 1e9, so a nanosecond of a low rate is
/// not rounded away) may have been by now. A reservation ending at `end`
/// may proceed once `allowed >= end`.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    reserved: u64,
    allowed_scaled: u128,
    refilled_at: Instant,
}

impl Bucket {
    fn cap_scaled(&self) -> u128 {
        u128::from(self.reserved + burst_of(self.rate)) * NANOS
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        if self.rate == 0 {
            self.allowed_scaled = u128::from(self.reserved) * NANOS;
            return;
        }
        let added = u128::from(self.rate) * elapsed.as_nanos();
        self.allowed_scaled = (self.allowed_scaled + added).min(self.cap_scaled());
    }

    /// How long until a reservation ending at `end` may proceed.
    fn wait_for(&mut self, end: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        let needed = u128::from(end) * NANOS;
        if self.rate == 0 || self.allowed_scaled >= needed {
            return None;
        }
        let nanos = (needed - self.allowed_scaled).div_ceil(u128::from(self.rate));
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }
}

#[derive(Debug)]
struct Shared {
    bucket: Mutex<Bucket>,
    /// The rate, readable without the lock (the unlimited fast path).
    rate: AtomicU64,
    transferred: AtomicU64,
    reservations: AtomicU64,
}

/// A rate limit shared by every transfer given a clone of it.
#[derive(Debug, Clone)]
pub struct RateLimit {
    shared: Arc<Shared>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::unlimited()
    }
}

/// A chunk handed out: `len` bytes, usable once the bucket reaches `end`.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    end: u64,
    len: usize,
}

impl RateLimit {
    /// No limit (until [`RateLimit::set_rate`] sets one).
    pub fn unlimited() -> Self {
        Self::new(0)
    }

    /// At most `bytes_per_sec` (0 = unlimited), starting with a full burst.
    pub fn new(bytes_per_sec: u64) -> Self {
        let bucket = Bucket {
            rate: bytes_per_sec,
            reserved: 0,
            allowed_scaled: u128::from(burst_of(bytes_per_sec)) * NANOS,
            refilled_at: Instant::now(),
        };
        Self {
            shared: Arc::new(Shared {
                bucket: Mutex::new(bucket),
                rate: AtomicU64::new(bytes_per_sec),
                transferred: AtomicU64::new(0),
                reservations: AtomicU64::new(0),
            }),
        }
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        self.shared
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the rate, for the transfers running now too (0 = unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let mut bucket = self.bucket();
        let now = Instant::now();
        bucket.refill(now);
        let was_unlimited = bucket.rate == 0;
        bucket.rate = bytes_per_sec;
        if was_unlimited {
            // Limited from now on, starting with one burst.
            bucket.allowed_scaled = bucket.cap_scaled();
        } else {
            bucket.allowed_scaled = bucket.allowed_scaled.min(bucket.cap_scaled());
        }
        self.shared.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The rate in force, bytes a second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.shared.rate.load(Ordering::Relaxed)
    }

    /// Bytes passed through this limit since it was made.
    pub fn transferred(&self) -> u64 {
        self.shared.transferred.load(Ordering::Relaxed)
    }

    /// Chunks handed out while limited (each one wait, at most): how many
    /// turns the transfers took.
    pub fn reservations(&self) -> u64 {
        self.shared.reservations.load(Ordering::Relaxed)
    }

    /// Reserves up to `want` bytes (at most one chunk).
    fn reserve(&self, want: usize) -> Reservation {
        let mut bucket = self.bucket();
        bucket.refill(Instant::now());
        let chunk = chunk_of(bucket.rate);
        let len = u64::try_from(want).unwrap_or(u64::MAX).clamp(1, chunk);
        bucket.reserved += len;
        self.shared.reservations.fetch_add(1, Ordering::Relaxed);
        Reservation {
            end: bucket.reserved,
            len: usize::try_from(len).unwrap_or(usize::MAX),
        }
    }

    /// How long `reservation` must still wait.
    fn wait_for(&self, reservation: Reservation) -> Option<Duration> {
        self.bucket().wait_for(reservation.end, Instant::now())
    }

    /// Gives back `unused` reserved bytes that were not transferred.
    fn refund(&self, unused: usize) {
        if unused == 0 {
            return;
        }
        let mut bucket = self.bucket();
        let unused = u128::try_from(unused).unwrap_or(0) * NANOS;
        bucket.allowed_scaled = (bucket.allowed_scaled + unused).min(bucket.cap_scaled());
    }

    fn count(&self, bytes: usize) {
        self.shared
            .transferred
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Where a [`Throttled`] reader is in its turn.
#[derive(Debug, Default)]
enum Turn {
    /// No reservation held.
    #[default]
    Idle,
    /// A reservation, waiting for the bucket (or for data to read).
    Holding {
        reservation: Reservation,
        ready: bool,
    },
}

/// A stream whose reads go through a [`RateLimit`]; writes pass freely
/// (the limited direction is the one read).
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    limit: RateLimit,
    turn: Turn,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    /// `inner`, read at most as fast as `limit` allows.
    pub fn new(inner: S, limit: RateLimit) -> Self {
        Self {
            inner,
            limit,
            turn: Turn::Idle,
            sleep: None,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Waits (registering a timer) until the held reservation may proceed.
    fn poll_turn(&mut self, cx: &mut Context<'_>, reservation: Reservation) -> Poll<()> {
        loop {
            let Some(wait) = self.limit.wait_for(reservation) else {
                self.sleep = None;
                return Poll::Ready(());
            };
            let deadline = Instant::now() + wait.min(MAX_SLEEP);
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            if let Some(sleep) = &mut self.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S> Drop for Throttled<S> {
    fn drop(&mut self) {
        if let Turn::Holding { reservation, .. } = self.turn {
            self.limit.refund(reservation.len);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if matches!(this.turn, Turn::Idle) && this.limit.rate() == 0 {
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            this.limit.count(buf.filled().len() - before);
            return polled;
        }
        let reservation = match this.turn {
            Turn::Idle => {
                let reservation = this.limit.reserve(buf.remaining());
                this.turn = Turn::Holding {
                    reservation,
                    ready: false,
                };
                reservation
            }
            Turn::Holding { reservation, .. } => reservation,
        };
        if let Turn::Holding { ready: false, .. } = this.turn {
            if this.poll_turn(cx, reservation).is_pending() {
                return Poll::Pending;
            }
            this.turn = Turn::Holding {
                reservation,
                ready: true,
            };
        }
        let len = reservation.len.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(len));
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let read = limited.filled().len();
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                buf.advance(read);
                this.turn = Turn::Idle;
                this.limit.count(read);
                this.limit.refund(reservation.len - read);
                Poll::Ready(result)
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A [`Connector`] whose connections are read through a [`RateLimit`]:
/// give every download source one, with the same limit, and all downloads
/// together stay under it.
#[derive(Debug, Clone)]
pub struct ThrottledConnector {
    inner: Arc<dyn Connector>,
    limit: RateLimit,
}

impl ThrottledConnector {
    /// Connects through `inner`, reading through `limit`.
    pub fn new(inner: Arc<dyn Connector>, limit: RateLimit) -> Self {
        Self { inner, limit }
    }
}

impl Connector for ThrottledConnector {
    fn connect(&self) -> ConnectFuture {
        let connecting = self.inner.connect();
        let limit = self.limit.clone();
        Box::pin(async move {
            let connected = connecting.await?;
            Ok(Connected {
                stream: Box::new(Throttled::new(connected.stream, limit)),
                path: connected.path,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const MIB: u64 = 1024 * 1024;

    /// Reads `len` zero bytes through `limit` (as an HTTP body of known
    /// length is read: not to the end of the stream); returns how long
    /// it took.
    async fn read_through(limit: RateLimit, len: u64) -> Duration {
        let start = Instant::now();
        let mut reader = Throttled::new(tokio::io::repeat(0), limit);
        let mut sink = vec![0u8; 256 * 1024];
        let mut total = 0;
        while total < len {
            let want = usize::try_from(len - total).unwrap().min(sink.len());
            let n = reader.read(&mut sink[..want]).await.unwrap();
            assert!(n > 0);
            total += n as u64;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_stream_costs_one_turn_and_no_bytes() {
        let limit = RateLimit::new(MIB);
        let mut reader = Throttled::new(tokio::io::repeat(0).take(MIB), limit.clone());
        let mut sink = Vec::new();
        reader.read_to_end(&mut sink).await.unwrap();
        assert_eq!(sink.len() as u64, MIB);
        assert_eq!(limit.transferred(), MIB);
        // The read that found the end reserved a chunk (32 KiB) and gave it
        // back: the bucket holds it for the next reader.
        let took = read_through(limit, 32 * 1024).await;
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn four_mib_at_one_mib_a_second_takes_four_seconds_less_the_burst() {
        let limit = RateLimit::new(MIB);
        let took = read_through(limit.clone(), 4 * MIB).await;
        // 4 MiB less the 128 KiB burst the bucket starts with, at 1 MiB/s.
        assert!(took >= Duration::from_millis(3870), "took {took:?}");
        assert!(took <= Duration::from_millis(3900), "took {took:?}");
        assert_eq!(limit.transferred(), 4 * MIB);
        // One turn per 32 KiB chunk.
        assert_eq!(limit.reservations(), 128);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_reads_take_no_time_and_no_turns() {
        let limit = RateLimit::unlimited();
        let took = read_through(limit.clone(), 64 * MIB).await;
        assert_eq!(took, Duration::ZERO);
        assert_eq!(limit.transferred(), 64 * MIB);
        assert_eq!(limit.reservations(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn transfers_share_the_rate_fairly() {
        let limit = RateLimit::new(MIB);
        let a = tokio::spawn(read_through(limit.clone(), 2 * MIB));
        let b = tokio::spawn(read_through(limit.clone(), 2 * MIB));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        // Together 4 MiB at 1 MiB/s. Had the first taken the whole rate it
        // would have finished at 2 s; each got half the rate throughout, so
        // both finish near the end, neither ahead by more than two chunks.
        for took in [a, b] {
            assert!(took >= Duration::from_millis(3500), "took {a:?} {b:?}");
            assert!(took <= Duration::from_millis(3900), "took {took:?}");
        }
        assert!(
            a.abs_diff(b) <= Duration::from_millis(260),
            "{a:?} vs {b:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_changed_mid_transfer_applies_at_once() {
        let limit = RateLimit::new(100 * 1024);
        let reader = tokio::spawn(read_through(limit.clone(), 8 * MIB));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = limit.transferred();
        assert!(sent <= 100 * 1024 + 16 * 1024 + 16 * 1024, "sent {sent}");
        limit.set_rate(0);
        assert_eq!(limit.rate(), 0);
        let took = reader.await.unwrap();
        // The waiting reader looks again within MAX_SLEEP and then runs free.
        assert!(took <= Duration::from_secs(1) + MAX_SLEEP, "took {took:?}");
        // And back to a limit: 1 MiB more at 1 MiB/s takes about a second.
        limit.set_rate(MIB);
        let took = read_through(limit.clone(), MIB + 128 * 1024).await;
        assert!(took >= Duration::from_millis(990), "took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_bounded_after_idling() {
        let limit = RateLimit::new(MIB);
        // Idle for a minute: the bucket holds one burst, not a minute's worth.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let took = read_through(limit.clone(), MIB).await;
        assert!(took >= Duration::from_millis(870), "took {took:?}");
    }

    #[test]
    fn bursts_and_turns_scale_with_the_rate_within_bounds() {
        assert_eq!(burst_of(0), MIN_BURST);
        assert_eq!(burst_of(MIB), MIB / 8);
        assert_eq!(burst_of(u64::MAX), MAX_BURST);
        assert_eq!(chunk_of(0), MIN_CHUNK);
        assert_eq!(chunk_of(MIB), MIB / 32);
        assert_eq!(chunk_of(u64::MAX), MAX_BURST);
    }

    #[tokio::test(start_paused = true)]
    async fn many_transfers_on_a_low_rate_each_get_a_turn_every_few_seconds() {
        // Ten transfers share 10 KB/s: each gets a 4 KiB turn about every
        // 4 s, never waiting anywhere near a downloader's 10 s stall timeout.
        let limit = RateLimit::new(10_000);
        let mut readers = Vec::new();
        for _ in 0..10 {
            let limit = limit.clone();
            readers.push(tokio::spawn(async move {
                let mut reader = Throttled::new(tokio::io::repeat(0), limit);
                let mut sink = vec![0u8; 64 * 1024];
                let mut longest = Duration::ZERO;
                let mut last = Instant::now();
                let mut total = 0;
                while total < 32 * 1024 {
                    total += reader.read(&mut sink).await.unwrap();
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
                longest
            }));
        }
        for reader in readers {
            let longest = reader.await.unwrap();
            assert!(longest <= Duration::from_millis(4200), "waited {longest:?}");
        }
    }
}
