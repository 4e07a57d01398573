//! `[[repository]]`: one mirrored upstream, mounted under a path prefix, and its rules:
//! timeouts, freshness, the breaker, credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use hangar_core::{ByteSize, FormatKind, HumanDuration};
use serde::Deserialize;

/// One mirrored upstream, mounted under a path prefix. `name`, `prefix` and `upstream` are
/// required; everything else has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Letters, digits, `-`, `_` and `.`, at most 64 (it names the repository in metrics,
    /// purges and origin paths).
    pub name: String,
    /// Path prefix on the proxy, e.g. `/releases/`; `/` mounts the repository at the root.
    pub prefix: String,
    /// What kind of registry the upstream is (`generic` by default).
    pub format: FormatKind,
    /// Base URL requests are forwarded to; the path after `prefix` is appended to it.
    pub upstream: String,
    /// Where the format's artefacts are downloaded from when that is not `upstream`: PyPI's
    /// file host, cargo's `dl` (a template with `{crate}` markers, as in the index's
    /// config.json). An unset variable disables the repository, like `upstream`.
    pub files_upstream: Option<String>,
    /// The proxy's own URL for this repository (e.g. `https://hangar.example/npm/`), written
    /// into rewritten documents. Unset: taken from each request's `Host` (and
    /// `X-Forwarded-Proto`), so one proxy answers correctly under every name it is reached by.
    pub public_url: Option<String>,
    /// Largest index document (packument, index page) the proxy rewrites; larger ones fail
    /// with 502 rather than take unbounded memory.
    pub max_document_bytes: ByteSize,
    /// Hosts upstream redirects may lead to (`files.example`, `*.example`). Unset: any
    /// public host. A redirect elsewhere is a 502, so a mirror is never an open proxy.
    pub redirect_hosts: Option<Vec<String>>,
    /// Let upstream redirects lead to loopback, private, link-local or unique-local addresses.
    /// Off by default: a Location header must not reach the cloud metadata service or the
    /// internal network (SSRF). The configured upstream itself is always allowed.
    pub allow_private_redirects: bool,
    /// Digests that paths below the prefix must have (`"/v1/tool.tar.gz" = "sha256:<hex>"`),
    /// verified before the body is cached (`generic`).
    pub pins: BTreeMap<String, String>,
    /// Hosts besides the upstream's own whose token endpoints (Bearer challenge realms) the
    /// proxy may ask for upstream tokens.
    pub token_realms: Vec<String>,
    /// Credentials for the upstream (`oci`): sent to its token endpoint, or as Basic auth when
    /// it asks for that. Unset: anonymous. An unset variable in either field means anonymous.
    pub credentials: Option<Credentials>,
    /// The registry name this repository mirrors, as containerd names it in `?ns=` (`oci`):
    /// requests under `/v2/` carrying `?ns=<namespace>` are routed here whatever the prefix.
    /// `docker.io` also adds `library/` to single-name images, as Docker Hub expects.
    pub namespace: Option<String>,
    /// `[repository.timeouts]`.
    pub timeouts: TimeoutConfig,
    /// `[repository.freshness]`.
    pub freshness: FreshnessConfig,
    /// Never contact this repository's upstream; serve whatever is cached.
    pub offline: bool,
    /// The methods this repository answers (`["GET", "HEAD"]`); others get 405. Unset: every
    /// method its format allows (for `generic`, all but CONNECT and TRACE: unknown unsafe ones
    /// are forwarded and invalidate the URL when they succeed, as POST does).
    pub methods: Option<Vec<String>>,
    /// `[repository.breaker]`.
    pub breaker: BreakerConfig,
    /// Derive files the upstream may not publish from the artefacts the proxy stores, serve
    /// them and announce them in the index pages it serves (`pypi`: each stored wheel's core
    /// metadata, PEP 658, so pip and uv resolve without downloading wheels). On by default.
    pub derive_files: bool,
    /// Offer HTTP/2 to an `https` upstream (ALPN `h2`, then `http/1.1`): the requests of many
    /// clients to one upstream then share one connection, and one TLS handshake, instead of
    /// opening one each. An upstream that does not offer HTTP/2 is spoken to in HTTP/1.1 as
    /// before. On by default.
    pub upstream_http2: bool,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            name: String::new(),
            prefix: String::new(),
            format: FormatKind::default(),
            upstream: String::new(),
            files_upstream: None,
            public_url: None,
            max_document_bytes: ByteSize(256 << 20),
            redirect_hosts: None,
            allow_private_redirects: false,
            derive_files: true,
            upstream_http2: true,
            pins: BTreeMap::new(),
            token_realms: Vec::new(),
            credentials: None,
            namespace: None,
            timeouts: TimeoutConfig::default(),
            freshness: FreshnessConfig::default(),
            offline: false,
            methods: None,
            breaker: BreakerConfig::default(),
        }
    }
}

impl RepositoryConfig {
    /// A repository with every optional setting at its default.
    pub fn new(name: &str, prefix: &str, format: FormatKind, upstream: &str) -> Self {
        RepositoryConfig { name: name.into(), prefix: prefix.into(), format, upstream: upstream.into(), ..Default::default() }
    }
}

/// A user name and password (or access token) for an upstream registry. Never logged.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl Credentials {
    /// The `Authorization` value for HTTP Basic (RFC 7617).
    pub fn basic(&self) -> String {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password)))
    }
}

/// When to stop sending requests to a failing upstream, and for how long.
///
/// The breaker opens when, within `window`, at least `min_requests` client requests reached the
/// upstream, at least `failure_rate` of them failed (a connect error, a timeout, a reset, a 5xx
/// or a 429), and the failures were for at least `min_paths` different paths: one broken object
/// never takes the repository down. Each client request counts once, however often it was
/// retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The sliding window failures are counted over.
    pub window: HumanDuration,
    /// The fraction of requests in the window that must have failed (above 0, at most 1).
    pub failure_rate: f64,
    /// Requests the window must hold before it may open (`failures`, the old key, means the same).
    #[serde(alias = "failures")]
    pub min_requests: u32,
    /// Different paths that must have failed in the window.
    pub min_paths: u32,
    /// How long it stays open before one probe request is let through.
    pub cooldown: HumanDuration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: HumanDuration(Duration::from_secs(10)),
            failure_rate: 0.5,
            min_requests: 20,
            min_paths: 5,
            cooldown: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// Upstream connection and read deadlines.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Longest TCP connect.
    pub connect: HumanDuration,
    /// Longest silence between two reads from the upstream.
    pub read: HumanDuration,
    /// Longest time to establish a connection including TLS.
    pub total_connect: HumanDuration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: HumanDuration(Duration::from_secs(5)),
            read: HumanDuration(Duration::from_secs(30)),
            total_connect: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// Freshness overrides that take precedence over the upstream's own headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreshnessConfig {
    /// Path patterns (`*` matches within a segment, `**` across segments) cached forever.
    pub immutable: Vec<String>,
    /// Path patterns of mutable metadata (indexes, package listings): refreshed every
    /// `metadata_ttl` and served stale while a background refresh runs.
    pub metadata: Vec<String>,
    /// Freshness of metadata paths, replacing whatever the upstream says. Unset: the format's
    /// default (5 minutes for package formats; `generic` leaves it to the upstream's headers).
    pub metadata_ttl: Option<HumanDuration>,
    /// How long past its freshness a metadata response is still served at once while one
    /// background request refreshes it, so no client waits on the refresh.
    pub stale_while_revalidate: HumanDuration,
    /// Obey clients' Cache-Control request directives (no-cache, max-age, min-fresh,
    /// max-stale, only-if-cached, no-store). Unset: the format's default: yes for `generic`;
    /// no for package formats, whose clients send `max-age=0` on every index request (pip
    /// does) and would turn every hit into a trip upstream.
    pub honor_request_directives: Option<bool>,
    /// TTL for responses that carry neither freshness information nor validators
    /// (ETag/Last-Modified). Unset: such responses are not reused.
    pub default_ttl: Option<HumanDuration>,
    /// Upper bound on any TTL the upstream asks for.
    pub max_ttl: Option<HumanDuration>,
    /// How long past its freshness a mutable response may still be served when the upstream
    /// fails (connect error, timeout, 5xx, 429). Immutable paths: without limit.
    pub max_stale: HumanDuration,
    /// How long a 404 is remembered, so lookups of missing names do not hammer the upstream.
    /// `0s` disables negative caching.
    pub negative_ttl: HumanDuration,
    /// A response field that steers Hangar alone (RFC 9213 targeted field), read before
    /// `CDN-Cache-Control` and `Cache-Control`: an origin behind Hangar behind a CDN can give
    /// each its own rules.
    pub targeted_field: String,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            immutable: Vec::new(),
            metadata: Vec::new(),
            metadata_ttl: None,
            stale_while_revalidate: HumanDuration(Duration::from_secs(600)),
            honor_request_directives: None,
            default_ttl: None,
            max_ttl: None,
            max_stale: HumanDuration(Duration::from_secs(7 * 86400)),
            negative_ttl: HumanDuration(Duration::from_secs(60)),
            targeted_field: "Hangar-Cache-Control".into(),
        }
    }
}
