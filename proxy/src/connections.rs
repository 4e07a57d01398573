//! Client connections are a resource an idle or slow client must not be able to exhaust.
//!
//! Pingora's HTTP/1 server times out each *read* (60 s), not the wait for a request, so a
//! connection that trickles one header byte every 20 s, or sits idle between requests, is held
//! for as long as the client likes; enough of them use up the process's file descriptors and
//! every new client (and `/healthz`) fails with "Too many open files". [`Guarded`] wraps the
//! proxy's server app with the three limits nginx users know:
//!
//! - a cap on open client connections ([`ConnectionLimits::max_clients`]); one over it is
//!   answered `503` with `Retry-After` and closed. The admin listener is not counted: the file
//!   descriptors the cap leaves over are its reserve (and the upstream connections' and cache
//!   files');
//! - an idle timeout: a connection waiting for the first byte of its next request (or of its
//!   first) is closed after [`ConnectionLimits::keepalive_timeout`];
//! - a deadline for a request's headers: from their first byte to their end, at most
//!   [`ConnectionLimits::header_timeout`], however the bytes are spread.
//!
//! The request path tells a connection where it is ([`headers_read`] when pingora has parsed a
//! request's headers, [`idle`] when the connection is kept for another request); the
//! [`GuardedStream`] enforces the deadline of the phase it is in, with one timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits, from the config's `[connections]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Client connections open at once.
    pub max_clients: usize,
    /// Longest wait for the first byte of a request.
    pub keepalive_timeout: Duration,
    /// Longest time from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
}

/// What [`Guarded`] counts.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// `hangar_client_connections`: open now.
    pub open: IntGauge,
    /// `hangar_client_connections_refused_total`: answered 503 at the cap.
    pub refused: IntCounter,
    /// `hangar_client_connections_closed_total{reason="idle|header_timeout"}`.
    pub closed: IntCounterVec,
}

/// A server app whose client connections are capped and timed (see the module docs).
pub struct Guarded<A> {
    inner: Arc<A>,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        Guarded { inner: Arc::new(inner), permits: Arc::new(Semaphore::new(limits.max_clients.max(1))), limits, metrics }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.refused.inc();
            refuse(&mut stream, self.limits.max_clients).await;
            return None;
        };
        let guarded = GuardedStream::new(stream, permit, self.limits, self.metrics.clone());
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Answer a connection over the cap: read what the client sent first (closing on unread data
/// would reset the connection and lose the answer), say why, close. Bounded in time, since
/// the connection holds a descriptor but no permit.
async fn refuse(stream: &mut Stream, max: usize) {
    let body = format!("too many client connections (connections.max_clients = {max}); try again shortly\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut scratch)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.flush().await;
    })
    .await;
    Shutdown::shutdown(&mut **stream).await;
}

/// Where a connection is, as far as its deadlines go.
const IDLE: u8 = 0;
const HEADERS: u8 = 1;
const BUSY: u8 = 2;

/// A client connection with its permit and its deadline.
///
/// The deadline is kept as a plain `Instant`, and the timer is only a wake-up that is never
/// later than it: a keep-alive connection's deadline moves with every request, and resetting
/// a tokio timer (a lock on the time driver) twice a request cost about 5% of a small hit's
/// instructions. The timer is moved only when it would wake too late, or woke too early.
pub struct GuardedStream {
    inner: Stream,
    /// Set by the request path through a shared reference ([`headers_read`], [`idle`]).
    phase: AtomicU8,
    /// The phase `deadline` was set for.
    seen: u8,
    /// When the current phase's wait ends.
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    _permit: OwnedSemaphorePermit,
}

impl GuardedStream {
    fn new(inner: Stream, permit: OwnedSemaphorePermit, limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        metrics.open.inc();
        let deadline = Instant::now() + limits.keepalive_timeout;
        GuardedStream { inner, phase: AtomicU8::new(IDLE), seen: IDLE, deadline, timer: Box::pin(tokio::time::sleep_until(deadline)), limits, metrics, _permit: permit }
    }

    fn enter(&mut self, phase: u8, now: Instant) {
        let after = if phase == IDLE { self.limits.keepalive_timeout } else { self.limits.header_timeout };
        self.deadline = now + after;
        self.seen = phase;
    }

    /// The phase's wait is over: an end of stream (idle) or an error (headers).
    fn expire(&self, phase: u8) -> Poll<std::io::Result<()>> {
        if phase == IDLE {
            // An end of stream before any byte: pingora closes the connection quietly.
            self.metrics.closed.with_label_values(&["idle"]).inc();
            return Poll::Ready(Ok(()));
        }
        self.metrics.closed.with_label_values(&["header_timeout"]).inc();
        let why = format!("request headers not complete within {:?}", self.limits.header_timeout);
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
    }

    /// Make sure the task wakes by the deadline; `true` if it has passed.
    fn wake_by_deadline(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if now >= self.deadline {
            return true;
        }
        if self.timer.deadline() > self.deadline {
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            // Woke early (the deadline moved on since the timer was set): wait for the rest.
            if Instant::now() >= self.deadline {
                return true;
            }
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream").field("inner", &self.inner).finish()
    }
}

/// The guarded stream under a session, if it is one.
fn guarded(session: &Session) -> Option<&GuardedStream> {
    session.downstream_session.stream().and_then(|s| (**s).as_any().downcast_ref::<GuardedStream>())
}

/// Pingora has read a request's headers: no header deadline until the next request.
pub fn headers_read(session: &Session) {
    if let Some(g) = guarded(session) {
        g.phase.store(BUSY, Ordering::Release);
    }
}

/// The connection is kept for another request: the idle timeout runs from now.
pub fn idle(session: &Session) {
    if let Some(g) = guarded(session) {
        g.phase.store(IDLE, Ordering::Release);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let phase = self.phase.load(Ordering::Acquire);
        if phase == BUSY {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let now = Instant::now();
        if self.seen != phase {
            self.enter(phase, now);
        }
        if now >= self.deadline {
            return self.expire(phase);
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if phase == IDLE && buf.filled().len() > before {
                    // A request began: its headers are on the clock.
                    self.phase.store(HEADERS, Ordering::Release);
                    self.enter(HEADERS, now);
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.wake_by_deadline(cx, now) => self.expire(phase),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The cap when the config leaves it at 0: a quarter of the soft open-file limit (a client
/// connection may hold an upstream connection and cache files as well), at least 64.
pub fn default_max_clients() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if ok && limit.rlim_cur != libc::RLIM_INFINITY { limit.rlim_cur as usize } else { 65_536 };
    (soft / 4).max(64)
}
