//! `oci`: a Docker / OCI distribution registry, mounted at `/v2/`.
//!
//! - `/v2/` (the version check clients start with) is answered by the proxy itself, so a
//!   client can pull from cache while the upstream is down.
//! - Manifests by digest and blobs are immutable and verified against their digest.
//! - Manifests by tag are metadata (refreshed every `metadata_ttl`, the last one served when
//!   the upstream fails), one variant per `Accept` (registries answer a tag differently per
//!   accepted media type). They are stored byte for byte with the registry's
//!   `Docker-Content-Digest` and `Content-Type`.
//! - The registry's bearer-token challenge is answered by the proxy (see `proxy/auth.rs`).

use pingora::http::RequestHeader;

use super::{with_query, Format, FormatError, FormatKind, Resolved};
use crate::digest::Digest;
use crate::freshness::PathClass;
use crate::path::RequestPath;

pub struct Oci;

fn digest_of(reference: &str) -> Option<Digest> {
    reference.strip_prefix("sha256:").and_then(Digest::sha256_hex)
}

impl Format for Oci {
    fn kind(&self) -> FormatKind {
        FormatKind::Oci
    }

    fn resolve(&self, path: &RequestPath<'_>, _req: &RequestHeader) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if rel.is_empty() {
            let mut ping = Resolved::passthrough(String::new(), PathClass::Http);
            ping.local = Some((200, "{}"));
            return Ok(ping);
        }
        let mut resolved = Resolved::passthrough(with_query(&rel, path.query), PathClass::Metadata);
        if let Some((_, reference)) = rel.rsplit_once("/manifests/") {
            match digest_of(reference) {
                Some(d) => {
                    resolved.class = PathClass::Immutable;
                    resolved.digest = Some(d);
                }
                None => resolved.vary_accept = true,
            }
        } else if let Some((_, digest)) = rel.rsplit_once("/blobs/") {
            resolved.class = PathClass::Immutable;
            resolved.digest = Some(digest_of(digest).ok_or(FormatError::NotFound("blobs are addressed by sha256 digest"))?);
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    fn resolve(path: &str) -> Resolved {
        Oci.resolve(&RequestPath { relative: path, query: None }, &RequestHeader::build("GET", b"/", None).unwrap()).unwrap()
    }

    #[test]
    fn digests_are_immutable_and_tags_are_not() {
        assert!(resolve("").local.is_some());
        let by_digest = resolve(&format!("library/alpine/manifests/{SHA}"));
        assert_eq!((by_digest.class, by_digest.digest.is_some(), by_digest.vary_accept), (PathClass::Immutable, true, false));
        let by_tag = resolve("library/alpine/manifests/3.20");
        assert_eq!((by_tag.class, by_tag.vary_accept), (PathClass::Metadata, true));
        let blob = resolve(&format!("a/b/c/blobs/{SHA}"));
        assert_eq!((blob.class, blob.digest.is_some()), (PathClass::Immutable, true));
        assert_eq!(resolve("library/alpine/tags/list").class, PathClass::Metadata);
    }
}
