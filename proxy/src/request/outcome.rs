//! The last phase: one [`Outcome`] for the request, handed to every sink; and the cache
//! maintenance a fetch calls for (a document fetched anew drops its companions).

use hangar_core::event::Source;
use hangar_core::CacheResult;
use pingora::cache::eviction::EvictionManager;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::cache::stored;
use super::{target_of, HangarProxy, RequestCtx};
use crate::outcome::Outcome;

/// The error says the client went away (reset, closed, a write that failed).
pub(super) fn client_went_away(error: &Error) -> bool {
    error.esource() == &pingora::ErrorSource::Downstream && matches!(error.etype(), pingora::ErrorType::WriteError | pingora::ErrorType::ReadError | pingora::ErrorType::ConnectionClosed)
}

impl HangarProxy {
    /// `logging`: tell the sinks how the request ended.
    pub(super) fn report(&self, session: &Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.attempt.finish(error.is_some_and(|e| e.esource() == &pingora::ErrorSource::Upstream));
        let ctx = &*ctx;
        let req = session.req_header();
        let response = session.response_written();
        let status = response.map_or(0, |r| r.status.as_u16());
        let content_length = response.and_then(|r| r.headers.get(http::header::CONTENT_LENGTH)).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let result = self.result(session, ctx);
        // Gone mid-body: an error that says so, or (a fill carries on for the cache without
        // its client, and reports no error) fewer body bytes sent than the response declared.
        let short = error.is_none() && req.method != http::Method::HEAD && matches!(status, 200 | 206) && content_length.is_some_and(|l: u64| (session.body_bytes_sent() as u64) < l);
        if error.is_some_and(client_went_away) || short {
            tracing::debug!(target = %target_of(req), sent = session.body_bytes_sent(), "client disconnected mid-response");
            self.metrics.client_disconnects.inc();
        }
        let phase = session.cache.phase();
        let source = match result {
            _ if ctx.local.is_some() => Source::Proxy,
            CacheResult::Hit | CacheResult::Stale | CacheResult::Revalidated => Source::Cache,
            _ => ctx.attempt.source(),
        };
        let outcome = Outcome {
            repository: ctx.repo.as_deref().map(|r| r.name.as_str()),
            format: ctx.repo.as_deref().map(|r| r.format.kind()),
            method: &req.method,
            // A credential in the query is refused, and not written down either.
            target: if ctx.caller.secret_in_query { req.uri.path() } else { target_of(req) },
            host: req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()),
            key_path: ctx.route.as_ref().map(|r| r.resolved.key_path.as_str()),
            class: ctx.route.as_ref().map(|r| r.class),
            status,
            result,
            source,
            stored: stored(phase),
            digest: ctx.body.expected.as_ref(),
            unverified: ctx.body.unverified,
            content_length,
            bytes_served: session.body_bytes_sent() as u64,
            bytes_fetched: session.upstream_body_bytes_received() as u64,
            upstream_time: ctx.attempt.upstream_time(),
            upstream_status: ctx.upstream_status,
            upstream_error: ctx.attempt.error(),
            background: ctx.caller.background,
            failed: error.is_some(),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            audit: ctx.audit.as_deref(),
        };
        self.sinks.record(&outcome);
        self.drop_companions(&outcome, ctx);
        if !outcome.failed && ctx.local.is_none() {
            self.derive_after(result, status, ctx);
        }
    }

    /// A document fetched anew makes its companions (Maven's metadata checksums) stale: drop
    /// them so they are fetched with it.
    fn drop_companions(&self, outcome: &Outcome<'_>, ctx: &RequestCtx) {
        let (Some(repo), Some(key_path)) = (ctx.repo.as_ref(), outcome.key_path) else { return };
        if outcome.status != 200 || !matches!(outcome.result, CacheResult::Miss | CacheResult::Expired) || !outcome.stored {
            return;
        }
        for companion in repo.format.companions(key_path) {
            let key = crate::router::cache_key(&repo.name, &companion);
            for k in self.storage.purge_url(&key.to_compact()) {
                self.eviction.remove(pingora::cache::CacheEntryKeyRef::from_entry_id(&k, None));
            }
        }
    }
}
