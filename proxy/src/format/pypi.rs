//! `pypi`: a PEP 503 / PEP 691 simple index, and the host its files are downloaded from.
//!
//! Routes below the repository prefix:
//! - `simple/` and `simple/<project>/`: index pages (metadata), HTML or JSON by `Accept`,
//!   each stored as its own representation. Links to files are rewritten to
//!   `files/sha256/<hex>/<path>` on the proxy, so the digest travels with the URL and the proxy
//!   can verify a file before caching it whichever index page the client read it from. Every
//!   other attribute (`data-requires-python`, `data-yanked`, PEP 658/714 metadata) is kept.
//! - `files/[sha256/<hex>/]<path>`: the file host (immutable). `<file>.metadata` (PEP 658)
//!   is on the file host too; it is checked by the client against the index's metadata hash.
//!
//! Going beyond the upstream: an index without PEP 658 metadata (a static mirror, an older
//! repository manager, or the PyPI index reached here) makes pip and uv download or range-read
//! every candidate wheel to resolve. Once a wheel is stored, its `.dist-info/METADATA` is
//! derived from it ([`Format::derive`]); `<wheel>.metadata` is served from that, and the index
//! pages the proxy serves announce it (`data-core-metadata`/`data-dist-info-metadata` in HTML,
//! `core-metadata`/`dist-info-metadata` in JSON, PEP 658/714) with its sha256 for each wheel it
//! holds. An upstream's own announcement is kept as it is: PEP 658 makes its file identical to
//! the wheel's `METADATA`.

use std::io::Read;

use bytes::Bytes;
use http::HeaderMap;
use url::Url;

use hangar_core::{Digest, PathClass, RequestPath, UpstreamUrl};
use super::{accepts, with_query, DerivedLookup, DerivedOf, Format, FormatError, FormatKind, ReadSeek, Representation, Resolved, RewriteEnv, Rewritten, UpstreamChoice, Upstreams};

/// The largest core metadata file derived from a wheel (PyPI's largest are a few hundred KiB:
/// long descriptions); a larger one is not derived.
const MAX_METADATA_BYTES: u64 = 4 << 20;

/// A project name normalised as PEP 503 says: lower case, each run of `-`, `_` and `.` one
/// `-`. `None` for a name with other characters than letters, digits and those (PEP 508's
/// names), so it can name a group of derived files safely.
fn normalize(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            '-' | '_' | '.' => {
                if !out.ends_with('-') {
                    out.push('-');
                }
            }
            _ => return None,
        }
    }
    (!out.is_empty() && !out.starts_with('-') && !out.ends_with('-')).then_some(out)
}

/// The normalised project of a wheel file (`{distribution}-{version}(-{build})?-{python}-{abi}-
/// {platform}.whl`, the binary distribution format); `None` for any other file.
fn wheel_project(path: &str) -> Option<String> {
    let stem = path.rsplit('/').next()?.strip_suffix(".whl")?;
    let fields = stem.split('-').count();
    if !(5..=6).contains(&fields) {
        return None;
    }
    normalize(stem.split('-').next()?)
}

const JSON: Representation = Representation {
    name: "json",
    accept: "application/vnd.pypi.simple.v1+json",
    content_type: Some("application/vnd.pypi.simple.v1+json"),
};
const HTML: Representation = Representation {
    name: "html",
    accept: "application/vnd.pypi.simple.v1+html, text/html;q=0.9",
    content_type: None,
};

pub struct Pypi {
    /// The index's base URL, normalised (`https://index.example/simple/`).
    index: Url,
    /// The file host's base URL, normalised.
    files: Url,
    /// The same, as the upstream file requests go to.
    files_upstream: UpstreamUrl,
}

impl Pypi {
    pub fn new(up: &Upstreams) -> Result<Self, FormatError> {
        let files = up.files.as_deref().ok_or(FormatError::MissingFilesUpstream)?;
        let mut files = Url::parse(files).map_err(|_| FormatError::BadFilesUpstream(files.to_string()))?;
        if !files.path().ends_with('/') {
            files.set_path(&format!("{}/", files.path()));
        }
        let files_upstream = UpstreamUrl::parse(files.as_str()).map_err(|_| FormatError::BadFilesUpstream(files.to_string()))?;
        let index = Url::parse(&up.primary.to_string()).map_err(|e| FormatError::BadDocument { what: "upstream URL", reason: e.to_string() })?;
        Ok(Pypi { index, files, files_upstream })
    }

    /// Where a link on an index page should point: through the proxy if it leads to the file
    /// host or the index, unchanged otherwise.
    fn map_link(&self, page: &Url, href: &str, base: &str, sha256: Option<&str>) -> Option<String> {
        let (link, fragment) = match href.split_once('#') {
            Some((l, f)) => (l, Some(f)),
            None => (href, None),
        };
        let abs = page.join(link).ok()?;
        let abs = abs.as_str();
        let mut out = if let Some(rest) = abs.strip_prefix(self.files.as_str()) {
            let hash = sha256.or_else(|| fragment.and_then(|f| f.strip_prefix("sha256=")));
            match hash.filter(|h| Digest::sha256_hex(h).is_some()) {
                Some(h) => format!("{base}files/sha256/{}/{rest}", h.to_ascii_lowercase()),
                None => format!("{base}files/{rest}"),
            }
        } else if let Some(rest) = abs.strip_prefix(self.index.as_str()) {
            format!("{base}simple/{rest}")
        } else {
            return None;
        };
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        Some(out)
    }

    fn page_url(&self, resolved: &Resolved) -> Url {
        self.index.join(&resolved.upstream_path).unwrap_or_else(|_| self.index.clone())
    }

    /// Rewrite the `href` of every anchor of an HTML page, read as HTML is (any quoting or
    /// none, any case, character references decoded before the link is resolved and written
    /// back escaped); nothing else is touched. Absolute links to hosts that are no upstream
    /// of the repository are left and reported in `bypassing`.
    fn rewrite_html(&self, page: &Url, body: &[u8], env: &RewriteEnv<'_>, bypassing: &mut Vec<String>, published: &mut Vec<Digest>) -> Result<Vec<u8>, FormatError> {
        let base = env.proxy_base;
        let mut out = Vec::with_capacity(body.len() + body.len() / 8);
        let handler = lol_html::element!("a[href]", |el| {
            let Some(raw) = el.get_attribute("href") else { return Ok(()) };
            let href = htmlize::unescape_attribute(raw.as_str());
            let announced = el.has_attribute("data-core-metadata") || el.has_attribute("data-dist-info-metadata");
            match self.map_link(page, &href, base, None) {
                Some(mapped) => {
                    match held_wheel(&mapped, base) {
                        Some(wheel) if announced => published.push(wheel),
                        Some(wheel) => {
                            if let Some(metadata) = env.derived.derived(&wheel) {
                                let value = format!("sha256={}", metadata.hex());
                                el.set_attribute("data-core-metadata", &value)?;
                                el.set_attribute("data-dist-info-metadata", &value)?;
                            }
                        }
                        None => {}
                    }
                    el.set_attribute("href", &htmlize::escape_attribute(mapped))?
                }
                None => {
                    if page.join(&href).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str() != page.host_str()) {
                        bypassing.push(href.into_owned());
                    }
                }
            }
            Ok(())
        });
        let settings = lol_html::Settings::new().append_element_content_handler(handler);
        let mut rewriter = lol_html::HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
        let bad = |e: lol_html::errors::RewritingError| FormatError::BadDocument { what: "HTML index page", reason: e.to_string() };
        rewriter.write(body).map_err(bad)?;
        rewriter.end().map_err(bad)?;
        Ok(out)
    }

    fn rewrite_json(&self, page: &Url, body: &[u8], env: &RewriteEnv<'_>, bypassing: &mut Vec<String>, published: &mut Vec<Digest>) -> Result<Vec<u8>, FormatError> {
        let base = env.proxy_base;
        let bad = |e: serde_json::Error| FormatError::BadDocument { what: "JSON index page", reason: e.to_string() };
        let mut doc: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
        if let Some(files) = doc.get_mut("files").and_then(|f| f.as_array_mut()) {
            for file in files {
                let sha = file.pointer("/hashes/sha256").and_then(|h| h.as_str()).map(str::to_string);
                let mut wheel = None;
                if let Some(url) = file.get_mut("url") {
                    match url.as_str().map(|u| (u, self.map_link(page, u, base, sha.as_deref()))) {
                        Some((_, Some(mapped))) => {
                            wheel = held_wheel(&mapped, base);
                            *url = serde_json::Value::String(mapped);
                        }
                        Some((u, None)) if page.join(u).is_ok_and(|j| matches!(j.scheme(), "http" | "https") && j.host_str() != page.host_str()) => bypassing.push(u.to_string()),
                        _ => {}
                    }
                }
                if let Some(wheel) = wheel {
                    announce_metadata(file, wheel, env.derived, published);
                }
            }
        }
        serde_json::to_vec(&doc).map_err(bad)
    }
}

/// The wheel a rewritten link leads to, if the proxy serves its metadata at the link plus
/// `.metadata`: a link to `<base>files/sha256/<hex>/<path>` (fragment aside, no query) whose
/// path names a wheel. Links elsewhere are not announced: the client would ask there.
fn held_wheel(mapped: &str, base: &str) -> Option<Digest> {
    let rest = mapped.strip_prefix(base)?.strip_prefix("files/sha256/")?;
    let rest = rest.split('#').next()?;
    let (hex, path) = rest.split_once('/')?;
    if path.contains('?') || wheel_project(path).is_none() {
        return None;
    }
    Digest::sha256_hex(hex)
}

/// Add the derived core metadata of `wheel`, if the proxy holds it, to a PEP 691 file entry
/// that announces none (`core-metadata` absent or `false`), under both PEP 714's key and the
/// one older clients read. A wheel the upstream announces metadata for goes in `published`.
fn announce_metadata(file: &mut serde_json::Value, wheel: Digest, derived: &dyn DerivedLookup, published: &mut Vec<Digest>) {
    let announced = |key: &str| file.get(key).is_some_and(|v| v != &serde_json::Value::Bool(false));
    if announced("core-metadata") || announced("dist-info-metadata") {
        published.push(wheel);
        return;
    }
    let (Some(metadata), Some(entry)) = (derived.derived(&wheel), file.as_object_mut()) else { return };
    let hashes = serde_json::json!({ "sha256": metadata.hex() });
    entry.insert("core-metadata".into(), hashes.clone());
    entry.insert("dist-info-metadata".into(), hashes);
}

impl Format for Pypi {
    fn kind(&self) -> FormatKind {
        FormatKind::Pypi
    }

    fn package(&self, path: &str) -> Option<String> {
        if let Some(project) = path.strip_prefix("simple/") {
            return normalize(project.trim_end_matches('/')).filter(|p| !p.is_empty() && !project.trim_end_matches('/').contains('/'));
        }
        let file = path.strip_prefix("files/")?.rsplit('/').next()?;
        let file = file.strip_suffix(".metadata").unwrap_or(file);
        // A wheel's name ends at its first '-' (PEP 427 escapes it in names); an sdist's at its last.
        let name = match file.ends_with(".whl") {
            true => file.split('-').next()?,
            false => file.rsplit_once('-')?.0,
        };
        normalize(name).filter(|n| !n.is_empty())
    }

    fn files_upstream(&self) -> Option<UpstreamUrl> {
        Some(self.files_upstream.clone())
    }

    fn config_warnings(&self) -> Vec<String> {
        match self.index.path().trim_end_matches('/').ends_with("/simple") {
            true => Vec::new(),
            false => vec![format!("upstream '{}' does not end in /simple/: a PyPI index (PEP 503) is served there, and pip asks the upstream for <upstream><project>/", self.index)],
        }
    }

    fn resolve(&self, path: &RequestPath<'_>, headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if rel == "simple" || rel.starts_with("simple/") {
            let below = rel.strip_prefix("simple").unwrap_or("").trim_start_matches('/');
            let json = accepts(headers, JSON.accept);
            let project = below.strip_suffix('/').unwrap_or(below);
            return Ok(Resolved {
                representation: Some(if json { JSON } else { HTML }),
                // The root listing's JSON form names projects only; its HTML form links to them.
                rewrite: !(below.is_empty() && json),
                lists_derived: (!project.contains('/')).then(|| normalize(project)).flatten(),
                ..Resolved::new(UpstreamChoice::Primary, with_query(below, path.query), with_query(&format!("simple/{below}"), path.query), PathClass::Metadata)
            });
        }
        if let Some(files) = rel.strip_prefix("files/") {
            let (digest, file) = match files.strip_prefix("sha256/").and_then(|r| r.split_once('/')) {
                Some((hex, file)) => (Some(Digest::sha256_hex(hex).ok_or(FormatError::NotFound("malformed sha256 in file URL"))?), file),
                None => (None, files),
            };
            if file.is_empty() {
                return Err(FormatError::NotFound("no file named"));
            }
            // PEP 658 metadata has its own hash, which the client checks.
            let metadata = file.ends_with(".metadata");
            let derived_of = match (file.strip_suffix(".metadata"), &digest) {
                (Some(wheel), Some(d)) => wheel_project(wheel).map(|group| DerivedOf { artefact_key: format!("files/{wheel}"), artefact: d.clone(), group }),
                _ => None,
            };
            let digest = digest.filter(|_| !metadata);
            // A file asked for without its digest is passed through but never cached: the
            // cache entry is shared with the verified URL. (The query is the client's, not
            // part of the file's address, and is not sent upstream.)
            let store = digest.is_some() || metadata;
            return Ok(Resolved {
                derives: digest.as_ref().and_then(|_| wheel_project(file)),
                derived_of,
                digest,
                store,
                ..Resolved::new(UpstreamChoice::Files, file.to_string(), format!("files/{file}"), PathClass::Immutable)
            });
        }
        Err(FormatError::NotFound("a PyPI repository serves simple/ and files/"))
    }

    /// The wheel's `{distribution}-{version}.dist-info/METADATA` (the name compared
    /// normalised), read from its zip directory: the core metadata file PEP 658 serves.
    fn derive(&self, key_path: &str, artefact: &mut dyn ReadSeek) -> Result<Option<Vec<u8>>, FormatError> {
        let Some(project) = wheel_project(key_path) else { return Ok(None) };
        let bad = |reason: String| FormatError::BadDocument { what: "wheel", reason };
        let mut zip = zip::ZipArchive::new(artefact).map_err(|e| bad(e.to_string()))?;
        let names: Vec<String> = zip
            .file_names()
            .filter_map(Result::ok)
            .filter(|n| {
                let dir = n.strip_suffix(".dist-info/METADATA").filter(|d| !d.contains('/'));
                dir.and_then(|d| d.rsplit_once('-')).is_some_and(|(name, _)| normalize(name).as_deref() == Some(project.as_str()))
            })
            .map(|n| n.into_owned())
            .collect();
        let [name] = names.as_slice() else {
            return Err(bad(format!("{} .dist-info/METADATA files for project {project}; expected one", names.len())));
        };
        let entry = zip.by_name(name).map_err(|e| bad(e.to_string()))?;
        if entry.size() > MAX_METADATA_BYTES {
            return Err(bad(format!("{name} is {} bytes, more than {MAX_METADATA_BYTES}", entry.size())));
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        // Bounded whatever the directory claimed.
        entry.take(MAX_METADATA_BYTES + 1).read_to_end(&mut out).map_err(|e| bad(format!("{name}: {e}")))?;
        if out.len() as u64 > MAX_METADATA_BYTES {
            return Err(bad(format!("{name} is more than {MAX_METADATA_BYTES} bytes")));
        }
        Ok(Some(out))
    }

    fn rewrite(&self, resolved: &Resolved, body: Bytes, env: &RewriteEnv<'_>) -> Result<Rewritten, FormatError> {
        let page = self.page_url(resolved);
        // By what the upstream sent, not what was asked for: an index may ignore `Accept`.
        let json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let (mut bypassing, mut published) = (Vec::new(), Vec::new());
        let body = if json {
            self.rewrite_json(&page, &body, env, &mut bypassing, &mut published)?
        } else {
            self.rewrite_html(&page, &body, env, &mut bypassing, &mut published)?
        };
        Ok(Rewritten { body: Bytes::from(body), digests: Vec::new(), bypassing, published })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::UpstreamUrl;

    fn pypi() -> Pypi {
        Pypi::new(&Upstreams {
            primary: UpstreamUrl::parse("https://index.test/simple/").unwrap(),
            files: Some("https://files.test".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn resolved(p: &Pypi, path: &str, accept: &str) -> Resolved {
        let mut req = HeaderMap::new();
        if !accept.is_empty() {
            req.insert(http::header::ACCEPT, accept.parse().unwrap());
        }
        p.resolve(&RequestPath { relative: path, query: None }, &req).unwrap()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../tests/fixtures/pypi/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const SHA: &str = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";

    #[test]
    fn html_links_go_through_the_proxy_and_keep_every_attribute() {
        let p = pypi();
        let r = resolved(&p, "simple/six/", "text/html");
        assert_eq!((r.class, r.rewrite, r.upstream_path.as_str()), (PathClass::Metadata, true, "six/"));
        let out = p.rewrite(&r, Bytes::from(fixture("six.html")), &RewriteEnv::new("http://hangar.test/pypi/")).unwrap();
        let html = String::from_utf8(out.body.to_vec()).unwrap();
        assert!(html.contains(&format!("href=\"http://hangar.test/pypi/files/sha256/{SHA}/packages/d9/5a/e7c31adbe875f2abbb91bd84cf2dc52d792b5a01506781dbcf25c91daf11/six-1.16.0-py2.py3-none-any.whl#sha256={SHA}\"")), "{html}");
        assert!(html.contains("data-requires-python=\"&gt;=2.7, !=3.0.*, !=3.1.*, !=3.2.*\""));
        assert!(html.contains("data-dist-info-metadata=\"sha256=") && html.contains("data-core-metadata=\"sha256="));
        assert!(html.contains("data-yanked=\"broken build\""));
        assert!(!html.contains("https://files.test"), "no link leads around the proxy");
        assert!(html.contains("href=\"https://elsewhere.test/x.tar.gz\""), "links to other hosts are left alone");
    }

    #[test]
    fn html_is_read_as_html_in_every_legal_spelling() {
        let p = pypi();
        let r = resolved(&p, "simple/six/", "");
        let sha = "a".repeat(64);
        let page = format!(
            "<!DOCTYPE html><html><body>\n<A HREF=\"https://files.test/p/six-1.tar.gz#sha256={sha}\">one</A>\n<a href = 'https://files.test/p/six-2.tar.gz#sha256={sha}' data-requires-python=\"&gt;=3.8\">two</a>\n<a href=https://files.test/p/six-3.tar.gz#sha256={sha}>three</a>\n<a href=\"https://files.test/p/six-4.tar.gz?a=1&amp;b=2#sha256={sha}\">four</a>\n<a href=\"https&#58;//files.test/p/six-5.tar.gz#sha256={sha}\">five</a>\n<a href=\"https://elsewhere.test/six-6.tar.gz\">six</a>\n</body></html>"
        );
        let out = p.rewrite(&r, Bytes::from(page), &RewriteEnv::new("http://hangar.test/pypi/")).unwrap();
        let text = String::from_utf8(out.body.to_vec()).unwrap();
        for n in 1..=3 {
            assert!(text.contains(&format!("http://hangar.test/pypi/files/sha256/{sha}/p/six-{n}.tar.gz#sha256={sha}")), "link {n}: {text}");
        }
        assert!(text.contains(&format!("http://hangar.test/pypi/files/sha256/{sha}/p/six-4.tar.gz?a=1&amp;b=2#sha256={sha}")), "& stays one character, written escaped: {text}");
        assert!(text.contains(&format!("http://hangar.test/pypi/files/sha256/{sha}/p/six-5.tar.gz")), "character references are decoded before the link is read: {text}");
        assert!(text.contains("data-requires-python=\"&gt;=3.8\""), "other attributes untouched: {text}");
        assert_eq!(out.bypassing, ["https://elsewhere.test/six-6.tar.gz"], "a host that is no upstream is reported");
    }

    #[test]
    fn json_urls_go_through_the_proxy_and_hashes_are_kept() {
        let p = pypi();
        let r = resolved(&p, "simple/six/", "application/vnd.pypi.simple.v1+json, text/html;q=0.01");
        assert_eq!(r.representation.unwrap().name, "json");
        let out = p.rewrite(&r, Bytes::from(fixture("six.json")), &RewriteEnv::new("http://hangar.test/pypi/")).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        let file = &doc["files"][1];
        assert_eq!(file["url"].as_str().unwrap(), format!("http://hangar.test/pypi/files/sha256/{SHA}/packages/d9/5a/e7c31adbe875f2abbb91bd84cf2dc52d792b5a01506781dbcf25c91daf11/six-1.16.0-py2.py3-none-any.whl"));
        assert_eq!(file["hashes"]["sha256"].as_str().unwrap(), SHA);
        assert_eq!(file["core-metadata"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(file["requires-python"], ">=2.7, !=3.0.*, !=3.1.*, !=3.2.*");
        assert_eq!(doc["meta"]["api-version"], "1.1");
    }

    #[test]
    fn files_are_immutable_verified_and_keyed_without_the_digest() {
        let p = pypi();
        let r = resolved(&p, &format!("files/sha256/{SHA}/packages/a/b/six.whl"), "");
        assert_eq!((r.upstream, r.class, r.key_path.as_str(), r.upstream_path.as_str()), (UpstreamChoice::Files, PathClass::Immutable, "files/packages/a/b/six.whl", "packages/a/b/six.whl"));
        assert_eq!(r.digest, Digest::sha256_hex(SHA));
        let m = resolved(&p, &format!("files/sha256/{SHA}/packages/a/b/six.whl.metadata"), "");
        assert_eq!(m.digest, None, "metadata files have their own hash");
        assert!(r.store && m.store);
        let bare = p.resolve(&RequestPath { relative: "files/packages/a/b/six.whl", query: Some("v=1") }, &HeaderMap::new()).unwrap();
        assert!(!bare.store, "without its digest a file is served, never cached under the verified key");
        assert_eq!(bare.upstream_path, "packages/a/b/six.whl", "the client's query is not sent upstream");
        assert!(p.resolve(&RequestPath { relative: "elsewhere", query: None }, &HeaderMap::new()).is_err());
    }

    /// A wheel: a zip holding `entries` (name, contents), compressed as wheels are.
    fn wheel(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_wheels_core_metadata_is_derived_from_its_dist_info() {
        let p = pypi();
        let metadata = b"Metadata-Version: 2.1\nName: Foo.Bar\nVersion: 1.0\n";
        let w = wheel(&[("foo_bar/__init__.py", b""), ("foo_bar-1.0.dist-info/METADATA", metadata), ("foo_bar-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n"), ("vendored/x-2.0.dist-info/METADATA", b"not this one")]);
        let derive = |key: &str, body: &[u8]| p.derive(key, &mut std::io::Cursor::new(body.to_vec()));
        assert_eq!(derive("files/p/Foo.Bar-1.0-py3-none-any.whl", &w).unwrap().as_deref(), Some(&metadata[..]), "found by the normalised project name");
        assert_eq!(derive("files/p/foo-1.0.tar.gz", &w).unwrap(), None, "only wheels");
        assert!(derive("files/p/other-1.0-py3-none-any.whl", &w).is_err(), "no dist-info of its project");
        assert!(derive("files/p/foo_bar-1.0-py3-none-any.whl", b"not a zip").is_err());
        let two = wheel(&[("foo_bar-1.0.dist-info/METADATA", b"a"), ("Foo.Bar-1.0.dist-info/METADATA", b"b")]);
        assert!(derive("files/p/foo_bar-1.0-py3-none-any.whl", &two).is_err(), "ambiguous: none derived");
        let big = vec![b'x'; (MAX_METADATA_BYTES + 1) as usize];
        assert!(derive("files/p/foo_bar-1.0-py3-none-any.whl", &wheel(&[("foo_bar-1.0.dist-info/METADATA", &big)])).is_err(), "bounded");
    }

    #[test]
    fn wheels_and_their_metadata_and_pages_name_their_project() {
        let p = pypi();
        let w = resolved(&p, &format!("files/sha256/{SHA}/packages/a/b/Six-1.16.0-py2.py3-none-any.whl"), "");
        assert_eq!(w.derives.as_deref(), Some("six"));
        let m = resolved(&p, &format!("files/sha256/{SHA}/packages/a/b/Six-1.16.0-py2.py3-none-any.whl.metadata"), "");
        assert_eq!(m.derived_of, Some(DerivedOf { artefact_key: "files/packages/a/b/Six-1.16.0-py2.py3-none-any.whl".into(), artefact: Digest::sha256_hex(SHA).unwrap(), group: "six".into() }));
        assert_eq!(resolved(&p, &format!("files/sha256/{SHA}/p/six-1.16.0.tar.gz"), "").derives, None, "sdists yield nothing");
        assert_eq!(resolved(&p, "files/p/six-1.16.0-py2.py3-none-any.whl", "").derives, None, "unverified: never derived from");
        assert_eq!(resolved(&p, "simple/Zope.Interface/", "").lists_derived.as_deref(), Some("zope-interface"));
        assert_eq!(resolved(&p, "simple/", "").lists_derived, None);
    }

    #[test]
    fn pages_announce_the_metadata_derived_from_wheels_the_proxy_holds() {
        let p = pypi();
        let (wheel_sha, sdist_sha, meta) = (Digest::sha256_hex(&"1".repeat(64)).unwrap(), Digest::sha256_hex(&"2".repeat(64)).unwrap(), Digest::sha256_hex(&"3".repeat(64)).unwrap());
        let held: std::collections::HashMap<Digest, Digest> = [(wheel_sha.clone(), meta.clone()), (sdist_sha.clone(), meta.clone())].into();
        let env = RewriteEnv { proxy_base: "http://hangar.test/pypi/", derived: &held };
        let (w, s, other) = (wheel_sha.hex(), sdist_sha.hex(), "4".repeat(64));
        let html = format!("<a href=\"https://files.test/p/six-1.0-py3-none-any.whl#sha256={w}\">w</a><a href=\"https://files.test/p/six-1.0.tar.gz#sha256={s}\">s</a><a href=\"https://files.test/p/six-0.9-py3-none-any.whl#sha256={other}\">o</a><a href=\"https://files.test/p/six-1.0-py2-none-any.whl#sha256={w}\" data-core-metadata=\"sha256={other}\">own</a><a href=\"https://elsewhere.test/six-1.0-py3-none-any.whl#sha256={w}\">away</a><a href=\"https://files.test/p/six-1.0-py3-none-any.whl?x=1#sha256={w}\">query</a>");
        let out = p.rewrite(&resolved(&p, "simple/six/", "text/html"), Bytes::from(html), &env).unwrap();
        let page = String::from_utf8(out.body.to_vec()).unwrap();
        let announced = format!("data-core-metadata=\"sha256={}\" data-dist-info-metadata=\"sha256={}\"", meta.hex(), meta.hex());
        assert_eq!(page.matches(&announced).count(), 1, "only the held wheel: not the sdist, not a wheel not held, not one the index announces itself: {page}");
        assert!(page.contains(&format!("data-core-metadata=\"sha256={other}\"")), "the upstream's own announcement is kept");
        assert_eq!(out.published, vec![wheel_sha.clone()], "the wheel the index announces metadata for is not derived");
        let json = format!("{{\"meta\":{{\"api-version\":\"1.0\"}},\"name\":\"six\",\"files\":[{{\"filename\":\"six-1.0-py3-none-any.whl\",\"url\":\"https://files.test/p/six-1.0-py3-none-any.whl\",\"hashes\":{{\"sha256\":\"{w}\"}},\"core-metadata\":false}},{{\"filename\":\"six-1.0-py2-none-any.whl\",\"url\":\"https://files.test/p/six-1.0-py2-none-any.whl\",\"hashes\":{{\"sha256\":\"{other}\"}},\"core-metadata\":{{\"sha256\":\"{w}\"}}}},{{\"filename\":\"six-1.0.tar.gz\",\"url\":\"https://files.test/p/six-1.0.tar.gz\",\"hashes\":{{\"sha256\":\"{s}\"}}}}]}}");
        let out = p.rewrite(&resolved(&p, "simple/six/", "application/vnd.pypi.simple.v1+json"), Bytes::from(json), &env).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!((doc["files"][0]["core-metadata"]["sha256"].as_str(), doc["files"][0]["dist-info-metadata"]["sha256"].as_str()), (Some(meta.hex().as_str()), Some(meta.hex().as_str())));
        assert_eq!(doc["files"][1]["core-metadata"]["sha256"].as_str(), Some(w.as_str()), "the index's own announcement is kept");
        assert_eq!(out.published, vec![Digest::sha256_hex(&other).unwrap()]);
        assert!(doc["files"][2].get("core-metadata").is_none(), "sdists announce nothing");
    }
}
