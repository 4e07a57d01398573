//! `oci`: a Docker / OCI distribution registry, mounted at `/v2/` (or below it, one prefix per
//! registry, e.g. `/v2/ghcr/`; containerd's `?ns=<registry>` also picks the repository).
//!
//! - `/v2/` (the version check clients start with) is answered by the proxy itself, so a
//!   client can pull from cache while the upstream is down.
//! - Manifests by digest and blobs are immutable and verified against their digest.
//! - A manifest by tag is a [`Pointer`]: the proxy asks the upstream with HEAD which digest
//!   the tag names for the client's `Accept` headers, then serves the manifest by that digest
//!   from cache; when the upstream fails, the digest it last named. An upstream that sends no
//!   `Docker-Content-Digest` gets the tag fetched as metadata instead, one variant per `Accept`.
//!   Manifests are stored byte for byte with the registry's `Content-Type`.
//! - Docker Hub (`namespace = "docker.io"`) keeps official images under `library/`:
//!   `alpine` means `library/alpine`, as the Docker CLI and containerd both assume.
//! - The registry's bearer-token challenge is answered by the proxy (see `upstream_auth.rs`).

use http::HeaderMap;

use hangar_core::{Digest, PathClass, RequestPath};
use super::{Format, FormatError, FormatKind, LocalAnswer, Pointer, PointerSource, Resolved};

pub struct Oci {
    /// Single-component names get `library/` (Docker Hub).
    library: bool,
}

impl Oci {
    pub fn new(namespace: Option<&str>) -> Self {
        Oci { library: namespace.is_some_and(|n| n.eq_ignore_ascii_case("docker.io")) }
    }
}

/// The registry path grammar: lower-case components of alphanumerics joined by `.`, `_`,
/// `__` or runs of `-`, separated by `/`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
                && !c.contains("..")
                && !c.contains("___")
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty() && b.len() <= 128 && (b[0].is_ascii_alphanumeric() || b[0] == b'_') && b.iter().all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// The query without containerd's `ns` (which chose the repository and means nothing upstream).
fn query_without_ns(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?.split('&').filter(|p| !p.is_empty() && !p.starts_with("ns=") && *p != "ns").collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Clients check `Docker-Distribution-Api-Version` on every registry answer.
const API_VERSION: &[(&str, &str)] = &[("docker-distribution-api-version", "registry/2.0")];

/// The version check: the proxy answers it, so pulls from cache work while the registry is down.
const VERSION_CHECK: LocalAnswer = LocalAnswer { status: 200, body: "{}", headers: API_VERSION };

/// A tag the registry says does not exist, in the distribution spec's error form.
const MANIFEST_UNKNOWN: LocalAnswer = LocalAnswer {
    status: 404,
    body: r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown to the upstream registry"}]}"#,
    headers: API_VERSION,
};

impl Format for Oci {
    fn kind(&self) -> FormatKind {
        FormatKind::Oci
    }

    /// The image's name as the registry knows it: what precedes `/manifests/`, `/blobs/` or
    /// `/tags/`, with Docker Hub's `library/` for a one-part name.
    fn package(&self, path: &str) -> Option<String> {
        let name = ["/manifests/", "/blobs/", "/tags/"].iter().find_map(|part| path.rfind(part).map(|at| &path[..at])).filter(|n| !n.is_empty())?;
        Some(match self.library && !name.contains('/') {
            true => format!("library/{name}"),
            false => name.to_string(),
        })
    }

    /// Manifests by tag, tag lists and referrers are JSON objects (by digest, they are
    /// verified against it instead).
    fn check_document(&self, resolved: &Resolved, content_type: Option<&str>, head: Option<&[u8]>) -> Result<(), String> {
        if resolved.local.is_some() || resolved.class != PathClass::Metadata {
            return Ok(());
        }
        super::document_like(content_type, head, "registry JSON document", &["{"])
    }

    /// A proxy restarted (even killed) during a registry outage still serves its tags.
    fn journals_pointers(&self) -> bool {
        true
    }

    fn registry_root(&self) -> Option<&'static str> {
        Some("/v2/")
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if rel.is_empty() {
            let mut ping = Resolved::passthrough(String::new(), PathClass::Http);
            ping.local = Some(VERSION_CHECK);
            return Ok(ping);
        }
        let (name, kind, reference) = if let Some((name, reference)) = rel.rsplit_once("/manifests/") {
            (name, "manifests", reference)
        } else if let Some((name, digest)) = rel.rsplit_once("/blobs/") {
            (name, "blobs", digest)
        } else if let Some(name) = rel.strip_suffix("/tags/list") {
            (name, "tags", "list")
        } else if let Some((name, digest)) = rel.rsplit_once("/referrers/") {
            (name, "referrers", digest)
        } else {
            return Err(FormatError::NotFound("not a registry API path"));
        };
        if !valid_name(name) {
            return Err(FormatError::BadRequest("invalid repository name"));
        }
        let name = if self.library && !name.contains('/') { format!("library/{name}") } else { name.to_string() };
        let digest = Digest::parse(reference);
        let path_of = |reference: &str| match query_without_ns(path.query) {
            Some(q) => format!("{name}/{kind}/{reference}?{q}"),
            None => format!("{name}/{kind}/{reference}"),
        };
        let mut resolved = match (kind, digest) {
            ("manifests" | "blobs", Some(d)) => {
                let mut r = Resolved::passthrough(path_of(&d.to_string()), PathClass::Immutable);
                r.digest = Some(d);
                // A registry asked by sha512 may still name the canonical sha256.
                r.digest_header = Some("docker-content-digest");
                r
            }
            ("manifests", None) if valid_tag(reference) => {
                let mut r = Resolved::passthrough(path_of(reference), PathClass::Metadata);
                r.vary_accept = true;
                r.pointer = Some(Pointer { source: PointerSource::Head("docker-content-digest"), target: format!("{name}/manifests/{{digest}}"), missing: Some(MANIFEST_UNKNOWN) });
                r
            }
            ("manifests", None) => return Err(FormatError::BadRequest("invalid manifest reference (a tag or sha256:/sha512: digest)")),
            ("blobs", None) => return Err(FormatError::NotFound("blobs are addressed by sha256 or sha512 digest")),
            // Tag lists and referrers change as the registry does.
            _ => Resolved::passthrough(path_of(reference), PathClass::Metadata),
        };
        if kind == "tags" || kind == "referrers" {
            resolved.vary_accept = true;
        }
        resolved.auth_scope = Some(format!("repository:{name}:pull"));
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    fn resolve_in(oci: &Oci, path: &str, query: Option<&str>) -> Result<Resolved, FormatError> {
        oci.resolve(&RequestPath { relative: path, query }, &HeaderMap::new())
    }

    fn resolve(path: &str) -> Resolved {
        resolve_in(&Oci::new(None), path, None).unwrap()
    }

    #[test]
    fn digests_are_immutable_and_tags_are_pointers() {
        assert!(resolve("").local.is_some());
        let by_digest = resolve(&format!("library/alpine/manifests/{SHA}"));
        assert_eq!((by_digest.class, by_digest.digest.is_some(), by_digest.vary_accept, by_digest.pointer.is_some()), (PathClass::Immutable, true, false, false));
        assert_eq!(by_digest.digest_header, Some("docker-content-digest"));
        let by_tag = resolve("library/alpine/manifests/3.20");
        assert_eq!((by_tag.class, by_tag.vary_accept), (PathClass::Metadata, true));
        assert_eq!(by_tag.pointer.unwrap().target_for(&Digest::parse(SHA).unwrap()), format!("library/alpine/manifests/{SHA}"));
        let blob = resolve(&format!("a/b/c/blobs/{SHA}"));
        assert_eq!((blob.class, blob.digest.is_some()), (PathClass::Immutable, true));
        assert_eq!(resolve("library/alpine/tags/list").class, PathClass::Metadata);
    }

    #[test]
    fn docker_hub_official_images_live_under_library() {
        let hub = Oci::new(Some("docker.io"));
        let official = resolve_in(&hub, "alpine/manifests/3", None).unwrap();
        assert_eq!(official.key_path, "library/alpine/manifests/3");
        assert_eq!(official.auth_scope.as_deref(), Some("repository:library/alpine:pull"));
        assert_eq!(resolve_in(&hub, "me/app/manifests/3", None).unwrap().key_path, "me/app/manifests/3");
        assert_eq!(resolve_in(&Oci::new(Some("ghcr.io")), "alpine/manifests/3", None).unwrap().key_path, "alpine/manifests/3");
    }

    #[test]
    fn containerd_ns_is_not_part_of_the_key_or_the_upstream_request() {
        let r = resolve_in(&Oci::new(None), "a/tags/list", Some("ns=docker.io&n=10")).unwrap();
        assert_eq!((r.key_path.as_str(), r.upstream_path.as_str()), ("a/tags/list?n=10", "a/tags/list?n=10"));
        let r = resolve_in(&Oci::new(None), &format!("a/blobs/{SHA}"), Some("ns=docker.io")).unwrap();
        assert_eq!(r.key_path, format!("a/blobs/{SHA}"));
    }

    #[test]
    fn bad_names_and_references_are_refused() {
        let bad = |p: &str| resolve_in(&Oci::new(None), p, None).is_err();
        assert!(bad("Upper/manifests/1"));
        assert!(bad("a//b/manifests/1"));
        assert!(bad("a/manifests/bad:tag"));
        assert!(bad("a/blobs/latest"));
        assert!(bad("a/something/else"));
        assert!(bad(&format!("-a/blobs/{SHA}")));
        assert!(!bad("my_org/my-app.x/manifests/v1.2_3-rc"));
    }
}
