//! The first phase: refuse what no repository should see (oversized targets and headers, bad
//! methods, unmounted paths), establish who sent the request and whether a grant lets them
//! (before any cache or upstream work: hits are checked too), and strip every internal header
//! a client sent.
//!
//! Hangar's own parts mark their hops with a signed `x-hangar-hop` header (see
//! [`hangar_core::wire::HopKey`]). Every `x-hangar-*` request header is removed here, before
//! anything reads the request, so a client can neither pose as a fleet peer nor as the proxy's
//! own loopback, nor pass internal headers upstream.

use std::sync::Arc;

use hangar_core::wire::{HopKind, HOP_HEADER, INTERNAL_PREFIX};
use hangar_core::{remove_dot_segments, DotSegments};
use http::Method;
use pingora::proxy::Session;

use super::ctx::Caller;
use crate::auth::audit::AuditFacts;
use crate::auth::{registry, Asked, Refusal};
use crate::config::Action;
use super::local::Reply;
use super::{target_of, HangarProxy, RequestCtx};
use crate::repository::Repository;

/// Longest request target accepted (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request header section accepted (431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most request header fields accepted (431 beyond).
pub const MAX_HEADER_COUNT: usize = 100;

/// The methods an `Allow` header lists, when a format allows them.
const STANDARD_METHODS: [Method; 7] = [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS];

impl HangarProxy {
    /// Admit the request: its repository and the path below the repository's prefix.
    pub(super) async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(Arc<Repository>, String), Reply> {
        let req = session.req_header();
        if req.raw_path().len() > MAX_URI_BYTES {
            return Err(Reply::error(414, "request URI too long"));
        }
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes > MAX_HEADER_BYTES || req.headers.len() > MAX_HEADER_COUNT {
            return Err(Reply::error(431, "request header fields too large"));
        }
        ctx.caller = self.caller(session);
        let req = session.req_header();
        // First, so that whatever else refuses the request, its line is written without it.
        if req.uri.query().is_some_and(|q| self.auth.secret_in_query(q)) {
            ctx.caller.secret_in_query = true;
            return Err(Reply::error(400, "a credential in the URL query is refused: send it in the Authorization header (and replace it: URLs end up in logs)"));
        }
        // RFC 3986 5.2.4: the path is routed with its dot segments removed; a `..` that
        // would take it out of the repository its spelling names (to another repository, one
        // nested in it or a disabled one) is refused, not followed.
        let refused = |e: hangar_core::PathError| Reply::error(400, format!("{e}: a '..' may not leave the repository"));
        let path = remove_dot_segments(req.uri.path(), DotSegments::All).map_err(refused)?;
        if let Some(root) = self.router.registry_token_root(&path) {
            let address = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
            return Err(Box::pin(self.registry_token(req, root, address)).await);
        }
        let routed = self.router.route(&path, req.uri.query());
        if path.len() != req.uri.path().len() {
            let spelled = remove_dot_segments(req.uri.path(), DotSegments::Current).map_err(refused)?;
            let named = self.router.route(&spelled, req.uri.query()).ok().map(|(r, _)| r.name.as_str());
            let landed = routed.as_ref().ok().map(|(r, _)| r.name.as_str());
            if named.is_some() && named != landed {
                return Err(refused(hangar_core::PathError::DotSegment("..".into())));
            }
        }
        let (repo, rest) = routed.map_err(|e| Reply::error(404, e.to_string()))?;
        let rest = std::borrow::Cow::Borrowed(rest);
        ctx.repo = Some(repo.clone());
        if !repo.allows(&req.method, &rest) {
            let allow = STANDARD_METHODS.iter().filter(|m| repo.allows(m, &rest)).map(Method::as_str).collect::<Vec<_>>().join(", ");
            return Err(Reply::Error { status: 405, message: "method not allowed".into(), allow: Some(allow) });
        }
        // The proxy's own reads, fleet members' hops and background refreshes were allowed
        // when the client's request that caused them was.
        if !(ctx.caller.peer || ctx.caller.loopback || ctx.caller.listing || ctx.caller.background) {
            let address = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
            self.authorize(req, &repo, &rest, address, &mut ctx.audit).await?;
        }
        Ok((repo.clone(), rest.into_owned()))
    }

    /// Whether the request's credentials (none: anonymous) allow it on `repo`: what the format
    /// calls a read (GET, HEAD, npm's advisory queries) is `read`, DELETE is `delete`, any
    /// other method `publish`, on the package the format names in the path. 401 for
    /// credentials that are missing where a grant needs them, or malformed, unknown or
    /// expired; 403 for valid ones without the grant. A registry's 401s carry its token
    /// endpoint's challenge, and its version check (`/v2/`) answers 401 to a request without
    /// credentials, as registries do: that is how `docker login` and the token flow begin.
    async fn authorize(&self, req: &pingora::http::RequestHeader, repo: &Repository, rest: &str, address: Option<std::net::IpAddr>, audit: &mut Option<Box<AuditFacts>>) -> Result<(), Reply> {
        let authorization = req.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        let action = if repo.format.reads(&req.method, rest) {
            Action::Read
        } else if req.method == Method::DELETE {
            Action::Delete
        } else {
            Action::Publish
        };
        // Named (from the decoded path, as the format serves it) only when a grant asks.
        let package = match self.auth.names_packages() {
            true => repo.format.package(&percent_encoding::percent_decode_str(rest).decode_utf8_lossy()),
            false => None,
        };
        // Refusals and every write are recorded; the principal is named as far as it is known.
        let unknown = || if authorization.is_some() { "unauthenticated" } else { crate::config::ANONYMOUS_ROLE }.to_string();
        let mut record = |principal: String, denied: bool| *audit = Some(Box::new(AuditFacts { principal, action, package: package.clone(), denied }));
        let limited = |l: crate::auth::limits::Limited| Reply::Limited { message: l.to_string(), retry_after: l.retry_after };
        if !self.auth.address_permitted(&repo.name, address) {
            record(unknown(), true);
            let shown = address.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
            return Err(Reply::error(403, format!("repository '{}' is not reachable from {shown} ([[auth.addresses]])", repo.name)));
        }
        // Before the credentials are looked at: failed guesses count too.
        if let Err(l) = self.auth.take_address(address, action != Action::Read) {
            record(unknown(), true);
            return Err(limited(l));
        }
        let registry = repo.format.registry_root();
        let unauthenticated = |message: String| Reply::Unauthenticated { message, challenge: registry.map(|root| registry::challenge(&super::body::client_origin(repo, req), root)) };
        if registry.is_some() && rest.is_empty() {
            if authorization.is_none() {
                return Err(unauthenticated("a registry's version check needs a credential: ask the token endpoint its challenge names".into()));
            }
            return match self.auth.authenticate(authorization, true).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    record(unknown(), true);
                    Err(unauthenticated(e.to_string()))
                }
            };
        }
        let asked = Asked { action, repository: Some(&repo.name), package: package.as_deref(), registry: registry.is_some() };
        match self.auth.check(authorization, &asked).await {
            Ok(principal) => {
                let over = self.auth.take_principal(&principal, action != Action::Read);
                if over.is_err() || action != Action::Read {
                    record(principal.name().to_string(), over.is_err());
                }
                over.map_err(limited)
            }
            Err(Refusal::Unauthenticated(message)) => {
                record(unknown(), true);
                Err(unauthenticated(message))
            }
            Err(Refusal::Forbidden { principal, message }) => {
                record(principal, true);
                Err(Reply::error(403, message))
            }
        }
    }

    /// The Docker token flow's token endpoint (`/v2/token`): the credentials sent (basic, as
    /// registry clients send them; none: anonymous; never a registry token, so one cannot be
    /// renewed past the credential it was issued for) for a short-lived registry token.
    async fn registry_token(&self, req: &pingora::http::RequestHeader, root: &str, address: Option<std::net::IpAddr>) -> Reply {
        if req.method != Method::GET {
            return Reply::Error { status: 405, message: "the token endpoint answers GET".into(), allow: Some("GET".into()) };
        }
        if let Err(l) = self.auth.take_address(address, false) {
            return Reply::Limited { message: l.to_string(), retry_after: l.retry_after };
        }
        match self.auth.authenticate(req.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()), false).await {
            Ok(principal) => match self.auth.issue_registry_token(&principal).map(|issued| serde_json::to_vec(&issued)) {
                Ok(Ok(body)) => Reply::Json(body.into()),
                Ok(Err(e)) => Reply::error(500, format!("the registry token could not be written: {e}")),
                Err(e) => Reply::error(500, format!("the registry token could not be signed: {e}")),
            },
            Err(e) => Reply::Unauthenticated { message: format!("{e} (the token endpoint at {root}token takes an API token as the password of HTTP basic)"), challenge: None },
        }
    }

    /// Who sent the request: a hop proof that verifies makes it a peer's or the proxy's own;
    /// every internal header is then removed, verified or not.
    fn caller(&self, session: &mut Session) -> Caller {
        let mut caller = Caller { background: session.subrequest_ctx.is_some(), ..Caller::default() };
        let req = session.req_header();
        if !req.headers.keys().any(|name| name.as_str().starts_with(INTERNAL_PREFIX)) {
            return caller;
        }
        if let Some(proof) = req.headers.get(HOP_HEADER).and_then(|v| v.to_str().ok()) {
            match self.fleet.verify(proof, req.method.as_str(), target_of(req)) {
                Some(HopKind::Peer) => caller.peer = true,
                Some(HopKind::Loopback) => caller.loopback = true,
                Some(HopKind::Listing) => caller.listing = true,
                // Meant for origin, not for a proxy: nothing special here.
                Some(HopKind::Replace | HopKind::Origin) | None => {}
            }
        }
        let internal: Vec<http::HeaderName> = req.headers.keys().filter(|name| name.as_str().starts_with(INTERNAL_PREFIX)).cloned().collect();
        let req = session.req_header_mut();
        for name in internal {
            req.remove_header(&name);
        }
        caller
    }
}
