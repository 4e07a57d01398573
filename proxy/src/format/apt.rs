//! `apt`: a Debian-style archive, passed through byte for byte.
//!
//! - `dists/<suite>/InRelease`, `Release` and `Release.gpg` are metadata, and never served past
//!   the `Valid-Until` they carry: the proxy reads it from the body as it passes, refuses to
//!   cache or deliver a copy that has expired, and refetches (no stale copy) once it has.
//! - `by-hash/SHA256/<hex>` objects are immutable and verified against the digest in their
//!   name. apt fetches every index by hash when the Release says `Acquire-By-Hash: yes`, so the
//!   index files a client gets are always the ones its InRelease names.
//! - `pool/` files are immutable; apt checks them against the Packages index it holds.
//! - Other `dists/` files (indexes fetched by name) are metadata.

use std::time::SystemTime;

use pingora::http::RequestHeader;

use super::{with_query, Format, FormatError, FormatKind, Resolved};
use crate::digest::Digest;
use crate::freshness::PathClass;
use crate::path::RequestPath;

pub struct Apt;

fn is_release(path: &str) -> bool {
    path.starts_with("dists/") && matches!(path.rsplit('/').next(), Some("InRelease" | "Release" | "Release.gpg"))
}

impl Format for Apt {
    fn kind(&self) -> FormatKind {
        FormatKind::Apt
    }

    fn resolve(&self, path: &RequestPath<'_>, _req: &RequestHeader) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        let mut resolved = Resolved::passthrough(with_query(&rel, path.query), PathClass::Metadata);
        if let Some((_, hash)) = rel.split_once("/by-hash/") {
            resolved.class = PathClass::Immutable;
            if let Some(hex) = hash.strip_prefix("SHA256/") {
                resolved.digest = Some(Digest::sha256_hex(hex).ok_or(FormatError::NotFound("malformed by-hash name"))?);
            }
        } else if rel.starts_with("pool/") {
            resolved.class = PathClass::Immutable;
        }
        Ok(resolved)
    }

    fn expiry_in_body(&self, key_path: &str) -> bool {
        is_release(key_path) && !key_path.ends_with(".gpg")
    }

    /// `Valid-Until: Sat, 28 Nov 2026 00:53:02 UTC` in the Release paragraph.
    fn expiry(&self, head: &[u8]) -> Option<SystemTime> {
        let text = String::from_utf8_lossy(head);
        let line = text.lines().find_map(|l| l.strip_prefix("Valid-Until:"))?;
        httpdate::parse_http_date(&line.trim().replace("UTC", "GMT")).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(path: &str) -> Resolved {
        Apt.resolve(&RequestPath { relative: path, query: None }, &RequestHeader::build("GET", b"/", None).unwrap()).unwrap()
    }

    const SHA: &str = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    #[test]
    fn classes_and_digests_follow_the_archive_layout() {
        assert_eq!(resolve("dists/bookworm/InRelease").class, PathClass::Metadata);
        assert_eq!(resolve("dists/bookworm/main/binary-amd64/Packages.xz").class, PathClass::Metadata);
        let h = resolve(&format!("dists/bookworm/main/binary-amd64/by-hash/SHA256/{SHA}"));
        assert_eq!((h.class, h.digest), (PathClass::Immutable, Digest::sha256_hex(SHA)));
        assert_eq!(resolve("pool/main/h/hostname/hostname_3.23_amd64.deb").class, PathClass::Immutable);
        assert!(Apt.expiry_in_body("dists/bookworm-security/InRelease") && !Apt.expiry_in_body("dists/x/Release.gpg"));
    }

    #[test]
    fn valid_until_is_read_from_the_release_paragraph() {
        let head = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nDate: Sat, 21 Nov 2026 00:53:02 UTC\nValid-Until: Sat, 28 Nov 2026 00:53:02 UTC\nAcquire-By-Hash: yes\n";
        assert_eq!(Apt.expiry(head), httpdate::parse_http_date("Sat, 28 Nov 2026 00:53:02 GMT").ok());
        assert_eq!(Apt.expiry(b"Origin: Debian\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n"), None);
    }
}
