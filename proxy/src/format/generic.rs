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

    fn cacheability(&self, path: &str, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        self.freshness.decide(path, resp, authorization)
    }
}
