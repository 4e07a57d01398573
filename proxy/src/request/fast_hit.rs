//! Fresh memory-tier hits answered from `request_filter`, before pingora's cache phases.
//!
//! Why: on a small hit, pingora's cache state machine costs about as much as everything else
//! the proxy does (bench/README.md: `proxy_cache_hit` alone was a quarter of a 1 KiB hit's
//! instructions: the `CacheMeta` rebuilt from the memory tier, the response head it clones
//! and fills, its range and conditional filters, the hit handler it boxes and finishes).
//! A request that the full path would answer with the stored response exactly as it is
//! needs none of that: the object is in memory, complete and verified (the memory tier only
//! ever holds committed fills), and fresh.
//!
//! So the shortcut takes only what cannot come out differently on the full path, and
//! anything else goes the full way:
//! - `GET` or `HEAD`, without `Range`, without any conditional field (`If-None-Match`,
//!   `If-Modified-Since`, `If-Match`, `If-Unmodified-Since`, `If-Range`) and without
//!   request directives (`Cache-Control`, `Pragma`) that limit what a stored response may be
//!   used for;
//! - an object the memory tier holds, fresh (RFC 9111 §4.2), stored without variants
//!   (`Vary`) and with a `Content-Length`, and no fill of its key under way (a refresh in
//!   progress wins, as in `lookup`);
//! - a route whose hit needs nothing more than the stored response: not a document that is
//!   rewritten or whose listing is read, not a body that states its own expiry, not a page
//!   that announces derived files; and a copy verified against the digest the request names,
//!   or the one its index lists now (once no listing is still being read).
//!
//! What the full path adds to a whole hit is added here too: `Age` (RFC 9111 §4), the
//! registry's digest header, `X-Hangar-Cache: hit`, and the eviction policy hears of the use.
//! The outcome (access log, metrics, events) is the same: see `RequestCtx::cache`.

use std::time::SystemTime;

use bytes::Bytes;
use hangar_core::wire::{CACHE_HEADER, DIGEST_HEADER};
use hangar_core::CacheResult;
use http::{header, Method};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheEntryKey;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::cache::{judge_copy, CopyVerdict};
use super::derive::DERIVED_COUNT_HEADER;
use super::{HangarProxy, RequestCtx};

/// Request fields that make a stored response's answer depend on more than the response.
const DECIDING_FIELDS: [header::HeaderName; 8] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

impl HangarProxy {
    /// Answer a fresh memory-tier hit at once; `Ok(false)` leaves the request to the full
    /// path (nothing has been written then). Errors are the client connection's.
    pub(super) async fn fast_hit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some((resp, body)) = self.fast_hit_response(session, ctx) else { return Ok(false) };
        ctx.cache.fast_hit = true;
        self.metrics.fast_hits.inc();
        let head = session.req_header().method == Method::HEAD;
        session.write_response_header(resp, head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// The response head and body of a hit the shortcut may answer, as the full path would
    /// have written them; `None` when it may not.
    fn fast_hit_response(&self, session: &Session, ctx: &RequestCtx) -> Option<(Box<ResponseHeader>, Bytes)> {
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            return None;
        }
        // One pass over the (few) fields the client sent, not a lookup per field named.
        if req.headers.keys().any(|k| DECIDING_FIELDS.contains(k)) {
            return None;
        }
        let (repo, route) = ctx.routed()?;
        let r = &route.resolved;
        if r.rewrite || r.lists_digests || r.lists_derived.is_some() || route.states_expiry || ctx.body.rebase.is_some() || ctx.caller.background {
            return None;
        }
        let key = crate::router::cache_key(&repo.name, &r.key_path);
        let obj = self.storage.in_memory(&key.combined_bin())?;
        let meta = &obj.meta;
        let now = SystemTime::now();
        if meta.variance().is_some() || meta.fresh_until() < now {
            return None;
        }
        // A head stored without a length (a chunked or HTTP/2 upstream) is framed by pingora's
        // hit path (chunked, no `Accept-Ranges`): left to it.
        let stored = &meta.header().headers;
        if !stored.contains_key(header::CONTENT_LENGTH) || stored.contains_key(header::TRANSFER_ENCODING) {
            return None;
        }
        // Verified against the digest the request names, else the one its index lists now
        // (once no listing is still being read: `cache_hit_filter` waits for that).
        if ctx.body.expected.is_none() && (r.learned_digest || r.digest_from.is_some()) && !repo.digests.settled() {
            return None;
        }
        let stored_digest = || meta.header().headers.get(DIGEST_HEADER).and_then(|v| v.to_str().ok());
        if !matches!(judge_copy(ctx, stored_digest), CopyVerdict::Fits) {
            return None;
        }
        let served = obj.served_head.get_or_init(|| served_head(meta.header()));
        let mut resp = Box::new(served.clone());
        // Replaces the placeholder: the head has room for it, nothing is rebuilt.
        let age = now.duration_since(meta.epoch()).unwrap_or_default().as_secs();
        resp.insert_header(header::AGE, age).ok()?;
        if let (Some(name), Some(digest)) = (r.digest_header, r.digest.as_ref()) {
            if resp.status == http::StatusCode::OK {
                resp.insert_header(name, digest.to_string()).ok()?;
            }
        }
        // The use counts for eviction as the full path's hit would (`HttpCache::cache_found`).
        let entry = CacheEntryKey::from_entry_id(key.to_compact(), None);
        self.eviction.access(&entry, obj.body.len(), meta.fresh_until());
        Some((resp, obj.body.clone()))
    }
}

/// The head every fast hit on an object starts from: the stored head as the full path's hit
/// writes it (HTTP/1.1, `X-Hangar-Cache: hit`, no derived-file count, `Accept-Ranges` on a
/// 200), with an `Age` to be replaced per hit. (Only heads with a `Content-Length` get here.)
fn served_head(stored: &ResponseHeader) -> ResponseHeader {
    let mut head = stored.clone();
    head.set_version(http::Version::HTTP_11);
    head.remove_header(DERIVED_COUNT_HEADER);
    let _ = head.insert_header(header::AGE, 0);
    // Pingora sets `Connection` (and `Date`) on every response it writes: with an entry in
    // place it replaces the value instead of growing the map of each hit's copy.
    let _ = head.insert_header(header::CONNECTION, "keep-alive");
    // Pingora's range filter says so on a whole 200 (with a length) it could serve in ranges.
    if head.status == http::StatusCode::OK {
        let _ = head.insert_header(header::ACCEPT_RANGES, "bytes");
    }
    let _ = head.insert_header(CACHE_HEADER, CacheResult::Hit.as_str());
    head
}
