//! What a region's proxies share: membership, an index of the objects they hold, negative
//! cache entries and upstream breaker state.
//!
//! One small trait with two implementations: in-process (the default: a proxy alone needs no
//! Redis) and Redis (a fleet). The request path never waits on it: writes go through a
//! bounded queue to one writer task and are dropped (and counted) when the queue is full or
//! the store is down; reads that routing needs (membership) are refreshed in the background.

mod memory;
mod redis;

pub use memory::MemoryMetadata;
pub use redis::RedisMetadata;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store timed out")]
    Timeout,
}

/// One proxy of the fleet, as peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// `ip:port` of its proxy listener.
    pub addr: String,
}

/// What is known about one cached object, fleet-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// A 404 remembered for `ttl`.
    Negative { repository: String, key: String, ttl: Duration },
    /// A repository's upstream breaker changed state (0 closed, 1 open, 2 half-open).
    Breaker { repository: String, state: u8, ttl: Duration },
}

#[async_trait]
pub trait Metadata: Send + Sync {
    /// Announce `me` as live for `ttl`; returns every live member, `me` included.
    async fn heartbeat(&self, me: &Member, ttl: Duration) -> Result<Vec<Member>, MetadataError>;
    /// Leave the fleet at once (graceful shutdown).
    async fn leave(&self, me: &Member) -> Result<(), MetadataError>;
    async fn apply(&self, write: &MetadataWrite) -> Result<(), MetadataError>;
    async fn object(&self, repository: &str, key: &str) -> Result<Option<ObjectInfo>, MetadataError>;
    async fn is_negative(&self, repository: &str, key: &str) -> Result<bool, MetadataError>;
    async fn breaker(&self, repository: &str) -> Result<Option<u8>, MetadataError>;
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

    pub fn write(&self, w: MetadataWrite) {
        if self.queue.try_send(w).is_err() {
            self.results.with_label_values(&["dropped_queue_full"]).inc();
        }
    }
}

/// Rendezvous (highest-random-weight) order of `members` for `key`: the first owns it,
/// the rest are its successors. Adding or losing a member moves only the keys it owned.
pub fn owners<'a>(members: &'a [Member], key: &[u8]) -> Vec<&'a Member> {
    let mut scored: Vec<(u64, &Member)> = members
        .iter()
        .map(|m| {
            let mut h = blake3::Hasher::new();
            h.update(m.addr.as_bytes());
            h.update(&[0]);
            h.update(key);
            let mut score = [0u8; 8];
            score.copy_from_slice(&h.finalize().as_bytes()[..8]);
            (u64::from_le_bytes(score), m)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(a: &str) -> Member {
        Member { addr: a.into() }
    }

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_a_lost_members_keys() {
        let all = vec![m("a:1"), m("b:1"), m("c:1")];
        let mut owned = std::collections::HashMap::new();
        for i in 0..3000 {
            let key = format!("k{i}");
            *owned.entry(owners(&all, key.as_bytes())[0].addr.clone()).or_insert(0) += 1;
        }
        assert!(owned.values().all(|&n| n > 800), "{owned:?}");
        let without_b = vec![m("a:1"), m("c:1")];
        for i in 0..3000 {
            let key = format!("k{i}");
            let before = owners(&all, key.as_bytes());
            let after = owners(&without_b, key.as_bytes());
            if before[0].addr != "b:1" {
                assert_eq!(before[0], after[0], "a key whose owner stayed does not move");
            } else {
                assert_eq!(before[1], after[0], "a lost owner's keys go to their next owner");
            }
        }
    }
}
