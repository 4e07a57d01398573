//! Following a [`crate::format::Pointer`]: which immutable object a mutable name names now.
//!
//! An apt index asked for by name is the one the InRelease being served lists (learned as the
//! InRelease passed). For a registry tag, the upstream is asked with HEAD, carrying every `Accept` header of the client's request
//! (a registry picks the manifest, or the index, by them). Its answer is remembered per name
//! and `Accept` list; within `metadata_ttl` it is used without asking again, and when the
//! upstream fails (or the repository is offline) the last answer is used however old. The
//! object itself is then served by digest, through the cache, verified.

use hangar_core::Digest;
use http::{header, HeaderMap};

use super::{accept_list, HangarProxy};
use crate::client::Request;
use crate::format::{PointerSource, Resolved};
use crate::repository::Repository;

/// The outcome of following a pointer.
pub(super) enum Followed {
    /// Serve the object with this digest.
    To(Digest),
    /// The upstream says the name does not exist.
    NotFound,
    /// No digest could be learned: ask for the name itself, as an ordinary cached request.
    Unresolved,
}

/// What the HEAD said.
enum Answer {
    Digest(Digest),
    NotFound,
    /// The upstream failed (connection, 5xx, 429): a remembered answer may stand in.
    Failed,
    /// The upstream answered, but without a usable digest.
    NoDigest,
}

/// Responses of HEAD requests have no body; anything more is not a registry's answer.
const HEAD_BODY_LIMIT: usize = 64 * 1024;

/// Longest name-and-Accept key remembered: real clients' lists are a few hundred bytes.
const MAX_POINTER_KEY: usize = 2048;

/// The media types the client accepts, without parameters, sorted and deduplicated: what the
/// registry chooses by, in one spelling however the client wrote it.
fn media_types(headers: &HeaderMap) -> String {
    let mut types: Vec<String> = accept_list(headers).split(',').map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect();
    types.sort();
    types.dedup();
    types.join(",")
}

impl HangarProxy {
    /// Which object `resolved`'s pointer names now, for a client that sent `headers`.
    pub(super) async fn follow_pointer(&self, repo: &Repository, resolved: &Resolved, headers: &HeaderMap) -> Followed {
        let Some(pointer) = resolved.pointer.as_ref() else { return Followed::Unresolved };
        let digest_header = match &pointer.source {
            PointerSource::Head(header) => *header,
            PointerSource::Document(document) => return self.follow_listing(repo, resolved, document).await,
        };
        let key = format!("{}\t{}", resolved.key_path, media_types(headers));
        let known = repo.pointers.get(&key);
        let count = |result: &str| self.metrics.pointer_lookups.with_label_values(&[&repo.name, result]).inc();
        let fresh_for = repo.freshness.metadata_ttl().unwrap_or_default();
        if let Some((digest, Some(age))) = &known {
            if age < &fresh_for {
                count("remembered");
                return Followed::To(digest.clone());
            }
        }
        let ticket = if self.offline.is_offline(&repo.name) { None } else { repo.breaker.ticket(&resolved.key_path) };
        let answer = match ticket {
            None => Answer::Failed,
            Some(ticket) => {
                let answer = self.ask_upstream(repo, digest_header, resolved, headers).await;
                ticket.settle(!matches!(answer, Answer::Failed));
                answer
            }
        };
        match answer {
            Answer::Digest(digest) => {
                count("upstream");
                // An outlandish Accept list is answered, but not remembered.
                if key.len() <= MAX_POINTER_KEY {
                    repo.pointers.insert(key, digest.clone());
                }
                Followed::To(digest)
            }
            Answer::NotFound => {
                count("not_found");
                repo.pointers.remove(&key);
                Followed::NotFound
            }
            Answer::Failed => match known {
                Some((digest, _)) => {
                    count("last_known");
                    Followed::To(digest)
                }
                None => {
                    count("unresolved");
                    Followed::Unresolved
                }
            },
            Answer::NoDigest => {
                count("unresolved");
                Followed::Unresolved
            }
        }
    }

    /// The digest `document` lists for the name: learned as the document last passed, or read
    /// through the proxy (so from cache when it can) when not known yet.
    async fn follow_listing(&self, repo: &Repository, resolved: &Resolved, document: &str) -> Followed {
        let count = |result: &str| self.metrics.pointer_lookups.with_label_values(&[&repo.name, result]).inc();
        // A listing that has just passed may still be being read.
        repo.digests.settle(std::time::Duration::from_secs(10)).await;
        match self.listed_digest(repo, &resolved.key_path, document).await {
            super::body::Listed::Digest(d) => {
                count("listed");
                Followed::To(d)
            }
            super::body::Listed::Unlisted | super::body::Listed::Unread => {
                count("unresolved");
                Followed::Unresolved
            }
        }
    }

    /// HEAD the name upstream, answering one authentication challenge.
    async fn ask_upstream(&self, repo: &Repository, digest_header: &str, resolved: &Resolved, client_headers: &HeaderMap) -> Answer {
        let target = format!("{}{}", repo.upstream.base_path, resolved.upstream_path);
        let mut headers: Vec<(header::HeaderName, String)> =
            client_headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).map(|v| (header::ACCEPT, v.to_string())).collect();
        let sent_ahead = resolved.auth_scope.as_deref().and_then(|scope| repo.auth.preauthorization(scope));
        if let Some(auth) = &sent_ahead {
            headers.push((header::AUTHORIZATION, auth.clone()));
        }
        for attempt in 0..2 {
            let request = Request { method: http::Method::HEAD, url: &repo.upstream, target: &target, headers: &headers, timeouts: &repo.timeouts };
            let response = match self.client.fetch(&request, HEAD_BODY_LIMIT).await {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.upstream_errors.with_label_values(&[&repo.name, "pointer"]).inc();
                    tracing::warn!(repository = %repo.name, error = %e, "tag lookup failed");
                    return Answer::Failed;
                }
            };
            let status = response.head.status;
            if status == http::StatusCode::UNAUTHORIZED && attempt == 0 {
                let Some(challenge) = response.header("www-authenticate") else { return Answer::NoDigest };
                if let Some(refused) = &sent_ahead {
                    repo.auth.forget(refused);
                    headers.retain(|(name, _)| name != header::AUTHORIZATION);
                }
                match repo.auth.answer(&self.client, &repo.upstream, &repo.timeouts, challenge).await {
                    Ok(authorization) => headers.push((header::AUTHORIZATION, authorization)),
                    Err(why) => {
                        self.metrics.upstream_errors.with_label_values(&[&repo.name, "token"]).inc();
                        tracing::warn!(repository = %repo.name, error = %why, "cannot answer the upstream's challenge");
                        return Answer::NoDigest;
                    }
                }
                continue;
            }
            return if status.is_success() {
                response.header(digest_header).and_then(Digest::parse).map_or(Answer::NoDigest, Answer::Digest)
            } else if status == http::StatusCode::NOT_FOUND {
                Answer::NotFound
            } else if status.is_server_error() || status.as_u16() == 429 {
                Answer::Failed
            } else {
                Answer::NoDigest
            };
        }
        Answer::NoDigest
    }
}
