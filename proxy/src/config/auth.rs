//! `[auth]`: who may do what. Deny by default: a request is served only when a grant covers its
//! principal, its action and its repository; a config without grants serves nobody.
//!
//! ```toml
//! [auth]
//! open_admin_paths = ["/metrics", "/healthz", "/readyz"]
//!
//! [[auth.token]]                 # `hangar-proxy token --name ci` prints a new one
//! name = "ci"
//! owner = "platform-team"
//! hash = "sha256:<64 hex digits>" # of the token; the token itself is never stored
//! roles = ["ci"]
//! expires = "2027-06-01T00:00:00Z"
//!
//! [[auth.grant]]
//! role = "anonymous"             # or "authenticated" (any valid token), or a token's role
//! repositories = ["*"]           # names, or "*" for every repository
//! actions = ["read"]             # read, publish, delete, admin
//! ```

use serde::Deserialize;

/// The role every request without credentials has.
pub const ANONYMOUS_ROLE: &str = "anonymous";
/// The role every request with a valid token has, besides the token's own.
pub const AUTHENTICATED_ROLE: &str = "authenticated";

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Admin-listener paths served without a credential (exact paths). Everything else there
    /// (purges, the offline switch, the object index) needs the `admin` action.
    pub open_admin_paths: Vec<String>,
    /// API tokens, by the hash of their secret.
    #[serde(rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// What each role may do where.
    #[serde(rename = "grant")]
    pub grants: Vec<GrantConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { open_admin_paths: vec!["/metrics".into(), "/healthz".into(), "/readyz".into()], tokens: Vec::new(), grants: Vec::new() }
    }
}

/// One `[[auth.token]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Unique; what error messages (403s) call it.
    pub name: String,
    /// Who is answerable for it (a person or team), for reviews.
    #[serde(default)]
    pub owner: String,
    /// `sha256:<hex>` of the token's secret (`hangar-proxy token` prints it).
    pub hash: String,
    /// The roles it carries; grants name roles.
    pub roles: Vec<String>,
    /// RFC 3339 instant after which it is refused; unset, it does not expire.
    #[serde(default)]
    pub expires: Option<String>,
}

/// One `[[auth.grant]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// [`ANONYMOUS_ROLE`], [`AUTHENTICATED_ROLE`], or a role tokens carry.
    pub role: String,
    /// Repository names, or `"*"` for all.
    pub repositories: Vec<String>,
    /// `read`, `publish`, `delete`, `admin`.
    pub actions: Vec<Action>,
}

/// What a request does. Every request to a mirror is a `read` (what it forwards upstream
/// included); `admin` is the admin listener's purges, offline switch and object index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Publish,
    Delete,
    Admin,
}

impl Action {
    /// Its name in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Publish => "publish",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }
}

/// The 32-byte SHA-256 a token's `hash` names, or why it does not.
pub fn parse_token_hash(hash: &str) -> Result<[u8; 32], String> {
    let hex = hash.strip_prefix("sha256:").ok_or_else(|| format!("'{hash}' is not 'sha256:<64 hex digits>' (hangar-proxy token prints one)"))?;
    let bytes = hex::decode(hex).map_err(|_| format!("'{hash}' is not 'sha256:<64 hex digits>'"))?;
    bytes.try_into().map_err(|_| format!("'{hash}' is not 'sha256:<64 hex digits>'"))
}

/// The instant an `expires` names, as seconds since the Unix epoch.
pub fn parse_expiry(expires: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(expires).map(|t| t.timestamp()).map_err(|e| format!("'{expires}' is not an RFC 3339 time like 2027-06-01T00:00:00Z: {e}"))
}

impl AuthConfig {
    /// Check tokens and grants; errors name the key (`auth.token[1].hash`).
    pub(super) fn validate(&self, invalid: &dyn Fn(String, String) -> super::ConfigError) -> Result<(), super::ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("auth.token[{i}].{field}");
            if t.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(key("name"), format!("'{}' names two tokens", t.name)));
            }
            let hash = parse_token_hash(&t.hash).map_err(|m| invalid(key("hash"), m))?;
            if !hashes.insert(hash) {
                return Err(invalid(key("hash"), "the same token is configured twice".into()));
            }
            if t.roles.is_empty() || t.roles.iter().any(|r| r.trim().is_empty()) {
                return Err(invalid(key("roles"), "at least one role, none empty: grants name roles".into()));
            }
            if t.roles.iter().any(|r| r == ANONYMOUS_ROLE) {
                return Err(invalid(key("roles"), format!("'{ANONYMOUS_ROLE}' is the role of requests without a token")));
            }
            if let Some(e) = &t.expires {
                parse_expiry(e).map_err(|m| invalid(key("expires"), m))?;
            }
        }
        for (i, g) in self.grants.iter().enumerate() {
            let key = |field: &str| format!("auth.grant[{i}].{field}");
            if g.role.trim().is_empty() {
                return Err(invalid(key("role"), "must not be empty".into()));
            }
            if g.repositories.is_empty() {
                return Err(invalid(key("repositories"), "names no repository: give names, or \"*\" for all".into()));
            }
            if g.actions.is_empty() {
                return Err(invalid(key("actions"), "names no action: read, publish, delete or admin".into()));
            }
        }
        for p in &self.open_admin_paths {
            if !p.starts_with('/') {
                return Err(invalid("auth.open_admin_paths".into(), format!("'{p}' is not a path (it starts with '/')")));
            }
        }
        Ok(())
    }
}
