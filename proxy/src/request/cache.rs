//! The cache phases: whether a request uses the cache and under which key and variant, whether
//! a stored response may answer it, whether a fetched one may be stored, and what a successful
//! unsafe request invalidates. The freshness arithmetic itself is [`crate::freshness`]'s.

use std::time::SystemTime;

use hangar_core::CacheResult;
use http::{header, Method};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, ForcedFreshness, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::derive::DERIVED_COUNT_HEADER;
use super::{accept_list, HangarProxy, RequestCtx};
use hangar_core::wire::DIGEST_HEADER;

/// The `X-Hangar-Cache` result for where pingora's cache state machine ended.
pub fn cache_result(phase: CachePhase) -> CacheResult {
    match phase {
        CachePhase::Hit => CacheResult::Hit,
        CachePhase::Miss => CacheResult::Miss,
        CachePhase::Stale | CachePhase::StaleUpdating => CacheResult::Stale,
        CachePhase::Expired => CacheResult::Expired,
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheResult::Revalidated,
        // Looked up, fetched, but the response was not storable (or the fetch failed).
        CachePhase::Disabled(reason) if reason != NoCacheReason::NeverEnabled => CacheResult::Miss,
        CachePhase::Disabled(_) | CachePhase::Bypass | CachePhase::Uninit | CachePhase::CacheKey => CacheResult::Bypass,
    }
}

/// Whether this request's response went into the cache (a `miss` label also covers
/// responses fetched but not storable).
pub fn stored(phase: CachePhase) -> bool {
    matches!(phase, CachePhase::Miss | CachePhase::Expired)
}

/// Whether a stored response answers the client's conditional request with a 304.
///
/// `If-None-Match` uses the weak comparison of RFC 9110 §8.8.3.2 on opaque tags: `W/` and the
/// quotes are not part of the tag, so an origin's unquoted `ETag: abc` (invalid, but common) is
/// the tag `abc`, matched by `"abc"` and `W/"abc"` alike, and by nothing else. Without it,
/// `If-Modified-Since` decides, as pingora does.
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    if resp.status != http::StatusCode::OK {
        return false;
    }
    if !req.headers.contains_key(header::IF_NONE_MATCH) {
        return pingora::protocols::http::conditional_filter::not_modified_filter(req, resp);
    }
    let Some(stored) = resp.headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(opaque_tag) else { return false };
    req.headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(entity_tags).any(|t| t == "*" || opaque_tag(t) == stored)
}

/// The opaque part of an entity-tag: without `W/` and without its quotes.
fn opaque_tag(tag: &str) -> &str {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t)
}

/// The entity-tags of an `If-None-Match` value, split at commas outside quotes.
fn entity_tags(value: &str) -> Vec<&str> {
    let (mut tags, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                tags.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    tags.push(value[start..].trim());
    tags.retain(|t| !t.is_empty());
    tags
}

/// RFC 9111 §3.2: a 304's header fields replace the stored ones, except those describing the
/// stored body (its length and encoding) and hop-by-hop fields. `Age` and `Date` are the
/// 304's or none, so the stored copy's age starts over; `Vary` keeps the stored value because
/// pingora keeps the stored variance.
fn merge_not_modified(stored: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    const KEEP: [header::HeaderName; 7] = [header::CONTENT_LENGTH, header::CONTENT_ENCODING, header::TRANSFER_ENCODING, header::CONTENT_RANGE, header::CONNECTION, header::VARY, header::TRAILER];
    let mut merged = stored.clone();
    merged.remove_header(&header::AGE);
    merged.remove_header(&header::DATE);
    for name in not_modified.headers.keys() {
        if KEEP.contains(name) || name.as_str().eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        merged.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
}

/// What a stored copy's digest says of it for one request.
pub(super) enum CopyVerdict {
    /// It may answer (as far as digests go).
    Fits,
    /// The request names a digest (`?sha256=`, a pin, a digest in the URL) and this copy was
    /// not verified against it.
    NotAsked,
    /// The request names none, and the artefact's index now lists this digest, not the
    /// copy's: it was rebuilt upstream under the same name.
    Relisted(hangar_core::Digest),
}

/// Judge the stored copy whose `DIGEST_HEADER` value `stored` gives (absent: never verified)
/// against the digest the request names, else the one its index lists now. One judgement for
/// `judge_hit` and the fast path, which act on it differently.
pub(super) fn judge_copy<'m>(ctx: &RequestCtx, stored: impl Fn() -> Option<&'m str>) -> CopyVerdict {
    let Some((repo, route)) = ctx.routed() else { return CopyVerdict::Fits };
    if let Some(expected) = ctx.body.expected.as_ref() {
        return if stored() == Some(expected.to_string().as_str()) { CopyVerdict::Fits } else { CopyVerdict::NotAsked };
    }
    if route.resolved.learned_digest || route.resolved.digest_from.is_some() {
        if let Some(listed) = repo.digests.get(&route.resolved.key_path) {
            if !stored().is_some_and(|s| listed.is_written_as(s)) {
                return CopyVerdict::Relisted(listed);
            }
        }
    }
    CopyVerdict::Fits
}

impl HangarProxy {
    /// `request_cache_filter`: GET and HEAD of a routed request use the cache.
    pub(super) fn enable_cache(&self, session: &mut Session, ctx: &RequestCtx) {
        let method = &session.req_header().method;
        if ctx.route.is_some() && (method == Method::GET || method == Method::HEAD) {
            session.cache.enable(self.storage, Some(self.eviction), None, Some(self.cache_lock), None);
        }
    }

    /// `cache_key_callback`: the repository and the format's key path.
    pub(super) fn key(&self, ctx: &RequestCtx) -> Result<CacheKey> {
        let (repo, route) = ctx.routed().ok_or_else(|| Error::explain(ErrorType::InternalError, "not resolved"))?;
        Ok(crate::router::cache_key(&repo.name, &route.resolved.key_path))
    }

    /// `cache_hit_filter`: whether a stored response may answer, by the repository's offline
    /// switch, the expiry its body stated, and the client's request directives.
    pub(super) fn judge_hit(&self, meta: &CacheMeta, is_fresh: bool, ctx: &mut RequestCtx) -> Option<ForcedFreshness> {
        let (Some(repo), Some(route)) = (ctx.repo.as_ref(), ctx.route.as_ref()) else { return None };
        // Whether a stale copy may stand in is worth parsing only for a stale copy.
        let forbidden = !is_fresh && crate::freshness::forbids_stale(repo.freshness.cache_control(meta.headers()).0.as_ref());
        ctx.cache.found_unservable_stale = forbidden;
        let stored = || meta.headers().get(DIGEST_HEADER).and_then(|v| v.to_str().ok());
        let copy = judge_copy(ctx, stored);
        // A request that names a digest (`?sha256=`, a pin, a digest in the URL) is served only
        // a copy verified against that digest; any other is fetched again, in full, and verified
        // (offline, that is a 504: the copy at hand is not the one asked for).
        if matches!(copy, CopyVerdict::NotAsked) {
            ctx.cache.refetch = true;
            return Some(ForcedFreshness::ForceExpired);
        }
        // Offline, or the proxy reading its own cache back: whatever is cached is served,
        // however old, and nothing is fetched or refreshed.
        if self.offline.is_offline(&repo.name) || ctx.caller.loopback {
            if is_fresh {
                return None;
            }
            ctx.cache.served_stale = true;
            return Some(ForcedFreshness::ForceFresh);
        }
        // An artefact immutable by name that its index now lists with another digest was
        // rebuilt upstream (an apt pool file republished, a gem pushed again): the copy at
        // hand is stale, whatever its freshness says. Fetched again and verified against
        // what the index lists now. (Offline, the copy at hand is served, above.)
        if let CopyVerdict::Relisted(listed) = copy {
            self.metrics.relisted.with_label_values(&[&repo.name]).inc();
            tracing::info!(repository = %repo.name, artefact = %route.resolved.key_path, stored = stored().unwrap_or("unverified"), listed = %listed, "the index lists another digest than the cached copy's: fetching it again");
            ctx.body.expected = Some(listed);
            ctx.cache.refetch = true;
            return Some(ForcedFreshness::ForceExpired);
        }
        // A document written before more of its group's files were derived is fetched again,
        // in full, to announce them; the copy at hand stands in if the upstream fails.
        // (Fewer than it announces, after a damaged file was dropped or `derive_files` turned
        // off, also: it must not announce what is not served. `only-if-cached` takes the copy.)
        if let (Some(group), false) = (route.resolved.lists_derived.as_deref(), route.directives.only_if_cached) {
            let announced = meta.headers().get(DERIVED_COUNT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if self.derived_count(repo, group) != announced {
                ctx.cache.refetch = true;
                ctx.cache.client_revalidates = true;
                return Some(ForcedFreshness::ForceExpiredServeStale { expired_at: None });
            }
        }
        // A body that said when it expires is not used past then, not even stale.
        if route.states_expiry && repo.has_expired(&route.resolved.key_path) {
            return Some(ForcedFreshness::ForceExpired);
        }
        // RFC 9111 §5.2.1: the client's limits on what a stored response may be used for.
        let d = &route.directives;
        let now = SystemTime::now();
        let too_old = d.max_age.is_some_and(|max| meta.age() > max);
        let expires_too_soon = d.min_fresh.is_some_and(|min| meta.fresh_until().duration_since(now).unwrap_or_default() < min);
        if d.no_cache || too_old || expires_too_soon {
            ctx.cache.client_revalidates = true;
            // Validate with the upstream; a stale copy stays usable if the upstream fails.
            return is_fresh.then_some(ForcedFreshness::ForceExpiredServeStale { expired_at: None });
        }
        if !is_fresh {
            if let Some(limit) = d.max_stale {
                let staleness = now.duration_since(meta.fresh_until()).unwrap_or_default();
                if !forbidden && limit.is_none_or(|l| staleness <= l) {
                    ctx.cache.served_stale = true;
                    return Some(ForcedFreshness::ForceFresh);
                }
            }
        }
        None
    }

    /// `cache_vary_filter`: each listed request header (value normalised for whitespace) picks
    /// the variant. A format's representation replaces `Accept` (clients spell the same wish
    /// many ways). `Host` never does: the upstream saw the Host the proxy sent it, not the
    /// client's, and a client inventing names must not bypass or bloat the cache (rewritten
    /// documents are stored once and rebased per client, see `rebase`).
    pub(super) fn variant(&self, meta: &CacheMeta, ctx: &RequestCtx, req: &RequestHeader) -> Option<pingora::cache::key::HashBinary> {
        let mut builder = pingora::cache::VarianceBuilder::new();
        let route = ctx.route.as_ref();
        let representation = route.and_then(|r| r.resolved.representation);
        if let Some(r) = representation {
            builder.add_value("hangar-representation", r.name);
        }
        if route.is_some_and(|r| r.resolved.vary_accept) {
            builder.add_owned_value("accept", accept_list(&req.headers).into_bytes());
        }
        for vary in meta.headers().get_all(header::VARY) {
            for name in vary.to_str().unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = name.to_ascii_lowercase();
                if (representation.is_some() && name == "accept") || name == "host" {
                    continue;
                }
                let value: Vec<u8> = req
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.to_str().unwrap_or("").split(',').map(str::trim).collect::<Vec<_>>().join(","))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes();
                builder.add_owned_name_value(name, value);
            }
        }
        builder.finalize()
    }

    /// `response_cache_filter`: whether a fetched response may be stored, and for how long.
    pub(super) fn storable(&self, resp: &ResponseHeader, ctx: &mut RequestCtx) -> RespCacheable {
        let Some((repo, route)) = ctx.routed() else { return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled) };
        let derived_count = route.resolved.lists_derived.as_deref().map(|group| self.derived_count(repo, group));
        // `Vary: *`: no request can be known to match, so nothing is stored (RFC 9111 §4.1).
        let vary_any = resp.headers.get_all(header::VARY).iter().any(|v| v.to_str().unwrap_or("").split(',').any(|n| n.trim() == "*"));
        if vary_any {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        if route.directives.no_store {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("request no-store"));
        }
        if !route.resolved.store {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("format says not to store"));
        }
        if ctx.body.unverified {
            self.metrics.cache_skipped.with_label_values(&[&repo.name, "digest_unknown"]).inc();
            return RespCacheable::Uncacheable(NoCacheReason::Custom("digest unknown"));
        }
        let (repo, class) = (repo.clone(), route.class);
        let merged;
        let revalidated = ctx.cache.not_modified.is_some();
        let resp = match ctx.cache.not_modified.take() {
            Some(not_modified) => {
                merged = merge_not_modified(resp, &not_modified);
                &merged
            }
            None => resp,
        };
        let mut decision = repo.freshness.decide(class, resp);
        // What the body is verified against is kept with it, so a later request naming a
        // digest knows what it would be served. Only a body this request hashes (a 304 keeps
        // what the stored copy was verified against).
        if let (RespCacheable::Cacheable(meta), Some(expected), false) = (&mut decision, ctx.body.expected.as_ref(), revalidated) {
            let _ = meta.response_header_mut().insert_header(DIGEST_HEADER, expected.to_string());
        }
        // What a document announces is what was derived before its body is rewritten (at its
        // end): at least this many. (A 304 keeps the stored count, and its body.)
        if let (RespCacheable::Cacheable(meta), Some(count), false) = (&mut decision, derived_count, revalidated) {
            let _ = meta.response_header_mut().insert_header(DERIVED_COUNT_HEADER, count.to_string());
        }
        // (A 304 writes only headers.)
        if decision.is_cacheable() && !revalidated {
            let len = resp.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
            if !self.storage.disk().has_room(len) && !self.make_room(len) {
                self.metrics.cache_skipped.with_label_values(&[&repo.name, "disk_full"]).inc();
                return RespCacheable::Uncacheable(NoCacheReason::StorageError);
            }
        }
        decision
    }

    /// A filesystem with no room for a fill of `len` bytes: evict (in eviction's order) what
    /// frees that much, and say whether it fits now. Pingora evicts only once a fill is done,
    /// so without this a full disk would stop admitting anything new.
    fn make_room(&self, len: Option<u64>) -> bool {
        let Some(len) = len else { return false };
        let evicted = self.eviction.make_room(len, self.storage.disk().shortfall(len));
        if evicted.is_empty() {
            return false;
        }
        for key in &evicted {
            self.storage.remove(key.key());
        }
        self.storage.disk().has_room(Some(len))
    }

    /// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI,
    /// every variant of it.
    pub(super) fn invalidate_after_unsafe(&self, method: &Method, status: u16, ctx: &RequestCtx) {
        if method.is_safe() || status >= 400 {
            return;
        }
        if let Some((repo, route)) = ctx.routed() {
            let key = crate::router::cache_key(&repo.name, &route.resolved.key_path);
            for k in self.storage.purge_url(&key.to_compact()) {
                self.eviction.remove(pingora::cache::CacheEntryKeyRef::from_entry_id(&k, None));
            }
        }
    }

    /// The `X-Hangar-Cache` result of this request.
    pub(super) fn result(&self, session: &Session, ctx: &RequestCtx) -> CacheResult {
        if ctx.cache.served_stale {
            CacheResult::Stale
        } else if ctx.cache.fast_hit {
            CacheResult::Hit
        } else {
            ctx.local.unwrap_or_else(|| cache_result(session.cache.phase()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(cache_result(CachePhase::Hit), CacheResult::Hit);
        assert_eq!(cache_result(CachePhase::Bypass), CacheResult::Bypass);
        assert!(stored(CachePhase::Miss) && !stored(CachePhase::Hit));
    }

    #[test]
    fn entity_tags_compare_weakly_and_unquoted_tags_are_opaque_tags() {
        let resp = |etag: &str| {
            let mut r = ResponseHeader::build(200, None).unwrap();
            r.insert_header("etag", etag).unwrap();
            r
        };
        let req = |inm: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("if-none-match", inm).unwrap();
            r
        };
        assert!(not_modified(&req("\"a\""), &resp("\"a\"")));
        assert!(not_modified(&req("W/\"a\""), &resp("\"a\"")), "weak comparison");
        assert!(not_modified(&req("\"x\", \"a\""), &resp("W/\"a\"")));
        assert!(not_modified(&req("\"u1\""), &resp("u1")), "an unquoted ETag is the tag it would be quoted");
        assert!(!not_modified(&req("\"u\""), &resp("u1")));
        assert!(!not_modified(&req("\"a,b\""), &resp("b")), "commas inside quotes do not split");
        assert!(not_modified(&req("*"), &resp("\"z\"")));
    }

    #[test]
    fn a_304_refreshes_headers_but_not_the_body_description() {
        let mut stored = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [("content-length", "10"), ("etag", "\"a\""), ("age", "50"), ("cache-control", "max-age=1")] {
            stored.insert_header(k, v).unwrap();
        }
        let mut fresh = ResponseHeader::build(304, None).unwrap();
        for (k, v) in [("content-length", "0"), ("etag", "\"b\""), ("cache-control", "max-age=60")] {
            fresh.insert_header(k, v).unwrap();
        }
        let merged = merge_not_modified(&stored, &fresh);
        let h = |n: &str| merged.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!((h("content-length"), h("etag"), h("cache-control"), h("age")), (Some("10".into()), Some("\"b\"".into()), Some("max-age=60".into()), None));
    }
}
