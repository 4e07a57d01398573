//! What happens to a body on its way through: digests checked as it streams, documents
//! collected and rewritten, and expiries read from bodies that state their own.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::{Error, ErrorType};

use super::{HangarProxy, RequestCtx};
use crate::format::RewriteEnv;
use crate::router::Repository;

/// The proxy's URL of `repo` as a client reached it: the configured `public_url`, or the
/// request's `Host` under `X-Forwarded-Proto`'s scheme (http by default).
pub(super) fn proxy_base(repo: &Repository, req: &RequestHeader) -> String {
    if let Some(u) = &repo.public_url {
        return u.clone();
    }
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let https = req.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}{}", if https { "https" } else { "http" }, repo.prefix)
}

fn repo_max_document(ctx: &RequestCtx) -> usize {
    ctx.repo.as_ref().map_or(0, |r| r.max_document_bytes)
}

impl HangarProxy {
    /// Read the expiry a body states about itself from its first bytes; refuse to cache or
    /// deliver it once that has passed (the transfer is cut before the rest of the body).
    pub(super) fn check_expiry(&self, body: Option<&Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        const HEAD_LIMIT: usize = 16 * 1024;
        let Some(head) = ctx.expiry_head.as_mut() else { return Ok(()) };
        if let Some(b) = body {
            let take = b.len().min(HEAD_LIMIT.saturating_sub(head.len()));
            head.extend_from_slice(&b[..take]);
        }
        let (Some(repo), Some(resolved)) = (ctx.repo.as_ref(), ctx.resolved.as_ref()) else { return Ok(()) };
        let expiry = repo.format.expiry(head);
        if expiry.is_none() && head.len() < HEAD_LIMIT && !end_of_stream {
            return Ok(());
        }
        ctx.expiry_head = None;
        let Some(until) = expiry else { return Ok(()) };
        {
            let mut expiries = repo.expiries.lock();
            if expiries.len() > 10_000 {
                expiries.clear();
            }
            expiries.insert(resolved.key_path.clone(), until);
        }
        if until < SystemTime::now() {
            self.metrics.upstream_errors.with_label_values(&[&repo.name, "expired"]).inc();
            tracing::warn!(repository = %repo.name, path = %resolved.key_path, "refusing a copy past its Valid-Until");
            return Err(Error::explain(ErrorType::HTTPStatus(502), "past its Valid-Until").into_up());
        }
        Ok(())
    }

    /// Set up digest checking and document rewriting for a 200 from the upstream.
    pub(super) fn prepare_body_checks(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let Some(resolved) = ctx.resolved.as_ref() else { return Ok(()) };
        let encoding = resp.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
        let encoded = encoding.as_deref().is_some_and(|e| e != "identity");
        if let Some(expected) = ctx.expected_digest.as_ref() {
            if encoded {
                return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream sent an artefact with a content coding; cannot verify it").into_up());
            }
            ctx.hasher = Some(expected.hasher());
        }
        // A fleet peer's documents arrive rewritten already.
        if resolved.rewrite && !matches!(ctx.hop, Some(super::hops::Hop::Peer(_))) {
            ctx.document_gzip = match encoding.as_deref() {
                None | Some("identity") => false,
                Some("gzip") | Some("x-gzip") => true,
                Some(other) => {
                    return Err(Error::explain(ErrorType::HTTPStatus(502), format!("upstream document in unsupported coding '{other}'")).into_up())
                }
            };
            // A hint only: an upstream's Content-Length must not size an allocation.
            let capacity = resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(64 * 1024)
                .min(repo_max_document(ctx))
                .min(16 << 20);
            resp.remove_header(&header::CONTENT_ENCODING);
            resp.remove_header(&header::CONTENT_LENGTH);
            ctx.document = Some(BytesMut::with_capacity(capacity));
        }
        if resolved.lists_digests && !encoded && !matches!(ctx.hop, Some(super::hops::Hop::Peer(_))) {
            ctx.listing = Some(BytesMut::new());
        }
        if let Some(r) = resolved.representation {
            // A registry that serves the representation as plain JSON gets the precise type;
            // one that ignored the Accept header keeps the type of what it actually sent.
            let plain_json = resp.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
            if let (Some(ct), true) = (r.content_type, plain_json) {
                resp.insert_header(header::CONTENT_TYPE, ct)?;
            }
            let varies = resp.headers.get_all(header::VARY).iter().any(|v| v.to_str().unwrap_or("").split(',').any(|n| n.trim().eq_ignore_ascii_case("accept")));
            if !varies {
                resp.append_header(header::VARY, "Accept")?;
            }
        }
        Ok(())
    }

    /// Rewrite a complete document through the repository's format and learn the digests
    /// it lists.
    pub(super) fn rewrite_document(&self, raw: Bytes, ctx: &mut RequestCtx) -> Result<Bytes> {
        let (Some(repo), Some(resolved)) = (ctx.repo.as_ref(), ctx.resolved.as_ref()) else {
            return Ok(raw);
        };
        let raw = if ctx.document_gzip {
            let out = crate::format::gunzip(&raw, repo.max_document_bytes)
                .map_err(|e| Error::explain(ErrorType::HTTPStatus(502), format!("upstream document: {e}")).into_up())?;
            Bytes::from(out)
        } else {
            raw
        };
        let rewritten = repo
            .format
            .rewrite(resolved, raw, &RewriteEnv { proxy_base: &ctx.proxy_base })
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(502), e.to_string()).into_up())?;
        if !rewritten.digests.is_empty() {
            repo.digests.insert_all(rewritten.digests);
        }
        Ok(rewritten.body)
    }

    /// Keep a copy of a listing as it streams past; once complete, read its digests off the
    /// event loop (a compressed apt index takes a while to unpack). Too large a listing is
    /// just not learned from.
    pub(super) fn collect_listing(&self, body: Option<&Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let limit = repo_max_document(ctx);
        let Some(listing) = ctx.listing.as_mut() else { return };
        if let Some(b) = body {
            if listing.len() + b.len() > limit {
                ctx.listing = None;
                return;
            }
            listing.extend_from_slice(b);
        }
        if !end_of_stream {
            return;
        }
        let raw = ctx.listing.take().expect("listing present").freeze();
        let (Some(repo), Some(resolved)) = (ctx.repo.clone(), ctx.resolved.as_ref()) else { return };
        let key = resolved.key_path.clone();
        /// Ends the learning however the reading ends (a panic included).
        struct Learning(std::sync::Arc<Repository>, String);
        impl Drop for Learning {
            fn drop(&mut self) {
                self.0.digests.end_learning(&self.1);
            }
        }
        // Pending from now, so a request for an artefact it lists waits for it.
        if !repo.digests.try_begin_learning() {
            tracing::debug!(repository = %repo.name, document = %key, "busy reading other listings; not learning from this one");
            return;
        }
        let learning = Learning(repo, key);
        tokio::task::spawn_blocking(move || {
            let (repo, key) = (&learning.0, &learning.1);
            match repo.format.digests_in(key, &raw) {
                Ok(found) => repo.digests.insert_all(found),
                Err(e) => tracing::warn!(repository = %repo.name, document = %key, error = %e, "cannot read digests"),
            }
        });
    }

    /// Read `document` (a path below the repository prefix) through this proxy and remember
    /// the artefact digests it lists. Failures leave the digests unknown.
    pub(super) async fn learn_digests(&self, repo: &Repository, document: &str) {
        let target = format!("{}{}", repo.prefix, document);
        match crate::loopback::get(self.listen_addr, &target, repo.format.document_accept(), repo.max_document_bytes).await {
            Ok(body) => match repo.format.digests_in(document, &body) {
                Ok(found) => repo.digests.insert_all(found),
                Err(e) => tracing::warn!(repository = %repo.name, document, error = %e, "cannot read digests"),
            },
            Err(e) => tracing::warn!(repository = %repo.name, document, error = %e, "cannot fetch the document that lists this artefact's digest"),
        }
    }
}
