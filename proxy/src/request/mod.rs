//! The request path: pingora's `ProxyHttp` phases, each short and delegating to one module.
//!
//! | phase | module | what it decides |
//! |---|---|---|
//! | `request_filter` | [`admission`], [`resolution`] ([`pointer`]), [`fast_hit`] | who sent it, which repository, what the format makes of it; a fresh memory-tier hit answered at once |
//! | `request_cache_filter`, `cache_key_callback`, `cache_hit_filter`, `cache_vary_filter` | [`cache`], [`range_ahead`] | cache key and variant, whether a stored copy may answer |
//! | `proxy_upstream_filter` | [`body`], [`attempt`] | the digest a fetch must have; peer, origin, upstream |
//! | `upstream_peer` .. `upstream_response_filter`, `error_while_proxy`, `fail_to_connect` | [`attempt`] | each try, and the next |
//! | `response_cache_filter` | [`cache`] | whether the response is stored |
//! | body filters | [`body`] | digests checked, documents rewritten, listings read |
//! | `logging` | [`outcome`] | one [`crate::outcome::Outcome`] to every sink |
//!
//! Format-specific decisions live in the format modules, not here. The per-request state is
//! [`ctx::RequestCtx`], made of one part per phase.

mod admission;
mod attempt;
mod body;
mod cache;
mod ctx;
mod derive;
mod explain;
mod fast_hit;
mod local;
mod origin_copy;
mod outcome;
mod pointer;
mod range_ahead;
mod rebase;
mod resolution;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use hangar_core::wire::CACHE_HEADER;
use http::header;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

pub use self::ctx::RequestCtx;
use self::local::Reply;
use crate::client::Client;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::offline::OfflineSwitch;
use crate::origin::OriginClient;
use crate::outcome::Sinks;
use crate::router::Router;
use crate::storage::eviction::DiskEviction;
use crate::storage::TieredStorage;
use crate::upstream::SharedResolver;

/// gzip level for documents compressed per response: level 1 keeps a 10 MB packument to a
/// few milliseconds of CPU and still shrinks JSON several times over.
const DOCUMENT_GZIP_LEVEL: u32 = 1;

/// Everything the phases share; one per process.
pub struct HangarProxy {
    /// Who may do what: checked first on every request.
    pub auth: Arc<crate::auth::Authorizer>,
    pub router: Arc<Router>,
    pub storage: &'static TieredStorage,
    pub eviction: &'static DiskEviction,
    pub cache_lock: &'static CacheKeyLockImpl,
    pub resolver: SharedResolver,
    pub metrics: Arc<Metrics>,
    pub offline: Arc<OfflineSwitch>,
    /// The proxy's own listener, for reading documents through the cache.
    pub listen_addr: std::net::SocketAddr,
    pub fleet: Arc<Fleet>,
    /// The regional origin: asked before upstreams for immutable artefacts.
    pub origin: Option<Arc<OriginClient>>,
    /// For the proxy's own side requests: token endpoints, tag lookups, loopback reads.
    pub client: Arc<Client>,
    /// Who hears how each request ended.
    pub sinks: Sinks,
    /// `connections.keepalive_timeout`, whole seconds, rounded up. (A connection's *first*
    /// request is also subject to pingora's fixed 60 s per read.)
    pub keepalive_secs: u64,
    /// Files derived from stored artefacts (a wheel's core metadata).
    pub derived: Arc<crate::derived::DerivedFiles>,
}

/// Fields that concern one connection only (RFC 9110 §7.6.1): the ones the `Connection` field
/// names and those hop-by-hop by definition. They are neither stored nor passed on. (Message
/// framing, `Content-Length` and `Transfer-Encoding`, stays pingora's to handle.)
fn strip_hop_by_hop(headers: &http::HeaderMap, always: &[&'static str], mut remove: impl FnMut(&http::HeaderName)) {
    let named: Vec<http::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .chain(always.iter().map(|n| http::HeaderName::from_static(n)))
        .filter(|n| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING && *n != header::HOST)
        .collect();
    for name in &named {
        remove(name);
    }
}

/// The request target as the client sent it: path and query.
fn target_of(req: &RequestHeader) -> &str {
    req.uri.path_and_query().map_or_else(|| req.uri.path(), |pq| pq.as_str())
}

/// Every `Accept` value of the request, as one normalised list: clients send several headers
/// (registries need them all) and space them differently.
fn accept_list(headers: &http::HeaderMap) -> String {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl ProxyHttp for HangarProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Documents are compressed for clients that accept it, and never twice: the module
    /// leaves a response that already has a Content-Encoding alone. It has to be on before it
    /// reads the request's Accept-Encoding, which happens before `request_filter`; resolution
    /// turns it off again for everything that is not a document.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
            c.adjust_level(DOCUMENT_GZIP_LEVEL);
        }
        // Interim responses are forwarded by `upstream_response_filter` itself (pingora drops
        // one that arrives together with the final response of a cache miss).
        session.downstream_session.set_ignore_info_resp(true);
        crate::connections::headers_read(session);
        // Pingora's own limit on the wait for the next request (it times out each read) goes
        // a second past ours, so ours closes idle connections (and counts them). Only while
        // pingora keeps the connection at all: not when shutting down, not for HTTP/1.0.
        if session.downstream_session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.keepalive_secs + 1));
        }
        Ok(())
    }

    fn persist_connection_context(&self, session: &Session, _ctx: &RequestCtx) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        // The connection is kept for another request: from now on it is idle.
        crate::connections::idle(session);
        None
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let admitted = self.admit(session, ctx).await;
        let resolved = match admitted {
            Ok((repo, rest)) => self.resolve(session, ctx, repo, &rest).await,
            Err(reply) => Err(reply),
        };
        match resolved {
            Ok(()) => self.fast_hit(session, ctx).await,
            // Boxed: a local answer is the rare path, and its future would otherwise be part
            // of every request's (see `RequestCtx` on why their size matters).
            Err(reply) => Box::pin(local::respond(session, ctx, reply)).await,
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if self.range_ahead_of_fill(session, ctx) {
            return Ok(());
        }
        self.enable_cache(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        self.key(ctx)
    }

    async fn cache_hit_filter(&self, _session: &mut Session, meta: &CacheMeta, _hit: &mut HitHandler, is_fresh: bool, ctx: &mut RequestCtx) -> Result<Option<ForcedFreshness>> {
        // A listing that has just passed may still be being read: what it lists decides
        // whether a cached artefact is still the one listed.
        if let Some((repo, route)) = ctx.routed() {
            if ctx.body.expected.is_none() && (route.resolved.learned_digest || route.resolved.digest_from.is_some()) {
                Box::pin(repo.digests.settle(std::time::Duration::from_secs(10))).await;
            }
        }
        Ok(self.judge_hit(meta, is_fresh, ctx))
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let offline = ctx.repo.as_ref().is_some_and(|r| self.offline.is_offline(&r.name));
        let only_if_cached = ctx.route.as_ref().is_some_and(|r| r.directives.only_if_cached);
        if offline || only_if_cached {
            let why = if offline { "repository is offline and this is not cached" } else { "not in cache (only-if-cached)" };
            local::respond(session, ctx, Reply::error(504, why)).await?;
            return Ok(false);
        }
        self.expect_digest(ctx).await;
        self.plan_hops(session, ctx);
        Ok(true)
    }

    fn cache_vary_filter(&self, meta: &CacheMeta, ctx: &mut RequestCtx, req: &RequestHeader) -> Option<pingora::cache::key::HashBinary> {
        self.variant(meta, ctx, req)
    }

    fn response_cache_filter(&self, _session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<RespCacheable> {
        Ok(self.storable(resp, ctx))
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        self.peer(ctx).await
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream_request: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        self.shape_request(session, upstream_request, ctx)
    }

    async fn upstream_response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        // 102, 103: passed to the client as they come, never cached, nothing decided by them.
        if resp.status.is_informational() && resp.status != http::StatusCode::CONTINUE && resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            let downstream = &mut session.downstream_session;
            downstream.set_ignore_info_resp(false);
            let _ = downstream.write_response_header_ref(resp).await;
            downstream.set_ignore_info_resp(true);
            return Ok(());
        }
        ctx.upstream_status = Some(resp.status.as_u16());
        let hop_by_hop = ["keep-alive", "proxy-connection", "proxy-authenticate", "connection"];
        let mut names = Vec::new();
        strip_hop_by_hop(&resp.headers, &hop_by_hop, |n| names.push(n.clone()));
        for name in &names {
            resp.remove_header(name);
        }
        self.on_response(session, resp, ctx).await?;
        // Internal headers mean something only from Hangar's own parts: an upstream (or
        // origin, once read) must not be able to say what a copy was verified against.
        if !ctx.attempt.at_peer() {
            let internal: Vec<http::HeaderName> = resp.headers.keys().filter(|n| n.as_str().starts_with(hangar_core::wire::INTERNAL_PREFIX)).cloned().collect();
            for name in &internal {
                resp.remove_header(name);
            }
        }
        match resp.status {
            http::StatusCode::NOT_MODIFIED => ctx.cache.not_modified = Some(Box::new(resp.clone())),
            http::StatusCode::OK => self.prepare_body(resp, ctx)?,
            _ => {}
        }
        Ok(())
    }

    fn upstream_response_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<Option<std::time::Duration>> {
        self.upstream_body(body, end_of_stream, ctx)?;
        Ok(None)
    }

    fn response_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<Option<std::time::Duration>> {
        self.served_body(body, end_of_stream, ctx)?;
        Ok(None)
    }

    fn error_while_proxy(&self, peer: &HttpPeer, session: &mut Session, e: Box<Error>, ctx: &mut RequestCtx, _client_reused: bool) -> Box<Error> {
        self.on_error(session, e.more_context(format!("Peer: {peer}")), ctx)
    }

    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
        if !ctx.attempt.at_peer() && !ctx.attempt.at_origin() {
            ctx.attempt.explain(explain::connect_failure(peer, &e));
        }
        self.on_connect_failure(ctx, e)
    }

    /// A client that goes away mid-response is no fault of the proxy's (the `logging` phase
    /// counts it, in `hangar_client_disconnects_total`); upstream failures are in the access
    /// log (`upstream_error`) and the reply's body already. Neither gets pingora's own ERROR
    /// line (which names the `Host` header) at the default level; internal errors do.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        let routine = outcome::client_went_away(error) || matches!(error.esource(), ErrorSource::Upstream | ErrorSource::Downstream);
        if routine {
            tracing::debug!(error = %error, "request failed");
        }
        routine
    }

    /// What pingora's own log lines say of a request: its method and path, never its headers.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    /// A step of the attempt (a redirect followed, a challenge answered, the next hop) is how
    /// a fetch proceeds, not a failure worth a warning.
    fn suppress_proxy_warn_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error, _context: pingora::proxy::ProxyWarnLogContext) -> bool {
        ctx.attempt.stepped()
    }

    /// Pingora asks this before serving a stale copy. With an upstream error: serve it (and
    /// the breaker hears of the error). Without one, it is asking about stale-while-revalidate:
    /// serve the stale copy at once while one background request refreshes it, unless the
    /// client asked for a validated response. (The stored response's window, zero unless its
    /// path is metadata or the upstream allowed it, has already been checked.)
    fn should_serve_stale(&self, _session: &mut Session, ctx: &mut RequestCtx, error: Option<&Error>) -> bool {
        match error {
            None => !ctx.cache.client_revalidates && !ctx.caller.background,
            Some(e) => {
                self.on_stale_error(ctx, e);
                e.esource() == &ErrorSource::Upstream
            }
        }
    }

    /// A client's `If-None-Match` against a stored response, compared as RFC 9110 §8.8.3.2 says
    /// (see [`cache::not_modified`]).
    fn cache_not_modified_filter(&self, session: &Session, resp: &ResponseHeader, _ctx: &mut RequestCtx) -> Result<bool> {
        Ok(cache::not_modified(session.req_header(), resp))
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header();
        self.invalidate_after_unsafe(&req.method, resp.status.as_u16(), ctx);
        let whole_hit = session.cache.phase() == CachePhase::Hit && resp.status == http::StatusCode::OK && req.method == http::Method::GET && !req.headers.contains_key(header::RANGE);
        // What a copy was verified against is a fact only once it was: on a fill in progress
        // the body is still being checked (and a HEAD's never will be, in this request).
        if session.cache.phase() != CachePhase::Hit {
            resp.remove_header(hangar_core::wire::DIGEST_HEADER);
        }
        resp.remove_header(derive::DERIVED_COUNT_HEADER);
        // A HEAD that starts a fill keeps its connection busy until the fill ends (the body is
        // read for the cache): the client must not queue its next request behind it (uv's
        // ranges after a HEAD would wait for the whole object; see `range_ahead`).
        // (A small object's fill ends about as soon: its connection is kept.)
        let large = resp.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_none_or(|l| l > range_ahead::AHEAD);
        if req.method == http::Method::HEAD && large && matches!(session.cache.phase(), CachePhase::Miss | CachePhase::Expired) {
            resp.insert_header(header::CONNECTION, "close")?;
            session.set_keepalive(None);
        }
        if whole_hit {
            self.read_cached_listing(ctx);
        }
        if let Some((name, digest)) = ctx.route.as_ref().and_then(|r| Some((r.resolved.digest_header?, r.resolved.digest.as_ref()?))) {
            if resp.status == http::StatusCode::OK || resp.status == http::StatusCode::PARTIAL_CONTENT {
                resp.insert_header(name, digest.to_string())?;
            }
        }
        if ctx.body.rebase.is_some() {
            // Rebasing changes the length: the body goes chunked.
            resp.remove_header(&header::CONTENT_LENGTH);
        }
        resp.insert_header(CACHE_HEADER, self.result(session, ctx).as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let mut code = match e.etype() {
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
        // RFC 9111 §5.2.2.2: a stored copy that must not be served without revalidation, and an
        // upstream that cannot be reached: 504.
        let unreached = e.esource() == &ErrorSource::Upstream && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        let had_copy = ctx.cache.found_unservable_stale;
        if code == 502 && unreached && had_copy {
            code = 504;
        }
        if e.esource() == &ErrorSource::Upstream {
            ctx.attempt.fail(match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => "connect",
                _ => "other",
            });
        }
        // Once the response head went out, all we can do is cut the connection.
        if code > 0 && session.response_written().is_none() {
            let message = match (code, ctx.attempt.failure()) {
                (502, Some(why)) => format!("upstream failed: {why}"),
                (502, None) => format!("upstream failed: {}", explain::upstream_failure(e)),
                (503, _) if ctx.attempt.error() == Some("breaker_open") => explain::breaker_open(ctx.repo_name(), ctx.repo.as_ref().and_then(|r| r.breaker.open_until())),
                (503, _) => "upstream unavailable".to_string(),
                (504, _) if unreached && had_copy => "upstream unreachable, and the cached copy may not be used without asking it (must-revalidate, no-cache or s-maxage)".to_string(),
                (504, _) => "upstream timed out".to_string(),
                _ => "request failed".to_string(),
            };
            let _ = local::respond(session, ctx, Reply::error(code, message)).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.report(session, e, ctx);
    }
}
