//! The regional origin service: asked before the upstream on a miss for an immutable
//! artefact, and handed every such artefact fetched from an upstream, in the background.
//!
//! Uploads go through a bounded queue: a full queue drops the upload (counted), never blocks
//! or delays a client. A job the queue accepted is retried until origin takes it, so an
//! origin (or S3 behind it) that is down for a while loses nothing it was promised. The bytes
//! are read back through the proxy's own cache (a signed loopback request that never goes
//! upstream) and streamed to origin; nothing is buffered whole.
//!
//! Origin's copies are verified like the upstream's bytes (see `request::origin_copy`). One
//! that fails is *distrusted*: origin is not asked for it again, and the verified copy fetched
//! from the upstream instead is uploaded as its replacement ([`REPLACES_HEADER`], signed with
//! the fleet's secret), after which origin is trusted with it again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hangar_core::event::Source;
use hangar_core::wire::{object_path, replacement_signed_target, HopKind, HOP_HEADER, REPLACES_HEADER, SHA256_HEADER};
use hangar_core::{CacheResult, Digest, HumanDuration, PathClass, UpstreamUrl};
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, Mutex};

use crate::client::{Client, ClientError, Request};
use crate::config::TimeoutConfig;
use crate::fleet::Fleet;
use crate::outcome::{Outcome, OutcomeSink};

/// Longest one upload attempt may take before it is abandoned and retried.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Origin copies remembered as corrupt at most; beyond it the oldest is forgotten (and, if
/// still corrupt, found again by the next read, which fails verification once more).
const DISTRUSTED_MAX: usize = 10_000;

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
    /// 64 hex digits, when the artefact's sha256 is known.
    pub sha256: Option<String>,
    /// The sha256 of a corrupt copy origin holds at this path, which this upload replaces
    /// (sent only with `sha256`: a replacement names its bytes).
    pub replaces: Option<String>,
}

/// An origin copy that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distrust {
    /// The sha256 origin claims for it (64 hex digits).
    pub sha256: String,
    /// Its bytes do not hash to that claim (the blob rotted): only those very bytes may
    /// replace it. Otherwise the claim itself contradicts the artefact's published digest, and
    /// the verified bytes replace it whatever their sha256.
    pub rotten: bool,
}

/// Distrusted origin copies by `(repository, key path)`, oldest first.
#[derive(Default)]
struct Distrusted {
    map: std::collections::HashMap<(String, String), Distrust>,
    order: std::collections::VecDeque<(String, String)>,
}

/// The proxy's side of origin: where objects are asked for, and the upload queue.
pub struct OriginClient {
    pub url: UpstreamUrl,
    queue: mpsc::Sender<UploadJob>,
    receiver: Mutex<Option<mpsc::Receiver<UploadJob>>>,
    results: IntCounterVec,
    distrusted: parking_lot::Mutex<Distrusted>,
}

impl OriginClient {
    /// `queue_len` uploads wait at most; `results` is `hangar_origin_uploads_total`.
    pub fn new(url: UpstreamUrl, queue_len: usize, results: IntCounterVec) -> Self {
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        OriginClient { url, queue: tx, receiver: Mutex::new(Some(rx)), results, distrusted: Default::default() }
    }

    /// Origin's copy of `key_path` failed verification: stop asking origin for it, and have
    /// the next verified upstream copy replace it.
    pub fn distrust(&self, repository: &str, key_path: &str, copy: Distrust) {
        let mut d = self.distrusted.lock();
        let key = (repository.to_string(), key_path.to_string());
        if d.map.insert(key.clone(), copy).is_none() {
            d.order.push_back(key);
        }
        while d.order.len() > DISTRUSTED_MAX {
            if let Some(old) = d.order.pop_front() {
                d.map.remove(&old);
            }
        }
    }

    /// Origin's copy of `key_path`, if this proxy found it corrupt.
    pub fn distrusted(&self, repository: &str, key_path: &str) -> Option<Distrust> {
        let d = self.distrusted.lock();
        d.map.get(&(repository.to_string(), key_path.to_string())).cloned()
    }

    /// Origin holds a good copy again.
    fn trust(&self, repository: &str, key_path: &str) {
        let mut d = self.distrusted.lock();
        let key = (repository.to_string(), key_path.to_string());
        if d.map.remove(&key).is_some() {
            d.order.retain(|k| k != &key);
        }
    }

    /// The request target that asks origin for `key_path` of `repository`.
    pub fn object_target(&self, repository: &str, key_path: &str) -> String {
        object_path(&self.url.base_path, repository, key_path)
    }

    /// Queue an upload; a full queue drops it (counted) rather than wait.
    pub fn enqueue(&self, job: UploadJob) {
        match self.queue.try_send(job) {
            Ok(()) => self.results.with_label_values(&["queued"]).inc(),
            Err(_) => self.results.with_label_values(&["dropped_queue_full"]).inc(),
        }
    }

    /// Run `workers` upload loops until the queue closes.
    pub async fn run(self: Arc<Self>, uploader: Uploader, workers: usize) {
        let Some(rx) = self.receiver.lock().await.take() else { return };
        let rx = Arc::new(Mutex::new(rx));
        let uploader = Arc::new(uploader);
        let mut handles = Vec::new();
        for _ in 0..workers.max(1) {
            let (me, rx, uploader) = (self.clone(), rx.clone(), uploader.clone());
            handles.push(tokio::spawn(async move {
                loop {
                    let job = { rx.lock().await.recv().await };
                    let Some(job) = job else { return };
                    me.deliver(&uploader, job).await;
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Upload one job, retrying with backoff while origin is unreachable or unavailable.
    async fn deliver(&self, uploader: &Uploader, job: UploadJob) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(UPLOAD_TIMEOUT, uploader.upload(self, &job)).await.unwrap_or_else(|_| Err(UploadError::Retry("upload timed out".into())));
            match attempt {
                Ok(status) => {
                    let label = match (status, job.replaces.is_some()) {
                        (200 | 201, true) => "replaced",
                        (201, false) => "stored",
                        (200, false) => "already_stored",
                        _ => "rejected",
                    };
                    // Replaced, or origin holds another copy by now (409): either way, what
                    // origin serves next is verified again when it is read.
                    if job.replaces.is_some() && (label == "replaced" || status == 409) {
                        self.trust(&job.repository, &job.key_path);
                    }
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
                Err(UploadError::Unsendable(why)) => {
                    tracing::warn!(repository = %job.repository, path = %job.key_path, error = %why, "cannot send this upload to origin");
                    self.results.with_label_values(&["rejected"]).inc();
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
}

/// What an upload needs besides the job: the client, this proxy's listener to read the
/// artefact back from, and the fleet key that signs that read.
pub struct Uploader {
    pub client: Arc<Client>,
    pub listen: SocketAddr,
    pub fleet: Arc<Fleet>,
}

enum UploadError {
    /// The artefact is no longer in the cache.
    NotCached,
    /// Origin or the proxy itself could not take it now: try again later.
    Retry(String),
    /// The request cannot be made at all (a path or header no HTTP request can carry).
    Unsendable(String),
}

impl From<ClientError> for UploadError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::BadTarget(_) | ClientError::BadHeader(_) => UploadError::Unsendable(e.to_string()),
            e => UploadError::Retry(e.to_string()),
        }
    }
}

/// The read-back is local and quick; the upload waits for origin to store the whole object
/// (to S3, multipart for large ones) before it answers.
fn upload_timeouts() -> (TimeoutConfig, TimeoutConfig) {
    let read_back = TimeoutConfig::default();
    let upload = TimeoutConfig { read: HumanDuration(UPLOAD_TIMEOUT), ..TimeoutConfig::default() };
    (read_back, upload)
}

impl Uploader {
    async fn upload(&self, origin: &OriginClient, job: &UploadJob) -> Result<u16, UploadError> {
        let (read_back, upload) = upload_timeouts();
        // Read the artefact back from the cache...
        let local = UpstreamUrl::http(self.listen);
        let read_headers = [
            (http::header::HOST, job.host.clone()),
            (http::header::ACCEPT_ENCODING, "identity".to_string()),
            (http::HeaderName::from_static(HOP_HEADER), self.fleet.sign(HopKind::Loopback, "GET", &job.proxy_target)),
        ];
        let read = Request { method: http::Method::GET, url: &local, target: &job.proxy_target, headers: &read_headers, timeouts: &read_back };
        let mut cached = self.client.open(&read).await?;
        match cached.head().status {
            http::StatusCode::OK => {}
            // Only a 504 says "not in cache" (the read may not fetch); other failures pass.
            http::StatusCode::GATEWAY_TIMEOUT => return Err(UploadError::NotCached),
            status if status.is_server_error() => return Err(UploadError::Retry(format!("reading it back answered {status}"))),
            _ => return Err(UploadError::NotCached),
        }
        let head = cached.head();
        let length = head.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        // ... and stream it to origin.
        let mut headers = Vec::new();
        if let Some(ct) = head.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            headers.push((http::header::CONTENT_TYPE, ct.to_string()));
        }
        if let Some(sha) = &job.sha256 {
            headers.push((http::HeaderName::from_static(SHA256_HEADER), sha.clone()));
        }
        let target = origin.object_target(&job.repository, &job.key_path);
        // Every upload carries the fleet's proof: a repair's names what it replaces.
        if let (Some(bad), Some(sha)) = (&job.replaces, &job.sha256) {
            headers.push((http::HeaderName::from_static(REPLACES_HEADER), bad.clone()));
            let signed = replacement_signed_target(&target, bad, sha);
            headers.push((http::HeaderName::from_static(HOP_HEADER), self.fleet.sign(HopKind::Replace, "PUT", &signed)));
        } else {
            headers.push((http::HeaderName::from_static(HOP_HEADER), self.fleet.sign(HopKind::Origin, "PUT", &target)));
        }
        let put = Request { method: http::Method::PUT, url: &origin.url, target: &target, headers: &headers, timeouts: &upload };
        let status = self.client.upload(&put, length, &mut cached).await?.head.status.as_u16();
        if status >= 500 {
            return Err(UploadError::Retry(format!("origin answered {status}")));
        }
        Ok(status)
    }
}

/// Hands origin every immutable artefact this proxy fetched from an upstream, cached and
/// verified (not what came from a peer or from origin itself).
pub struct OriginHandOff {
    origin: Arc<OriginClient>,
}

impl OriginHandOff {
    /// Queue uploads on `origin`.
    pub fn new(origin: Arc<OriginClient>) -> Self {
        OriginHandOff { origin }
    }
}

impl OutcomeSink for OriginHandOff {
    fn record(&self, o: &Outcome<'_>) {
        let (Some(repository), Some(key_path)) = (o.repository, o.key_path) else { return };
        let fetched_and_cached = o.status == 200 && o.result == CacheResult::Miss && o.stored && !o.failed && o.source == Source::Upstream && !o.unverified;
        if !fetched_and_cached || o.class != Some(PathClass::Immutable) || !(o.method == http::Method::GET || o.method == http::Method::HEAD) {
            return;
        }
        let digest = match o.digest {
            Some(d @ Digest::Sha256(_)) => Some(d.hex()),
            _ => None,
        };
        let (sha256, replaces) = match self.origin.distrusted(repository, key_path) {
            // Origin's blob rotted: only the bytes its sha256 names may replace it, and origin
            // checks these are (422 otherwise).
            Some(bad) if bad.rotten => match digest {
                Some(d) if d != bad.sha256 => (Some(d), None),
                _ => (Some(bad.sha256.clone()), Some(bad.sha256)),
            },
            // Origin names other bytes than the artefact's published digest: these, verified
            // against it, replace them.
            Some(bad) => match digest {
                Some(d) => (Some(d), Some(bad.sha256)),
                None => (None, None),
            },
            None => (digest, None),
        };
        self.origin.enqueue(UploadJob {
            repository: repository.to_string(),
            key_path: key_path.to_string(),
            proxy_target: o.target.to_string(),
            host: o.host.unwrap_or("localhost").to_string(),
            sha256,
            replaces,
        });
    }
}
