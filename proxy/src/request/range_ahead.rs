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

use http::header;
use pingora::cache::key::CacheHashKey;
use pingora::proxy::Session;

use super::{HangarProxy, RequestCtx};

/// How far past a fill's written bytes a range may start and still wait for the fill: about
/// what a fill gets in one upstream round trip at tens of MB/s.
pub(super) const AHEAD: u64 = 1 << 20;

/// The first byte a `Range` value (`bytes=` ranges, RFC 9110 §14.1.2) asks for, given the
/// representation's length if known: `None` when it is not a byte range this can read, or
/// for a suffix range when the length is unknown.
pub(super) fn first_byte(range: &str, len: Option<u64>) -> Option<u64> {
    let specs = range.trim().strip_prefix("bytes=")?;
    let mut first: Option<u64> = None;
    for spec in specs.split(',') {
        let (from, to) = spec.trim().split_once('-')?;
        let start = match (from.trim(), to.trim()) {
            ("", suffix) => len?.saturating_sub(suffix.parse().ok()?),
            (from, _) => from.parse().ok()?,
        };
        first = Some(first.map_or(start, |f| f.min(start)));
    }
    first
}

impl HangarProxy {
    /// Whether this request is a `GET` with a range the fill in progress for its key will not
    /// reach soon: if so it goes to the upstream uncached (and unverified), as above.
    pub(super) fn range_ahead_of_fill(&self, session: &Session, ctx: &mut RequestCtx) -> bool {
        let req = session.req_header();
        if req.method != http::Method::GET || ctx.caller.loopback {
            return false;
        }
        let (Some(range), Some((repo, route))) = (req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()), ctx.routed()) else { return false };
        let key = crate::router::cache_key(&repo.name, &route.resolved.key_path).combined_bin();
        let Some((written, len)) = self.storage.fill_progress(&key) else { return false };
        // A suffix range of unknown length cannot be placed: treat it as past the fill.
        let ahead = first_byte(range, len).is_none_or(|first| first > written.saturating_add(AHEAD));
        if ahead {
            tracing::debug!(repository = %repo.name, path = %route.resolved.key_path, range, written, "range ahead of the fill: asked of the upstream");
            ctx.body.expected = None;
        }
        ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_byte_of_byte_ranges() {
        assert_eq!(first_byte("bytes=100-199", None), Some(100));
        assert_eq!(first_byte("bytes=500-", None), Some(500));
        assert_eq!(first_byte("bytes=-100", Some(1000)), Some(900));
        assert_eq!(first_byte("bytes=-5000", Some(1000)), Some(0));
        assert_eq!(first_byte("bytes=-100", None), None, "a suffix of an unknown length");
        assert_eq!(first_byte("bytes=900-999, 10-19", Some(1000)), Some(10));
        assert_eq!(first_byte("items=1-2", Some(1000)), None);
        assert_eq!(first_byte("bytes=x-", Some(1000)), None);
    }
}
