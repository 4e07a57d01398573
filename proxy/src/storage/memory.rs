//! The memory tier: small, hot objects as `Bytes`, bounded in bytes.
//!
//! TinyUFO (TinyLFU admission + S3-FIFO eviction) keeps one-hit wonders from flushing the hot
//! set, which plain LRU does on package-registry traces. Its weights are `u16`, so weights are
//! kept in KiB; object sizes are capped well below 64 MiB by config validation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tinyufo::TinyUfo;

use crate::metrics::Metrics;

pub struct MemoryObject {
    pub meta: (Vec<u8>, Vec<u8>),
    pub body: Bytes,
}

struct Slot {
    /// Full key, to tell apart two keys whose 64-bit hashes collide.
    key: Box<str>,
    obj: Arc<MemoryObject>,
}

pub struct MemoryTier {
    cache: Option<TinyUfo<u64, Arc<Slot>>>,
    bytes: AtomicU64,
    objects: AtomicU64,
    metrics: Arc<Metrics>,
}

fn slot_key(combined: &str) -> u64 {
    // `combined` is already a hex hash; its first 16 hex digits are a good 64-bit key.
    u64::from_str_radix(&combined[..16.min(combined.len())], 16).unwrap_or(0)
}

fn weight_kib(obj: &MemoryObject) -> u16 {
    let bytes = obj.body.len() + obj.meta.0.len() + obj.meta.1.len();
    bytes.div_ceil(1024).clamp(1, u16::MAX as usize) as u16
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

    pub fn get(&self, combined: &str) -> Option<Arc<MemoryObject>> {
        let slot = self.cache.as_ref()?.get(&slot_key(combined))?;
        (&*slot.key == combined).then(|| slot.obj.clone())
    }

    pub fn put(&self, combined: &str, obj: Arc<MemoryObject>) {
        let Some(cache) = self.cache.as_ref() else {
            return;
        };
        let weight = weight_kib(&obj);
        let size = (obj.body.len() + obj.meta.0.len() + obj.meta.1.len()) as u64;
        let k = slot_key(combined);
        // Replacing an existing object: account for the old one leaving.
        if let Some(old) = cache.remove(&k) {
            self.forget(&old);
        }
        let slot = Arc::new(Slot {
            key: combined.into(),
            obj,
        });
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        for evicted in cache.put(k, slot.clone(), weight) {
            self.forget(&evicted.data);
            // The admission filter may turn the newcomer away; that is not an eviction.
            if !Arc::ptr_eq(&evicted.data, &slot) {
                self.metrics.evictions.with_label_values(&["memory"]).inc();
            }
        }
    }

    fn forget(&self, slot: &Slot) {
        let size = (slot.obj.body.len() + slot.obj.meta.0.len() + slot.obj.meta.1.len()) as u64;
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn remove(&self, combined: &str) -> bool {
        let Some(cache) = self.cache.as_ref() else {
            return false;
        };
        let k = slot_key(combined);
        match cache.get(&k) {
            Some(slot) if &*slot.key == combined => {
                if let Some(old) = cache.remove(&k) {
                    self.forget(&old);
                }
                true
            }
            _ => false,
        }
    }

    /// Swap in new headers after a revalidation, keeping the body.
    pub fn update_meta(&self, combined: &str, meta: (Vec<u8>, Vec<u8>)) {
        if let Some(old) = self.get(combined) {
            self.put(
                combined,
                Arc::new(MemoryObject {
                    meta,
                    body: old.body.clone(),
                }),
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
