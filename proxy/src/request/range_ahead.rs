//! A `Range` far ahead of a fill in progress is asked of the upstream as a range, uncached.
//!
//! A ranged read of an object being filled is answered from the partial object once the fill
//! has passed it (`storage::inflight`); one the fill has not reached waits for it. uv reads a
//! wheel's zip directory (at its end) with ranges right after a `HEAD` that started the
//! wheel's fill: waiting meant a whole download (seconds for a large wheel) before each step
//! of its resolution, where the registry answers the range in one round trip
//! (bench/README.md, the `clients` scenario). So a range starting more than [`AHEAD`] past
//! what the fill has written goes to the upstream with the client's `Range`, and its `206` is
//! passed on, neither stored nor checked against the artefact's digest (a part cannot be);
//! the fill goes on and stores the whole, verified object for later requests.
//!
//! Only where that is safe and cheap: an artefact served as the upstream sends it (never a
//! document, rewritten or chosen by `Accept`, whose offsets differ), one byte range of at most [`AHEAD`]
//! bytes (so no client turns one fill into many whole downloads), fetched from the upstream
//! itself (no fleet peer or regional origin would be asked first, its breaker is closed, the
//! repository is not offline, the client did not ask for `only-if-cached`). An upstream that
//! answers `200` instead is verified as any whole body is.

use http::header;
use pingora::cache::key::CacheHashKey;
use pingora::proxy::Session;

use hangar_core::PathClass;

use super::{HangarProxy, RequestCtx};

/// How far past a fill's written bytes a range may start and still wait for the fill: about
/// what a fill gets in one upstream round trip at tens of MB/s.
pub(super) const AHEAD: u64 = 1 << 20;

/// The one byte range a `Range` value asks for (RFC 9110 §14.1.2, unit case-insensitive), as
/// its first byte (`None` for a suffix of a representation of unknown length) and its length
/// in bytes. `None` for anything else: several ranges, another unit, an open end.
pub(super) fn byte_range(range: &str, len: Option<u64>) -> Option<(Option<u64>, u64)> {
    let (unit, spec) = range.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (from, to) = spec.trim().split_once('-')?;
    match (from.trim(), to.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            Some((len.map(|l| l.saturating_sub(n)), n))
        }
        (_, "") => None,
        (from, to) => {
            let (first, last): (u64, u64) = (from.parse().ok()?, to.parse().ok()?);
            (first <= last).then(|| (Some(first), last - first + 1))
        }
    }
}

impl HangarProxy {
    /// Whether this request is a `GET` with a range the fill in progress for its key will not
    /// reach soon: if so it goes to the upstream uncached (and unverified), as above.
    pub(super) fn range_ahead_of_fill(&self, session: &Session, ctx: &mut RequestCtx) -> bool {
        let req = session.req_header();
        if req.method != http::Method::GET || ctx.caller.loopback || ctx.caller.peer {
            return false;
        }
        let (Some(range), Some((repo, route))) = (req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()), ctx.routed()) else { return false };
        let resolved = &route.resolved;
        if resolved.rewrite || resolved.representation.is_some() || route.class == PathClass::Metadata || route.directives.only_if_cached || self.offline.is_offline(&repo.name) || repo.breaker.state() != crate::breaker::CLOSED {
            return false;
        }
        let key = crate::router::cache_key(&repo.name, &resolved.key_path).combined_bin();
        let Some((written, len)) = self.storage.fill_progress(&key) else { return false };
        let Some((first, bytes)) = byte_range(range, len).filter(|(_, bytes)| *bytes <= AHEAD) else { return false };
        // (A suffix of a length not yet known is at the end: past the fill.)
        if first.is_some_and(|first| first <= written.saturating_add(AHEAD)) {
            return false;
        }
        // The fill's source, when a peer or the origin would be asked first: they may hold
        // what the upstream does not (any more).
        let origin = self.origin.as_ref().is_some_and(|o| o.distrusted(&repo.name, &resolved.key_path).is_none());
        if origin || !self.fleet.peer_hops(&crate::router::cache_key(&repo.name, &resolved.key_path).primary_bin()).is_empty() {
            return false;
        }
        tracing::debug!(repository = %repo.name, path = %resolved.key_path, range, bytes, written, "range ahead of the fill: asked of the upstream");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bounded_byte_range_is_read_anything_else_is_not() {
        assert_eq!(byte_range("bytes=100-199", None), Some((Some(100), 100)));
        assert_eq!(byte_range("Bytes = 100-100", None), Some((Some(100), 1)));
        assert_eq!(byte_range("bytes=-100", Some(1000)), Some((Some(900), 100)));
        assert_eq!(byte_range("bytes=-5000", Some(1000)), Some((Some(0), 5000)));
        assert_eq!(byte_range("bytes=-100", None), Some((None, 100)), "a suffix of an unknown length");
        assert_eq!(byte_range("bytes=500-", Some(1000)), None, "open-ended: as large as the object");
        assert_eq!(byte_range("bytes=900-999, 10-19", Some(1000)), None);
        assert_eq!(byte_range("bytes=20-10", Some(1000)), None);
        assert_eq!(byte_range("items=1-2", Some(1000)), None);
        assert_eq!(byte_range("bytes=x-1", Some(1000)), None);
    }
}
