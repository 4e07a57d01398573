//! The memory tier: small, hot objects as `Bytes`, bounded in bytes.
//!
//! TinyUFO (TinyLFU admission + S3-FIFO eviction) keeps one-hit wonders from flushing the hot
//! set, which plain LRU does on package-registry traces. Its weights are `u16`, so weights are
//! kept in KiB; object sizes are capped well below 64 MiB by config validation.
//!
//! Objects keep their metadata *parsed* ([`MetaTemplate`]): rebuilding pingora's `CacheMeta`
//! from it costs a header clone, where deserializing the stored form costs a zstd
//! decompression per hit (the largest single item in the hit-path profile).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use tinyufo::TinyUfo;

use crate::metrics::Metrics;

/// Everything needed to rebuild an equivalent `CacheMeta` without deserializing.
pub struct MetaTemplate {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch: Option<SystemTime>,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl MetaTemplate {
    pub fn from_meta(m: &CacheMeta) -> Self {
        let epoch = m.epoch_override().or((m.updated() != m.created()).then(|| m.updated()));
        MetaTemplate {
            fresh_until: m.fresh_until(),
            created: m.created(),
            epoch,
            stale_while_revalidate_sec: m.stale_while_revalidate_sec(),
            stale_if_error_sec: m.stale_if_error_sec(),
            variance: m.variance(),
            header: m.response_header_copy(),
        }
    }

    pub fn to_meta(&self) -> CacheMeta {
        let mut m = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            self.header.clone(),
        );
        if let Some(e) = self.epoch {
            m.set_epoch_override(e);
        }
        if let Some(v) = self.variance {
            m.set_variance(v);
        }
        m
    }

    /// The stored response head (status and fields, as the upstream sent them).
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// Until when the response is fresh (RFC 9111 §4.2).
    pub fn fresh_until(&self) -> SystemTime {
        self.fresh_until
    }

    /// What `Age` counts from: the last time the stored response was known current (its
    /// storing, or its last revalidation), as pingora's `CacheMeta::epoch`.
    pub fn epoch(&self) -> SystemTime {
        self.epoch.unwrap_or(self.created)
    }

    /// The variant this response is stored as, when the upstream's `Vary` applies.
    pub fn variance(&self) -> Option<HashBinary> {
        self.variance
    }

    fn approx_size(&self) -> usize {
        self.header.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum::<usize>() + 128
    }
}

pub struct MemoryObject {
    pub meta: MetaTemplate,
    pub body: Bytes,
    /// The response head as a hit serves it, made once by whoever serves hits from memory
    /// (`request::fast_hit`): each hit then clones a finished head instead of rebuilding it.
    pub served_head: std::sync::OnceLock<ResponseHeader>,
}

impl MemoryObject {
    pub fn new(meta: MetaTemplate, body: Bytes) -> Self {
        MemoryObject { meta, body, served_head: std::sync::OnceLock::new() }
    }

    /// Bytes it holds: the body, and its head about twice (stored and as served).
    fn size(&self) -> u64 {
        (self.body.len() + 2 * self.meta.approx_size()) as u64
    }
}

struct Slot {
    /// Full key, to tell apart two keys whose 64-bit prefixes collide.
    key: HashBinary,
    obj: Arc<MemoryObject>,
}

pub struct MemoryTier {
    cache: Option<TinyUfo<u64, Arc<Slot>>>,
    bytes: AtomicU64,
    objects: AtomicU64,
    metrics: Arc<Metrics>,
}

fn slot_key(key: &HashBinary) -> u64 {
    u64::from_le_bytes(key[..8].try_into().expect("16-byte hash"))
}

fn weight_kib(size: u64) -> u16 {
    size.div_ceil(1024).clamp(1, u16::MAX as u64) as u16
}

impl MemoryTier {
    pub fn new(budget_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let kib = (budget_bytes / 1024) as usize;
        let cache = (kib > 0).then(|| TinyUfo::new(kib, (kib / 8).max(64)));
        MemoryTier {
            cache,
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn get(&self, key: &HashBinary) -> Option<Arc<MemoryObject>> {
        let slot = self.cache.as_ref()?.get(&slot_key(key))?;
        (slot.key == *key).then(|| slot.obj.clone())
    }

    pub fn put(&self, key: &HashBinary, obj: Arc<MemoryObject>) {
        let Some(cache) = self.cache.as_ref() else {
            return;
        };
        let size = obj.size();
        let k = slot_key(key);
        // Replacing an existing object: account for the old one leaving.
        if let Some(old) = cache.remove(&k) {
            self.forget(&old);
        }
        let slot = Arc::new(Slot { key: *key, obj });
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        for evicted in cache.put(k, slot.clone(), weight_kib(size)) {
            self.forget(&evicted.data);
            // The admission filter may turn the newcomer away; that is not an eviction.
            if !Arc::ptr_eq(&evicted.data, &slot) {
                self.metrics.evictions.with_label_values(&["memory"]).inc();
            }
        }
    }

    fn forget(&self, slot: &Slot) {
        self.bytes.fetch_sub(slot.obj.size(), Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn remove(&self, key: &HashBinary) -> bool {
        let Some(cache) = self.cache.as_ref() else {
            return false;
        };
        let k = slot_key(key);
        match cache.get(&k) {
            Some(slot) if slot.key == *key => {
                if let Some(old) = cache.remove(&k) {
                    self.forget(&old);
                }
                true
            }
            _ => false,
        }
    }

    /// Swap in new headers after a revalidation, keeping the body.
    pub fn update_meta(&self, key: &HashBinary, meta: &CacheMeta) {
        if let Some(old) = self.get(key) {
            self.put(
                key,
                Arc::new(MemoryObject::new(MetaTemplate::from_meta(meta), old.body.clone())),
            );
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }
}
