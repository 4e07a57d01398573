//! Request paths, checked before they reach an upstream URL or a cache key.
//!
//! Disk file names never come from request paths (they are hashes of the cache key), so this
//! module's job is to keep a request inside its repository's upstream path: no `..` in any
//! spelling, no NUL, no encoded `/` that an upstream would decode into a different path.

use std::borrow::Cow;

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

/// Which dot segments [`remove_dot_segments`] resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotSegments {
    /// Only `.`: what a path means is unchanged, so this is safe before routing. `..` is
    /// kept, for the router's repository to see and refuse or resolve.
    Current,
    /// `.` and `..`, the latter never above the start of the path (the repository's root).
    All,
}

/// Remove dot segments as RFC 3986 section 5.2.4 does, on a path as sent (still
/// percent-encoded; `%2e` and `%2E` spell a dot too): `a/./b` is `a/b`, `a/b/../c` is `a/c`,
/// a final `.` or `..` leaves the trailing `/`. Borrowed when there is nothing to remove.
///
/// Apt's flat repositories list files as `all/./x.deb` and apt asks for them as listed, so a
/// dot segment is an ordinary spelling, not an attack; only a `..` that would climb above the
/// start of `path` is: [`PathError::DotSegment`].
pub fn remove_dot_segments(path: &str, which: DotSegments) -> Result<Cow<'_, str>, PathError> {
    let is_dot = |seg: &str| -> Option<bool> {
        match seg.len() {
            1 | 3 if seg == "." || seg.eq_ignore_ascii_case("%2e") => Some(false),
            2 | 4 | 6 => {
                let decoded: Vec<u8> = percent_decode_str(seg).collect();
                (decoded == b"..").then_some(true)
            }
            _ => None,
        }
    };
    if !path.split('/').any(|seg| is_dot(seg).is_some_and(|parent| !parent || which == DotSegments::All)) {
        return Ok(Cow::Borrowed(path));
    }
    let absolute = path.starts_with('/');
    let body = if absolute { &path[1..] } else { path };
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = body.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match is_dot(seg) {
            Some(false) => {
                if last {
                    kept.push("");
                }
            }
            Some(true) if which == DotSegments::All => {
                if kept.pop().is_none() {
                    return Err(PathError::DotSegment(seg.to_string()));
                }
                if last {
                    kept.push("");
                }
            }
            _ => kept.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    if absolute {
        out.push('/');
    }
    out.push_str(&kept.join("/"));
    Ok(Cow::Owned(out))
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
    fn dot_segments_are_removed_as_rfc_3986_says_but_never_climb_out() {
        let all = |p| remove_dot_segments(p, DotSegments::All).map(Cow::into_owned);
        let current = |p| remove_dot_segments(p, DotSegments::Current).map(Cow::into_owned);
        assert_eq!(all("all/./probe_1.0_all.deb").unwrap(), "all/probe_1.0_all.deb");
        assert_eq!(all("all/%2E/x").unwrap(), "all/x");
        assert_eq!(all("./b").unwrap(), "b");
        assert_eq!(all("a/b/../c").unwrap(), "a/c");
        assert_eq!(all("a/b/%2e%2E/c").unwrap(), "a/c");
        assert_eq!(all("a/b/..").unwrap(), "a/");
        assert_eq!(all("a/.").unwrap(), "a/");
        assert_eq!(all("/x/./y/").unwrap(), "/x/y/");
        assert!(all("../etc/passwd").is_err());
        assert!(all("a/../../b").is_err());
        assert!(all("a/.%2e/../b").is_err());
        assert_eq!(current("/apt/./all/../x").unwrap(), "/apt/all/../x", "before routing only '.' goes");
        assert!(matches!(remove_dot_segments("/a/b.deb", DotSegments::Current).unwrap(), Cow::Borrowed(_)));
        assert!(matches!(remove_dot_segments("a/..b/.c/x..", DotSegments::All).unwrap(), Cow::Borrowed(_)), "dots inside names are names");
        // What is left passes the traversal check.
        assert!(check(&all("a/./b/../c").unwrap()).is_ok());
    }

    #[test]
    fn keeps_ordinary_paths() {
        assert_eq!(check("a/b-1.0.tar.gz").unwrap(), "a/b-1.0.tar.gz");
        assert_eq!(check("a/%40scope/x..y").unwrap(), "a/%40scope/x..y");
        assert_eq!(check("").unwrap(), "");
        assert!(RequestPath { relative: "@s%2fn", query: None }.checked_relative(true).is_ok());
    }
}
