//! What happened to a request, in the words every part uses: the cache result a client sees
//! in `X-Hangar-Cache`, where the bytes came from, the storage tiers, and the
//! [`DownloadEvent`] analytics keep for every served artefact.

use serde::{Deserialize, Serialize};

use crate::FormatKind;

/// How the proxy answered a request, as the `X-Hangar-Cache` response header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheResult {
    /// Served from cache, fresh.
    Hit,
    /// Fetched (and stored, if it could be).
    Miss,
    /// Served from cache past its freshness: stale-while-revalidate, an upstream outage,
    /// offline mode, or a client's `max-stale`.
    Stale,
    /// Validated with the upstream (a 304) and served from cache.
    Revalidated,
    /// Found in cache but expired, and fetched again.
    Expired,
    /// The cache was not involved: an answer of the proxy's own, or a method it does not cache.
    Bypass,
}

impl CacheResult {
    /// Every result, in the order metrics list them.
    pub const ALL: [CacheResult; 6] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Stale, CacheResult::Revalidated, CacheResult::Expired, CacheResult::Bypass];

    /// The header and metrics label (`"hit"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Expired => "expired",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// Where the bytes a client received came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// This proxy's cache (memory or disk tier).
    Cache,
    /// The key's owner in the fleet.
    Peer,
    /// The regional origin.
    Origin,
    /// The repository's upstream registry.
    Upstream,
    /// The proxy itself (an error, a version check).
    Proxy,
}

/// A place objects are stored, cheapest to read first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A proxy's memory tier.
    Memory,
    /// A proxy's disk tier.
    Disk,
    /// The regional origin (S3 or a directory).
    Origin,
}

impl Tier {
    /// The metrics label (`"disk"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::Origin => "origin",
        }
    }
}

/// What a package is, in its registry's own terms: npm's package name and version and
/// tarball, PyPI's project and file, an image's repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageCoordinates {
    /// The package (`@acme/widget`, `requests`, `library/alpine`).
    pub name: String,
    /// Its version, tag or digest, when the path names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The file within the version (a wheel, a tarball, a layer), when the path names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// One served artefact, as proxies and agents report it to analytics: compact, and
/// self-describing enough to be queried months later without the config that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadEvent {
    /// Unique per event (`<node>-<sequence>`), so a sink that receives it twice keeps it once.
    pub id: String,
    /// Unix milliseconds when the response ended.
    pub time_ms: u64,
    /// The fleet's region (`fleet.region`).
    pub region: String,
    /// The proxy or agent that served it (`ip:port`).
    pub node: String,
    /// The repository's configured name.
    pub repository: String,
    pub format: FormatKind,
    /// What the path names, when its format knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageCoordinates>,
    /// The cache key path below the repository.
    pub path: String,
    /// `sha256:<hex>` (or the algorithm the registry publishes), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Response status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// What `X-Hangar-Cache` said.
    pub result: CacheResult,
    /// Where the bytes came from.
    pub source: Source,
    /// Milliseconds from the upstream request to its response headers, on a fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// Who asked: a principal once authentication exists, else the client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// CI labels the client sent (`job`, `pipeline`, ...), as `(key, value)` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_serde_names() {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        for r in CacheResult::ALL {
            let name: StrDeserializer<Error> = r.as_str().into_deserializer();
            assert_eq!(CacheResult::deserialize(name).unwrap(), r);
        }
        for t in [Tier::Memory, Tier::Disk, Tier::Origin] {
            let name: StrDeserializer<Error> = t.as_str().into_deserializer();
            assert_eq!(Tier::deserialize(name).unwrap(), t);
        }
    }
}

#[cfg(test)]
mod order {
    use super::*;

    #[test]
    fn all_lists_results_in_discriminant_order() {
        for (i, r) in CacheResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "metrics index CacheResult::ALL by discriminant");
        }
    }
}
