//! Hangar's caching proxy, built on Pingora.
//!
//! Reading order: [`config`] (what an operator writes), [`router`] and [`format`] (what a
//! request means), [`proxy`] (the request path through pingora's phases), [`storage`] (the
//! memory and disk tiers), [`upstream`] (where misses go), [`admin`] and [`metrics`].

pub mod admin;
pub mod breaker;
pub mod config;
pub mod digest;
pub mod directives;
pub mod fleet;
pub mod format;
pub mod freshness;
pub mod loopback;
pub mod metadata;
pub mod metrics;
pub mod offline;
pub mod origin;
pub mod path;
pub mod pointers;
pub mod proxy;
pub mod router;
pub mod server;
pub mod storage;
pub mod units;
pub mod upstream;
pub mod upstream_client;
