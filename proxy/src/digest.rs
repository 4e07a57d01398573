//! Content digests: what an artefact's bytes must hash to before the cache keeps them.
//!
//! Registries publish a digest next to every artefact (PyPI's `#sha256=`, npm's
//! `dist.integrity`, cargo's `cksum`); the proxy hashes the body while it streams and refuses
//! to commit a cache entry whose bytes do not match.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use base64::Engine;
use parking_lot::Mutex;
use sha2::Digest as _;

#[derive(Clone, PartialEq, Eq)]
pub enum Digest {
    Sha1([u8; 20]),
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Digest::Sha1(d) => write!(f, "sha1:{}", hex::encode(d)),
            Digest::Sha256(d) => write!(f, "sha256:{}", hex::encode(d)),
            Digest::Sha512(d) => write!(f, "sha512:{}", hex::encode(d)),
        }
    }
}

impl Digest {
    pub fn sha256_hex(s: &str) -> Option<Self> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut d).ok()?;
        Some(Digest::Sha256(d))
    }

    /// `sha256:<hex>` or `sha512:<hex>` (as OCI writes digests, and as this type displays).
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':')? {
            ("sha256", hex) if hex.len() == 64 => Self::sha256_hex(hex),
            ("sha512", hex) if hex.len() == 128 => {
                let mut d = [0u8; 64];
                hex::decode_to_slice(hex, &mut d).ok()?;
                Some(Digest::Sha512(d))
            }
            _ => None,
        }
    }

    pub fn sha1_hex(s: &str) -> Option<Self> {
        let mut d = [0u8; 20];
        hex::decode_to_slice(s.trim(), &mut d).ok()?;
        Some(Digest::Sha1(d))
    }

    /// A Subresource Integrity value (`sha512-<base64>`), as npm's `dist.integrity`. With
    /// several, the strongest wins.
    pub fn from_sri(s: &str) -> Option<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut best: Option<Digest> = None;
        for item in s.split_whitespace() {
            let (alg, value) = item.split_once('-')?;
            let value = value.split('?').next().unwrap_or(value);
            let bytes = b64.decode(value).ok()?;
            let d = match alg {
                "sha512" => Digest::Sha512(bytes.try_into().ok()?),
                "sha256" => Digest::Sha256(bytes.try_into().ok()?),
                "sha1" => Digest::Sha1(bytes.try_into().ok()?),
                _ => continue,
            };
            if best.as_ref().is_none_or(|b| b.strength() < d.strength()) {
                best = Some(d);
            }
        }
        best
    }

    fn strength(&self) -> u8 {
        match self {
            Digest::Sha1(_) => 1,
            Digest::Sha256(_) => 2,
            Digest::Sha512(_) => 3,
        }
    }

    pub fn hasher(&self) -> Hasher {
        match self {
            Digest::Sha1(_) => Hasher::Sha1(sha1::Sha1::new()),
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A running hash of the algorithm of an expected [`Digest`].
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha1(h) => Digest::Sha1(h.finalize().into()),
            Hasher::Sha256(h) => Digest::Sha256(h.finalize().into()),
            Hasher::Sha512(h) => Digest::Sha512(h.finalize().into()),
        }
    }
}

/// Digests learned from documents the proxy has served (npm packuments, apt indexes), for
/// artefacts whose URL does not carry one. Bounded: the least recently learned entries are
/// forgotten first, and a forgotten digest is learned again when its document is next read.
pub struct DigestIndex {
    capacity: usize,
    inner: Mutex<Learned>,
    /// Listings still being read (off the event loop), and a wake-up when one finishes.
    pending: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
    /// Listings read since start (so a cached one is read once, on its first hit).
    learned: Mutex<std::collections::HashSet<String>>,
}

/// Digests with the generation of their last insert, and keys in insertion order with the
/// generation they were queued at (a re-learned key is queued again; its older place in the
/// queue no longer evicts it).
#[derive(Default)]
struct Learned {
    map: HashMap<String, (Digest, u64)>,
    order: VecDeque<(String, u64)>,
    generation: u64,
}

/// Listings read at once, each up to a few hundred MB unpacked.
pub const MAX_LEARNING: usize = 2;

impl DigestIndex {
    pub fn new(capacity: usize) -> Self {
        DigestIndex {
            capacity,
            inner: Mutex::new(Learned::default()),
            pending: Default::default(),
            settled: tokio::sync::Notify::new(),
            learned: Default::default(),
        }
    }

    /// Start reading a listing, unless [`MAX_LEARNING`] already are (a listing not read
    /// leaves its digests unknown, nothing worse). [`DigestIndex::settle`] waits for it
    /// until [`DigestIndex::end_learning`].
    pub fn try_begin_learning(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_LEARNING).then_some(n + 1)).is_ok()
    }

    pub fn end_learning(&self, listing: &str) {
        {
            let mut learned = self.learned.lock();
            if learned.len() >= 10_000 {
                learned.clear();
            }
            learned.insert(listing.to_string());
        }
        self.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.settled.notify_waiters();
    }

    /// Whether this process has read `listing` (the document's key) already.
    pub fn has_learned(&self, listing: &str) -> bool {
        self.learned.lock().contains(listing)
    }

    /// Wait (at most `limit`) until no listing is being read: a digest not known yet may be
    /// in one that has arrived but is still being unpacked.
    pub async fn settle(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.settled.notified();
            if self.pending.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Digest> {
        self.inner.lock().map.get(key).map(|(d, _)| d.clone())
    }

    pub fn insert_all(&self, entries: Vec<(String, Digest)>) {
        let mut guard = self.inner.lock();
        let Learned { map, order, generation } = &mut *guard;
        for (k, d) in entries {
            *generation += 1;
            map.insert(k.clone(), (d, *generation));
            order.push_back((k, *generation));
        }
        // Least recently learned first; stale queue places are skipped.
        while map.len() > self.capacity {
            let Some((old, queued)) = order.pop_front() else { break };
            if map.get(&old).is_some_and(|(_, current)| *current == queued) {
                map.remove(&old);
            }
        }
        // Re-learning queues keys again: drop the stale places now and then (amortised O(1)).
        if order.len() > 2 * self.capacity.max(1) {
            order.retain(|(k, queued)| map.get(k).is_some_and(|(_, current)| current == queued));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_their_published_forms() {
        let mut h = Digest::Sha256([0; 32]).hasher();
        h.update(b"abc");
        assert_eq!(h.finish(), Digest::sha256_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap());
        let sri = "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==";
        let mut h = Digest::from_sri(sri).unwrap().hasher();
        h.update(b"abc");
        assert_eq!(Some(h.finish()), Digest::from_sri(sri));
        assert!(Digest::from_sri("md5-abc").is_none());
        assert!(Digest::sha256_hex("xyz").is_none());
    }

    #[test]
    fn the_index_forgets_oldest_first() {
        let idx = DigestIndex::new(2);
        let d = Digest::Sha1([1; 20]);
        idx.insert_all(vec![("a".into(), d.clone()), ("b".into(), d.clone()), ("c".into(), d.clone())]);
        assert!(idx.get("a").is_none());
        assert_eq!(idx.get("c"), Some(d.clone()));
        // Learned again, `b` is now the newest: `c` goes first.
        idx.insert_all(vec![("b".into(), d.clone())]);
        idx.insert_all(vec![("e".into(), d.clone())]);
        assert!(idx.get("b").is_some() && idx.get("c").is_none() && idx.get("e").is_some());
        for _ in 0..10 {
            idx.insert_all(vec![("b".into(), d.clone()), ("e".into(), d.clone())]);
        }
        assert!(idx.inner.lock().order.len() <= 4, "stale queue places are dropped");
    }
}
