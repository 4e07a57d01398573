//! How long a response may be served from cache without asking the upstream, and how long
//! past that it may still be served stale.
//!
//! RFC 9111 decides by default: the upstream's Cache-Control, Expires, Age and Date, then the
//! Last-Modified heuristic. A repository's config overrides it by path class: immutable
//! artefacts are cached for good, metadata gets its own TTL and stale-while-revalidate, and a
//! default TTL covers responses that say nothing. Stale-if-error windows are what keeps builds
//! running through an outage, so they are part of the decision made here, once, when a
//! response is stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

use hangar_core::{PathClass, PathPattern};

use crate::config::FreshnessConfig;
use crate::http_date;

/// "Forever" for immutable artefacts: long enough to never matter, short enough not to overflow.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(10 * 365 * 86400);

/// Longest heuristic freshness granted (RFC 9111 §4.2.2 suggests a fraction of the age,
/// and warns against long heuristics).
pub const MAX_HEURISTIC_TTL: Duration = Duration::from_secs(86400);

/// RFC 9111 §4.2.2: with no explicit expiry, a 200 with `Last-Modified` may be considered fresh
/// for a fraction (10%) of the time since it was last modified.
fn heuristic_ttl(resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let modified = http_date(resp, http::header::LAST_MODIFIED, now)?;
    let age = http_date::after(http_date::seconds(now), modified);
    let ttl = (age / 10).min(MAX_HEURISTIC_TTL);
    (!ttl.is_zero()).then_some(ttl)
}

/// A repository's freshness rules, compiled.
#[derive(Debug, Clone)]
pub struct FreshnessPolicy {
    immutable: Vec<PathPattern>,
    metadata: Vec<PathPattern>,
    metadata_ttl: Option<Duration>,
    stale_while_revalidate: Duration,
    default_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    max_stale: Duration,
    negative_ttl: Duration,
    honor_request_directives: bool,
    /// The targeted field (RFC 9213) addressed to Hangar, read before `CDN-Cache-Control`.
    targeted_field: String,
}

/// Seconds for pingora's stale windows, saturating.
fn secs(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}

/// RFC 9111 §4.2.3: the age a response already had when it arrived: the larger of its `Age`
/// header and how long ago its `Date` says it was generated. Of a list-valued `Age` the first
/// member counts; one that is not a plain number is ignored (§5.1).
fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let age_value = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = http_date(resp, http::header::DATE, now).map_or(Duration::ZERO, |date| http_date::after(http_date::seconds(now), date));
    age_value.max(apparent)
}

/// A date header of `resp`, as seconds since the epoch.
fn http_date(resp: &ResponseHeader, name: http::header::HeaderName, now: SystemTime) -> Option<i64> {
    http_date::parse(resp.headers.get(name)?.to_str().ok()?.trim(), now)
}

/// RFC 9111 §4.2.1: the freshness lifetime the response states, if any. `no-cache` means
/// "stored, but validated before every use"; `s-maxage` beats `max-age` in a shared cache;
/// `Expires` counts from the response's own `Date`, and an invalid `Expires` is in the past.
/// Under a targeted field (RFC 9213 §2.1) `Expires` is ignored, as `Cache-Control` is.
fn explicit_lifetime(cc: Option<&CacheControl>, targeted: bool, resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    if let Some(cc) = cc {
        if cc.no_cache() {
            return Some(Duration::ZERO);
        }
        if let Ok(Some(s)) = cc.s_maxage() {
            return Some(Duration::from_secs(s.into()));
        }
        if let Ok(Some(s)) = cc.max_age() {
            return Some(Duration::from_secs(s.into()));
        }
    }
    if targeted {
        return None;
    }
    let mut expires = resp.headers.get_all(http::header::EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        return Some(Duration::ZERO);
    }
    let Some(at) = first.to_str().ok().and_then(|v| http_date::parse(v.trim(), now)) else {
        return Some(Duration::ZERO);
    };
    let base = http_date(resp, http::header::DATE, now).unwrap_or_else(|| http_date::seconds(now));
    Some(http_date::after(at, base))
}

/// Directives by which the origin forbids serving the response stale (RFC 9111 §4.2.4).
pub fn forbids_stale(cc: Option<&CacheControl>) -> bool {
    cc.is_some_and(|cc| {
        cc.must_revalidate()
            || cc.proxy_revalidate()
            || cc.no_cache()
            || cc.has_directive(&pingora::cache::cache_control::DirectiveKey::SMaxAge)
    })
}

fn has_validator(resp: &ResponseHeader) -> bool {
    resp.headers.contains_key(http::header::ETAG) || resp.headers.contains_key(http::header::LAST_MODIFIED)
}

impl FreshnessPolicy {
    pub fn from_config(cfg: &FreshnessConfig) -> Result<Self, String> {
        let compile = |ps: &[String]| ps.iter().map(|p| PathPattern::new(p)).collect::<Result<Vec<_>, _>>();
        Ok(FreshnessPolicy {
            immutable: compile(&cfg.immutable)?,
            metadata: compile(&cfg.metadata)?,
            metadata_ttl: cfg.metadata_ttl.map(|d| d.0),
            stale_while_revalidate: cfg.stale_while_revalidate.0,
            default_ttl: cfg.default_ttl.map(|d| d.0),
            max_ttl: cfg.max_ttl.map(|d| d.0),
            max_stale: cfg.max_stale.0,
            negative_ttl: cfg.negative_ttl.0,
            honor_request_directives: cfg.honor_request_directives.unwrap_or(true),
            targeted_field: cfg.targeted_field.to_ascii_lowercase(),
        })
    }

    /// The response's caching directives (RFC 9213 §2.1): the first of Hangar's targeted field
    /// and `CDN-Cache-Control` with a valid, non-empty value, else `Cache-Control`. The flag
    /// says whether a targeted field decided (then `Expires` is ignored too).
    pub fn cache_control(&self, headers: &http::HeaderMap) -> (Option<CacheControl>, bool) {
        for name in [self.targeted_field.as_str(), "cdn-cache-control"] {
            if let Some(cc) = CacheControl::from_headers_named(name, headers).filter(|cc| !cc.directives.is_empty()) {
                return (Some(cc), true);
            }
        }
        (CacheControl::from_headers_named("cache-control", headers), false)
    }

    /// The class the repository's own patterns give `path`, if any; they beat the format's.
    pub fn configured_class(&self, path: &str) -> Option<PathClass> {
        if self.immutable.iter().any(|p| p.matches(path)) {
            Some(PathClass::Immutable)
        } else if self.metadata.iter().any(|p| p.matches(path)) {
            Some(PathClass::Metadata)
        } else {
            None
        }
    }

    /// How long an index (or what a tag points to) is used before asking the upstream again.
    pub fn metadata_ttl(&self) -> Option<Duration> {
        self.metadata_ttl
    }

    /// Whether clients' `Cache-Control` request directives are obeyed. Package managers send
    /// `max-age=0` on every index request (pip does), which would defeat a shared cache; a
    /// repository can choose to ignore them.
    pub fn honor_request_directives(&self) -> bool {
        self.honor_request_directives
    }

    /// Decide whether (and for how long) `resp` may be cached.
    ///
    /// RFC 9111 §3.5 (responses to requests with `Authorization` are stored only when the
    /// origin allows a shared cache to) has nothing to act on here: a client's credentials
    /// are Hangar's own, checked against the grants on every request, hits included, and never
    /// sent upstream; what goes upstream is the repository's configured credentials, the same
    /// for every client the grants let in.
    pub fn decide(&self, class: PathClass, resp: &ResponseHeader) -> RespCacheable {
        match resp.status.as_u16() {
            200 => self.decide_ok(class, resp),
            404 => self.decide_not_found(resp),
            _ => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        }
    }

    /// Negative caching: a 404 is remembered for `negative_ttl` at most (less if the upstream
    /// says so), and never served past that on an outage.
    fn decide_not_found(&self, resp: &ResponseHeader) -> RespCacheable {
        let (cc, _) = self.cache_control(&resp.headers);
        let refused = cc.as_ref().is_some_and(|c| c.is_cacheable() == pingora::cache::cache_control::Cacheable::No);
        if refused || self.negative_ttl.is_zero() {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        let ttl = cc.as_ref().and_then(|c| c.fresh_duration()).map_or(self.negative_ttl, |t| t.min(self.negative_ttl));
        // A zero TTL is stored already stale: the next request asks the upstream again.
        let until = if ttl.is_zero() { now - Duration::from_secs(1) } else { now + ttl };
        RespCacheable::Cacheable(CacheMeta::new(until, now, 0, 0, resp.clone()))
    }

    fn decide_ok(&self, class: PathClass, resp: &ResponseHeader) -> RespCacheable {
        let uncacheable = RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        let (cc, targeted) = self.cache_control(&resp.headers);
        // no-store and an unqualified private mean "never keep this", whatever the config says.
        if cc.as_ref().is_some_and(|c| c.is_cacheable() == pingora::cache::cache_control::Cacheable::No) {
            return uncacheable;
        }
        let now = SystemTime::now();
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        if class == PathClass::Immutable {
            return RespCacheable::Cacheable(CacheMeta::new(now + IMMUTABLE_TTL, now, 0, u32::MAX, header));
        }

        let overridden = class == PathClass::Metadata && self.metadata_ttl.is_some();
        let (epoch, lifetime) = match (class, self.metadata_ttl) {
            (PathClass::Metadata, Some(ttl)) => (now, ttl),
            _ => {
                let lifetime = explicit_lifetime(cc.as_ref(), targeted, resp, now)
                    .or_else(|| heuristic_ttl(resp, now))
                    // Validators but no freshness: stored, and validated before every use.
                    .or_else(|| has_validator(resp).then_some(Duration::ZERO))
                    // Neither: reused only if the repository says for how long.
                    .or(self.default_ttl);
                let Some(lifetime) = lifetime else { return uncacheable };
                // A response born before 1970 (a huge Age) is stale on arrival, and the epoch
                // it counts from cannot precede the Unix epoch.
                let born = now.checked_sub(initial_age(resp, now)).filter(|t| t.duration_since(UNIX_EPOCH).is_ok_and(|d| d.as_secs() > 0));
                (born.unwrap_or(UNIX_EPOCH + Duration::from_secs(1)), lifetime)
            }
        };
        let lifetime = self.max_ttl.map_or(lifetime, |max| lifetime.min(max));
        let fresh_until = if lifetime.is_zero() { epoch - Duration::from_secs(1) } else { epoch + lifetime };

        let no_stale = forbids_stale(cc.as_ref()) && !overridden;
        let swr = match class {
            _ if no_stale => Duration::ZERO,
            PathClass::Metadata => self.stale_while_revalidate,
            _ => cc
                .as_ref()
                .and_then(|c| c.stale_while_revalidate().ok().flatten())
                .map_or(Duration::ZERO, |s| Duration::from_secs(s.into()).min(self.max_stale)),
        };
        let stale_if_error = if no_stale { Duration::ZERO } else { self.max_stale };
        let mut meta = CacheMeta::new(fresh_until, now, secs(swr), secs(stale_if_error), header);
        if epoch != now {
            meta.set_epoch_override(epoch);
        }
        RespCacheable::Cacheable(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), v.to_string()).unwrap();
        }
        r
    }

    fn ttl(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(m) => Some(m.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    const HTTP: PathClass = PathClass::Http;

    fn policy(cfg: FreshnessConfig) -> FreshnessPolicy {
        FreshnessPolicy::from_config(&cfg).unwrap()
    }

    fn windows(c: RespCacheable) -> (u32, u32) {
        match c {
            RespCacheable::Cacheable(m) => (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            RespCacheable::Uncacheable(_) => panic!("not cacheable"),
        }
    }

    fn d(secs: u64) -> Option<hangar_core::HumanDuration> {
        Some(hangar_core::HumanDuration(Duration::from_secs(secs)))
    }

    #[test]
    fn origin_headers_then_heuristics_then_defaults() {
        let none = policy(FreshnessConfig::default());
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("cache-control", "max-age=60")]))), Some(60));
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("cache-control", "s-maxage=30, max-age=60")]))), Some(30), "s-maxage wins in a shared cache");
        assert_eq!(ttl(none.decide(HTTP, &resp(&[]))), None, "nothing said, no validators, no default: not cached");
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("etag", "\"a\"")]))), Some(0), "validators only: stored, revalidated each use");
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("cache-control", "no-cache"), ("cache-control", "max-age=60")]))), Some(0));
        let day_old = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(86400));
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("last-modified", &day_old)]))), Some(8640), "10% heuristic");
        let year_old = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(365 * 86400));
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("last-modified", &year_old)]))), Some(86400), "capped");
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("cache-control", "no-store, max-age=60")]))), None);
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("cache-control", "private")]))), None);
        assert_eq!(ttl(none.decide(HTTP, &resp(&[("cache-control", "private=\"set-cookie\", max-age=5")]))), Some(5), "qualified private strips fields only");

        let p = policy(FreshnessConfig {
            immutable: vec!["*.tgz".into()],
            default_ttl: d(300),
            max_ttl: d(3600),
            ..FreshnessConfig::default()
        });
        assert_eq!(ttl(p.decide(HTTP, &resp(&[]))), Some(300));
        assert_eq!(ttl(p.decide(HTTP, &resp(&[("cache-control", "max-age=86400")]))), Some(3600));
        let imm = p.configured_class("/a.tgz").unwrap();
        assert_eq!(ttl(p.decide(imm, &resp(&[("cache-control", "max-age=5")]))), Some(IMMUTABLE_TTL.as_secs()));
        assert_eq!(ttl(p.decide(imm, &resp(&[("cache-control", "no-store")]))), None);
        let mut not_found = resp(&[("cache-control", "max-age=600")]);
        not_found.set_status(404).unwrap();
        assert_eq!(ttl(p.decide(HTTP, &not_found)), Some(60), "404s are remembered briefly");
        let mut gone = resp(&[]);
        gone.set_status(410).unwrap();
        assert_eq!(ttl(p.decide(HTTP, &gone)), None);
    }

    #[test]
    fn expires_counts_from_date_and_age_is_already_spent() {
        let p = policy(FreshnessConfig::default());
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let lifetime = ttl(p.decide(HTTP, &resp(&[("date", &date), ("expires", &expires)]))).unwrap();
        assert!((119..=121).contains(&lifetime), "{lifetime}");
        assert_eq!(ttl(p.decide(HTTP, &resp(&[("expires", "0")]))), Some(0), "invalid Expires is in the past");
        match p.decide(HTTP, &resp(&[("cache-control", "max-age=100"), ("age", "40")])) {
            RespCacheable::Cacheable(m) => {
                assert!(m.age() >= Duration::from_secs(40));
                assert!(m.fresh_until() <= SystemTime::now() + Duration::from_secs(60));
            }
            RespCacheable::Uncacheable(_) => panic!("cacheable"),
        }
    }

    #[test]
    fn stale_windows_follow_the_origin_and_the_path_class() {
        let p = policy(FreshnessConfig {
            metadata: vec!["/simple/**".into()],
            metadata_ttl: d(120),
            stale_while_revalidate: hangar_core::HumanDuration(Duration::from_secs(900)),
            max_stale: hangar_core::HumanDuration(Duration::from_secs(3600)),
            ..FreshnessConfig::default()
        });
        assert_eq!(windows(p.decide(HTTP, &resp(&[("cache-control", "max-age=60")]))), (0, 3600));
        assert_eq!(windows(p.decide(HTTP, &resp(&[("cache-control", "max-age=60, stale-while-revalidate=30")]))), (30, 3600));
        for forbid in ["must-revalidate", "proxy-revalidate", "s-maxage=60", "no-cache"] {
            assert_eq!(windows(p.decide(HTTP, &resp(&[("cache-control", &format!("max-age=60, stale-while-revalidate=30, {forbid}"))]))), (0, 0), "{forbid}");
        }
        let meta = p.configured_class("/simple/pkg/").unwrap();
        assert_eq!(meta, PathClass::Metadata);
        let r = resp(&[("cache-control", "max-age=86400, must-revalidate")]);
        assert_eq!(ttl(p.decide(meta, &r)), Some(120), "metadata_ttl replaces the origin's freshness");
        assert_eq!(windows(p.decide(meta, &r)), (900, 3600));
        assert_eq!(ttl(p.decide(meta, &resp(&[("cache-control", "no-store")]))), None, "refusals still hold");
    }
}
