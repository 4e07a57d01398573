//! Requests the proxy makes to itself: reading a document through its own cache (and so
//! through coalescing, stale copies and offline mode) when a format needs what it lists.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("loopback request failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("loopback request answered {0}")]
    Status(u16),
    #[error("loopback response is malformed: {0}")]
    Malformed(&'static str),
    #[error("loopback response larger than {0} bytes")]
    TooLarge(usize),
    #[error("loopback request timed out")]
    Timeout,
}

/// How long a loopback read may take; it runs while a client waits.
const TIMEOUT: Duration = Duration::from_secs(60);

/// GET `target` (a path) from the proxy listening on `addr`; the body of a 200, at most `limit` bytes.
pub async fn get(addr: SocketAddr, target: &str, accept: &str, limit: usize) -> Result<Bytes, LoopbackError> {
    get_from(addr, &addr.to_string(), target, accept, limit).await
}

/// GET `target` from the HTTP server at `addr`, naming it `host`.
async fn get_from(addr: SocketAddr, host: &str, target: &str, accept: &str, limit: usize) -> Result<Bytes, LoopbackError> {
    tokio::time::timeout(TIMEOUT, fetch(addr, host, target, accept, limit)).await.map_err(|_| LoopbackError::Timeout)?
}

async fn fetch(addr: SocketAddr, host: &str, target: &str, accept: &str, limit: usize) -> Result<Bytes, LoopbackError> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n");
    sock.write_all(request.as_bytes()).await?;
    // Read until the response is complete by its own framing (Content-Length, or the last
    // chunk), or the server closes: a server may keep the connection open despite
    // `Connection: close`.
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > limit + 64 * 1024 {
            return Err(LoopbackError::TooLarge(limit));
        }
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body_len = raw.len() - end - 4;
            let content_length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            if content_length.is_some_and(|cl| body_len >= cl) || (chunked && raw.ends_with(b"0\r\n\r\n")) {
                break;
            }
        }
    }
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(LoopbackError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| LoopbackError::Malformed("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(LoopbackError::Malformed("no status line"))?;
    if status != 200 {
        return Err(LoopbackError::Status(status));
    }
    let chunked = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"))
    });
    let body = &raw[head_end + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    if body.len() > limit {
        return Err(LoopbackError::TooLarge(limit));
    }
    Ok(Bytes::from(body))
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, LoopbackError> {
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").ok_or(LoopbackError::Malformed("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| LoopbackError::Malformed("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| LoopbackError::Malformed("chunk size"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(LoopbackError::Malformed("truncated chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled_and_truncation_is_an_error() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"5\r\nab").is_err());
    }
}
