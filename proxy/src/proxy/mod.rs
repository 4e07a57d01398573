//! The request path: pingora's `ProxyHttp` phases, in the order they run.
//!
//! `request_filter` routes and rejects bad input; `request_cache_filter` and
//! `cache_key_callback` turn the cache on with a key made of the repository and its path;
//! `upstream_peer` / `upstream_request_filter` aim the request at the (possibly redirected)
//! upstream; `upstream_response_filter` follows redirects server-side; `response_cache_filter`
//! asks the repository's format whether the response may be stored; `response_filter` labels
//! every response with `X-Hangar-Cache`; `logging` records metrics. Format-specific decisions
//! live in the format modules, not here.

mod auth;
mod body;
mod hops;
mod local;
mod pointer;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use self::body::proxy_base;
use self::hops::{is_internal, Hop};
use self::local::{respond_local, respond_local_json};
use crate::breaker::Admission;
use crate::digest::{Digest, Hasher};
use crate::directives::RequestDirectives;
use crate::fleet::{Fleet, HOP_HEADER};
use crate::format::{FormatError, Resolved, UpstreamChoice};
use crate::freshness::PathClass;
use crate::metadata::MetadataWrite;
use crate::metrics::{status_class, Metrics};
use crate::offline::OfflineSwitch;
use crate::origin::{OriginClient, ONLY_IF_CACHED_HEADER};
use crate::path::RequestPath;
use crate::router::{Repository, Router};
use crate::storage::TieredStorage;
use crate::upstream::{make_peer, SharedResolver, UpstreamUrl};
use crate::upstream_client::UpstreamClient;

/// Longest request target accepted (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request header section accepted (431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
pub const MAX_HEADER_COUNT: usize = 100;
/// Redirect hops followed for one request.
pub const MAX_REDIRECTS: u8 = 5;

pub const CACHE_HEADER: &str = "x-hangar-cache";

/// Everything the phases share; one per process.
pub struct HangarProxy {
    pub router: Arc<Router>,
    pub storage: &'static TieredStorage,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub cache_lock: &'static CacheKeyLockImpl,
    pub resolver: SharedResolver,
    pub metrics: Arc<Metrics>,
    pub offline: Arc<OfflineSwitch>,
    /// The proxy's own listener, for reading documents through the cache.
    pub listen_addr: std::net::SocketAddr,
    pub fleet: Arc<Fleet>,
    /// The regional origin: asked before upstreams for immutable artefacts, and handed
    /// those fetched from upstreams.
    pub origin: Option<Arc<OriginClient>>,
    /// For the proxy's own upstream requests: token endpoints, tag lookups.
    pub client: Arc<UpstreamClient>,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    repo: Option<Arc<Repository>>,
    /// What the repository's format made of the request.
    resolved: Option<Resolved>,
    /// The path class after the repository's own patterns.
    class: Option<PathClass>,
    /// The proxy's URL of the repository, for rewritten documents.
    proxy_base: String,
    /// The digest the body must have; hashed while it streams.
    expected_digest: Option<Digest>,
    hasher: Option<Hasher>,
    /// The digest could not be learned: serve the artefact, but do not cache it.
    unverified: bool,
    /// A document being collected for rewriting.
    document: Option<BytesMut>,
    /// A copy of a listing being collected (while it streams on) to learn its digests.
    listing: Option<BytesMut>,
    /// The listing comes from cache (read on its first hit since start), not the upstream.
    listing_from_cache: bool,
    /// The document arrived gzip-encoded and is decoded before rewriting.
    document_gzip: bool,
    /// Where the next upstream attempt goes: origin and path-with-query.
    target: Option<(UpstreamUrl, String)>,
    /// Set when an upstream answered with a redirect we will follow on the next attempt.
    redirect_pending: bool,
    redirects: u8,
    /// The redirect left the original origin: credentials must not follow.
    cross_origin: bool,
    /// A redirect from the upstream leads elsewhere: its address is checked (SSRF).
    untrusted_redirect: bool,
    upstream_started: Option<Instant>,
    /// Label for a response the proxy generated itself.
    local_result: Option<&'static str>,
    /// An expired entry served without asking the upstream: the repository is offline, or
    /// the client's `max-stale` accepted it.
    served_stale: bool,
    /// The client's Cache-Control directives (empty when the repository ignores them).
    directives: RequestDirectives,
    /// The client asked for a validated response, so stale-while-revalidate must not answer.
    client_revalidates: bool,
    /// A background refresh spawned by stale-while-revalidate, not a client request.
    background: bool,
    /// The upstream's 304 to a revalidation, merged into the stored headers before they are
    /// judged again.
    not_modified: Option<Box<ResponseHeader>>,
    /// Where the current attempt goes when it is not the upstream: the key's owner in the
    /// fleet, or the regional origin.
    hop: Option<Hop>,
    /// Hops still to try, in order, before the upstream.
    next_hops: std::collections::VecDeque<Hop>,
    /// Where the request goes once the hops are exhausted.
    upstream_target: Option<(UpstreamUrl, String)>,
    /// The body came from origin or a peer (so it is not handed to origin again).
    from_hop: bool,
    /// The request arrived from another proxy of the fleet.
    fleet_hop: bool,
    /// The `Authorization` this request carries upstream after a challenge.
    upstream_auth: Option<String>,
    /// `upstream_auth` is a cached token sent before any challenge.
    preauthorized: bool,
    /// The request path a fleet peer is asked, when it is not the client's: the object a
    /// pointer led to, so the owner serves exactly that (and does not look the tag up again).
    peer_path: Option<String>,
    /// The body states its own expiry (apt's Valid-Until).
    states_expiry: bool,
    /// The first bytes of such a body, until the expiry is found.
    expiry_head: Option<Vec<u8>>,
    /// An upstream attempt is under way whose outcome the breaker has not been told yet.
    breaker_pending: bool,
}

impl RequestCtx {
    fn repo_name(&self) -> &str {
        self.repo.as_ref().map_or("-", |r| r.name.as_str())
    }

    /// The `X-Hangar-Cache` label of this request.
    fn result(&self, session: &Session) -> &'static str {
        if self.served_stale {
            "stale"
        } else {
            self.local_result.unwrap_or_else(|| cache_result(session.cache.phase()))
        }
    }
}

/// RFC 9111 §3.2: a 304's header fields replace the stored ones, except those describing the
/// stored body (its length and encoding) and hop-by-hop fields. `Age` and `Date` are the
/// 304's or none, so the stored copy's age starts over; `Vary` keeps the stored value because
/// pingora keeps the stored variance.
fn merge_not_modified(stored: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    const KEEP: [header::HeaderName; 7] = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
        header::CONNECTION,
        header::VARY,
        header::TRAILER,
    ];
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

/// Every `Accept` value of the request, as one normalised list: clients send several headers
/// (registries need them all) and space them differently.
fn accept_list(req: &RequestHeader) -> String {
    req.headers
        .get_all(header::ACCEPT)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// The `X-Hangar-Cache` label for where pingora's cache state machine ended.
pub fn cache_result(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "hit",
        CachePhase::Miss => "miss",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        CachePhase::Expired => "expired",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
        // Looked up, fetched, but the response was not storable (or the fetch failed).
        CachePhase::Disabled(reason) if reason != NoCacheReason::NeverEnabled => "miss",
        CachePhase::Disabled(_) | CachePhase::Bypass | CachePhase::Uninit | CachePhase::CacheKey => "bypass",
    }
}

/// gzip level for documents compressed per response: level 1 keeps a 10 MB packument to a
/// few milliseconds of CPU and still shrinks JSON several times over.
const DOCUMENT_GZIP_LEVEL: u32 = 1;

impl HangarProxy {

    fn breaker_outcome(&self, repo: &Repository, ok: bool) {
        if ok {
            if repo.breaker.success() {
                tracing::info!(repository = %repo.name, "upstream recovered; circuit breaker closed");
            }
        } else if repo.breaker.failure() {
            tracing::warn!(repository = %repo.name, "upstream failing; circuit breaker open");
            self.metrics.breaker_trips.with_label_values(&[&repo.name]).inc();
            self.fleet.writer.write(MetadataWrite::Breaker { repository: repo.name.clone(), state: 1, ttl: std::time::Duration::from_secs(60) });
        }
        self.metrics.breaker_state.with_label_values(&[&repo.name]).set(repo.breaker.state());
    }
}

#[async_trait]
impl ProxyHttp for HangarProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Documents are compressed for clients that accept it, and never twice: the module
    /// leaves a response that already has a Content-Encoding alone. It has to be on before it
    /// reads the request's Accept-Encoding, which happens before `request_filter`;
    /// `request_filter` turns it off again for everything that is not a document.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
            c.adjust_level(DOCUMENT_GZIP_LEVEL);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let uri_len = req.raw_path().len();
        if uri_len > MAX_URI_BYTES {
            return respond_local(session, ctx, 414, "request URI too long", &[]).await;
        }
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes > MAX_HEADER_BYTES || req.headers.len() > MAX_HEADER_COUNT {
            return respond_local(session, ctx, 431, "request header fields too large", &[]).await;
        }
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let method = req.method.clone();
        let (repo, rest) = match self.router.route(&path, query.as_deref()) {
            Ok(found) => found,
            Err(e) => return respond_local(session, ctx, 404, &e.to_string(), &[]).await,
        };
        let repo = repo.clone();
        ctx.repo = Some(repo.clone());
        if !repo.format.allows(&method, rest) {
            let allow = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
                .into_iter()
                .filter(|m| repo.format.allows(&m.parse().expect("standard method"), rest))
                .collect::<Vec<_>>()
                .join(", ");
            return respond_local(session, ctx, 405, "method not allowed", &[(header::ALLOW, &allow)]).await;
        }
        let mut resolved = match repo.format.resolve(&RequestPath { relative: rest, query: query.as_deref() }, session.req_header()) {
            Ok(r) => r,
            Err(FormatError::NotFound(why)) => return respond_local(session, ctx, 404, why, &[]).await,
            Err(e) => return respond_local(session, ctx, 400, &e.to_string(), &[]).await,
        };
        if let Some(pointer) = resolved.pointer.clone() {
            match self.follow_pointer(&repo, &resolved, session.req_header()).await {
                pointer::Followed::To(digest) => {
                    let target = pointer.target_for(&digest);
                    ctx.peer_path = Some(format!("{}{target}", repo.prefix));
                    resolved = match repo.format.resolve(&RequestPath { relative: &target, query: None }, session.req_header()) {
                        Ok(r) => r,
                        Err(e) => return respond_local(session, ctx, 502, &format!("upstream named an unusable digest: {e}"), &[]).await,
                    };
                }
                pointer::Followed::NotFound => {
                    return respond_local_json(session, ctx, 404, r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown to the upstream registry"}]}"#).await;
                }
                pointer::Followed::Unresolved => {}
            }
        }
        let upstream = match resolved.upstream {
            UpstreamChoice::Primary => repo.upstream.clone(),
            UpstreamChoice::Files => match repo.files.clone() {
                Some(f) => f,
                None => return respond_local(session, ctx, 502, "repository has no files_upstream", &[]).await,
            },
        };
        let upstream_path = format!("{}{}", upstream.base_path, resolved.upstream_path);
        ctx.class = Some(repo.classify(&resolved.key_path, resolved.class));
        ctx.expected_digest = resolved.digest.clone();
        if resolved.rewrite {
            ctx.proxy_base = proxy_base(&repo, session.req_header());
        } else if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
            // Only documents are compressed here; artefacts are served as stored.
            c.adjust_level(0);
        }
        if let Some((status, body)) = resolved.local {
            return respond_local_json(session, ctx, status, body).await;
        }
        if repo.format.expiry_in_body(&resolved.key_path) {
            ctx.states_expiry = true;
            ctx.expiry_head = Some(Vec::new());
        }
        ctx.resolved = Some(resolved);
        ctx.background = session.subrequest_ctx.is_some();
        if repo.freshness.honor_request_directives() {
            ctx.directives = RequestDirectives::parse(&session.req_header().headers);
        }
        // The proxy's own read-backs (uploads to origin) must never fetch.
        if session.req_header().headers.contains_key(ONLY_IF_CACHED_HEADER) {
            ctx.directives.only_if_cached = true;
        }
        ctx.fleet_hop = session.req_header().headers.contains_key(HOP_HEADER);
        if let Some(scope) = ctx.resolved.as_ref().and_then(|r| r.auth_scope.as_deref()) {
            ctx.upstream_auth = self.preauthorization(&repo, scope);
            ctx.preauthorized = ctx.upstream_auth.is_some();
        }
        ctx.target = Some((upstream, upstream_path));
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let method = &session.req_header().method;
        if ctx.repo.is_some() && (method == Method::GET || method == Method::HEAD) {
            session.cache.enable(self.storage, Some(self.eviction), None, Some(self.cache_lock), None);
        }
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let repo = ctx.repo.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no repository"))?;
        let resolved = ctx.resolved.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "not resolved"))?;
        Ok(crate::router::cache_key(&repo.name, &resolved.key_path))
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        // Offline: whatever is cached is served, however old, whatever the client asks.
        if ctx.repo.as_ref().is_some_and(|r| self.offline.is_offline(&r.name)) {
            if is_fresh {
                return Ok(None);
            }
            ctx.served_stale = true;
            return Ok(Some(ForcedFreshness::ForceFresh));
        }
        // A body that said when it expires is not used past then, not even stale.
        if let (Some(repo), Some(resolved), true) = (ctx.repo.as_ref(), ctx.resolved.as_ref(), ctx.states_expiry) {
            let expired = repo.expiries.lock().get(&resolved.key_path).is_some_and(|t| *t < SystemTime::now());
            if expired {
                return Ok(Some(ForcedFreshness::ForceExpired));
            }
        }
        // RFC 9111 §5.2.1: the client's limits on what a stored response may be used for.
        let d = &ctx.directives;
        let now = SystemTime::now();
        let too_old = d.max_age.is_some_and(|max| meta.age() > max);
        let expires_too_soon = d.min_fresh.is_some_and(|min| meta.fresh_until().duration_since(now).unwrap_or_default() < min);
        if d.no_cache || too_old || expires_too_soon {
            ctx.client_revalidates = true;
            // Validate with the upstream; a stale copy stays usable if the upstream fails.
            return Ok((is_fresh).then_some(ForcedFreshness::ForceExpiredServeStale { expired_at: None }));
        }
        if !is_fresh {
            if let Some(limit) = d.max_stale {
                let staleness = now.duration_since(meta.fresh_until()).unwrap_or_default();
                let stored_cc = pingora::cache::cache_control::CacheControl::from_headers_named("cache-control", meta.headers());
                let forbidden = crate::freshness::forbids_stale(stored_cc.as_ref());
                if !forbidden && limit.is_none_or(|l| staleness <= l) {
                    ctx.served_stale = true;
                    return Ok(Some(ForcedFreshness::ForceFresh));
                }
            }
        }
        Ok(None)
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if ctx.repo.as_ref().is_some_and(|r| self.offline.is_offline(&r.name)) {
            respond_local(session, ctx, 504, "repository is offline and this is not cached", &[]).await?;
            return Ok(false);
        }
        if ctx.directives.only_if_cached {
            respond_local(session, ctx, 504, "not in cache (only-if-cached)", &[]).await?;
            return Ok(false);
        }
        // An artefact about to be fetched must be verified: find its digest now (on a hit it
        // is not needed). The document listing it is read through the proxy itself, so it
        // comes from cache when it can.
        if ctx.expected_digest.is_none() {
            if let (Some(repo), Some(resolved)) = (ctx.repo.clone(), ctx.resolved.as_ref()) {
                if let Some(document) = resolved.digest_from.clone() {
                    let key = resolved.key_path.clone();
                    ctx.expected_digest = match repo.digests.get(&key) {
                        Some(d) => Some(d),
                        None => {
                            self.learn_digests(&repo, &document).await;
                            repo.digests.get(&key)
                        }
                    };
                    ctx.unverified = ctx.expected_digest.is_none() && resolved.digest_required;
                } else if resolved.learned_digest {
                    let key = resolved.key_path.clone();
                    if repo.digests.get(&key).is_none() {
                        repo.digests.settle(std::time::Duration::from_secs(10)).await;
                    }
                    ctx.expected_digest = repo.digests.get(&key);
                }
            }
        }
        // Before the upstream: the key's owner in the fleet (one proxy of the region fetches
        // each object), then, for immutable artefacts, the regional origin (it may hold what
        // this proxy never saw, or what the upstream has since deleted).
        let method = &session.req_header().method;
        if ctx.upstream_target.is_none() && session.cache.enabled() && (method == Method::GET || method == Method::HEAD) {
            let mut hops = std::collections::VecDeque::new();
            if !ctx.fleet_hop {
                let key = pingora::cache::key::CacheHashKey::primary_bin(session.cache.cache_key());
                hops.extend(self.fleet.peer_hops(&key).into_iter().map(Hop::Peer));
            }
            if self.origin.is_some() && ctx.class == Some(PathClass::Immutable) {
                hops.push_back(Hop::Origin);
            }
            if !hops.is_empty() {
                ctx.next_hops = hops;
                ctx.upstream_target = ctx.target.clone();
                self.next_hop(session, ctx);
            }
        }
        Ok(true)
    }

    /// Vary: each listed request header (value normalised for whitespace) picks the variant.
    /// A format's representation replaces `Accept` (clients spell the same wish many ways),
    /// and a rewritten document also varies by the proxy URL written into it.
    fn cache_vary_filter(&self, meta: &CacheMeta, ctx: &mut RequestCtx, req: &RequestHeader) -> Option<pingora::cache::key::HashBinary> {
        let mut builder = pingora::cache::VarianceBuilder::new();
        let representation = ctx.resolved.as_ref().and_then(|r| r.representation);
        if let Some(r) = representation {
            builder.add_value("hangar-representation", r.name);
        }
        if ctx.resolved.as_ref().is_some_and(|r| r.rewrite) {
            builder.add_owned_value("hangar-proxy-base", ctx.proxy_base.clone().into_bytes());
        }
        if ctx.resolved.as_ref().is_some_and(|r| r.vary_accept) {
            builder.add_owned_value("accept", accept_list(req).into_bytes());
        }
        for vary in meta.headers().get_all(header::VARY) {
            for name in vary.to_str().unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = name.to_ascii_lowercase();
                if representation.is_some() && name == "accept" {
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

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(repo) = ctx.repo.as_ref() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let authorization = session.req_header().headers.contains_key(header::AUTHORIZATION);
        // `Vary: *`: no request can be known to match, so nothing is stored (RFC 9111 §4.1).
        let vary_any = resp.headers.get_all(header::VARY).iter().any(|v| v.to_str().unwrap_or("").split(',').any(|n| n.trim() == "*"));
        if vary_any {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache));
        }
        if ctx.directives.no_store {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom("request no-store")));
        }
        if ctx.resolved.as_ref().is_some_and(|r| !r.store) {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom("format says not to store")));
        }
        if ctx.unverified {
            self.metrics.cache_skipped.with_label_values(&[&repo.name, "digest_unknown"]).inc();
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom("digest unknown")));
        }
        let merged;
        let resp = match ctx.not_modified.take() {
            Some(not_modified) => {
                merged = merge_not_modified(resp, &not_modified);
                &merged
            }
            None => resp,
        };
        let decision = repo.freshness.decide(ctx.class.unwrap_or(PathClass::Http), resp, authorization);
        if decision.is_cacheable() {
            let len = resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if !self.storage.disk().has_room(len) {
                self.metrics.cache_skipped.with_label_values(&[&repo.name, "disk_full"]).inc();
                return Ok(RespCacheable::Uncacheable(NoCacheReason::StorageError));
            }
        }
        Ok(decision)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let repo = ctx.repo.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no repository"))?;
        // A redirect hop belongs to the attempt already admitted; peers and origin are not
        // the upstream the breaker watches.
        if !ctx.redirect_pending && ctx.hop.is_none() {
            if repo.breaker.admit() == Admission::Reject {
                self.metrics.upstream_errors.with_label_values(&[&repo.name, "breaker_open"]).inc();
                // Fails at once; pingora serves a stale copy if there is one.
                let mut e = Error::explain(ErrorType::HTTPStatus(503), "upstream circuit breaker is open");
                e.set_retry(false);
                return Err(e.into_up());
            }
            ctx.breaker_pending = true;
        }
        let (up, _) = ctx.target.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        let addr = self.resolver.resolve(&up.host, up.port).await.map_err(|e| {
            if std::mem::take(&mut ctx.breaker_pending) {
                self.breaker_outcome(repo, false);
            }
            self.metrics.upstream_errors.with_label_values(&[&repo.name, "dns"]).inc();
            let mut err = Error::explain(ErrorType::ConnectError, e.to_string());
            err.set_retry(false);
            err.into_up()
        })?;
        if ctx.untrusted_redirect && !repo.allow_private_redirects && is_internal(addr.ip()) {
            self.metrics.upstream_errors.with_label_values(&[&repo.name, "redirect_refused"]).inc();
            let mut e = Error::explain(ErrorType::HTTPStatus(502), format!("upstream redirect to internal address {} refused", addr.ip()));
            e.set_retry(false);
            return Err(e.into_up());
        }
        ctx.redirect_pending = false;
        Ok(make_peer(up, addr, &repo.timeouts))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (up, path) = ctx.target.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        upstream_request.set_uri(path.parse().map_err(|e| Error::because(ErrorType::InternalError, "bad upstream URI", e))?);
        upstream_request.insert_header(header::HOST, up.host_header())?;
        // cargo sends `Upgrade: h2c` over plain HTTP; the proxy speaks HTTP/1.1 upstream.
        upstream_request.remove_header(&header::UPGRADE);
        if let Some(resolved) = ctx.resolved.as_ref() {
            if let Some(r) = resolved.representation {
                upstream_request.insert_header(header::ACCEPT, r.accept)?;
            }
            // Bytes that are rewritten or verified are asked for without a content coding.
            if resolved.rewrite || ctx.expected_digest.is_some() || resolved.digest_from.is_some() {
                upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
            }
        }
        // The upstream's credentials are for the upstream: not for fleet peers or origin.
        if let (Some(auth), None) = (&ctx.upstream_auth, ctx.hop) {
            upstream_request.insert_header(header::AUTHORIZATION, auth.as_str())?;
        }
        if ctx.cross_origin || ctx.hop == Some(Hop::Origin) {
            upstream_request.remove_header(&header::AUTHORIZATION);
            upstream_request.remove_header(&header::COOKIE);
        }
        if let Some(Hop::Peer(_)) = ctx.hop {
            // The owner answers as this proxy would: same Host (rewritten documents point
            // where the client expects), and it must not forward again.
            upstream_request.insert_header(HOP_HEADER, "1")?;
            if let Some(host) = _session.req_header().headers.get(header::HOST).cloned() {
                upstream_request.insert_header(header::HOST, host)?;
            }
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let repo_name = ctx.repo_name().to_string();
        match ctx.hop {
            Some(Hop::Origin) if !matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308) => {
                if resp.status == http::StatusCode::OK {
                    ctx.from_hop = true;
                    self.metrics.origin_fetches.with_label_values(&[&repo_name, "hit"]).inc();
                } else {
                    // Not there (or origin is failing): on to the upstream, as if origin were not asked.
                    let label = if resp.status == http::StatusCode::NOT_FOUND { "miss" } else { "error" };
                    self.metrics.origin_fetches.with_label_values(&[&repo_name, label]).inc();
                    return Err(self.fall_back(session, ctx));
                }
            }
            Some(Hop::Peer(_)) => {
                // The owner's answer is the answer: it already went to origin or the upstream,
                // served stale or said 404. Its documents are already rewritten.
                ctx.from_hop = true;
                ctx.document = None;
                self.metrics.fleet_fetches.with_label_values(&[&repo_name, "peer"]).inc();
            }
            _ => {}
        }
        if ctx.breaker_pending {
            ctx.breaker_pending = false;
            let failed = resp.status.is_server_error() || resp.status.as_u16() == 429;
            if let Some(repo) = ctx.repo.as_ref() {
                self.breaker_outcome(repo, !failed);
            }
        }
        if let Some(started) = ctx.upstream_started.take() {
            self.metrics.upstream_latency.with_label_values(&[&repo_name]).observe(started.elapsed().as_secs_f64());
        }
        if resp.status == http::StatusCode::NOT_MODIFIED {
            ctx.not_modified = Some(Box::new(resp.clone()));
        }
        if resp.status == http::StatusCode::OK {
            self.prepare_body_checks(resp, ctx)?;
        }
        // A registry's challenge: fetch the token (or use the credentials) and ask again.
        // Only the upstream's own challenges: credentials never go to a host a redirect led to.
        if resp.status == http::StatusCode::UNAUTHORIZED && ctx.hop.is_none() && !ctx.cross_origin && auth::may_retry_with_token(ctx) {
            let challenge = resp.headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
            if let (Some(challenge), Some(repo)) = (challenge, ctx.repo.clone()) {
                if std::mem::take(&mut ctx.preauthorized) {
                    if let Some(refused) = ctx.upstream_auth.take() {
                        self.forget_token(&repo, &refused);
                    }
                }
                match self.answer_challenge(&repo, &challenge).await {
                    Ok(authorization) => {
                        ctx.upstream_auth = Some(authorization);
                        let mut e = Error::explain(ErrorType::Custom("upstream token challenge"), "retrying with a token");
                        e.set_retry(true);
                        return Err(e.into_up());
                    }
                    Err(why) => {
                        self.metrics.upstream_errors.with_label_values(&[&repo_name, "token"]).inc();
                        tracing::warn!(repository = %repo_name, error = %why, "cannot answer the upstream's challenge");
                    }
                }
            }
        }
        // Rate limiting is an outage too: with a stale copy at hand, serve it (pingora does this
        // itself for 5xx and connection failures).
        if resp.status.as_u16() == 429 && session.cache.can_serve_stale_error() {
            self.metrics.upstream_errors.with_label_values(&[&repo_name, "rate_limited"]).inc();
            let mut e = Error::explain(ErrorType::HTTPStatus(429), "upstream rate limited");
            e.set_retry(false);
            return Err(e.into_up());
        }
        let redirect = matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308);
        // Only follow for GET (pingora turns a cacheable HEAD into GET upstream).
        if !redirect || session.req_header().method != Method::GET && session.req_header().method != Method::HEAD {
            return Ok(());
        }
        let Some(location) = resp.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string) else {
            return Ok(());
        };
        if ctx.redirects >= MAX_REDIRECTS {
            return Err(Error::explain(ErrorType::HTTPStatus(502), format!("more than {MAX_REDIRECTS} upstream redirects")).into_up());
        }
        let (current, path) = ctx.target.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        let current_path = path.split('?').next().unwrap_or("/").to_string();
        let (next, next_path) = current.redirect_target(&current_path, &location).map_err(|e| {
            Error::explain(ErrorType::HTTPStatus(502), format!("bad upstream redirect: {e}")).into_up()
        })?;
        let repo = ctx.repo.as_ref().expect("routed");
        let leaves_upstream = !next.same_origin(&repo.upstream) && !repo.files.as_ref().is_some_and(|f| next.same_origin(f));
        ctx.cross_origin |= leaves_upstream;
        // Where an upstream's Location may send the proxy is the operator's call, not the
        // upstream's (origin's presigned redirects are the proxy's own infrastructure).
        if leaves_upstream && ctx.hop.is_none() {
            if !repo.redirect_host_allowed(&next.host) {
                self.metrics.upstream_errors.with_label_values(&[&repo_name, "redirect_refused"]).inc();
                return Err(Error::explain(ErrorType::HTTPStatus(502), format!("upstream redirect to {} is not in redirect_hosts", next.host)).into_up());
            }
            ctx.untrusted_redirect = true;
        }
        ctx.target = Some((next, next_path));
        ctx.redirects += 1;
        ctx.redirect_pending = true;
        self.metrics.upstream_redirects.with_label_values(&[&repo_name]).inc();
        // An error marked for retry makes pingora call upstream_peer again, with the new target.
        let mut e = Error::explain(ErrorType::Custom("following upstream redirect"), location);
        e.set_retry(true);
        Err(e.into_up())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        self.check_expiry(body.as_ref(), end_of_stream, ctx)?;
        if let Some(hasher) = ctx.hasher.as_mut() {
            if let Some(b) = body.as_ref() {
                hasher.update(b);
            }
            if end_of_stream {
                let got = ctx.hasher.take().expect("hasher present").finish();
                let expected = ctx.expected_digest.as_ref().expect("a hasher has an expected digest");
                if &got != expected {
                    let repo = ctx.repo_name().to_string();
                    self.metrics.integrity_failures.with_label_values(&[&repo]).inc();
                    tracing::warn!(repository = %repo, expected = %expected, got = %got, "upstream body does not match its published digest; not cached");
                    // The last chunk is withheld, so the client sees a failed transfer, not a
                    // complete wrong file, and the cache entry is abandoned.
                    *body = None;
                    return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream body does not match its published digest").into_up());
                }
                self.metrics.verified.with_label_values(&[ctx.repo_name()]).inc();
            }
        }
        if !ctx.listing_from_cache {
            self.collect_listing(body.as_ref(), end_of_stream, ctx);
        }
        if let Some(buf) = ctx.document.as_mut() {
            if let Some(b) = body.take() {
                let limit = ctx.repo.as_ref().map_or(usize::MAX, |r| r.max_document_bytes);
                if buf.len() + b.len() > limit {
                    return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream document larger than max_document_bytes").into_up());
                }
                buf.extend_from_slice(&b);
            }
            if end_of_stream {
                let raw = ctx.document.take().expect("document present").freeze();
                *body = Some(self.rewrite_document(raw, ctx)?);
            }
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        self.check_expiry(body.as_ref(), end_of_stream, ctx)?;
        if ctx.listing_from_cache {
            self.collect_listing(body.as_ref(), end_of_stream, ctx);
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.breaker_pending {
            ctx.breaker_pending = false;
            if let Some(repo) = ctx.repo.as_ref() {
                self.breaker_outcome(repo, false);
            }
        }
        // (A redirect being followed is not a failure of the hop that sent it.)
        if let (Some(hop), None, false) = (ctx.hop, session.response_written(), ctx.redirect_pending) {
            self.count_hop_failure(hop, ctx);
            return self.fall_back(session, ctx);
        }
        if ctx.redirect_pending {
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Pingora asks this before serving a stale copy on an upstream error; a 5xx that is
    /// answered from cache this way never reaches `upstream_response_filter`, so the breaker
    /// hears about it here.
    ///
    /// Without an error, pingora is asking about stale-while-revalidate: serve the stale copy
    /// at once while one background request refreshes it, unless the client asked for a
    /// validated response. The stored response's window (zero unless its path is metadata or
    /// the upstream allowed it) has already been checked.
    fn should_serve_stale(&self, _session: &mut Session, ctx: &mut RequestCtx, error: Option<&Error>) -> bool {
        let Some(e) = error else {
            return !ctx.client_revalidates && !ctx.background;
        };
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) && std::mem::take(&mut ctx.breaker_pending) {
            if let Some(repo) = ctx.repo.as_ref() {
                self.breaker_outcome(repo, false);
            }
        }
        e.esource() == &ErrorSource::Upstream
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
        if let Some(hop) = ctx.hop {
            self.count_hop_failure(hop, ctx);
            return self.fall_back(_session, ctx);
        }
        if ctx.breaker_pending {
            ctx.breaker_pending = false;
            if let Some(repo) = ctx.repo.as_ref() {
                self.breaker_outcome(repo, false);
            }
        }
        e
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI.
        let method = &session.req_header().method;
        if !method.is_safe() && resp.status.as_u16() < 400 {
            if let (Some(repo), Some(resolved)) = (ctx.repo.as_ref(), ctx.resolved.as_ref()) {
                let key = crate::router::cache_key(&repo.name, &resolved.key_path);
                let purged = self.storage.purge_url(&key.to_compact());
                for k in &purged {
                    self.eviction.remove(pingora::cache::CacheEntryKeyRef::from_entry_id(k, None));
                }
            }
        }
        // A listing served from cache that this process has not read yet (after a restart):
        // read it as it goes out, so the artefacts it lists are verified.
        let whole_hit = session.cache.phase() == CachePhase::Hit
            && resp.status == http::StatusCode::OK
            && method == Method::GET
            && !session.req_header().headers.contains_key(header::RANGE);
        if let (true, Some(repo), Some(resolved)) = (whole_hit, ctx.repo.as_ref(), ctx.resolved.as_ref()) {
            if resolved.lists_digests && !repo.digests.has_learned(&resolved.key_path) {
                ctx.listing = Some(BytesMut::new());
                ctx.listing_from_cache = true;
            }
        }
        resp.insert_header(CACHE_HEADER, ctx.result(session))?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if e.esource() == &ErrorSource::Upstream {
            let kind = match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => "connect",
                _ => "other",
            };
            self.metrics.upstream_errors.with_label_values(&[ctx.repo_name(), kind]).inc();
        }
        // Once the response head went out, all we can do is cut the connection.
        if code > 0 && session.response_written().is_none() {
            let message = match code {
                502 => "upstream failed",
                503 => "upstream unavailable (circuit breaker open)",
                504 => "upstream timed out",
                _ => "request failed",
            };
            ctx.local_result = Some(cache_result(session.cache.phase()));
            let _ = respond_local(session, ctx, code, message, &[]).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let result = ctx.result(session);
        self.hand_to_origin(session, _e, ctx, status, result);
        self.record_metadata(session, ctx, status, result);
        self.drop_companions(session, ctx, status, result);
        if ctx.background {
            self.metrics.background_refreshes.with_label_values(&[ctx.repo_name(), status_class(status)]).inc();
            return;
        }
        let method = &session.req_header().method;
        let (served, fetched) = (session.body_bytes_sent() as u64, session.upstream_body_bytes_received() as u64);
        match ctx.repo.as_ref() {
            Some(repo) => repo.metrics.record(method, status, result, served, fetched),
            None => {
                let m = &self.metrics;
                m.requests.with_label_values(&["-", method.as_str(), status_class(status)]).inc();
                m.cache_results.with_label_values(&["-", result]).inc();
                m.bytes_served.with_label_values(&["-"]).inc_by(served);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn labels() {
        assert_eq!(cache_result(CachePhase::Hit), "hit");
        assert_eq!(cache_result(CachePhase::Bypass), "bypass");
    }
}
