//! In-process metadata: the default for a proxy without Redis (a fleet of one).

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{now_secs, Metadata, MetadataError, MetadataWrite, ObjectInfo};

/// The object index in this process's memory, bounded to [`MAX_OBJECTS`].
#[derive(Default)]
pub struct MemoryMetadata {
    objects: Mutex<HashMap<(String, String), ObjectInfo>>,
}

/// Entries kept at most; the index is advisory, so past this it starts over.
const MAX_OBJECTS: usize = 100_000;

#[async_trait]
impl Metadata for MemoryMetadata {
    async fn apply(&self, write: &MetadataWrite) -> Result<(), MetadataError> {
        match write {
            MetadataWrite::Stored { repository, key, size, digest, tier } => {
                let mut objects = self.objects.lock();
                if objects.len() >= MAX_OBJECTS {
                    objects.clear();
                }
                let info = objects.entry((repository.clone(), key.clone())).or_default();
                info.size = *size;
                if digest.is_some() {
                    info.digest = digest.clone();
                }
                if !info.tiers.contains(tier) {
                    info.tiers.push(tier.clone());
                }
                info.last_access = now_secs();
            }
            MetadataWrite::Hit { repository, key, region } => {
                if let Some(info) = self.objects.lock().get_mut(&(repository.clone(), key.clone())) {
                    info.last_access = now_secs();
                    match info.hits.iter_mut().find(|(r, _)| r == region) {
                        Some((_, n)) => *n += 1,
                        None => info.hits.push((region.clone(), 1)),
                    }
                }
            }
        }
        Ok(())
    }

    async fn object(&self, repository: &str, key: &str) -> Result<Option<ObjectInfo>, MetadataError> {
        Ok(self.objects.lock().get(&(repository.to_string(), key.to_string())).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_collect_tiers_and_hits() {
        let m = MemoryMetadata::default();
        for tier in ["disk:a:1", "origin", "disk:a:1"] {
            m.apply(&MetadataWrite::Stored { repository: "r".into(), key: "k".into(), size: 5, digest: Some("sha256:x".into()), tier: tier.into() }).await.unwrap();
        }
        m.apply(&MetadataWrite::Hit { repository: "r".into(), key: "k".into(), region: "eu".into() }).await.unwrap();
        let info = m.object("r", "k").await.unwrap().unwrap();
        assert_eq!((info.size, info.tiers.len(), info.hits), (5, 2, vec![("eu".into(), 1)]));
    }
}
