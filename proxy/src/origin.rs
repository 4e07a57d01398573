//! The regional origin service: asked before the upstream on a miss for an immutable
//! artefact, and handed every such artefact fetched from an upstream, in the background.
//!
//! Uploads go through a bounded queue: a full queue drops the upload (counted), never blocks
//! or delays a client. A job the queue accepted is retried until origin takes it, so an
//! origin (or S3 behind it) that is down for a while loses nothing it was promised. The bytes
//! are read back through the proxy's own cache (a loopback request that never goes upstream)
//! and streamed to origin; nothing is buffered whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, Mutex};

use crate::upstream::UpstreamUrl;

/// Characters escaped when a cache key path becomes a path segment of an origin URL.
const KEY_PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}');

/// The request header that makes the proxy answer only from cache (504 otherwise); used by
/// its own loopback reads so that reading an artefact back never fetches it again.
pub const ONLY_IF_CACHED_HEADER: &str = "x-hangar-only-if-cached";

/// `/objects/<repository>/<key path>` on origin.
pub fn object_path(base: &UpstreamUrl, repository: &str, key_path: &str) -> String {
    format!("{}objects/{repository}/{}", base.base_path, utf8_percent_encode(key_path, KEY_PATH))
}

/// Longest one upload attempt may take before it is abandoned and retried.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// One artefact to hand to origin.
#[derive(Debug, Clone)]
pub struct UploadJob {
    pub repository: String,
    pub key_path: String,
    /// The request (path and query on the proxy) that reads it back from cache.
    pub proxy_target: String,
    /// The `Host` it was cached under (documents vary by it; artefacts do not, but the read
    /// must look like the original).
    pub host: String,
    pub sha256: Option<String>,
}

pub struct OriginClient {
    pub url: UpstreamUrl,
    queue: mpsc::Sender<UploadJob>,
    receiver: Mutex<Option<mpsc::Receiver<UploadJob>>>,
    results: IntCounterVec,
}

impl OriginClient {
    pub fn new(url: UpstreamUrl, queue_len: usize, results: IntCounterVec) -> Self {
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        OriginClient { url, queue: tx, receiver: Mutex::new(Some(rx)), results }
    }

    /// Queue an upload; a full queue drops it (counted) rather than wait.
    pub fn enqueue(&self, job: UploadJob) {
        match self.queue.try_send(job) {
            Ok(()) => self.results.with_label_values(&["queued"]).inc(),
            Err(_) => self.results.with_label_values(&["dropped_queue_full"]).inc(),
        }
    }

    /// Run `workers` upload loops until the queue closes.
    pub async fn run(self: Arc<Self>, listen: SocketAddr, workers: usize) {
        let Some(rx) = self.receiver.lock().await.take() else { return };
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for _ in 0..workers.max(1) {
            let (me, rx) = (self.clone(), rx.clone());
            handles.push(tokio::spawn(async move {
                loop {
                    let job = { rx.lock().await.recv().await };
                    let Some(job) = job else { return };
                    me.deliver(listen, job).await;
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Upload one job, retrying with backoff while origin is unreachable or unavailable.
    async fn deliver(&self, listen: SocketAddr, job: UploadJob) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(UPLOAD_TIMEOUT, self.upload(listen, &job)).await.unwrap_or_else(|_| Err(UploadError::Retry("upload timed out".into())));
            match attempt {
                Ok(status) => {
                    let label = match status {
                        201 => "stored",
                        200 => "already_stored",
                        _ => "rejected",
                    };
                    if label == "rejected" {
                        tracing::warn!(repository = %job.repository, path = %job.key_path, status, "origin rejected an upload");
                    }
                    self.results.with_label_values(&[label]).inc();
                    return;
                }
                Err(UploadError::NotCached) => {
                    // Evicted before its turn: nothing to send, and not worth fetching again.
                    self.results.with_label_values(&["evicted_before_upload"]).inc();
                    return;
                }
                Err(UploadError::Retry(why)) => {
                    self.results.with_label_values(&["retried"]).inc();
                    tracing::debug!(repository = %job.repository, path = %job.key_path, error = %why, "origin upload will be retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn upload(&self, listen: SocketAddr, job: &UploadJob) -> Result<u16, UploadError> {
        let retry = |e: &dyn std::fmt::Display| UploadError::Retry(e.to_string());
        // Read the artefact back from the cache...
        let (mut local, conn) = handshake(listen).await.map_err(|e| retry(&e))?;
        tokio::spawn(conn);
        let get = http::Request::get(&job.proxy_target)
            .header(http::header::HOST, &job.host)
            .header(ONLY_IF_CACHED_HEADER, "1")
            .header(http::header::ACCEPT_ENCODING, "identity")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| retry(&e))?;
        let cached = local.send_request(get).await.map_err(|e| retry(&e))?;
        if cached.status() != http::StatusCode::OK {
            return Err(UploadError::NotCached);
        }
        let len = cached.headers().get(http::header::CONTENT_LENGTH).cloned();
        let content_type = cached.headers().get(http::header::CONTENT_TYPE).cloned();
        // ... and stream it to origin.
        let addr = tokio::net::lookup_host((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| retry(&e))?
            .next()
            .ok_or_else(|| UploadError::Retry(format!("{} has no address", self.url.host)))?;
        let (mut remote, conn) = handshake(addr).await.map_err(|e| retry(&e))?;
        tokio::spawn(conn);
        let mut put = http::Request::put(object_path(&self.url, &job.repository, &job.key_path)).header(http::header::HOST, self.url.host_header());
        if let Some(l) = len {
            put = put.header(http::header::CONTENT_LENGTH, l);
        }
        if let Some(ct) = content_type {
            put = put.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(sha) = &job.sha256 {
            put = put.header("x-hangar-sha256", sha);
        }
        let put = put.body(cached.into_body()).map_err(|e| retry(&e))?;
        let resp = remote.send_request(put).await.map_err(|e| retry(&e))?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        if status >= 500 {
            return Err(UploadError::Retry(format!("origin answered {status}")));
        }
        Ok(status)
    }
}

enum UploadError {
    /// The artefact is no longer in the cache.
    NotCached,
    Retry(String),
}

async fn handshake<B>(addr: SocketAddr) -> std::io::Result<(hyper::client::conn::http1::SendRequest<B>, impl std::future::Future<Output = ()>)>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)?;
    Ok((send, async move {
        let _ = conn.await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_become_one_escaped_path() {
        let base = UpstreamUrl::parse("http://origin.test/base/").unwrap();
        assert_eq!(object_path(&base, "npm", "@s/p/-/p 1.tgz?x=1#f"), "/base/objects/npm/@s/p/-/p%201.tgz%3Fx=1%23f");
    }
}
