//! Repositories and the routing of a request path to one of them.

use std::sync::Arc;

use crate::breaker::Breaker;
use crate::config::{normalize_prefix, RepositoryConfig, TimeoutConfig};
use crate::digest::DigestIndex;
use crate::format::{Format, Upstreams};
use crate::freshness::{FreshnessPolicy, PathClass};
use crate::metrics::{Metrics, RepoMetrics};
use crate::upstream::UpstreamUrl;

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
    /// Artefact digests learned from the documents this repository served.
    pub digests: DigestIndex,
    /// Expiries read from bodies that state one (apt's Valid-Until), by cache key path.
    pub expiries: parking_lot::Mutex<std::collections::HashMap<String, std::time::SystemTime>>,
    /// Upstream bearer tokens by challenge (service and scope), with their expiry.
    pub tokens: parking_lot::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    pub token_realms: Vec<String>,
    pub timeouts: TimeoutConfig,
    pub format: Arc<dyn Format>,
    pub freshness: FreshnessPolicy,
    /// Counters resolved once, so the per-request path does no label lookups.
    pub metrics: RepoMetrics,
    pub breaker: Breaker,
}

impl Repository {
    pub fn from_config(cfg: &RepositoryConfig, metrics: &Metrics) -> Result<Self, String> {
        let upstream = UpstreamUrl::parse(&cfg.upstream).map_err(|e| e.to_string())?;
        let mut freshness_cfg = cfg.freshness.clone();
        if freshness_cfg.honor_request_directives.is_none() {
            freshness_cfg.honor_request_directives = Some(cfg.format == crate::format::FormatKind::Generic);
        }
        if freshness_cfg.metadata_ttl.is_none() {
            freshness_cfg.metadata_ttl = cfg.format.default_metadata_ttl().map(crate::units::HumanDuration);
        }
        let freshness = FreshnessPolicy::from_config(&freshness_cfg)?;
        let files = match cfg.files_upstream.as_deref() {
            Some(f) => {
                let (origin, _) = crate::upstream::split_origin(f).ok_or_else(|| format!("files_upstream '{f}' is not a URL"))?;
                // Cargo's is a `dl` template whose whole path the format fills in; PyPI's is a
                // base URL below which file paths go.
                let base = if cfg.format == crate::format::FormatKind::Cargo { origin } else { f.to_string() };
                Some(UpstreamUrl::parse(&base).map_err(|e| e.to_string())?)
            }
            None if cfg.format.needs_files_upstream() => return Err(format!("format {} needs files_upstream", cfg.format.as_str())),
            None => None,
        };
        let format = cfg
            .format
            .build(&Upstreams { primary: upstream.clone(), files: cfg.files_upstream.clone(), pins: cfg.pins.clone() })
            .map_err(|e| e.to_string())?;
        Ok(Repository {
            name: cfg.name.clone(),
            prefix: normalize_prefix(&cfg.prefix),
            upstream,
            files,
            public_url: cfg.public_url.as_ref().map(|u| if u.ends_with('/') { u.clone() } else { format!("{u}/") }),
            max_document_bytes: cfg.max_document_bytes.0 as usize,
            redirect_hosts: cfg.redirect_hosts.clone(),
            allow_private_redirects: cfg.allow_private_redirects,
            digests: DigestIndex::new(200_000),
            expiries: Default::default(),
            tokens: Default::default(),
            token_realms: cfg.token_realms.clone(),
            timeouts: cfg.timeouts.clone(),
            format,
            freshness,
            metrics: RepoMetrics::new(metrics, &cfg.name),
            breaker: Breaker::new(cfg.breaker.failures, cfg.breaker.cooldown.0),
        })
    }
}

impl Repository {
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

    /// What `key_path` holds: the repository's patterns first, then the format's knowledge.
    pub fn classify(&self, key_path: &str, format_class: PathClass) -> PathClass {
        let path = key_path.split('?').next().unwrap_or(key_path);
        self.freshness.configured_class(&format!("/{path}")).unwrap_or(format_class)
    }
}

/// The cache key of `upstream_path` (path and query as sent upstream) in `repo`.
///
/// The primary key is the repository name, a NUL (which names cannot contain) and the path,
/// hashed once with BLAKE3: pingora would otherwise re-hash it (BLAKE2) every time the cache,
/// the lock and eviction ask for it.
pub fn cache_key(repo: &str, upstream_path: &str) -> pingora::cache::CacheKey {
    let mut primary = Vec::with_capacity(repo.len() + 1 + upstream_path.len());
    primary.extend_from_slice(repo.as_bytes());
    primary.push(0);
    primary.extend_from_slice(upstream_path.as_bytes());
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&blake3::hash(&primary).as_bytes()[..16]);
    let mut key = pingora::cache::CacheKey::new(primary, repo.to_string());
    key.set_primary_bin_override(hash);
    key
}

/// Longest-prefix routing over the enabled repositories.
#[derive(Default)]
pub struct Router {
    repos: Vec<Arc<Repository>>,
}

impl Router {
    pub fn new(mut repos: Vec<Repository>) -> Self {
        repos.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router {
            repos: repos.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn repositories(&self) -> &[Arc<Repository>] {
        &self.repos
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Repository>> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The repository serving `path` and the rest of the path below its prefix.
    pub fn route<'a>(&self, path: &'a str) -> Option<(&Arc<Repository>, &'a str)> {
        self.repos.iter().find_map(|repo| {
            if let Some(rest) = path.strip_prefix(repo.prefix.as_str()) {
                Some((repo, rest))
            } else if path.len() + 1 == repo.prefix.len() && repo.prefix.starts_with(path) {
                // `/releases` for a repository mounted at `/releases/`
                Some((repo, ""))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FormatKind;

    fn repo(name: &str, prefix: &str) -> Repository {
        Repository::from_config(&RepositoryConfig::new(name, prefix, FormatKind::Generic, "http://127.0.0.1:1/"), &Metrics::new())
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Router::new(vec![repo("root", "/"), repo("rel", "/releases"), repo("deep", "/releases/v2/")]);
        let name = |p| r.route(p).map(|(r, rest)| (r.name.clone(), rest.to_string()));
        assert_eq!(name("/releases/a"), Some(("rel".into(), "a".into())));
        assert_eq!(name("/releases"), Some(("rel".into(), "".into())));
        assert_eq!(name("/releases/v2/x"), Some(("deep".into(), "x".into())));
        assert_eq!(name("/other"), Some(("root".into(), "other".into())));
        let none = Router::new(vec![repo("rel", "/releases/")]);
        assert!(none.route("/other").is_none());
    }
}
