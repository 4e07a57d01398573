//! Package formats: what one kind of registry means by its URLs.
//!
//! Each format is one module behind [`Format`]. The proxy phases ask the repository's format how to
//! map a path, which methods it serves and what a path holds (artefact or index); the cache and storage code
//! never know which format they hold. Adding a format means adding a module and a [`FormatKind`]
//! variant, nothing else.

mod generic;

pub use generic::Generic;

use http::Method;
use serde::Deserialize;

use crate::freshness::PathClass;
use crate::path::{PathError, RequestPath};

/// The `format` key of a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// Plain HTTP files: release assets, tarballs, anything addressed by URL.
    #[default]
    Generic,
}

impl FormatKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FormatKind::Generic => "generic",
        }
    }

    pub fn build(self) -> Box<dyn Format> {
        match self {
            FormatKind::Generic => Box::new(Generic),
        }
    }
}

/// One package format's rules. Implementations must be cheap to call per request.
pub trait Format: Send + Sync {
    fn kind(&self) -> FormatKind;

    /// Methods this format answers; others get 405 before any upstream or cache work.
    fn allows_method(&self, method: &Method) -> bool {
        method == Method::GET || method == Method::HEAD
    }

    /// Validate the path below the repository prefix and return the path to request upstream,
    /// relative to the upstream's base path (no leading `/`).
    ///
    /// The default rejects any segment that decodes to `.` or `..`, NUL or other control
    /// characters, and encoded slashes, so a request can never name something outside the
    /// repository's upstream path.
    fn upstream_path(&self, path: &RequestPath<'_>) -> Result<String, PathError> {
        path.checked_relative(false)
    }

    /// What `path` (below the repository prefix) holds: the format knows which of its URLs
    /// name versioned artefacts and which name indexes. A repository's own `immutable` and
    /// `metadata` patterns take precedence.
    fn classify(&self, _path: &str) -> PathClass {
        PathClass::Http
    }
}
