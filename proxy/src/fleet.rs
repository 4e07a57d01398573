//! A region's proxies acting as one cache.
//!
//! Every proxy heartbeats into the shared [`Metadata`](crate::metadata::Metadata) and keeps
//! the list of live members. A miss on a key is sent to the key's owner (rendezvous hashing
//! over live members) instead of the upstream, so however many proxies miss at once, one
//! proxy fetches it, once. An owner that cannot be reached is skipped for the next one, and
//! after the owners comes this proxy's own path (origin, then upstream). When the metadata
//! store is unreachable for longer than a member's TTL, a proxy acts alone rather than route
//! to members it can no longer see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prometheus::IntGauge;

use crate::metadata::{owners, Member, Metadata, MetadataWriter};

/// The request header a proxy sets when it forwards a miss to the key's owner, so the owner
/// serves it itself instead of forwarding again.
pub const HOP_HEADER: &str = "x-hangar-fleet-hop";

/// Owners tried before this proxy's own path.
const MAX_PEER_HOPS: usize = 2;

pub struct Fleet {
    pub me: Member,
    pub region: String,
    /// Whether metadata is shared with other proxies (Redis), not this process's alone.
    pub shared: bool,
    store: Arc<dyn Metadata>,
    pub writer: MetadataWriter,
    members: RwLock<Arc<Vec<Member>>>,
    last_heartbeat: Mutex<Instant>,
    heartbeat: Duration,
    member_ttl: Duration,
    members_gauge: IntGauge,
}

impl Fleet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(me: Member, region: String, shared: bool, store: Arc<dyn Metadata>, writer: MetadataWriter, heartbeat: Duration, member_ttl: Duration, members_gauge: IntGauge) -> Self {
        Fleet {
            members: RwLock::new(Arc::new(vec![me.clone()])),
            me,
            region,
            shared,
            store,
            writer,
            last_heartbeat: Mutex::new(Instant::now()),
            heartbeat,
            member_ttl,
            members_gauge,
        }
    }

    /// Peers to ask, in order, before this proxy fetches `key` itself: the owners that rank
    /// above this proxy.
    pub fn peer_hops(&self, key: &[u8]) -> Vec<SocketAddr> {
        let members = self.members.read().clone();
        if members.len() < 2 {
            return Vec::new();
        }
        owners(&members, key)
            .into_iter()
            .take_while(|m| **m != self.me)
            .filter_map(|m| m.addr.parse().ok())
            .take(MAX_PEER_HOPS)
            .collect()
    }

    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.read().clone()
    }

    /// One heartbeat: refresh the member list, or fall back to acting alone once the store
    /// has been unreachable for a member's TTL.
    pub async fn beat(&self) {
        match self.store.heartbeat(&self.me, self.member_ttl).await {
            Ok(mut live) => {
                if !live.contains(&self.me) {
                    live.push(self.me.clone());
                    live.sort();
                }
                *self.last_heartbeat.lock() = Instant::now();
                self.members_gauge.set(live.len() as i64);
                *self.members.write() = Arc::new(live);
            }
            Err(e) => {
                tracing::debug!(error = %e, "fleet heartbeat failed");
                if self.last_heartbeat.lock().elapsed() > self.member_ttl {
                    let alone = vec![self.me.clone()];
                    if **self.members.read() != alone {
                        tracing::warn!("fleet metadata unreachable; serving alone until it returns");
                    }
                    self.members_gauge.set(1);
                    *self.members.write() = Arc::new(alone);
                }
            }
        }
    }

    pub async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.beat().await,
                _ = shutdown.changed() => {
                    let _ = self.store.leave(&self.me).await;
                    return;
                }
            }
        }
    }
}
