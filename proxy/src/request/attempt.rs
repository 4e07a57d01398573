//! Where a miss is fetched from, as an explicit state machine: the key's owner in the fleet, then
//! the regional origin, then the upstream, with its redirects and token challenges on the way.
//!
//! ```text
//!   Peer(owner) --fails--> Peer(next owner) --fails--> Origin --404/fails--> Upstream
//!                                                                   |  ^
//!                                                     3xx: Redirect |  | 401: Authorize
//!                                                                   v  |
//!                                                                  Upstream
//! ```
//!
//! Pingora drives it: every try is one `upstream_peer` .. `upstream_response_filter` round, an
//! error marked for retry starts the next. [`Attempt::step`], the only way to move, changes the
//! state and returns that error: every transition can be checked in one place.
//!
//! The upstream's circuit breaker admits the request once, as a [`Ticket`], at its first try to
//! the upstream; the ticket is settled once, with the request's upstream outcome, whatever
//! retries, redirects and challenges came between. A connection the upstream resets or closes
//! before answering is retried once, on a fresh one; then the client gets a 502 that says so.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hangar_core::event::Source;
use hangar_core::wire::{HopKind, HOP_HEADER};
use hangar_core::{PathClass, UpstreamUrl};
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::{target_of, HangarProxy, RequestCtx};
use crate::breaker::Ticket;
use crate::upstream::{is_internal, make_peer};

/// Redirect hops followed for one request.
pub const MAX_REDIRECTS: u8 = 5;

/// Connections the upstream reset or closed before answering, retried per request.
pub const MAX_RECONNECTS: u8 = 1;

/// Pool keys no pooled connection has: a retry after a reset must not meet another stale one.
static FRESH_POOL_KEY: AtomicU64 = AtomicU64::new(u64::MAX);

/// Where one try goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hop {
    /// The key's owner in the fleet.
    Peer(SocketAddr),
    /// The regional origin.
    Origin,
    /// The repository's upstream (or where its redirects lead).
    #[default]
    Upstream,
}

/// A host to send a try to, and the path (with query) to ask it for.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: UpstreamUrl,
    pub path: String,
}

/// How the state moves; see the module's diagram.
#[derive(Debug)]
pub enum Step {
    /// The current peer or origin failed or lacks the object: on to the next hop.
    NextHop,
    /// The upstream redirected: ask this next, as part of the try already admitted.
    Redirect(Target),
    /// The upstream challenged: ask again with this `Authorization`.
    Authorize(String),
}

/// The state of a request's fetch.
#[derive(Default)]
pub struct Attempt {
    hop: Hop,
    /// Hops still to try before the upstream, with their targets.
    plan: VecDeque<(Hop, Target)>,
    /// Where the current try goes.
    target: Option<Target>,
    /// The upstream's own target, kept while peers and origin are tried first.
    upstream: Option<Target>,
    /// The object a peer is asked for when it is not the client's path: what a pointer led
    /// to, so the owner serves exactly that (and does not look the pointer up again).
    peer_path: Option<String>,
    redirects: u8,
    /// The last error came from [`Attempt::step`], not from the network.
    stepped: bool,
    /// A redirect left the upstream's origin: credentials must not follow.
    cross_origin: bool,
    /// A redirect leads somewhere the upstream chose: its address is checked (SSRF).
    untrusted_redirect: bool,
    /// The `Authorization` the upstream gets, and whether it is a cached token sent ahead.
    authorization: Option<String>,
    preauthorized: bool,
    /// The breaker admitted the request (once, however many tries follow).
    admitted: bool,
    /// The request's ticket, until its upstream outcome is known.
    ticket: Option<Ticket>,
    /// Connections reset or closed before an answer, retried so far.
    reconnects: u8,
    /// The next try opens a new connection rather than take a pooled one.
    fresh: bool,
    /// The first upstream error of the request, as `hangar_upstream_errors_total` counts it.
    error: Option<&'static str>,
    /// What went wrong, in words, for the client's error response.
    failure: Option<String>,
    started: Option<Instant>,
    upstream_time: Option<Duration>,
    /// Where the response came from.
    source: Option<Source>,
    /// The sha256 origin claims for its copy (from its answer, or from its redirect).
    origin_sha256: Option<String>,
    /// This try's response was kept: its body is on its way, so no other hop may answer now.
    answered: bool,
}

impl Attempt {
    /// Aim the request at the upstream: `url` and `path` (with query).
    pub fn aim(&mut self, url: UpstreamUrl, path: String) {
        self.target = Some(Target { url, path });
    }

    /// Ask peers for `path` (below the proxy's root) instead of the client's target.
    pub fn set_peer_path(&mut self, path: String) {
        self.peer_path = Some(path);
    }

    /// Send a cached token with the first request.
    pub fn preauthorize(&mut self, authorization: Option<String>) {
        self.preauthorized = authorization.is_some();
        self.authorization = authorization;
    }

    /// Where the response came from, once one arrived (the upstream unless a peer or origin
    /// answered).
    pub fn source(&self) -> Source {
        self.source.unwrap_or(Source::Upstream)
    }

    /// Whether the current try goes to a fleet peer (whose documents arrive rewritten).
    pub fn at_peer(&self) -> bool {
        matches!(self.hop, Hop::Peer(_))
    }

    /// Whether the current try goes to the regional origin.
    pub fn at_origin(&self) -> bool {
        self.hop == Hop::Origin
    }

    /// The sha256 origin claims for the copy being fetched from it.
    pub fn origin_sha256(&self) -> Option<&str> {
        self.origin_sha256.as_deref()
    }

    /// Note the sha256 origin claims (the first claim stands: a redirect's, then its target's).
    pub fn claim_origin_sha256(&mut self, sha256: String) {
        self.origin_sha256.get_or_insert(sha256);
    }

    /// Time from the last upstream request to its response head.
    pub fn upstream_time(&self) -> Option<Duration> {
        self.upstream_time
    }

    /// Note the request's upstream error: the first one is the one counted.
    pub fn fail(&mut self, kind: &'static str) {
        self.error.get_or_insert(kind);
    }

    /// The request's upstream error, if it had one (`dns`, `connect`, `timeout`, `reset`,
    /// `breaker_open`, `token`, `rate_limited`, `redirect_refused`, `expired`, `integrity`,
    /// `other`).
    pub fn error(&self) -> Option<&'static str> {
        self.error
    }

    /// What went wrong with the upstream, in words, when more can be said than a status.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Say what went wrong, for the client's error response.
    pub fn explain(&mut self, why: String) {
        self.failure = Some(why);
    }

    /// The request ended: a ticket still held is settled by how it ended (an upstream error,
    /// or nothing the breaker should hear of).
    pub fn finish(&mut self, upstream_failed: bool) {
        if let Some(ticket) = self.ticket.take() {
            if upstream_failed {
                ticket.failed();
            }
        }
    }

    /// Whether the last error came from [`Attempt::step`].
    pub fn stepped(&self) -> bool {
        self.stepped
    }

    /// Move to the next state, and return the error that makes pingora try again.
    pub fn step(&mut self, step: Step) -> Box<Error> {
        let why = match step {
            Step::NextHop => {
                self.next_hop();
                "trying the next owner, origin or the upstream"
            }
            Step::Redirect(target) => {
                self.target = Some(target);
                self.redirects += 1;
                "following an upstream redirect"
            }
            Step::Authorize(authorization) => {
                self.authorization = Some(authorization);
                self.preauthorized = false;
                "answering the upstream's challenge"
            }
        };
        self.stepped = true;
        self.answered = false;
        let mut e = Error::explain(ErrorType::Custom("next step"), why);
        e.set_retry(true);
        e.into_up()
    }

    fn next_hop(&mut self) {
        let (hop, target) = self.plan.pop_front().map_or_else(|| (Hop::Upstream, self.upstream.clone()), |(h, t)| (h, Some(t)));
        self.hop = hop;
        self.target = target;
        self.cross_origin = false;
        self.source = None;
        self.origin_sha256 = None;
    }

    /// Whether the request may answer a challenge: once, unless what it sent was only a cached
    /// token sent ahead (which may have been revoked).
    fn may_authorize(&self) -> bool {
        self.authorization.is_none() || self.preauthorized
    }
}

impl HangarProxy {
    /// Before the upstream: the key's owner in the fleet (one proxy of the region fetches each
    /// object), then, for immutable artefacts, the regional origin (it may hold what this proxy
    /// never saw, or what the upstream has since deleted).
    pub(super) fn plan_hops(&self, session: &Session, ctx: &mut RequestCtx) {
        let method = &session.req_header().method;
        if ctx.attempt.upstream.is_some() || !session.cache.enabled() || !(method == Method::GET || method == Method::HEAD) {
            return;
        }
        let (Some((repo, route)), Some(upstream)) = (ctx.routed(), ctx.attempt.target.clone()) else { return };
        let origin = self.origin.as_ref().filter(|o| route.class == PathClass::Immutable && o.distrusted(&repo.name, &route.resolved.key_path).is_none());
        let mut plan = VecDeque::new();
        if !ctx.caller.peer {
            // A file derived from an artefact is asked of the artefact's owner, which holds it.
            let key = match route.resolved.derived_of.as_ref() {
                Some(of) => pingora::cache::key::CacheHashKey::primary_bin(&crate::router::cache_key(&repo.name, &of.artefact_key)),
                None => pingora::cache::key::CacheHashKey::primary_bin(session.cache.cache_key()),
            };
            let path = ctx.attempt.peer_path.clone().unwrap_or_else(|| target_of(session.req_header()).to_string());
            for addr in self.fleet.peer_hops(&key) {
                plan.push_back((Hop::Peer(addr), Target { url: UpstreamUrl::http(addr), path: path.clone() }));
            }
        }
        if let Some(origin) = origin {
            plan.push_back((Hop::Origin, Target { url: origin.url.clone(), path: origin.object_target(&repo.name, &route.resolved.key_path) }));
        }
        if !plan.is_empty() {
            ctx.attempt.plan = plan;
            ctx.attempt.upstream = Some(upstream);
            ctx.attempt.next_hop();
        }
    }

    /// `upstream_peer`: admit the request (the breaker, for the upstream, once per request),
    /// resolve the try's host, and refuse an internal address a redirect led to.
    pub(super) async fn peer(&self, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let repo = ctx.repo.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no repository"))?;
        let key_path = ctx.route.as_ref().map_or("", |r| r.resolved.key_path.as_str());
        let attempt = &mut ctx.attempt;
        attempt.stepped = false;
        // Peers and origin are not the upstream the breaker watches; retries, redirects and
        // challenges belong to the request already admitted.
        if attempt.hop == Hop::Upstream && !attempt.admitted {
            match repo.breaker.ticket(key_path) {
                Some(ticket) => {
                    attempt.ticket = Some(ticket);
                    attempt.admitted = true;
                }
                None => {
                    attempt.fail("breaker_open");
                    // Fails at once; pingora serves a stale copy if there is one.
                    let mut e = Error::explain(ErrorType::HTTPStatus(503), "upstream circuit breaker is open");
                    e.set_retry(false);
                    return Err(e.into_up());
                }
            }
        }
        let target = attempt.target.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        let addr = match self.resolver.resolve(&target.url.host, target.url.port).await {
            Ok(addr) => addr,
            // A peer or origin whose name does not resolve is skipped, as one that refuses.
            Err(e) if attempt.hop != Hop::Upstream => {
                tracing::warn!(host = %target.url.host, error = %e, "cannot resolve a fleet peer or origin; trying the next hop");
                let hop = attempt.hop;
                self.count_hop_failure(hop, &repo.name);
                return Err(ctx.attempt.step(Step::NextHop));
            }
            Err(e) => {
                if let Some(ticket) = attempt.ticket.take() {
                    ticket.failed();
                }
                let why = format!("DNS failure for upstream host {}: {}", e.host, e.reason);
                attempt.fail("dns");
                attempt.failure = Some(why);
                let mut err = Error::explain(ErrorType::ConnectError, e.to_string());
                err.set_retry(false);
                return Err(err.into_up());
            }
        };
        if attempt.untrusted_redirect && !repo.allow_private_redirects && is_internal(addr.ip()) {
            attempt.fail("redirect_refused");
            let mut e = Error::explain(ErrorType::HTTPStatus(502), format!("upstream redirect to internal address {} refused", addr.ip()));
            e.set_retry(false);
            return Err(e.into_up());
        }
        let mut peer = make_peer(&target.url, addr, &repo.timeouts);
        if attempt.hop == Hop::Upstream && repo.upstream_http2 {
            crate::upstream::offer_http2(&mut peer);
        }
        if std::mem::take(&mut attempt.fresh) {
            // A pool key nothing else uses, and no keeping the connection afterwards.
            peer.group_key = FRESH_POOL_KEY.fetch_sub(1, Ordering::Relaxed);
            peer.options.idle_timeout = Some(Duration::ZERO);
        }
        Ok(peer)
    }

    /// `upstream_request_filter`: aim the request at the try's target, in the representation
    /// the format wants, with the credentials that hop may have.
    pub(super) fn shape_request(&self, session: &Session, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        // Whatever an earlier try's body began is not this try's.
        ctx.body.new_try(ctx.route.as_ref().is_some_and(|r| r.states_expiry));
        let attempt = &mut ctx.attempt;
        let target = attempt.target.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        req.set_uri(target.path.parse().map_err(|e| Error::because(ErrorType::InternalError, "bad upstream URI", e))?);
        req.insert_header(header::HOST, target.url.host_header())?;
        // cargo sends `Upgrade: h2c` over plain HTTP; upstreams get HTTP/2 only through ALPN (TLS).
        req.remove_header(&header::UPGRADE);
        let mut names = Vec::new();
        super::strip_hop_by_hop(&session.req_header().headers, &["keep-alive", "proxy-connection", "proxy-authorization", "te"], |n| names.push(n.clone()));
        for name in &names {
            req.remove_header(name);
        }
        // On a plain miss pingora drops the client's validators to fetch a whole response;
        // a repository that honours clients' caching wishes passes them on (RFC 9111 §4.3.1),
        // and the upstream's 304 goes to the client uncached.
        if ctx.cache.refetch {
            // A 304 would keep the unverified copy.
            req.remove_header(&header::IF_NONE_MATCH);
            req.remove_header(&header::IF_MODIFIED_SINCE);
        }
        let honours = ctx.repo.as_ref().is_some_and(|r| r.freshness.honor_request_directives());
        if honours && session.cache.phase() == pingora::cache::CachePhase::Miss {
            for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                for value in session.req_header().headers.get_all(&name) {
                    req.append_header(name.clone(), value.clone())?;
                }
            }
        }
        if let Some(route) = ctx.route.as_ref() {
            if let Some(r) = route.resolved.representation {
                req.insert_header(header::ACCEPT, r.accept)?;
            }
            // Bytes that are rewritten, read or verified are asked for without a content coding.
            if route.resolved.rewrite || route.resolved.lists_digests || ctx.body.expected.is_some() || route.resolved.digest_from.is_some() {
                req.insert_header(header::ACCEPT_ENCODING, "identity")?;
            }
        }
        match attempt.hop {
            // The upstream's credentials are for the upstream: not for fleet peers or origin.
            // A client's own `Authorization` is its credential for Hangar: never passed on.
            Hop::Upstream if !attempt.cross_origin => match &attempt.authorization {
                Some(auth) => req.insert_header(header::AUTHORIZATION, auth.as_str())?,
                None => drop(req.remove_header(&header::AUTHORIZATION)),
            },
            // Origin asks every object request for the fleet's proof; a peer trusts it (not the
            // client's credential), answers as this proxy would (same Host), never forwards.
            Hop::Upstream | Hop::Origin | Hop::Peer(_) => {
                req.remove_header(&header::AUTHORIZATION);
                req.remove_header(&header::COOKIE);
                let kind = match attempt.hop {
                    Hop::Origin => Some(HopKind::Origin),
                    Hop::Peer(_) => Some(HopKind::Peer),
                    Hop::Upstream => None,
                };
                if let Some(kind) = kind {
                    req.insert_header(HOP_HEADER, self.fleet.sign(kind, req.method.as_str(), &target.path))?;
                }
                if let (Some(HopKind::Peer), Some(host)) = (kind, session.req_header().headers.get(header::HOST).cloned()) {
                    req.insert_header(header::HOST, host)?;
                }
            }
        }
        attempt.started = Some(Instant::now());
        Ok(())
    }

    /// `upstream_response_filter`, for the attempt: what a peer's or origin's answer means,
    /// the breaker's outcome, and the upstream's challenges and redirects. A response to keep
    /// returns `Ok`; one that moves the state returns [`Attempt::step`]'s error.
    pub(super) async fn on_response(&self, session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let repo = ctx.repo.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no repository"))?;
        if ctx.attempt.hop == Hop::Origin {
            self.judge_origin_copy(resp, ctx)?;
        }
        let attempt = &mut ctx.attempt;
        let redirect = matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308);
        match attempt.hop {
            Hop::Origin if !redirect => {
                if resp.status == http::StatusCode::OK {
                    attempt.source = Some(Source::Origin);
                    self.metrics.origin_fetches.with_label_values(&[&repo.name, "hit"]).inc();
                } else {
                    // Not there (or origin is failing): on to the upstream, as if origin were not asked.
                    let label = if resp.status == http::StatusCode::NOT_FOUND { "miss" } else { "error" };
                    self.metrics.origin_fetches.with_label_values(&[&repo.name, label]).inc();
                    return Err(attempt.step(Step::NextHop));
                }
            }
            Hop::Peer(_) => {
                // The owner's answer is the answer: it already went to origin or the upstream,
                // served stale or said 404.
                attempt.source = Some(Source::Peer);
                self.metrics.fleet_fetches.with_label_values(&[&repo.name, "peer"]).inc();
            }
            _ => {}
        }
        // A failing status ends the request's dealings with the upstream at once; a good one
        // does unless the request goes on (a challenge answered, a redirect followed).
        let failing = resp.status.is_server_error() || resp.status.as_u16() == 429;
        if failing {
            if let Some(ticket) = attempt.ticket.take() {
                ticket.failed();
            }
        }
        if let Some(started) = attempt.started.take() {
            let elapsed = started.elapsed();
            attempt.upstream_time = Some(elapsed);
            self.metrics.upstream_latency.with_label_values(&[&repo.name]).observe(elapsed.as_secs_f64());
        }
        // A registry's challenge: fetch the token (or use the credentials) and ask again.
        // Only the upstream's own challenges: credentials never go to a host a redirect led to.
        if resp.status == http::StatusCode::UNAUTHORIZED && attempt.hop == Hop::Upstream && !attempt.cross_origin && attempt.may_authorize() {
            if let Some(challenge) = resp.headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) {
                if attempt.preauthorized {
                    if let Some(refused) = attempt.authorization.take() {
                        repo.auth.forget(&refused);
                    }
                }
                match repo.auth.answer(&self.client, &repo.upstream, &repo.timeouts, challenge).await {
                    Ok(authorization) => return Err(attempt.step(Step::Authorize(authorization))),
                    Err(why) => {
                        attempt.preauthorized = false;
                        attempt.fail("token");
                        tracing::warn!(repository = %repo.name, error = %why, "cannot answer the upstream's challenge");
                    }
                }
            }
        }
        // Rate limiting is an outage too: with a stale copy at hand, serve it (pingora does this
        // itself for 5xx and connection failures).
        if resp.status.as_u16() == 429 && session.cache.can_serve_stale_error() {
            attempt.fail("rate_limited");
            let mut e = Error::explain(ErrorType::HTTPStatus(429), "upstream rate limited");
            e.set_retry(false);
            return Err(e.into_up());
        }
        // Only followed for GET (pingora turns a cacheable HEAD into GET upstream).
        let method = &session.req_header().method;
        let location = resp.headers.get(header::LOCATION).and_then(|v| v.to_str().ok());
        let Some(location) = location.filter(|_| redirect && (method == Method::GET || method == Method::HEAD)) else {
            // The upstream's answer is final.
            if let Some(ticket) = attempt.ticket.take() {
                ticket.succeeded();
            }
            attempt.answered = true;
            return Ok(());
        };
        if attempt.redirects >= MAX_REDIRECTS {
            return Err(Error::explain(ErrorType::HTTPStatus(502), format!("more than {MAX_REDIRECTS} upstream redirects")).into_up());
        }
        let current = attempt.target.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        let current_path = current.path.split('?').next().unwrap_or("/");
        let (url, path) = current.url.redirect_target(current_path, location).map_err(|e| Error::explain(ErrorType::HTTPStatus(502), format!("bad upstream redirect: {e}")).into_up())?;
        let leaves_upstream = !repo.is_own_upstream(&url);
        attempt.cross_origin |= leaves_upstream;
        // Where an upstream's Location may send the proxy is the operator's call, not the
        // upstream's (origin's presigned redirects are the proxy's own infrastructure).
        if leaves_upstream && attempt.hop == Hop::Upstream {
            if !repo.redirect_host_allowed(&url.host) {
                attempt.fail("redirect_refused");
                return Err(Error::explain(ErrorType::HTTPStatus(502), format!("upstream redirect to {} is not in redirect_hosts", url.host)).into_up());
            }
            attempt.untrusted_redirect = true;
        }
        self.metrics.upstream_redirects.with_label_values(&[&repo.name]).inc();
        Err(attempt.step(Step::Redirect(Target { url, path })))
    }

    /// `error_while_proxy`: the try failed after connecting. A failing peer or origin moves on
    /// to the next hop; the attempt's own steps are retried; a connection the upstream reset or
    /// closed before answering is retried once, on a fresh connection; nothing else is retried.
    /// When no try follows, the request's ticket hears of the failure.
    pub(super) fn on_error(&self, session: &Session, mut e: Box<Error>, ctx: &mut RequestCtx) -> Box<Error> {
        let attempt = &mut ctx.attempt;
        let retryable = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        if attempt.stepped {
            if !retryable {
                e.set_retry(false);
            }
            return e;
        }
        // A peer or origin that fails before its answer is kept gives way to the next hop; once
        // its body is flowing (into the cache, to the client) the request ends with it.
        if attempt.hop != Hop::Upstream && !attempt.answered && session.response_written().is_none() {
            self.count_hop_failure(attempt.hop, ctx.repo_name());
            return ctx.attempt.step(Step::NextHop);
        }
        // Reset or closed before the response head: the one failure a new connection may cure
        // (a pooled connection the upstream had already closed, most often).
        let unanswered = attempt.started.is_some() && matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError);
        if unanswered && attempt.hop == Hop::Upstream {
            if retryable && attempt.reconnects < MAX_RECONNECTS {
                attempt.reconnects += 1;
                attempt.fresh = true;
                e.set_retry(true);
                return e;
            }
            attempt.fail("reset");
            attempt.failure = Some(format!("the upstream closed the connection before answering ({} tries)", attempt.reconnects + 1));
        }
        e.set_retry(false);
        if let Some(ticket) = attempt.ticket.take() {
            ticket.failed();
        }
        e
    }

    /// `fail_to_connect`: a peer or origin that cannot be reached is skipped; the upstream's
    /// failure goes to its breaker.
    pub(super) fn on_connect_failure(&self, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
        if ctx.attempt.hop != Hop::Upstream {
            self.count_hop_failure(ctx.attempt.hop, ctx.repo_name());
            return ctx.attempt.step(Step::NextHop);
        }
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => "timeout",
            _ => "connect",
        };
        ctx.attempt.fail(kind);
        // (Pingora retries a connect error only when the error says so; then the request
        // still holds its ticket for the next try.)
        if !matches!(e.retry, pingora::RetryType::Decided(true)) {
            if let Some(ticket) = ctx.attempt.ticket.take() {
                ticket.failed();
            }
        }
        e
    }

    /// An upstream error status that pingora answers from a stale copy never reaches
    /// `upstream_response_filter`: the breaker hears about it here.
    pub(super) fn on_stale_error(&self, ctx: &mut RequestCtx, e: &Error) {
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            if let Some(ticket) = ctx.attempt.ticket.take() {
                ticket.failed();
            }
        }
    }

    fn count_hop_failure(&self, hop: Hop, repository: &str) {
        match hop {
            Hop::Origin => self.metrics.origin_fetches.with_label_values(&[repository, "error"]).inc(),
            Hop::Peer(addr) => {
                tracing::info!(peer = %addr, "fleet owner unreachable; trying the next");
                self.metrics.fleet_fetches.with_label_values(&[repository, "peer_unreachable"]).inc();
            }
            Hop::Upstream => {}
        }
    }
}
