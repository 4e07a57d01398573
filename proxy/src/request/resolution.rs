//! The second phase: what the request means. The repository's format resolves the path (where
//! it goes upstream, its cache key, its class, its digest); a mutable name is followed to the
//! immutable object it names now ([`super::pointer`]); the result becomes the request's
//! [`Route`] and the upstream target of its [`Attempt`](super::attempt::Attempt).

use std::sync::Arc;

use hangar_core::RequestPath;
use pingora::modules::http::compression::ResponseCompression;
use pingora::proxy::Session;

use super::body::proxy_base;
use super::ctx::Route;
use super::local::Reply;
use super::pointer::Followed;
use super::{HangarProxy, RequestCtx};
use crate::directives::RequestDirectives;
use crate::format::UpstreamChoice;
use crate::repository::Repository;

impl HangarProxy {
    /// Resolve `rest` (the path below `repo`'s prefix) into the request's route.
    pub(super) async fn resolve(&self, session: &mut Session, ctx: &mut RequestCtx, repo: Arc<Repository>, rest: &str) -> Result<(), Reply> {
        let req = session.req_header();
        let mut resolved = repo.format.resolve(&RequestPath { relative: rest, query: req.uri.query() }, &req.headers).map_err(Reply::refused)?;
        if let Some(pointer) = resolved.pointer.clone() {
            // Boxed here, where it is used: inline, its (large) future would be part of every
            // request's, and pingora copies that whole to the heap (see `RequestCtx`).
            match Box::pin(self.follow_pointer(&repo, &resolved, &req.headers)).await {
                Followed::To(digest) => {
                    let target = pointer.target_for(&digest);
                    ctx.attempt.set_peer_path(format!("{}{target}", repo.prefix));
                    resolved = repo
                        .format
                        .resolve(&RequestPath { relative: &target, query: None }, &req.headers)
                        .map_err(|e| Reply::error(502, format!("upstream named an unusable digest: {e}")))?;
                }
                Followed::NotFound => {
                    return Err(pointer.missing.map_or_else(|| Reply::error(404, "the upstream says this name does not exist"), Reply::Format));
                }
                Followed::Unresolved => {}
            }
        }
        let upstream = match resolved.upstream {
            UpstreamChoice::Primary => repo.upstream.clone(),
            UpstreamChoice::Files => repo.files.clone().ok_or_else(|| Reply::error(502, "repository has no files_upstream"))?,
        };
        let upstream_path = format!("{}{}", upstream.base_path, resolved.upstream_path);
        let proxy_base = if resolved.rewrite {
            let (stored, client_origin) = proxy_base(&repo, req);
            // Peers get the stored form and rebase it for their own clients.
            if let (Some(origin), false) = (client_origin, ctx.caller.peer) {
                ctx.body.rebase = Some(super::rebase::Rebase::to(&origin));
            }
            stored
        } else {
            // Only documents are compressed here; artefacts are served as stored.
            if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
                c.adjust_level(0);
            }
            String::new()
        };
        if let Some(answer) = resolved.local {
            return Err(Reply::Format(answer));
        }
        // (A repository that derives none still lists its group's count, 0, so a page stored
        // while it did is fetched again without the announcements.)
        if !repo.derive_files {
            (resolved.derives, resolved.derived_of) = (None, None);
        }
        if let Some(of) = resolved.derived_of.as_ref() {
            if let Some(body) = Box::pin(self.derived_file(&repo, of)).await {
                return Err(Reply::Derived(body));
            }
        }
        let req = session.req_header();
        let mut directives = if repo.freshness.honor_request_directives() { RequestDirectives::parse(&req.headers) } else { RequestDirectives::default() };
        // The proxy's own read-backs (uploads to origin) must never fetch.
        directives.only_if_cached |= ctx.caller.loopback;
        let states_expiry = repo.format.expiry_in_body(&resolved.key_path);
        if states_expiry {
            ctx.body.expiry_head = Some(Vec::new());
        }
        ctx.body.expected = resolved.digest.clone();
        ctx.body.expected_asked = resolved.digest_asked;
        if let Some(scope) = resolved.auth_scope.as_deref() {
            ctx.attempt.preauthorize(repo.auth.preauthorization(scope));
        }
        ctx.attempt.aim(upstream, upstream_path);
        let class = repo.classify(&resolved.key_path, resolved.class);
        ctx.route = Some(Box::new(Route { resolved, class, proxy_base, directives, states_expiry }));
        Ok(())
    }
}
