//! The benchmark's origin: `/obj/<size>/<id>` answers `size` bytes, cacheable for a year.
//!
//! Optionally throttled (bytes per second per response), so a cold-miss scenario looks like a
//! real upstream that is slower than the proxy. Counts requests and body bytes it served, which
//! is how every scenario measures what reached the upstream, identically for every cache.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct OriginStats {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes per second per response; 0 = unthrottled.
    pub throttle: AtomicU64,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<OriginStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const FILL: usize = 1 << 20;

impl Origin {
    pub async fn start() -> anyhow::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(OriginStats::default());
        let fill: Arc<Vec<u8>> = Arc::new((0..FILL).map(|i| (i % 251) as u8).collect());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, fill) = (st.clone(), fill.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, st, fill).await;
                });
            }
        });
        Ok(Origin { addr, stats, task })
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    pub fn throttle(&self, bytes_per_sec: u64) {
        self.stats.throttle.store(bytes_per_sec, Ordering::Relaxed);
    }
}

async fn serve(sock: tokio::net::TcpStream, st: Arc<OriginStats>, fill: Arc<Vec<u8>>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut r = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let head_only = line.starts_with("HEAD");
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        let size: Option<u64> = path.strip_prefix("/obj/").and_then(|p| p.split('/').next()).and_then(|s| s.parse().ok());
        let sock = r.get_mut();
        let Some(size) = size else {
            sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await?;
            continue;
        };
        st.requests.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\nCache-Control: public, max-age=31536000\r\nETag: \"{}\"\r\nLast-Modified: Mon, 02 Nov 2026 00:00:00 GMT\r\n\r\n",
            path.len()
        );
        sock.write_all(head.as_bytes()).await?;
        if head_only {
            continue;
        }
        let mut left = size;
        let throttle = st.throttle.load(Ordering::Relaxed);
        // Throttled responses go out in 64 KiB slices paced to the configured rate.
        let slice = if throttle > 0 { 64 * 1024 } else { FILL as u64 };
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        while left > 0 {
            let n = left.min(slice) as usize;
            sock.write_all(&fill[..n]).await?;
            left -= n as u64;
            sent += n as u64;
            st.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if throttle > 0 {
                let due = started + Duration::from_secs_f64(sent as f64 / throttle as f64);
                tokio::time::sleep_until(due).await;
            }
        }
    }
}
