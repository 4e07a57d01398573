//! Who is in a region's fleet: the [`Membership`] seam and its simplest implementations.
//!
//! Redis (`metadata::RedisMetadata`) keeps members with heartbeats that expire; a static list
//! ([`StaticMembers`]) suits a fixed set of machines; a proxy alone ([`Alone`]) is the default.
//! Later implementations (DNS records, an agent pool's neighbours) answer the same two calls.

use std::time::Duration;

use async_trait::async_trait;

/// One proxy of the fleet, as peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// `ip:port` of its proxy listener.
    pub addr: String,
}

/// Why the membership could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The store could not be reached or refused the call (its message says why).
    #[error("membership store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within its deadline.
    #[error("membership store timed out")]
    Timeout,
}

/// Where a fleet's members are kept.
///
/// The fleet calls [`Membership::heartbeat`] every `heartbeat` interval from one background
/// task (never from the request path), and [`Membership::leave`] once at graceful shutdown.
/// Implementations should answer within a second: a slow answer delays the next heartbeat, and
/// after `member_ttl` without one the proxy serves alone.
#[async_trait]
pub trait Membership: Send + Sync {
    /// Announce `me` as live for `ttl`; return every live member, `me` included, in any order.
    async fn heartbeat(&self, me: &Member, ttl: Duration) -> Result<Vec<Member>, MembershipError>;

    /// Leave the fleet at once. The default does nothing (the heartbeat simply expires).
    async fn leave(&self, _me: &Member) -> Result<(), MembershipError> {
        Ok(())
    }
}

/// A fleet of one: the default without `[fleet]`.
pub struct Alone;

#[async_trait]
impl Membership for Alone {
    async fn heartbeat(&self, me: &Member, _ttl: Duration) -> Result<Vec<Member>, MembershipError> {
        Ok(vec![me.clone()])
    }
}

/// A fixed list of members (`fleet.members`). Every member is taken as live; one that cannot be
/// reached is skipped per request for the next owner, as with any membership.
///
/// Every proxy of the fleet must have the same list, and find itself in it: a proxy missing
/// from the others' lists would see a fleet they do not, and owners would disagree. Config
/// validation refuses a proxy whose address (`fleet.advertise`, else `listen`) is not listed.
pub struct StaticMembers {
    members: Vec<Member>,
}

impl StaticMembers {
    /// `addrs` as configured (`ip:port`).
    pub fn new(addrs: &[String]) -> Self {
        StaticMembers { members: addrs.iter().map(|addr| Member { addr: addr.clone() }).collect() }
    }

}

#[async_trait]
impl Membership for StaticMembers {
    async fn heartbeat(&self, _me: &Member, _ttl: Duration) -> Result<Vec<Member>, MembershipError> {
        Ok(self.members.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_static_list_is_the_fleet_and_alone_is_this_proxy() {
        let me = Member { addr: "10.0.0.1:8080".into() };
        let list = StaticMembers::new(&["10.0.0.1:8080".into(), "10.0.0.2:8080".into()]);
        assert_eq!(list.heartbeat(&me, Duration::from_secs(1)).await.unwrap().len(), 2);
        assert_eq!(Alone.heartbeat(&me, Duration::ZERO).await.unwrap(), vec![me]);
    }
}
