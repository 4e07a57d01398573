//! `[fleet]` and `[origin]`: how a proxy finds the others of its region, how they trust each
//! other, and where the regional origin is.

use std::time::Duration;

use hangar_core::HumanDuration;
use serde::Deserialize;

/// How this proxy finds the others of its region.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// Redis URL of the region's shared metadata and membership. Unset: in-process metadata.
    pub redis: Option<String>,
    /// A fixed list of the region's proxies (`ip:port` each, as they reach each other), for
    /// fleets without Redis: the same list on every member, each one's own address (its
    /// `advertise`, else `listen`) included. Exclusive with `redis`.
    pub members: Vec<String>,
    /// The secret fleet members sign their hops to each other with (HMAC-SHA256; at least 16
    /// characters). Required with `redis` or `members`: without it a client could pose as a
    /// peer. Never logged.
    pub secret: Option<Secret>,
    /// `ip:port` other proxies reach this one at. Unset: the listen address.
    pub advertise: Option<String>,
    /// The region's name; fleets of different regions share nothing.
    pub region: String,
    /// How often this proxy announces itself and refreshes the member list.
    pub heartbeat: HumanDuration,
    /// A member that has not heartbeated for this long is gone.
    pub member_ttl: HumanDuration,
    /// Metadata writes waiting for the store; beyond this they are dropped (and counted).
    pub write_queue: usize,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            redis: None,
            members: Vec::new(),
            secret: None,
            advertise: None,
            region: "default".into(),
            heartbeat: HumanDuration(Duration::from_secs(1)),
            member_ttl: HumanDuration(Duration::from_secs(3)),
            write_queue: 10_000,
        }
    }
}

impl FleetSettings {
    /// Whether this proxy shares its work with others (and so needs the secret).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some() || !self.members.is_empty()
    }
}

/// A secret from the config file: usable, but never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Where the regional origin is and how uploads to it are queued.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSettings {
    /// Base URL of hangar-origin (http), e.g. `http://origin.internal:9400/`. Required.
    pub url: String,
    /// Uploads waiting for origin; when full, new ones are dropped (and counted), never waited for.
    pub upload_queue: usize,
    /// Uploads in flight at once.
    pub upload_workers: usize,
}

impl Default for OriginSettings {
    fn default() -> Self {
        OriginSettings { url: String::new(), upload_queue: 1024, upload_workers: 2 }
    }
}
