//! Disk-tier eviction: pingora's sharded LRU, weighted by real object size, made persistent.
//!
//! Pingora admits each finished fill with the size the miss handler reports and purges what the
//! LRU pushes out, but it never calls `save`/`load`. [`DiskEviction::restore`] loads the saved
//! order at startup and then admits any entry found on disk that the saved state does not know
//! (written after the last save), so the LRU covers exactly what is on disk plus, at worst,
//! entries removed after the last save, whose weight is released when the LRU reaches them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::CompactCacheKey;
use pingora::cache::{CacheEntryKey, CacheEntryKeyRef};
use pingora::Result;

/// One shard keeps the order exact: pingora's sharded LRU evicts from a randomly chosen shard
/// (power of two choices), which only approximates LRU until shards hold many entries each.
/// The single shard's lock is held for a pointer swap per hit; with the default single worker
/// thread there is nobody to contend with.
const SHARDS: usize = 1;

pub struct DiskEviction {
    lru: Manager<SHARDS>,
    state_dir: PathBuf,
}

impl DiskEviction {
    pub fn new(limit_bytes: u64, state_dir: &Path) -> Self {
        DiskEviction {
            lru: Manager::with_capacity(limit_bytes as usize, 8192),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Load the saved order and reconcile it with the entries found on disk. Returns entries
    /// that no longer fit the budget (it may have shrunk) for the caller to purge.
    pub async fn restore(&self, on_disk: Vec<(CompactCacheKey, usize)>) -> Vec<CacheEntryKey> {
        if let Err(e) = self.lru.load(&self.state_dir.to_string_lossy()).await {
            tracing::warn!(error = %e, "could not load saved eviction state; rebuilding from disk");
        }
        let now = SystemTime::now();
        let mut evicted = Vec::new();
        for (key, size) in on_disk {
            let entry = CacheEntryKey::key_only(key);
            if !self.lru.peek(&entry) {
                evicted.extend(self.lru.admit(entry, size, now));
            }
        }
        evicted
    }

    pub async fn persist(&self) {
        match self.lru.save(&self.state_dir.to_string_lossy()).await {
            Ok(()) => tracing::debug!(dir = %self.state_dir.display(), "saved eviction state"),
            Err(e) => tracing::warn!(error = %e, "could not save eviction state"),
        }
    }
}

#[async_trait]
impl EvictionManager for DiskEviction {
    fn total_size(&self) -> usize {
        self.lru.total_size()
    }
    fn total_items(&self) -> usize {
        self.lru.total_items()
    }
    fn evicted_size(&self) -> usize {
        self.lru.evicted_size()
    }
    fn evicted_items(&self) -> usize {
        self.lru.evicted_items()
    }
    fn admit(&self, item: CacheEntryKey, size: usize, fresh_until: SystemTime) -> Vec<CacheEntryKey> {
        self.lru.admit(item, size, fresh_until)
    }
    fn increment_weight(
        &self,
        item: &CacheEntryKey,
        delta: usize,
        max_weight: Option<usize>,
    ) -> Vec<CacheEntryKey> {
        self.lru.increment_weight(item, delta, max_weight)
    }
    fn remove(&self, item: CacheEntryKeyRef<'_>) {
        self.lru.remove(item)
    }
    fn access(&self, item: &CacheEntryKey, size: usize, fresh_until: SystemTime) -> bool {
        self.lru.access(item, size, fresh_until)
    }
    fn peek(&self, item: &CacheEntryKey) -> bool {
        self.lru.peek(item)
    }
    async fn save(&self, dir_path: &str) -> Result<()> {
        self.lru.save(dir_path).await
    }
    async fn load(&self, dir_path: &str) -> Result<()> {
        self.lru.load(dir_path).await
    }
}
