//! Who sent a request, and whether a grant covers what it asks ([`crate::config::AuthConfig`]
//! has the rules). Checked in the first phase of every request, cache hits included, and on
//! the admin listener, before any cache or upstream work.
//!
//! Credentials come in `Authorization`: `Bearer <token>` (npm's `_authToken`, curl), the bare
//! token (as cargo sends it), or `Basic` with the token as the password and any user name (as
//! pip, twine, mvn, gem and apt's `auth.conf` send it). A token is an API token, a CI job's
//! OpenID Connect JWT ([`oidc`]), or a registry token this proxy issued in the Docker token
//! flow ([`registry`]). A credential may do what anonymous requests may, and what the grants
//! of its roles add. A token is found by the SHA-256 of its secret: the secret itself is never held,
//! and what is compared is a digest the caller cannot choose, so the lookup leaks nothing
//! useful about the secret through timing; the bootstrap credential is compared in constant
//! time all the same. Answers: 401 (with `WWW-Authenticate`) when credentials are missing,
//! malformed, unknown or expired, 403 when valid ones lack the grant.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::{parse_expiry, parse_token_hash, pattern_matches, Action, AuthConfig, ANONYMOUS_ROLE, AUTHENTICATED_ROLE};

pub mod audit;
pub mod limits;
pub mod oidc;
pub mod registry;

pub use oidc::FetchKeys;

/// The environment variable whose value, when set, is a credential with every permission on
/// every listener: how a fresh install is first configured.
pub const BOOTSTRAP_VARIABLE: &str = "HANGAR_ADMIN_TOKEN";

/// What every token [`new_token`] makes starts with, so scanners (and this proxy, in URLs)
/// can spot one.
pub const TOKEN_PREFIX: &str = "hgr_";

/// The `WWW-Authenticate` challenges of a 401: either scheme works.
pub const CHALLENGES: [&str; 2] = ["Bearer realm=\"hangar\"", "Basic realm=\"hangar\", charset=\"UTF-8\""];

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal<'a> {
    /// No credentials.
    Anonymous,
    /// A configured token, by its name, with its roles (and the SHA-256 of its secret and its
    /// expiry, which registry tokens issued for it carry).
    Token { name: &'a str, roles: &'a [String], key: &'a [u8; 32], expires: Option<i64> },
    /// A CI job, by its OIDC token's name claim (`sub` by default), with the roles the
    /// issuer's rules gave its claims; its issuer's URL and its token's `exp`.
    Workload { name: String, roles: Vec<String>, issuer: String, expires: i64 },
    /// The bootstrap credential ([`BOOTSTRAP_VARIABLE`]): every permission.
    Bootstrap,
}

impl Principal<'_> {
    /// How logs and errors name it.
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => ANONYMOUS_ROLE,
            Principal::Token { name, .. } => name,
            Principal::Workload { name, .. } => name,
            Principal::Bootstrap => BOOTSTRAP_VARIABLE,
        }
    }

    fn has_role(&self, role: &str) -> bool {
        match self {
            Principal::Anonymous => role == ANONYMOUS_ROLE,
            Principal::Token { roles, .. } => role == ANONYMOUS_ROLE || role == AUTHENTICATED_ROLE || roles.iter().any(|r| r == role),
            Principal::Workload { roles, .. } => role == ANONYMOUS_ROLE || role == AUTHENTICATED_ROLE || roles.iter().any(|r| r == role),
            Principal::Bootstrap => true,
        }
    }
}

/// Why credentials were not accepted (a 401). Messages never repeat the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("the Authorization header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token is not known here (revoked, or never configured)")]
    Unknown,
    #[error("the token '{0}' has expired")]
    Expired(String),
    /// A JWT that does not verify; the message says which check failed.
    #[error("the JWT is refused: {0}")]
    Jwt(String),
    /// A JWT signed by a key the issuer's key set (as last fetched) lacks: the set is
    /// fetched again (at most as often as the issuer's `jwks_min_refetch`) and the check
    /// repeated. Carries the issuer's index.
    #[error("the JWT is signed by a key the issuer's key set does not list")]
    KeyUnknown(usize),
}

/// What a request asks to do, for [`Authorizer::check`].
#[derive(Debug, Clone, Copy)]
pub struct Asked<'r> {
    pub action: Action,
    /// `None`: not about one repository (the admin listener); only a grant on every
    /// repository covers it.
    pub repository: Option<&'r str>,
    /// The package the request is about, as the format names it; `None` when it names none.
    pub package: Option<&'r str>,
    /// To a registry repository, where registry tokens (the Docker token flow's) are accepted.
    pub registry: bool,
}

/// Why [`Authorizer::check`] refused: the status and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401 (with challenges): no credentials where the grants need some, or ones not accepted.
    Unauthenticated(String),
    /// 403: valid credentials without a grant; the principal's name and the message.
    Forbidden { principal: String, message: String },
}

struct Token {
    name: String,
    roles: Vec<String>,
    /// Seconds since the Unix epoch.
    expires: Option<i64>,
}

struct Grant {
    role: String,
    /// `None`: every repository.
    repositories: Option<Vec<String>>,
    actions: Vec<Action>,
    /// Empty: every package.
    packages: Vec<String>,
}

/// The decisions of one proxy, built from its config (and the bootstrap credential).
pub struct Authorizer {
    tokens: HashMap<[u8; 32], Token>,
    bootstrap: Option<[u8; 32]>,
    grants: Vec<Grant>,
    open_admin_paths: Vec<String>,
    issuers: oidc::Issuers,
    registry: registry::RegistryTokens,
    limits: limits::Limits,
    addresses: limits::AddressRules,
}

fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Authorizer {
    /// From a validated `[auth]` (its hashes and times parse), the bootstrap credential, what
    /// fetches OIDC issuers' key sets, and the secret registry tokens are signed with (the
    /// fleet's, so any member accepts what another issued; `None`: random, this process only).
    pub fn new(config: &AuthConfig, bootstrap: Option<&str>, fetch: Arc<dyn FetchKeys>, registry_secret: Option<&[u8]>) -> Arc<Authorizer> {
        let tokens = config
            .tokens
            .iter()
            .filter_map(|t| {
                let hash = parse_token_hash(&t.hash).ok()?;
                // An expiry that does not parse (config validation refuses it) is in the past.
                let expires = t.expires.as_deref().map(|e| parse_expiry(e).unwrap_or(i64::MIN));
                Some((hash, Token { name: t.name.clone(), roles: t.roles.clone(), expires }))
            })
            .collect();
        let grants = config
            .grants
            .iter()
            .map(|g| Grant {
                role: g.role.clone(),
                repositories: (!g.repositories.iter().any(|r| r == "*")).then(|| g.repositories.clone()),
                actions: g.actions.clone(),
                packages: g.packages.clone(),
            })
            .collect();
        Arc::new(Authorizer {
            tokens,
            bootstrap: bootstrap.filter(|b| !b.is_empty()).map(|b| sha256(b.as_bytes())),
            grants,
            open_admin_paths: config.open_admin_paths.clone(),
            issuers: oidc::Issuers::new(&config.oidc, fetch),
            registry: registry::RegistryTokens::new(registry_secret),
            limits: limits::Limits::new(&config.limits),
            addresses: limits::AddressRules::new(&config.addresses),
        })
    }

    /// Whether a bootstrap credential is configured.
    pub fn has_bootstrap(&self) -> bool {
        self.bootstrap.is_some()
    }

    /// The principal an `Authorization` header (absent: anonymous) names. An OIDC token
    /// signed by a key not yet known has its issuer's key set fetched (once, however many
    /// requests wait) before the answer.
    /// Registry tokens are accepted only where `registry` says (a registry repository).
    pub async fn authenticate(&self, authorization: Option<&[u8]>, registry: bool) -> Result<Principal<'_>, Unauthenticated> {
        match self.authenticate_at(authorization, registry, unix_now) {
            Err(Unauthenticated::KeyUnknown(issuer)) => {
                Box::pin(self.issuers.refetch(issuer)).await;
                match self.authenticate_at(authorization, registry, unix_now) {
                    Err(Unauthenticated::KeyUnknown(_)) => Err(Unauthenticated::Jwt("it is signed by a key the issuer's key set does not list (kid unknown)".into())),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// [`Authorizer::authenticate`] without fetching: at the time `now` gives (seconds since
    /// the Unix epoch; asked only when a token has an expiry).
    pub fn authenticate_at(&self, authorization: Option<&[u8]>, registry: bool, now: impl FnOnce() -> i64) -> Result<Principal<'_>, Unauthenticated> {
        let Some(value) = authorization else { return Ok(Principal::Anonymous) };
        let value = std::str::from_utf8(value).map_err(|_| Unauthenticated::Malformed("not UTF-8"))?.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or(("", value));
        let secret: Vec<u8> = if scheme.is_empty() {
            // cargo sends the token as it is, without a scheme.
            rest.as_bytes().to_vec()
        } else if scheme.eq_ignore_ascii_case("bearer") {
            rest.trim().as_bytes().to_vec()
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| Unauthenticated::Malformed("Basic credentials are not base64"))?;
            let colon = decoded.iter().position(|&b| b == b':').ok_or(Unauthenticated::Malformed("Basic credentials are not 'user:token'"))?;
            decoded[colon + 1..].to_vec()
        } else {
            return Err(Unauthenticated::Malformed("only the Bearer and Basic schemes are accepted"));
        };
        if secret.is_empty() {
            return Err(Unauthenticated::Malformed("no token given"));
        }
        if let Some(jwt) = oidc::as_jwt(&secret) {
            return match oidc::unverified_issuer(jwt).as_deref() {
                Some(registry::ISSUER) if registry => self.registry.verify(jwt).and_then(|claims| self.registry_principal(claims, now)),
                Some(registry::ISSUER) => Err(Unauthenticated::Jwt("a registry token is accepted only by the registry it was issued for: send the credential it was issued for".into())),
                Some(issuer) => self.issuers.verify(issuer, jwt).map(|(name, roles, expires)| Principal::Workload { name, roles, issuer: issuer.to_string(), expires }),
                None => Err(Unauthenticated::Jwt("it has no 'iss' claim".into())),
            };
        }
        let hash = sha256(&secret);
        if let Some(b) = &self.bootstrap {
            if bool::from(b.ct_eq(&hash)) {
                return Ok(Principal::Bootstrap);
            }
        }
        self.current(&hash, now)
    }

    /// The token whose secret hashes to `key`, unless it has expired.
    fn current(&self, key: &[u8; 32], now: impl FnOnce() -> i64) -> Result<Principal<'_>, Unauthenticated> {
        let (key, token) = self.tokens.get_key_value(key).ok_or(Unauthenticated::Unknown)?;
        if token.expires.is_some_and(|e| now() >= e) {
            return Err(Unauthenticated::Expired(token.name.clone()));
        }
        Ok(Principal::Token { name: &token.name, roles: &token.roles, key, expires: token.expires })
    }

    /// The principal a registry token stands for, as things are now: an API token revoked
    /// or replaced (the registry token names its secret's hash, not its name), a bootstrap
    /// credential changed, or an issuer no longer trusted since it was issued is refused.
    fn registry_principal(&self, claims: registry::Claims, now: impl FnOnce() -> i64) -> Result<Principal<'_>, Unauthenticated> {
        let key = |hex_key: &str| -> Result<[u8; 32], Unauthenticated> { hex::decode(hex_key).ok().and_then(|k| k.try_into().ok()).ok_or(Unauthenticated::Unknown) };
        match claims.principal {
            registry::Subject::Anonymous => Ok(Principal::Anonymous),
            registry::Subject::Bootstrap { key: k } => match self.bootstrap {
                Some(b) if bool::from(b.ct_eq(&key(&k)?)) => Ok(Principal::Bootstrap),
                _ => Err(Unauthenticated::Unknown),
            },
            registry::Subject::Token { key: k, .. } => self.current(&key(&k)?, now),
            registry::Subject::Workload { name, roles, issuer } if self.issuers.trusts(&issuer) => Ok(Principal::Workload { name, roles, issuer, expires: claims.exp }),
            registry::Subject::Workload { .. } => Err(Unauthenticated::Jwt("its issuer is no longer trusted here".into())),
        }
    }

    /// A registry token (the Docker token flow's answer) for `principal`: a short-lived JWT
    /// that [`Authorizer::authenticate`] accepts as a bearer credential for the same principal.
    pub fn issue_registry_token(&self, principal: &Principal<'_>) -> Result<registry::Issued, jsonwebtoken::errors::Error> {
        self.registry.issue(principal, self.bootstrap.as_ref(), unix_now())
    }

    /// Whether `principal` may do what `asked` says.
    pub fn allows(&self, principal: &Principal<'_>, asked: &Asked<'_>) -> bool {
        if *principal == Principal::Bootstrap {
            return true;
        }
        self.grants.iter().any(|g| {
            g.actions.contains(&asked.action)
                && principal.has_role(&g.role)
                && match (&g.repositories, asked.repository) {
                    (None, _) => true,
                    (Some(names), Some(r)) => names.iter().any(|n| n == r),
                    (Some(_), None) => false,
                }
                && (g.packages.is_empty() || asked.package.is_some_and(|p| g.packages.iter().any(|pattern| pattern_matches(pattern, p))))
        })
    }

    /// Authenticate, then decide: the principal, or the refusal with its status and a message
    /// that says what would be allowed (without repeating the credential).
    pub async fn check(&self, authorization: Option<&[u8]>, asked: &Asked<'_>) -> Result<Principal<'_>, Refusal> {
        let principal = self.authenticate(authorization, asked.registry).await.map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        if self.allows(&principal, asked) {
            return Ok(principal);
        }
        let what = asked.action.as_str();
        let package = asked.package.map(|p| format!(" for package '{p}'")).unwrap_or_default();
        Err(match (&principal, asked.repository) {
            (Principal::Anonymous, Some(name)) => Refusal::Unauthenticated(format!(
                "{what} on repository '{name}'{package} needs a credential: a token as 'Authorization: Bearer <token>' or as the password of HTTP basic"
            )),
            (Principal::Anonymous, None) => Refusal::Unauthenticated("the admin listener needs an admin credential: 'Authorization: Bearer <token>'".into()),
            (p, Some(name)) => Refusal::Forbidden { principal: p.name().to_string(), message: format!("'{}' lacks the '{what}' permission on repository '{name}'{package}: no grant gives it", p.name()) },
            (p, None) => Refusal::Forbidden { principal: p.name().to_string(), message: format!("'{}' may not use the admin listener: no grant gives it admin on every repository", p.name()) },
        })
    }

    /// Whether a client at `address` may reach `repository` (`[[auth.addresses]]`).
    pub fn address_permitted(&self, repository: &str, address: Option<std::net::IpAddr>) -> bool {
        self.addresses.permit(repository, address)
    }

    /// Take one request (a read, or a write) from `address`'s rate budget, or say it is over
    /// it; asked before credentials are looked at.
    pub fn take_address(&self, address: Option<std::net::IpAddr>, write: bool) -> Result<(), limits::Limited> {
        self.limits.take_address(address, write)
    }

    /// Take one request from `principal`'s rate budget, or say it is over it.
    pub fn take_principal(&self, principal: &Principal<'_>, write: bool) -> Result<(), limits::Limited> {
        self.limits.take_principal(principal, write)
    }

    /// Whether some grant is limited to package names (only then is a request's package
    /// worth naming).
    pub fn names_packages(&self) -> bool {
        self.grants.iter().any(|g| !g.packages.is_empty())
    }

    /// Whether the admin listener serves `path` without a credential.
    pub fn admin_path_is_open(&self, path: &str) -> bool {
        self.open_admin_paths.iter().any(|p| p == path)
    }

    /// Whether a URL query carries a credential (as any parameter or value): one this proxy
    /// knows, or anything shaped like its tokens (`hgr_...`, known or not). Such a request is
    /// refused, so the secret does not travel on in logs and `Referer`s.
    pub fn secret_in_query(&self, query: &str) -> bool {
        query.split('&').flat_map(|pair| pair.split('=')).any(|part| {
            let decoded = percent_encoding::percent_decode_str(part).collect::<Vec<u8>>();
            if decoded.starts_with(TOKEN_PREFIX.as_bytes()) || oidc::as_jwt(&decoded).is_some() {
                return true;
            }
            if self.tokens.is_empty() && self.bootstrap.is_none() {
                return false;
            }
            let hash = sha256(&decoded);
            self.tokens.contains_key(&hash) || self.bootstrap.is_some_and(|b| bool::from(b.ct_eq(&hash)))
        })
    }
}

/// Seconds since the Unix epoch, for [`Authorizer::authenticate_at`].
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A new random token (32 bytes from the OS, URL-safe base64, prefixed `hgr_` so scanners
/// can spot a leaked one) and the `hash` line that configures it.
pub fn new_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    let token = format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = format!("sha256:{}", hex::encode(sha256(token.as_bytes())));
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GrantConfig, TokenConfig};

    fn config() -> (AuthConfig, String, String) {
        let (ci, ci_hash) = new_token().unwrap();
        let (old, old_hash) = new_token().unwrap();
        let token = |name: &str, hash: String, roles: &[&str], expires: Option<&str>| TokenConfig {
            name: name.into(),
            owner: "team".into(),
            hash,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires: expires.map(str::to_string),
        };
        let grant = |role: &str, repos: &[&str], actions: &[Action]| GrantConfig { role: role.into(), repositories: repos.iter().map(|r| r.to_string()).collect(), actions: actions.to_vec(), packages: Vec::new() };
        let config = AuthConfig {
            tokens: vec![token("ci", ci_hash, &["builder"], Some("2030-01-01T00:00:00Z")), token("old", old_hash, &["builder"], Some("2020-01-01T00:00:00Z"))],
            grants: vec![grant("anonymous", &["pypi"], &[Action::Read]), grant("builder", &["*"], &[Action::Read]), grant("authenticated", &["npm"], &[Action::Read])],
            ..AuthConfig::default()
        };
        (config, ci, old)
    }

    const NOW: i64 = 1_800_000_000; // 2027-01-15

    /// Fetches nothing: these tests configure no issuer.
    struct NoFetch;

    #[async_trait::async_trait]
    impl FetchKeys for NoFetch {
        async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
            Err(format!("no fetching in this test ({url})"))
        }
    }

    fn authorizer(config: &AuthConfig, bootstrap: Option<&str>) -> Arc<Authorizer> {
        Authorizer::new(config, bootstrap, Arc::new(NoFetch), None)
    }

    fn asked(action: Action, repository: Option<&str>) -> Asked<'_> {
        Asked { action, repository, package: None, registry: false }
    }

    #[test]
    fn deny_by_default_and_grants_by_role_and_repository() {
        let (config, ci, _) = config();
        let auth = authorizer(&config, None);
        let anonymous = auth.authenticate_at(None, false, || NOW).unwrap();
        assert!(auth.allows(&anonymous, &asked(Action::Read, Some("pypi"))));
        assert!(!auth.allows(&anonymous, &asked(Action::Read, Some("npm"))), "not granted: refused");
        assert!(!auth.allows(&anonymous, &asked(Action::Admin, None)));
        let bearer = format!("Bearer {ci}");
        let token = auth.authenticate_at(Some(bearer.as_bytes()), true, || NOW).unwrap();
        assert_eq!(token.name(), "ci");
        assert!(auth.allows(&token, &asked(Action::Read, Some("npm"))) && auth.allows(&token, &asked(Action::Read, Some("anything"))));
        assert!(!auth.allows(&token, &asked(Action::Publish, Some("npm"))) && !auth.allows(&token, &asked(Action::Admin, None)));
        assert!(auth.allows(&token, &asked(Action::Read, Some("pypi"))), "a token may do what anonymous may");
        let empty = authorizer(&AuthConfig::default(), None);
        assert!(!empty.allows(&Principal::Anonymous, &asked(Action::Read, Some("pypi"))), "no grants: nobody");
    }

    #[test]
    fn basic_carries_the_token_as_its_password_with_any_user() {
        let (config, ci, _) = config();
        let auth = authorizer(&config, None);
        for user in ["", "__token__", "someone"] {
            let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{ci}")));
            assert_eq!(auth.authenticate_at(Some(basic.as_bytes()), true, || NOW).unwrap().name(), "ci", "user {user:?}");
        }
    }

    #[test]
    fn unknown_expired_and_malformed_credentials_are_told_apart_without_repeating_them() {
        let (config, _, old) = config();
        let auth = authorizer(&config, None);
        let expired = auth.authenticate_at(Some(format!("Bearer {old}").as_bytes()), true, || NOW).unwrap_err();
        assert_eq!(expired, Unauthenticated::Expired("old".into()));
        let unknown = auth.authenticate_at(Some(b"Bearer hgr_not-a-token"), true, || NOW).unwrap_err();
        assert_eq!(unknown, Unauthenticated::Unknown);
        assert!(!unknown.to_string().contains("hgr_not"));
        assert_eq!(auth.authenticate_at(Some(b"hgr_not-a-token"), true, || NOW).unwrap_err(), Unauthenticated::Unknown, "a bare token is looked up");
        for bad in [&b"Digest abc"[..], b"Basic %%%", b"Basic dXNlcg==", b"\xff\xfe", b""] {
            assert!(matches!(auth.authenticate_at(Some(bad), true, || NOW), Err(Unauthenticated::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_bootstrap_credential_may_do_everything_and_is_known_in_a_query() {
        let (config, ci, _) = config();
        let auth = authorizer(&config, Some("first-setup-secret"));
        let admin = auth.authenticate_at(Some(b"Bearer first-setup-secret"), true, || NOW).unwrap();
        assert_eq!(admin, Principal::Bootstrap);
        assert!(auth.allows(&admin, &asked(Action::Admin, None)) && auth.allows(&admin, &asked(Action::Delete, Some("x"))));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:first-setup-secret"));
        assert_eq!(auth.authenticate_at(Some(basic.as_bytes()), true, || NOW).unwrap(), Principal::Bootstrap);
        assert!(auth.secret_in_query("a=1&token=first-setup-secret"));
        assert!(auth.secret_in_query(&format!("x={}", ci.replace('_', "%5F"))), "percent-encoded too");
        assert!(!auth.secret_in_query("a=1&token=something-else"));
        assert!(!authorizer(&config, None).secret_in_query("token=first-setup-secret"));
        assert!(authorizer(&AuthConfig::default(), None).secret_in_query("x=1&hgr_unknown"), "token-shaped, known or not");
    }

    #[test]
    fn new_tokens_are_random_and_their_hash_configures_them() {
        let (a, hash) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert!(a.starts_with("hgr_") && a.len() > 40 && a != b);
        assert_eq!(parse_token_hash(&hash).unwrap(), sha256(a.as_bytes()));
    }

    #[test]
    fn a_grant_limited_to_package_patterns_covers_only_those_packages() {
        let (mut config, ci, _) = config();
        config.grants.push(GrantConfig { role: "builder".into(), repositories: vec!["npm".into()], actions: vec![Action::Publish], packages: vec!["@acme/*".into(), "acme-*".into()] });
        let auth = authorizer(&config, None);
        let token = auth.authenticate_at(Some(format!("Bearer {ci}").as_bytes()), true, || NOW).unwrap();
        let publish = |package: Option<&'static str>| Asked { action: Action::Publish, repository: Some("npm"), package, registry: false };
        assert!(auth.allows(&token, &publish(Some("@acme/ui"))) && auth.allows(&token, &publish(Some("acme-tools"))));
        assert!(!auth.allows(&token, &publish(Some("@other/ui"))), "outside the patterns");
        assert!(!auth.allows(&token, &publish(None)), "a path naming no package is not covered by a limited grant");
        assert!(!auth.allows(&token, &Asked { action: Action::Publish, repository: Some("pypi"), package: Some("@acme/ui"), registry: false }), "another repository");
    }

    #[test]
    fn registry_tokens_stand_for_their_principal_until_it_is_revoked() {
        let (config, ci, _) = config();
        let auth = authorizer(&config, Some("first-setup-secret"));
        let token = auth.authenticate_at(Some(format!("Bearer {ci}").as_bytes()), true, || NOW).unwrap();
        let issued = auth.issue_registry_token(&token).unwrap();
        assert_eq!(issued.expires_in, registry::LIFETIME_SECS);
        let again = auth.authenticate_at(Some(format!("Bearer {}", issued.token).as_bytes()), true, || NOW).unwrap();
        assert_eq!(again, token, "the same token, with its roles");
        let anonymous = auth.issue_registry_token(&Principal::Anonymous).unwrap();
        assert_eq!(auth.authenticate_at(Some(format!("Bearer {}", anonymous.token).as_bytes()), true, || NOW).unwrap(), Principal::Anonymous);
        // Revoked: the same config without the token; another process's key: not accepted.
        let mut revoked = config.clone();
        revoked.tokens.retain(|t| t.name != "ci");
        let key = b"a fleet secret of sixteen bytes or more";
        let (a, b) = (Authorizer::new(&config, None, Arc::new(NoFetch), Some(key)), Authorizer::new(&revoked, None, Arc::new(NoFetch), Some(key)));
        let shared = a.issue_registry_token(&a.authenticate_at(Some(format!("Bearer {ci}").as_bytes()), true, || NOW).unwrap()).unwrap();
        assert_eq!(a.authenticate_at(Some(format!("Bearer {}", shared.token).as_bytes()), true, || NOW).unwrap().name(), "ci", "a fleet member accepts another's");
        assert_eq!(b.authenticate_at(Some(format!("Bearer {}", shared.token).as_bytes()), true, || NOW).unwrap_err(), Unauthenticated::Unknown, "revoked since");
        let forged = auth.authenticate_at(Some(format!("Bearer {}", shared.token).as_bytes()), true, || NOW).unwrap_err();
        assert!(matches!(forged, Unauthenticated::Jwt(_)), "{forged:?}");
        assert!(auth.secret_in_query(&format!("token={}", issued.token)), "a JWT in a query is refused too");
        let elsewhere = auth.authenticate_at(Some(format!("Bearer {}", issued.token).as_bytes()), false, || NOW).unwrap_err();
        assert!(elsewhere.to_string().contains("only by the registry"), "not outside registry repositories, nor at the token endpoint: {elsewhere}");
        // A new token under the same name does not inherit the old one's registry tokens.
        let mut replaced = config.clone();
        let (_, new_hash) = new_token().unwrap();
        replaced.tokens.iter_mut().filter(|t| t.name == "ci").for_each(|t| t.hash = new_hash.clone());
        let c = Authorizer::new(&replaced, None, Arc::new(NoFetch), Some(key));
        assert_eq!(c.authenticate_at(Some(format!("Bearer {}", shared.token).as_bytes()), true, || NOW).unwrap_err(), Unauthenticated::Unknown);
        // The bootstrap credential's registry tokens end when it changes.
        let first = Authorizer::new(&config, Some("first-setup-secret"), Arc::new(NoFetch), Some(key));
        let admin = first.issue_registry_token(&Principal::Bootstrap).unwrap();
        assert_eq!(first.authenticate_at(Some(format!("Bearer {}", admin.token).as_bytes()), true, || NOW).unwrap(), Principal::Bootstrap);
        let changed = Authorizer::new(&config, Some("another-secret"), Arc::new(NoFetch), Some(key));
        assert_eq!(changed.authenticate_at(Some(format!("Bearer {}", admin.token).as_bytes()), true, || NOW).unwrap_err(), Unauthenticated::Unknown);
    }
}
