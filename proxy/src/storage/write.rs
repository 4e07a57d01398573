//! Writing a fill's chunks to its temp file without blocking a worker thread.
//!
//! A buffered write usually only copies into the page cache, but it can block: on dirty-page
//! throttling when writeback falls behind (a slow disk under many fills), on block allocation,
//! on a page lock. On a worker thread that would hold up every request it serves. So each
//! chunk is first written inline with `pwritev2(RWF_NOWAIT)`: the kernel copies what it can
//! without waiting and answers `EAGAIN` (or a short count) instead of blocking. Whatever is
//! left is written on tokio's blocking pool. The same split as reads (see `read`): inline
//! when the kernel says it will not wait, a thread that may wait otherwise.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Set when the filesystem refuses `RWF_NOWAIT` for buffered writes (kernels before 6.x for
/// most filesystems, network filesystems): every chunk then goes to the blocking pool.
static NOWAIT_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

// File offsets are passed to the kernel as `off_t`: only where it is 64 bits wide does every
// `u64` offset of a cache file fit.
const _: () = assert!(std::mem::size_of::<libc::off_t>() == 8);

/// A write that went on to the blocking pool; it resolves to the write's result.
pub(crate) type PendingWrite = tokio::task::JoinHandle<io::Result<()>>;

/// Start writing all of `data` at `offset` of `file` without blocking the calling (worker)
/// thread: `None` when the kernel took it all inline, else the rest's write on the blocking
/// pool, for the caller to await when it must know the bytes are in the file.
///
/// Errors are the write's own (`ENOSPC`, `EIO`, ...), here or from the pending write; a
/// blocking-pool task that could not run is an `io::Error` of kind `Other`.
pub(crate) fn start_write(file: &Arc<File>, data: &Bytes, offset: u64) -> io::Result<Option<PendingWrite>> {
    let mut done = 0;
    if !NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        while done < data.len() {
            match write_nowait(file, &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                    NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if done == data.len() {
        return Ok(None);
    }
    let (file, rest) = (file.clone(), data.slice(done..));
    Ok(Some(tokio::task::spawn_blocking(move || file.write_all_at(&rest, offset + done as u64))))
}

/// Write all of `data` at `offset` of `file` and wait for it, never blocking the calling
/// (worker) thread. Errors as [`start_write`].
#[cfg(test)]
pub(crate) async fn write_all_at(file: &Arc<File>, data: &Bytes, offset: u64) -> io::Result<()> {
    match start_write(file, data, offset)? {
        None => Ok(()),
        Some(pending) => pending.await.map_err(io::Error::other)?,
    }
}

/// One `pwritev2(RWF_NOWAIT)`: how much of `data` the kernel took without waiting.
fn write_nowait(file: &File, data: &[u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: the iovec points at `data`, which outlives the call; the kernel only reads it.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_land_where_they_belong_whichever_way_they_are_written() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let a = Bytes::from(vec![1u8; 300_000]);
        let b = Bytes::from((0..700_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        write_all_at(&file, &a, 0).await.unwrap();
        write_all_at(&file, &b, a.len() as u64).await.unwrap();
        let mut back = vec![0u8; a.len() + b.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..a.len()] == a[..] && back[a.len()..] == b[..]);
        // The fallback alone writes the same bytes.
        NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
        let c = Bytes::from_static(b"written on the blocking pool");
        write_all_at(&file, &c, 10).await.unwrap();
        NOWAIT_UNSUPPORTED.store(false, Ordering::Relaxed);
        let mut back = vec![0u8; c.len()];
        file.read_exact_at(&mut back, 10).unwrap();
        assert_eq!(back, c);
    }

    #[tokio::test]
    async fn a_write_the_file_refuses_is_an_error() {
        let path = tempfile::NamedTempFile::new().unwrap();
        let read_only = Arc::new(File::open(path.path()).unwrap());
        let e = write_all_at(&read_only, &Bytes::from_static(b"x"), 0).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    }
}
