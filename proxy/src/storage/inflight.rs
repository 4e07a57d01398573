//! Fills in progress, and readers that stream them as they grow.
//!
//! The writer appends to an unlinked-on-failure temp file and publishes its length on a
//! `watch` channel. Each reader holds the same open file and reads up to the published length
//! with `pread`, so a reader needs no buffer shared with the writer and the rename on commit
//! does not disturb it. The terminal state is explicit: `Done(len)` ends the body, `Failed`
//! (or the writer vanishing) is an error to every reader, so a cut-short fill can never look
//! like a complete, shorter object (pingora issue #932).
//!
//! The most recent [`RECENT_WINDOW`] bytes of each fill also stay in memory as the refcounted
//! `Bytes` the upstream delivered: readers keeping up with the fill (the usual case in a
//! stampede behind a slower upstream) are handed those without a copy or a syscall, and only
//! readers further behind read the file.
//!
//! When the disk cannot take more of a fill (no room to reserve, or ENOSPC), the fill *spills*:
//! nothing more is written to the file, the rest goes only through the window, and at its end
//! the fill is complete for its readers but never stored. Readers at the head (the client that
//! caused the fill, usually) get every byte; a reader that has fallen more than the window
//! behind gets an error, never a short body.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::cache::storage::{HandleHit, Storage};
use pingora::cache::trace::SpanHandle;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::{Error, Result};
use tokio::sync::watch;

use super::read::ChunkReader;
use super::write::PendingWrite;
use super::StorageError;

/// Bytes of the latest chunks of a fill kept in memory for readers at its head.
pub(crate) const RECENT_WINDOW: usize = 8 << 20;
/// How long a spilled fill waits for a reader that does not move before leaving it behind.
const READER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The tail of a fill as the chunks the upstream delivered, oldest first.
#[derive(Default)]
struct RecentChunks {
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl RecentChunks {
    fn push(&mut self, offset: u64, data: Bytes) {
        self.bytes += data.len();
        self.chunks.push_back((offset, data));
        while self.bytes > RECENT_WINDOW && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// The bytes from `offset` to the end of the chunk holding it, if still in the window.
    fn slice_from(&self, offset: u64, limit: u64) -> Option<Bytes> {
        let first = self.chunks.front()?.0;
        if offset < first {
            return None;
        }
        let i = self.chunks.partition_point(|(o, _)| *o <= offset).checked_sub(1)?;
        let (start, data) = &self.chunks[i];
        let from = (offset - start) as usize;
        let to = (data.len() as u64).min(limit - start) as usize;
        (from < to).then(|| data.slice(from..to))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Writing(u64),
    Done(u64),
    Failed(u64),
}

/// One fill: its temp file, its metadata, and how far it has got.
pub(crate) struct InflightWrite {
    pub id: u64,
    pub tag: [u8; 8],
    pub key_bin: HashBinary,
    /// Hex form of the key, as the disk tier names files.
    pub key: String,
    pub meta: (Vec<u8>, Vec<u8>),
    pub file: Arc<File>,
    pub tmp_path: PathBuf,
    progress: watch::Sender<Progress>,
    recent: Mutex<RecentChunks>,
    /// How far each reader has read (by reader id), so a spilled fill waits for the slowest
    /// reader instead of leaving it behind the window.
    readers: Mutex<HashMap<u64, u64>>,
    next_reader: AtomicU64,
    /// Woken when a reader moves on or leaves.
    read_progress: tokio::sync::Notify,
}

impl InflightWrite {
    /// Put `data` at `offset` in the window and start writing it to the file (without
    /// blocking the worker: see `write`). What returns is the part of the write still under
    /// way, if any: the bytes are in the window meanwhile, and the window always holds the
    /// latest chunk whole, so a reader that must go to the file never needs them from it.
    pub fn append(&self, offset: u64, data: &Bytes) -> std::result::Result<Option<PendingWrite>, StorageError> {
        self.recent.lock().push(offset, data.clone());
        super::write::start_write(&self.file, data, offset).map_err(|e| StorageError::io(&self.tmp_path, e))
    }

    /// Pass `data` at `offset` to readers through the window only (the fill has spilled).
    pub fn append_unstored(&self, offset: u64, data: &Bytes) {
        self.recent.lock().push(offset, data.clone());
    }

    /// Stop storing this fill: remove its temp file (readers keep their open handle to what
    /// was written).
    pub fn spill(&self) {
        let _ = std::fs::remove_file(&self.tmp_path);
    }

    /// Wait until every reader has read at least `offset` bytes, for at most
    /// [`READER_PATIENCE`] in all: readers still behind then are left behind (no longer waited
    /// for; they fail if they need bytes the window has moved past), so a reader trickling
    /// a byte at a time cannot pace the fill, and with it every other client. A spilled fill
    /// calls this before moving its window past what a reader still needs.
    pub async fn wait_for_readers(&self, offset: u64) {
        let deadline = tokio::time::Instant::now() + READER_PATIENCE;
        loop {
            let notified = self.read_progress.notified();
            let slowest = self.readers.lock().values().copied().min();
            if slowest.is_none_or(|r| r >= offset) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.readers.lock().retain(|_, read| *read >= offset);
                return;
            }
        }
    }

    fn note_read(&self, reader: u64, offset: u64) {
        if let Some(r) = self.readers.lock().get_mut(&reader) {
            *r = offset;
        }
        self.read_progress.notify_waiters();
    }

    pub fn publish(&self, written: u64) {
        self.progress.send_replace(Progress::Writing(written));
    }

    pub fn complete(&self, written: u64) {
        self.progress.send_replace(Progress::Done(written));
    }

    /// Mark the fill failed and remove its temp file. Idempotent.
    pub fn fail(&self) {
        let written = match *self.progress.borrow() {
            Progress::Writing(n) | Progress::Failed(n) => n,
            Progress::Done(_) => return,
        };
        self.progress.send_replace(Progress::Failed(written));
        let _ = std::fs::remove_file(&self.tmp_path);
    }

    /// Bytes written so far while the fill is still being written; `None` once it has ended.
    pub fn writing(&self) -> Option<u64> {
        match *self.progress.borrow() {
            Progress::Writing(n) => Some(n),
            Progress::Done(_) | Progress::Failed(_) => None,
        }
    }

    pub fn cache_meta(&self) -> Result<CacheMeta> {
        CacheMeta::deserialize(&self.meta.0, &self.meta.1)
    }

    pub fn reader(self: &Arc<Self>) -> PartialHit {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        self.readers.lock().insert(id, 0);
        PartialHit {
            write: self.clone(),
            progress: self.progress.subscribe(),
            reader: None,
            read: 0,
            end: None,
            id,
        }
    }
}

/// Index of fills in progress, by cache key and by write id.
#[derive(Default)]
pub(crate) struct InflightWrites {
    next_id: AtomicU64,
    /// Fills in progress; lets the hit path skip the lock when there are none.
    active: AtomicUsize,
    inner: Mutex<InflightIndex>,
}

#[derive(Default)]
struct InflightIndex {
    by_key: HashMap<HashBinary, u64>,
    by_id: HashMap<u64, Arc<InflightWrite>>,
}

impl InflightWrites {
    pub fn insert(
        &self,
        key: HashBinary,
        meta: (Vec<u8>, Vec<u8>),
        file: File,
        tmp_path: PathBuf,
    ) -> Arc<InflightWrite> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (progress, _) = watch::channel(Progress::Writing(0));
        let write = Arc::new(InflightWrite {
            id,
            tag: id.to_be_bytes(),
            key_bin: key,
            key: hex::encode(key),
            meta,
            file: Arc::new(file),
            tmp_path,
            progress,
            recent: Mutex::new(RecentChunks::default()),
            readers: Mutex::new(HashMap::new()),
            next_reader: AtomicU64::new(0),
            read_progress: tokio::sync::Notify::new(),
        });
        let mut idx = self.inner.lock();
        idx.by_key.insert(key, id);
        idx.by_id.insert(id, write.clone());
        self.active.store(idx.by_id.len(), Ordering::Release);
        write
    }

    pub fn latest(&self, key: &HashBinary) -> Option<Arc<InflightWrite>> {
        if self.active.load(Ordering::Acquire) == 0 {
            return None;
        }
        let idx = self.inner.lock();
        idx.by_key.get(key).and_then(|id| idx.by_id.get(id)).cloned()
    }

    pub fn by_id(&self, id: u64) -> Option<Arc<InflightWrite>> {
        self.inner.lock().by_id.get(&id).cloned()
    }

    pub fn remove(&self, write: &InflightWrite) {
        let mut idx = self.inner.lock();
        idx.by_id.remove(&write.id);
        if idx.by_key.get(&write.key_bin) == Some(&write.id) {
            idx.by_key.remove(&write.key_bin);
        }
        self.active.store(idx.by_id.len(), Ordering::Release);
    }
}

/// A reader of a fill in progress.
pub(crate) struct PartialHit {
    write: Arc<InflightWrite>,
    progress: watch::Receiver<Progress>,
    /// Reads what has fallen out of the window from the file; made on first use.
    reader: Option<ChunkReader>,
    read: u64,
    /// Where a ranged read stops (exclusive), set by `seek`; `None` reads to the fill's end.
    end: Option<u64>,
    /// This reader's id in the fill's list of readers.
    id: u64,
}

impl Drop for PartialHit {
    fn drop(&mut self) {
        self.write.readers.lock().remove(&self.id);
        self.write.read_progress.notify_waiters();
    }
}

impl PartialHit {
    fn abandoned(&self) -> Box<Error> {
        super::to_pingora(StorageError::Abandoned {
            key: self.write.key.clone(),
            written: self.read,
        })
    }
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.end.is_some_and(|end| self.read >= end) {
                return Ok(None);
            }
            let state = *self.progress.borrow_and_update();
            let available = match state {
                Progress::Failed(_) => return Err(self.abandoned()),
                Progress::Writing(n) => n,
                Progress::Done(n) if n == self.read => return Ok(None),
                // A range past the end of what the fill turned out to hold.
                Progress::Done(n) if n < self.read => return Err(self.abandoned()),
                Progress::Done(n) => n,
            };
            let available = available.min(self.end.unwrap_or(u64::MAX));
            if available > self.read {
                let recent = self.write.recent.lock().slice_from(self.read, available);
                if let Some(piece) = recent {
                    self.read += piece.len() as u64;
                    self.write.note_read(self.id, self.read);
                    return Ok(Some(piece));
                }
                let want = usize::try_from(available - self.read).unwrap_or(usize::MAX);
                let file = &self.write.file;
                let chunk = self
                    .reader
                    .get_or_insert_with(|| ChunkReader::new(file.clone()))
                    .read_at(self.read, want)
                    .await
                    .map_err(|e| super::to_pingora(StorageError::io(&self.write.tmp_path, e)))?;
                self.read += chunk.len() as u64;
                self.write.note_read(self.id, self.read);
                return Ok(Some(chunk));
            }
            if self.progress.changed().await.is_err() {
                // The writer is gone without saying Done: whatever it wrote is not the object.
                if matches!(*self.progress.borrow(), Progress::Done(n) if n == self.read) {
                    return Ok(None);
                }
                return Err(self.abandoned());
            }
        }
    }


    /// A range of a fill in progress: bytes the fill has passed are answered at once (from
    /// the window or the file), bytes it has not reached wait for it, exactly as a reader
    /// from the start waits. pingora computes the range from the stored `Content-Length`,
    /// so a fill without one is never asked to seek.
    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (start, end) = (start as u64, end.map(|e| e as u64));
        if let Progress::Done(len) = *self.progress.borrow() {
            if start > len || (start == len && len > 0) {
                return Error::e_explain(pingora::ErrorType::InternalError, format!("seek start {start} out of range for {len} bytes"));
            }
        }
        self.read = start;
        self.end = end.map(|e| e.max(start));
        self.write.note_read(self.id, start);
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        false
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    hit_handler_plumbing!();
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fill(data: &[u8]) -> Arc<InflightWrite> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fill.part");
        let file = std::fs::OpenOptions::new().create(true).read(true).write(true).open(&path).unwrap();
        let write = InflightWrites::default().insert([7; 16], (Vec::new(), Vec::new()), file, path);
        if let Some(pending) = write.append(0, &Bytes::copy_from_slice(data)).unwrap() {
            pending.await.unwrap().unwrap();
        }
        write.publish(data.len() as u64);
        write
    }

    #[tokio::test]
    async fn a_seek_reads_exactly_its_range_of_a_fill() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let write = fill(&data).await;
        let mut hit = write.reader();
        hit.seek(100, Some(200)).unwrap();
        // Still filling: the passed range is served without waiting for the end.
        let first = hit.read_body().await.unwrap().unwrap();
        assert_eq!(&first[..], &data[100..200]);
        assert!(hit.read_body().await.unwrap().is_none(), "the range ends where it was asked to");
        write.complete(1000);
        let mut tail = write.reader();
        tail.seek(990, None).unwrap();
        assert_eq!(crate::storage::tests::read_all(&mut tail).await.unwrap(), &data[990..]);
    }

    #[tokio::test]
    async fn a_range_past_what_the_fill_held_is_an_error_not_a_hang() {
        let write = fill(b"0123456789").await;
        let mut ahead = write.reader();
        // Asked while the fill was running (its length not known yet), for bytes it never got.
        ahead.seek(20, Some(30)).unwrap();
        write.complete(10);
        // The guard only turns a hang (the bug this tests for) into a failure.
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), ahead.read_body()).await;
        assert!(matches!(read, Ok(Err(_))), "an error at once, not a wait for bytes that never come");
        let mut late = write.reader();
        assert!(late.seek(11, None).is_err(), "past the end of a finished fill");
        assert!(late.seek(10, None).is_err(), "at the end of a non-empty one");
    }

    #[test]
    fn the_window_serves_the_tail_and_forgets_the_rest() {
        let mut r = RecentChunks::default();
        let chunk = Bytes::from(vec![1u8; 1 << 20]);
        for i in 0..12u64 {
            r.push(i << 20, chunk.clone());
        }
        assert!(r.bytes <= RECENT_WINDOW);
        assert!(r.slice_from(0, 12 << 20).is_none(), "old bytes come from the file");
        let tail = r.slice_from((11 << 20) + 10, 12 << 20).unwrap();
        assert_eq!(tail.len(), (1 << 20) - 10);
        let capped = r.slice_from(11 << 20, (11 << 20) + 5).unwrap();
        assert_eq!(capped.len(), 5, "never past what was published");
        assert!(r.slice_from(12 << 20, 12 << 20).is_none());
    }
}
