//! What Hangar's parts share, and nothing else: the proxy, origin and (later) the agent and
//! analytics sink all speak these types, so they live in one small crate with no pingora and no
//! tokio in it.
//!
//! Reading order:
//! - [`digest`]: what an artefact's bytes must hash to ([`Digest`], [`Hasher`]);
//! - [`path`]: a request path below a repository, checked for traversal ([`RequestPath`]);
//! - [`units`]: sizes and durations as an operator writes them (`256MiB`, `30s`);
//! - [`format`]: the list of package formats ([`FormatKind`]);
//! - [`class`]: what a path holds, for freshness ([`PathClass`], [`PathPattern`]);
//! - [`url`]: upstream base URLs and redirects ([`UpstreamUrl`]);
//! - [`wire`]: the protocol between proxies, origin and agents (paths, `x-hangar-*` headers, the
//!   hop proof, the repository-name rule, the origin manifest);
//! - [`event`]: cache results, tiers and the [`DownloadEvent`] analytics records.

pub mod class;
pub mod digest;
pub mod event;
pub mod format;
pub mod path;
pub mod units;
pub mod url;
pub mod wire;

pub use class::{PathClass, PathPattern};
pub use digest::{Digest, Hasher};
pub use event::{CacheResult, DownloadEvent, Tier};
pub use format::FormatKind;
pub use path::{remove_dot_segments, DotSegments, PathError, RequestPath};
pub use units::{ByteSize, HumanDuration};
pub use url::{UpstreamUrl, UrlError};
