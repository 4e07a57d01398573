//! Semantic checks the TOML types cannot express, each naming the key at fault. Format-specific
//! rules (a namespace only where the format has one, a `files_upstream` where it needs one) are
//! checked when the repositories are built, which `check-config` does too.

use std::collections::HashSet;
use std::net::SocketAddr;

use hangar_core::wire::valid_repository_name;
use hangar_core::{PathPattern, UpstreamUrl};

use super::{normalize_prefix, Config, ConfigError};

/// Shortest fleet secret accepted.
const MIN_SECRET_LEN: usize = 16;

impl Config {
    /// Check everything that can be checked without building the repositories.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { file: file.to_string(), key, message };
        for (key, addr) in [("listen", &self.listen), ("admin_listen", &self.admin_listen)] {
            addr.parse::<SocketAddr>().map_err(|_| invalid(key.into(), format!("'{addr}' is not an IP:port socket address")))?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key".into(), "required with tls_cert: the PEM private key of the listener's certificate".into())),
            (None, Some(_)) => return Err(invalid("tls_cert".into(), "required with tls_key: the PEM certificate chain the listener presents".into())),
            (Some(_), Some(_)) if self.fleet.is_shared() => {
                return Err(invalid("tls_cert".into(), "not with a fleet: members reach each other at their listen address over plain HTTP (put a TLS terminator in front of a fleet)".into()));
            }
            _ => {}
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
            return Err(invalid("cache.memory_max_object_bytes".into(), "must be at most 64MiB (the memory tier is for small hot objects)".into()));
        }
        for (key, d) in [("connections.keepalive_timeout", &self.connections.keepalive_timeout), ("connections.header_timeout", &self.connections.header_timeout)] {
            if d.0 < std::time::Duration::from_millis(100) {
                return Err(invalid(key.into(), format!("{:?} would close connections before a client can use them: at least 100ms", d.0)));
            }
        }
        self.validate_fleet(file)?;
        self.auth.validate(&|key, message| invalid(key, message))?;
        if let Some(origin) = &self.origin {
            if origin.url.is_empty() {
                return Err(invalid("origin.url".into(), "required: the base URL of hangar-origin, as http://host:port/".into()));
            }
            let url = UpstreamUrl::parse(&origin.url).map_err(|e| invalid("origin.url".into(), e.to_string()))?;
            if url.tls {
                return Err(invalid("origin.url".into(), format!("'{}': origin is reached over http:// (TLS to origin is not supported)", origin.url)));
            }
            if self.fleet.secret.is_none() {
                return Err(invalid("fleet.secret".into(), "required with [origin]: origin serves and stores objects only for requests signed with it (its fleet_secret)".into()));
            }
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut namespaces = HashSet::new();
        for (i, repo) in self.repositories.iter().enumerate() {
            let key = |field: &str| format!("repository[{i}].{field}");
            // Errors about a repository name it, not only its index.
            let invalid = |key: String, message: String| ConfigError::Invalid { file: file.to_string(), key, message: format!("{message} (repository '{}')", repo.name) };
            if !valid_repository_name(&repo.name) {
                return Err(invalid(key("name"), format!("'{}' must be 1 to 64 letters, digits, '-', '_' and '.'", repo.name)));
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
            if repo.upstream.is_empty() {
                return Err(invalid(key("upstream"), "required: the base URL requests are forwarded to".into()));
            }
            UpstreamUrl::parse(&repo.upstream).map_err(|e| invalid(key("upstream"), e.to_string()))?;
            if let Some(ns) = &repo.namespace {
                if ns.is_empty() || !namespaces.insert(ns.to_ascii_lowercase()) {
                    return Err(invalid(key("namespace"), format!("'{ns}' is empty or used by two repositories")));
                }
            }
            if http::HeaderName::from_bytes(repo.freshness.targeted_field.as_bytes()).is_err() {
                return Err(invalid(key("freshness.targeted_field"), format!("'{}' is not a header field name", repo.freshness.targeted_field)));
            }
            for (j, m) in repo.methods.iter().flatten().enumerate() {
                if http::Method::from_bytes(m.as_bytes()).is_err() || m.is_empty() {
                    return Err(invalid(key(&format!("methods[{j}]")), format!("'{m}' is not an HTTP method")));
                }
            }
            let b = &repo.breaker;
            if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
                return Err(invalid(key("breaker.failure_rate"), format!("{} must be above 0 and at most 1 (0.5: half the requests)", b.failure_rate)));
            }
            if b.min_requests == 0 || b.min_paths == 0 || b.window.0.is_zero() {
                return Err(invalid(key("breaker"), "min_requests, min_paths and window must be above 0".into()));
            }
            for (field, patterns) in [("immutable", &repo.freshness.immutable), ("metadata", &repo.freshness.metadata)] {
                for (j, pattern) in patterns.iter().enumerate() {
                    PathPattern::new(pattern).map_err(|e| invalid(key(&format!("freshness.{field}[{j}]")), e))?;
                }
            }
        }
        Ok(())
    }

    /// Check how this proxy is known to its fleet. Only the final config can say (the listen
    /// address may come from a flag), so this runs when a proxy is built, after
    /// [`Config::validate`]: a member must be reachable at a specific address, and a fixed
    /// member list must name it.
    pub fn validate_identity(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { file: file.to_string(), key: key.to_string(), message };
        let fleet = &self.fleet;
        let advertise = match &fleet.advertise {
            Some(a) => a.parse::<SocketAddr>().map_err(|_| invalid("fleet.advertise", format!("'{a}' is not an IP:port socket address")))?,
            None => self.listen.parse::<SocketAddr>().map_err(|_| invalid("listen", format!("'{}' is not an IP:port socket address", self.listen)))?,
        };
        if fleet.is_shared() && advertise.ip().is_unspecified() {
            return Err(invalid("fleet.advertise", format!("required when listening on {}: the address the other proxies reach this one at", self.listen)));
        }
        if !fleet.members.is_empty() && !fleet.members.iter().any(|m| m.parse::<SocketAddr>().ok() == Some(advertise)) {
            return Err(invalid(
                "fleet.members",
                format!("this proxy ({advertise}) is not in the list: every member needs the same list, itself included (set fleet.advertise to the address listed)"),
            ));
        }
        Ok(())
    }

    fn validate_fleet(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { file: file.to_string(), key: key.to_string(), message };
        let fleet = &self.fleet;
        if fleet.redis.is_some() && !fleet.members.is_empty() {
            return Err(invalid("fleet.members", "a fleet's members come from Redis or from this list, not both".into()));
        }
        for (i, m) in fleet.members.iter().enumerate() {
            m.parse::<SocketAddr>().map_err(|_| invalid(&format!("fleet.members[{i}]"), format!("'{m}' is not an IP:port socket address")))?;
        }
        if let Some(a) = &fleet.advertise {
            a.parse::<SocketAddr>().map_err(|_| invalid("fleet.advertise", format!("'{a}' is not an IP:port socket address")))?;
        }
        match &fleet.secret {
            None if fleet.is_shared() => Err(invalid("fleet.secret", "required with fleet.redis or fleet.members: members sign their hops to each other with it, so a client cannot pose as one".into())),
            Some(s) if s.0.len() < MIN_SECRET_LEN => Err(invalid("fleet.secret", format!("must be at least {MIN_SECRET_LEN} characters"))),
            _ => Ok(()),
        }
    }
}
