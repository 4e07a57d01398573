//! Upstream authentication (the Docker registry token flow): a 401 with
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...` makes the proxy fetch a token
//! from the realm (http or https), if the realm is the upstream's own host or one the
//! repository lists in `token_realms`, and retry with it. Tokens are cached until they expire.
//! The repository's `credentials` go to the realm, or answer a `Basic` challenge directly;
//! without them the proxy is anonymous.

use std::time::{Duration, Instant};

use super::{HangarProxy, RequestCtx};
use crate::router::Repository;
use crate::upstream::UpstreamUrl;

/// The parameters of a Bearer challenge.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parse `Bearer realm="...",service="...",scope="..."`.
pub(super) fn parse_challenge(value: &str) -> Option<Challenge> {
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

impl HangarProxy {
    /// A cached token for `scope`, if it has not expired.
    pub(super) fn cached_token(&self, repo: &Repository, scope: &str) -> Option<String> {
        repo.tokens.lock().get(scope).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t.clone())
    }

    /// A cached token for `scope` to send before the upstream asks (`Bearer ...`), once the
    /// upstream's token service is known.
    pub(super) fn preauthorization(&self, repo: &Repository, scope: &str) -> Option<String> {
        let service = repo.token_service.lock().clone()?;
        self.cached_token(repo, &format!("{service}|{scope}")).map(|t| format!("Bearer {t}"))
    }

    /// The upstream refused a cached token: drop it, so the challenge fetches a new one.
    pub(super) fn forget_token(&self, repo: &Repository, authorization: &str) {
        let Some(token) = authorization.strip_prefix("Bearer ") else { return };
        repo.tokens.lock().retain(|_, (t, _)| t != token);
    }

    /// The `Authorization` value that answers an upstream's `WWW-Authenticate`: a Bearer
    /// token from its realm, or the repository's credentials for Basic.
    pub(super) async fn answer_challenge(&self, repo: &Repository, www_authenticate: &str) -> Result<String, String> {
        if let Some(challenge) = parse_challenge(www_authenticate) {
            return Ok(format!("Bearer {}", self.token_for(repo, &challenge).await?));
        }
        match (&repo.credentials, www_authenticate.trim().get(..6)) {
            (Some(c), Some(scheme)) if scheme.eq_ignore_ascii_case("basic ") => Ok(c.basic()),
            (None, Some(scheme)) if scheme.eq_ignore_ascii_case("basic ") => Err("the upstream wants credentials and none are configured".into()),
            _ => Err(format!("unsupported upstream challenge '{www_authenticate}'")),
        }
    }

    /// Answer a Bearer challenge: the token for it, from cache or from its realm (with the
    /// repository's credentials, if it has any; anonymously otherwise).
    pub(super) async fn token_for(&self, repo: &Repository, challenge: &Challenge) -> Result<String, String> {
        let scope_key = format!("{}|{}", challenge.service.as_deref().unwrap_or(""), challenge.scope.as_deref().unwrap_or(""));
        if let Some(t) = self.cached_token(repo, &scope_key) {
            return Ok(t);
        }
        let realm = UpstreamUrl::parse(&challenge.realm).map_err(|e| format!("token realm: {e}"))?;
        // The realm comes from the upstream's response; credentials go only where the
        // operator said they may.
        let allowed = realm.host.eq_ignore_ascii_case(&repo.upstream.host) || repo.token_realms.iter().any(|h| h.eq_ignore_ascii_case(&realm.host));
        if !allowed {
            return Err(format!("token realm host {} is not the upstream's and not in token_realms", realm.host));
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
        if let Some(c) = &repo.credentials {
            // Credentials for an https upstream never travel in the clear.
            if repo.upstream.tls && !realm.tls {
                return Err(format!("token realm {} is plain http; credentials are only sent over https", realm.host));
            }
            headers.push((http::header::AUTHORIZATION, c.basic()));
        }
        let response = self.client.send("GET", &realm, &target, &headers, &repo.timeouts, 1 << 20).await.map_err(|e| e.to_string())?;
        if response.head.status != http::StatusCode::OK {
            return Err(format!("token endpoint {} answered {}", realm.host, response.head.status));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body).map_err(|e| format!("token response: {e}"))?;
        let token = parsed.token.or(parsed.access_token).ok_or("token response has no token")?;
        // Registries issue short tokens (60 s by default); keep a margin.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).min(86_400).saturating_sub(10).max(1));
        let mut tokens = repo.tokens.lock();
        if tokens.len() > 10_000 {
            tokens.clear();
        }
        tokens.insert(scope_key, (token.clone(), Instant::now() + lifetime));
        drop(tokens);
        if let Some(service) = &challenge.service {
            *repo.token_service.lock() = Some(service.clone());
        }
        Ok(token)
    }
}

/// Whether this request may answer a challenge: once, unless what it sent was only a cached
/// token sent ahead (which may have been revoked).
pub(super) fn may_retry_with_token(ctx: &RequestCtx) -> bool {
    ctx.upstream_auth.is_none() || ctx.preauthorized
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
