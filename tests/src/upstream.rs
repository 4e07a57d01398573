//! A controllable upstream HTTP/1.1 server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::pattern_byte;

#[derive(Clone)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of [`crate::pattern_byte`] with this seed, generated while sending.
    Pattern { seed: u8, len: u64 },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Pattern { len, .. } => *len,
        }
    }
}

/// What the upstream answers on one path.
#[derive(Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Close the connection after this many body bytes (Content-Length still says the full length).
    pub truncate_at: Option<u64>,
    /// After this many body bytes, wait until the gate gets a permit.
    pub hold_at: Option<(u64, Arc<Semaphore>)>,
    /// Wait before sending the response head.
    pub delay: Option<Duration>,
    /// Send the body with chunked transfer-encoding instead of Content-Length.
    pub chunked: bool,
    /// Answer with the value of this request header as the body (for Vary tests).
    pub echo_header: Option<String>,
    /// Answer a matching `If-None-Match` / `If-Modified-Since` with 304 and the route's headers.
    pub revalidates: bool,
    /// Wait for a permit before sending the response head.
    pub hold_head: Option<Arc<Semaphore>>,
    /// Other answers on the same path, chosen when the named request header contains the text.
    pub alternates: Vec<(String, String, Route)>,
    /// Close the connection after reading the request, without answering.
    pub close_before_head: bool,
    /// Interim (1xx) responses sent before the final one: status and headers.
    pub interim: Vec<(u16, Vec<(String, String)>)>,
    /// Answer a single `bytes=` `Range` on a `GET` of a 200 route with 206 and those bytes (no
    /// hold, no truncation), or 416 when it cannot be satisfied.
    pub serves_ranges: bool,
}

impl Route {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Route {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=3600".into())],
            body: Body::Bytes(body.into()),
            truncate_at: None,
            hold_at: None,
            delay: None,
            chunked: false,
            echo_header: None,
            revalidates: false,
            hold_head: None,
            alternates: Vec::new(),
            close_before_head: false,
            interim: Vec::new(),
            serves_ranges: false,
        }
    }

    /// Answer with `route` instead when the request's `Accept` contains `accept`.
    pub fn when_accept(self, accept: &str, route: Route) -> Self {
        self.when_header("accept", accept, route)
    }

    /// Answer with `route` instead when the request's `name` header contains `text`.
    pub fn when_header(mut self, name: &str, text: &str, route: Route) -> Self {
        self.alternates.push((name.to_string(), text.to_string(), route));
        self
    }

    /// Drop a header the route would otherwise send (e.g. the default Cache-Control).
    pub fn without(mut self, k: &str) -> Self {
        self.headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        self
    }

    pub fn revalidates(mut self) -> Self {
        self.revalidates = true;
        self
    }

    pub fn hold_head(mut self, gate: Arc<Semaphore>) -> Self {
        self.hold_head = Some(gate);
        self
    }

    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// RFC 9110 §13.1: does this conditional request match what the route would send?
    fn not_modified(&self, req: &SeenRequest) -> bool {
        if !self.revalidates || self.status != 200 {
            return false;
        }
        if let Some(inm) = req.header("if-none-match") {
            let etag = self.header_value("etag").unwrap_or("");
            return inm.split(',').map(str::trim).any(|t| t == "*" || (!etag.is_empty() && t.trim_start_matches("W/") == etag.trim_start_matches("W/")));
        }
        matches!((req.header("if-modified-since"), self.header_value("last-modified")), (Some(a), Some(b)) if a == b)
    }

    pub fn pattern(seed: u8, len: u64) -> Self {
        Route {
            body: Body::Pattern { seed, len },
            ..Route::ok(Vec::new())
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn truncate_at(mut self, n: u64) -> Self {
        self.truncate_at = Some(n);
        self
    }

    /// Answer byte ranges as a registry's CDN does (see [`Route::serves_ranges`]).
    pub fn serves_ranges(mut self) -> Self {
        self.serves_ranges = true;
        self
    }

    pub fn hold_at(mut self, n: u64, gate: Arc<Semaphore>) -> Self {
        self.hold_at = Some((n, gate));
        self
    }

    pub fn echo_header(mut self, name: &str) -> Self {
        self.echo_header = Some(name.to_string());
        self
    }

    /// Read the request, then close the connection without a response.
    pub fn close_before_head(mut self) -> Self {
        self.close_before_head = true;
        self
    }

    /// Send an interim response (`102`, `103`...) with these headers before the final one.
    pub fn interim(mut self, status: u16, headers: &[(&str, &str)]) -> Self {
        self.interim.push((status, headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
}

/// A request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    seen: Mutex<Vec<SeenRequest>>,
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
    tls_failures: AtomicUsize,
    total: AtomicUsize,
}

pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// An HTTPS upstream presenting `cert_pem` (chain) and `key_pem`.
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> Upstream {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let certs = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<Vec<_>, _>>().expect("certs");
        let key = rustls_pemfile::private_key(&mut &key_pem[..]).expect("key").expect("a key");
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let st2 = st.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(stream) => serve_conn(stream, st2).await,
                            Err(_) => {
                                st2.tls_failures.fetch_add(1, Ordering::SeqCst);
                                Ok(())
                            }
                        },
                        None => serve_conn(sock, st2).await,
                    };
                });
                st.connections.lock().unwrap().push(conn.abort_handle());
            }
        });
        Upstream { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://localhost:PORT`, for certificates issued to `localhost`.
    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// TLS handshakes that failed (e.g. the client rejected the certificate).
    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state.routes.lock().unwrap().insert(path.to_string(), route);
    }

    /// Requests seen for `path` (path without query).
    pub fn hits(&self, path: &str) -> usize {
        self.state.seen.lock().unwrap().iter().filter(|r| r.path.split('?').next() == Some(path)).count()
    }

    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    pub fn requests(&self, path: &str) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().iter().filter(|r| r.path.split('?').next() == Some(path)).cloned().collect()
    }

    /// Stop listening and drop every open connection: the upstream is gone.
    pub fn stop(&self) {
        self.task.abort();
        for c in self.state.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(sock: S, st: Arc<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let req = SeenRequest { method: method.clone(), path: path.clone(), headers };
        let req_for_route = req.clone();
        let content_length: u64 = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if content_length > 0 {
            let mut skip = vec![0u8; content_length as usize];
            reader.read_exact(&mut skip).await?;
        }
        st.seen.lock().unwrap().push(req);
        st.total.fetch_add(1, Ordering::SeqCst);
        let route = st.routes.lock().unwrap().get(path.split('?').next().unwrap_or("")).cloned();
        let mut route = route.unwrap_or_else(|| Route::ok(b"not found\n".to_vec()).status(404).header("Cache-Control", "no-store"));
        let has = |name: &str, text: &str| req_for_route.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case(name) && v.contains(text));
        if let Some((_, _, alt)) = route.alternates.iter().find(|(name, text, _)| has(name, text)) {
            route = alt.clone();
        }
        if let Some(name) = route.echo_header.clone() {
            let seen = st.seen.lock().unwrap().last().and_then(|r| r.header(&name).map(str::to_string));
            route.body = Body::Bytes(seen.unwrap_or_else(|| "none".into()).into_bytes());
        }
        if let Some(d) = route.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(gate) = &route.hold_head {
            gate.acquire().await.expect("gate open").forget();
        }
        let sock = reader.get_mut();
        if route.close_before_head {
            let _ = sock.shutdown().await;
            return Ok(());
        }
        for (status, headers) in &route.interim {
            let mut head = format!("HTTP/1.1 {status} Interim\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            sock.write_all(head.as_bytes()).await?;
        }
        if route.not_modified(&req_for_route) {
            let mut head = "HTTP/1.1 304 Not Modified\r\n".to_string();
            for (k, v) in &route.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            sock.write_all(head.as_bytes()).await?;
            continue;
        }
        // One byte range, answered whole and at once (RFC 9110 §14).
        let asked = route.serves_ranges && route.status == 200 && method == "GET";
        let range = asked.then(|| req_for_route.header("range").map(|r| byte_range(r, route.body.len()))).flatten();
        if range == Some(None) {
            let len = route.body.len();
            sock.write_all(format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await?;
            continue;
        }
        let range = range.flatten();
        let mut sent = 0u64;
        if let Some((first, last)) = range {
            route.status = 206;
            route.headers.push(("Content-Range".into(), format!("bytes {first}-{last}/{}", route.body.len())));
            route.hold_at = None;
            route.truncate_at = Some(last + 1);
            route.chunked = false;
            sent = first;
        }
        let framing = if route.chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", range.map_or(route.body.len(), |(first, last)| last - first + 1))
        };
        let mut head = format!("HTTP/1.1 {} X\r\n{framing}\r\n", route.status);
        for (k, v) in &route.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        if method == "HEAD" {
            continue;
        }
        let total = route.body.len();
        let limit = route.truncate_at.unwrap_or(total).min(total);
        let mut buf = vec![0u8; 64 * 1024];
        while sent < limit {
            if let Some((at, gate)) = &route.hold_at {
                if sent == *at {
                    gate.acquire().await.expect("gate open").forget();
                }
            }
            let mut n = (limit - sent).min(buf.len() as u64);
            if let Some((at, _)) = &route.hold_at {
                if sent < *at {
                    n = n.min(*at - sent);
                }
            }
            match &route.body {
                Body::Bytes(b) => buf[..n as usize].copy_from_slice(&b[sent as usize..(sent + n) as usize]),
                Body::Pattern { seed, .. } => {
                    for (j, slot) in buf[..n as usize].iter_mut().enumerate() {
                        *slot = pattern_byte(*seed, sent + j as u64);
                    }
                }
            }
            if route.chunked {
                sock.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                sock.write_all(&buf[..n as usize]).await?;
                sock.write_all(b"\r\n").await?;
            } else {
                sock.write_all(&buf[..n as usize]).await?;
            }
            sent += n;
        }
        if route.chunked && limit == total {
            sock.write_all(b"0\r\n\r\n").await?;
        }
        sock.flush().await?;
        if route.truncate_at.is_some() && limit < total && range.is_none() {
            // Cut the body short: close without sending the rest.
            let _ = sock.shutdown().await;
            return Ok(());
        }
    }
}

/// The first and last byte of a single `bytes=` range of a `len`-byte body, if satisfiable.
fn byte_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (from, to) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    if value.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = match (from.trim(), to.trim()) {
        ("", n) => (len.saturating_sub(n.parse().ok()?), len - 1),
        (f, "") => (f.parse().ok()?, len - 1),
        (f, l) => (f.parse().ok()?, l.parse::<u64>().ok()?.min(len - 1)),
    };
    (first <= last).then_some((first, last))
}
