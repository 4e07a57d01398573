//! Digests learned from the documents a repository serves, for artefacts whose URL does not
//! carry one (npm tarballs, apt pool files, gems): the proxy reads each listing as it passes
//! (off the event loop when it is large) and verifies the artefacts against it later.

use std::collections::{HashMap, VecDeque};

use hangar_core::Digest;
use parking_lot::Mutex;

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
    /// An index of at most `capacity` digests.
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

    /// A listing has been read (or failed to be): stop counting it as pending.
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

    /// Whether no listing is being read right now (what [`DigestIndex::settle`] waits for).
    pub fn settled(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Wait (at most `limit`) until no listing is being read: a digest not known yet may be
    /// in one that has arrived but is still being unpacked.
    pub async fn settle(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.settled.notified();
            if self.settled() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// The digest learned for the artefact at cache key path `key`.
    pub fn get(&self, key: &str) -> Option<Digest> {
        self.inner.lock().map.get(key).map(|(d, _)| d.clone())
    }

    /// Learn `(cache key path, digest)` pairs, forgetting the least recently learned past capacity.
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
