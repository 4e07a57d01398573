//! `[cache]`: the memory and disk tiers and their byte budgets.

use std::time::Duration;

use hangar_core::{ByteSize, HumanDuration};
use serde::Deserialize;

/// Cache tiers and their byte budgets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Root of the disk tier; created if missing.
    pub dir: String,
    /// Budget of the memory tier.
    pub memory_bytes: ByteSize,
    /// Objects larger than this never enter the memory tier (at most 64 MiB).
    pub memory_max_object_bytes: ByteSize,
    /// Budget of the disk tier.
    pub disk_bytes: ByteSize,
    /// `fsync` each body before it becomes visible, so a power loss cannot expose a torn file.
    pub fsync: bool,
    /// Free space to keep on the cache filesystem: responses that would eat into it pass
    /// through uncached instead of failing when the disk fills up.
    pub min_free_disk_bytes: ByteSize,
    /// How long concurrent misses wait for the one request fetching a key before trying themselves.
    pub lock_timeout: HumanDuration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: "/var/tmp/hangar-cache".into(),
            memory_bytes: ByteSize(256 << 20),
            memory_max_object_bytes: ByteSize(1 << 20),
            disk_bytes: ByteSize(10 << 30),
            fsync: true,
            min_free_disk_bytes: ByteSize(256 << 20),
            lock_timeout: HumanDuration(Duration::from_secs(60)),
        }
    }
}
