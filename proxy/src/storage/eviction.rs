//! Disk-tier eviction: S3-FIFO over real object sizes, persisted across restarts.
//!
//! Why not pingora's LRU: package-registry traffic is full of one-hit wonders (a CI job pulls
//! a dependency once, a scan walks an index), and under LRU each of them pushes a popular
//! object out. S3-FIFO (Yang et al., SOSP '23) admits new objects to a small probationary FIFO
//! (10% of the budget); only objects requested again while there graduate to the main FIFO,
//! where a hit buys another lap instead of a move to the front. A ghost list of recently
//! evicted keys lets an object that comes back skip probation. Measured in bench/ (`zipf`), it
//! raised the object hit ratio over LRU on the same budget; pingora's sharded LRU also picks
//! a random shard to evict from, so it is only approximately LRU at small sizes.
//!
//! Pingora calls `admit` when a fill finishes and `access` on hits, and purges what eviction
//! returns, but never calls `save`/`load`. [`DiskEviction::restore`] loads the saved queues at
//! startup and reconciles them with what the startup scan found on disk: entries gone from
//! disk are dropped, entries written after the last save are admitted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::CompactCacheKey;
use pingora::cache::{CacheEntryKey, CacheEntryKeyRef};
use pingora::{Error, ErrorType, Result};

const STATE_FILE: &str = "s3fifo.state";
const STATE_MAGIC: &[u8; 8] = b"HGRS3F01";
/// Share of the budget the probationary queue may hold before it is evicted from first.
const SMALL_SHARE: usize = 10;
const MAX_FREQ: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Entry {
    key: CacheEntryKey,
    weight: usize,
    freq: u8,
    queue: Queue,
    /// Bumped when the entry moves, so stale queue slots can be recognised and skipped.
    generation: u32,
}

#[derive(Default)]
struct S3Fifo {
    limit: usize,
    entries: HashMap<u64, Entry>,
    small: VecDeque<(u64, u32)>,
    main: VecDeque<(u64, u32)>,
    small_weight: usize,
    main_weight: usize,
    ghost: HashSet<u64>,
    ghost_order: VecDeque<u64>,
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

impl S3Fifo {
    fn total(&self) -> usize {
        self.small_weight + self.main_weight
    }

    fn push(&mut self, k: u64, entry: Entry) {
        let slot = (k, entry.generation);
        match entry.queue {
            Queue::Small => {
                self.small_weight += entry.weight;
                self.small.push_back(slot);
            }
            Queue::Main => {
                self.main_weight += entry.weight;
                self.main.push_back(slot);
            }
        }
        self.entries.insert(k, entry);
    }

    fn take(&mut self, k: u64) -> Option<Entry> {
        let e = self.entries.remove(&k)?;
        match e.queue {
            Queue::Small => self.small_weight -= e.weight,
            Queue::Main => self.main_weight -= e.weight,
        }
        Some(e)
    }

    /// Track `key` (or update its weight and count a use if tracked), without evicting.
    fn insert(&mut self, key: CacheEntryKey, weight: usize) {
        let k = id(key.key());
        if let Some(e) = self.entries.get_mut(&k) {
            // Keeps its place in its queue; only the weight and use count change.
            let old = std::mem::replace(&mut e.weight, weight);
            e.freq = (e.freq + 1).min(MAX_FREQ);
            let total = match e.queue {
                Queue::Small => &mut self.small_weight,
                Queue::Main => &mut self.main_weight,
            };
            *total = *total - old + weight;
        } else {
            let queue = if self.ghost.remove(&k) { Queue::Main } else { Queue::Small };
            self.push(k, Entry { key, weight, freq: 0, queue, generation: 0 });
        }
    }

    fn admit(&mut self, key: CacheEntryKey, weight: usize) -> Vec<CacheEntryKey> {
        self.insert(key, weight);
        self.evict_to_limit()
    }

    fn evict_to_limit(&mut self) -> Vec<CacheEntryKey> {
        let mut evicted = Vec::new();
        while self.total() > self.limit {
            let from_small = self.small_weight > self.limit / SMALL_SHARE || self.main.is_empty();
            let queue = if from_small { &mut self.small } else { &mut self.main };
            let Some((k, g)) = queue.pop_front() else { break };
            let current = self.entries.get(&k).is_some_and(|e| e.generation == g && e.queue == if from_small { Queue::Small } else { Queue::Main });
            if !current {
                continue; // stale slot of a removed or moved entry
            }
            let mut e = self.take(k).expect("checked above");
            if from_small && e.freq > 0 {
                // Requested again while on probation: graduate.
                e.queue = Queue::Main;
                e.freq = 0;
                e.generation = e.generation.wrapping_add(1);
                self.push(k, e);
            } else if !from_small && e.freq > 0 {
                // A hit in main buys one more lap.
                e.freq -= 1;
                e.generation = e.generation.wrapping_add(1);
                self.push(k, e);
            } else {
                if from_small {
                    self.remember_ghost(k);
                }
                self.evicted_items += 1;
                self.evicted_size += e.weight;
                evicted.push(e.key);
            }
        }
        evicted
    }

    fn remember_ghost(&mut self, k: u64) {
        if self.ghost.insert(k) {
            self.ghost_order.push_back(k);
        }
        let cap = self.entries.len().max(64);
        while self.ghost_order.len() > cap {
            if let Some(old) = self.ghost_order.pop_front() {
                self.ghost.remove(&old);
            }
        }
    }

    /// A hit. An entry storage has but eviction lost track of is tracked again; it does not
    /// evict here, because pingora purges only what `admit` returns. The next fill does.
    fn access(&mut self, key: &CacheEntryKey, weight: usize) -> bool {
        let k = id(key.key());
        if let Some(e) = self.entries.get_mut(&k) {
            e.freq = (e.freq + 1).min(MAX_FREQ);
            return true;
        }
        self.insert(key.clone(), weight);
        false
    }

    /// Entries in eviction order (main first, then small), for persistence.
    fn ordered(&self) -> Vec<&Entry> {
        let mut seen = HashSet::new();
        self.main
            .iter()
            .chain(self.small.iter())
            .filter_map(|(k, g)| self.entries.get(k).filter(|e| e.generation == *g))
            .filter(|e| seen.insert(id(e.key.key())))
            .collect()
    }
}

pub struct DiskEviction {
    inner: Mutex<S3Fifo>,
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

fn decode_state(buf: &[u8]) -> Option<Vec<(Queue, u8, usize, CompactCacheKey)>> {
    let mut r = buf.strip_prefix(STATE_MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        r = b;
        Some(a)
    };
    let count = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let queue = match take(1)?[0] {
            0 => Queue::Small,
            _ => Queue::Main,
        };
        let freq = take(1)?[0].min(MAX_FREQ);
        let weight = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
        let primary: [u8; 16] = take(16)?.try_into().ok()?;
        let variance = match take(1)?[0] {
            0 => None,
            _ => Some(Box::new(<[u8; 16]>::try_from(take(16)?).ok()?)),
        };
        let n = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let user_tag = std::str::from_utf8(take(n)?).ok()?.into();
        out.push((queue, freq, weight, CompactCacheKey { primary, variance, user_tag }));
    }
    Some(out)
}

impl DiskEviction {
    pub fn new(limit_bytes: u64, state_dir: &Path) -> Self {
        DiskEviction {
            inner: Mutex::new(S3Fifo { limit: limit_bytes as usize, ..S3Fifo::default() }),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Load the saved queues and reconcile them with the entries found on disk. Returns the
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
        let mut evicted = Vec::new();
        for (k, (key, weight)) in present {
            if !inner.entries.contains_key(&k) {
                evicted.extend(inner.admit(CacheEntryKey::key_only(key), weight));
            }
        }
        evicted.extend(inner.evict_to_limit());
        evicted
    }

    pub async fn persist(&self) {
        match self.save(&self.state_dir.to_string_lossy()).await {
            Ok(()) => tracing::debug!(dir = %self.state_dir.display(), "saved eviction state"),
            Err(e) => tracing::warn!(error = %e, "could not save eviction state"),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let inner = self.inner.lock();
        let ordered = inner.ordered();
        let mut out = Vec::with_capacity(16 + ordered.len() * 48);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&(ordered.len() as u64).to_le_bytes());
        for e in ordered {
            out.push(if e.queue == Queue::Small { 0 } else { 1 });
            out.push(e.freq);
            out.extend_from_slice(&(e.weight as u64).to_le_bytes());
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
        self.inner.lock().total()
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
        let k = id(item.key());
        let weight = inner.entries.get(&k).map_or(0, |e| e.weight) + delta;
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
        let records = decode_state(&buf)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, format!("{} is corrupt", path.display())))?;
        let mut inner = self.inner.lock();
        for (queue, freq, weight, key) in records {
            let k = id(&key);
            if !inner.entries.contains_key(&k) {
                inner.push(k, Entry { key: CacheEntryKey::key_only(key), weight, freq, queue, generation: 0 });
            }
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
    fn one_hit_wonders_leave_before_popular_objects() {
        let m = DiskEviction::new(1000, Path::new("/nonexistent"));
        for n in 0..5 {
            assert!(admit(&m, n, 100).is_empty());
        }
        // 0 and 1 are popular.
        for n in [0, 1, 0, 1] {
            assert!(m.access(&key(n), 100, SystemTime::now()));
        }
        // A scan of one-hit wonders, much larger than the cache.
        let mut evicted = Vec::new();
        for n in 10..40 {
            evicted.extend(admit(&m, n, 100));
        }
        assert!(m.peek(&key(0)) && m.peek(&key(1)), "the scan did not flush the popular objects");
        assert!(evicted.contains(&2) && evicted.contains(&10));
        assert!(m.total_size() <= 1000);
    }

    #[test]
    fn a_returning_object_skips_probation() {
        let m = DiskEviction::new(300, Path::new("/nonexistent"));
        for n in 0..3 {
            admit(&m, n, 100);
        }
        assert_eq!(admit(&m, 3, 100), vec![0]); // 0 never re-requested: out, remembered as ghost
        admit(&m, 0, 100); // comes back: straight to main
        for n in 4..8 {
            admit(&m, n, 100);
        }
        assert!(m.peek(&key(0)));
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
        assert!(restored.access(&key(2), 100, SystemTime::now()));
    }
}
