//! Registry tokens: the Docker token flow ("Token Authentication Specification" of the
//! distribution project). A registry client that meets `401` with
//! `WWW-Authenticate: Bearer realm="<hangar>/v2/token",service="hangar"` asks the realm for a
//! token, with its basic credentials when it has some (`docker login`, `skopeo login`, oras),
//! and sends what it gets as `Authorization: Bearer` from then on.
//!
//! The token is a JWT (HS256) this proxy signs and alone verifies: it names the principal the
//! credentials were (anonymous, an API token by name, a CI workload with its roles) and lives
//! [`LIFETIME_SECS`]. Each request it carries is checked against the grants as they are then,
//! and a token named in it that has since been revoked or has expired is refused with it. The
//! requested `scope` is not written in: the grants decide per request, which the client sees
//! as the same 401/403 it would get from a registry that narrowed the scope.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Principal, Unauthenticated};

/// The `iss` of registry tokens; a JWT claiming it is verified here, not as OIDC.
pub const ISSUER: &str = "hangar-registry";

/// The `service` of the challenge and the tokens' `aud`.
pub const SERVICE: &str = "hangar";

/// How long a registry token is valid, in seconds (clients ask for a new one on a 401).
pub const LIFETIME_SECS: i64 = 300;

/// Who a registry token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    Anonymous,
    /// The bootstrap credential, by the hex SHA-256 of its value: a new value ends it.
    Bootstrap { key: String },
    /// An API token, by the hex SHA-256 of its secret (not its name, which a replacement
    /// token may take): looked up again on every use.
    Token { name: String, key: String },
    /// A CI workload with the roles its claims earned, and its issuer, which must still be
    /// trusted on every use.
    Workload { name: String, roles: Vec<String>, issuer: String },
}

/// A registry token's claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    iss: String,
    aud: String,
    /// Seconds since the Unix epoch.
    pub exp: i64,
    iat: i64,
    pub principal: Subject,
}

/// A token issued: the answer of the token endpoint.
#[derive(Debug, Serialize)]
pub struct Issued {
    /// The JWT; also given as `access_token` (the OAuth 2 name some clients read).
    pub token: String,
    pub access_token: String,
    /// Seconds.
    pub expires_in: i64,
    /// RFC 3339.
    pub issued_at: String,
}

/// Signs and verifies registry tokens.
pub(super) struct RegistryTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl RegistryTokens {
    /// With a key derived from `secret` (the fleet's: every member accepts what any issued),
    /// or a random one (this process only).
    pub(super) fn new(secret: Option<&[u8]>) -> Self {
        let key: [u8; 32] = match secret {
            Some(s) => Sha256::new().chain_update(b"hangar registry token key\0").chain_update(s).finalize().into(),
            None => {
                let mut k = [0u8; 32];
                // Without randomness from the OS the proxy could not have started (tokens,
                // TLS); a zero key would make tokens forgeable, so refuse to go on.
                getrandom::getrandom(&mut k).expect("randomness from the OS for the registry token key");
                k
            }
        };
        RegistryTokens { encoding: EncodingKey::from_secret(&key), decoding: DecodingKey::from_secret(&key) }
    }

    /// A token for `principal` (`bootstrap`: the bootstrap credential's hash), valid
    /// [`LIFETIME_SECS`] or until the credential it was issued for expires, if sooner.
    pub(super) fn issue(&self, principal: &Principal<'_>, bootstrap: Option<&[u8; 32]>, now: i64) -> Result<Issued, jsonwebtoken::errors::Error> {
        let (subject, until) = match principal {
            Principal::Anonymous => (Subject::Anonymous, None),
            Principal::Bootstrap => (Subject::Bootstrap { key: bootstrap.map(hex::encode).unwrap_or_default() }, None),
            Principal::Token { name, key, expires, .. } => (Subject::Token { name: name.to_string(), key: hex::encode(key) }, *expires),
            Principal::Workload { name, roles, issuer, expires } => (Subject::Workload { name: name.clone(), roles: roles.clone(), issuer: issuer.clone() }, Some(*expires)),
        };
        let exp = until.map_or(now + LIFETIME_SECS, |u| u.min(now + LIFETIME_SECS));
        let claims = Claims { iss: ISSUER.into(), aud: SERVICE.into(), exp, iat: now, principal: subject };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        let issued_at = chrono::DateTime::from_timestamp(now, 0).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
        Ok(Issued { access_token: token.clone(), token, expires_in: exp - now, issued_at })
    }

    pub(super) fn verify(&self, jwt: &str) -> Result<Claims, Unauthenticated> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[SERVICE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(jwt, &self.decoding, &validation).map(|d| d.claims).map_err(|e| {
            Unauthenticated::Jwt(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the registry token has expired: ask the token endpoint for another".into(),
                _ => "the registry token was not issued here (or was altered)".into(),
            })
        })
    }
}

/// The `WWW-Authenticate` challenge of a registry: where its token endpoint is.
pub fn challenge(origin: &str, root: &str) -> String {
    format!("Bearer realm=\"{origin}{root}token\",service=\"{SERVICE}\"")
}
