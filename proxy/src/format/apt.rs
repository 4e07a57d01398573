//! `apt`: a Debian-style archive, passed through byte for byte.
//!
//! - `dists/<suite>/InRelease`, `Release` and `Release.gpg` are metadata, and never served past
//!   the `Valid-Until` they carry: the proxy reads it from the body as it passes, refuses to
//!   cache or deliver a copy that has expired, and refetches (no stale copy) once it has.
//! - The proxy learns the SHA256 of every index the (In)Release lists as it passes. With
//!   `Acquire-By-Hash: yes`, an index asked for by name is served as the `by-hash/SHA256/<hex>`
//!   object that InRelease names, so the index files a client gets always belong to the
//!   InRelease it was served, even while the archive is being updated upstream.
//! - `by-hash/SHA256/<hex>` objects are immutable and verified against the digest in their
//!   name. `Packages` indexes (plain, gzip or xz) are read as they pass, for the SHA256 of every
//!   `pool/` file they list.
//! - `pool/` files are immutable, and verified against that SHA256 when it has been learned
//!   (apt checks them too, against the index it holds).

use std::io::Write;
use std::time::SystemTime;

use http::HeaderMap;

use hangar_core::{Digest, PathClass, RequestPath};
use super::{with_query, Format, FormatError, FormatKind, Pointer, PointerSource, Resolved};

pub struct Apt;

/// Largest index unpacked to learn digests from (Debian's largest Packages file is ~60 MB).
const MAX_UNPACKED: usize = 512 << 20;

fn is_release(path: &str) -> bool {
    path.starts_with("dists/") && matches!(path.rsplit('/').next(), Some("InRelease" | "Release" | "Release.gpg"))
}

/// `dists/<suite>` of a path below `dists/`.
fn suite_dir(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("dists/")?;
    let end = rest.find('/')?;
    Some(&path[..6 + end])
}

/// Index files apt fetches by hash when the archive offers it.
fn is_index(name: &str) -> bool {
    ["Packages", "Sources", "Translation-", "Contents-", "Components-", "Commands-"].iter().any(|p| name.starts_with(p))
}

/// A Packages index: below `binary-<arch>/` (by name or by hash), or anywhere in a flat
/// repository (`deb http://host/path ./` reads `Packages` next to `Release`).
fn is_packages_listing(path: &str) -> bool {
    let by_name = path.rsplit('/').next().is_some_and(|n| n.starts_with("Packages"));
    by_name || (path.contains("/binary-") && path.contains("/by-hash/SHA256/"))
}

/// A package file: everything below `pool/`, and the `.deb`s of flat repositories.
fn is_package_file(path: &str) -> bool {
    path.starts_with("pool/") || [".deb", ".udeb", ".ddeb"].iter().any(|ext| path.ends_with(ext))
}

/// A writer that refuses to grow past a limit (a decompression bomb is an error, not an OOM).
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_UNPACKED {
            return Err(std::io::Error::other("index larger than the unpack limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of an index as apt publishes it: plain, gzip or xz, told by its magic number.
fn unpack(body: &[u8]) -> Result<Vec<u8>, FormatError> {
    let bad = |reason: String| FormatError::BadDocument { what: "index", reason };
    if body.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        let mut out = Bounded(Vec::new());
        lzma_rs::xz_decompress(&mut &body[..], &mut out).map_err(|e| bad(format!("xz: {e}")))?;
        Ok(out.0)
    } else if body.starts_with(&[0x1F, 0x8B]) {
        super::gunzip(body, MAX_UNPACKED).map_err(|e| bad(format!("gzip: {e}")))
    } else {
        Ok(body.to_vec())
    }
}

/// The files an (In)Release lists in its `SHA256:` field, keyed by path below the archive
/// root; nothing unless it says `Acquire-By-Hash: yes` (only then can apt, and the proxy,
/// fetch them by hash).
fn release_digests(release_path: &str, text: &str) -> Vec<(String, Digest)> {
    let dir = release_path.rsplit_once('/').map_or("", |(d, _)| d);
    if !text.lines().any(|l| l.trim() == "Acquire-By-Hash: yes") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut in_sha256 = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_sha256 = line.trim_end() == "SHA256:";
            continue;
        }
        if in_sha256 {
            let mut fields = line.split_whitespace();
            if let (Some(hex), Some(_size), Some(path)) = (fields.next(), fields.next(), fields.next()) {
                if let Some(d) = Digest::sha256_hex(hex) {
                    out.push((format!("{dir}/{path}"), d));
                }
            }
        }
    }
    out
}

/// `Filename:` and `SHA256:` of every paragraph of a Packages index.
fn package_digests(text: &str) -> Vec<(String, Digest)> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let field = |name: &str| paragraph.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        if let (Some(file), Some(d)) = (field("Filename:"), field("SHA256:").and_then(Digest::sha256_hex)) {
            // Keyed as the proxy keys the request apt makes for it: flat repositories list
            // `all/./x.deb`, which apt asks for as written and the proxy resolves (RFC 3986).
            let key = hangar_core::remove_dot_segments(file, hangar_core::DotSegments::All);
            match key {
                Ok(key) if is_package_file(&key) => out.push((key.into_owned(), d)),
                _ => {}
            }
        }
    }
    out
}

impl Format for Apt {
    fn kind(&self) -> FormatKind {
        FormatKind::Apt
    }

    /// A `pool/` file's binary or source package: its name up to the first `_`.
    fn package(&self, path: &str) -> Option<String> {
        let file = path.strip_prefix("pool/")?.rsplit('/').next()?;
        let (name, _) = file.split_once('_')?;
        Some(name.to_string())
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        let mut resolved = Resolved::passthrough(with_query(&rel, path.query), PathClass::Metadata);
        // (A query makes another cache entry, not another archive: only the real one teaches.)
        resolved.lists_digests = path.query.is_none() && (is_packages_listing(&rel) || (is_release(&rel) && !rel.ends_with(".gpg")));
        if let Some((_, hash)) = rel.split_once("/by-hash/") {
            resolved.class = PathClass::Immutable;
            if let Some(hex) = hash.strip_prefix("SHA256/") {
                resolved.digest = Some(Digest::sha256_hex(hex).ok_or(FormatError::NotFound("malformed by-hash name"))?);
            }
        } else if is_package_file(&rel) {
            // apt escapes `+` (`hostname_3.23%2bnmu1_amd64.deb`); the Packages index does not,
            // and other clients may not: the key is the name unescaped.
            resolved.key_path = with_query(&percent_encoding::percent_decode_str(&rel).decode_utf8_lossy(), path.query);
            resolved.class = PathClass::Immutable;
            resolved.learned_digest = true;
            resolved.digest_required = false;
        } else if let (Some(suite), Some((dir, name))) = (suite_dir(&rel), rel.rsplit_once('/')) {
            if is_index(name) && path.query.is_none() {
                resolved.pointer = Some(Pointer {
                    source: PointerSource::Document(format!("{suite}/InRelease")),
                    target: format!("{dir}/by-hash/SHA256/{{hex}}"),
                    missing: None,
                });
            }
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

    /// InRelease is clearsigned, Release.gpg a detached signature, Release a paragraph of
    /// fields; indexes by name are compressed or paragraphs too.
    fn check_document(&self, resolved: &Resolved, content_type: Option<&str>, head: Option<&[u8]>) -> Result<(), String> {
        let path = resolved.key_path.split('?').next().unwrap_or("");
        match path.rsplit('/').next() {
            Some("InRelease") => super::document_like(content_type, head, "clearsigned InRelease", &["-----BEGIN PGP SIGNED MESSAGE-----"]),
            Some("Release.gpg") => super::document_like(content_type, head, "Release signature", &["-----BEGIN PGP SIGNATURE-----"]),
            Some(name) if path.starts_with("dists/") || name == "Release" || is_index(name) => super::document_like(content_type, head, "Release file or index", &[]),
            _ => Ok(()),
        }
    }

    fn digests_in(&self, document_path: &str, body: &[u8]) -> Result<Vec<(String, Digest)>, FormatError> {
        if is_release(document_path) {
            return Ok(release_digests(document_path, &String::from_utf8_lossy(body)));
        }
        Ok(package_digests(&String::from_utf8_lossy(&unpack(body)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(path: &str) -> Resolved {
        Apt.resolve(&RequestPath { relative: path, query: None }, &HeaderMap::new()).unwrap()
    }

    const SHA: &str = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    #[test]
    fn classes_and_digests_follow_the_archive_layout() {
        let release = resolve("dists/bookworm/InRelease");
        assert_eq!((release.class, release.lists_digests), (PathClass::Metadata, true));
        let by_name = resolve("dists/bookworm/main/binary-amd64/Packages.xz");
        assert_eq!(by_name.class, PathClass::Metadata);
        let pointer = by_name.pointer.unwrap();
        assert_eq!(pointer.source, PointerSource::Document("dists/bookworm/InRelease".into()));
        assert_eq!(pointer.target_for(&Digest::sha256_hex(SHA).unwrap()), format!("dists/bookworm/main/binary-amd64/by-hash/SHA256/{SHA}"));
        let h = resolve(&format!("dists/bookworm/main/binary-amd64/by-hash/SHA256/{SHA}"));
        assert_eq!((h.class, h.digest, h.lists_digests), (PathClass::Immutable, Digest::sha256_hex(SHA), true));
        assert!(!resolve(&format!("dists/bookworm/main/i18n/by-hash/SHA256/{SHA}")).lists_digests);
        let pool = resolve("pool/main/h/hostname/hostname_3.23%2bnmu1_amd64.deb");
        assert_eq!((pool.class, pool.learned_digest, pool.digest_required), (PathClass::Immutable, true, false));
        assert_eq!((pool.key_path.as_str(), pool.upstream_path.as_str()), ("pool/main/h/hostname/hostname_3.23+nmu1_amd64.deb", "pool/main/h/hostname/hostname_3.23%2bnmu1_amd64.deb"));
        assert!(Apt.expiry_in_body("dists/bookworm-security/InRelease") && !Apt.expiry_in_body("dists/x/Release.gpg"));
    }

    #[test]
    fn valid_until_is_read_from_the_release_paragraph() {
        let head = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nDate: Sat, 21 Nov 2026 00:53:02 UTC\nValid-Until: Sat, 28 Nov 2026 00:53:02 UTC\nAcquire-By-Hash: yes\n";
        assert_eq!(Apt.expiry(head), httpdate::parse_http_date("Sat, 28 Nov 2026 00:53:02 GMT").ok());
        assert_eq!(Apt.expiry(b"Origin: Debian\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n"), None);
    }

    #[test]
    fn release_and_packages_listings_give_digests() {
        let release = format!("Origin: Debian\nAcquire-By-Hash: yes\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\nSHA256:\n {SHA} 1234 main/binary-amd64/Packages.xz\n {SHA} 99 main/i18n/Translation-en\n-----BEGIN PGP SIGNATURE-----\n");
        let found = Apt.digests_in("dists/bookworm/InRelease", release.as_bytes()).unwrap();
        assert_eq!(found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["dists/bookworm/main/binary-amd64/Packages.xz", "dists/bookworm/main/i18n/Translation-en"]);
        assert!(Apt.digests_in("dists/bookworm/InRelease", release.replace("Acquire-By-Hash: yes\n", "").as_bytes()).unwrap().is_empty());

        let packages = format!("Package: a\nFilename: pool/main/a/a_1_all.deb\nSHA256: {SHA}\n\nPackage: b\nFilename: ../etc/passwd\nSHA256: {SHA}\n\nPackage: c\nFilename: ../c.deb\nSHA256: {SHA}\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(packages.as_bytes()).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut packages.as_bytes(), &mut xz).unwrap();
        for body in [packages.as_bytes().to_vec(), gz.finish().unwrap(), xz] {
            let found = Apt.digests_in(&format!("dists/bookworm/main/binary-amd64/by-hash/SHA256/{SHA}"), &body).unwrap();
            assert_eq!(found, vec![("pool/main/a/a_1_all.deb".to_string(), Digest::sha256_hex(SHA).unwrap())]);
        }
        assert!(Apt.digests_in("dists/x/main/binary-amd64/Packages.xz", &[0xFD, b'7', b'z', b'X', b'Z', 0, 1, 2]).is_err());
        // A flat repository: `Packages` beside `Release`, files listed with `./`.
        let flat = format!("Package: probe\nFilename: all/./probe_1.0_all.deb\nSHA256: {SHA}\n");
        assert_eq!(Apt.digests_in("Packages", flat.as_bytes()).unwrap(), vec![("all/probe_1.0_all.deb".to_string(), Digest::sha256_hex(SHA).unwrap())]);
        assert!(resolve("Packages.gz").lists_digests && resolve("all/probe_1.0_all.deb").learned_digest);
    }
}
