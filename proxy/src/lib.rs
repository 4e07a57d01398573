//! Hangar's caching proxy, built on Pingora, as a library: the `hangar-proxy` binary runs it
//! through [`ProxyBuilder`], and so can any program that embeds it (the CI agent to come).
//!
//! The public surface is small: the [`Config`] an operator writes, the builder that runs it,
//! and the seams an embedder plugs into: fleet [`Membership`], [`OutcomeSink`]s that hear how
//! every request ended. Everything else is private; README.md's "Architecture" section walks
//! through it.
//!
//! Reading order for the code: [`config`] (what an operator writes), `router` and `format`
//! (what a request means), `request` (the request path through pingora's phases), `storage`
//! (the memory and disk tiers), `upstream` and `client` (where misses go), `fleet`, `metadata`
//! and `origin` (the region), `outcome` and `metrics` (what is reported), `admin`, `connections` (what one client may hold).

mod access_log;
mod admin;
pub mod auth;
mod breaker;
mod builder;
mod client;
pub mod config;
mod connections;
mod derived;
mod digest_index;
mod directives;
mod fleet;
mod format;
mod freshness;
mod http_date;
mod listeners;
mod log_writer;
pub mod logging;
mod metadata;
mod metrics;
mod offline;
mod origin;
mod outcome;
mod pointers;
mod reachability;
mod repository;
mod request;
mod router;
mod storage;
mod upstream;
mod upstream_auth;

pub use builder::{ProxyBuilder, StartError};
pub use listeners::ListenError;
pub use config::{Config, ConfigError, DisabledRepository, LoadedConfig, RepositoryConfig};
pub use fleet::{Member, Membership, MembershipError};
pub use outcome::{Outcome, OutcomeSink};
