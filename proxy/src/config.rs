//! Hangar's configuration: one TOML file, `${VAR}` interpolation, and command-line overrides.
//!
//! The file is parsed into typed structs first, so a syntax or type error is reported by the TOML
//! parser with its line and key. Interpolation then runs on the few string fields that may carry
//! `${VAR}` (addresses, paths, upstream URLs). A repository whose *upstream* names an unset
//! variable is disabled rather than fatal: a shared config lists every registry a company might
//! mirror, and each region turns on the ones it has credentials and network paths for.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::format::FormatKind;
use crate::units::{ByteSize, HumanDuration};

/// A configuration problem, always naming the file (or `command line`) and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// The whole configuration of one proxy process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default = "default_admin")]
    pub admin_listen: String,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// SO_SNDBUF of client connections; 0 leaves the kernel's autotuning. A fixed, modest
    /// buffer keeps in-flight data in CPU cache: see bench/README.md for the measurements.
    #[serde(default = "default_send_buffer")]
    pub send_buffer_bytes: ByteSize,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// Never contact any upstream; serve whatever is cached (air-gapped or incident use).
    #[serde(default)]
    pub offline: bool,
    #[serde(default)]
    pub cache: CacheConfig,
    /// The regional origin service (hangar-origin). Unset: this proxy stands alone.
    #[serde(default)]
    pub origin: Option<OriginSettings>,
    /// Membership of a region's fleet and the metadata it shares.
    #[serde(default)]
    pub fleet: FleetSettings,
    #[serde(default, rename = "repository")]
    pub repositories: Vec<RepositoryConfig>,
}

/// How this proxy finds the others of its region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// Redis URL of the region's shared metadata. Unset: in-process metadata, a fleet of one.
    #[serde(default)]
    pub redis: Option<String>,
    /// `ip:port` other proxies reach this one at. Unset: the listen address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The region's name; fleets of different regions share nothing.
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_heartbeat")]
    pub heartbeat: HumanDuration,
    /// A member that has not heartbeated for this long is gone.
    #[serde(default = "default_member_ttl")]
    pub member_ttl: HumanDuration,
    /// Metadata writes waiting for the store; beyond this they are dropped (and counted).
    #[serde(default = "default_write_queue")]
    pub write_queue: usize,
}

impl Default for FleetSettings {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

fn default_region() -> String {
    "default".into()
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_member_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_write_queue() -> usize {
    10_000
}

/// Where the regional origin is and how uploads to it are queued.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSettings {
    /// Base URL of hangar-origin (http), e.g. `http://origin.internal:9400/`.
    pub url: String,
    /// Uploads waiting for origin; when full, new ones are dropped (and counted), never waited for.
    #[serde(default = "default_upload_queue")]
    pub upload_queue: usize,
    /// Uploads in flight at once.
    #[serde(default = "default_upload_workers")]
    pub upload_workers: usize,
}

fn default_upload_queue() -> usize {
    1024
}
fn default_upload_workers() -> usize {
    2
}

/// Cache tiers and their byte budgets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Root of the disk tier; created if missing.
    #[serde(default = "default_cache_dir")]
    pub dir: String,
    /// Budget of the memory tier.
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: ByteSize,
    /// Objects larger than this never enter the memory tier.
    #[serde(default = "default_memory_max_object")]
    pub memory_max_object_bytes: ByteSize,
    /// Budget of the disk tier.
    #[serde(default = "default_disk_bytes")]
    pub disk_bytes: ByteSize,
    /// `fsync` each body before it becomes visible, so a power loss cannot expose a torn file.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Free space to keep on the cache filesystem: responses that would eat into it pass
    /// through uncached instead of failing when the disk fills up.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk_bytes: ByteSize,
    /// How long concurrent misses wait for the one request fetching a key before trying themselves.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: HumanDuration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: default_cache_dir(),
            memory_bytes: default_memory_bytes(),
            memory_max_object_bytes: default_memory_max_object(),
            disk_bytes: default_disk_bytes(),
            fsync: true,
            min_free_disk_bytes: default_min_free_disk(),
            lock_timeout: default_lock_timeout(),
        }
    }
}

/// One mirrored upstream, mounted under a path prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    pub name: String,
    /// Path prefix on the proxy, e.g. `/releases/`; `/` mounts the repository at the root.
    pub prefix: String,
    #[serde(default)]
    pub format: FormatKind,
    /// Base URL requests are forwarded to; the path after `prefix` is appended to it.
    pub upstream: String,
    /// Where the format's artefacts are downloaded from when that is not `upstream`: PyPI's
    /// file host, cargo's `dl` (a template with `{crate}` markers, as in the index's
    /// config.json). An unset variable disables the repository, like `upstream`.
    #[serde(default)]
    pub files_upstream: Option<String>,
    /// The proxy's own URL for this repository (e.g. `https://hangar.example/npm/`), written
    /// into rewritten documents. Unset: taken from each request's `Host` (and
    /// `X-Forwarded-Proto`), so one proxy answers correctly under every name it is reached by.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Largest index document (packument, index page) the proxy rewrites; larger ones fail
    /// with 502 rather than take unbounded memory.
    #[serde(default = "default_max_document")]
    pub max_document_bytes: ByteSize,
    /// Hosts upstream redirects may lead to (`files.example`, `*.example`). Unset: any
    /// public host. A redirect elsewhere is a 502, so a mirror is never an open proxy.
    #[serde(default)]
    pub redirect_hosts: Option<Vec<String>>,
    /// Let upstream redirects lead to loopback, private, link-local or unique-local addresses.
    /// Off by default: a Location header must not reach the cloud metadata service or the
    /// internal network (SSRF). The configured upstream itself is always allowed.
    #[serde(default)]
    pub allow_private_redirects: bool,
    /// Digests that paths below the prefix must have (`"/v1/tool.tar.gz" = "sha256:<hex>"`),
    /// verified before the body is cached (`generic`).
    #[serde(default)]
    pub pins: std::collections::BTreeMap<String, String>,
    /// Hosts besides the upstream's own whose token endpoints (Bearer challenge realms) the
    /// proxy may ask for upstream tokens.
    #[serde(default)]
    pub token_realms: Vec<String>,
    /// Credentials for the upstream (`oci`): sent to its token endpoint, or as Basic auth when
    /// it asks for that. Unset: anonymous. An unset variable in either field means anonymous.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// The registry name this repository mirrors, as containerd names it in `?ns=` (`oci`):
    /// requests under `/v2/` carrying `?ns=<namespace>` are routed here whatever the prefix.
    /// `docker.io` also adds `library/` to single-name images, as Docker Hub expects.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub freshness: FreshnessConfig,
    /// Never contact this repository's upstream; serve whatever is cached.
    #[serde(default)]
    pub offline: bool,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

impl RepositoryConfig {
    /// A repository with every optional setting at its default.
    pub fn new(name: &str, prefix: &str, format: FormatKind, upstream: &str) -> Self {
        RepositoryConfig {
            name: name.into(),
            prefix: prefix.into(),
            format,
            upstream: upstream.into(),
            files_upstream: None,
            public_url: None,
            max_document_bytes: default_max_document(),
            redirect_hosts: None,
            allow_private_redirects: false,
            pins: Default::default(),
            token_realms: Vec::new(),
            credentials: None,
            namespace: None,
            timeouts: Default::default(),
            freshness: Default::default(),
            offline: false,
            breaker: Default::default(),
        }
    }
}

/// A user name and password (or access token) for an upstream registry.
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
    /// The `Authorization` value for HTTP Basic.
    pub fn basic(&self) -> String {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password)))
    }
}

/// When to stop sending requests to a failing upstream, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (connect errors, timeouts, 5xx, 429) that open the breaker.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long it stays open before one probe request is let through.
    #[serde(default = "default_breaker_cooldown")]
    pub cooldown: HumanDuration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failures: default_breaker_failures(), cooldown: default_breaker_cooldown() }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    #[serde(default = "default_connect_timeout")]
    pub connect: HumanDuration,
    /// Longest silence between two reads from the upstream.
    #[serde(default = "default_read_timeout")]
    pub read: HumanDuration,
    /// Longest time to establish a connection including TLS.
    #[serde(default = "default_total_connect_timeout")]
    pub total_connect: HumanDuration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: default_connect_timeout(),
            read: default_read_timeout(),
            total_connect: default_total_connect_timeout(),
        }
    }
}

/// Freshness overrides that take precedence over the upstream's own headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessConfig {
    /// Path patterns (`*` matches within a segment, `**` across segments) cached forever.
    #[serde(default)]
    pub immutable: Vec<String>,
    /// Path patterns of mutable metadata (indexes, package listings): refreshed every
    /// `metadata_ttl` and served stale while a background refresh runs.
    #[serde(default)]
    pub metadata: Vec<String>,
    /// Freshness of metadata paths, replacing whatever the upstream says. Unset: the
    /// upstream's headers decide, as for any other path.
    #[serde(default)]
    pub metadata_ttl: Option<HumanDuration>,
    /// How long past its freshness a metadata response is still served at once while one
    /// background request refreshes it, so no client waits on the refresh.
    #[serde(default = "default_stale_while_revalidate")]
    pub stale_while_revalidate: HumanDuration,
    /// Obey clients' Cache-Control request directives (no-cache, max-age, min-fresh,
    /// max-stale, only-if-cached, no-store). Unset: yes for `generic`; no for package
    /// formats, whose clients send `max-age=0` on every index request (pip does) and would
    /// turn every hit into a trip upstream.
    #[serde(default)]
    pub honor_request_directives: Option<bool>,
    /// TTL for responses that carry neither freshness information nor validators
    /// (ETag/Last-Modified). Unset: such responses are not reused.
    #[serde(default)]
    pub default_ttl: Option<HumanDuration>,
    /// Upper bound on any TTL the upstream asks for.
    #[serde(default)]
    pub max_ttl: Option<HumanDuration>,
    /// How long past its freshness a mutable response may still be served when the upstream
    /// fails (connect error, timeout, 5xx, 429). Immutable paths: without limit.
    #[serde(default = "default_max_stale")]
    pub max_stale: HumanDuration,
    /// How long a 404 is remembered, so lookups of missing names do not hammer the upstream.
    /// `0s` disables negative caching.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: HumanDuration,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            immutable: Vec::new(),
            metadata: Vec::new(),
            metadata_ttl: None,
            stale_while_revalidate: default_stale_while_revalidate(),
            honor_request_directives: None,
            default_ttl: None,
            max_ttl: None,
            max_stale: default_max_stale(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

fn default_max_stale() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86400))
}
fn default_max_document() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_stale_while_revalidate() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_negative_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:9090".into()
}
fn default_threads() -> usize {
    1
}
fn default_send_buffer() -> ByteSize {
    ByteSize(512 << 10)
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_cache_dir() -> String {
    "/var/tmp/hangar-cache".into()
}
fn default_memory_bytes() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_memory_max_object() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_disk_bytes() -> ByteSize {
    ByteSize(10 << 30)
}
fn default_min_free_disk() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_true() -> bool {
    true
}
fn default_lock_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_total_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            admin_listen: default_admin(),
            threads: default_threads(),
            send_buffer_bytes: default_send_buffer(),
            shutdown_grace: default_shutdown_grace(),
            offline: false,
            cache: CacheConfig::default(),
            origin: None,
            fleet: FleetSettings::default(),
            repositories: Vec::new(),
        }
    }
}

/// A repository left out because its upstream names an unset variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledRepository {
    pub name: String,
    pub variable: String,
}

/// A configuration after interpolation and validation, with what was disabled on the way.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub disabled: Vec<DisabledRepository>,
}

impl Config {
    /// Read, interpolate and validate `path` against the process environment.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Parse `text` (named `file` in errors), resolving `${VAR}` through `env`.
    pub fn from_toml(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LoadedConfig, ConfigError> {
        let raw: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        raw.resolve(file, env)
    }

    /// Interpolate variables, drop repositories with an unset upstream variable, and validate.
    pub fn resolve(
        mut self,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LoadedConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        let interp = |key: &str, value: &str| -> Result<String, ConfigError> {
            interpolate(value, env).map_err(|e| invalid(key, e.to_string()))
        };
        self.listen = interp("listen", &self.listen)?;
        self.admin_listen = interp("admin_listen", &self.admin_listen)?;
        self.cache.dir = interp("cache.dir", &self.cache.dir)?;
        if let Some(redis) = self.fleet.redis.as_mut() {
            match interpolate(redis, env) {
                Ok(url) => *redis = url,
                Err(InterpolationError::Unset(variable)) => {
                    tracing::warn!("fleet.redis unset (${{{variable}}}): metadata stays in-process");
                    self.fleet.redis = None;
                }
                Err(e) => return Err(invalid("fleet.redis", e.to_string())),
            }
        }
        if let Some(advertise) = self.fleet.advertise.as_mut() {
            match interpolate(advertise, env) {
                Ok(a) => *advertise = a,
                Err(InterpolationError::Unset(_)) => self.fleet.advertise = None,
                Err(e) => return Err(invalid("fleet.advertise", e.to_string())),
            }
        }
        if let Some(origin) = self.origin.as_mut() {
            match interpolate(&origin.url, env) {
                Ok(url) => origin.url = url,
                Err(InterpolationError::Unset(variable)) => {
                    tracing::warn!("origin disabled: its url uses ${{{variable}}}, which is not set");
                    self.origin = None;
                }
                Err(e) => return Err(invalid("origin.url", e.to_string())),
            }
        }

        let mut disabled = Vec::new();
        let mut kept = Vec::with_capacity(self.repositories.len());
        for (i, mut repo) in std::mem::take(&mut self.repositories).into_iter().enumerate() {
            let files = repo.files_upstream.as_deref().map(|f| interpolate(f, env)).transpose();
            match interpolate(&repo.upstream, env).and_then(|url| Ok((url, files?))) {
                Ok((url, files)) => {
                    repo.upstream = url;
                    repo.files_upstream = files;
                    let mut realms = Vec::with_capacity(repo.token_realms.len());
                    for realm in std::mem::take(&mut repo.token_realms) {
                        match interpolate(&realm, env) {
                            Ok(host) => realms.push(host),
                            Err(InterpolationError::Unset(_)) => {}
                            Err(e) => return Err(invalid(&format!("repository[{i}].token_realms"), e.to_string())),
                        }
                    }
                    repo.token_realms = realms;
                    if let Some(c) = repo.credentials.take() {
                        match (interpolate(&c.username, env), interpolate(&c.password, env)) {
                            (Ok(username), Ok(password)) => repo.credentials = Some(Credentials { username, password }),
                            (Err(InterpolationError::Unset(variable)), _) | (_, Err(InterpolationError::Unset(variable))) => {
                                tracing::warn!(repository = %repo.name, "credentials use ${{{variable}}}, which is not set: anonymous");
                            }
                            (Err(e), _) | (_, Err(e)) => return Err(invalid(&format!("repository[{i}].credentials"), e.to_string())),
                        }
                    }
                    kept.push(repo);
                }
                Err(InterpolationError::Unset(variable)) => disabled.push(DisabledRepository {
                    name: repo.name.clone(),
                    variable,
                }),
                Err(e) => return Err(invalid(&format!("repository[{i}].upstream"), e.to_string())),
            }
        }
        self.repositories = kept;
        self.validate(file)?;
        Ok(LoadedConfig {
            config: self,
            disabled,
        })
    }

    /// Semantic checks the TOML types cannot express.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key,
            message,
        };
        for (key, addr) in [("listen", &self.listen), ("admin_listen", &self.admin_listen)] {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(key.into(), format!("'{addr}' is not an IP:port socket address"))
            })?;
        }
        if self.threads == 0 {
            return Err(invalid("threads".into(), "must be at least 1".into()));
        }
        if self.cache.dir.is_empty() {
            return Err(invalid("cache.dir".into(), "must not be empty".into()));
        }
        if self.cache.disk_bytes.0 == 0 {
            return Err(invalid("cache.disk_bytes".into(), "must be greater than 0".into()));
        }
        if self.cache.memory_max_object_bytes.0 > 64 << 20 {
            return Err(invalid(
                "cache.memory_max_object_bytes".into(),
                "must be at most 64MiB (the memory tier is for small hot objects)".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        let mut namespaces = std::collections::HashSet::new();
        for (i, repo) in self.repositories.iter().enumerate() {
            let key = |field: &str| format!("repository[{i}].{field}");
            if repo.name.is_empty()
                || !repo
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(invalid(
                    key("name"),
                    format!("'{}' must be non-empty and use only letters, digits, '-', '_' and '.'", repo.name),
                ));
            }
            if !names.insert(repo.name.as_str()) {
                return Err(invalid(key("name"), format!("'{}' is used by two repositories", repo.name)));
            }
            if !repo.prefix.starts_with('/') {
                return Err(invalid(key("prefix"), format!("'{}' must start with '/'", repo.prefix)));
            }
            if !prefixes.insert(normalize_prefix(&repo.prefix)) {
                return Err(invalid(key("prefix"), format!("'{}' is used by two repositories", repo.prefix)));
            }
            crate::upstream::UpstreamUrl::parse(&repo.upstream)
                .map_err(|e| invalid(key("upstream"), e.to_string()))?;
            if let Some(ns) = &repo.namespace {
                if repo.format != crate::format::FormatKind::Oci {
                    return Err(invalid(key("namespace"), "only oci repositories have a namespace".into()));
                }
                if ns.is_empty() || !namespaces.insert(ns.to_ascii_lowercase()) {
                    return Err(invalid(key("namespace"), format!("'{ns}' is empty or used by two repositories")));
                }
            }
            for (j, pattern) in repo.freshness.immutable.iter().enumerate() {
                crate::freshness::PathPattern::new(pattern)
                    .map_err(|e| invalid(key(&format!("freshness.immutable[{j}]")), e))?;
            }
        }
        Ok(())
    }

    /// The cache directory as a path.
    pub fn cache_dir(&self) -> PathBuf {
        PathBuf::from(&self.cache.dir)
    }
}

/// `/foo`, `/foo/` both mount at `/foo/`; `/` stays `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    format!("{trimmed}/")
}

#[derive(Debug, PartialEq, Eq)]
pub enum InterpolationError {
    Unset(String),
    Malformed(String),
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpolationError::Unset(v) => write!(f, "environment variable {v} is not set"),
            InterpolationError::Malformed(m) => write!(f, "{m}"),
        }
    }
}

/// Replace each `${NAME}` with the variable's value; `$$` is a literal `$`.
pub fn interpolate(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or_else(|| {
                InterpolationError::Malformed(format!("unterminated '${{' in '{value}'"))
            })?;
            // `${NAME:-default}`: the default when NAME is unset or empty.
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolationError::Malformed(format!(
                    "'${{{name}}}' is not a valid variable name"
                )));
            }
            let v = env(name)
                .filter(|v| !v.is_empty())
                .or_else(|| default.map(str::to_string))
                .ok_or_else(|| InterpolationError::Unset(name.into()))?;
            out.push_str(&v);
            rest = &after[end + 1..];
        } else {
            out.push('$');
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "UP" => Some("http://127.0.0.1:9".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolates_and_escapes() {
        assert_eq!(interpolate("a${UP}b$$", &env).unwrap(), "ahttp://127.0.0.1:9b$");
        assert_eq!(interpolate("${NOPE}", &env), Err(InterpolationError::Unset("NOPE".into())));
        assert!(matches!(interpolate("${UP", &env), Err(InterpolationError::Malformed(_))));
        assert_eq!(interpolate("${NOPE:-https://d.test/v2/}", &env).unwrap(), "https://d.test/v2/");
        assert_eq!(interpolate("${UP:-https://d.test/}/x", &env).unwrap(), "http://127.0.0.1:9/x");
    }

    #[test]
    fn registry_settings_interpolate_and_unset_credentials_mean_anonymous() {
        let text = |extra: &str| {
            format!("[[repository]]\nname = \"hub\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"${{UP}}/v2/\"\nnamespace = \"docker.io\"\ntoken_realms = [\"${{AUTH}}\", \"${{NO_REALM}}\"]\ncredentials = {{ username = \"${{USER_X}}\", password = \"${{PASS}}\" }}\n{extra}")
        };
        let with = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()).or_else(|| env(n))
        };
        let anonymous = Config::from_toml(&text(""), "t", &with(&[("AUTH", "auth.test"), ("USER_X", "me")])).unwrap().config;
        assert_eq!(anonymous.repositories[0].token_realms, vec!["auth.test".to_string()]);
        assert!(anonymous.repositories[0].credentials.is_none());
        let user = Config::from_toml(&text(""), "t", &with(&[("USER_X", "me"), ("PASS", "pw")])).unwrap().config;
        let c = user.repositories[0].credentials.as_ref().unwrap();
        assert_eq!((c.username.as_str(), c.basic().as_str()), ("me", "Basic bWU6cHc="));
        assert!(!format!("{c:?}").contains("pw"), "the password is never logged");

        let twice = text("[[repository]]\nname = \"b\"\nprefix = \"/v2/b/\"\nformat = \"oci\"\nupstream = \"${UP}/v2/\"\nnamespace = \"Docker.io\"\n");
        assert!(Config::from_toml(&twice, "t", &env).is_err(), "one repository per namespace");
        let generic = "[[repository]]\nname = \"g\"\nprefix = \"/g/\"\nupstream = \"${UP}\"\nnamespace = \"x\"\n";
        assert!(Config::from_toml(generic, "t", &env).is_err(), "namespaces are for registries");
    }

    #[test]
    fn unset_upstream_disables_only_that_repository() {
        let text = r#"
            [[repository]]
            name = "a"
            prefix = "/a/"
            upstream = "${UP}"
            [[repository]]
            name = "b"
            prefix = "/b/"
            upstream = "${MISSING_B}"
        "#;
        let loaded = Config::from_toml(text, "t.toml", &env).unwrap();
        assert_eq!(loaded.config.repositories.len(), 1);
        assert_eq!(loaded.config.repositories[0].upstream, "http://127.0.0.1:9");
        assert_eq!(
            loaded.disabled,
            vec![DisabledRepository { name: "b".into(), variable: "MISSING_B".into() }]
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let bad_prefix = "[[repository]]\nname = \"a\"\nprefix = \"a/\"\nupstream = \"http://x\"\n";
        let err = Config::from_toml(bad_prefix, "f.toml", &env).unwrap_err().to_string();
        assert!(err.starts_with("f.toml: repository[0].prefix:"), "{err}");

        let bad_size = "[cache]\ndisk_bytes = \"lots\"\n";
        let err = Config::from_toml(bad_size, "f.toml", &env).unwrap_err().to_string();
        assert!(err.contains("f.toml") && err.contains("disk_bytes"), "{err}");

        let unknown = "listen = \"127.0.0.1:1\"\nbogus = 1\n";
        let err = Config::from_toml(unknown, "f.toml", &env).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");

        let bad_format = "[[repository]]\nname = \"a\"\nprefix = \"/a/\"\nformat = \"nope\"\nupstream = \"http://x\"\n";
        let err = Config::from_toml(bad_format, "f.toml", &env).unwrap_err().to_string();
        assert!(err.contains("format") || err.contains("nope"), "{err}");
    }
}
