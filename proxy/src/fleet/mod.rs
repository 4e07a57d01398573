//! A region's proxies acting as one cache.
//!
//! Every proxy heartbeats into the fleet's [`Membership`] and keeps the list of live members.
//! A miss on a key is sent to the key's owner ([`rendezvous`] hashing over live members)
//! instead of the upstream, so however many proxies miss at once, one proxy fetches it, once.
//! An owner that cannot be reached is skipped for the next one, and after the owners comes this
//! proxy's own path (origin, then upstream). When the membership cannot be read for longer than
//! a member's TTL, a proxy acts alone rather than route to members it can no longer see.
//!
//! Members prove their hops to each other with the fleet's secret ([`HopKey`]): a request that
//! claims to come from a peer (or from the proxy's own loopback reads) without a valid proof is
//! treated as any client's.

mod membership;
pub mod rendezvous;

pub use membership::{Alone, Member, Membership, MembershipError, StaticMembers};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangar_core::wire::{HopError, HopKey, HopKind};
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounterVec, IntGauge};

/// Owners tried before this proxy's own path.
const MAX_PEER_HOPS: usize = 2;

/// This proxy's view of its fleet: who is live, who owns what, and the key hops are signed with.
pub struct Fleet {
    me: Member,
    region: String,
    /// Whether other proxies share this one's work (Redis or a static list).
    shared: bool,
    membership: Arc<dyn Membership>,
    key: HopKey,
    members: RwLock<Arc<Vec<Member>>>,
    last_heartbeat: Mutex<Instant>,
    heartbeat: Duration,
    member_ttl: Duration,
    members_gauge: IntGauge,
    /// `hangar_hop_proofs_rejected_total` by reason.
    rejected: IntCounterVec,
    /// When a rejected proof was last logged (rate-limited: a client can send them at will).
    last_rejection_log: Mutex<Option<Instant>>,
}

/// How a fleet is put together: [`Fleet::new`]'s arguments.
pub struct FleetParts {
    pub me: Member,
    pub region: String,
    pub shared: bool,
    pub membership: Arc<dyn Membership>,
    /// The fleet's shared secret (`fleet.secret`); a proxy that shares with nobody uses a
    /// random one, since only its own loopback reads need to verify.
    pub secret: Vec<u8>,
    /// How often this proxy announces itself.
    pub heartbeat: Duration,
    /// How long the membership may be unreachable before this proxy serves alone.
    pub member_ttl: Duration,
    /// `hangar_fleet_members`.
    pub members_gauge: IntGauge,
    /// `hangar_hop_proofs_rejected_total`, by reason (`malformed`, `expired`, `bad_signature`).
    pub rejected: IntCounterVec,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Fleet {
    /// A fleet that knows only this proxy until its first heartbeat.
    pub fn new(parts: FleetParts) -> Self {
        Fleet {
            members: RwLock::new(Arc::new(vec![parts.me.clone()])),
            me: parts.me,
            region: parts.region,
            shared: parts.shared,
            membership: parts.membership,
            key: HopKey::new(&parts.secret),
            last_heartbeat: Mutex::new(Instant::now()),
            heartbeat: parts.heartbeat,
            member_ttl: parts.member_ttl,
            members_gauge: parts.members_gauge,
            rejected: parts.rejected,
            last_rejection_log: Mutex::new(None),
        }
    }

    /// This proxy, as its peers reach it.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The region's name (`fleet.region`).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Whether other proxies share this one's work (so shared metadata is worth writing).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Peers to ask, in order, before this proxy fetches `key` itself: the owners that rank
    /// above this proxy (at most two).
    pub fn peer_hops(&self, key: &[u8]) -> Vec<SocketAddr> {
        let members = self.members.read().clone();
        if members.len() < 2 {
            return Vec::new();
        }
        rendezvous::owners(&members, key)
            .into_iter()
            .take_while(|m| **m != self.me)
            .filter_map(|m| m.addr.parse().ok())
            .take(MAX_PEER_HOPS)
            .collect()
    }

    /// The live members, this proxy included.
    #[cfg(test)]
    fn members(&self) -> Arc<Vec<Member>> {
        self.members.read().clone()
    }

    /// The `x-hangar-hop` value for a `method` hop of `kind` carrying `target` (path and query).
    pub fn sign(&self, kind: HopKind, method: &str, target: &str) -> String {
        self.key.sign(kind, method, target, now_secs())
    }

    /// Check an `x-hangar-hop` value that came with a `method` request for `target`. A proof
    /// that does not verify is counted, and logged at most once a minute: it is a client
    /// posing as a peer, or members whose secrets or clocks disagree.
    pub fn verify(&self, value: &str, method: &str, target: &str) -> Option<HopKind> {
        match self.key.verify(value, method, target, now_secs()) {
            Ok(kind) => Some(kind),
            Err(e) => {
                let reason = match e {
                    HopError::Malformed => "malformed",
                    HopError::Expired(_) => "expired",
                    HopError::BadSignature => "bad_signature",
                };
                self.rejected.with_label_values(&[reason]).inc();
                let mut last = self.last_rejection_log.lock();
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(error = %e, path = %target, "ignoring a hop header that does not verify (a client posing as a peer, or members whose fleet.secret or clocks differ); more are counted in hangar_hop_proofs_rejected_total");
                }
                None
            }
        }
    }

    /// One heartbeat: refresh the member list, or fall back to acting alone once the
    /// membership has been unreachable for a member's TTL.
    pub async fn beat(&self) {
        match self.membership.heartbeat(&self.me, self.member_ttl).await {
            Ok(mut live) => {
                if !live.contains(&self.me) {
                    live.push(self.me.clone());
                }
                live.sort();
                live.dedup();
                *self.last_heartbeat.lock() = Instant::now();
                self.members_gauge.set(live.len() as i64);
                *self.members.write() = Arc::new(live);
            }
            Err(e) => {
                tracing::debug!(error = %e, "fleet heartbeat failed");
                if self.last_heartbeat.lock().elapsed() > self.member_ttl {
                    let alone = vec![self.me.clone()];
                    if **self.members.read() != alone {
                        tracing::warn!("fleet membership unreachable; serving alone until it returns");
                    }
                    self.members_gauge.set(1);
                    *self.members.write() = Arc::new(alone);
                }
            }
        }
    }

    /// Heartbeat until shutdown, then leave.
    pub async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.beat().await,
                _ = shutdown.changed() => {
                    let _ = self.membership.leave(&self.me).await;
                    return;
                }
            }
        }
    }
}

/// 32 random bytes: the hop key of a proxy that shares with nobody.
pub fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    getrandom::getrandom(&mut secret).expect("the operating system provides random bytes");
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(me: &str, members: &[&str]) -> Fleet {
        let list: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        Fleet::new(FleetParts {
            me: Member { addr: me.into() },
            region: "r".into(),
            shared: true,
            membership: Arc::new(StaticMembers::new(&list)),
            secret: b"0123456789abcdef".to_vec(),
            heartbeat: Duration::from_secs(1),
            member_ttl: Duration::from_secs(3),
            members_gauge: IntGauge::new("m", "m").unwrap(),
            rejected: rejected(),
        })
    }

    fn rejected() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap()
    }

    #[tokio::test]
    async fn keys_go_to_their_owner_and_an_owner_asks_nobody() {
        let members = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let fleets: Vec<Fleet> = members.iter().map(|m| fleet(m, &members)).collect();
        for f in &fleets {
            f.beat().await;
            assert_eq!(f.members().len(), 3);
        }
        for i in 0..50 {
            let key = format!("key{i}");
            let owner = rendezvous::owners(&fleets[0].members(), key.as_bytes())[0].addr.clone();
            for f in &fleets {
                let hops = f.peer_hops(key.as_bytes());
                if f.me().addr == owner {
                    assert!(hops.is_empty(), "the owner fetches itself");
                } else {
                    assert_eq!(hops[0].to_string(), owner, "everyone else asks the owner first");
                }
            }
        }
    }

    #[test]
    fn hops_verify_only_within_the_fleet_and_rejections_are_counted() {
        let (a, b) = (fleet("127.0.0.1:1", &[]), fleet("127.0.0.1:2", &[]));
        let proof = a.sign(HopKind::Peer, "GET", "/x");
        assert_eq!(b.verify(&proof, "GET", "/x"), Some(HopKind::Peer), "same secret");
        let stranger = Fleet::new(FleetParts { secret: random_secret(), ..parts_of("127.0.0.1:3") });
        assert_eq!(stranger.verify(&proof, "GET", "/x"), None);
        assert_eq!(stranger.verify("v1 peer", "GET", "/x"), None);
        assert_eq!((stranger.rejected.with_label_values(&["bad_signature"]).get(), stranger.rejected.with_label_values(&["malformed"]).get()), (1, 1));
    }

    fn parts_of(me: &str) -> FleetParts {
        FleetParts {
            me: Member { addr: me.into() },
            region: "r".into(),
            shared: false,
            membership: Arc::new(Alone),
            secret: Vec::new(),
            heartbeat: Duration::from_secs(1),
            member_ttl: Duration::from_secs(3),
            members_gauge: IntGauge::new("m", "m").unwrap(),
            rejected: rejected(),
        }
    }
}
