//! `maven`: a Maven 2 repository layout (`group/artifact/version/file`).
//!
//! - Release artefacts and their checksum files are immutable. An artefact is verified against
//!   the upstream's `.sha1` when it has one (read through the proxy's own cache, where the
//!   client will look for it next anyway); an upstream without checksums still gets its
//!   artefacts cached.
//! - `maven-metadata.xml` (with its checksums) and everything under a `-SNAPSHOT` version are
//!   metadata. When the metadata is fetched again its cached checksum files are dropped, so
//!   the pair is always refreshed together and a client never sees a new file with an old
//!   checksum.

use http::HeaderMap;

use hangar_core::{Digest, PathClass, RequestPath};
use super::{with_query, Format, FormatError, FormatKind, Resolved};

const CHECKSUMS: [&str; 4] = [".sha1", ".md5", ".sha256", ".sha512"];

pub struct Maven;

fn is_checksum(path: &str) -> bool {
    CHECKSUMS.iter().any(|c| path.ends_with(c)) || path.ends_with(".asc")
}

fn is_metadata(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.starts_with("maven-metadata") || path.contains("-SNAPSHOT/")
}

impl Format for Maven {
    fn kind(&self) -> FormatKind {
        FormatKind::Maven
    }

    /// `groupId:artifactId` (Maven's own coordinates, so `com/acme.evil/...` is `com:acme.evil`
    /// and no grant on `com.acme.*:*` covers it): the directories, less the version's when the
    /// file is one of its (`lib-1.0.jar` below `lib/1.0/`, anything below a directory that
    /// starts with a digit), the last being the artifact.
    fn package(&self, path: &str) -> Option<String> {
        let (dirs, file) = path.rsplit_once('/')?;
        let mut dirs: Vec<&str> = dirs.split('/').filter(|d| !d.is_empty()).collect();
        if dirs.len() >= 3 {
            let artifact = dirs[dirs.len() - 2];
            let version = dirs[dirs.len() - 1];
            if file.starts_with(&format!("{artifact}-")) || version.starts_with(|c: char| c.is_ascii_digit()) {
                dirs.pop();
            }
        }
        let (artifact, group) = dirs.split_last()?;
        (!group.is_empty()).then(|| format!("{}:{artifact}", group.join(".")))
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if rel.is_empty() || rel.ends_with('/') {
            return Ok(Resolved::passthrough(with_query(&rel, path.query), PathClass::Metadata));
        }
        if is_metadata(&rel) {
            return Ok(Resolved::passthrough(with_query(&rel, path.query), PathClass::Metadata));
        }
        let mut resolved = Resolved::passthrough(with_query(&rel, path.query), PathClass::Immutable);
        if !is_checksum(&rel) {
            resolved.digest_from = Some(format!("{rel}.sha1"));
            resolved.digest_required = false;
        }
        Ok(resolved)
    }

    /// `maven-metadata.xml` is XML; checksum files (of artefacts too: an error page stored
    /// as a `.sha1` would stand for good) are hex.
    fn check_document(&self, resolved: &Resolved, content_type: Option<&str>, head: Option<&[u8]>) -> Result<(), String> {
        let path = resolved.key_path.split('?').next().unwrap_or("");
        if path.ends_with("maven-metadata.xml") {
            return super::document_like(content_type, head, "maven-metadata.xml", &["<"]);
        }
        if CHECKSUMS.iter().any(|c| path.ends_with(c)) {
            const HEX: [&str; 16] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"];
            return super::document_like(content_type, head, "checksum file (hex)", &HEX);
        }
        Ok(())
    }

    /// `<artefact>.sha1` holds the artefact's SHA-1 as its first word (some tools add the
    /// file name after it).
    fn digests_in(&self, document_path: &str, body: &[u8]) -> Result<Vec<(String, Digest)>, FormatError> {
        let artefact = document_path.strip_suffix(".sha1").ok_or(FormatError::NotFound("not a .sha1 file"))?;
        let text = std::str::from_utf8(body).map_err(|_| FormatError::BadDocument { what: ".sha1 file", reason: "not UTF-8".into() })?;
        let word = text.split_whitespace().next().unwrap_or("");
        let digest = Digest::sha1_hex(word).ok_or_else(|| FormatError::BadDocument { what: ".sha1 file", reason: format!("'{word}' is not a SHA-1") })?;
        Ok(vec![(artefact.to_string(), digest)])
    }

    fn companions(&self, key_path: &str) -> Vec<String> {
        if key_path.ends_with("maven-metadata.xml") {
            CHECKSUMS.iter().map(|c| format!("{key_path}{c}")).collect()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(path: &str) -> Resolved {
        Maven.resolve(&RequestPath { relative: path, query: None }, &HeaderMap::new()).unwrap()
    }

    #[test]
    fn releases_are_immutable_and_metadata_and_snapshots_are_not() {
        let jar = resolve("commons-io/commons-io/2.11.0/commons-io-2.11.0.jar");
        assert_eq!((jar.class, jar.digest_from.as_deref(), jar.digest_required), (PathClass::Immutable, Some("commons-io/commons-io/2.11.0/commons-io-2.11.0.jar.sha1"), false));
        let sha = resolve("commons-io/commons-io/2.11.0/commons-io-2.11.0.jar.sha1");
        assert_eq!((sha.class, sha.digest_from), (PathClass::Immutable, None));
        for p in ["commons-io/commons-io/maven-metadata.xml", "commons-io/commons-io/maven-metadata.xml.sha1", "g/a/1.0-SNAPSHOT/a-1.0-20260101.120000-1.jar"] {
            assert_eq!(resolve(p).class, PathClass::Metadata, "{p}");
        }
        assert_eq!(Maven.companions("g/a/maven-metadata.xml").len(), 4);
        assert!(Maven.companions("g/a/1.0/a-1.0.jar").is_empty());
    }

    #[test]
    fn sha1_files_name_the_artefact_digest() {
        let d = Maven.digests_in("g/a/1.0/a-1.0.jar.sha1", b"a9993e364706816aba3e25717850c26c9cd0d89d  a-1.0.jar\n").unwrap();
        assert_eq!(d, vec![("g/a/1.0/a-1.0.jar".to_string(), Digest::sha1_hex("a9993e364706816aba3e25717850c26c9cd0d89d").unwrap())]);
        assert!(Maven.digests_in("g/a/1.0/a-1.0.jar.sha1", b"<html>not found</html>").is_err());
    }
}
