//! `generic`: files addressed by URL, cached by the HTTP rules plus the repository's overrides.

use pingora::cache::RespCacheable;
use pingora::http::ResponseHeader;

use super::{Format, FormatKind};
use crate::freshness::FreshnessPolicy;

pub struct Generic {
    freshness: FreshnessPolicy,
}

impl Generic {
    pub fn new(freshness: FreshnessPolicy) -> Self {
        Generic { freshness }
    }
}

impl Format for Generic {
    fn kind(&self) -> FormatKind {
        FormatKind::Generic
    }

    /// Plain HTTP: every standard method is forwarded (only GET and HEAD are cached; unsafe
    /// methods invalidate). CONNECT and TRACE are refused: a cache is not a tunnel, and TRACE
    /// reflects credentials back.
    fn allows_method(&self, method: &http::Method) -> bool {
        use http::Method;
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS].contains(method)
    }

    fn cacheability(&self, path: &str, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        self.freshness.decide(path, resp, authorization)
    }
}
