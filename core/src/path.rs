//! Request paths, checked before they reach an upstream URL or a cache key.
//!
//! Disk file names never come from request paths (they are hashes of the cache key), so this
//! module's job is to keep a request inside its repository's upstream path: no `..` in any
//! spelling, no NUL, no encoded `/` that an upstream would decode into a different path.

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path segment '{0}' is not allowed")]
    DotSegment(String),
    #[error("encoded slash in path segment '{0}'")]
    EncodedSlash(String),
    #[error("control character in path")]
    ControlCharacter,
    #[error("invalid percent-encoding in path")]
    BadEncoding,
}

/// The part of a request's path below its repository prefix, with its query.
#[derive(Debug, Clone, Copy)]
pub struct RequestPath<'a> {
    /// Below the prefix, without a leading `/`, still percent-encoded as the client sent it.
    pub relative: &'a str,
    /// The query string, without `?`, as the client sent it.
    pub query: Option<&'a str>,
}

impl<'a> RequestPath<'a> {
    /// Check every segment and return `relative` unchanged (still encoded) if it is safe.
    pub fn checked_relative(&self, allow_encoded_slash: bool) -> Result<String, PathError> {
        for raw in self.relative.split('/') {
            let bytes: Vec<u8> = percent_decode_str(raw).collect();
            if raw.contains('%') && !valid_percent_encoding(raw) {
                return Err(PathError::BadEncoding);
            }
            if bytes.iter().any(|b| *b < 0x20 || *b == 0x7f) {
                return Err(PathError::ControlCharacter);
            }
            if bytes == b"." || bytes == b".." {
                return Err(PathError::DotSegment(raw.to_string()));
            }
            if bytes.contains(&b'\\') {
                return Err(PathError::DotSegment(raw.to_string()));
            }
            if !allow_encoded_slash && bytes.contains(&b'/') {
                return Err(PathError::EncodedSlash(raw.to_string()));
            }
        }
        Ok(self.relative.to_string())
    }
}

fn valid_percent_encoding(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &str) -> Result<String, PathError> {
        RequestPath { relative: p, query: None }.checked_relative(false)
    }

    #[test]
    fn rejects_traversal_in_every_spelling() {
        assert!(check("a/../b").is_err());
        assert!(check("a/%2e%2e/b").is_err());
        assert!(check("a/%2E%2e/b").is_err());
        assert!(check("a/.%2e/b").is_err());
        assert!(check("./b").is_err());
        assert!(check("a/%2fetc").is_err());
        assert!(check("a/%00").is_err());
        assert!(check("a/%zz").is_err());
        assert!(check("a/..%5c..").is_err());
        assert!(check("a/b%").is_err());
    }

    #[test]
    fn keeps_ordinary_paths() {
        assert_eq!(check("a/b-1.0.tar.gz").unwrap(), "a/b-1.0.tar.gz");
        assert_eq!(check("a/%40scope/x..y").unwrap(), "a/%40scope/x..y");
        assert_eq!(check("").unwrap(), "");
        assert!(RequestPath { relative: "@s%2fn", query: None }.checked_relative(true).is_ok());
    }
}
