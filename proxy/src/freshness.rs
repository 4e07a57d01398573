//! How long a response may be served from cache without asking the upstream.
//!
//! The upstream's own headers decide by default (Cache-Control, then Expires); a repository's
//! config can override them: paths matching an `immutable` pattern are cached for good, a
//! `default_ttl` covers responses that say nothing, and `max_ttl` caps what the upstream asks for.

use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::calculate_fresh_until;
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

use crate::config::FreshnessConfig;

/// "Forever" for immutable artefacts: long enough to never matter, short enough not to overflow.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(10 * 365 * 86400);

/// Pingora consults these only when the response says nothing; Hangar applies its own default.
static NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Longest heuristic freshness granted (RFC 9111 §4.2.2 suggests a fraction of the age,
/// and warns against long heuristics).
pub const MAX_HEURISTIC_TTL: Duration = Duration::from_secs(86400);

/// RFC 9111 §4.2.2: with no explicit expiry, a 200 with `Last-Modified` may be considered fresh
/// for a fraction (10%) of the time since it was last modified.
fn heuristic_ttl(resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let lm = resp.headers.get(http::header::LAST_MODIFIED)?.to_str().ok()?;
    let modified = httpdate::parse_http_date(lm).ok()?;
    let age = now.duration_since(modified).ok()?;
    let ttl = (age / 10).min(MAX_HEURISTIC_TTL);
    (!ttl.is_zero()).then_some(ttl)
}

/// A path glob: `*` matches within one segment, `**` matches any number of characters.
#[derive(Debug, Clone)]
pub struct PathPattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(String),
    Star,
    DoubleStar,
}

impl PathPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty path pattern".into());
        }
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '*' {
                if !lit.is_empty() {
                    tokens.push(Token::Literal(std::mem::take(&mut lit)));
                }
                if chars.peek() == Some(&'*') {
                    chars.next();
                    tokens.push(Token::DoubleStar);
                } else {
                    tokens.push(Token::Star);
                }
            } else {
                lit.push(c);
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(PathPattern { tokens })
    }

    /// Patterns without a leading `/` match anywhere (as if they started with `**/`... or `**`).
    pub fn matches(&self, path: &str) -> bool {
        let anchored = matches!(self.tokens.first(), Some(Token::Literal(l)) if l.starts_with('/'));
        if anchored {
            Self::match_from(&self.tokens, path)
        } else {
            (0..=path.len())
                .filter(|&i| path.is_char_boundary(i))
                .any(|i| Self::match_from(&self.tokens, &path[i..]))
        }
    }

    fn match_from(tokens: &[Token], s: &str) -> bool {
        match tokens.split_first() {
            None => s.is_empty(),
            Some((Token::Literal(l), rest)) => {
                s.strip_prefix(l.as_str()).is_some_and(|r| Self::match_from(rest, r))
            }
            Some((star, rest)) => {
                let limit = if *star == Token::Star {
                    s.find('/').unwrap_or(s.len())
                } else {
                    s.len()
                };
                (0..=limit)
                    .filter(|&i| s.is_char_boundary(i))
                    .any(|i| Self::match_from(rest, &s[i..]))
            }
        }
    }
}

/// A repository's freshness rules, compiled.
#[derive(Debug, Clone)]
pub struct FreshnessPolicy {
    immutable: Vec<PathPattern>,
    default_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    max_stale: Duration,
    negative_ttl: Duration,
}

impl FreshnessPolicy {
    pub fn from_config(cfg: &FreshnessConfig) -> Result<Self, String> {
        Ok(FreshnessPolicy {
            immutable: cfg.immutable.iter().map(|p| PathPattern::new(p)).collect::<Result<_, _>>()?,
            default_ttl: cfg.default_ttl.map(|d| d.0),
            max_ttl: cfg.max_ttl.map(|d| d.0),
            max_stale: cfg.max_stale.0,
            negative_ttl: cfg.negative_ttl.0,
        })
    }

    pub fn is_immutable(&self, path: &str) -> bool {
        self.immutable.iter().any(|p| p.matches(path))
    }

    /// Decide whether (and for how long) `resp` to a request for `path` may be cached.
    pub fn decide(&self, path: &str, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        match resp.status.as_u16() {
            200 => self.decide_ok(path, resp, authorization),
            404 => self.decide_not_found(resp, authorization),
            _ => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        }
    }

    /// Negative caching: a 404 is remembered for `negative_ttl` at most (less if the upstream
    /// says so), and never served past that on an outage.
    fn decide_not_found(&self, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        let cc = CacheControl::from_resp_headers(resp);
        let refused = cc.as_ref().is_some_and(|c| c.is_cacheable() == pingora::cache::cache_control::Cacheable::No);
        if refused || authorization || self.negative_ttl.is_zero() {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        let ttl = cc.as_ref().and_then(|c| c.fresh_duration()).map_or(self.negative_ttl, |t| t.min(self.negative_ttl));
        // A zero TTL is stored already stale: the next request asks the upstream again.
        let until = if ttl.is_zero() { now - Duration::from_secs(1) } else { now + ttl };
        RespCacheable::Cacheable(CacheMeta::new(until, now, 0, 0, resp.clone()))
    }

    fn decide_ok(&self, path: &str, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        let cc = CacheControl::from_resp_headers(resp);
        let now = SystemTime::now();
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        let immutable = self.is_immutable(path);
        // Stale-if-error window: immutable content never changes, so any copy beats an error.
        let stale_if_error = if immutable { u32::MAX } else { self.max_stale.as_secs().min(u32::MAX as u64) as u32 };
        let fresh_until = if immutable {
            // Still honour an explicit refusal: no-store/private mean "never keep this".
            let refused = cc.as_ref().is_some_and(|c| {
                c.is_cacheable() == pingora::cache::cache_control::Cacheable::No
            });
            if refused || authorization {
                None
            } else {
                Some(now + IMMUTABLE_TTL)
            }
        } else {
            calculate_fresh_until(now, cc.as_ref(), resp, authorization, &NO_DEFAULTS)
                .or_else(|| {
                    let refused = cc.as_ref().is_some_and(|c| {
                        c.is_cacheable() == pingora::cache::cache_control::Cacheable::No
                    });
                    if refused || authorization {
                        return None;
                    }
                    self.default_ttl.or_else(|| heuristic_ttl(resp, now)).map(|t| now + t)
                })
                .map(|until| match self.max_ttl {
                    Some(max) => until.min(now + max),
                    None => until,
                })
        };
        match fresh_until {
            Some(until) => RespCacheable::Cacheable(CacheMeta::new(until, now, 0, stale_if_error, header)),
            None => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        r
    }

    fn ttl(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(m) => Some(m.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn patterns() {
        let p = PathPattern::new("*.tar.gz").unwrap();
        assert!(p.matches("/a/b/x-1.0.tar.gz"));
        assert!(!p.matches("/a/b/x-1.0.tar.gz.sig"));
        let anchored = PathPattern::new("/releases/*/asset").unwrap();
        assert!(anchored.matches("/releases/v1/asset"));
        assert!(!anchored.matches("/releases/v1/x/asset"));
        assert!(!anchored.matches("/x/releases/v1/asset"));
        let deep = PathPattern::new("/pool/**").unwrap();
        assert!(deep.matches("/pool/main/a/b.deb"));
        assert!(!deep.matches("/dists/x"));
    }

    #[test]
    fn origin_headers_then_defaults_then_overrides() {
        let none = FreshnessPolicy::from_config(&FreshnessConfig::default()).unwrap();
        assert_eq!(ttl(none.decide("/x", &resp(&[("cache-control", "max-age=60")]), false)), Some(60));
        assert_eq!(ttl(none.decide("/x", &resp(&[]), false)), None, "nothing said, no default: not cached");
        let day_old = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(86400));
        assert_eq!(ttl(none.decide("/x", &resp(&[("last-modified", &day_old)]), false)), Some(8640), "10% heuristic");
        let year_old = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(365 * 86400));
        assert_eq!(ttl(none.decide("/x", &resp(&[("last-modified", &year_old)]), false)), Some(86400), "capped");
        assert_eq!(ttl(none.decide("/x", &resp(&[("cache-control", "no-store, max-age=60")]), false)), None);

        let cfg = FreshnessConfig {
            immutable: vec!["*.tgz".into()],
            default_ttl: Some(crate::units::HumanDuration(Duration::from_secs(300))),
            max_ttl: Some(crate::units::HumanDuration(Duration::from_secs(3600))),
            ..FreshnessConfig::default()
        };
        let p = FreshnessPolicy::from_config(&cfg).unwrap();
        assert_eq!(ttl(p.decide("/x", &resp(&[]), false)), Some(300));
        assert_eq!(ttl(p.decide("/x", &resp(&[("cache-control", "max-age=86400")]), false)), Some(3600));
        assert_eq!(ttl(p.decide("/a.tgz", &resp(&[("cache-control", "max-age=5")]), false)), Some(IMMUTABLE_TTL.as_secs()));
        assert_eq!(ttl(p.decide("/a.tgz", &resp(&[("cache-control", "no-store")]), false)), None);
        assert_eq!(ttl(p.decide("/x", &resp(&[]), true)), None, "authorized responses need explicit permission");
        let mut not_found = resp(&[("cache-control", "max-age=600")]);
        not_found.set_status(404).unwrap();
        assert_eq!(ttl(p.decide("/x", &not_found, false)), Some(60), "404s are remembered briefly");
        let mut gone = resp(&[]);
        gone.set_status(410).unwrap();
        assert_eq!(ttl(p.decide("/x", &gone, false)), None);
    }
}
