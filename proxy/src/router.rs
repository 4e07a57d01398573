//! Routing a request path to one of the mounted repositories, and the cache key of what it
//! resolves to.

use std::sync::Arc;

use crate::config::DisabledRepository;
use crate::repository::Repository;

/// The cache key of `key_path` (what the format resolved the request to, query included) in
/// `repo`.
///
/// The primary key is the repository name, a NUL (which names cannot contain) and the path,
/// hashed once with BLAKE3: pingora would otherwise re-hash it (BLAKE2) every time the cache,
/// the lock and eviction ask for it.
pub fn cache_key(repo: &str, key_path: &str) -> pingora::cache::CacheKey {
    let mut primary = Vec::with_capacity(repo.len() + 1 + key_path.len());
    primary.extend_from_slice(repo.as_bytes());
    primary.push(0);
    primary.extend_from_slice(key_path.as_bytes());
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&blake3::hash(&primary).as_bytes()[..16]);
    let mut key = pingora::cache::CacheKey::new(primary, repo.to_string());
    key.set_primary_bin_override(hash);
    key
}

/// Why a request has no repository.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("no repository is mounted at this path")]
    Unmounted,
    #[error("registry '{0}' is not mirrored here")]
    UnknownNamespace(String),
    /// The path is a disabled repository's: `why` says what would enable it.
    #[error("repository '{name}' is disabled: {why}")]
    Disabled { name: String, why: String },
}

/// The (percent-decoded) value of `name` in a query string.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Longest-prefix routing over the enabled repositories.
#[derive(Default)]
pub struct Router {
    repos: Vec<Arc<Repository>>,
    /// Repositories the config names but the environment left out, longest prefix first.
    disabled: Vec<DisabledRepository>,
}

impl Router {
    /// Route over `repos` (longest prefix first).
    pub fn new(mut repos: Vec<Repository>) -> Self {
        repos.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router { repos: repos.into_iter().map(Arc::new).collect(), disabled: Vec::new() }
    }

    /// Answer paths under each of `disabled`'s prefixes with why it is off (when no enabled
    /// repository has a longer prefix there).
    pub fn with_disabled(mut self, mut disabled: Vec<DisabledRepository>) -> Self {
        disabled.sort_by_key(|d| std::cmp::Reverse(d.prefix.len()));
        self.disabled = disabled;
        self
    }

    /// Every repository, longest prefix first.
    pub fn repositories(&self) -> &[Arc<Repository>] {
        &self.repos
    }

    /// The repository called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Repository>> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The registry root (`/v2/`) whose token endpoint (`/v2/token`) `path` is, when a
    /// registry repository is mounted.
    pub fn registry_token_root(&self, path: &str) -> Option<&'static str> {
        self.repos.iter().filter_map(|r| r.format.registry_root()).find(|root| path.strip_prefix(root) == Some("token"))
    }

    /// The repository serving `path` and the rest of the path below its prefix.
    ///
    /// Below a registry root (OCI's `/v2/`), containerd names the registry it wants in
    /// `?ns=`: that picks the repository, and a registry not mirrored here is not answered by
    /// another one's images. The root itself (the version check) is answered by the first
    /// registry repository when none is mounted there.
    pub fn route<'a>(&self, path: &'a str, query: Option<&str>) -> Result<(&Arc<Repository>, &'a str), NoRoute> {
        let routed = self.route_enabled(path, query);
        let mounted = match &routed {
            Ok((repo, _)) => repo.prefix.len(),
            Err(_) => 0,
        };
        let under = |prefix: &str| path.starts_with(prefix) || path.len() + 1 == prefix.len() && prefix.starts_with(path);
        match self.disabled.iter().find(|d| d.prefix.len() > mounted && under(&d.prefix)) {
            Some(d) => Err(NoRoute::Disabled { name: d.name.clone(), why: d.why() }),
            None => routed,
        }
    }

    fn route_enabled<'a>(&self, path: &'a str, query: Option<&str>) -> Result<(&Arc<Repository>, &'a str), NoRoute> {
        if let Some(ns) = query_param(query, "ns") {
            for repo in &self.repos {
                let Some(root) = repo.format.registry_root() else { continue };
                if let Some(rest) = path.strip_prefix(root).or_else(|| (path.len() + 1 == root.len() && root.starts_with(path)).then_some("")) {
                    return match self.repos.iter().find(|r| r.namespace.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(&ns))) {
                        Some(repo) => Ok((repo, rest)),
                        None => Err(NoRoute::UnknownNamespace(ns)),
                    };
                }
            }
        }
        if let Some(found) = self.by_prefix(path) {
            return Ok(found);
        }
        self.repos
            .iter()
            .find(|r| r.format.registry_root().is_some_and(|root| path == root || path.len() + 1 == root.len() && root.starts_with(path)))
            .map(|r| (r, ""))
            .ok_or(NoRoute::Unmounted)
    }

    fn by_prefix<'a>(&self, path: &'a str) -> Option<(&Arc<Repository>, &'a str)> {
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
    use crate::config::RepositoryConfig;
    use crate::format::FormatKind;
    use crate::metrics::Metrics;

    fn repo(name: &str, prefix: &str) -> Repository {
        Repository::from_config(&RepositoryConfig::new(name, prefix, FormatKind::Generic, "http://127.0.0.1:1/"), &Metrics::new(), None).unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Router::new(vec![repo("root", "/"), repo("rel", "/releases"), repo("deep", "/releases/v2/")]);
        let name = |p| r.route(p, None).ok().map(|(r, rest)| (r.name.clone(), rest.to_string()));
        assert_eq!(name("/releases/a"), Some(("rel".into(), "a".into())));
        assert_eq!(name("/releases"), Some(("rel".into(), "".into())));
        assert_eq!(name("/releases/v2/x"), Some(("deep".into(), "x".into())));
        assert_eq!(name("/other"), Some(("root".into(), "other".into())));
        let none = Router::new(vec![repo("rel", "/releases/")]);
        assert_eq!(none.route("/other", None).err(), Some(NoRoute::Unmounted));
        let off = DisabledRepository { name: "pypi".into(), prefix: "/pypi/".into(), format: Default::default(), variable: "HANGAR_PYPI_UPSTREAM".into() };
        let r = Router::new(vec![repo("root", "/")]).with_disabled(vec![off]);
        let err = r.route("/pypi/simple/x/", None).err().unwrap().to_string();
        assert!(err.contains("'pypi' is disabled") && err.contains("set HANGAR_PYPI_UPSTREAM"), "{err}");
        assert_eq!(r.route("/other", None).ok().map(|(r, _)| r.name.clone()), Some("root".into()));
    }

    #[test]
    fn registries_are_chosen_by_namespace_and_the_root_is_always_answered() {
        let oci = |name: &str, prefix: &str, ns: Option<&str>| {
            let mut cfg = RepositoryConfig::new(name, prefix, FormatKind::Oci, "http://127.0.0.1:1/v2/");
            cfg.namespace = ns.map(str::to_string);
            Repository::from_config(&cfg, &Metrics::new(), None).unwrap()
        };
        let r = Router::new(vec![oci("hub", "/v2/hub/", Some("docker.io")), oci("ghcr", "/v2/ghcr/", Some("ghcr.io")), repo("files", "/files/")]);
        let name = |p, q| r.route(p, q).map(|(r, rest)| (r.name.clone(), rest.to_string()));
        assert_eq!(name("/v2/a/b/manifests/1", Some("ns=ghcr.io")), Ok(("ghcr".into(), "a/b/manifests/1".into())));
        assert_eq!(name("/v2/a/manifests/1", Some("x=1&ns=Docker.io")), Ok(("hub".into(), "a/manifests/1".into())));
        assert_eq!(name("/v2/ghcr/a/blobs/x", None), Ok(("ghcr".into(), "a/blobs/x".into())));
        assert_eq!(name("/v2/a/manifests/1", Some("ns=quay.io")), Err(NoRoute::UnknownNamespace("quay.io".into())));
        // The version check is answered locally by whichever registry repository gets it.
        assert_eq!(name("/v2/", None).map(|(_, rest)| rest), Ok("".into()));
        assert_eq!(name("/v2", None).map(|(_, rest)| rest), Ok("".into()));
        assert_eq!(name("/v2/a/manifests/1", None), Err(NoRoute::Unmounted));
        assert_eq!(name("/files/x", Some("ns=ghcr.io")), Ok(("files".into(), "x".into())));
    }
}
