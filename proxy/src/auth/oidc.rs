//! CI workload identity: OpenID Connect ID tokens (JWTs, RFC 7519) from configured issuers,
//! verified against the issuer's JSON Web Key Set (RFC 7517), with `iss`, `aud`, `exp` and
//! `nbf` checked and claims mapped to roles by the issuer's rules.
//!
//! A key set is fetched when a token first needs it and again when a token names a key (`kid`)
//! the set lacks, which is how issuers rotate: the new key is published, then used. Such a
//! refetch happens at most once per `jwks_min_refetch` per issuer, whatever tokens arrive (a
//! made-up `kid` must not let anyone make the proxy fetch at will), and concurrent requests
//! share one fetch. A fetch that fails keeps the last set: tokens keep verifying while the
//! issuer is down. Only asymmetric algorithms are accepted, and a key's own `alg`, when the set
//! gives one, must be the token's.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::Unauthenticated;
use crate::config::{pattern_matches, OidcConfig};

/// Largest key set or discovery document read.
const KEYS_LIMIT: usize = 1024 * 1024;

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// How the proxy fetches an issuer's documents (its discovery document and key set): a GET
/// whose 200 body is returned whole, or an error message naming what failed.
#[async_trait]
pub trait FetchKeys: Send + Sync {
    async fn get(&self, url: &str) -> Result<Bytes, String>;
}

#[async_trait]
impl FetchKeys for crate::client::Client {
    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let base = hangar_core::UpstreamUrl::parse(&parsed.origin().ascii_serialization()).map_err(|e| e.to_string())?;
        let target = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        let headers = [(http::header::ACCEPT, "application/json".to_string())];
        let timeouts = crate::config::TimeoutConfig::default();
        let req = crate::client::Request { method: http::Method::GET, url: &base, target: &target, headers: &headers, timeouts: &timeouts };
        let response = self.fetch(&req, KEYS_LIMIT).await.map_err(|e| format!("GET {url}: {e}"))?;
        match response.head.status.as_u16() {
            200 => Ok(response.body),
            status => Err(format!("GET {url}: status {status}")),
        }
    }
}

/// The token's bytes as a JWT in compact form (`eyJ...` header, payload, signature), if it
/// looks like one: a header and payload that are base64url JSON objects.
pub(super) fn as_jwt(secret: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(secret).ok()?;
    let mut parts = s.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && header.starts_with("eyJ") && payload.starts_with("eyJ") && !signature.is_empty()).then_some(s)
}

/// The `iss` a JWT claims, unverified: only to pick what verifies it.
pub(super) fn unverified_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

struct Key {
    key: DecodingKey,
    /// The key set's `alg` for it, when it gives one.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: tried in turn for a token without one.
    unnamed: Vec<Key>,
    /// When a fetch was last attempted (whether or not it succeeded).
    attempted: Option<Instant>,
}

struct Issuer {
    config: OidcConfig,
    keys: parking_lot::RwLock<KeySet>,
    /// Held while fetching, so concurrent requests share a fetch.
    fetching: tokio::sync::Mutex<()>,
}

/// The configured issuers and their key sets.
pub(super) struct Issuers {
    issuers: Vec<Issuer>,
    fetch: Arc<dyn FetchKeys>,
}

fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Issuers {
    pub(super) fn new(configs: &[OidcConfig], fetch: Arc<dyn FetchKeys>) -> Self {
        let issuers = configs.iter().map(|c| Issuer { config: c.clone(), keys: Default::default(), fetching: Default::default() }).collect();
        Issuers { issuers, fetch }
    }

    /// Whether `issuer` is configured.
    pub(super) fn trusts(&self, issuer: &str) -> bool {
        self.issuers.iter().any(|i| i.config.issuer == issuer)
    }

    /// Verify `jwt` (which claims `iss`): its name claim, the roles its claims earn (a token
    /// no rule gives a role is refused: an issuer such as a public CI service mints tokens for
    /// anyone's jobs) and its `exp`.
    pub(super) fn verify(&self, iss: &str, jwt: &str) -> Result<(String, Vec<String>, i64), Unauthenticated> {
        let Some(index) = self.issuers.iter().position(|i| i.config.issuer == iss) else {
            let shown: String = iss.chars().take(200).collect();
            return Err(Unauthenticated::Jwt(format!("no [[auth.oidc]] trusts its issuer '{shown}'")));
        };
        let issuer = &self.issuers[index];
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| Unauthenticated::Jwt(format!("its header is not valid: {e}")))?;
        if !asymmetric(header.alg) {
            return Err(Unauthenticated::Jwt(format!("its algorithm {:?} is not accepted from an issuer (only public-key signatures)", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&issuer.config.audience]);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = {
            let keys = issuer.keys.read();
            let candidates: Vec<&Key> = match &header.kid {
                Some(kid) => keys.by_kid.get(kid).into_iter().collect(),
                None => keys.unnamed.iter().chain(keys.by_kid.values()).collect(),
            };
            let candidates: Vec<&Key> = candidates.into_iter().filter(|k| k.alg.is_none_or(|a| a == header.alg)).collect();
            if candidates.is_empty() {
                return Err(Unauthenticated::KeyUnknown(index));
            }
            let mut last = None;
            let mut verified = None;
            for key in candidates {
                match jsonwebtoken::decode::<serde_json::Map<String, Value>>(jwt, &key.key, &validation) {
                    Ok(data) => {
                        verified = Some(data.claims);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (verified, last) {
                (Some(claims), _) => claims,
                (None, Some(e)) => return Err(Unauthenticated::Jwt(explain(e.kind(), &issuer.config.audience))),
                (None, None) => return Err(Unauthenticated::KeyUnknown(index)),
            }
        };
        let name = claims.get(&issuer.config.name_claim).or_else(|| claims.get("sub")).and_then(Value::as_str).unwrap_or("unnamed workload");
        let name: String = name.chars().take(200).collect();
        let mut roles: Vec<String> = Vec::new();
        for rule in issuer.config.rules.iter().filter(|rule| rule.claims.iter().all(|(claim, pattern)| claim_matches(claims.get(claim), pattern))) {
            for role in &rule.roles {
                if !roles.contains(role) {
                    roles.push(role.clone());
                }
            }
        }
        if roles.is_empty() {
            return Err(Unauthenticated::Jwt(format!("no [[auth.oidc.rule]] of its issuer gives its claims a role (it names '{name}')")));
        }
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        Ok((name, roles, exp))
    }

    /// Fetch issuer `index`'s key set again, unless one was attempted within its
    /// `jwks_min_refetch` (or is under way: then wait for that one).
    pub(super) async fn refetch(&self, index: usize) {
        let Some(issuer) = self.issuers.get(index) else { return };
        let _fetching = issuer.fetching.lock().await;
        if issuer.keys.read().attempted.is_some_and(|t| t.elapsed() < issuer.config.jwks_min_refetch.0) {
            return;
        }
        issuer.keys.write().attempted = Some(Instant::now());
        match self.fetch_set(&issuer.config).await {
            Ok((by_kid, unnamed)) => {
                tracing::info!(issuer = %issuer.config.issuer, keys = by_kid.len() + unnamed.len(), "OIDC key set fetched");
                let mut keys = issuer.keys.write();
                keys.by_kid = by_kid;
                keys.unnamed = unnamed;
            }
            Err(e) => tracing::warn!(issuer = %issuer.config.issuer, error = %e, "OIDC key set not fetched; the last one stays in use"),
        }
    }

    async fn fetch_set(&self, config: &OidcConfig) -> Result<(HashMap<String, Key>, Vec<Key>), String> {
        let url = match &config.jwks_url {
            Some(url) => url.clone(),
            None => {
                let discovery = format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
                let body = self.fetch.get(&discovery).await?;
                let doc: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(|e| format!("{discovery}: not a JSON object: {e}"))?;
                doc.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{discovery}: no jwks_uri"))?.to_string()
            }
        };
        let body = self.fetch.get(&url).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JSON Web Key Set: {e}"))?;
        let (mut by_kid, mut unnamed) = (HashMap::new(), Vec::new());
        for jwk in &set.keys {
            // A key that is not for signatures, or of a kind not supported, is skipped.
            if jwk.common.public_key_use.as_ref().is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::from_str(&a.to_string()).ok());
            if alg.is_some_and(|a| !asymmetric(a)) {
                continue;
            }
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), Key { key, alg });
                }
                None => unnamed.push(Key { key, alg }),
            }
        }
        Ok((by_kid, unnamed))
    }
}

/// Whether a claim's value matches `pattern`: a string, a number or boolean as written, or any
/// string of an array.
fn claim_matches(value: Option<&Value>, pattern: &str) -> bool {
    match value {
        Some(Value::String(s)) => pattern_matches(pattern, s),
        Some(Value::Bool(b)) => pattern_matches(pattern, if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => pattern_matches(pattern, &n.to_string()),
        Some(Value::Array(items)) => items.iter().any(|v| matches!(v, Value::String(s) if pattern_matches(pattern, s))),
        _ => false,
    }
}

/// What a failed check says to the client.
fn explain(kind: &ErrorKind, audience: &str) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "it has expired ('exp' is past)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet ('nbf' is in the future)".into(),
        ErrorKind::InvalidAudience => format!("its audience ('aud') is not '{audience}': ask the CI system for a token with that audience"),
        ErrorKind::InvalidIssuer => "its issuer does not match".into(),
        ErrorKind::InvalidSignature => "its signature does not verify with the issuer's key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("it lacks the '{c}' claim"),
        ErrorKind::InvalidAlgorithm => "its algorithm is not the key's".into(),
        other => format!("it does not verify ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::KeyPair as _;
    use serde_json::json;

    use super::*;
    use crate::auth::{Authorizer, Principal};
    use crate::config::{AuthConfig, ClaimRule};

    const ISSUER: &str = "https://ci.example.test";

    /// The issuer's key set as it is now, and how often it was fetched.
    #[derive(Default)]
    struct Served {
        jwks: parking_lot::Mutex<Value>,
        fetches: AtomicUsize,
    }

    #[async_trait]
    impl FetchKeys for Served {
        async fn get(&self, url: &str) -> Result<Bytes, String> {
            assert_eq!(url, "https://ci.example.test/jwks");
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(serde_json::to_vec(&*self.jwks.lock()).unwrap().into())
        }
    }

    /// An Ed25519 key pair: the signing key and its JWK.
    fn key(kid: &str) -> (EncodingKey, Value) {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        (EncodingKey::from_ed_der(pkcs8.as_ref()), json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}))
    }

    fn sign(key: &EncodingKey, kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims(aud: &str, exp_from_now: i64, repository: &str) -> Value {
        let now = crate::auth::unix_now();
        json!({"iss": ISSUER, "aud": aud, "exp": now + exp_from_now, "iat": now, "sub": format!("repo:{repository}:ref:refs/heads/main"), "repository": repository, "ref": "refs/heads/main"})
    }

    fn setup(min_refetch: u64) -> (Arc<Authorizer>, Arc<Served>) {
        let oidc = OidcConfig {
            issuer: ISSUER.into(),
            audience: "hangar".into(),
            jwks_url: Some(format!("{ISSUER}/jwks")),
            name_claim: "sub".into(),
            jwks_min_refetch: hangar_core::HumanDuration(std::time::Duration::from_secs(min_refetch)),
            rules: vec![ClaimRule { claims: [("repository".to_string(), "acme/*".to_string()), ("ref".to_string(), "refs/heads/main".to_string())].into(), roles: vec!["publisher".into()] }],
        };
        let served = Arc::new(Served::default());
        let config = AuthConfig { oidc: vec![oidc], ..AuthConfig::default() };
        (Authorizer::new(&config, None, served.clone(), None), served)
    }

    async fn principal(auth: &Authorizer, jwt: &str) -> Result<(String, Vec<String>), Unauthenticated> {
        match auth.authenticate(Some(format!("Bearer {jwt}").as_bytes()), false).await? {
            Principal::Workload { name, roles, .. } => Ok((name, roles)),
            other => panic!("not a workload: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_token_gets_the_roles_its_claims_match_and_bad_ones_say_why() {
        let (auth, served) = setup(0);
        let (signing, jwk) = key("k1");
        *served.jwks.lock() = json!({"keys": [jwk]});
        let (name, roles) = principal(&auth, &sign(&signing, "k1", claims("hangar", 300, "acme/app"))).await.unwrap();
        assert_eq!((name.as_str(), roles), ("repo:acme/app:ref:refs/heads/main", vec!["publisher".to_string()]));
        let unmatched = principal(&auth, &sign(&signing, "k1", claims("hangar", 300, "other/app"))).await.unwrap_err();
        assert!(unmatched.to_string().contains("no [[auth.oidc.rule]]"), "no rule matches: refused, not merely authenticated: {unmatched}");
        assert_eq!(served.fetches.load(Ordering::SeqCst), 1, "the key set is fetched once, then held");

        let refused = |r: Result<(String, Vec<String>), Unauthenticated>| r.unwrap_err().to_string();
        assert!(refused(principal(&auth, &sign(&signing, "k1", claims("hangar", -120, "acme/app"))).await).contains("expired"));
        assert!(refused(principal(&auth, &sign(&signing, "k1", claims("elsewhere", 300, "acme/app"))).await).contains("audience"));
        let mut wrong_issuer = claims("hangar", 300, "acme/app");
        wrong_issuer["iss"] = json!("https://other.example.test");
        assert!(refused(principal(&auth, &sign(&signing, "k1", wrong_issuer)).await).contains("no [[auth.oidc]] trusts"));
        let (stranger, _) = key("k1");
        assert!(refused(principal(&auth, &sign(&stranger, "k1", claims("hangar", 300, "acme/app"))).await).contains("signature"), "same kid, another key");
        let hs = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("hangar", 300, "acme/app"), &EncodingKey::from_secret(b"guessable")).unwrap();
        assert!(refused(principal(&auth, &hs).await).contains("not accepted"));
    }

    #[tokio::test]
    async fn a_rotated_key_is_fetched_and_a_retired_one_refused() {
        let (auth, served) = setup(0);
        let (old, old_jwk) = key("old");
        *served.jwks.lock() = json!({"keys": [old_jwk]});
        principal(&auth, &sign(&old, "old", claims("hangar", 300, "acme/app"))).await.unwrap();
        let (new, new_jwk) = key("new");
        *served.jwks.lock() = json!({"keys": [new_jwk]});
        principal(&auth, &sign(&new, "new", claims("hangar", 300, "acme/app"))).await.unwrap();
        assert_eq!(served.fetches.load(Ordering::SeqCst), 2, "an unknown kid fetched the set again");
        let retired = principal(&auth, &sign(&old, "old", claims("hangar", 300, "acme/app"))).await.unwrap_err();
        assert!(retired.to_string().contains("kid unknown"), "{retired}");
    }

    #[tokio::test]
    async fn unknown_kids_cannot_make_the_proxy_fetch_at_will() {
        let (auth, served) = setup(3600);
        let (signing, jwk) = key("k1");
        *served.jwks.lock() = json!({"keys": [jwk]});
        principal(&auth, &sign(&signing, "k1", claims("hangar", 300, "acme/app"))).await.unwrap();
        for i in 0..5 {
            assert!(principal(&auth, &sign(&signing, &format!("made-up-{i}"), claims("hangar", 300, "acme/app"))).await.is_err());
        }
        assert_eq!(served.fetches.load(Ordering::SeqCst), 1, "within jwks_min_refetch: no fetch");
    }
}
