//! Two-tier cache storage behind pingora-cache's [`Storage`] trait.
//!
//! * [`memory::MemoryTier`]: small hot objects, TinyUFO admission (TinyLFU + S3-FIFO), served
//!   as zero-copy `Bytes`.
//! * [`disk::DiskTier`]: every object, one meta file plus one body file per entry under a
//!   directory named by the hash of the cache key. Bodies stream to a temp file and become
//!   visible only by an atomic rename of the meta file after the body is complete (and, by
//!   default, fsynced).
//! * [`inflight`]: writes in progress. Readers that arrive during a fill stream from the temp
//!   file as it grows (pingora's "streaming partial write"), and see an *error*, never a clean
//!   end of body, if the fill is abandoned.
//!
//! Eviction of the disk tier is pingora's sharded LRU ([`eviction::DiskEviction`]), weighted by
//! real object size and saved/restored across restarts by Hangar (pingora never calls
//! save/load itself). The memory tier evicts on its own; dropping an object from memory never
//! drops it from disk.

/// The `Any` casts every Hangar hit handler implements the same way. (`finish` stays in each
/// impl: `async_trait` rewrites async fns before a macro in the impl block would expand.)
macro_rules! hit_handler_plumbing {
    () => {
        fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
            self
        }

        fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
            self
        }
    };
}

pub mod disk;
mod fill;
pub mod eviction;
mod hit;
mod inflight;
mod read;
mod write;
pub mod memory;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::{Error, ErrorType, Result};

use crate::metrics::Metrics;
use disk::DiskTier;
use hit::{DiskHit, MemoryHit};
use inflight::InflightWrites;
use memory::{MemoryObject, MemoryTier, MetaTemplate};

/// Sizes of the two tiers.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub memory_bytes: u64,
    pub memory_max_object_bytes: u64,
    pub disk_bytes: u64,
    pub fsync: bool,
    pub min_free_disk_bytes: u64,
}

/// Disk reserved for a fill at a time when its length is unknown (or exceeded).
const RESERVE_STEP: u64 = 4 << 20;

/// Errors of the storage layer, converted to pingora errors at the trait boundary.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cache dir {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache entry {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("fill of {key} was abandoned after {written} bytes")]
    Abandoned { key: String, written: u64 },
    #[error("fill of {key} not stored: the cache filesystem is full ({written} bytes passed through)")]
    Spilled { key: String, written: u64 },
    #[error("fill of {key} ended at {written} bytes, expected {expected}")]
    Truncated { key: String, written: u64, expected: u64 },
}

impl StorageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub(crate) fn to_pingora(e: StorageError) -> Box<Error> {
    Error::explain(ErrorType::InternalError, e.to_string())
}

/// The cache storage shared by every request of one proxy process.
pub struct TieredStorage {
    disk: DiskTier,
    memory: MemoryTier,
    inflight: InflightWrites,
    memory_max_object: u64,
    metrics: Arc<Metrics>,
    /// Vary variants stored per URL (primary key hash), so invalidating a URL removes them
    /// without walking the disk. Only entries with a variance are listed.
    variants: parking_lot::Mutex<std::collections::HashMap<HashBinary, Vec<CompactCacheKey>>>,
}

impl TieredStorage {
    /// Open (or create) the disk tier under `dir`, discarding partial writes of a previous
    /// process. Returns the storage and every complete entry found, for eviction to track.
    pub fn open(
        dir: &Path,
        opts: &StorageOptions,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<(Self, Vec<(CompactCacheKey, usize)>), StorageError> {
        let (disk, entries) = DiskTier::open(dir, opts.fsync, opts.min_free_disk_bytes)?;
        let storage = TieredStorage {
            disk,
            memory: MemoryTier::new(opts.memory_bytes, metrics.clone()),
            inflight: InflightWrites::default(),
            memory_max_object: opts.memory_max_object_bytes,
            metrics,
            variants: Default::default(),
        };
        for (key, _) in &entries {
            storage.note_variant(key);
        }
        Ok((storage, entries))
    }

    /// The fill in progress for `key` (a combined cache key hash), if any: bytes written so
    /// far, and the whole length its response states (`Content-Length`), when it states one.
    pub fn fill_progress(&self, key: &HashBinary) -> Option<(u64, Option<u64>)> {
        let write = self.inflight.latest(key)?;
        let written = write.writing()?;
        let meta = write.cache_meta().ok()?;
        let len = meta.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        Some((written, len))
    }

    pub fn disk(&self) -> &DiskTier {
        &self.disk
    }

    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The complete object the memory tier holds for `key` (its combined hash), unless a
    /// fill of that key is under way: then the fill is what a lookup answers with (see
    /// `lookup`), and the caller must go through it.
    pub fn in_memory(&self, key: &HashBinary) -> Option<Arc<MemoryObject>> {
        if self.inflight.latest(key).is_some() {
            return None;
        }
        self.memory.get(key)
    }

    fn note_variant(&self, key: &CompactCacheKey) {
        if key.variance.is_some() {
            let mut v = self.variants.lock();
            let list = v.entry(key.primary).or_default();
            if !list.contains(key) {
                list.push(key.clone());
            }
        }
    }

    fn forget_variant(&self, key: &CompactCacheKey) {
        if key.variance.is_some() {
            let mut v = self.variants.lock();
            if let Some(list) = v.get_mut(&key.primary) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    v.remove(&key.primary);
                }
            }
        }
    }

    /// Remove one stored entry (an eviction decided outside pingora's own flow).
    pub fn remove(&self, key: &CompactCacheKey) -> bool {
        let removed = self.remove_key(key);
        if removed {
            self.metrics.evictions.with_label_values(&["disk"]).inc();
        }
        removed
    }

    fn remove_key(&self, key: &CompactCacheKey) -> bool {
        self.forget_variant(key);
        self.remove_entry(&key.combined_bin())
    }

    /// Remove every stored variant of one URL: the entry without variance and the ones listed
    /// for `url` (a key without variance). Cost: the URL's variants, not the cache's size.
    /// Returns the removed keys for the eviction manager to forget.
    pub fn purge_url(&self, url: &CompactCacheKey) -> Vec<CompactCacheKey> {
        let mut keys = self.variants.lock().get(&url.primary).cloned().unwrap_or_default();
        keys.push(CompactCacheKey { variance: None, ..url.clone() });
        keys.into_iter().filter(|k| self.remove_key(k)).collect()
    }

    /// Remove every committed entry whose primary key starts with `prefix`, by walking the
    /// disk tier's meta files (an admin operation); returns the removed keys.
    pub fn purge_prefix(&self, prefix: &[u8]) -> Vec<CompactCacheKey> {
        self.disk.matching(prefix).into_iter().map(|(_, k)| k).filter(|k| self.remove_key(k)).collect()
    }

    fn remove_entry(&self, key: &HashBinary) -> bool {
        let in_memory = self.memory.remove(key);
        let on_disk = self.disk.remove(&hex::encode(key));
        in_memory || on_disk
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let bin = key.combined_bin();
        // A fill in progress wins over a stored copy: otherwise an expired entry being refreshed
        // would keep being served until the refresh completes.
        if let Some(write) = self.inflight.latest(&bin) {
            let meta = write.cache_meta()?;
            return Ok(Some((meta, Box::new(write.reader()))));
        }
        if let Some(obj) = self.memory.get(&bin) {
            return Ok(Some((obj.meta.to_meta(), Box::new(MemoryHit::new(obj.body.clone())))));
        }
        let combined = hex::encode(bin);
        let Some((header, file)) = self.disk.lookup(&combined).map_err(to_pingora)? else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&header.meta.0, &header.meta.1)?;
        if header.body_len <= self.memory_max_object {
            // Promote: read the small body once, then serve it (and later hits) from memory.
            let body = disk::read_all(&file, header.body_len, &combined).map_err(to_pingora)?;
            let body = Bytes::from(body);
            self.memory.put(
                &bin,
                Arc::new(MemoryObject::new(MetaTemplate::from_meta(&meta), body.clone())),
            );
            return Ok(Some((meta, Box::new(MemoryHit::new(body)))));
        }
        Ok(Some((meta, Box::new(DiskHit::new(file, header.body_len)))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        let id = u64::from_be_bytes(tag.try_into().map_err(|_| {
            Error::explain(ErrorType::InternalError, "malformed streaming write tag")
        })?);
        match self.inflight.by_id(id) {
            Some(write) => Ok(Some((write.cache_meta()?, Box::new(write.reader())))),
            None => Ok(None),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let bin = key.combined_bin();
        let meta_bytes = meta.serialize()?;
        let expected_len = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // The announced length is reserved up front; a fill that cannot have it is not started
        // (pingora then serves the response uncached).
        let reserve = expected_len.unwrap_or(RESERVE_STEP);
        if !self.disk.reserve(reserve) {
            self.metrics.cache_skipped.with_label_values(&[key.user_tag(), "disk_full"]).inc();
            return Err(to_pingora(StorageError::Spilled { key: hex::encode(bin), written: 0 }));
        }
        let (file, tmp_path) = match self.disk.create_temp() {
            Ok(created) => created,
            Err(e) => {
                self.disk.release(reserve);
                self.disk.note_write_error(&e);
                return Err(to_pingora(e));
            }
        };
        let write = self.inflight.insert(bin, meta_bytes, file, tmp_path);
        Ok(Box::new(fill::TieredMissHandler {
            storage: self,
            write,
            compact: key.to_compact(),
            primary: key.primary_key().to_vec(),
            written: 0,
            expected_len,
            reserved: reserve,
            reserved_to: reserve,
            spilled: false,
            memory_chunks: (self.memory_max_object > 0).then(Vec::new),
            template: Some(MetaTemplate::from_meta(meta)),
            finished: false,
            pending: None,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let removed = self.remove_key(target.key());
        if removed && matches!(purge_type, PurgeType::Eviction) {
            self.metrics.evictions.with_label_values(&["disk"]).inc();
        }
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let bin = key.combined_bin();
        let meta_bytes = meta.serialize()?;
        // A revalidated entry's new headers are written (and fsynced) off the worker thread.
        let disk_key = hex::encode(bin);
        let updated = tokio::task::spawn_blocking(move || self.disk.update_meta(&disk_key, &meta_bytes))
            .await
            .map_err(|e| Error::explain(ErrorType::InternalError, format!("updating cached headers: {e}")))?
            .map_err(to_pingora)?;
        self.memory.update_meta(&bin, meta);
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    //! The storage contract on a real directory: visibility only on commit, errors for readers of
    //! abandoned fills, survival across reopen.

    use super::*;
    use pingora::cache::storage::HandleHit;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn storage(dir: &Path) -> &'static TieredStorage {
        let opts = StorageOptions {
            memory_bytes: 1 << 20,
            memory_max_object_bytes: 64 << 10,
            disk_bytes: 1 << 30,
            fsync: false,
            min_free_disk_bytes: 0,
        };
        Box::leak(Box::new(TieredStorage::open(dir, &opts, Arc::new(Metrics::new())).unwrap().0))
    }

    fn meta(len: Option<usize>) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        if let Some(len) = len {
            h.insert_header("content-length", len.to_string()).unwrap();
        }
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    /// A hit handler's whole body (or its first error).
    pub(super) async fn read_all(hit: &mut (dyn HandleHit + Send + Sync)) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_reader_of_an_abandoned_fill_gets_an_error_not_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        let span = Span::inactive().handle();
        let key = CacheKey::new("k1", "t");
        let mut miss = s.get_miss_handler(&key, &meta(None), &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"partial"), false).await.unwrap();
        let (_, mut reader) = s.lookup(&key, &span).await.unwrap().expect("fill in progress is visible to readers");
        assert_eq!(&reader.read_body().await.unwrap().unwrap()[..], b"partial");
        drop(miss); // abandoned: e.g. the upstream connection died
        assert!(reader.read_body().await.is_err(), "an abandoned fill must fail its readers");
        assert!(s.lookup(&key, &span).await.unwrap().is_none(), "nothing was stored");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_fill_shorter_than_its_content_length_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        let span = Span::inactive().handle();
        let key = CacheKey::new("k2", "t");
        let mut miss = s.get_miss_handler(&key, &meta(Some(10)), &span).await.unwrap();
        let (_, mut reader) = s.lookup(&key, &span).await.unwrap().unwrap();
        miss.write_body(Bytes::from_static(b"12345"), true).await.unwrap();
        assert!(miss.finish().await.is_err());
        assert!(read_all(&mut *reader).await.is_err());
        assert!(s.lookup(&key, &span).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn committed_entries_survive_reopen_and_torn_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let span = Span::inactive().handle();
        let big = vec![7u8; 200 << 10]; // over the memory limit: disk only
        {
            let s = storage(dir.path());
            for (k, body) in [("small", &b"tiny"[..]), ("big", &big[..])] {
                let key = CacheKey::new(k, "t");
                let mut miss = s.get_miss_handler(&key, &meta(Some(body.len())), &span).await.unwrap();
                miss.write_body(Bytes::copy_from_slice(body), true).await.unwrap();
                miss.finish().await.unwrap();
            }
            // A fill in progress when the process "dies".
            let mut miss = s.get_miss_handler(&CacheKey::new("torn", "t"), &meta(Some(100)), &span).await.unwrap();
            miss.write_body(Bytes::from_static(b"half"), false).await.unwrap();
            std::mem::forget(miss);
        }
        let s = storage(dir.path());
        let big_key = CacheKey::new("big", "t");
        assert_eq!(s.purge_prefix(b"sm").len(), 1, "purge by prefix of the primary key");
        assert!(s.lookup(&CacheKey::new("small", "t"), &span).await.unwrap().is_none());
        let (_, mut hit) = s.lookup(&big_key, &span).await.unwrap().expect("big survives reopen");
        assert_eq!(read_all(&mut *hit).await.unwrap(), big);
        assert!(s.lookup(&CacheKey::new("torn", "t"), &span).await.unwrap().is_none());

        // Cut the big entry's body on disk: it must be discarded, not served.
        let combined = big_key.combined();
        let body = std::fs::read_dir(dir.path().join("objects").join(&combined[..2]))
            .unwrap()
            .flatten()
            .find(|f| f.file_name().to_string_lossy().ends_with(".body"))
            .unwrap()
            .path();
        std::fs::OpenOptions::new().write(true).open(&body).unwrap().set_len(10).unwrap();
        let s = storage(dir.path());
        assert!(s.lookup(&big_key, &span).await.unwrap().is_none(), "a body of the wrong length is never served");
    }

    #[tokio::test]
    async fn purging_a_url_drops_all_its_variants_including_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let span = Span::inactive().handle();
        let variant = |url: &str, v: Option<u8>| {
            let mut k = CacheKey::new(url, "t");
            if let Some(v) = v {
                k.set_variance_key([v; 16]);
            }
            k
        };
        {
            let s = storage(dir.path());
            for key in [variant("u", None), variant("u", Some(1)), variant("u", Some(2)), variant("other", Some(1))] {
                let mut miss = s.get_miss_handler(&key, &meta(Some(1)), &span).await.unwrap();
                miss.write_body(Bytes::from_static(b"x"), true).await.unwrap();
                miss.finish().await.unwrap();
            }
            // An evicted variant is forgotten by the index.
            let evicted = variant("u", Some(2)).to_compact();
            s.purge(PurgeTarget::Active(&evicted), PurgeType::Eviction, &span).await.unwrap();
        }
        let s = storage(dir.path());
        let purged = s.purge_url(&variant("u", None).to_compact());
        assert_eq!(purged.len(), 2, "the plain entry and the remaining variant");
        for v in [None, Some(1), Some(2)] {
            assert!(s.lookup(&variant("u", v), &span).await.unwrap().is_none());
        }
        assert!(s.lookup(&variant("other", Some(1)), &span).await.unwrap().is_some(), "other URLs untouched");
        assert!(s.variants.lock().get(&variant("u", None).to_compact().primary).is_none());
    }

    #[tokio::test]
    async fn range_reads_seek_on_both_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        let span = Span::inactive().handle();
        for (k, len) in [("mem", 1000usize), ("disk", 300 << 10)] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let key = CacheKey::new(k, "t");
            let mut miss = s.get_miss_handler(&key, &meta(Some(len)), &span).await.unwrap();
            miss.write_body(Bytes::from(body.clone()), true).await.unwrap();
            miss.finish().await.unwrap();
            let (_, mut hit) = s.lookup(&key, &span).await.unwrap().unwrap();
            assert!(hit.can_seek());
            hit.seek(100, Some(200)).unwrap();
            assert_eq!(read_all(&mut *hit).await.unwrap(), &body[100..200]);
            hit.seek(len - 3, None).unwrap();
            assert_eq!(read_all(&mut *hit).await.unwrap(), &body[len - 3..]);
            assert!(hit.seek(len, None).is_err());
        }
    }
}
