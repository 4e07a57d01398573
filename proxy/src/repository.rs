//! One mounted repository, ready to serve: its config compiled, its format built, and the state
//! it keeps while running (learned digests, pointers, upstream tokens, its breaker).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use hangar_core::{PathClass, UpstreamUrl};

use crate::breaker::Breaker;
use crate::config::{normalize_prefix, RepositoryConfig, TimeoutConfig};
use crate::digest_index::DigestIndex;
use crate::format::{self, Format, Upstreams};
use crate::freshness::FreshnessPolicy;
use crate::metrics::{Metrics, RepoMetrics};
use crate::pointers::PointerIndex;
use crate::upstream_auth::UpstreamAuth;

/// Learned artefact digests kept per repository.
const DIGESTS: usize = 200_000;
/// Pointers (tags) kept per repository.
const POINTERS: usize = 100_000;
/// Body-stated expiries kept per repository; past this the map starts over.
const EXPIRIES: usize = 10_000;

/// A repository config that cannot be served, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RepositoryError {
    /// The key below `repository[i]` (`upstream`, `files_upstream`, `freshness`, ...).
    pub key: &'static str,
    pub message: String,
}

/// One mounted repository, ready to serve.
pub struct Repository {
    pub name: String,
    /// Normalised to end with `/`.
    pub prefix: String,
    pub upstream: UpstreamUrl,
    /// Where artefacts are downloaded from, for formats that keep them on another host.
    pub files: Option<UpstreamUrl>,
    pub public_url: Option<String>,
    pub max_document_bytes: usize,
    /// Hosts redirects may lead to (`None`: any public host).
    pub redirect_hosts: Option<Vec<String>>,
    pub allow_private_redirects: bool,
    /// The methods the operator allows (`None`: whatever the format allows).
    pub methods: Option<Vec<http::Method>>,
    /// Artefact digests learned from the documents this repository served.
    pub digests: DigestIndex,
    /// Expiries read from bodies that state one (apt's Valid-Until), by cache key path.
    expiries: parking_lot::Mutex<HashMap<String, SystemTime>>,
    /// Tokens and credentials for the upstream's challenges.
    pub auth: UpstreamAuth,
    /// The registry name containerd's `?ns=` uses for this repository.
    pub namespace: Option<String>,
    /// What mutable references (tags) pointed to when last asked.
    pub pointers: PointerIndex,
    pub timeouts: TimeoutConfig,
    pub format: Arc<dyn Format>,
    pub freshness: FreshnessPolicy,
    /// Its counters, resolved once; the metrics sink counts every request with them.
    pub metrics: RepoMetrics,
    pub breaker: Arc<Breaker>,
    /// Whether files derived from stored artefacts are served and announced (`derive_files`).
    pub derive_files: bool,
    /// Whether `https` upstreams are offered HTTP/2 (`upstream_http2`).
    pub upstream_http2: bool,
}

impl Repository {
    /// Build a repository from its (validated) config; the format checks what only it knows.
    /// `pointer_journal` is where the format's pointers are journaled, if it keeps them.
    pub fn from_config(cfg: &RepositoryConfig, metrics: &Metrics, pointer_journal: Option<&std::path::Path>) -> Result<Self, RepositoryError> {
        let err = |key: &'static str| move |e: &dyn std::fmt::Display| RepositoryError { key, message: e.to_string() };
        let upstream = UpstreamUrl::parse(&cfg.upstream).map_err(|e| err("upstream")(&e))?;
        let upstreams = Upstreams { primary: upstream.clone(), files: cfg.files_upstream.clone(), pins: cfg.pins.clone(), namespace: cfg.namespace.clone() };
        let format = format::build(cfg.format, &upstreams).map_err(|e| RepositoryError { key: e.config_key(), message: e.to_string() })?;
        let mut freshness_cfg = cfg.freshness.clone();
        freshness_cfg.honor_request_directives.get_or_insert(format.honors_request_directives());
        if freshness_cfg.metadata_ttl.is_none() {
            freshness_cfg.metadata_ttl = format.default_metadata_ttl().map(hangar_core::HumanDuration);
        }
        let freshness = FreshnessPolicy::from_config(&freshness_cfg).map_err(|e| err("freshness")(&e))?;
        let pointers = match pointer_journal.filter(|_| format.journals_pointers()) {
            Some(path) => PointerIndex::with_journal(POINTERS, path).map_err(|e| err("format")(&format!("pointer journal {}: {e}", path.display())))?,
            None => PointerIndex::new(POINTERS),
        };
        // Formats with a second host say what it is; for the others a configured
        // `files_upstream` still counts as the repository's own (redirects to it keep credentials).
        let files = match (format.files_upstream(), cfg.files_upstream.as_deref()) {
            (Some(f), _) => Some(f),
            (None, Some(f)) => Some(UpstreamUrl::parse(f).map_err(|e| err("files_upstream")(&e))?),
            (None, None) => None,
        };
        let repo_metrics = RepoMetrics::new(metrics, &cfg.name);
        let breaker = Breaker::new(&cfg.name, &cfg.breaker, repo_metrics.breaker_state.clone(), repo_metrics.breaker_trips.clone());
        Ok(Repository {
            name: cfg.name.clone(),
            prefix: normalize_prefix(&cfg.prefix),
            upstream,
            files,
            public_url: cfg.public_url.as_ref().map(|u| if u.ends_with('/') { u.clone() } else { format!("{u}/") }),
            max_document_bytes: cfg.max_document_bytes.0 as usize,
            redirect_hosts: cfg.redirect_hosts.clone(),
            allow_private_redirects: cfg.allow_private_redirects,
            methods: cfg.methods.as_ref().map(|ms| ms.iter().filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok()).collect()),
            digests: DigestIndex::new(DIGESTS),
            expiries: Default::default(),
            auth: UpstreamAuth::new(cfg.token_realms.clone(), cfg.credentials.clone()),
            namespace: cfg.namespace.as_ref().map(|n| n.to_ascii_lowercase()),
            pointers,
            timeouts: cfg.timeouts.clone(),
            format,
            freshness,
            metrics: repo_metrics,
            breaker: Arc::new(breaker),
            derive_files: cfg.derive_files,
            upstream_http2: cfg.upstream_http2,
        })
    }

    /// Whether the repository answers `method` at `path` (below its prefix): its format allows
    /// it and the operator does not forbid it.
    pub fn allows(&self, method: &http::Method, path: &str) -> bool {
        self.format.allows(method, path) && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }

    /// Whether an upstream redirect may lead to `host` (before its address is checked).
    pub fn redirect_host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.redirect_hosts.as_ref().is_none_or(|allowed| {
            allowed.iter().any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{}", suffix.to_ascii_lowercase())),
                None => host == pattern.to_ascii_lowercase(),
            })
        })
    }

    /// Whether `url` is one of this repository's own upstreams (the registry or its file host).
    pub fn is_own_upstream(&self, url: &UpstreamUrl) -> bool {
        url.same_origin(&self.upstream) || self.files.as_ref().is_some_and(|f| url.same_origin(f))
    }

    /// What `key_path` holds: the repository's patterns first, then the format's knowledge.
    pub fn classify(&self, key_path: &str, format_class: PathClass) -> PathClass {
        let path = key_path.split('?').next().unwrap_or(key_path);
        self.freshness.configured_class(&format!("/{path}")).unwrap_or(format_class)
    }

    /// Remember the expiry a body stated for `key_path`.
    pub fn remember_expiry(&self, key_path: &str, until: SystemTime) {
        let mut expiries = self.expiries.lock();
        if expiries.len() > EXPIRIES {
            expiries.clear();
        }
        expiries.insert(key_path.to_string(), until);
    }

    /// Whether a body stated an expiry for `key_path` that has passed.
    pub fn has_expired(&self, key_path: &str) -> bool {
        self.expiries.lock().get(key_path).is_some_and(|t| *t < SystemTime::now())
    }
}
