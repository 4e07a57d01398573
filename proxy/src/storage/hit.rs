//! Hit handlers for complete entries: both can seek, so HEAD and Range are served from cache.

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::storage::{HandleHit, Storage};
use pingora::cache::trace::SpanHandle;
use pingora::cache::CacheKey;
use pingora::{Error, ErrorType, Result};

use super::read::ChunkReader;

fn check_range(len: u64, start: usize, end: Option<usize>) -> Result<(u64, u64)> {
    let start = start as u64;
    if start >= len && len > 0 {
        return Error::e_explain(
            ErrorType::InternalError,
            format!("seek start {start} out of range for {len} bytes"),
        );
    }
    let end = end.map_or(len, |e| (e as u64).min(len));
    Ok((start, end.max(start)))
}

/// A body held in memory: each read hands out a refcounted slice, no copy.
pub(crate) struct MemoryHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

impl MemoryHit {
    pub fn new(body: Bytes) -> Self {
        let end = body.len();
        MemoryHit {
            body,
            start: 0,
            end,
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for MemoryHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.start >= self.end {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }


    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (s, e) = check_range(self.body.len() as u64, start, end)?;
        self.start = s as usize;
        self.end = e as usize;
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
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

/// A body on disk, read in bounded chunks so it never sits whole in memory, from the page
/// cache inline and from the disk on the blocking pool (see [`super::read`]).
pub(crate) struct DiskHit {
    reader: ChunkReader,
    len: u64,
    pos: u64,
    end: u64,
}

impl DiskHit {
    pub fn new(file: File, len: u64) -> Self {
        DiskHit {
            reader: ChunkReader::new(Arc::new(file)),
            len,
            pos: 0,
            end: len,
        }
    }
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let want = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        // The body was complete and length-checked when opened; a file that ends early now
        // changed under us, which must fail the response rather than end it short.
        let chunk = self.reader.read_at(self.pos, want).await.map_err(|e| {
            Error::explain(ErrorType::InternalError, format!("reading cached body: {e}"))
        })?;
        self.pos += chunk.len() as u64;
        Ok(Some(chunk))
    }


    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (s, e) = check_range(self.len, start, end)?;
        self.pos = s;
        self.end = e;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.len as usize
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
