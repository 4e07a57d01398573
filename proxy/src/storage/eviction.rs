//! Disk-tier eviction: GreedyDual-Size-Frequency over real object sizes, persisted across
//! restarts.
//!
//! Why not pingora's LRU: a byte budget holds many more small objects than large ones, and
//! package traffic mixes both with popularity unrelated to size. GDSF (Cherkasova, 1998) keeps
//! each entry at priority `L + frequency / size^a` and evicts the lowest; `L` rises to each
//! evicted priority, so entries that stop being requested age out however popular they were.
//! A one-off large download leaves first, a popular small index file last. Measured in
//! bench/ (`zipf`) against pingora's LRU and against S3-FIFO on the same budget; see
//! bench/README.md. (pingora's sharded LRU also picks a random shard to evict from, so it is
//! only approximately LRU at small sizes.)
//!
//! Pingora calls `admit` when a fill finishes and `access` on hits, and purges what eviction
//! returns, but never calls `save`/`load`. [`DiskEviction::restore`] loads the saved state at
//! startup and reconciles it with what the startup scan found on disk: entries gone from disk
//! are dropped, entries written after the last save are admitted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::CompactCacheKey;
use pingora::cache::{CacheEntryKey, CacheEntryKeyRef};
use pingora::{Error, ErrorType, Result};

const STATE_FILE: &str = "gdsf.state";
const STATE_MAGIC: &[u8; 8] = b"HGRGDSF1";
/// `a` in `frequency / size^a`: 1 favours object hit ratio fully, 0 ignores size. On the
/// bench's Zipf trace a = 1 gave hit ratio 0.867 for 25.6 GiB from upstream, a = 0.5 gave
/// 0.862 for 24.0 GiB: nearly all of the hit ratio for fewer upstream bytes.
const SIZE_EXPONENT: f64 = 0.5;
/// Keeps priorities of large objects well above f64 resolution next to `L`.
const PRIORITY_SCALE: f64 = 1e9;
/// Evicted entries whose use counts are remembered (about 35 bytes each with the map's
/// overhead, 9 MB in all): past this, counts are halved, and the ones that reach zero
/// forgotten, until half the room is free, so old popularity fades. (Not saved with the
/// state: a restart starts it empty.)
const HISTORY_LIMIT: usize = 1 << 18;

/// One tracked entry.
struct Entry {
    key: CacheEntryKey,
    weight: usize,
    freq: u32,
    /// Current position in `order`.
    priority: Priority,
}

/// GreedyDual-Size-Frequency priority, ordered; ties go to the older entry first.
#[derive(Debug, Clone, Copy)]
struct Priority {
    value: f64,
    seq: u64,
}

impl PartialEq for Priority {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Priority {}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.total_cmp(&other.value).then(self.seq.cmp(&other.seq))
    }
}

/// GDSF: evict the entry with the lowest `inflation + freq / size^SIZE_EXPONENT`; the
/// inflation value rises to each evicted priority, so entries that stop being used age out.
#[derive(Default)]
struct Gdsf {
    limit: usize,
    total: usize,
    inflation: f64,
    seq: u64,
    entries: HashMap<u64, Entry>,
    order: std::collections::BTreeMap<Priority, u64>,
    /// Use counts of evicted entries: an object that comes back starts from the count it
    /// had, not from one, so a popular object evicted by a burst of one-off large downloads
    /// does not then lose to each of them in turn. On the bench's Zipf trace this raised the
    /// byte hit ratio by about a point at the same object hit ratio (bench/README.md).
    history: HashMap<u64, u32>,
    evicted_items: usize,
    evicted_size: usize,
}

fn id(key: &CompactCacheKey) -> u64 {
    let mut h = u64::from_le_bytes(key.primary[..8].try_into().expect("16-byte hash"));
    if let Some(v) = &key.variance {
        h ^= u64::from_le_bytes(v[..8].try_into().expect("16-byte hash")).rotate_left(17);
    }
    h
}

/// GDSF's priority: the inflation so far plus uses over size^SIZE_EXPONENT; `seq` orders ties
/// (older first).
fn priority(inflation: f64, seq: u64, freq: u32, weight: usize) -> Priority {
    let size = (weight.max(1) as f64).powf(SIZE_EXPONENT);
    Priority { value: inflation + freq as f64 * PRIORITY_SCALE / size, seq }
}

impl Gdsf {
    fn priority(&mut self, freq: u32, weight: usize) -> Priority {
        self.seq += 1;
        priority(self.inflation, self.seq, freq, weight)
    }

    /// Track `key` (or count a use and update its weight if tracked), without evicting.
    fn insert(&mut self, key: CacheEntryKey, weight: usize) {
        let k = id(key.key());
        let (freq, old_weight) = match self.entries.get(&k) {
            Some(e) => {
                self.order.remove(&e.priority);
                (e.freq.saturating_add(1), e.weight)
            }
            None => (self.history.remove(&k).unwrap_or(0).saturating_add(1), 0),
        };
        let priority = self.priority(freq, weight);
        self.order.insert(priority, k);
        self.total = self.total - old_weight + weight;
        self.entries.insert(k, Entry { key, weight, freq, priority });
    }

    fn take(&mut self, k: u64) -> Option<Entry> {
        let e = self.entries.remove(&k)?;
        self.order.remove(&e.priority);
        self.total -= e.weight;
        Some(e)
    }

    /// Remember an evicted entry's use count (not one removed on purpose: a purge or an
    /// object gone from disk says nothing about demand).
    fn remember(&mut self, k: u64, freq: u32) {
        // Halving until half is free keeps these passes (under the lock hits take) rare.
        if self.history.len() >= HISTORY_LIMIT {
            while self.history.len() > HISTORY_LIMIT / 2 {
                self.history.retain(|_, f| {
                    *f /= 2;
                    *f > 0
                });
            }
        }
        self.history.insert(k, freq);
    }

    fn admit(&mut self, key: CacheEntryKey, weight: usize) -> Vec<CacheEntryKey> {
        self.insert(key, weight);
        self.evict_to_limit()
    }

    /// Evict the lowest-priority entries until `bytes` are freed (or nothing is left).
    fn evict_bytes(&mut self, bytes: usize) -> Vec<CacheEntryKey> {
        let (mut freed, mut evicted) = (0, Vec::new());
        while freed < bytes {
            let Some((&p, &k)) = self.order.iter().next() else { break };
            self.inflation = self.inflation.max(p.value);
            let e = self.take(k).expect("ordered entries are tracked");
            self.remember(k, e.freq);
            self.evicted_items += 1;
            self.evicted_size += e.weight;
            freed += e.weight;
            evicted.push(e.key);
        }
        evicted
    }

    fn evict_to_limit(&mut self) -> Vec<CacheEntryKey> {
        let mut evicted = Vec::new();
        while self.total > self.limit {
            let Some((&p, &k)) = self.order.iter().next() else { break };
            self.inflation = self.inflation.max(p.value);
            let e = self.take(k).expect("ordered entries are tracked");
            self.remember(k, e.freq);
            self.evicted_items += 1;
            self.evicted_size += e.weight;
            evicted.push(e.key);
        }
        evicted
    }

    /// A hit. An entry storage has but eviction lost track of is tracked again; it does not
    /// evict here, because pingora purges only what `admit` returns. The next fill does.
    fn access(&mut self, key: &CacheEntryKey, weight: usize) -> bool {
        let k = id(key.key());
        // The usual case, a tracked entry, is updated in place: one lookup, no key cloned.
        let Some(e) = self.entries.get_mut(&k) else {
            self.insert(key.clone(), weight);
            return false;
        };
        self.seq += 1;
        self.order.remove(&e.priority);
        e.freq = e.freq.saturating_add(1);
        e.priority = priority(self.inflation, self.seq, e.freq, e.weight);
        self.order.insert(e.priority, k);
        true
    }

    /// Entries from first to last to be evicted, for persistence.
    fn ordered(&self) -> impl Iterator<Item = &Entry> {
        self.order.values().filter_map(|k| self.entries.get(k))
    }
}

pub struct DiskEviction {
    inner: Mutex<Gdsf>,
    state_dir: PathBuf,
}

fn encode_key(out: &mut Vec<u8>, key: &CompactCacheKey) {
    out.extend_from_slice(&key.primary);
    match &key.variance {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v[..]);
        }
        None => out.push(0),
    }
    let tag = key.user_tag.as_bytes();
    let n = tag.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&tag[..n]);
}

struct SavedEntry {
    freq: u32,
    weight: usize,
    priority: f64,
    key: CompactCacheKey,
}

fn decode_state(buf: &[u8]) -> Option<(f64, Vec<SavedEntry>)> {
    let mut r = buf.strip_prefix(STATE_MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        r = b;
        Some(a)
    };
    let inflation = f64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let freq = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let weight = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
        let priority = f64::from_le_bytes(take(8)?.try_into().ok()?);
        let primary: [u8; 16] = take(16)?.try_into().ok()?;
        let variance = match take(1)?[0] {
            0 => None,
            _ => Some(Box::new(<[u8; 16]>::try_from(take(16)?).ok()?)),
        };
        let n = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let user_tag = std::str::from_utf8(take(n)?).ok()?.into();
        out.push(SavedEntry { freq, weight, priority, key: CompactCacheKey { primary, variance, user_tag } });
    }
    (inflation.is_finite()).then_some((inflation, out))
}

impl DiskEviction {
    pub fn new(limit_bytes: u64, state_dir: &Path) -> Self {
        DiskEviction {
            inner: Mutex::new(Gdsf { limit: limit_bytes as usize, ..Gdsf::default() }),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Load the saved state and reconcile it with the entries found on disk. Returns the
    /// entries that no longer fit the budget (it may have shrunk), for the caller to purge.
    pub async fn restore(&self, on_disk: Vec<(CompactCacheKey, usize)>) -> Vec<CacheEntryKey> {
        if let Err(e) = self.load(&self.state_dir.to_string_lossy()).await {
            tracing::warn!(error = %e, "could not load saved eviction state; rebuilding from disk");
        }
        let mut inner = self.inner.lock();
        let present: HashMap<u64, (CompactCacheKey, usize)> = on_disk.into_iter().map(|(k, w)| (id(&k), (k, w))).collect();
        let gone: Vec<u64> = inner.entries.keys().filter(|k| !present.contains_key(k)).copied().collect();
        for k in gone {
            inner.take(k);
        }
        for (k, (key, weight)) in present {
            if !inner.entries.contains_key(&k) {
                inner.insert(CacheEntryKey::key_only(key), weight);
            }
        }
        inner.evict_to_limit()
    }

    /// Choose entries to remove so that a fill of `len` bytes, `shortfall` of which the
    /// filesystem lacks, fits (pingora evicts only after a fill, so a full disk would otherwise
    /// admit nothing new). Nothing for a fill larger than the whole budget. The caller purges
    /// what returns.
    pub fn make_room(&self, len: u64, shortfall: u64) -> Vec<CacheEntryKey> {
        let mut inner = self.inner.lock();
        if len as usize > inner.limit || shortfall == 0 {
            return Vec::new();
        }
        inner.evict_bytes(shortfall as usize)
    }

    pub async fn persist(&self) {
        match self.save(&self.state_dir.to_string_lossy()).await {
            Ok(()) => tracing::debug!(dir = %self.state_dir.display(), "saved eviction state"),
            Err(e) => tracing::warn!(error = %e, "could not save eviction state"),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let inner = self.inner.lock();
        let mut out = Vec::with_capacity(24 + inner.entries.len() * 64);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&inner.inflation.to_le_bytes());
        out.extend_from_slice(&(inner.entries.len() as u64).to_le_bytes());
        for e in inner.ordered() {
            out.extend_from_slice(&e.freq.to_le_bytes());
            out.extend_from_slice(&(e.weight as u64).to_le_bytes());
            out.extend_from_slice(&e.priority.value.to_le_bytes());
            encode_key(&mut out, e.key.key());
        }
        out
    }
}

fn io_err(context: &'static str, e: std::io::Error) -> Box<Error> {
    Error::because(ErrorType::InternalError, context, e)
}

#[async_trait]
impl EvictionManager for DiskEviction {
    fn total_size(&self) -> usize {
        self.inner.lock().total
    }
    fn total_items(&self) -> usize {
        self.inner.lock().entries.len()
    }
    fn evicted_size(&self) -> usize {
        self.inner.lock().evicted_size
    }
    fn evicted_items(&self) -> usize {
        self.inner.lock().evicted_items
    }
    fn admit(&self, item: CacheEntryKey, size: usize, _fresh_until: SystemTime) -> Vec<CacheEntryKey> {
        self.inner.lock().admit(item, size)
    }
    fn increment_weight(&self, item: &CacheEntryKey, delta: usize, max_weight: Option<usize>) -> Vec<CacheEntryKey> {
        let mut inner = self.inner.lock();
        // A fill that stored nothing (see `TieredMissHandler::finish`) leaves nothing to track.
        if delta == 0 && !inner.entries.contains_key(&id(item.key())) {
            return Vec::new();
        }
        let weight = inner.entries.get(&id(item.key())).map_or(0, |e| e.weight) + delta;
        let weight = max_weight.map_or(weight, |m| weight.min(m));
        inner.admit(item.clone(), weight)
    }
    fn remove(&self, item: CacheEntryKeyRef<'_>) {
        self.inner.lock().take(id(item.key()));
    }
    fn access(&self, item: &CacheEntryKey, size: usize, _fresh_until: SystemTime) -> bool {
        self.inner.lock().access(item, size)
    }
    fn peek(&self, item: &CacheEntryKey) -> bool {
        self.inner.lock().entries.contains_key(&id(item.key()))
    }
    async fn save(&self, dir_path: &str) -> Result<()> {
        let data = self.snapshot();
        let dir = PathBuf::from(dir_path);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!("{STATE_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_data()?;
            std::fs::rename(&tmp, dir.join(STATE_FILE))
        })
        .await
        .map_err(|e| Error::because(ErrorType::InternalError, "saving eviction state", e))?
        .map_err(|e| io_err("saving eviction state", e))
    }
    async fn load(&self, dir_path: &str) -> Result<()> {
        let path = PathBuf::from(dir_path).join(STATE_FILE);
        let buf = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("reading eviction state", e)),
        };
        let (inflation, records) = decode_state(&buf)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, format!("{} is corrupt", path.display())))?;
        let mut inner = self.inner.lock();
        inner.inflation = inner.inflation.max(inflation);
        // Saved in eviction order; re-inserting in that order keeps ties in the same order.
        for e in records {
            let k = id(&e.key);
            if inner.entries.contains_key(&k) || !e.priority.is_finite() {
                continue;
            }
            inner.seq += 1;
            let priority = Priority { value: e.priority, seq: inner.seq };
            inner.order.insert(priority, k);
            inner.total += e.weight;
            inner.entries.insert(k, Entry { key: CacheEntryKey::key_only(e.key), weight: e.weight, freq: e.freq, priority });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheEntryKey {
        CacheEntryKey::key_only(CompactCacheKey { primary: [n; 16], variance: None, user_tag: "t".into() })
    }

    fn admit(m: &DiskEviction, n: u8, w: usize) -> Vec<u8> {
        m.admit(key(n), w, SystemTime::now()).into_iter().map(|k| k.key().primary[0]).collect()
    }

    #[test]
    fn popular_objects_outlast_a_scan_larger_than_the_cache() {
        let m = DiskEviction::new(1000, Path::new("/nonexistent"));
        for n in 0..5 {
            assert!(admit(&m, n, 100).is_empty());
        }
        for n in [0, 1, 0, 1] {
            assert!(m.access(&key(n), 100, SystemTime::now()));
        }
        let mut evicted = Vec::new();
        for n in 10..25 {
            evicted.extend(admit(&m, n, 100));
        }
        assert!(m.peek(&key(0)) && m.peek(&key(1)), "the scan did not flush the popular objects");
        assert!(evicted.contains(&2) && evicted.contains(&10));
        assert!(m.total_size() <= 1000);
    }

    #[test]
    fn a_large_one_off_leaves_before_small_objects() {
        let m = DiskEviction::new(1000, Path::new("/nonexistent"));
        for n in 0..4 {
            admit(&m, n, 100);
        }
        admit(&m, 9, 600); // fills the budget
        assert_eq!(admit(&m, 5, 100), vec![9], "one large cold object frees room for many small ones");
    }

    #[test]
    fn equal_entries_leave_oldest_first_and_unused_ones_age_out() {
        let m = DiskEviction::new(300, Path::new("/nonexistent"));
        for n in 0..3 {
            admit(&m, n, 100);
        }
        m.access(&key(0), 100, SystemTime::now());
        assert_eq!(admit(&m, 3, 100), vec![1]);
        // 0 was popular once; a long run of new objects still ages it out eventually.
        let mut gone = false;
        for n in 10..30 {
            gone |= admit(&m, n, 100).contains(&0);
        }
        assert!(gone);
    }

    #[test]
    fn an_evicted_object_comes_back_with_the_uses_it_had() {
        let m = DiskEviction::new(300, Path::new("/nonexistent"));
        admit(&m, 0, 100);
        for _ in 0..5 {
            m.access(&key(0), 100, SystemTime::now());
        }
        // A long run of one-off objects ages the popular one out in the end.
        let mut n = 10;
        while !admit(&m, n, 100).contains(&0) {
            n += 1;
            assert!(n < 200, "never aged out");
        }
        admit(&m, 0, 100);
        // Back with its six uses (plus this one), it outlasts the next newcomers of its size;
        // starting from one use, it would be the third to go.
        for newcomer in n + 1..n + 4 {
            assert!(!admit(&m, newcomer, 100).contains(&0));
        }
        assert!(m.peek(&key(0)));
        // Purged on purpose: that says nothing about demand, so nothing is remembered.
        m.remove(CacheEntryKeyRef::from_entry_id(&key(0).into_key(), None));
        assert!(!m.inner.lock().history.contains_key(&id(key(0).key())));
    }

    #[test]
    fn remembered_uses_are_bounded_and_fade() {
        let mut g = Gdsf { limit: 0, ..Gdsf::default() };
        for k in 0..HISTORY_LIMIT as u64 {
            g.remember(k, if k == 7 { 8 } else { 1 });
        }
        g.remember(u64::MAX, 1);
        assert_eq!(g.history.len(), 2, "counts of one fade to nothing when the history is full");
        assert_eq!(g.history.get(&7), Some(&4), "others are halved");
    }

    #[tokio::test]
    async fn state_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let m = DiskEviction::new(10_000, dir.path());
        for n in 0..4 {
            admit(&m, n, 100);
        }
        m.access(&key(2), 100, SystemTime::now());
        m.persist().await;
        let restored = DiskEviction::new(10_000, dir.path());
        let on_disk = (0..3).map(|n| (key(n).into_key(), 100)).chain([(key(9).into_key(), 50)]).collect();
        assert!(restored.restore(on_disk).await.is_empty());
        assert!(restored.peek(&key(0)) && restored.peek(&key(2)) && restored.peek(&key(9)));
        assert!(!restored.peek(&key(3)), "an entry gone from disk is dropped");
        assert_eq!(restored.total_size(), 350);
        // The popular entry kept its standing: it is evicted last.
        let small = DiskEviction::new(10_000, dir.path());
        small.restore((0..3).map(|n| (key(n).into_key(), 100)).collect()).await;
        small.inner.lock().limit = 100;
        let evicted: Vec<u8> = small.inner.lock().evict_to_limit().into_iter().map(|k| k.key().primary[0]).collect();
        assert_eq!(evicted, vec![0, 1]);
    }
}
