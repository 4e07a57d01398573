//! `generic`: files addressed by URL, cached by the HTTP rules plus the repository's overrides.

use pingora::http::RequestHeader;

use super::{with_query, Format, FormatError, FormatKind, Resolved};
use crate::freshness::PathClass;
use crate::path::RequestPath;

/// Plain HTTP: every path is judged by the upstream's headers (RFC 9111) unless the
/// repository's patterns say otherwise.
pub struct Generic;

impl Format for Generic {
    fn kind(&self) -> FormatKind {
        FormatKind::Generic
    }

    /// Every standard method is forwarded (only GET and HEAD are cached; unsafe methods
    /// invalidate). CONNECT and TRACE are refused: a cache is not a tunnel, and TRACE reflects
    /// credentials back.
    fn allows(&self, method: &http::Method, _path: &str) -> bool {
        use http::Method;
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS].contains(method)
    }

    fn resolve(&self, path: &RequestPath<'_>, _req: &RequestHeader) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        Ok(Resolved::passthrough(with_query(&rel, path.query), PathClass::Http))
    }
}
