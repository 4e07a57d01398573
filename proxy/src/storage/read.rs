//! Reading cached bodies from their files without blocking a worker thread.
//!
//! A hit on a body bigger than the memory tier streams it from its file, in chunks of at most
//! [`CHUNK`] bytes. The page cache is the memory tier for such bodies, so the usual read is a
//! copy out of it, done inline with `preadv2(RWF_NOWAIT)`: the kernel either has the bytes
//! (and copies them) or answers `EAGAIN` at once instead of going to the disk. Only then is
//! the chunk read on tokio's blocking pool, with the file's next chunks announced to the
//! kernel (`POSIX_FADV_WILLNEED`) so that the reads after it find them in memory.
//!
//! Reads from the page cache reuse one buffer per reader: a chunk handed out is a view of it,
//! and once the response writer has dropped that view the next read takes the same memory
//! back (`BytesMut::reserve` reclaims a buffer nobody else holds). No zeroing, no fresh pages
//! to fault in per chunk: those page faults, not the copies, were most of the cost of a
//! 10 MiB disk hit before (see bench/README.md). Reads from the disk take a fresh buffer: the
//! disk, not the allocation, is their cost.
//!
//! Why not the other ways. `sendfile`/`splice` would skip the copy into user space, but
//! pingora's cache serves a hit as `Bytes` through its own HTTP writer (TLS, HTTP/2, body
//! filters), so there is no socket to splice to. A memory map would also skip that copy, but
//! a page not in memory then blocks the worker inside the socket write, where nothing can
//! send it elsewhere, and a disk error arrives as `SIGBUS` for the whole process instead of
//! an error for one response.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// Largest chunk read at once, in bytes: big enough that a 10 MiB body takes a handful of
/// reads, small enough that a thousand concurrent downloads hold a bounded amount of memory
/// (one chunk each while the socket takes it, two at most).
pub(crate) const CHUNK: usize = 512 * 1024;

/// Chunks after the one read from disk that the kernel is asked to bring in meanwhile.
const READ_AHEAD_CHUNKS: u64 = 8;

/// Set when the filesystem refuses `RWF_NOWAIT` (old kernels, some network filesystems):
/// every read then goes to the blocking pool.
static NOWAIT_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

// File offsets are passed to the kernel as `off_t`: only where it is 64 bits wide does every
// `u64` offset of a cache file fit.
const _: () = assert!(std::mem::size_of::<libc::off_t>() == 8);

/// Reads chunks of one file, reusing its buffer between chunks.
pub(crate) struct ChunkReader {
    file: Arc<File>,
    buf: BytesMut,
}

impl ChunkReader {
    pub fn new(file: Arc<File>) -> Self {
        ChunkReader {
            file,
            buf: BytesMut::new(),
        }
    }

    /// Up to `len` bytes (at most [`CHUNK`]) at `offset`; fewer when only part of the range
    /// is in the page cache. Empty only when `len` is 0: a file that ends before `offset + 1`
    /// is an `UnexpectedEof` error, since callers only ask for bytes the entry's length
    /// promises.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let len = len.min(CHUNK);
        if len == 0 {
            return Ok(Bytes::new());
        }
        if !NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
            match self.read_cached(offset, len) {
                // Nothing read: the end of the file, which the blocking read reports as such.
                Ok(0) => {}
                Ok(n) => return Ok(self.buf.split_to(n).freeze()),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                    NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(len);
            file.read_exact_at(&mut buf, offset)?;
            // After the chunk the client waits for, so its read is not queued behind these.
            let ahead = (READ_AHEAD_CHUNKS * CHUNK as u64) as libc::off_t;
            // SAFETY: posix_fadvise only reads its integer arguments; the fd is open (held by `file`).
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), (offset + len as u64) as libc::off_t, ahead, libc::POSIX_FADV_WILLNEED);
            }
            Ok(buf.freeze())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// One `preadv2(RWF_NOWAIT)` into the reused buffer; the bytes read are left at its front.
    fn read_cached(&mut self, offset: u64, len: usize) -> io::Result<usize> {
        self.buf.clear();
        // Takes the allocation back when the last chunk handed out has been dropped.
        self.buf.reserve(len);
        let spare = self.buf.spare_capacity_mut();
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: len.min(spare.len()),
        };
        // SAFETY: the iovec points at `iov_len` bytes of this buffer's spare capacity, which
        // nothing else references while the call runs; the kernel writes at most that much.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
        unsafe { self.buf.set_len(n as usize) };
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        Arc::new(f)
    }

    #[tokio::test]
    async fn chunks_come_back_in_order_and_reuse_the_buffer() {
        let data: Vec<u8> = (0..3 * CHUNK + 123).map(|i| (i % 251) as u8).collect();
        let mut r = ChunkReader::new(file_with(&data));
        let mut got = Vec::new();
        let mut first_ptr = None;
        while got.len() < data.len() {
            let chunk = r.read_at(got.len() as u64, data.len() - got.len()).await.unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
            first_ptr.get_or_insert(chunk.as_ptr());
            if got.len() > 0 && !NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
                assert_eq!(chunk.as_ptr(), first_ptr.unwrap(), "a dropped chunk's memory is read into again");
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_held_chunk_is_never_overwritten() {
        let data: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 7) as u8).collect();
        let mut r = ChunkReader::new(file_with(&data));
        let first = r.read_at(0, CHUNK).await.unwrap();
        let second = r.read_at(CHUNK as u64, CHUNK).await.unwrap();
        assert_eq!(&first[..], &data[..first.len()]);
        assert_eq!(&second[..], &data[CHUNK..CHUNK + second.len()]);
    }

    #[tokio::test]
    async fn a_file_shorter_than_promised_is_an_error_not_an_empty_chunk() {
        let mut r = ChunkReader::new(file_with(b"abc"));
        assert_eq!(&r.read_at(0, 3).await.unwrap()[..], b"abc");
        let e = r.read_at(3, 10).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
