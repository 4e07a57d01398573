//! origin's configuration: where it listens, where it stores, how each repository is served.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hangar_core::ByteSize;
use serde::Deserialize;

use crate::store::S3Options;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where uploads are spooled while their digest is checked, before they are stored.
    #[serde(default = "default_spool")]
    pub spool_dir: PathBuf,
    #[serde(default)]
    pub store: StoreConfig,
    /// Per repository: answer GETs with the bytes (default) or with a redirect to a
    /// presigned URL, so large downloads bypass this service.
    #[serde(default)]
    pub repositories: HashMap<String, RepositoryServing>,
    /// Lifetime of presigned URLs, in seconds.
    #[serde(default = "default_presign_secs")]
    pub presign_ttl_secs: u64,
    /// The proxies' `fleet.secret`: origin's credential. Every object request (a read, an
    /// upload, a repair of a copy found corrupt) must be signed with it by a proxy; unset,
    /// origin serves and stores nothing (403).
    #[serde(default)]
    pub fleet_secret: Option<FleetSecret>,
    /// The largest upload accepted (`"16GiB"`, or bytes). A larger one is answered 413: at
    /// once when its `Content-Length` says so, before a byte of the body is read; otherwise
    /// as soon as its body passes the limit. Either way nothing of it is stored, and the
    /// spool never holds more than this.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: ByteSize,
}

/// A secret from the config file: usable, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct FleetSecret(pub String);

impl std::fmt::Debug for FleetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A local directory: the default, for one machine or a test.
    Local { dir: PathBuf },
    S3(S3Options),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Local { dir: PathBuf::from("/var/tmp/hangar-origin") }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryServing {
    #[serde(default)]
    pub serve: Serve,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serve {
    #[default]
    Bytes,
    Redirect,
}

fn default_listen() -> String {
    "127.0.0.1:9400".into()
}
fn default_spool() -> PathBuf {
    std::env::temp_dir()
}
fn default_max_upload() -> ByteSize {
    ByteSize(16 << 30)
}
fn default_presign_secs() -> u64 {
    300
}

impl OriginConfig {
    pub fn presign_ttl(&self) -> Duration {
        Duration::from_secs(self.presign_ttl_secs)
    }

    pub fn serve(&self, repository: &str) -> Serve {
        self.repositories.get(repository).map(|r| r.serve).unwrap_or_default()
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/origin.toml")).unwrap();
        let c: OriginConfig = toml::from_str(&text).unwrap();
        assert!(matches!(c.store, StoreConfig::S3(ref s) if s.multipart_threshold == 64 << 20));
        assert_eq!(c.serve("oci"), Serve::Redirect);
        assert_eq!(c.serve("npm"), Serve::Bytes);
        assert!(c.listen.starts_with("127.0.0.1:"), "the example origin binds loopback, not every interface: {}", c.listen);
        assert!(matches!(OriginConfig::default().store, StoreConfig::Local { .. }));
        assert_eq!(OriginConfig::default().max_upload_bytes, ByteSize(16 << 30));
        let small: OriginConfig = toml::from_str("max_upload_bytes = \"1KiB\"").unwrap();
        assert_eq!(small.max_upload_bytes, ByteSize(1024));
    }
}
