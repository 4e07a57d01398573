//! What a region's proxies share about the objects they hold: an index of which proxy stores
//! what, with sizes, digests, last access and hits by region (what tiering, the UI and "where
//! is this sha256" read).
//!
//! One small trait with two implementations: in-process (the default: a proxy alone needs no
//! Redis) and Redis (a fleet; it also keeps the fleet's membership). The request path never
//! waits on it: the [`MetadataSink`] turns each request's outcome into at most one write, queued
//! for one writer task, and dropped (and counted) when the queue is full or the store is down.

mod memory;
mod redis;

pub use memory::MemoryMetadata;
pub use redis::RedisMetadata;

use std::sync::Arc;

use async_trait::async_trait;
use hangar_core::{CacheResult, Tier};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;

use crate::outcome::{Outcome, OutcomeSink};

/// Why the metadata store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store timed out")]
    Timeout,
}

/// What is known about one cached object, fleet-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub size: u64,
    pub digest: Option<String>,
    /// Tiers holding it (`disk:<member>`, `origin`).
    pub tiers: Vec<String>,
    /// Unix seconds of the last access anywhere.
    pub last_access: u64,
    /// Hits by region.
    pub hits: Vec<(String, u64)>,
}

/// A change to shared metadata, queued by the request path.
#[derive(Debug, Clone)]
pub enum MetadataWrite {
    /// An object was stored in a tier.
    Stored { repository: String, key: String, size: u64, digest: Option<String>, tier: String },
    /// A hit in a region.
    Hit { repository: String, key: String, region: String },
}

/// A store of [`ObjectInfo`] by repository and cache key path.
///
/// Called from one writer task ([`MetadataWriter`]) and from readers off the request path;
/// every call should answer within a second (Redis calls have a 500 ms deadline). The index is
/// advisory: an implementation may forget entries (by age or to stay bounded).
#[async_trait]
pub trait Metadata: Send + Sync {
    /// Apply one change; an error drops it (the writer counts it).
    async fn apply(&self, write: &MetadataWrite) -> Result<(), MetadataError>;
    /// What is known about `key` in `repository`, if anything.
    async fn object(&self, repository: &str, key: &str) -> Result<Option<ObjectInfo>, MetadataError>;
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The request path's handle: queue a write without waiting.
#[derive(Clone)]
pub struct MetadataWriter {
    queue: mpsc::Sender<MetadataWrite>,
    results: IntCounterVec,
}

impl MetadataWriter {
    /// A writer whose queue holds `capacity` writes, applied to `store` by one task.
    pub fn spawn(store: Arc<dyn Metadata>, capacity: usize, results: IntCounterVec) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<MetadataWrite>(capacity.max(1));
        let r = results.clone();
        let task = async move {
            while let Some(w) = rx.recv().await {
                match store.apply(&w).await {
                    Ok(()) => r.with_label_values(&["written"]).inc(),
                    Err(e) => {
                        r.with_label_values(&["dropped_store_error"]).inc();
                        tracing::debug!(error = %e, "metadata write dropped");
                    }
                }
            }
        };
        (MetadataWriter { queue: tx, results }, task)
    }

    /// Queue `w`; a full queue drops it (counted as `dropped_queue_full`), never waits.
    pub fn write(&self, w: MetadataWrite) {
        if self.queue.try_send(w).is_err() {
            self.results.with_label_values(&["dropped_queue_full"]).inc();
        }
    }
}

/// The request path's side of the index: an object stored here (`Stored`, with this proxy's
/// disk tier), and, when the index is shared, each hit (`Hit`, by region).
pub struct MetadataSink {
    writer: MetadataWriter,
    /// `disk:<this proxy's address>`.
    tier: String,
    region: String,
    shared: bool,
}

impl MetadataSink {
    /// `member` is this proxy's address as peers reach it; hits are written only when `shared`
    /// (alone, nobody reads hit counts).
    pub fn new(writer: MetadataWriter, member: &str, region: &str, shared: bool) -> Self {
        MetadataSink { writer, tier: format!("{}:{member}", Tier::Disk.as_str()), region: region.to_string(), shared }
    }
}

impl OutcomeSink for MetadataSink {
    fn record(&self, o: &Outcome<'_>) {
        let (Some(repository), Some(key)) = (o.repository, o.key_path) else { return };
        let write = match (o.result, o.status) {
            (CacheResult::Miss, 200) if o.stored => MetadataWrite::Stored {
                repository: repository.to_string(),
                key: key.to_string(),
                size: o.content_length.unwrap_or(o.bytes_served),
                digest: o.digest.map(|d| d.to_string()),
                tier: self.tier.clone(),
            },
            (CacheResult::Hit, _) if self.shared => MetadataWrite::Hit { repository: repository.to_string(), key: key.to_string(), region: self.region.clone() },
            _ => return,
        };
        self.writer.write(write);
    }
}
