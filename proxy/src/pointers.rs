//! What mutable names (registry tags) last pointed to.
//!
//! A tag is resolved to a digest by asking the upstream (see `proxy/pointer.rs`); the answer
//! is kept here so that, for `metadata_ttl`, the upstream is not asked again, and so that when
//! the upstream fails the tag still leads to the manifest it last named.
//!
//! The index is in memory and bounded: at capacity, an arbitrary entry makes room (a forgotten
//! tag costs one HEAD, or, during an outage, that tag).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::digest::Digest;

pub struct PointerIndex {
    capacity: usize,
    entries: Mutex<HashMap<String, (Digest, Instant)>>,
}

impl PointerIndex {
    pub fn new(capacity: usize) -> Self {
        PointerIndex { capacity: capacity.max(1), entries: Mutex::new(HashMap::new()) }
    }

    /// The digest `key` last pointed to, and how long ago the upstream said so.
    pub fn get(&self, key: &str) -> Option<(Digest, Duration)> {
        self.entries.lock().get(key).map(|(d, at)| (d.clone(), at.elapsed()))
    }

    pub fn insert(&self, key: String, digest: Digest) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(key, (digest, Instant::now()));
    }

    pub fn remove(&self, key: &str) {
        self.entries.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_capacity() {
        let d = |b: u8| Digest::Sha256([b; 32]);
        let index = PointerIndex::new(2);
        index.insert("a".into(), d(1));
        index.insert("b".into(), d(2));
        index.insert("a".into(), d(3));
        assert_eq!(index.get("a").map(|(x, _)| x), Some(d(3)));
        index.insert("c".into(), d(4));
        assert_eq!(["a", "b", "c"].iter().filter(|k| index.get(k).is_some()).count(), 2);
        assert!(index.get("c").is_some());
        index.remove("c");
        assert!(index.get("c").is_none());
    }
}
