//! Answering an upstream's authentication challenge, as Docker / OCI registries issue them.
//!
//! A 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` (the distribution
//! token spec, on top of RFC 6750) makes the proxy fetch a token from the realm (http or https),
//! if the realm is the upstream's own host or one the repository lists in `token_realms`, and
//! retry with it. Tokens are cached until they expire (clamped to a day, less a 10 s margin).
//! The repository's `credentials` go to the realm, or answer a `Basic` challenge directly;
//! without them the proxy is anonymous. Once the upstream's token service is known, a cached
//! token goes with the first request ([`UpstreamAuth::preauthorization`]) instead of after a 401.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hangar_core::UpstreamUrl;
use parking_lot::Mutex;

use crate::client::{Client, Request};
use crate::config::{Credentials, TimeoutConfig};

/// Why a challenge could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token realm: {0}")]
    BadRealm(#[from] hangar_core::UrlError),
    #[error("token realm host {0} is not the upstream's and not in token_realms")]
    RealmNotAllowed(String),
    #[error("token realm {0} is plain http; credentials are only sent over https")]
    PlainRealm(String),
    #[error("token endpoint: {0}")]
    Request(#[from] crate::client::ClientError),
    #[error("token endpoint {host} answered {status}")]
    Status { host: String, status: http::StatusCode },
    #[error("token response: {0}")]
    BadResponse(String),
    #[error("the upstream wants credentials and none are configured")]
    NoCredentials,
    #[error("unsupported upstream challenge '{0}'")]
    Unsupported(String),
}

/// The parameters of a Bearer challenge.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parse `Bearer realm="...",service="...",scope="..."` (quoted or bare values).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let rest = value.trim().strip_prefix("Bearer ").or_else(|| value.trim().strip_prefix("bearer "))?;
    let mut c = Challenge::default();
    let mut s = rest;
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], quoted[end + 1..].trim_start().trim_start_matches(',').trim_start())
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), after[end..].trim_start_matches(',').trim_start())
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => c.realm = val.to_string(),
            "service" => c.service = Some(val.to_string()),
            "scope" => c.scope = Some(val.to_string()),
            _ => {}
        }
        s = next;
    }
    (!c.realm.is_empty()).then_some(c)
}

/// Everything but RFC 3986's unreserved characters is escaped in query values.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// Tokens cached at most per repository; past this the cache starts over.
const MAX_TOKENS: usize = 10_000;

/// One repository's upstream authentication: its credentials, the realms it may send them to,
/// and the tokens it holds.
pub struct UpstreamAuth {
    /// Bearer tokens by `service|scope`, with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The `service` the upstream's challenges name, once one has been seen.
    service: Mutex<Option<String>>,
    realms: Vec<String>,
    credentials: Option<Credentials>,
}

impl UpstreamAuth {
    /// `realms`: hosts besides the upstream's own that may issue tokens.
    pub fn new(realms: Vec<String>, credentials: Option<Credentials>) -> Self {
        UpstreamAuth { tokens: Default::default(), service: Default::default(), realms, credentials }
    }

    fn cached(&self, key: &str) -> Option<String> {
        self.tokens.lock().get(key).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t.clone())
    }

    /// A cached token for `scope` to send before the upstream asks (`Bearer ...`), once the
    /// upstream's token service is known.
    pub fn preauthorization(&self, scope: &str) -> Option<String> {
        let service = self.service.lock().clone()?;
        self.cached(&format!("{service}|{scope}")).map(|t| format!("Bearer {t}"))
    }

    /// The upstream refused `authorization` (a cached token): drop it, so the challenge fetches
    /// a new one.
    pub fn forget(&self, authorization: &str) {
        let Some(token) = authorization.strip_prefix("Bearer ") else { return };
        self.tokens.lock().retain(|_, (t, _)| t != token);
    }

    /// The `Authorization` value that answers `upstream`'s `WWW-Authenticate`: a Bearer token
    /// from its realm, or the credentials for Basic.
    pub async fn answer(&self, client: &Client, upstream: &UpstreamUrl, timeouts: &TimeoutConfig, www_authenticate: &str) -> Result<String, AuthError> {
        if let Some(challenge) = parse_challenge(www_authenticate) {
            return Ok(format!("Bearer {}", self.token_for(client, upstream, timeouts, &challenge).await?));
        }
        match (&self.credentials, www_authenticate.trim().get(..6)) {
            (Some(c), Some(scheme)) if scheme.eq_ignore_ascii_case("basic ") => Ok(c.basic()),
            (None, Some(scheme)) if scheme.eq_ignore_ascii_case("basic ") => Err(AuthError::NoCredentials),
            _ => Err(AuthError::Unsupported(www_authenticate.to_string())),
        }
    }

    /// The token for a Bearer challenge, from cache or from its realm (with the credentials,
    /// if any; anonymously otherwise).
    async fn token_for(&self, client: &Client, upstream: &UpstreamUrl, timeouts: &TimeoutConfig, challenge: &Challenge) -> Result<String, AuthError> {
        let key = format!("{}|{}", challenge.service.as_deref().unwrap_or(""), challenge.scope.as_deref().unwrap_or(""));
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let realm = UpstreamUrl::parse(&challenge.realm)?;
        // The realm comes from the upstream's response; credentials go only where the
        // operator said they may.
        if !realm.host.eq_ignore_ascii_case(&upstream.host) && !self.realms.iter().any(|h| h.eq_ignore_ascii_case(&realm.host)) {
            return Err(AuthError::RealmNotAllowed(realm.host));
        }
        let mut query = Vec::new();
        if let Some(s) = &challenge.service {
            query.push(format!("service={}", urlencode(s)));
        }
        if let Some(s) = &challenge.scope {
            query.push(format!("scope={}", urlencode(s)));
        }
        let path = challenge.realm.splitn(4, '/').nth(3).map_or("/".to_string(), |p| format!("/{p}"));
        let target = if query.is_empty() { path } else { format!("{path}{}{}", if path.contains('?') { "&" } else { "?" }, query.join("&")) };
        let mut headers = vec![(http::header::ACCEPT, "application/json".to_string())];
        if let Some(c) = &self.credentials {
            // Credentials for an https upstream never travel in the clear.
            if upstream.tls && !realm.tls {
                return Err(AuthError::PlainRealm(realm.host));
            }
            headers.push((http::header::AUTHORIZATION, c.basic()));
        }
        let request = Request { method: http::Method::GET, url: &realm, target: &target, headers: &headers, timeouts };
        let response = client.fetch(&request, 1 << 20).await?;
        if response.head.status != http::StatusCode::OK {
            return Err(AuthError::Status { host: realm.host, status: response.head.status });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body).map_err(|e| AuthError::BadResponse(e.to_string()))?;
        let token = parsed.token.or(parsed.access_token).ok_or_else(|| AuthError::BadResponse("no token".into()))?;
        // Registries issue short tokens (60 s by default); keep a margin.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).min(86_400).saturating_sub(10).max(1));
        {
            let mut tokens = self.tokens.lock();
            if tokens.len() > MAX_TOKENS {
                tokens.clear();
            }
            tokens.insert(key, (token.clone(), Instant::now() + lifetime));
        }
        if let Some(service) = &challenge.service {
            *self.service.lock() = Some(service.clone());
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_quoted_and_bare_values() {
        let c = parse_challenge(r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:library/alpine:pull""#).unwrap();
        assert_eq!(c.realm, "https://auth.test/token");
        assert_eq!(c.service.as_deref(), Some("registry.test"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/alpine:pull"));
        assert_eq!(parse_challenge("Bearer realm=http://a/t, service=s").unwrap().service.as_deref(), Some("s"));
        assert!(parse_challenge("Basic realm=\"x\"").is_none());
    }
}
