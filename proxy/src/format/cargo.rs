//! `cargo`: a sparse registry index (RFC 2789) and its download host.
//!
//! - `config.json` is served with `dl` pointing at the proxy, as
//!   `<proxy>/dl/{crate}/{version}/{sha256-checksum}`: cargo fills in the checksum from the
//!   index, so every download names the digest it must have and the proxy verifies the
//!   `.crate` before caching it, without keeping any state. `api` (publishing, search) is left
//!   pointing at the upstream: a mirror does not take uploads.
//! - Index files (`1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd`) are metadata, revalidated with the
//!   upstream's ETag / Last-Modified when it sends them; cargo's own conditional requests are
//!   answered with 304 from cache.
//! - `dl/<crate>/<version>/<sha256>` maps onto the upstream's `dl` template (`files_upstream`),
//!   with cargo's markers, or `/{crate}/{version}/download` appended when it has none.

use bytes::Bytes;
use http::HeaderMap;

use hangar_core::{Digest, PathClass, RequestPath, UpstreamUrl};
use super::{with_query, Format, FormatError, FormatKind, Resolved, RewriteEnv, Rewritten, UpstreamChoice, Upstreams};
use hangar_core::url::split_origin;

const MARKERS: [&str; 5] = ["{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}"];

pub struct Cargo {
    /// The path part of the upstream `dl` template (after its origin), without a leading `/`.
    dl_path: String,
    /// The `dl` template's origin (`https://static.example/`): where downloads go.
    dl_origin: UpstreamUrl,
}

impl Cargo {
    pub fn new(up: &Upstreams) -> Result<Self, FormatError> {
        let dl = up.files.as_deref().ok_or(FormatError::MissingFilesUpstream)?;
        let (origin, path) = split_origin(dl).ok_or_else(|| FormatError::BadFilesUpstream(dl.to_string()))?;
        let dl_origin = UpstreamUrl::parse(&origin).map_err(|_| FormatError::BadFilesUpstream(dl.to_string()))?;
        let mut dl_path = path.trim_start_matches('/').to_string();
        if !MARKERS.iter().any(|m| dl_path.contains(m)) {
            if !dl_path.is_empty() && !dl_path.ends_with('/') {
                dl_path.push('/');
            }
            dl_path.push_str("{crate}/{version}/download");
        }
        Ok(Cargo { dl_path, dl_origin })
    }

    fn download_path(&self, krate: &str, version: &str, sha256: &str) -> String {
        let prefix = match krate.len() {
            1 => "1".to_string(),
            2 => "2".to_string(),
            3 => format!("3/{}", &krate[..1]),
            _ => format!("{}/{}", &krate[..2], &krate[2..4]),
        };
        self.dl_path
            .replace("{crate}", krate)
            .replace("{version}", version)
            .replace("{lowerprefix}", &prefix.to_ascii_lowercase())
            .replace("{prefix}", &prefix)
            .replace("{sha256-checksum}", sha256)
    }
}

fn valid_crate_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_version(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.+_".contains(&b))
}

impl Format for Cargo {
    fn kind(&self) -> FormatKind {
        FormatKind::Cargo
    }

    /// The crate: the last part of an index file's path, or the `dl/<crate>/...` download's.
    fn package(&self, path: &str) -> Option<String> {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["dl", name, ..] => Some(name.to_ascii_lowercase()),
            ["1" | "2", name] | ["3", _, name] => Some(name.to_ascii_lowercase()),
            [a, b, name] if a.len() == 2 && b.len() == 2 => Some(name.to_ascii_lowercase()),
            _ => None,
        }
    }

    /// The `dl` template's origin; the format fills in the whole path.
    fn files_upstream(&self) -> Option<UpstreamUrl> {
        Some(self.dl_origin.clone())
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if rel == "config.json" {
            return Ok(Resolved {
                rewrite: true,
                ..Resolved::passthrough(rel, PathClass::Metadata)
            });
        }
        if let Some(dl) = rel.strip_prefix("dl/") {
            let parts: Vec<&str> = dl.split('/').collect();
            let [krate, version, sha] = parts.as_slice() else {
                return Err(FormatError::NotFound("downloads are dl/<crate>/<version>/<sha256>"));
            };
            if !valid_crate_name(krate) || !valid_version(version) {
                return Err(FormatError::NotFound("not a crate name and version"));
            }
            let digest = Digest::sha256_hex(sha).ok_or(FormatError::NotFound("malformed sha256 in download URL"))?;
            let upstream_path = self.download_path(krate, version, &sha.to_ascii_lowercase());
            return Ok(Resolved {
                digest: Some(digest),
                ..Resolved::new(UpstreamChoice::Files, upstream_path, format!("dl/{krate}/{version}"), PathClass::Immutable)
            });
        }
        Ok(Resolved::passthrough(with_query(&rel, path.query), PathClass::Metadata))
    }

    /// `config.json` and index files (one JSON object per line) start with `{`.
    fn check_document(&self, resolved: &Resolved, content_type: Option<&str>, head: Option<&[u8]>) -> Result<(), String> {
        if resolved.class != PathClass::Metadata {
            return Ok(());
        }
        super::document_like(content_type, head, "sparse index file (JSON lines)", &["{"])
    }

    fn rewrite(&self, _resolved: &Resolved, body: Bytes, env: &RewriteEnv<'_>) -> Result<Rewritten, FormatError> {
        let bad = |e: serde_json::Error| FormatError::BadDocument { what: "config.json", reason: e.to_string() };
        let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).map_err(bad)?;
        doc.insert("dl".into(), format!("{}dl/{{crate}}/{{version}}/{{sha256-checksum}}", env.proxy_base).into());
        Ok(Rewritten { body: Bytes::from(serde_json::to_vec(&doc).map_err(bad)?), digests: Vec::new(), bypassing: Vec::new(), published: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::UpstreamUrl;

    fn cargo(dl: &str) -> Cargo {
        Cargo::new(&Upstreams {
            primary: UpstreamUrl::parse("https://index.test/").unwrap(),
            files: Some(dl.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn resolve(c: &Cargo, path: &str) -> Result<Resolved, FormatError> {
        c.resolve(&RequestPath { relative: path, query: None }, &HeaderMap::new())
    }

    const SHA: &str = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    #[test]
    fn config_json_points_downloads_at_the_proxy_with_their_checksum() {
        let c = cargo("https://files.test/api/v1/crates");
        let body = std::fs::read(format!("{}/../tests/fixtures/cargo/config.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let r = resolve(&c, "config.json").unwrap();
        let out = c.rewrite(&r, Bytes::from(body), &RewriteEnv::new("http://hangar.test/cargo/")).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(doc["dl"], "http://hangar.test/cargo/dl/{crate}/{version}/{sha256-checksum}");
        assert_eq!(doc["api"], "https://files.test/api", "api stays with the upstream");
    }

    #[test]
    fn downloads_map_onto_the_upstream_template() {
        let plain = cargo("https://files.test/api/v1/crates");
        let r = resolve(&plain, &format!("dl/serde/1.0.0/{SHA}")).unwrap();
        assert_eq!((r.upstream, r.class, r.key_path.as_str()), (UpstreamChoice::Files, PathClass::Immutable, "dl/serde/1.0.0"));
        assert_eq!(r.upstream_path, "api/v1/crates/serde/1.0.0/download");
        assert_eq!(r.digest, Digest::sha256_hex(SHA));
        let marked = cargo("https://files.test/crates/{prefix}/{crate}/{crate}-{version}.crate");
        assert_eq!(resolve(&marked, &format!("dl/serde/1.0.0/{SHA}")).unwrap().upstream_path, "crates/se/rd/serde/serde-1.0.0.crate");
        assert_eq!(resolve(&marked, &format!("dl/syn/2.0.0/{SHA}")).unwrap().upstream_path, "crates/3/s/syn/syn-2.0.0.crate");
        assert!(resolve(&plain, "dl/serde/1.0.0/nothex").is_err());
        assert!(resolve(&plain, &format!("dl/../1.0.0/{SHA}")).is_err());
    }

    #[test]
    fn index_files_are_metadata() {
        let c = cargo("https://files.test/");
        for p in ["3/s/syn", "se/rd/serde", "1/a"] {
            let r = resolve(&c, p).unwrap();
            assert_eq!((r.class, r.upstream_path.as_str(), r.rewrite), (PathClass::Metadata, p, false));
        }
    }
}
