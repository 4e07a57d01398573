//! Cache-Control directives in requests (RFC 9111 §5.2.1): what a client asks of the cache.

use std::time::Duration;

use http::HeaderMap;

/// The request directives a shared cache acts on. Unknown directives are ignored, as the RFC
/// requires.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Do not answer from cache without validating with the upstream first.
    pub no_cache: bool,
    /// Do not store the response to this request.
    pub no_store: bool,
    /// Only a stored response at most this old will do.
    pub max_age: Option<Duration>,
    /// Only a stored response that stays fresh at least this long will do.
    pub min_fresh: Option<Duration>,
    /// A stale response is acceptable: `Some(None)` however stale, `Some(Some(d))` up to `d`.
    pub max_stale: Option<Option<Duration>>,
    /// Answer from cache or with 504; never contact the upstream.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                // A malformed number asks for the strictest reading: zero.
                let seconds = || Duration::from_secs(arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "max-age" => d.max_age = Some(seconds()),
                    "min-fresh" => d.min_fresh = Some(seconds()),
                    "max-stale" => d.max_stale = Some(arg.map(|_| seconds())),
                    _ => {}
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> RequestDirectives {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::CACHE_CONTROL, v.parse().unwrap());
        }
        RequestDirectives::parse(&h)
    }

    #[test]
    fn directives_across_lines_and_case() {
        let d = parse(&["No-Cache, max-age=5", "MIN-FRESH=\"7\", only-if-cached"]);
        assert!(d.no_cache && d.only_if_cached && !d.no_store);
        assert_eq!(d.max_age, Some(Duration::from_secs(5)));
        assert_eq!(d.min_fresh, Some(Duration::from_secs(7)));
        assert_eq!(d.max_stale, None);
    }

    #[test]
    fn max_stale_with_and_without_a_limit() {
        assert_eq!(parse(&["max-stale"]).max_stale, Some(None));
        assert_eq!(parse(&["max-stale=30"]).max_stale, Some(Some(Duration::from_secs(30))));
    }

    #[test]
    fn malformed_numbers_are_strict_and_unknown_directives_ignored() {
        let d = parse(&["max-age=soon, x-custom=1, no-store"]);
        assert_eq!(d.max_age, Some(Duration::ZERO));
        assert!(d.no_store);
        assert_eq!(parse(&[]), RequestDirectives::default());
    }
}
