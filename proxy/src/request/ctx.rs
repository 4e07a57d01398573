//! What one request carries from phase to phase: a few named parts, each written by one phase
//! and read by the ones after it.
//!
//! | part | written by | read by |
//! |---|---|---|
//! | [`Caller`] | admission | resolution, attempt |
//! | `repo`, [`Route`] | admission, resolution | every later phase |
//! | [`CacheState`] | cache phases | cache phases, outcome |
//! | [`Attempt`](super::attempt::Attempt) | attempt | body, outcome |
//! | [`BodyWork`] | body | outcome |

use std::sync::Arc;

use bytes::BytesMut;
use hangar_core::{CacheResult, Digest, Hasher, PathClass};
use pingora::http::ResponseHeader;

use super::attempt::Attempt;
use crate::directives::RequestDirectives;
use crate::format::Resolved;
use crate::repository::Repository;

/// Who sent the request, as far as the proxy can prove it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Caller {
    /// A fleet member forwarded it (its hop proof verified): serve, never forward again.
    pub peer: bool,
    /// The proxy's own read of its cache (its hop proof verified): never fetch.
    pub loopback: bool,
    /// A stale-while-revalidate refresh pingora runs in the background.
    pub background: bool,
    /// The proxy's own read of a listing for a request already allowed (its hop proof
    /// verified): not checked against the grants again.
    pub listing: bool,
    /// The query carries a credential: refused, and logged without its query.
    pub secret_in_query: bool,
}

/// What the request is for, once its format has resolved it.
pub struct Route {
    pub resolved: Resolved,
    /// The path class after the repository's own patterns.
    pub class: PathClass,
    /// The proxy's URL of the repository as rewritten documents are stored with it (the
    /// placeholder, or `public_url`); empty for what is not rewritten.
    pub proxy_base: String,
    /// The client's Cache-Control directives (empty when the repository ignores them).
    pub directives: RequestDirectives,
    /// The body states its own expiry (apt's Valid-Until).
    pub states_expiry: bool,
}

/// The cache phases' decisions.
#[derive(Default)]
pub struct CacheState {
    /// The lookup found a stored response that may not be used stale (must-revalidate,
    /// proxy-revalidate, s-maxage, no-cache).
    pub found_unservable_stale: bool,
    /// An expired entry served without asking the upstream: the repository is offline, or
    /// the client's `max-stale` accepted it.
    pub served_stale: bool,
    /// The stored copy was not verified against the digest this request names: fetch it
    /// again whole (no validators), never revalidate it.
    pub refetch: bool,
    /// A validated response is wanted (the client asked for one, or a stored document must
    /// announce what was derived since), so stale-while-revalidate must not answer; a stale
    /// copy still stands in if the upstream fails.
    pub client_revalidates: bool,
    /// The upstream's 304 to a revalidation, merged into the stored headers before they are
    /// judged again.
    pub not_modified: Option<Box<ResponseHeader>>,
    /// A fresh memory-tier hit answered before pingora's cache phases ([`super::fast_hit`]):
    /// reported as the hit it is, though pingora's cache never ran.
    pub fast_hit: bool,
}

/// A document being collected whole, to be rewritten.
pub struct Document {
    pub buf: BytesMut,
    /// It arrived gzip-encoded and is decoded before rewriting.
    pub gzip: bool,
}

/// What happens to the body on its way through.
#[derive(Default)]
pub struct BodyWork {
    /// The digest the body must have; hashed while it streams.
    pub expected: Option<Digest>,
    /// `expected` is only the client's wish (see `Resolved::digest_asked`).
    pub expected_asked: bool,
    pub hasher: Option<Hasher>,
    /// The digest could not be learned: serve the artefact, but do not cache it.
    pub unverified: bool,
    pub document: Option<Document>,
    /// A copy of a listing being collected (while it streams on) to learn its digests.
    pub listing: Option<BytesMut>,
    /// The body came through `upstream_response_body_filter` (from the upstream, a peer or
    /// origin), which did the reading; `response_body_filter` does it for bodies from cache.
    pub from_upstream: bool,
    /// The first bytes of a body that states its expiry, until the expiry is found.
    pub expiry_head: Option<Vec<u8>>,
    /// The first bytes of a document, until the format has seen enough of them.
    pub document_head: Option<Vec<u8>>,
    /// A rewritten document on its way to a client: the placeholder becomes its origin.
    pub rebase: Option<super::rebase::Rebase>,
}

impl BodyWork {
    /// Start over for another try (the next hop, a redirect, a challenge answered): the
    /// digest expected stays, what the last try's body began does not.
    pub fn new_try(&mut self, states_expiry: bool) {
        self.hasher = None;
        self.document = None;
        self.listing = None;
        self.from_upstream = false;
        self.expiry_head = states_expiry.then(Vec::new);
        self.document_head = None;
    }
}

/// Per-request state.
///
/// Kept small (about a hundred bytes; the parts behind boxes are 1.5 KB together): pingora
/// holds the context inside its per-request futures and moves them onto the heap whole, more
/// than once per request, so every byte here was copied several times per request (a third
/// of a 1 KiB hit's instructions were `memcpy`; see bench/README.md).
#[derive(Default)]
pub struct RequestCtx {
    pub caller: Caller,
    /// The repository, once routed (set before the format resolves the request, so that
    /// requests it refuses still count under the repository).
    pub repo: Option<Arc<Repository>>,
    pub route: Option<Box<Route>>,
    pub cache: CacheState,
    pub attempt: Box<Attempt>,
    pub body: Box<BodyWork>,
    /// The label of a response the proxy wrote itself.
    pub local: Option<CacheResult>,
    /// The status of the last response head from upstream (or a peer, or origin).
    pub upstream_status: Option<u16>,
    /// What the audit log records of this request (writes, deletes, refusals only).
    pub audit: Option<Box<crate::auth::audit::AuditFacts>>,
}

impl RequestCtx {
    /// The repository's name, `-` before routing (a metrics label).
    pub fn repo_name(&self) -> &str {
        self.repo.as_ref().map_or("-", |r| r.name.as_str())
    }

    /// The repository and route of a resolved request.
    pub fn routed(&self) -> Option<(&Arc<Repository>, &Route)> {
        Some((self.repo.as_ref()?, self.route.as_ref()?))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_context_pingora_moves_around_stays_small() {
        // Pingora copies its request futures, with the context inside, to the heap several
        // times per request: what grows here grows every request's copies.
        assert!(std::mem::size_of::<super::RequestCtx>() <= 128, "{} bytes", std::mem::size_of::<super::RequestCtx>());
    }
}
