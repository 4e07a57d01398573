//! In-process metadata: the default for a proxy without Redis (a fleet of one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{now_secs, Member, Metadata, MetadataError, MetadataWrite, ObjectInfo};

#[derive(Default)]
pub struct MemoryMetadata {
    members: Mutex<HashMap<Member, Instant>>,
    objects: Mutex<HashMap<(String, String), ObjectInfo>>,
    negative: Mutex<HashMap<(String, String), Instant>>,
    breakers: Mutex<HashMap<String, (u8, Instant)>>,
}

/// Entries kept at most; the index is advisory, so the oldest simply go.
const MAX_OBJECTS: usize = 100_000;

#[async_trait]
impl Metadata for MemoryMetadata {
    async fn heartbeat(&self, me: &Member, ttl: Duration) -> Result<Vec<Member>, MetadataError> {
        let now = Instant::now();
        let mut members = self.members.lock();
        members.insert(me.clone(), now + ttl);
        members.retain(|_, until| *until > now);
        let mut live: Vec<Member> = members.keys().cloned().collect();
        live.sort();
        Ok(live)
    }

    async fn leave(&self, me: &Member) -> Result<(), MetadataError> {
        self.members.lock().remove(me);
        Ok(())
    }

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
            MetadataWrite::Negative { repository, key, ttl } => {
                let mut negative = self.negative.lock();
                if negative.len() >= MAX_OBJECTS {
                    let now = Instant::now();
                    negative.retain(|_, until| *until > now);
                    if negative.len() >= MAX_OBJECTS {
                        negative.clear();
                    }
                }
                negative.insert((repository.clone(), key.clone()), Instant::now() + *ttl);
            }
            MetadataWrite::Breaker { repository, state, ttl } => {
                self.breakers.lock().insert(repository.clone(), (*state, Instant::now() + *ttl));
            }
        }
        Ok(())
    }

    async fn object(&self, repository: &str, key: &str) -> Result<Option<ObjectInfo>, MetadataError> {
        Ok(self.objects.lock().get(&(repository.to_string(), key.to_string())).cloned())
    }

    async fn is_negative(&self, repository: &str, key: &str) -> Result<bool, MetadataError> {
        Ok(self.negative.lock().get(&(repository.to_string(), key.to_string())).is_some_and(|until| *until > Instant::now()))
    }

    async fn breaker(&self, repository: &str) -> Result<Option<u8>, MetadataError> {
        Ok(self.breakers.lock().get(repository).filter(|(_, until)| *until > Instant::now()).map(|(s, _)| *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn members_expire_and_objects_collect_tiers_and_hits() {
        let m = MemoryMetadata::default();
        let a = Member { addr: "a:1".into() };
        let b = Member { addr: "b:1".into() };
        m.heartbeat(&b, Duration::ZERO).await.unwrap();
        assert_eq!(m.heartbeat(&a, Duration::from_secs(60)).await.unwrap(), vec![a.clone()], "b's heartbeat expired");
        for tier in ["disk:a:1", "origin", "disk:a:1"] {
            m.apply(&MetadataWrite::Stored { repository: "r".into(), key: "k".into(), size: 5, digest: Some("sha256:x".into()), tier: tier.into() }).await.unwrap();
        }
        m.apply(&MetadataWrite::Hit { repository: "r".into(), key: "k".into(), region: "eu".into() }).await.unwrap();
        let info = m.object("r", "k").await.unwrap().unwrap();
        assert_eq!((info.size, info.tiers.len(), info.hits), (5, 2, vec![("eu".into(), 1)]));
        m.apply(&MetadataWrite::Negative { repository: "r".into(), key: "gone".into(), ttl: Duration::from_secs(60) }).await.unwrap();
        assert!(m.is_negative("r", "gone").await.unwrap() && !m.is_negative("r", "k").await.unwrap());
        m.apply(&MetadataWrite::Breaker { repository: "r".into(), state: 1, ttl: Duration::from_secs(60) }).await.unwrap();
        assert_eq!(m.breaker("r").await.unwrap(), Some(1));
    }
}
