//! Fleet metadata and membership in Redis.
//!
//! Keys live under `hangar:<region>:`. Members are a sorted set scored by the time their
//! heartbeat expires; objects are hashes (`size`, `digest`, `last_access`, `tier:<name>`,
//! `hits:<region>`) that expire 30 days after their last write. Every call has a deadline, and
//! the connection re-establishes itself after Redis comes back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

use super::{now_secs, Metadata, MetadataError, MetadataWrite, ObjectInfo};
use crate::fleet::{Member, Membership, MembershipError};

/// Longest a metadata call may take; the request path never waits on one, but routing
/// refreshes and the writer should notice an unreachable Redis quickly.
const DEADLINE: Duration = Duration::from_millis(500);

/// An object's index entry goes this long after its last store or hit, so the index does
/// not outgrow what the fleet still holds.
const OBJECT_TTL_SECS: i64 = 30 * 86400;

/// A region's shared metadata and membership, in one Redis (or a Redis-compatible server).
pub struct RedisMetadata {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    prefix: String,
}

fn unavailable(e: impl std::fmt::Display) -> MetadataError {
    MetadataError::Unavailable(e.to_string())
}

impl RedisMetadata {
    /// Does not connect yet: a proxy starts (and serves) while Redis is down.
    pub fn new(url: &str, region: &str) -> Result<Self, MetadataError> {
        Ok(RedisMetadata {
            client: redis::Client::open(url).map_err(unavailable)?,
            conn: Mutex::new(None),
            prefix: format!("hangar:{region}:"),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, MetadataError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(DEADLINE, ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|_| MetadataError::Timeout)?
            .map_err(unavailable)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, MetadataError> {
        let mut c = self.conn().await?;
        tokio::time::timeout(DEADLINE, pipe.query_async::<T>(&mut c))
            .await
            .map_err(|_| MetadataError::Timeout)?
            .map_err(unavailable)
    }

    fn object_key(&self, repository: &str, key: &str) -> String {
        format!("{}obj:{repository}:{key}", self.prefix)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn membership_error(e: MetadataError) -> MembershipError {
    match e {
        MetadataError::Unavailable(why) => MembershipError::Unavailable(why),
        MetadataError::Timeout => MembershipError::Timeout,
    }
}

#[async_trait]
impl Membership for RedisMetadata {
    async fn heartbeat(&self, me: &Member, ttl: Duration) -> Result<Vec<Member>, MembershipError> {
        let key = format!("{}members", self.prefix);
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&key, &me.addr, now + ttl.as_millis() as u64)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .zrange(&key, 0, -1);
        let (addrs,): (Vec<String>,) = self.run(&pipe).await.map_err(membership_error)?;
        let mut members: Vec<Member> = addrs.into_iter().map(|addr| Member { addr }).collect();
        members.sort();
        Ok(members)
    }

    async fn leave(&self, me: &Member) -> Result<(), MembershipError> {
        let mut pipe = redis::pipe();
        pipe.zrem(format!("{}members", self.prefix), &me.addr).ignore();
        self.run::<()>(&pipe).await.map_err(membership_error)
    }
}

#[async_trait]
impl Metadata for RedisMetadata {
    async fn apply(&self, write: &MetadataWrite) -> Result<(), MetadataError> {
        let mut pipe = redis::pipe();
        match write {
            MetadataWrite::Stored { repository, key, size, digest, tier } => {
                let k = self.object_key(repository, key);
                pipe.hset(&k, "size", size).ignore().hset(&k, "last_access", now_secs()).ignore().hset(&k, format!("tier:{tier}"), 1).ignore();
                if let Some(d) = digest {
                    pipe.hset(&k, "digest", d).ignore();
                }
                pipe.expire(&k, OBJECT_TTL_SECS).ignore();
            }
            MetadataWrite::Hit { repository, key, region } => {
                let k = self.object_key(repository, key);
                pipe.hincr(&k, format!("hits:{region}"), 1).ignore().hset(&k, "last_access", now_secs()).ignore().expire(&k, OBJECT_TTL_SECS).ignore();
            }
        }
        self.run::<()>(&pipe).await
    }

    async fn object(&self, repository: &str, key: &str) -> Result<Option<ObjectInfo>, MetadataError> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.object_key(repository, key));
        let (fields,): (Vec<(String, String)>,) = self.run(&pipe).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut info = ObjectInfo::default();
        for (f, v) in fields {
            match f.as_str() {
                "size" => info.size = v.parse().unwrap_or(0),
                "digest" => info.digest = Some(v),
                "last_access" => info.last_access = v.parse().unwrap_or(0),
                _ => {
                    if let Some(t) = f.strip_prefix("tier:") {
                        info.tiers.push(t.to_string());
                    } else if let Some(r) = f.strip_prefix("hits:") {
                        info.hits.push((r.to_string(), v.parse().unwrap_or(0)));
                    }
                }
            }
        }
        info.tiers.sort();
        info.hits.sort();
        Ok(Some(info))
    }
}
