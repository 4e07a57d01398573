//! `generic`: files addressed by URL, cached by the HTTP rules plus the repository's overrides.
//!
//! Release assets often sit behind redirects to expiring signed URLs: the proxy follows them
//! itself and caches under the URL the client asked for. A digest can be pinned per path in
//! the config, or given by the client as `?sha256=<hex>` (taken off before the request goes
//! upstream, and not part of the cache key); either way the body is verified before it is
//! cached.

use std::collections::HashMap;

use http::HeaderMap;

use hangar_core::{Digest, PathClass, RequestPath};
use super::{with_query, Format, FormatError, FormatKind, Resolved};

/// Plain HTTP: every path is judged by the upstream's headers (RFC 9111) unless the
/// repository's patterns say otherwise.
pub struct Generic {
    /// Path below the prefix (no leading `/`) -> digest.
    pins: HashMap<String, Digest>,
}

impl Generic {
    pub fn new(pins: &std::collections::BTreeMap<String, String>) -> Result<Self, FormatError> {
        let pins = pins
            .iter()
            .map(|(path, pin)| {
                let digest = pin.strip_prefix("sha256:").and_then(Digest::sha256_hex).ok_or_else(|| FormatError::BadPin(path.clone()))?;
                Ok((path.trim_start_matches('/').to_string(), digest))
            })
            .collect::<Result<_, FormatError>>()?;
        Ok(Generic { pins })
    }
}

/// Split `sha256=<hex>` off a query; returns the digest and the rest of the query.
fn take_sha256(query: Option<&str>) -> Result<(Option<Digest>, Option<String>), FormatError> {
    let Some(q) = query else { return Ok((None, None)) };
    let mut digest = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|pair| match pair.strip_prefix("sha256=") {
            Some(hex) => {
                digest = Some(Digest::sha256_hex(hex));
                false
            }
            None => true,
        })
        .collect();
    let digest = match digest {
        Some(Some(d)) => Some(d),
        Some(None) => return Err(FormatError::BadRequest("sha256= must be 64 hex digits")),
        None => None,
    };
    Ok((digest, (!rest.is_empty()).then(|| rest.join("&"))))
}

impl Format for Generic {
    fn kind(&self) -> FormatKind {
        FormatKind::Generic
    }

    /// Plain HTTP: the upstream's headers decide freshness, and clients' directives count.
    fn default_metadata_ttl(&self) -> Option<std::time::Duration> {
        None
    }

    fn honors_request_directives(&self) -> bool {
        true
    }

    /// Every method is forwarded, extension methods included (only GET and HEAD are cached;
    /// a successful unsafe one invalidates the URL, RFC 9111 §4.4). CONNECT and TRACE are
    /// refused: a cache is not a tunnel, and TRACE reflects credentials back.
    fn allows(&self, method: &http::Method, _path: &str) -> bool {
        method != http::Method::CONNECT && method != http::Method::TRACE
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        let (asked, query) = take_sha256(path.query)?;
        let pinned = self.pins.get(&rel).cloned();
        if let (Some(a), Some(p)) = (&asked, &pinned) {
            if a != p {
                return Err(FormatError::BadRequest("sha256= contradicts the digest pinned for this path"));
            }
        }
        let mut resolved = Resolved::passthrough(with_query(&rel, query.as_deref()), PathClass::Http);
        resolved.digest_asked = pinned.is_none() && asked.is_some();
        resolved.digest = pinned.or(asked);
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    fn resolve(g: &Generic, path: &str, query: Option<&str>) -> Result<Resolved, FormatError> {
        g.resolve(&RequestPath { relative: path, query }, &HeaderMap::new())
    }

    #[test]
    fn sha256_in_the_query_is_a_pin_not_part_of_the_url() {
        let g = Generic::new(&Default::default()).unwrap();
        let r = resolve(&g, "v1/tool.tgz", Some(&format!("a=1&sha256={SHA}&b=2"))).unwrap();
        assert_eq!((r.key_path.as_str(), r.digest), ("v1/tool.tgz?a=1&b=2", Digest::sha256_hex(SHA)));
        assert_eq!(resolve(&g, "v1/tool.tgz", Some(&format!("sha256={SHA}"))).unwrap().key_path, "v1/tool.tgz");
        assert!(resolve(&g, "v1/tool.tgz", Some("sha256=nothex")).is_err());
    }

    #[test]
    fn configured_pins_apply_and_cannot_be_contradicted() {
        let pins = [("/v1/tool.tgz".to_string(), format!("sha256:{SHA}"))].into_iter().collect();
        let g = Generic::new(&pins).unwrap();
        assert_eq!(resolve(&g, "v1/tool.tgz", None).unwrap().digest, Digest::sha256_hex(SHA));
        assert!(resolve(&g, "v1/tool.tgz", Some(&format!("sha256={}", "0".repeat(64)))).is_err());
        let bad = [("/x".to_string(), "md5:abc".to_string())].into_iter().collect();
        assert!(Generic::new(&bad).is_err());
    }
}
