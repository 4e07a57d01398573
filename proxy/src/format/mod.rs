//! Package formats: what one kind of registry means by its URLs.
//!
//! Each format is one module behind [`Format`]. For every request the proxy asks the
//! repository's format to [`Format::resolve`] the path: which upstream it goes to and at what
//! path, what identifies it in the cache, which representation the client wants, what the path
//! holds (artefact or index), whether the body must be rewritten so its links lead back through
//! the proxy, and what digest the bytes must have. What a format needs at startup (a second
//! upstream, default freshness, whether its pointers outlive a restart) and what the proxy
//! answers itself on its behalf ([`LocalAnswer`]) are asked of it the same way. The cache,
//! storage and request path never know which format they hold: adding a format means adding a
//! module here, a [`FormatKind`] variant in `hangar-core`, and one line in [`build`].
//!
//! Formats are pure: no I/O, no pingora types, plain `http` types in and out.

mod apt;
mod cargo;
mod gems;
mod generic;
mod maven;
mod npm;
mod oci;
mod pypi;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};

pub use hangar_core::FormatKind;
use hangar_core::{Digest, PathClass, PathError, RequestPath, UpstreamUrl};

/// How long index documents of package formats stay fresh when the repository does not say:
/// registries often send no validators, and asking again on every request would make the proxy
/// slower than going direct. New releases show within this time (plus one background refresh
/// under stale-while-revalidate).
pub const PACKAGE_METADATA_TTL: Duration = Duration::from_secs(300);

/// The format `kind` for a repository with `upstreams`: the only place that maps a
/// [`FormatKind`] to its module.
pub fn build(kind: FormatKind, upstreams: &Upstreams) -> Result<Arc<dyn Format>, FormatError> {
    if upstreams.namespace.is_some() && kind != FormatKind::Oci {
        return Err(FormatError::Unsupported { key: "namespace", format: kind });
    }
    Ok(match kind {
        FormatKind::Generic => Arc::new(generic::Generic::new(&upstreams.pins)?),
        FormatKind::Pypi => Arc::new(pypi::Pypi::new(upstreams)?),
        FormatKind::Npm => Arc::new(npm::Npm::new(upstreams)),
        FormatKind::Cargo => Arc::new(cargo::Cargo::new(upstreams)?),
        FormatKind::Maven => Arc::new(maven::Maven),
        FormatKind::Apt => Arc::new(apt::Apt),
        FormatKind::Gems => Arc::new(gems::Gems),
        FormatKind::Oci => Arc::new(oci::Oci::new(upstreams.namespace.as_deref())),
    })
}

/// What a format is built from: the repository's upstreams (the registry itself and, for
/// formats whose artefacts live on another host, that host: PyPI's file host, cargo's `dl`),
/// the digests pinned in its config, and the registry name it mirrors.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    pub primary: UpstreamUrl,
    /// As configured (cargo's may be a `dl` template with `{crate}` markers).
    pub files: Option<String>,
    /// `path below the prefix -> "sha256:<hex>"`.
    pub pins: std::collections::BTreeMap<String, String>,
    /// The registry name it mirrors (`docker.io`), for formats whose names depend on it.
    pub namespace: Option<String>,
}

/// Which of the repository's upstreams a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamChoice {
    Primary,
    Files,
}

/// Everything the proxy needs to know about one request, decided by the format.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub upstream: UpstreamChoice,
    /// Below the chosen upstream's base path, query included, no leading `/`; or, for
    /// [`UpstreamChoice::Files`] with an origin-only base, the whole path.
    pub upstream_path: String,
    /// What identifies the object in the cache (below the repository).
    pub key_path: String,
    pub class: PathClass,
    /// The representation the client asked for (`json`/`html`, `abbreviated`/`full`), sent
    /// upstream as `accept` and stored as a separate variant.
    pub representation: Option<Representation>,
    /// The body is a document whose links must be rewritten to lead back through the proxy.
    pub rewrite: bool,
    /// The digest the body must have, when the request itself carries it.
    pub digest: Option<Digest>,
    /// [`Resolved::digest`] is only the client's wish (generic's `?sha256=`), not something
    /// the registry, a content address or the operator vouches for: a copy with another digest
    /// is not what this client wants, but it is not shown to be wrong.
    pub digest_asked: bool,
    /// The digest is listed in this document (a path below the repository prefix), which
    /// the proxy reads through itself when it does not know the digest yet.
    pub digest_from: Option<String>,
    /// Without a digest the body is served but not cached (npm); otherwise (Maven, whose
    /// upstreams may publish no checksums) it is cached unverified.
    pub digest_required: bool,
    /// Whether the response may be cached at all (a PyPI file asked for without its digest
    /// is served, not stored).
    pub store: bool,
    /// Answer with this without going upstream (a registry's `/v2/` version check).
    pub local: Option<LocalAnswer>,
    /// Store one variant per `Accept` header (registries vary a tag's manifest by it
    /// without saying `Vary`).
    pub vary_accept: bool,
    /// The path is a mutable name for an immutable object: find out which one, then serve
    /// that object from the cache.
    pub pointer: Option<Pointer>,
    /// The body lists artefact digests ([`Format::digests_in`]): learn them as it passes.
    pub lists_digests: bool,
    /// Verify the body against a digest learned from a listing, when one has been learned.
    pub learned_digest: bool,
    /// The response header in which the registry names the body's digest (a registry's
    /// `Docker-Content-Digest`): set to [`Resolved::digest`], the digest asked for and verified,
    /// whatever algorithm the upstream chose to name it by.
    pub digest_header: Option<&'static str>,
    /// The token scope the upstream's challenge will name (a registry's
    /// `repository:<name>:pull`), so a cached token goes with the first request instead of
    /// after a 401.
    pub auth_scope: Option<String>,
    /// Once stored, the artefact yields a derived file ([`Format::derive`]), counted in this
    /// group (a project: the documents that list its files announce what was derived).
    pub derives: Option<String>,
    /// The path names the file derived from an artefact.
    pub derived_of: Option<DerivedOf>,
    /// The document lists this group's files, and announces the derived ones the proxy holds;
    /// a stored copy written before more were derived is fetched again.
    pub lists_derived: Option<String>,
}

/// A response the proxy writes itself on the format's behalf: a registry's version check, or
/// its error for a name that does not exist. The body is JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAnswer {
    pub status: u16,
    pub body: &'static str,
    /// Headers the format's clients expect on it (a registry's API version).
    pub headers: &'static [(&'static str, &'static str)],
}

/// How a mutable name is resolved to the immutable object it names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub source: PointerSource,
    /// The object's path below the prefix, resolved again by the format: `{digest}` becomes
    /// `sha256:<hex>`, `{hex}` the hex alone.
    pub target: String,
    /// What the client gets when the upstream says the name does not exist (a generic 404
    /// when unset).
    pub missing: Option<LocalAnswer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointerSource {
    /// A HEAD upstream answers with the digest in this header (a registry tag). HEAD costs
    /// the upstream no body and, on Docker Hub, no pull from the rate limit.
    Head(&'static str),
    /// The digest is the one this document (a path below the prefix) lists for the name
    /// (an apt index named in the InRelease being served).
    Document(String),
}

impl Pointer {
    /// The object's path below the prefix for `digest`.
    pub fn target_for(&self, digest: &Digest) -> String {
        let text = digest.to_string();
        let hex = text.split_once(':').map_or(text.as_str(), |(_, h)| h);
        self.target.replace("{digest}", &text).replace("{hex}", hex)
    }
}

impl Resolved {
    /// A request passed through as-is: same path upstream and in the cache.
    pub fn passthrough(path: String, class: PathClass) -> Self {
        Self::new(UpstreamChoice::Primary, path.clone(), path, class)
    }

    /// A request whose upstream path and cache key differ; everything else at its default
    /// (no representation, no rewrite, no digest, stored).
    pub fn new(upstream: UpstreamChoice, upstream_path: String, key_path: String, class: PathClass) -> Self {
        Resolved {
            upstream,
            upstream_path,
            key_path,
            class,
            representation: None,
            rewrite: false,
            digest: None,
            digest_asked: false,
            digest_from: None,
            digest_required: true,
            store: true,
            local: None,
            vary_accept: false,
            pointer: None,
            lists_digests: false,
            learned_digest: false,
            digest_header: None,
            auth_scope: None,
            derives: None,
            derived_of: None,
            lists_derived: None,
        }
    }
}

/// A named representation and the `Accept` header that asks the upstream for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Representation {
    pub name: &'static str,
    pub accept: &'static str,
    /// The `Content-Type` it is served with, when the format knows better than the upstream.
    pub content_type: Option<&'static str>,
}

/// Where rewritten links must point, and what the proxy holds that a document may announce.
#[derive(Clone, Copy)]
pub struct RewriteEnv<'a> {
    /// The proxy's URL of the repository, ending with `/` (e.g. `http://hangar:8080/npm/`).
    pub proxy_base: &'a str,
    /// The files the proxy derived from artefacts it holds ([`Format::derive`]).
    pub derived: &'a dyn DerivedLookup,
}

#[cfg(test)]
impl<'a> RewriteEnv<'a> {
    /// Links to `proxy_base`, announcing no derived files.
    pub fn new(proxy_base: &'a str) -> Self {
        RewriteEnv { proxy_base, derived: &NoDerived }
    }
}

/// The files the proxy derived from artefacts it holds, by the artefact's digest: what a
/// rewritten document may announce (a wheel's core metadata, PEP 658), since the proxy can
/// serve it.
pub trait DerivedLookup: Send + Sync {
    /// The digest (sha256) of the file derived from the artefact whose digest is `artefact`.
    fn derived(&self, artefact: &Digest) -> Option<Digest>;
}

/// Holds no derived files: the lookup for repositories that do not derive them.
pub struct NoDerived;

impl DerivedLookup for NoDerived {
    fn derived(&self, _artefact: &Digest) -> Option<Digest> {
        None
    }
}

#[cfg(test)]
impl DerivedLookup for std::collections::HashMap<Digest, Digest> {
    fn derived(&self, artefact: &Digest) -> Option<Digest> {
        self.get(artefact).cloned()
    }
}

/// A request for the file derived from an artefact ([`Format::derive`]): the proxy answers it
/// from what it derived, or derives it from its stored copy of the artefact, before asking any
/// upstream (which may publish none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedOf {
    /// The artefact's cache key path.
    pub artefact_key: String,
    /// The digest the stored artefact must have been verified against.
    pub artefact: Digest,
    /// The group the derived file is counted in ([`Resolved::derives`]).
    pub group: String,
}

/// A stored artefact's body as [`Format::derive`] reads it: seekable, as a zip's directory
/// is at its end.
pub trait ReadSeek: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

/// A rewritten document, and the artefact digests it listed (by cache key path).
pub struct Rewritten {
    pub body: Bytes,
    pub digests: Vec<(String, Digest)>,
    /// Absolute artefact links left pointing past the proxy: to a host that is none of the
    /// repository's upstreams, which the proxy will not fetch from (it would be an open
    /// proxy). Clients download those around the cache; the proxy counts and logs them.
    pub bypassing: Vec<String>,
    /// Artefacts whose derived file the upstream publishes itself (a wheel whose index
    /// announces its metadata): the proxy derives none for them.
    pub published: Vec<Digest>,
}

/// Why a format cannot serve a request, or cannot be built from a repository's config.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the upstream's {what} is not valid: {reason}")]
    BadDocument { what: &'static str, reason: String },
    #[error("files_upstream '{0}' is not a usable URL")]
    BadFilesUpstream(String),
    #[error("this format needs files_upstream (the host its files are downloaded from)")]
    MissingFilesUpstream,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("pin for '{0}' must be sha256:<64 hex digits>")]
    BadPin(String),
    #[error("format {format} has no {key}; remove it (only the formats that use it take it)")]
    Unsupported { key: &'static str, format: FormatKind },
}

impl FormatError {
    /// The repository config key a build error is about (`files_upstream`, `pins`, ...).
    pub fn config_key(&self) -> &'static str {
        match self {
            FormatError::BadFilesUpstream(_) | FormatError::MissingFilesUpstream => "files_upstream",
            FormatError::BadPin(_) => "pins",
            FormatError::Unsupported { key, .. } => key,
            _ => "format",
        }
    }
}

/// One package format's rules.
///
/// Built once per repository at startup ([`build`]) and shared by every worker thread; every
/// method is called on the request path (or, for [`Format::digests_in`] and
/// [`Format::derive`], off the event loop) and must be cheap and free of I/O beyond reading
/// what it is handed. The methods with defaults describe a plain HTTP mirror.
pub trait Format: Send + Sync {
    fn kind(&self) -> FormatKind;

    /// The host artefacts are downloaded from when it is not the registry's (PyPI's file host,
    /// the origin of cargo's `dl` template): requests resolved to [`UpstreamChoice::Files`] go
    /// there, and redirects to it do not count as leaving the upstream.
    fn files_upstream(&self) -> Option<UpstreamUrl> {
        None
    }

    /// Things in the repository's config that are valid but probably not what was meant (a
    /// PyPI index URL without `/simple/`), logged as warnings at startup and by check-config.
    fn config_warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Freshness of [`PathClass::Metadata`] paths when the repository sets no `metadata_ttl`.
    /// `None`: the upstream's headers decide, as for any other path.
    fn default_metadata_ttl(&self) -> Option<Duration> {
        Some(PACKAGE_METADATA_TTL)
    }

    /// Whether clients' `Cache-Control` request directives are obeyed when the repository does
    /// not say: package managers send `max-age=0` on every index request (pip does), which
    /// would turn every hit into a trip upstream.
    fn honors_request_directives(&self) -> bool {
        false
    }

    /// Whether what its [`Pointer`]s last named is journaled in the cache directory, so a proxy
    /// restarted while the upstream is down still resolves them (registry tags).
    fn journals_pointers(&self) -> bool {
        false
    }

    /// Methods this format answers at `path`; others get 405 before any upstream or cache work.
    fn allows(&self, method: &Method, _path: &str) -> bool {
        method == Method::GET || method == Method::HEAD
    }

    /// Whether a request it allows only reads (the `read` action of the grants): GET, HEAD
    /// and OPTIONS, and whatever else only asks the registry something (npm's advisory
    /// queries are POSTs). Everything else is a write: DELETE a `delete`, the rest `publish`.
    fn reads(&self, method: &Method, _path: &str) -> bool {
        method == Method::GET || method == Method::HEAD || method == Method::OPTIONS
    }

    /// The package `path` (below the prefix, without its query) is about, in the registry's own
    /// naming, for grants limited to package names: an npm `@scope/name`, a PyPI project's
    /// normalised name, Maven's `groupId.artifactId`, an image's name. `None` where the path
    /// names no one package (an index root, a search).
    fn package(&self, _path: &str) -> Option<String> {
        None
    }

    /// Where clients address this kind of registry whatever the repository's prefix (OCI's
    /// `/v2/`): the version check is answered there, and `?ns=` picks the repository.
    fn registry_root(&self) -> Option<&'static str> {
        None
    }

    /// Map a request below the repository prefix, with the client's request headers. The format
    /// checks the path for traversal as far as it allows (see [`RequestPath::checked_relative`]).
    /// [`FormatError::NotFound`] is answered 404, other errors 400.
    fn resolve(&self, path: &RequestPath<'_>, headers: &HeaderMap) -> Result<Resolved, FormatError>;

    /// Rewrite a document's links to lead through the proxy. Called with the whole body of a
    /// 200 response whose [`Resolved::rewrite`] was set.
    fn rewrite(&self, _resolved: &Resolved, body: Bytes, _env: &RewriteEnv<'_>) -> Result<Rewritten, FormatError> {
        Ok(Rewritten { body, digests: Vec::new(), bypassing: Vec::new(), published: Vec::new() })
    }

    /// The `Accept` header for reading a [`Resolved::digest_from`] document.
    fn document_accept(&self) -> &'static str {
        "*/*"
    }

    /// Whether the body of `key_path` states when it expires (apt's `Valid-Until`).
    fn expiry_in_body(&self, _key_path: &str) -> bool {
        false
    }

    /// The expiry stated in the first bytes of such a body, if it states one.
    fn expiry(&self, _head: &[u8]) -> Option<std::time::SystemTime> {
        None
    }

    /// Cache entries to drop when `key_path` is fetched anew, so they are refreshed with it
    /// (Maven's metadata and its checksum files).
    fn companions(&self, _key_path: &str) -> Vec<String> {
        Vec::new()
    }

    /// Whether a 200 for `resolved` can be the document the format must parse: called with
    /// the response's `Content-Type` before the body (`head` is `None`), then with the first
    /// bytes of the body ([`DOCUMENT_HEAD_BYTES`], or all of a shorter one). A proxy's HTML
    /// error page sent as `200` must not be stored as a packument, an index or a manifest:
    /// refused before the body, the client gets a 502 (or the last good copy, stale) saying
    /// why; after, the transfer is cut and nothing is stored. `Err` says what is wrong.
    fn check_document(&self, _resolved: &Resolved, _content_type: Option<&str>, _head: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }

    /// The file derived from a stored artefact that [`Format::resolve`] marked
    /// [`Resolved::derives`], read from its body at `key_path` (a wheel's core metadata, PEP
    /// 658): `Ok(None)` when the artefact holds none. Called off the event loop, by one job
    /// at a time per artefact; the body is the verified stored copy. Bounded in what it reads
    /// and returns.
    fn derive(&self, _key_path: &str, _artefact: &mut dyn ReadSeek) -> Result<Option<Vec<u8>>, FormatError> {
        Ok(None)
    }

    /// Read the digests a [`Resolved::digest_from`] or [`Resolved::lists_digests`] document
    /// lists, keyed by cache key path. May be called off the event loop for large documents.
    fn digests_in(&self, _document_path: &str, _body: &[u8]) -> Result<Vec<(String, Digest)>, FormatError> {
        Ok(Vec::new())
    }
}

/// How much of a document's body [`Format::check_document`] is shown.
pub const DOCUMENT_HEAD_BYTES: usize = 64;

/// The checks most formats' documents share: not an HTML page (unless `html_ok`), and a body
/// that starts as its syntax must (`starts`: one of these after whitespace and a BOM; empty
/// accepts any). What [`Format::check_document`] implementations are built from.
pub(crate) fn document_like(content_type: Option<&str>, head: Option<&[u8]>, what: &str, starts: &[&str]) -> Result<(), String> {
    match head {
        None => {
            let essence = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if essence == "text/html" || essence == "application/xhtml+xml" {
                return Err(format!("upstream answered 200 with an HTML page (Content-Type {essence}), not a {what}: not stored"));
            }
            Ok(())
        }
        Some(head) => {
            let head = head.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(head);
            let text = head.iter().position(|b| !b.is_ascii_whitespace()).map_or(&head[..0], |i| &head[i..]);
            let lower = String::from_utf8_lossy(text).to_ascii_lowercase();
            if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
                return Err(format!("upstream answered 200 with an HTML page, not a {what}: not stored"));
            }
            if !starts.is_empty() && !text.is_empty() && !starts.iter().any(|s| lower.starts_with(&s.to_ascii_lowercase())) {
                let shown: String = String::from_utf8_lossy(&text[..text.len().min(24)]).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                return Err(format!("upstream's body does not start as a {what} does (it starts '{shown}'): not stored"));
            }
            Ok(())
        }
    }
}

/// Whether the client's `Accept` header names `media_type` (without `q=0`).
pub(crate) fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| matches!(p.trim().split_once('='), Some(("q", q)) if q.trim().parse::<f32>().ok() == Some(0.0)));
            name.eq_ignore_ascii_case(media_type) && !q_zero
        })
}

/// Why a gzip body could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    #[error("not valid gzip: {0}")]
    Invalid(#[from] std::io::Error),
    #[error("larger than {0} bytes unpacked")]
    TooLarge(usize),
}

/// Unpack a gzip body (all its members), refusing to grow past `limit` bytes: an upstream's
/// gzip bomb is an error, not an out-of-memory.
pub(crate) fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge(limit));
    }
    Ok(out)
}

/// The path with its query, as a resolved upstream or key path.
pub(crate) fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod package_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_refuses_an_error_page_where_it_must_read_a_document() {
        let up = |files: Option<&str>| Upstreams { primary: UpstreamUrl::parse("http://127.0.0.1:1/").unwrap(), files: files.map(str::to_string), ..Default::default() };
        let page: &[u8] = b"\n  <!DOCTYPE html><html><body>502 Bad Gateway</body></html>";
        // (format, a document path, its first bytes as the registry sends them)
        let cases: [(FormatKind, Option<&str>, &str, &[u8]); 9] = [
            (FormatKind::Npm, None, "left-pad", b"{\"name\":\"left-pad\"}"),
            (FormatKind::Cargo, Some("http://127.0.0.1:2/dl"), "3/s/syn", b"{\"name\":\"syn\"}\n"),
            (FormatKind::Gems, None, "info/rails", b"---\n7.1.0 |checksum:00\n"),
            (FormatKind::Gems, None, "versions", b"created_at: 2026-01-01T00:00:00Z\n---\n"),
            (FormatKind::Maven, None, "g/a/maven-metadata.xml", b"<?xml version=\"1.0\"?><metadata/>"),
            (FormatKind::Maven, None, "g/a/1.0/a-1.0.jar.sha1", b"a9993e364706816aba3e25717850c26c9cd0d89d"),
            (FormatKind::Apt, None, "dists/bookworm/InRelease", b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n"),
            (FormatKind::Apt, None, "Release", b"Origin: Test\n"),
            (FormatKind::Oci, None, "library/alpine/manifests/3.20", b"{\"schemaVersion\":2}"),
        ];
        for (kind, files, path, good) in cases {
            let format = build(kind, &up(files)).unwrap();
            let resolved = format.resolve(&RequestPath { relative: path, query: None }, &HeaderMap::new()).unwrap();
            assert!(format.check_document(&resolved, Some("text/html; charset=utf-8"), None).is_err(), "{kind} {path}: an HTML page by its type");
            assert!(format.check_document(&resolved, None, Some(page)).is_err(), "{kind} {path}: an HTML page by its bytes");
            assert_eq!(format.check_document(&resolved, None, Some(good)), Ok(()), "{kind} {path}");
            assert_eq!(format.check_document(&resolved, Some("application/octet-stream"), None), Ok(()), "{kind} {path}");
        }
        // Artefacts are verified against their digests, not read: a blob may start with anything.
        let oci = build(FormatKind::Oci, &up(None)).unwrap();
        let blob = oci.resolve(&RequestPath { relative: &format!("a/blobs/sha256:{}", "ab".repeat(32)), query: None }, &HeaderMap::new()).unwrap();
        assert_eq!(oci.check_document(&blob, None, Some(page)), Ok(()));
        let gems = build(FormatKind::Gems, &up(None)).unwrap();
        let legacy = gems.resolve(&RequestPath { relative: "specs.4.8.gz", query: None }, &HeaderMap::new()).unwrap();
        assert!(gems.check_document(&legacy, None, Some(b"<html>")).is_err() && gems.check_document(&legacy, None, Some(&[0x1f, 0x8b, 8])).is_ok());
    }

    #[test]
    fn only_registries_take_a_namespace_and_file_hosts_are_the_formats_call() {
        let up = |files: Option<&str>, namespace: Option<&str>| Upstreams {
            primary: UpstreamUrl::parse("http://127.0.0.1:1/").unwrap(),
            files: files.map(str::to_string),
            pins: Default::default(),
            namespace: namespace.map(str::to_string),
        };
        let err = build(FormatKind::Generic, &up(None, Some("x"))).err().unwrap();
        assert_eq!(err.config_key(), "namespace");
        assert!(err.to_string().starts_with("format generic has no namespace; remove it"), "{err}");
        assert!(build(FormatKind::Oci, &up(None, Some("docker.io"))).is_ok());
        assert_eq!(build(FormatKind::Pypi, &up(None, None)).err().unwrap().config_key(), "files_upstream");
        let cargo = build(FormatKind::Cargo, &up(Some("https://dl.test/api/v1/crates"), None)).unwrap();
        assert_eq!(cargo.files_upstream().unwrap().to_string(), "https://dl.test/", "cargo's dl is a template: only its origin is an upstream");
        let pypi = build(FormatKind::Pypi, &up(Some("https://files.test/base"), None)).unwrap();
        assert_eq!(pypi.files_upstream().unwrap().to_string(), "https://files.test/base/");
        let generic = build(FormatKind::Generic, &up(None, None)).unwrap();
        assert_eq!((generic.default_metadata_ttl(), generic.honors_request_directives()), (None, true));
        assert_eq!((pypi.default_metadata_ttl(), pypi.honors_request_directives()), (Some(PACKAGE_METADATA_TTL), false));
    }
}
