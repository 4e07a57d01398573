//! One fill: the miss handler that streams a response into the disk tier (and the memory
//! tier, when small), reserving disk room as it grows, and commits it on `finish`. When the
//! disk cannot take more, the fill spills (see `inflight`): its readers get every byte, nothing
//! is stored, and the spill is counted.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::CompactCacheKey;
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::Result;

use super::disk::EntryHeader;
use super::inflight::{self, InflightWrite};
use super::memory::{MemoryObject, MetaTemplate};
use super::{to_pingora, StorageError, TieredStorage, RESERVE_STEP};

/// Streams one fill to its temp file and commits it on `finish`.
pub(super) struct TieredMissHandler {
    pub(super) storage: &'static TieredStorage,
    pub(super) write: Arc<InflightWrite>,
    pub(super) compact: CompactCacheKey,
    pub(super) primary: Vec<u8>,
    pub(super) written: u64,
    pub(super) expected_len: Option<u64>,
    /// Bytes reserved on the disk for this fill and not yet released.
    pub(super) reserved: u64,
    /// How far the reservation reaches (bytes of body it covers).
    pub(super) reserved_to: u64,
    /// The disk could not take the rest: the fill goes on for its readers, unstored.
    pub(super) spilled: bool,
    /// The body's chunks while it is still small enough for the memory tier (refcounted, not
    /// copied); dropped as soon as it outgrows it.
    pub(super) memory_chunks: Option<Vec<Bytes>>,
    /// Parsed metadata for the memory tier, if the body ends up small enough for it.
    pub(super) template: Option<MetaTemplate>,
    pub(super) finished: bool,
    /// The last chunk's write, when it went on to the blocking pool, and its length.
    pub(super) pending: Option<(super::write::PendingWrite, u64)>,
}

#[async_trait]
impl HandleMiss for TieredMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = self.written + data.len() as u64;
        // A body longer than announced (or announced by nobody) reserves as it grows.
        if !self.spilled && end > self.reserved_to {
            let step = (end - self.reserved_to).max(RESERVE_STEP);
            if self.storage.disk.reserve(step) {
                self.reserved += step;
                self.reserved_to += step;
            } else {
                self.spill("no room left on the cache filesystem");
            }
        }
        // One chunk's write at most is under way: the one before this must have landed (or
        // failed) before this one starts, so a slow disk slows the fill, not memory use.
        self.settle_write().await;
        if !self.spilled {
            match self.write.append(self.written, &data) {
                Ok(None) => self.written_to_file(data.len() as u64),
                Ok(Some(pending)) => self.pending = Some((pending, data.len() as u64)),
                Err(e) => {
                    self.storage.disk.note_write_error(&e);
                    self.spill("the cache filesystem refused the write");
                }
            }
        }
        if self.spilled {
            // Nothing behind the window can be read again: let every reader catch up first.
            self.write.wait_for_readers(end.saturating_sub(inflight::RECENT_WINDOW as u64 / 2)).await;
            self.write.append_unstored(self.written, &data);
        }
        self.written = end;
        if self.written > self.storage.memory_max_object {
            self.memory_chunks = None;
        } else if let Some(chunks) = self.memory_chunks.as_mut() {
            chunks.push(data);
        }
        self.write.publish(self.written);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.settle_write().await;
        if self.spilled {
            // Every reader had its bytes; nothing is stored. (Not an error: pingora would cut
            // the client's response. `Appended(0)` adds nothing for eviction to track.)
            self.finished = true;
            self.storage.inflight.remove(&self.write);
            self.write.complete(self.written);
            self.release();
            return Ok(MissFinishType::Appended(0, None));
        }
        if let Some(expected) = self.expected_len {
            if expected != self.written {
                self.write.fail();
                return Err(to_pingora(StorageError::Truncated {
                    key: self.write.key.clone(),
                    written: self.written,
                    expected,
                }));
            }
        }
        let header = EntryHeader {
            key: self.compact.clone(),
            primary: std::mem::take(&mut self.primary),
            body_len: self.written,
            meta: self.write.meta.clone(),
            generation: 0,
        };
        // fsync and renames take milliseconds on a real disk: never on a worker thread, where
        // they would hold up every other request (a hit waits behind someone else's commit).
        let (storage, write) = (self.storage, self.write.clone());
        let committed = tokio::task::spawn_blocking(move || storage.disk.commit(&write, header))
            .await
            .unwrap_or_else(|e| Err(StorageError::io(&self.write.tmp_path, std::io::Error::other(e))));
        self.release();
        if let Err(e) = committed {
            self.storage.disk.note_write_error(&e);
            self.write.fail();
            return Err(to_pingora(e));
        }
        self.storage.note_variant(&self.compact);
        if let (Some(chunks), Some(meta)) = (self.memory_chunks.take(), self.template.take()) {
            let body = join_chunks(chunks, self.written as usize);
            self.storage.memory.put(&self.write.key_bin, Arc::new(MemoryObject::new(meta, body)));
        }
        self.finished = true;
        self.storage.inflight.remove(&self.write);
        self.write.complete(self.written);
        let meta_len = self.write.meta.0.len() + self.write.meta.1.len();
        Ok(MissFinishType::Created(self.written as usize + meta_len))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.write.tag)
    }
}

impl TieredMissHandler {
    /// Wait for the chunk write still under way, if any; a failed one spills the fill.
    async fn settle_write(&mut self) {
        let Some((pending, len)) = self.pending.take() else { return };
        match pending.await.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(()) => self.written_to_file(len),
            Err(e) => {
                let e = StorageError::io(&self.write.tmp_path, e);
                self.storage.disk.note_write_error(&e);
                self.spill("the cache filesystem refused the write");
            }
        }
    }

    /// Written bytes are the filesystem's to count now, no longer the reservation's.
    fn written_to_file(&mut self, len: u64) {
        let written = len.min(self.reserved);
        self.storage.disk.release(written);
        self.reserved -= written;
    }

    /// The disk cannot take the rest of this fill: keep serving its readers, store nothing.
    fn spill(&mut self, why: &str) {
        if self.spilled {
            return;
        }
        self.spilled = true;
        self.write.spill();
        self.release();
        self.memory_chunks = None;
        let repository = self.compact.user_tag.clone();
        self.storage.metrics.cache_skipped.with_label_values(&[&repository, "disk_full"]).inc();
        tracing::warn!(%repository, written = self.written, reason = why, "cache fill dropped; the response goes on uncached");
    }

    fn release(&mut self) {
        self.storage.disk.release(std::mem::take(&mut self.reserved));
    }
}

impl Drop for TieredMissHandler {
    fn drop(&mut self) {
        self.release();
        if !self.finished {
            // Readers streaming this fill get an error rather than a silently short body.
            self.write.fail();
            self.storage.inflight.remove(&self.write);
            self.storage.metrics.abandoned_fills.inc();
        }
    }
}

fn join_chunks(chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut buf = Vec::with_capacity(len);
    for c in chunks {
        buf.extend_from_slice(&c);
    }
    Bytes::from(buf)
}
