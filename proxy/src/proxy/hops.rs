//! Where a miss goes before the upstream: the key's owner in the fleet, then the regional
//! origin. Also what the request path tells the fleet and origin afterwards: artefacts to hand
//! to origin, metadata writes, and companions to drop.

use http::{header, Method};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::{HangarProxy, RequestCtx};
use crate::digest::Digest;
use crate::freshness::PathClass;
use crate::metadata::MetadataWrite;
use crate::origin::UploadJob;
use crate::upstream::UpstreamUrl;

/// Whether this request's response went into the cache (a "miss" label also covers
/// responses fetched but not storable).
fn stored(session: &Session) -> bool {
    matches!(session.cache.phase(), pingora::cache::CachePhase::Miss | pingora::cache::CachePhase::Expired)
}

/// A place a miss is asked before the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    /// The key's owner in the fleet.
    Peer(std::net::SocketAddr),
    /// The regional origin.
    Origin,
}

/// Addresses an upstream's redirect must not send the proxy to unless the repository allows
/// it: loopback, private (RFC 1918), shared (RFC 6598), link-local (the cloud metadata
/// service), unique-local and unspecified addresses.
pub(super) fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            // IPv6 forms that carry an IPv4 address: mapped, compatible, NAT64, 6to4.
            let embedded = |hi: u16, lo: u16| std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            let carried = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4)
            } else if (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified()) || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
                Some(embedded(s[6], s[7]))
            } else if s[0] == 0x2002 {
                Some(embedded(s[1], s[2]))
            } else {
                None
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || carried.is_some_and(|v4| is_internal(v4.into()))
        }
    }
}

impl HangarProxy {
    /// Aim the request at its next hop, or at the upstream once there are none left.
    pub(super) fn next_hop(&self, session: &Session, ctx: &mut RequestCtx) {
        ctx.redirect_pending = false;
        ctx.cross_origin = false;
        ctx.hop = ctx.next_hops.pop_front();
        ctx.target = match ctx.hop {
            Some(Hop::Peer(addr)) => {
                let peer = UpstreamUrl { tls: false, host: addr.ip().to_string(), port: addr.port(), base_path: "/".into() };
                let req = session.req_header();
                let path = ctx.peer_path.clone().unwrap_or_else(|| req.uri.path_and_query().map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string()));
                Some((peer, path))
            }
            Some(Hop::Origin) => {
                let origin = self.origin.as_ref().expect("an origin hop needs an origin");
                let (repo, resolved) = (ctx.repo.as_ref().expect("routed"), ctx.resolved.as_ref().expect("resolved"));
                Some((origin.url.clone(), crate::origin::object_path(&origin.url, &repo.name, &resolved.key_path)))
            }
            None => ctx.upstream_target.clone(),
        };
    }

    /// The current hop failed: move on, and make pingora retry with the next target.
    pub(super) fn fall_back(&self, session: &Session, ctx: &mut RequestCtx) -> Box<Error> {
        self.next_hop(session, ctx);
        let mut e = Error::explain(ErrorType::Custom("hop failed"), "trying the next owner, origin or the upstream");
        e.set_retry(true);
        e.into_up()
    }

    pub(super) fn count_hop_failure(&self, hop: Hop, ctx: &RequestCtx) {
        match hop {
            Hop::Origin => self.metrics.origin_fetches.with_label_values(&[ctx.repo_name(), "error"]).inc(),
            Hop::Peer(addr) => {
                tracing::info!(peer = %addr, "fleet owner unreachable; trying the next");
                self.metrics.fleet_fetches.with_label_values(&[ctx.repo_name(), "peer_unreachable"]).inc();
            }
        }
    }

    /// After an immutable artefact was fetched from an upstream and cached, queue it for
    /// origin.
    pub(super) fn hand_to_origin(&self, session: &Session, error: Option<&Error>, ctx: &RequestCtx, status: u16, result: &str) {
        let (Some(origin), Some(repo), Some(resolved)) = (self.origin.as_ref(), ctx.repo.as_ref(), ctx.resolved.as_ref()) else { return };
        let req = session.req_header();
        let fetched_and_cached = status == 200 && result == "miss" && stored(session) && error.is_none() && !ctx.from_hop && !ctx.unverified;
        if !fetched_and_cached || ctx.class != Some(PathClass::Immutable) || !(req.method == Method::GET || req.method == Method::HEAD) {
            return;
        }
        origin.enqueue(UploadJob {
            repository: repo.name.clone(),
            key_path: resolved.key_path.clone(),
            proxy_target: req.uri.path_and_query().map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string()),
            host: req.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string(),
            sha256: match &ctx.expected_digest {
                Some(Digest::Sha256(d)) => Some(hex::encode(d)),
                _ => None,
            },
        });
    }

    /// A document fetched anew makes its companions (Maven's metadata checksums) stale: drop
    /// them so they are fetched with it.
    pub(super) fn drop_companions(&self, session: &Session, ctx: &RequestCtx, status: u16, result: &str) {
        let (Some(repo), Some(resolved)) = (ctx.repo.as_ref(), ctx.resolved.as_ref()) else { return };
        if status != 200 || !matches!(result, "miss" | "expired") || !stored(session) {
            return;
        }
        for companion in repo.format.companions(&resolved.key_path) {
            let key = crate::router::cache_key(&repo.name, &companion);
            for k in self.storage.purge_url(&key.to_compact()) {
                self.eviction.remove(pingora::cache::CacheEntryKeyRef::from_entry_id(&k, None));
            }
        }
    }

    /// Tell the fleet's metadata what happened: an object stored here, a 404 remembered, a
    /// hit (only when the metadata is shared: alone, nobody reads hit counts).
    pub(super) fn record_metadata(&self, session: &Session, ctx: &RequestCtx, status: u16, result: &str) {
        let (Some(repo), Some(resolved)) = (ctx.repo.as_ref(), ctx.resolved.as_ref()) else { return };
        let write = match (result, status) {
            ("miss", 200 | 404) if !stored(session) => return,
            ("miss", 200) => MetadataWrite::Stored {
                repository: repo.name.clone(),
                key: resolved.key_path.clone(),
                size: session.body_bytes_sent() as u64,
                digest: ctx.expected_digest.as_ref().map(|d| d.to_string()),
                tier: format!("disk:{}", self.fleet.me.addr),
            },
            ("miss", 404) => MetadataWrite::Negative { repository: repo.name.clone(), key: resolved.key_path.clone(), ttl: repo.freshness.negative_ttl() },
            ("hit", _) if self.fleet.shared => MetadataWrite::Hit { repository: repo.name.clone(), key: resolved.key_path.clone(), region: self.fleet.region.clone() },
            _ => return,
        };
        self.fleet.writer.write(write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "198.18.0.1", "224.0.0.1", "::1", "fd00::1", "fe80::1", "fec0::1", "ff02::1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "::a9fe:a9fe", "2002:a9fe:a9fe::1"] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1", "100.128.0.1", "64:ff9b::5db8:d822", "2002:5db8:d822::1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
