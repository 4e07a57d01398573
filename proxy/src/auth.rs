//! Who sent a request, and whether a grant covers what it asks ([`crate::config::AuthConfig`]
//! has the rules). Checked in the first phase of every request, cache hits included, and on
//! the admin listener, before any cache or upstream work.
//!
//! Credentials come in `Authorization`: `Bearer <token>` (npm's `_authToken`, curl), the bare
//! token (as cargo sends it), or `Basic` with the token as the password and any user name (as
//! pip, twine, mvn, gem and apt's `auth.conf` send it). A token may do what anonymous requests
//! may, and what the grants of its roles add. A token is found by the SHA-256 of its secret: the secret itself is never held,
//! and what is compared is a digest the caller cannot choose, so the lookup leaks nothing
//! useful about the secret through timing; the bootstrap credential is compared in constant
//! time all the same. Answers: 401 (with `WWW-Authenticate`) when credentials are missing,
//! malformed, unknown or expired, 403 when valid ones lack the grant.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::{parse_expiry, parse_token_hash, Action, AuthConfig, ANONYMOUS_ROLE, AUTHENTICATED_ROLE};

/// The environment variable whose value, when set, is a credential with every permission on
/// every listener: how a fresh install is first configured.
pub const BOOTSTRAP_VARIABLE: &str = "HANGAR_ADMIN_TOKEN";

/// What every token [`new_token`] makes starts with, so scanners (and this proxy, in URLs)
/// can spot one.
pub const TOKEN_PREFIX: &str = "hgr_";

/// The `WWW-Authenticate` challenges of a 401: either scheme works.
pub const CHALLENGES: [&str; 2] = ["Bearer realm=\"hangar\"", "Basic realm=\"hangar\", charset=\"UTF-8\""];

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal<'a> {
    /// No credentials.
    Anonymous,
    /// A configured token, by its name, with its roles.
    Token { name: &'a str, roles: &'a [String] },
    /// The bootstrap credential ([`BOOTSTRAP_VARIABLE`]): every permission.
    Bootstrap,
}

impl Principal<'_> {
    /// How logs and errors name it.
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => ANONYMOUS_ROLE,
            Principal::Token { name, .. } => name,
            Principal::Bootstrap => BOOTSTRAP_VARIABLE,
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
}

/// The decisions of one proxy, built from its config (and the bootstrap credential).
pub struct Authorizer {
    tokens: HashMap<[u8; 32], Token>,
    bootstrap: Option<[u8; 32]>,
    grants: Vec<Grant>,
    open_admin_paths: Vec<String>,
}

fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Authorizer {
    /// From a validated `[auth]` (its hashes and times parse) and the bootstrap credential.
    pub fn new(config: &AuthConfig, bootstrap: Option<&str>) -> Arc<Authorizer> {
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
            .map(|g| Grant { role: g.role.clone(), repositories: (!g.repositories.iter().any(|r| r == "*")).then(|| g.repositories.clone()), actions: g.actions.clone() })
            .collect();
        Arc::new(Authorizer {
            tokens,
            bootstrap: bootstrap.filter(|b| !b.is_empty()).map(|b| sha256(b.as_bytes())),
            grants,
            open_admin_paths: config.open_admin_paths.clone(),
        })
    }

    /// Whether a bootstrap credential is configured.
    pub fn has_bootstrap(&self) -> bool {
        self.bootstrap.is_some()
    }

    /// The principal an `Authorization` header (absent: anonymous) names, at the time `now`
    /// gives (seconds since the Unix epoch; asked only when a token has an expiry).
    pub fn authenticate(&self, authorization: Option<&[u8]>, now: impl FnOnce() -> i64) -> Result<Principal<'_>, Unauthenticated> {
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
        let hash = sha256(&secret);
        if let Some(b) = &self.bootstrap {
            if bool::from(b.ct_eq(&hash)) {
                return Ok(Principal::Bootstrap);
            }
        }
        let token = self.tokens.get(&hash).ok_or(Unauthenticated::Unknown)?;
        if token.expires.is_some_and(|e| now() >= e) {
            return Err(Unauthenticated::Expired(token.name.clone()));
        }
        Ok(Principal::Token { name: &token.name, roles: &token.roles })
    }

    /// Whether `principal` may do `action` on `repository` (`None`: not about one repository,
    /// as the admin listener's global switches; only a grant on every repository covers it).
    pub fn allows(&self, principal: &Principal<'_>, action: Action, repository: Option<&str>) -> bool {
        let has_role = |role: &str| match principal {
            Principal::Anonymous => role == ANONYMOUS_ROLE,
            Principal::Token { roles, .. } => role == ANONYMOUS_ROLE || role == AUTHENTICATED_ROLE || roles.iter().any(|r| r == role),
            Principal::Bootstrap => true,
        };
        if *principal == Principal::Bootstrap {
            return true;
        }
        self.grants.iter().any(|g| {
            g.actions.contains(&action)
                && has_role(&g.role)
                && match (&g.repositories, repository) {
                    (None, _) => true,
                    (Some(names), Some(r)) => names.iter().any(|n| n == r),
                    (Some(_), None) => false,
                }
        })
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
            if decoded.starts_with(TOKEN_PREFIX.as_bytes()) {
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

/// Seconds since the Unix epoch, for [`Authorizer::authenticate`].
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
        let grant = |role: &str, repos: &[&str], actions: &[Action]| GrantConfig { role: role.into(), repositories: repos.iter().map(|r| r.to_string()).collect(), actions: actions.to_vec() };
        let config = AuthConfig {
            tokens: vec![token("ci", ci_hash, &["builder"], Some("2030-01-01T00:00:00Z")), token("old", old_hash, &["builder"], Some("2020-01-01T00:00:00Z"))],
            grants: vec![grant("anonymous", &["pypi"], &[Action::Read]), grant("builder", &["*"], &[Action::Read]), grant("authenticated", &["npm"], &[Action::Read])],
            ..AuthConfig::default()
        };
        (config, ci, old)
    }

    const NOW: i64 = 1_800_000_000; // 2027-01-15

    #[test]
    fn deny_by_default_and_grants_by_role_and_repository() {
        let (config, ci, _) = config();
        let auth = Authorizer::new(&config, None);
        let anonymous = auth.authenticate(None, || NOW).unwrap();
        assert!(auth.allows(&anonymous, Action::Read, Some("pypi")));
        assert!(!auth.allows(&anonymous, Action::Read, Some("npm")), "not granted: refused");
        assert!(!auth.allows(&anonymous, Action::Admin, None));
        let bearer = format!("Bearer {ci}");
        let token = auth.authenticate(Some(bearer.as_bytes()), || NOW).unwrap();
        assert_eq!(token.name(), "ci");
        assert!(auth.allows(&token, Action::Read, Some("npm")) && auth.allows(&token, Action::Read, Some("anything")));
        assert!(!auth.allows(&token, Action::Publish, Some("npm")) && !auth.allows(&token, Action::Admin, None));
        assert!(auth.allows(&token, Action::Read, Some("pypi")), "a token may do what anonymous may");
        let empty = Authorizer::new(&AuthConfig::default(), None);
        assert!(!empty.allows(&Principal::Anonymous, Action::Read, Some("pypi")), "no grants: nobody");
    }

    #[test]
    fn basic_carries_the_token_as_its_password_with_any_user() {
        let (config, ci, _) = config();
        let auth = Authorizer::new(&config, None);
        for user in ["", "__token__", "someone"] {
            let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{ci}")));
            assert_eq!(auth.authenticate(Some(basic.as_bytes()), || NOW).unwrap().name(), "ci", "user {user:?}");
        }
    }

    #[test]
    fn unknown_expired_and_malformed_credentials_are_told_apart_without_repeating_them() {
        let (config, _, old) = config();
        let auth = Authorizer::new(&config, None);
        let expired = auth.authenticate(Some(format!("Bearer {old}").as_bytes()), || NOW).unwrap_err();
        assert_eq!(expired, Unauthenticated::Expired("old".into()));
        let unknown = auth.authenticate(Some(b"Bearer hgr_not-a-token"), || NOW).unwrap_err();
        assert_eq!(unknown, Unauthenticated::Unknown);
        assert!(!unknown.to_string().contains("hgr_not"));
        assert_eq!(auth.authenticate(Some(b"hgr_not-a-token"), || NOW).unwrap_err(), Unauthenticated::Unknown, "a bare token is looked up");
        for bad in [&b"Digest abc"[..], b"Basic %%%", b"Basic dXNlcg==", b"\xff\xfe", b""] {
            assert!(matches!(auth.authenticate(Some(bad), || NOW), Err(Unauthenticated::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_bootstrap_credential_may_do_everything_and_is_known_in_a_query() {
        let (config, ci, _) = config();
        let auth = Authorizer::new(&config, Some("first-setup-secret"));
        let admin = auth.authenticate(Some(b"Bearer first-setup-secret"), || NOW).unwrap();
        assert_eq!(admin, Principal::Bootstrap);
        assert!(auth.allows(&admin, Action::Admin, None) && auth.allows(&admin, Action::Delete, Some("x")));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:first-setup-secret"));
        assert_eq!(auth.authenticate(Some(basic.as_bytes()), || NOW).unwrap(), Principal::Bootstrap);
        assert!(auth.secret_in_query("a=1&token=first-setup-secret"));
        assert!(auth.secret_in_query(&format!("x={}", ci.replace('_', "%5F"))), "percent-encoded too");
        assert!(!auth.secret_in_query("a=1&token=something-else"));
        assert!(!Authorizer::new(&config, None).secret_in_query("token=first-setup-secret"));
        assert!(Authorizer::new(&AuthConfig::default(), None).secret_in_query("x=1&hgr_unknown"), "token-shaped, known or not");
    }

    #[test]
    fn new_tokens_are_random_and_their_hash_configures_them() {
        let (a, hash) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert!(a.starts_with("hgr_") && a.len() > 40 && a != b);
        assert_eq!(parse_token_hash(&hash).unwrap(), sha256(a.as_bytes()));
    }
}
