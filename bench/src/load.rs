//! Load generators: `wrk` for cache-hit throughput, and a small keep-alive HTTP/1.1 client for
//! the scenarios wrk cannot express (one-shot stampedes, a fixed Zipf request sequence).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub bytes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|n| n * mult)
}

fn parse_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    let units = [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)];
    units.iter().find_map(|(u, m)| s.strip_suffix(u).and_then(|n| n.trim().parse::<f64>().ok()).map(|n| n * *m as f64))
}

/// Parse wrk's `--latency` report.
pub fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse()?;
        } else if let Some(v) = t.strip_prefix("Transfer/sec:") {
            r.bytes_per_sec = parse_bytes(v).context("Transfer/sec")?;
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_ms = parse_duration_ms(v).context("p50")?;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = parse_duration_ms(v).context("p99")?;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    if r.requests_per_sec == 0.0 {
        bail!("wrk reported no requests:\n{out}");
    }
    Ok(r)
}

/// `wrk` pinned to `cpu`, one thread, `conns` connections. Runs off the async runtime so the
/// in-process origin keeps answering (a cache that misses must not stall on it).
pub async fn wrk(url: &str, cpu: usize, conns: usize, duration: Duration) -> anyhow::Result<WrkResult> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || wrk_blocking(&url, cpu, conns, duration)).await?
}

fn wrk_blocking(url: &str, cpu: usize, conns: usize, duration: Duration) -> anyhow::Result<WrkResult> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "wrk", "-t1", &format!("-c{conns}"), &format!("-d{}s", duration.as_secs().max(1)), "--latency", url])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// A keep-alive HTTP/1.1 connection that GETs and discards bodies (Content-Length framing).
pub struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
    /// Same `Host` wrk sends: Varnish's cache key includes it.
    host: String,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        Ok(Conn { sock, buf: vec![0u8; 256 * 1024], host: addr.to_string() })
    }

    /// GET `path`; returns (status, body bytes).
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, u64)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.sock.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(512);
        let (head_end, mut filled) = loop {
            let n = self.sock.read(&mut self.buf).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            head.extend_from_slice(&self.buf[..n]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break (p, (head.len() - p - 4) as u64);
            }
        };
        let text = String::from_utf8_lossy(&head[..head_end]);
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let len: u64 = text
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .context("response without Content-Length")?;
        while filled < len {
            let n = self.sock.read(&mut self.buf).await?;
            if n == 0 {
                bail!("body cut short at {filled} of {len} bytes");
            }
            filled += n as u64;
        }
        Ok((status, filled))
    }
}

/// Time `clients` concurrent one-shot GETs of `path`; returns elapsed wall time.
pub async fn stampede(addr: SocketAddr, path: &str, clients: usize, expect_len: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await?;
            let (status, len) = c.get(&path).await?;
            anyhow::ensure!(status == 200 && len == expect_len, "got {status} with {len} bytes");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}
