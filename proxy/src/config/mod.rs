//! Hangar's configuration: one TOML file, `${VAR}` interpolation, and command-line overrides.
//!
//! The file is parsed into typed structs first, so a syntax or type error is reported by the TOML
//! parser with its line and key. Interpolation then runs on the few string fields that may carry
//! `${VAR}` ([`interpolate`]). A repository whose *upstream* names an unset variable is disabled
//! rather than fatal: a shared config lists every registry a company might mirror, and each
//! region turns on the ones it has credentials and network paths for. Last, [`Config::validate`]
//! checks what the types cannot. Every default is written once, in its struct's `Default`.
//!
//! One module per concern: [`auth`], [`cache`], [`fleet`] (and origin), [`repository`],
//! [`interpolate`], [`validate`]. This module imports nothing from the rest of the proxy, so everything else may
//! import it.

mod auth;
mod cache;
mod fleet;
mod interpolate;
mod repository;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_core::{ByteSize, FormatKind, HumanDuration};
use serde::Deserialize;

pub use auth::{
    parse_expiry, parse_network, parse_token_hash, pattern_matches, Action, AddressRule, AuthConfig, ClaimRule, GrantConfig, LimitsConfig, OidcConfig, TokenConfig, ANONYMOUS_ROLE, AUTHENTICATED_ROLE,
};
pub use cache::CacheConfig;
pub use fleet::{FleetSettings, OriginSettings, Secret};
pub use interpolate::{interpolate, InterpolationError};
pub use repository::{BreakerConfig, Credentials, FreshnessConfig, RepositoryConfig, TimeoutConfig};

/// A configuration problem, always naming the file (or `command line`) and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    /// The file is not valid TOML, or a value has the wrong type (the parser's message, with
    /// line and key).
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A value is not acceptable; `key` is its dotted path (`repository[2].upstream`).
    #[error("{file}: {key}: {message}")]
    Invalid { file: String, key: String, message: String },
}

/// The whole configuration of one proxy process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to (port 0 picks a free one).
    pub listen: String,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, purges, offline).
    pub admin_listen: String,
    /// PEM certificate chain for TLS on `listen` (with `tls_key`): clients then connect
    /// with `https://`, and no separate TLS terminator is needed. Unset: plain HTTP.
    pub tls_cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<String>,
    /// Bind `listen` and `admin_listen` with SO_REUSEPORT, so several processes can share
    /// a port and the kernel splits connections between them. Off by default: a second
    /// proxy on a port in use is then an error instead of a silent split.
    pub listen_reuseport: bool,
    /// One log line per request (target `access`): repository, method, path, status,
    /// cache result, bytes, upstream status and time, client address.
    pub access_log: bool,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// SO_SNDBUF of client connections; 0 leaves the kernel's autotuning. A fixed, modest
    /// buffer keeps in-flight data in CPU cache: see bench/README.md for the measurements.
    pub send_buffer_bytes: ByteSize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: HumanDuration,
    /// Limits on client connections: how many, how long idle, how long for headers.
    pub connections: ConnectionSettings,
    /// Never contact any upstream; serve whatever is cached (air-gapped or incident use).
    pub offline: bool,
    /// The memory and disk tiers.
    pub cache: CacheConfig,
    /// The regional origin service (hangar-origin). Unset: this proxy stands alone.
    pub origin: Option<OriginSettings>,
    /// Membership of a region's fleet and the metadata it shares.
    pub fleet: FleetSettings,
    /// Tokens and grants: who may do what (deny by default).
    pub auth: AuthConfig,
    /// The `[[repository]]` tables, in file order.
    #[serde(rename = "repository")]
    pub repositories: Vec<RepositoryConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            tls_cert: None,
            tls_key: None,
            listen_reuseport: false,
            access_log: true,
            threads: 1,
            send_buffer_bytes: ByteSize(512 << 10),
            shutdown_grace: HumanDuration(Duration::from_secs(5)),
            connections: ConnectionSettings::default(),
            offline: false,
            cache: CacheConfig::default(),
            origin: None,
            fleet: FleetSettings::default(),
            auth: AuthConfig::default(),
            repositories: Vec::new(),
        }
    }
}

/// `[connections]`: what one client may hold. See `connections.rs` for why each exists.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Client connections open at once; one more is answered 503 and closed. 0: a quarter of
    /// the process's open-file limit (at least 64), leaving the rest to the admin listener,
    /// upstream connections and cache files.
    pub max_clients: usize,
    /// A connection waiting this long for a request (its first, or its next) is closed.
    pub keepalive_timeout: HumanDuration,
    /// A request's headers must arrive whole within this, from their first byte.
    pub header_timeout: HumanDuration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings { max_clients: 0, keepalive_timeout: HumanDuration(Duration::from_secs(60)), header_timeout: HumanDuration(Duration::from_secs(20)) }
    }
}

/// The variable that disables repositories by name: `HANGAR_DISABLE=central,dockerhub`.
pub const DISABLE_VARIABLE: &str = "HANGAR_DISABLE";

/// A repository left out: its upstream names an unset variable, or [`DISABLE_VARIABLE`]
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledRepository {
    /// The repository's name.
    pub name: String,
    /// Its path prefix, normalised (`/pypi/`): requests below it are told why it is off.
    pub prefix: String,
    /// Its format, for listings.
    pub format: FormatKind,
    /// The variable to change to enable it: the unset one its upstream (or
    /// `files_upstream`) names, or [`DISABLE_VARIABLE`].
    pub variable: String,
}

impl DisabledRepository {
    /// Why it is off and how to turn it on, in words (`its upstream uses ${X}, which is not
    /// set: set X to enable it`).
    pub fn why(&self) -> String {
        if self.variable == DISABLE_VARIABLE {
            format!("{DISABLE_VARIABLE} lists it: remove it from {DISABLE_VARIABLE} to enable it")
        } else {
            format!("its upstream uses ${{{0}}}, which is not set: set {0} to enable it", self.variable)
        }
    }
}

/// A configuration after interpolation and validation, with what was disabled on the way.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// Interpolated and validated.
    pub config: Config,
    /// Repositories left out, for the operator to be told.
    pub disabled: Vec<DisabledRepository>,
}

impl Config {
    /// Read, interpolate and validate `path` against the process environment.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { file: file.clone(), error })?;
        Self::from_toml(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Parse `text` (named `file` in errors), resolving `${VAR}` through `env`.
    pub fn from_toml(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<LoadedConfig, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.to_string(), message: e.to_string().trim_end().replace('\n', "\n  ") })?;
        let disabled = interpolate::interpolate_config(&mut config, file, env)?;
        config.validate(file)?;
        Ok(LoadedConfig { config, disabled })
    }

    /// The cache directory as a path.
    pub fn cache_dir(&self) -> PathBuf {
        PathBuf::from(&self.cache.dir)
    }
}

/// `/foo`, `/foo/` both mount at `/foo/`; `/` stays `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

#[cfg(test)]
mod tests;
