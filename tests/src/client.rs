//! A small HTTP/1.1 client: one request per connection, body read whole or incrementally.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The connection ended before `Content-Length` bytes arrived.
    pub truncated: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn cache(&self) -> &str {
        self.header("x-hangar-cache").unwrap_or("<none>")
    }
}

/// A response whose body is still arriving.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
    sock: TcpStream,
    buffered: Vec<u8>,
    pub received: u64,
}

impl Streaming {
    /// Next piece of the body; `None` once the server closed the connection.
    ///
    /// Requests say `Connection: close` and the body is read to EOF, not just to
    /// Content-Length: the proxy runs its logging phase (metrics) before closing, so a test
    /// that has read a whole response can assert on metrics without racing the proxy.
    pub async fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if !self.buffered.is_empty() {
            let b = std::mem::take(&mut self.buffered);
            self.received += b.len() as u64;
            return Ok(Some(b));
        }
        let mut buf = vec![0u8; 256 * 1024];
        let n = self.sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        self.received += n as u64;
        Ok(Some(buf))
    }

    /// Read ahead until at least `min` bytes of body have arrived (chunked framing decoded),
    /// keeping them for [`Streaming::chunk`] and [`Streaming::collect`]: lets a test wait for
    /// what a server has streamed so far without consuming it. An error if the connection
    /// ends first.
    pub async fn read_ahead(&mut self, min: usize) -> std::io::Result<()> {
        let chunked = self.is_chunked();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let have = if chunked { decode_chunked(&self.buffered).0.len() } else { self.buffered.len() };
            if have >= min {
                return Ok(());
            }
            let n = self.sock.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("connection closed after {have} bytes of body")));
            }
            self.buffered.extend_from_slice(&buf[..n]);
        }
    }

    /// Read the rest of the body, calling `f` on each piece; returns (bytes, truncated).
    pub async fn drain(mut self, mut f: impl FnMut(u64, &[u8])) -> (u64, bool) {
        loop {
            let offset = self.received;
            match self.chunk().await {
                Ok(Some(c)) => f(offset, &c),
                Ok(None) | Err(_) => break,
            }
        }
        let truncated = self.content_length.is_some_and(|l| self.received < l);
        (self.received, truncated)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    }

    /// Read the whole body (decoding chunked framing); `truncated` if it ended early.
    pub async fn collect(self) -> Response {
        let status = self.status;
        let headers = self.headers.clone();
        let chunked = self.is_chunked();
        let mut raw = Vec::new();
        let (_, truncated) = self.drain(|_, c| raw.extend_from_slice(c)).await;
        if chunked {
            let (body, complete) = decode_chunked(&raw);
            return Response { status, headers, body, truncated: !complete };
        }
        Response { status, headers, body: raw, truncated }
    }
}

/// Decode a chunked body; `complete` only if the terminating zero-size chunk arrived.
pub fn decode_chunked(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return (body, false) };
        let size_str = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16) else {
            return (body, false);
        };
        raw = &raw[eol + 2..];
        if size == 0 {
            return (body, raw.starts_with(b"\r\n"));
        }
        if raw.len() < size + 2 {
            body.extend_from_slice(&raw[..raw.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Send `method target` with extra headers; return once the response head has arrived.
pub async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Streaming> {
    let mut sock = TcpStream::connect(addr).await?;
    // A `Host` among `headers` replaces the default one (the server's address).
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before response head"));
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let content_length = if method == "HEAD" || status == 304 || status == 204 {
        Some(0)
    } else {
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok())
    };
    Ok(Streaming { status, headers, content_length, sock, buffered: buf[head_end + 4..].to_vec(), received: 0 })
}

/// `PUT target` with `body` and extra headers, on its own connection; the response's status
/// and its whole text (head and body).
pub async fn put(addr: SocketAddr, target: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("PUT {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read response");
    let text = String::from_utf8_lossy(&resp).to_string();
    (text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

/// GET `target` and read the whole body.
pub async fn get(addr: SocketAddr, target: &str) -> Response {
    http(addr, "GET", target, &[]).await.expect("request").collect().await
}
