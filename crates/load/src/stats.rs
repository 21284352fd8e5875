//! Summaries of samples, and what /proc says about a process.

use std::time::Duration;

use anyhow::Context as _;

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Largest, in milliseconds.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarises `samples` (sorted in place).
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // An index into the samples: non-negative and in range.
            #[allow(clippy::cast_possible_truncation)]
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i.min(samples.len() - 1)].as_secs_f64() * 1e3
        };
        Self {
            count: samples.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
        })
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// `x` to three decimals, for JSON output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Resident memory of process `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// CPU time process `pid` (`self` for this one) has used, user + system.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // Clock ticks are 100 a second on every Linux this runs on.
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

/// Share of one core used between two readings of [`cpu_time`].
pub fn cpu_share(before: Duration, after: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    after.saturating_sub(before).as_secs_f64() / wall.as_secs_f64()
}

/// Reads one gauge or counter from a Prometheus text endpoint at `addr`
/// (`GET /metrics`), without an HTTP library.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let key = key.split('{').next()?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .with_context(|| format!("no {name} at {addr}/metrics"))
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the supernode whose metrics are at `addr` has indexed at
/// least `files` files.
pub async fn wait_for_index(
    addr: std::net::SocketAddr,
    files: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(timeout, || async move {
        metric(addr, "canopy_index_files")
            .await
            .is_ok_and(|n| n >= files)
    })
    .await
    .with_context(|| format!("waiting for the supernode at {addr} to index {files} files"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_hundred() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() <= 1.0);
        assert!((p.p99_ms - 99.0).abs() <= 1.0);
        assert!((p.max_ms - 100.0).abs() < 1e-9);
    }
}
