//! The disk tier's layout and its crash-safety rules.
//!
//! ```text
//! <dir>/tmp/<random>.part                 bodies being written; wiped at startup
//! <dir>/objects/<h[0..2]>/<h>.meta        header: key, body length, generation, pingora meta, checksum
//! <dir>/objects/<h[0..2]>/<h>.<gen>.body  the body, exactly `body length` bytes
//! ```
//! `h` is the hex hash of the cache key, so no request string ever names a file.
//!
//! A fill writes its body to `tmp/`, then (optionally fsynced) renames it to its generation's
//! body name, then writes the meta file through a temp file and renames it into place. The
//! meta rename is the commit point: before it, readers see the previous entry or none; after
//! it, the complete new one. A crash at any step leaves either an orphan body (removed by the
//! startup scan) or nothing. Lookups check the meta checksum and the body length, so a torn
//! file from a power loss is discarded, never served.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use pingora::cache::key::CompactCacheKey;

use super::inflight::InflightWrite;
use super::StorageError;

const MAGIC: &[u8; 4] = b"HGR2";
const CHECKSUM_LEN: usize = 16;
const LOCK_STRIPES: usize = 64;
/// After the filesystem reports it is full, admit nothing new for this long.
const FULL_BACKOFF: Duration = Duration::from_secs(30);

/// What the meta file of one entry records.
#[derive(Debug, Clone)]
pub struct EntryHeader {
    pub key: CompactCacheKey,
    /// The unhashed primary key (repository and upstream path), for purges by prefix.
    pub primary: Vec<u8>,
    pub body_len: u64,
    pub generation: u64,
    pub meta: (Vec<u8>, Vec<u8>),
}

impl EntryHeader {
    /// The weight reported to eviction: what the entry costs on disk.
    pub fn weight(&self) -> usize {
        self.body_len as usize + self.meta.0.len() + self.meta.1.len()
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.meta.0.len() + self.meta.1.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.body_len.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.key.primary);
        match &self.key.variance {
            Some(v) => {
                b.push(1);
                b.extend_from_slice(&v[..]);
            }
            None => b.push(0),
        }
        let tag = self.key.user_tag.as_bytes();
        b.extend_from_slice(&(tag.len().min(u16::MAX as usize) as u16).to_le_bytes());
        b.extend_from_slice(&tag[..tag.len().min(u16::MAX as usize)]);
        for part in [&self.primary, &self.meta.0, &self.meta.1] {
            b.extend_from_slice(&(part.len() as u32).to_le_bytes());
            b.extend_from_slice(part);
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        b
    }

    fn decode(buf: &[u8]) -> Result<Self, String> {
        if buf.len() < MAGIC.len() + CHECKSUM_LEN {
            return Err("too short".into());
        }
        let (body, sum) = buf.split_at(buf.len() - CHECKSUM_LEN);
        if &blake3::hash(body).as_bytes()[..CHECKSUM_LEN] != sum {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return Err("bad magic".into());
        }
        let body_len = r.u64()?;
        let generation = r.u64()?;
        let primary: [u8; 16] = r.take(16)?.try_into().map_err(|_| "short key")?;
        let variance = match r.take(1)?[0] {
            0 => None,
            1 => Some(Box::new(<[u8; 16]>::try_from(r.take(16)?).map_err(|_| "short variance")?)),
            _ => return Err("bad variance flag".into()),
        };
        let tag_len = u16::from_le_bytes(r.take(2)?.try_into().unwrap()) as usize;
        let user_tag = std::str::from_utf8(r.take(tag_len)?)
            .map_err(|_| "user tag not utf-8")?
            .into();
        let np = r.u32()? as usize;
        let primary_key = r.take(np)?.to_vec();
        let n0 = r.u32()? as usize;
        let m0 = r.take(n0)?.to_vec();
        let n1 = r.u32()? as usize;
        let m1 = r.take(n1)?.to_vec();
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(EntryHeader {
            key: CompactCacheKey {
                primary,
                variance,
                user_tag,
            },
            primary: primary_key,
            body_len,
            generation,
            meta: (m0, m1),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

pub struct DiskTier {
    root: PathBuf,
    objects: PathBuf,
    tmp: PathBuf,
    fsync: bool,
    /// Free space to leave on the filesystem; fills that would eat into it are not stored.
    min_free: u64,
    /// Unix seconds until which the filesystem is treated as full (set on ENOSPC/EDQUOT).
    full_until: AtomicU64,
    /// Bytes promised to fills in progress and not yet written: concurrent fills must not
    /// each believe they have the filesystem's free space to themselves.
    reserved: AtomicU64,
    next_generation: AtomicU64,
    next_temp: AtomicU64,
    /// Serialises commits, meta updates and removals of one key (striped by hash).
    stripes: Vec<Mutex<()>>,
}

fn nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

impl DiskTier {
    /// Open `root`, wipe partial writes and orphans, and list the complete entries.
    pub fn open(root: &Path, fsync: bool, min_free: u64) -> Result<(Self, Vec<(CompactCacheKey, usize)>), StorageError> {
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        for d in [root, &objects, &tmp] {
            fs::create_dir_all(d).map_err(|e| StorageError::io(d, e))?;
        }
        // Anything in tmp/ is a fill a previous process never finished.
        for entry in fs::read_dir(&tmp).map_err(|e| StorageError::io(&tmp, e))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let tier = DiskTier {
            root: root.to_path_buf(),
            objects,
            tmp,
            fsync,
            min_free,
            full_until: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            next_generation: AtomicU64::new(nanos_now()),
            next_temp: AtomicU64::new(0),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        };
        let entries = tier.scan()?;
        Ok((tier, entries))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn stripe(&self, combined: &str) -> &Mutex<()> {
        let b = u8::from_str_radix(&combined[..2.min(combined.len())], 16).unwrap_or(0) as usize;
        &self.stripes[b % LOCK_STRIPES]
    }

    fn shard_dir(&self, combined: &str) -> PathBuf {
        self.objects.join(&combined[..2.min(combined.len())])
    }

    fn meta_path(&self, combined: &str) -> PathBuf {
        self.shard_dir(combined).join(format!("{combined}.meta"))
    }

    fn body_path(&self, combined: &str, generation: u64) -> PathBuf {
        self.shard_dir(combined).join(format!("{combined}.{generation:016x}.body"))
    }

    /// Verify every entry; delete what is torn or orphaned.
    fn scan(&self) -> Result<Vec<(CompactCacheKey, usize)>, StorageError> {
        let mut found = Vec::new();
        let shards = fs::read_dir(&self.objects).map_err(|e| StorageError::io(&self.objects, e))?;
        for shard in shards.flatten() {
            let dir = shard.path();
            if !dir.is_dir() {
                continue;
            }
            let mut metas: HashMap<String, EntryHeader> = HashMap::new();
            let mut bodies: Vec<(String, u64, PathBuf)> = Vec::new();
            for file in fs::read_dir(&dir).map_err(|e| StorageError::io(&dir, e))?.flatten() {
                let path = file.path();
                let name = file.file_name().to_string_lossy().into_owned();
                if let Some(h) = name.strip_suffix(".meta") {
                    match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| EntryHeader::decode(&b)) {
                        Ok(header) => {
                            metas.insert(h.to_string(), header);
                        }
                        Err(reason) => {
                            tracing::warn!(path = %path.display(), %reason, "removing corrupt cache meta");
                            let _ = fs::remove_file(&path);
                        }
                    }
                } else if let Some(rest) = name.strip_suffix(".body") {
                    match rest.rsplit_once('.').and_then(|(h, g)| Some((h, u64::from_str_radix(g, 16).ok()?))) {
                        Some((h, g)) => bodies.push((h.to_string(), g, path)),
                        None => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                } else {
                    // meta temp files and anything else unknown
                    let _ = fs::remove_file(&path);
                }
            }
            let mut has_body: HashMap<String, bool> = HashMap::new();
            for (h, g, path) in bodies {
                let keep = metas.get(&h).is_some_and(|m| {
                    m.generation == g && fs::metadata(&path).is_ok_and(|md| md.len() == m.body_len)
                });
                if keep {
                    has_body.insert(h, true);
                } else {
                    let _ = fs::remove_file(&path);
                }
            }
            for (h, header) in metas {
                if has_body.contains_key(&h) {
                    found.push((header.key.clone(), header.weight()));
                } else {
                    let _ = fs::remove_file(self.meta_path(&h));
                }
            }
        }
        Ok(found)
    }

    /// Whether a fill of `len` bytes (if known) may start. A full disk must degrade to passing
    /// responses through uncached, not to failing them. What other fills have reserved counts
    /// as used.
    pub fn has_room(&self, len: Option<u64>) -> bool {
        let now = nanos_now() / 1_000_000_000;
        if self.full_until.load(Ordering::Relaxed) > now {
            return false;
        }
        match free_bytes(&self.tmp) {
            Some(free) => free
                .checked_sub(self.reserved.load(Ordering::Acquire))
                .and_then(|f| f.checked_sub(len.unwrap_or(0)))
                .is_some_and(|rest| rest >= self.min_free)
                && free > 0,
            None => true,
        }
    }

    /// Reserve `len` more bytes for a fill, if the filesystem has them beyond `min_free` and
    /// what other fills hold. Released with [`DiskTier::release`].
    pub fn reserve(&self, len: u64) -> bool {
        let now = nanos_now() / 1_000_000_000;
        if self.full_until.load(Ordering::Relaxed) > now {
            return false;
        }
        let Some(free) = free_bytes(&self.tmp) else {
            self.reserved.fetch_add(len, Ordering::AcqRel);
            return true;
        };
        let mut held = self.reserved.load(Ordering::Acquire);
        loop {
            let fits = free.checked_sub(held).and_then(|f| f.checked_sub(len)).is_some_and(|rest| rest >= self.min_free);
            if !fits {
                return false;
            }
            match self.reserved.compare_exchange_weak(held, held + len, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now_held) => held = now_held,
            }
        }
    }

    /// Bytes that must be freed for a fill of `len` more bytes to fit beside what other fills
    /// hold and `min_free`; 0 when it fits (or the OS cannot say).
    pub fn shortfall(&self, len: u64) -> u64 {
        let Some(free) = free_bytes(&self.tmp) else { return 0 };
        (self.reserved.load(Ordering::Acquire) + len + self.min_free).saturating_sub(free)
    }

    /// Give back bytes reserved for a fill (written, or no longer needed).
    pub fn release(&self, len: u64) {
        let _ = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held.saturating_sub(len)));
    }

    /// Bytes the cache filesystem can hold in all (its size), if the OS says.
    pub fn capacity(&self) -> Option<u64> {
        fs_size(&self.tmp)
    }

    /// Note a write error; if it says the filesystem is full, stop admitting for a while.
    pub fn note_write_error(&self, e: &StorageError) {
        if let StorageError::Io { source, .. } = e {
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                let until = nanos_now() / 1_000_000_000 + FULL_BACKOFF.as_secs();
                self.full_until.store(until, Ordering::Relaxed);
                tracing::warn!(dir = %self.root.display(), "cache filesystem is full; serving uncached for {}s", FULL_BACKOFF.as_secs());
            }
        }
    }

    /// A fresh temp file for a fill.
    pub fn create_temp(&self) -> Result<(File, PathBuf), StorageError> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}.part", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, e))?;
        Ok((file, path))
    }

    /// Make a complete fill visible under its key.
    pub(crate) fn commit(&self, write: &InflightWrite, mut header: EntryHeader) -> Result<(), StorageError> {
        let combined = &write.key;
        if self.fsync {
            write.file.sync_data().map_err(|e| StorageError::io(&write.tmp_path, e))?;
        }
        header.generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard_dir(combined);
        fs::create_dir_all(&shard).map_err(|e| StorageError::io(&shard, e))?;
        let body = self.body_path(combined, header.generation);
        let _guard = self.stripe(combined).lock();
        let previous = self.read_header(combined).ok().flatten();
        fs::rename(&write.tmp_path, &body).map_err(|e| StorageError::io(&body, e))?;
        if let Err(e) = self.write_meta(combined, &header) {
            let _ = fs::remove_file(&body);
            return Err(e);
        }
        if let Some(prev) = previous.filter(|p| p.generation != header.generation) {
            let _ = fs::remove_file(self.body_path(combined, prev.generation));
        }
        Ok(())
    }

    fn write_meta(&self, combined: &str, header: &EntryHeader) -> Result<(), StorageError> {
        let final_path = self.meta_path(combined);
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.shard_dir(combined).join(format!("{combined}.{n}.meta-tmp"));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&header.encode())?;
            if self.fsync {
                f.sync_data()?;
            }
            fs::rename(&tmp, &final_path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StorageError::io(&final_path, e));
        }
        Ok(())
    }

    fn read_header(&self, combined: &str) -> Result<Option<EntryHeader>, StorageError> {
        let path = self.meta_path(combined);
        let buf = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        EntryHeader::decode(&buf).map(Some).map_err(|reason| StorageError::Corrupt {
            path: path.display().to_string(),
            reason,
        })
    }

    /// The entry's header and an open body file, if a complete, intact entry exists.
    pub fn lookup(&self, combined: &str) -> Result<Option<(EntryHeader, File)>, StorageError> {
        let header = match self.read_header(combined) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(StorageError::Corrupt { path, reason }) => {
                tracing::warn!(%path, %reason, "discarding corrupt cache entry");
                self.remove(combined);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let path = self.body_path(combined, header.generation);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Replaced or evicted between reading the meta and opening the body.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| StorageError::io(&path, e))?.len();
        if len != header.body_len {
            tracing::warn!(path = %path.display(), len, expected = header.body_len, "discarding cache body of wrong length");
            self.remove(combined);
            return Ok(None);
        }
        Ok(Some((header, file)))
    }

    /// Remove an entry. Open readers keep their file; new lookups miss.
    pub fn remove(&self, combined: &str) -> bool {
        let _guard = self.stripe(combined).lock();
        let header = self.read_header(combined).ok().flatten();
        let removed = fs::remove_file(self.meta_path(combined)).is_ok();
        if let Some(h) = header {
            let _ = fs::remove_file(self.body_path(combined, h.generation));
        }
        removed
    }

    /// Replace an entry's pingora meta (after a revalidation), keeping its body.
    pub fn update_meta(&self, combined: &str, meta: &(Vec<u8>, Vec<u8>)) -> Result<bool, StorageError> {
        let _guard = self.stripe(combined).lock();
        let Some(mut header) = self.read_header(combined)? else {
            return Ok(false);
        };
        header.meta = meta.clone();
        self.write_meta(combined, &header)?;
        Ok(true)
    }
}

// (The statvfs fields' types differ between platforms.)
#[allow(clippy::unnecessary_cast)]
fn fs_size(path: &Path) -> Option<u64> {
    statvfs(path).map(|st| st.f_blocks as u64 * st.f_frsize as u64)
}

#[allow(clippy::unnecessary_cast)]
fn free_bytes(path: &Path) -> Option<u64> {
    statvfs(path).map(|st| st.f_bavail as u64 * st.f_frsize as u64)
}

fn statvfs(path: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st)
}

impl DiskTier {
    /// Every committed entry whose primary key starts with `prefix`: (hex name, key). Walks
    /// all meta files: for admin purges, never for the request path.
    pub fn matching(&self, prefix: &[u8]) -> Vec<(String, CompactCacheKey)> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(&self.objects) else { return out };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else { continue };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(h) = name.strip_suffix(".meta") else { continue };
                if let Ok(header) = fs::read(f.path()).map_err(|e| e.to_string()).and_then(|b| EntryHeader::decode(&b)) {
                    if header.primary.starts_with(prefix) {
                        out.push((h.to_string(), header.key));
                    }
                }
            }
        }
        out
    }
}

/// Read a whole (small) body.
pub fn read_all(file: &File, len: u64, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0).map_err(|e| StorageError::Corrupt {
        path: key.to_string(),
        reason: format!("short body: {e}"),
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_tamper_detection() {
        let h = EntryHeader {
            key: CompactCacheKey {
                primary: [7; 16],
                variance: Some(Box::new([9; 16])),
                user_tag: "repo".into(),
            },
            primary: b"repo\0/a/b".to_vec(),
            body_len: 12345,
            generation: 42,
            meta: (vec![1, 2, 3], vec![4, 5]),
        };
        let enc = h.encode();
        let dec = EntryHeader::decode(&enc).unwrap();
        assert_eq!((dec.key.clone(), dec.primary.clone()), (h.key.clone(), h.primary.clone()));
        assert_eq!((dec.body_len, dec.generation, dec.meta.clone()), (12345, 42, h.meta.clone()));
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x40;
            assert!(EntryHeader::decode(&bad).is_err(), "flip at {i} not detected");
        }
        assert!(EntryHeader::decode(&enc[..enc.len() - 1]).is_err());
    }
}
