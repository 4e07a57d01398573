//! Shared harness for Hangar's end-to-end tests.
//!
//! * [`Upstream`]: a controllable HTTP/1.1 origin on 127.0.0.1:0 (per-path bodies, generated
//!   bodies of any size, truncation, gates that hold a body mid-way, status codes, redirects),
//!   counting the requests it sees.
//! * [`h2_upstream::H2Upstream`]: an HTTPS origin that speaks only HTTP/2, recording each
//!   request's connection.
//! * [`Proxy`]: the real `hangar-proxy` binary on port 0, with its own cache dir; killed on drop.
//! * [`http`]: a small HTTP/1.1 client that can read a body incrementally.
//! * [`clients`]: real package managers and the live registries they are configured for.
//!
//! Every server a test starts is stopped when its handle drops.

pub mod client;
pub mod clients;
pub mod h2_upstream;
pub mod proxy;
pub mod services;
pub mod tls;
pub mod tmpfs;
pub mod upstream;

/// The fleet secret test origins are given ([`services::origin_on_dir`]): a proxy that uses
/// one needs it as its `fleet.secret`.
pub const FLEET_SECRET: &str = "the-test-fleet-secret";

pub use client::{get, http, put, Response};
pub use proxy::{Proxy, ProxyBuilder, ADMIN, ADMIN_TOKEN};
pub use tmpfs::Tmpfs;
pub use upstream::{Body, Route, Upstream};

/// Byte `i` of a generated body: cheap to produce and to check without storing it.
pub fn pattern_byte(seed: u8, i: u64) -> u8 {
    ((i.wrapping_mul(31).wrapping_add(i >> 13) as u8) ^ seed).wrapping_add((i % 251) as u8)
}

/// Every file below `dir`, recursively (an absent directory has none).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A body of `len` bytes of [`pattern_byte`].
pub fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(seed, i)).collect()
}
