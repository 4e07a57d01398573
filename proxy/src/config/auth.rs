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
//! packages = ["@acme/*"]         # optional: only these package names (`*` matches any run)
//!
//! [[auth.oidc]]                  # CI workload identity: JWTs from this issuer
//! issuer = "${CI_OIDC_ISSUER}"   # must equal the token's `iss`
//! audience = "hangar"            # must be in the token's `aud`
//! # jwks_url = "..."             # default: the issuer's OpenID discovery document names it
//! [[auth.oidc.rule]]             # every claim listed must match (`*` matches any run)
//! claims = { repository = "acme/*", ref = "refs/heads/main" }
//! roles = ["publisher"]
//!
//! [auth.limits]                  # requests per second; 0 or absent: no limit
//! principal_reads_per_second = 200
//! address_writes_per_second = 20
//!
//! [[auth.addresses]]             # checked before credentials
//! repositories = ["internal"]
//! allow = ["10.0.0.0/8"]
//! block = ["10.9.0.0/16"]
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
    /// OpenID Connect issuers whose JWTs are credentials (CI workload identity).
    pub oidc: Vec<OidcConfig>,
    /// Request-rate limits per principal and per client address.
    pub limits: LimitsConfig,
    /// Client addresses allowed or blocked, per repository.
    #[serde(rename = "addresses")]
    pub addresses: Vec<AddressRule>,
    /// Where the audit log's daily NDJSON files go; unset, `<cache.dir>/audit`. Put it where
    /// it is kept (and backed up): it is a record, not a cache.
    pub audit_dir: Option<String>,
}

/// `[auth.limits]`: requests per second, each budget on its own; 0 (the default) is no limit.
/// A request over a budget is answered 429 with `Retry-After`. Reads and writes are the
/// actions of the grants (`read`; `publish` and `delete`). Per principal: each token or CI
/// workload by its name (anonymous requests have only the address budget; the bootstrap
/// credential has none). Per address: each client IP, whoever it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub principal_reads_per_second: u32,
    pub principal_writes_per_second: u32,
    pub address_reads_per_second: u32,
    pub address_writes_per_second: u32,
}

/// One `[[auth.addresses]]`: which client addresses may reach some repositories, checked
/// before credentials (a blocked address is refused whoever it claims to be).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRule {
    /// Repository names, or `"*"` for all.
    pub repositories: Vec<String>,
    /// CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses; when given, only
    /// these may reach the repositories.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDR blocks or addresses refused, even when `allow` covers them.
    #[serde(default)]
    pub block: Vec<String>,
}

/// A CIDR block or a single address (as a /32 or /128).
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("'{text}' is not a CIDR block like 10.0.0.0/8 or an address"))
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            open_admin_paths: vec!["/metrics".into(), "/healthz".into(), "/readyz".into()],
            tokens: Vec::new(),
            grants: Vec::new(),
            oidc: Vec::new(),
            limits: LimitsConfig::default(),
            addresses: Vec::new(),
            audit_dir: None,
        }
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
    /// Package-name patterns (`@acme/*`, `com.acme:*`, `acme-*`; see [`pattern_matches`]) the
    /// grant is limited to; empty, every package. A request whose package the format cannot
    /// name (an index root, a listing of everything) is not covered by a limited grant.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// One `[[auth.oidc]]`: an OpenID Connect issuer whose ID tokens (JWTs, RS256/ES256 and their
/// kin, per RFC 7519 and OpenID Connect Core 1.0) are accepted as bearer credentials, with
/// `iss`, `aud`, `exp` (and `nbf`) checked and claims mapped to roles by [`ClaimRule`]s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL, exactly as the tokens' `iss` claim gives it.
    pub issuer: String,
    /// What the tokens' `aud` must contain (what the CI job asked its token for).
    pub audience: String,
    /// Where the issuer's JSON Web Key Set is; unset, the `jwks_uri` of
    /// `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The claim that names the principal in logs and messages.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// How long after one fetch of the key set a token signed by a key it lacks may cause
    /// another (keys rotate; unknown `kid`s must not let anyone make the proxy fetch at will).
    #[serde(default = "default_refetch")]
    pub jwks_min_refetch: hangar_core::HumanDuration,
    /// How the token's claims map to roles; a token no rule matches is refused (an issuer
    /// such as a public CI service mints tokens for anyone's jobs).
    #[serde(default, rename = "rule")]
    pub rules: Vec<ClaimRule>,
}

fn default_name_claim() -> String {
    "sub".into()
}

fn default_refetch() -> hangar_core::HumanDuration {
    hangar_core::HumanDuration(std::time::Duration::from_secs(10))
}

/// One `[[auth.oidc.rule]]`: when every listed claim (a string claim, or a string in an array
/// claim) matches its pattern, the token carries `roles`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// Claim name to pattern ([`pattern_matches`]); at least one.
    pub claims: std::collections::BTreeMap<String, String>,
    /// The roles a matching token carries.
    pub roles: Vec<String>,
}

/// Whether `value` matches `pattern`, where each `*` stands for any run of characters
/// (none included) and everything else is literal: `@acme/*`, `com.acme.*`, `acme-*`,
/// `repo:acme/*:ref:refs/heads/main`.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
            if g.packages.iter().any(|p| p.trim().is_empty()) {
                return Err(invalid(key("packages"), "an empty pattern matches no package: give names like \"@acme/*\", or leave the key out for every package".into()));
            }
        }
        for (i, o) in self.oidc.iter().enumerate() {
            let key = |field: &str| format!("auth.oidc[{i}].{field}");
            hangar_core::UpstreamUrl::parse(&o.issuer).map_err(|e| invalid(key("issuer"), format!("'{}' is not an issuer URL: {e}", o.issuer)))?;
            if self.oidc[..i].iter().any(|other| other.issuer == o.issuer) {
                return Err(invalid(key("issuer"), format!("'{}' is configured twice", o.issuer)));
            }
            if o.audience.trim().is_empty() {
                return Err(invalid(key("audience"), "must not be empty: tokens minted for another service must not be accepted here".into()));
            }
            if let Some(url) = &o.jwks_url {
                hangar_core::UpstreamUrl::parse(url).map_err(|e| invalid(key("jwks_url"), format!("'{url}' is not a URL: {e}")))?;
            }
            for (j, rule) in o.rules.iter().enumerate() {
                if rule.claims.is_empty() {
                    return Err(invalid(format!("auth.oidc[{i}].rule[{j}].claims"), "names no claim: a rule matching every token of the issuer must say so, as sub = \"*\"".into()));
                }
                if rule.roles.is_empty() || rule.roles.iter().any(|r| r.trim().is_empty() || r == ANONYMOUS_ROLE) {
                    return Err(invalid(format!("auth.oidc[{i}].rule[{j}].roles"), format!("at least one role, none empty or '{ANONYMOUS_ROLE}'")));
                }
            }
        }
        for (i, rule) in self.addresses.iter().enumerate() {
            let key = |field: &str| format!("auth.addresses[{i}].{field}");
            if rule.repositories.is_empty() {
                return Err(invalid(key("repositories"), "names no repository: give names, or \"*\" for all".into()));
            }
            if rule.allow.is_empty() && rule.block.is_empty() {
                return Err(invalid(key("allow"), "neither allow nor block is given: the rule would do nothing".into()));
            }
            for (field, list) in [("allow", &rule.allow), ("block", &rule.block)] {
                for n in list {
                    parse_network(n).map_err(|m| invalid(key(field), m))?;
                }
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

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn patterns_match_whole_names_with_stars_for_any_run() {
        for (pattern, yes, no) in [
            ("@acme/*", &["@acme/ui", "@acme/"][..], &["@acme", "@acmeco/ui", "x@acme/ui"][..]),
            ("com.acme.*", &["com.acme.lib", "com.acme.a.b"], &["com.acmex.lib", "com.acme"]),
            ("acme-*", &["acme-tools"], &["acme_tools", "xacme-tools"]),
            ("exact", &["exact"], &["exactly", "inexact"]),
            ("repo:acme/*:ref:refs/heads/main", &["repo:acme/app:ref:refs/heads/main"], &["repo:acme/app:ref:refs/heads/dev", "repo:other/app:ref:refs/heads/main"]),
            ("*", &["", "anything"], &[]),
            ("a*b*c", &["abc", "aXbYc", "abbc"], &["ab", "acb"]),
        ] {
            for v in yes {
                assert!(pattern_matches(pattern, v), "{pattern} should match {v}");
            }
            for v in no {
                assert!(!pattern_matches(pattern, v), "{pattern} should not match {v}");
            }
        }
    }
}
