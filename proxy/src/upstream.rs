//! Where misses go: non-blocking cached DNS, pingora peers, and which addresses an upstream's
//! redirect may not lead to.
//!
//! Pingora's `HttpPeer::new` resolves a host name with the blocking system resolver on the
//! calling worker thread. Hangar resolves through hickory (async, with its own TTL-respecting
//! cache) in `upstream_peer` and hands pingora a socket address, so a slow DNS server delays only
//! the requests that need that name, never the event loop.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hangar_core::UpstreamUrl;
use hickory_resolver::TokioResolver;
use pingora::upstreams::peer::HttpPeer;

use crate::config::TimeoutConfig;

/// A host name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve upstream host '{host}': {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

/// Async, caching DNS shared by all repositories.
pub struct Resolver {
    inner: Option<TokioResolver>,
}

impl Resolver {
    /// Uses the system's resolv.conf; without one (minimal containers), only IP literals and
    /// `localhost` resolve.
    pub fn from_system() -> Self {
        let inner = TokioResolver::builder_tokio().ok().map(|b| b.build());
        if inner.is_none() {
            tracing::warn!("no system DNS configuration; only IP upstreams will resolve");
        }
        Resolver { inner }
    }

    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port));
        }
        let resolver = self.inner.as_ref().ok_or_else(|| ResolveError {
            host: host.into(),
            reason: "no DNS configuration".into(),
        })?;
        let lookup = resolver.lookup_ip(host).await.map_err(|e| ResolveError {
            host: host.into(),
            reason: e.to_string(),
        })?;
        lookup
            .iter()
            .next()
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| ResolveError {
                host: host.into(),
                reason: "no addresses".into(),
            })
    }
}

/// Build the pingora peer for one request to `up` at `addr`.
pub fn make_peer(up: &UpstreamUrl, addr: SocketAddr, timeouts: &TimeoutConfig) -> Box<HttpPeer> {
    let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(timeouts.connect.0);
    o.total_connection_timeout = Some(timeouts.total_connect.0);
    o.read_timeout = Some(timeouts.read.0);
    o.write_timeout = Some(timeouts.read.0);
    o.idle_timeout = Some(Duration::from_secs(60));
    o.verify_cert = true;
    o.verify_hostname = true;
    Box::new(peer)
}

/// Streams one HTTP/2 connection to an upstream carries at once before pingora opens another.
/// Registries allow 100 or more (RFC 9113 §6.5.2 recommends at least 100).
pub const H2_STREAMS: usize = 100;

/// Offer HTTP/2 to a TLS upstream (ALPN `h2`, then `http/1.1`), with up to [`H2_STREAMS`]
/// requests sharing each connection. Plain-HTTP upstreams are left on HTTP/1.1 (there is no
/// ALPN to offer it with, and prior-knowledge h2c would break every HTTP/1.1-only server).
/// Only for the proxy's own fetches: its side requests (`crate::client`) speak HTTP/1.1.
pub fn offer_http2(peer: &mut HttpPeer) {
    if peer.is_tls() {
        peer.options.set_http_version(2, 1);
        peer.options.max_h2_streams = H2_STREAMS;
    }
}

pub type SharedResolver = Arc<Resolver>;

/// Whether an upstream's redirect may send the proxy to `ip`: not to loopback, private (RFC
/// 1918), shared (RFC 6598), link-local (the cloud metadata service), unique-local, multicast
/// or unspecified addresses, in any IPv6 spelling that carries an IPv4 one.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
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
        IpAddr::V6(v6) => {
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
