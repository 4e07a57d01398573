//! `npm`: an npm registry's packuments and tarballs.
//!
//! - Packuments (`<name>`, `@scope%2fname`, `@scope/name`) are metadata, stored per
//!   representation: abbreviated (`application/vnd.npm.install-v1+json`) or full. Each
//!   `dist.tarball` that points at the upstream registry is rewritten, byte for byte in place,
//!   to the same path under the proxy's prefix: pnpm and yarn download that URL verbatim, and
//!   npm only sends credentials to URLs under its registry. Nothing else in the document is
//!   touched (`time` in particular, which pnpm's minimum-release-age reads).
//! - Tarballs (`<name>/-/<file>.tgz`) are immutable and verified against the packument's
//!   `dist.integrity` (or `shasum` for old packages) before they are cached.
//! - `npm audit` (`POST -/npm/v1/security/...`) and other `-/` endpoints go upstream uncached.

use bytes::Bytes;
use percent_encoding::percent_decode_str;
use http::HeaderMap;
use serde::Deserialize;

use hangar_core::{Digest, PathClass, PathError, RequestPath};
use super::{accepts, with_query, Format, FormatError, FormatKind, Representation, Resolved, RewriteEnv, Rewritten, UpstreamChoice, Upstreams};

const ABBREVIATED: Representation = Representation {
    name: "abbreviated",
    accept: "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
    content_type: None,
};
const FULL: Representation = Representation {
    name: "full",
    accept: "application/json",
    content_type: None,
};

pub struct Npm {
    /// The registry's base URL as documents spell it (`https://registry.example/`).
    registry: String,
}

impl Npm {
    pub fn new(up: &Upstreams) -> Self {
        Npm { registry: up.primary.to_string() }
    }
}

/// A package name, checked: `name` or `@scope/name`.
struct PackageName {
    /// `@scope/name`, as it appears in tarball paths and cache keys.
    canonical: String,
    /// `@scope%2fname`, as registries expect it in packument URLs.
    encoded: String,
}

fn package_name(scope: Option<&str>, name: &str) -> Result<PackageName, FormatError> {
    let check = |part: &str| -> Result<String, FormatError> {
        let decoded = percent_decode_str(part).decode_utf8().map_err(|_| PathError::BadEncoding)?;
        // npm names are URL-safe by rule; anything else (a `%` left after decoding, non-ASCII)
        // would reach the upstream as something other than the name that was checked.
        let ok = !decoded.is_empty()
            && decoded != "."
            && decoded != ".."
            && decoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!*'()".contains(&b));
        if ok {
            Ok(decoded.into_owned())
        } else {
            Err(FormatError::NotFound("not a valid package name"))
        }
    };
    let name = check(name)?;
    Ok(match scope {
        Some(scope) => {
            let scope = check(scope)?;
            PackageName {
                canonical: format!("@{scope}/{name}"),
                encoded: format!("@{scope}%2f{name}"),
            }
        }
        None => PackageName {
            canonical: name.clone(),
            encoded: name,
        },
    })
}

/// Split `rel` into a package name and what follows it (`""`, `<version>`, `-/<file>`).
fn split_package(rel: &str) -> Result<(PackageName, Vec<&str>), FormatError> {
    let mut segments = rel.split('/');
    let first = segments.next().unwrap_or("");
    let (pkg, rest): (PackageName, Vec<&str>) = match first.strip_prefix('@').or_else(|| first.strip_prefix("%40")) {
        Some(scoped) => {
            // `@scope%2fname` in one segment, or `@scope/name` in two.
            let lower = scoped.to_ascii_lowercase();
            if let Some(i) = lower.find("%2f") {
                (package_name(Some(&scoped[..i]), &scoped[i + 3..])?, segments.collect())
            } else {
                let name = segments.next().ok_or(FormatError::NotFound("scoped name without a package"))?;
                (package_name(Some(scoped), name)?, segments.collect())
            }
        }
        None => (package_name(None, first)?, segments.collect()),
    };
    Ok((pkg, rest))
}

/// Offsets of each `"tarball"` string value in a JSON document: (start, end) of the value
/// between its quotes.
fn tarball_values(doc: &[u8]) -> Vec<(usize, usize)> {
    const KEY: &[u8] = b"\"tarball\"";
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&doc[i..], KEY) {
        let mut j = i + at + KEY.len();
        i = j;
        while doc.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if doc.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while doc.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if doc.get(j) != Some(&b'"') {
            continue;
        }
        let start = j + 1;
        let mut end = start;
        while end < doc.len() && doc[end] != b'"' {
            end += if doc[end] == b'\\' { 2 } else { 1 };
        }
        if end >= doc.len() {
            break;
        }
        found.push((start, end));
        i = end + 1;
    }
    found
}

/// The segment below `<package>/-/` that marks a tarball link in another layout than the
/// registry's usual `<package>/-/<file>.tgz`: `<package>/-/~/<token>`.
const LINK_MARK: &str = "~";

/// How the proxy serves a `dist.tarball` of `pkg` that points at `rest` below the registry
/// (`@acme/widget/-/widget-1.0.0.tgz`, or a GitHub-Packages style
/// `download/@acme/widget/1.0.0/<sha1>`): the same path when it is the usual layout, else
/// `<package>/-/~/<token>`, the token being `rest` in unpadded base64url. The token names a
/// path on the configured registry only, never a host, and what it fetches is verified
/// against the packument's `dist.integrity` like any tarball.
fn served_path(pkg: &PackageName, rest: &str) -> String {
    if let Ok((p, segments)) = split_package(rest) {
        if let (true, ["-", file]) = (p.canonical == pkg.canonical, segments.as_slice()) {
            if !file.is_empty() && *file != LINK_MARK && !file.contains(['?', '#']) {
                return format!("{}/-/{file}", pkg.canonical);
            }
        }
    }
    use base64::Engine;
    format!("{}/-/{LINK_MARK}/{}", pkg.canonical, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest))
}

/// The registry path a `<package>/-/~/<token>` link stands for, checked like any request path.
fn linked_path(token: &str) -> Result<String, FormatError> {
    use base64::Engine;
    let bad = || FormatError::NotFound("not a tarball link this proxy wrote");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let path = String::from_utf8(raw).map_err(|_| bad())?;
    let (rel, query) = match path.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (path.as_str(), None),
    };
    if query.is_some_and(|q| q.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#')) {
        return Err(bad());
    }
    let rel = RequestPath { relative: rel, query }.checked_relative(false)?;
    if rel.starts_with('/') || rel.contains("//") {
        return Err(bad());
    }
    Ok(with_query(&rel, query))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Deserialize)]
struct Packument {
    #[serde(default)]
    versions: std::collections::HashMap<String, VersionDoc>,
}

#[derive(Deserialize)]
struct VersionDoc {
    dist: Option<Dist>,
}

#[derive(Deserialize)]
struct Dist {
    tarball: Option<String>,
    integrity: Option<String>,
    shasum: Option<String>,
}

impl Format for Npm {
    fn kind(&self) -> FormatKind {
        FormatKind::Npm
    }

    fn package(&self, path: &str) -> Option<String> {
        if path.starts_with("-/") {
            return None;
        }
        let path = path.replace("%2f", "/").replace("%2F", "/");
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let first = parts.next()?;
        Some(match first.starts_with('@') {
            true => format!("{first}/{}", parts.next()?),
            false => first.to_string(),
        })
    }

    fn allows(&self, method: &http::Method, path: &str) -> bool {
        method == http::Method::GET
            || method == http::Method::HEAD
            || (method == http::Method::POST && path.starts_with("-/npm/v1/security/"))
    }

    /// The advisory queries (`npm audit`) are POSTs that only ask.
    fn reads(&self, method: &http::Method, path: &str) -> bool {
        self.allows(method, path)
    }

    fn resolve(&self, path: &RequestPath<'_>, headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.relative;
        if let Some(api) = rel.strip_prefix("-/") {
            let checked = RequestPath { relative: api, query: path.query }.checked_relative(false)?;
            return Ok(Resolved::passthrough(with_query(&format!("-/{checked}"), path.query), PathClass::Http));
        }
        let (pkg, rest) = split_package(rel)?;
        match rest.as_slice() {
            [] | [""] => Ok(Resolved {
                representation: Some(if accepts(headers, "application/vnd.npm.install-v1+json") { ABBREVIATED } else { FULL }),
                rewrite: true,
                ..Resolved::new(UpstreamChoice::Primary, with_query(&pkg.encoded, path.query), with_query(&pkg.canonical, path.query), PathClass::Metadata)
            }),
            ["-", mark, token] if *mark == LINK_MARK => Ok(Resolved {
                digest_from: Some(pkg.encoded.clone()),
                ..Resolved::new(UpstreamChoice::Primary, linked_path(token)?, format!("{}/-/{LINK_MARK}/{token}", pkg.canonical), PathClass::Immutable)
            }),
            ["-", file] if !file.is_empty() => {
                let file = RequestPath { relative: file, query: None }.checked_relative(false)?;
                let key = format!("{}/-/{file}", pkg.canonical);
                Ok(Resolved {
                    digest_from: Some(pkg.encoded),
                    ..Resolved::passthrough(key, PathClass::Immutable)
                })
            }
            [version] => {
                let version = RequestPath { relative: version, query: None }.checked_relative(false)?;
                Ok(Resolved {
                    rewrite: true,
                    ..Resolved::passthrough(with_query(&format!("{}/{version}", pkg.encoded), path.query), PathClass::Metadata)
                })
            }
            _ => Err(FormatError::NotFound("not an npm registry path")),
        }
    }

    /// Every `dist.tarball` on the registry leads through the proxy (see [`served_path`]);
    /// one on another host is left as it is and reported as bypassing the cache.
    fn rewrite(&self, resolved: &Resolved, body: Bytes, env: &RewriteEnv<'_>) -> Result<Rewritten, FormatError> {
        // A document that is not JSON is not a packument, whatever its status said.
        let digests = self.digests_in(&resolved.key_path, &body)?;
        let (pkg, _) = split_package(resolved.key_path.split('?').next().unwrap_or(""))?;
        let values = tarball_values(&body);
        let mut out = Vec::with_capacity(body.len() + values.len() * env.proxy_base.len());
        let mut bypassing = Vec::new();
        let mut last = 0;
        for (start, end) in values {
            // The string as JSON reads it (`https:\/\/...` is legal), written back the same way.
            let Ok(value) = serde_json::from_slice::<String>(&body[start - 1..end + 1]) else { continue };
            match value.strip_prefix(self.registry.as_str()) {
                Some(rest) => {
                    let link = serde_json::to_string(&format!("{}{}", env.proxy_base, served_path(&pkg, rest))).expect("a string serializes");
                    out.extend_from_slice(&body[last..start]);
                    out.extend_from_slice(&link.as_bytes()[1..link.len() - 1]);
                    last = end;
                }
                None if value.starts_with("http://") || value.starts_with("https://") || value.starts_with("//") => bypassing.push(value),
                None => {}
            }
        }
        out.extend_from_slice(&body[last..]);
        Ok(Rewritten { body: Bytes::from(out), digests, bypassing, published: Vec::new() })
    }

    fn check_document(&self, resolved: &Resolved, content_type: Option<&str>, head: Option<&[u8]>) -> Result<(), String> {
        if resolved.rewrite {
            super::document_like(content_type, head, "packument (JSON)", &["{"])?;
        }
        Ok(())
    }

    fn document_accept(&self) -> &'static str {
        ABBREVIATED.accept
    }

    /// Keyed as the proxy serves the tarballs: `<package>/-/<file name of dist.tarball>`.
    fn digests_in(&self, document_path: &str, body: &[u8]) -> Result<Vec<(String, Digest)>, FormatError> {
        let (pkg, _) = split_package(document_path.split('?').next().unwrap_or(document_path))?;
        let doc: Packument = serde_json::from_slice(body).map_err(|e| FormatError::BadDocument { what: "packument", reason: e.to_string() })?;
        Ok(doc
            .versions
            .into_values()
            .filter_map(|v| {
                let dist = v.dist?;
                let tarball = dist.tarball.as_deref()?;
                let key = match tarball.strip_prefix(self.registry.as_str()) {
                    Some(rest) => served_path(&pkg, rest),
                    None => format!("{}/-/{}", pkg.canonical, tarball.rsplit('/').next()?.split(['?', '#']).next()?),
                };
                let digest = dist
                    .integrity
                    .as_deref()
                    .and_then(Digest::from_sri)
                    .or_else(|| dist.shasum.as_deref().and_then(Digest::sha1_hex))?;
                Some((key, digest))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::UpstreamUrl;

    fn npm() -> Npm {
        Npm::new(&Upstreams {
            primary: UpstreamUrl::parse("https://registry.test/").unwrap(),
            files: None,
            ..Default::default()
        })
    }

    fn resolve(n: &Npm, path: &str, accept: &str) -> Result<Resolved, FormatError> {
        let mut req = HeaderMap::new();
        if !accept.is_empty() {
            req.insert(http::header::ACCEPT, accept.parse().unwrap());
        }
        n.resolve(&RequestPath { relative: path, query: None }, &req)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../tests/fixtures/npm/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn scoped_names_in_every_spelling_are_one_package() {
        let n = npm();
        for spelling in ["@types%2fnode", "@types%2Fnode", "%40types%2fnode", "@types/node"] {
            let r = resolve(&n, spelling, "").unwrap();
            assert_eq!((r.key_path.as_str(), r.upstream_path.as_str(), r.class), ("@types/node", "@types%2fnode", PathClass::Metadata), "{spelling}");
        }
        let t = resolve(&n, "@types/node/-/node-1.0.0.tgz", "").unwrap();
        assert_eq!((t.key_path.as_str(), t.class, t.digest_from.as_deref()), ("@types/node/-/node-1.0.0.tgz", PathClass::Immutable, Some("@types%2fnode")));
        assert!(resolve(&n, "..", "").is_err());
        assert!(resolve(&n, "@x%2f..", "").is_err());
        assert!(resolve(&n, "a/b/c/d", "").is_err());
        assert!(resolve(&n, "%252e%252e%252fprivate", "").is_err(), "double encoding stays out");
        assert!(resolve(&n, "caf%C3%A9", "").is_err());
    }

    #[test]
    fn abbreviated_and_full_are_separate_representations() {
        let n = npm();
        assert_eq!(resolve(&n, "is-number", "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*").unwrap().representation.unwrap().name, "abbreviated");
        assert_eq!(resolve(&n, "is-number", "application/json").unwrap().representation.unwrap().name, "full");
        assert_eq!(resolve(&n, "is-number", "").unwrap().representation.unwrap().name, "full");
    }

    #[test]
    fn tarballs_are_rewritten_in_place_and_nothing_else_changes() {
        let n = npm();
        let body = fixture("is-number.json");
        let r = resolve(&n, "is-number", "").unwrap();
        let out = n.rewrite(&r, Bytes::from(body.clone()), &RewriteEnv::new("http://hangar.test/npm/")).unwrap();
        let before: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(after["versions"]["7.0.0"]["dist"]["tarball"], "http://hangar.test/npm/is-number/-/is-number-7.0.0.tgz");
        assert_eq!(before["time"], after["time"], "time is intact");
        let strip = |mut v: serde_json::Value| {
            for ver in v["versions"].as_object_mut().unwrap().values_mut() {
                ver["dist"]["tarball"] = serde_json::Value::Null;
            }
            v
        };
        assert_eq!(strip(before), strip(after), "only tarball URLs differ");
        let d = out.digests.iter().find(|(k, _)| k == "is-number/-/is-number-7.0.0.tgz").expect("digest learned");
        assert!(matches!(d.1, Digest::Sha512(_)));
    }

    #[test]
    fn tarballs_in_other_layouts_lead_through_the_proxy_to_where_they_came_from() {
        let n = npm();
        let doc = r#"{"name":"@acme/widget","versions":{"1.0.0":{"dist":{"tarball":"https://registry.test/download/@acme/widget/1.0.0/0123abcd","integrity":"sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA="}},"2.0.0":{"dist":{"tarball":"https://cdn.other.test/widget-2.0.0.tgz","shasum":"a9993e364706816aba3e25717850c26c9cd0d89d"}}}}"#;
        let r = resolve(&n, "@acme/widget", "").unwrap();
        let out = n.rewrite(&r, Bytes::from(doc), &RewriteEnv::new("http://hangar.test/npm/")).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        let link = after["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_string();
        let path = link.strip_prefix("http://hangar.test/npm/").expect("through the proxy");
        // The link is one the proxy serves: to the upstream path it came from, verified
        // against the integrity the packument lists under the same key.
        let t = resolve(&n, path, "").unwrap();
        assert_eq!((t.upstream_path.as_str(), t.class, t.digest_from.as_deref()), ("download/@acme/widget/1.0.0/0123abcd", PathClass::Immutable, Some("@acme%2fwidget")));
        assert!(out.digests.iter().any(|(k, _)| *k == t.key_path), "{:?} lists {}", out.digests, t.key_path);
        assert_eq!(after["versions"]["2.0.0"]["dist"]["tarball"], "https://cdn.other.test/widget-2.0.0.tgz");
        assert_eq!(out.bypassing, ["https://cdn.other.test/widget-2.0.0.tgz"]);
        // Tokens name paths on the registry, checked as any request path is.
        use base64::Engine;
        let token = |p: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p);
        for evil in ["../../etc/passwd", "//evil.test/x", "a/%2e%2e/b"] {
            assert!(resolve(&n, &format!("x/-/~/{}", token(evil)), "").is_err(), "{evil}");
        }
        // JSON may escape a URL's slashes; it is the same URL.
        let escaped = r#"{"name":"@acme/widget","versions":{"1.0.0":{"dist":{"tarball":"https:\/\/registry.test\/@acme\/widget\/-\/widget-1.0.0.tgz"}}}}"#;
        let out = n.rewrite(&r, Bytes::from(escaped), &RewriteEnv::new("http://hangar.test/npm/")).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(after["versions"]["1.0.0"]["dist"]["tarball"], "http://hangar.test/npm/@acme/widget/-/widget-1.0.0.tgz");
        assert!(n.rewrite(&r, Bytes::from_static(b"<html>502</html>"), &RewriteEnv::new("http://hangar.test/npm/")).is_err(), "not JSON, not a packument");
    }

    #[test]
    fn audit_is_the_only_write() {
        let n = npm();
        assert!(n.allows(&http::Method::POST, "-/npm/v1/security/advisories/bulk"));
        assert!(!n.allows(&http::Method::POST, "is-number"));
        assert!(!n.allows(&http::Method::PUT, "is-number"));
    }
}
