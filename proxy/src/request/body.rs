//! What happens to a body on its way through: digests checked as it streams, documents
//! collected and rewritten, listings read for the digests they list, and expiries read from
//! bodies that state their own.
//!
//! The upstream's body passes `upstream_response_body_filter`; a body served from cache passes
//! only `response_body_filter`. Work that must see every body once is done in the first when
//! the body came from upstream ([`BodyWork::from_upstream`]), in the second otherwise.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::{Error, ErrorType};

use super::ctx::Document;
use super::{HangarProxy, RequestCtx};
use crate::client::Request;
use crate::config::TimeoutConfig;
use crate::format::{RewriteEnv, DOCUMENT_HEAD_BYTES};
use crate::repository::Repository;

/// How long a read of a listing through the proxy itself may take; it runs while a client waits.
const LISTING_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a request for an artefact waits for a listing that is still being read.
const LISTING_SETTLE: Duration = Duration::from_secs(10);

/// What a rewritten document of `repo` names as the proxy's URL when stored, and the origin a
/// client needs it rebased onto when served: the configured `public_url` (nothing to rebase),
/// or the placeholder and the client's own origin, its `Host` under `X-Forwarded-Proto`'s scheme
/// (http by default). See [`super::rebase`].
pub(super) fn proxy_base(repo: &Repository, req: &RequestHeader) -> (String, Option<String>) {
    if let Some(u) = &repo.public_url {
        return (u.clone(), None);
    }
    (format!("{}{}", super::rebase::PLACEHOLDER_ORIGIN, repo.prefix), Some(request_origin(req)))
}

/// The scheme and authority clients reach `repo` at: its `public_url`'s, or the request's
/// (see [`proxy_base`]).
pub(super) fn client_origin(repo: &Repository, req: &RequestHeader) -> String {
    if let Some(u) = repo.public_url.as_deref().and_then(|u| url::Url::parse(u).ok()) {
        return u.origin().ascii_serialization();
    }
    request_origin(req)
}

fn request_origin(req: &RequestHeader) -> String {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let https = req.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

fn repo_max_document(ctx: &RequestCtx) -> usize {
    ctx.repo.as_ref().map_or(0, |r| r.max_document_bytes)
}

impl HangarProxy {
    /// `upstream_response_body_filter`: a chunk from the upstream (or a peer, or origin).
    pub(super) fn upstream_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        // (A 304 has no body: the body served is then the cached one.)
        ctx.body.from_upstream |= body.is_some();
        self.check_head(body.as_ref(), end_of_stream, ctx)?;
        self.check_expiry(body.as_ref(), end_of_stream, ctx)?;
        self.verify_chunk(body, end_of_stream, ctx)?;
        self.collect_listing(body.as_ref(), end_of_stream, ctx);
        self.collect_document(body, end_of_stream, ctx)
    }

    /// `response_body_filter`: a chunk on its way to the client. Only a body served from cache
    /// still needs reading here.
    pub(super) fn served_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        if !ctx.body.from_upstream {
            self.check_expiry(body.as_ref(), end_of_stream, ctx)?;
            self.collect_listing(body.as_ref(), end_of_stream, ctx);
        }
        if let Some(rebase) = ctx.body.rebase.as_mut() {
            *body = rebase.chunk(body.take(), end_of_stream);
        }
        Ok(())
    }

    /// Hash the body as it streams; at its end, compare with the digest it must have. A
    /// mismatch withholds the last chunk, so the client sees a failed transfer (not a complete
    /// wrong file) and the cache entry is abandoned.
    fn verify_chunk(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        let Some(hasher) = ctx.body.hasher.as_mut() else { return Ok(()) };
        if let Some(b) = body.as_ref() {
            hasher.update(b);
        }
        if !end_of_stream {
            return Ok(());
        }
        let got = ctx.body.hasher.take().expect("hasher present").finish();
        let expected = ctx.body.expected.as_ref().expect("a hasher has an expected digest");
        let repo = ctx.repo_name();
        if &got != expected {
            self.metrics.integrity_failures.with_label_values(&[repo]).inc();
            *body = None;
            if ctx.attempt.at_origin() {
                tracing::warn!(repository = %repo, expected = %expected, got = %got, "origin's copy does not match its digest; not cached, and the next request fetches it from the upstream");
                self.origin_copy_corrupt(ctx, true);
                return Err(Error::explain(ErrorType::HTTPStatus(502), "origin's copy does not match its digest; retry to get the upstream's").into_up());
            }
            tracing::warn!(repository = %repo, expected = %expected, got = %got, "upstream body does not match its published digest; not cached");
            let why = format!("its body is {got}, not the {expected} the request pins or the registry publishes; nothing was cached");
            ctx.attempt.fail("integrity");
            ctx.attempt.explain(why);
            return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream body does not match its published digest").into_up());
        }
        self.metrics.verified.with_label_values(&[repo]).inc();
        Ok(())
    }

    /// Collect a document whole (bounded by `max_document_bytes`); at its end, replace the
    /// body with the rewritten document.
    fn collect_document(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        let limit = repo_max_document(ctx);
        let Some(document) = ctx.body.document.as_mut() else { return Ok(()) };
        if let Some(b) = body.take() {
            if document.buf.len() + b.len() > limit {
                return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream document larger than max_document_bytes").into_up());
            }
            document.buf.extend_from_slice(&b);
        }
        if end_of_stream {
            let document = ctx.body.document.take().expect("document present");
            *body = Some(self.rewrite_document(document, ctx)?);
        }
        Ok(())
    }

    /// Show the format the first bytes of a document it must parse: one that is not (an
    /// error page sent as 200) is cut off before it can be stored.
    fn check_head(&self, body: Option<&Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        let Some(head) = ctx.body.document_head.as_mut() else { return Ok(()) };
        if let Some(b) = body {
            let take = b.len().min(DOCUMENT_HEAD_BYTES.saturating_sub(head.len()));
            head.extend_from_slice(&b[..take]);
        }
        if head.len() < DOCUMENT_HEAD_BYTES && !end_of_stream {
            return Ok(());
        }
        let head = ctx.body.document_head.take().expect("head present");
        let Some((repo, route)) = ctx.routed() else { return Ok(()) };
        if let Err(why) = repo.format.check_document(&route.resolved, None, Some(&head)) {
            let repo = repo.name.clone();
            self.refuse_document(&repo, why, ctx);
            return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream document is not one its format can read").into_up());
        }
        Ok(())
    }

    /// Count and say why an upstream's document is refused.
    fn refuse_document(&self, repo: &str, why: String, ctx: &mut RequestCtx) {
        let path = ctx.route.as_ref().map_or("", |r| r.resolved.key_path.as_str());
        tracing::warn!(repository = %repo, path, "{why}");
        ctx.attempt.fail("unreadable_document");
        ctx.attempt.explain(why);
    }

    /// Read the expiry a body states about itself from its first bytes; refuse to cache or
    /// deliver it once that has passed (the transfer is cut before the rest of the body).
    fn check_expiry(&self, body: Option<&Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        const HEAD_LIMIT: usize = 16 * 1024;
        let Some(head) = ctx.body.expiry_head.as_mut() else { return Ok(()) };
        if let Some(b) = body {
            let take = b.len().min(HEAD_LIMIT.saturating_sub(head.len()));
            head.extend_from_slice(&b[..take]);
        }
        let (Some(repo), Some(route)) = (ctx.repo.as_ref(), ctx.route.as_ref()) else { return Ok(()) };
        let expiry = repo.format.expiry(head);
        if expiry.is_none() && head.len() < HEAD_LIMIT && !end_of_stream {
            return Ok(());
        }
        ctx.body.expiry_head = None;
        let Some(until) = expiry else { return Ok(()) };
        repo.remember_expiry(&route.resolved.key_path, until);
        if until < SystemTime::now() {
            tracing::warn!(repository = %repo.name, path = %route.resolved.key_path, "refusing a copy past its Valid-Until");
            ctx.attempt.fail("expired");
            return Err(Error::explain(ErrorType::HTTPStatus(502), "past its Valid-Until").into_up());
        }
        Ok(())
    }

    /// Set up digest checking and document rewriting for a 200 from the upstream.
    pub(super) fn prepare_body(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else { return Ok(()) };
        let resolved = &route.resolved;
        let at_peer = ctx.attempt.at_peer();
        let encoding = resp.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
        let encoded = encoding.as_deref().is_some_and(|e| e != "identity");
        // Documents the format parses (indexes, checksum files): one that cannot be (an
        // error page sent as 200) is refused before its body, or cut off at its first bytes;
        // never stored.
        if !at_peer {
            let content_type = resp.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let repo = ctx.repo.clone().expect("routed");
            if let Err(why) = repo.format.check_document(resolved, content_type, None) {
                self.refuse_document(&repo.name, why.clone(), ctx);
                return Err(Error::explain(ErrorType::HTTPStatus(502), why).into_up());
            }
            if !encoded {
                ctx.body.document_head = Some(Vec::with_capacity(DOCUMENT_HEAD_BYTES));
            }
        }
        let Some(route) = ctx.route.as_ref() else { return Ok(()) };
        let resolved = &route.resolved;
        if let Some(expected) = ctx.body.expected.as_ref() {
            if encoded {
                return Err(Error::explain(ErrorType::HTTPStatus(502), "upstream sent an artefact with a content coding; cannot verify it").into_up());
            }
            ctx.body.hasher = Some(expected.hasher());
        }
        // A fleet peer's documents arrive rewritten already.
        if resolved.rewrite && !at_peer {
            let gzip = match encoding.as_deref() {
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
            ctx.body.document = Some(Document { buf: BytesMut::with_capacity(capacity), gzip });
        }
        if resolved.lists_digests && !encoded && !at_peer {
            ctx.body.listing = Some(BytesMut::new());
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
    fn rewrite_document(&self, document: Document, ctx: &RequestCtx) -> Result<Bytes> {
        let raw = document.buf.freeze();
        let Some((repo, route)) = ctx.routed() else { return Ok(raw) };
        let raw = if document.gzip {
            let out = crate::format::gunzip(&raw, repo.max_document_bytes)
                .map_err(|e| Error::explain(ErrorType::HTTPStatus(502), format!("upstream document: {e}")).into_up())?;
            Bytes::from(out)
        } else {
            raw
        };
        let derived: &dyn crate::format::DerivedLookup = if repo.derive_files { &*self.derived } else { &crate::format::NoDerived };
        let rewritten = repo
            .format
            .rewrite(&route.resolved, raw, &RewriteEnv { proxy_base: &route.proxy_base, derived })
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(502), e.to_string()).into_up())?;
        if !rewritten.digests.is_empty() {
            repo.digests.insert_all(rewritten.digests);
        }
        if repo.derive_files && !rewritten.published.is_empty() {
            self.derived.published_upstream(&rewritten.published);
        }
        if let Some(first) = rewritten.bypassing.first() {
            self.metrics.links_bypassing.with_label_values(&[&repo.name]).inc_by(rewritten.bypassing.len() as u64);
            tracing::warn!(repository = %repo.name, document = %route.resolved.key_path, links = rewritten.bypassing.len(), first = %first, "links to a host that is no upstream of this repository are left as they are: clients download those around the cache (set files_upstream to that host to cache them)");
        }
        Ok(rewritten.body)
    }

    /// Keep a copy of a listing as it streams past; once complete, read its digests off the
    /// event loop (a compressed apt index takes a while to unpack). Too large a listing is
    /// just not learned from.
    fn collect_listing(&self, body: Option<&Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let limit = repo_max_document(ctx);
        let Some(listing) = ctx.body.listing.as_mut() else { return };
        if let Some(b) = body {
            if listing.len() + b.len() > limit {
                ctx.body.listing = None;
                return;
            }
            listing.extend_from_slice(b);
        }
        if !end_of_stream {
            return;
        }
        let raw = ctx.body.listing.take().expect("listing present").freeze();
        let Some((repo, route)) = ctx.routed() else { return };
        let (repo, key) = (repo.clone(), route.resolved.key_path.clone());
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

    /// Read `document` (a path below the repository prefix) through this proxy (so from cache
    /// when it can) and remember the artefact digests it lists; whether it could be read.
    /// Failures leave them unknown.
    async fn learn_digests(&self, repo: &Repository, document: &str) -> bool {
        let target = format!("{}{}", repo.prefix, document);
        let url = hangar_core::UpstreamUrl::http(self.listen_addr);
        // Signed as a listing read: the client request that needs it has passed the grants.
        let headers = [
            (header::ACCEPT, repo.format.document_accept().to_string()),
            (header::ACCEPT_ENCODING, "identity".to_string()),
            (http::HeaderName::from_static(hangar_core::wire::HOP_HEADER), self.fleet.sign(hangar_core::wire::HopKind::Listing, "GET", &target)),
        ];
        let timeouts = TimeoutConfig::default();
        let request = Request { method: http::Method::GET, url: &url, target: &target, headers: &headers, timeouts: &timeouts };
        let read = match tokio::time::timeout(LISTING_READ_TIMEOUT, self.client.fetch(&request, repo.max_document_bytes)).await {
            Ok(Ok(response)) if response.head.status == http::StatusCode::OK => Ok(response.body),
            Ok(Ok(response)) => Err(format!("answered {}", response.head.status)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        match read {
            Ok(body) => match repo.format.digests_in(document, &body) {
                Ok(found) => {
                    repo.digests.insert_all(found);
                    return true;
                }
                Err(e) => tracing::warn!(repository = %repo.name, document, error = %e, "cannot read digests"),
            },
            Err(e) => tracing::warn!(repository = %repo.name, document, error = %e, "cannot fetch the document that lists this artefact's digest"),
        }
        false
    }

    /// The digest `document` lists for the artefact at `key`: known already, or learned by
    /// reading the document now.
    pub(super) async fn listed_digest(&self, repo: &Repository, key: &str, document: &str) -> Listed {
        if let Some(d) = repo.digests.get(key) {
            return Listed::Digest(d);
        }
        let read = self.learn_digests(repo, document).await;
        match repo.digests.get(key) {
            Some(d) => Listed::Digest(d),
            None if read => Listed::Unlisted,
            None => Listed::Unread,
        }
    }

    /// An artefact about to be fetched must be verified: find its digest now (on a hit it is
    /// not needed). The document listing it is read through the proxy itself.
    pub(super) async fn expect_digest(&self, ctx: &mut RequestCtx) {
        if ctx.body.expected.is_some() {
            return;
        }
        let Some((repo, route)) = ctx.routed() else { return };
        let (repo, resolved) = (repo.clone(), &route.resolved);
        let (key, digest_from, required, learned) = (resolved.key_path.clone(), resolved.digest_from.clone(), resolved.digest_required, resolved.learned_digest);
        if let Some(document) = digest_from {
            match self.listed_digest(&repo, &key, &document).await {
                Listed::Digest(d) => ctx.body.expected = Some(d),
                // The format publishes digests and this one is missing: whatever comes is
                // not known to be right, so it is passed on but not kept.
                Listed::Unlisted => {
                    tracing::warn!(repository = %repo.name, artefact = %key, document = %document, "the document that lists this artefact's digest does not list it: served, not cached");
                    ctx.body.unverified = true;
                }
                Listed::Unread => ctx.body.unverified = required,
            }
        } else if learned {
            if repo.digests.get(&key).is_none() {
                repo.digests.settle(LISTING_SETTLE).await;
            }
            ctx.body.expected = repo.digests.get(&key);
        }
    }

    /// A listing served from cache that this process has not read yet (after a restart): read
    /// it as it goes out, so the artefacts it lists are verified.
    pub(super) fn read_cached_listing(&self, ctx: &mut RequestCtx) {
        if let Some((repo, route)) = ctx.routed() {
            if route.resolved.lists_digests && !repo.digests.has_learned(&route.resolved.key_path) {
                ctx.body.listing = Some(BytesMut::new());
            }
        }
    }
}

/// What a listing says of one artefact's digest.
pub(super) enum Listed {
    Digest(hangar_core::Digest),
    /// The listing was read and does not name the artefact.
    Unlisted,
    /// The listing could not be fetched or read (the registry may publish none).
    Unread,
}
