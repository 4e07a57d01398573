//! The protocol between Hangar's own parts: proxies of a fleet, the regional origin, and (later)
//! agents. Everything one part sends and another reads is named here once.
//!
//! - Headers: every internal header starts with [`INTERNAL_PREFIX`]; a proxy strips all of them
//!   from client requests, so only a part holding the fleet's secret can send them
//!   ([`HopKey`]).
//! - Origin's object API: `PUT|GET|HEAD /objects/<repository>/<key path>` ([`object_path`],
//!   [`parse_object_path`]), with [`SHA256_HEADER`] naming the body's digest both ways, and the
//!   [`Manifest`] origin keeps per path.
//! - Repository names ([`valid_repository_name`]): they become URL segments and storage keys.

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Every header Hangar's parts send each other starts with this; clients' are stripped.
pub const INTERNAL_PREFIX: &str = "x-hangar-";

/// Response header: how the proxy answered (`hit`, `miss`, `stale`, ... see
/// [`crate::CacheResult`]).
pub const CACHE_HEADER: &str = "x-hangar-cache";

/// Request header on a hop between Hangar's own parts: who sends it and why, with a proof
/// ([`HopKey::sign`]). A proxy acts on it only when the proof verifies.
pub const HOP_HEADER: &str = "x-hangar-hop";

/// Request and response header on origin's object API: the body's sha256 (64 lower-case hex
/// digits). On a `PUT` origin refuses a body that does not match (422).
pub const SHA256_HEADER: &str = "x-hangar-sha256";

/// Response header on a stored artefact: the digest its bytes were verified against when they
/// were stored (`sha256:<hex>`, or the algorithm the format publishes). A request that names a
/// digest is answered from cache only when this says the same.
pub const DIGEST_HEADER: &str = "x-hangar-digest";

/// Request header on an upload to origin: the sha256 of the copy origin holds that the proxy
/// found corrupt (its bytes did not match what they must be). Origin replaces that copy, and
/// only that one, and only for a request signed as [`HopKind::Replace`] with the fleet's secret.
pub const REPLACES_HEADER: &str = "x-hangar-replaces";

/// What a [`HopKind::Replace`] proof signs in place of the bare target: the target, the copy it
/// replaces and the sha256 of the bytes that replace it (both 64 hex digits), so a proof seen
/// on the wire cannot carry other bytes, or replace another copy.
pub fn replacement_signed_target(target: &str, replaces: &str, sha256: &str) -> String {
    format!("{target}\nreplaces={replaces}\nsha256={sha256}")
}

/// How far apart (seconds) a hop's signing time and its receiver's clock may be.
pub const HOP_WINDOW_SECS: u64 = 120;

/// Why a request came from one of Hangar's own parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    /// A fleet member forwarded a miss to the key's owner: serve it, never forward it again.
    Peer,
    /// A proxy reads its own cache back (to hand an artefact to origin): answer from cache,
    /// or 504; never fetch, never refresh.
    Loopback,
    /// A proxy replaces a copy on origin that failed verification ([`REPLACES_HEADER`]).
    Replace,
    /// A proxy reads a document through itself to learn the digests it lists, for a client
    /// request its grants already allowed: served like any request (it may fetch), without a
    /// credential of its own.
    Listing,
    /// A proxy's request to the regional origin's object API (a read, or an upload): the
    /// credential origin asks of every object request.
    Origin,
}

impl HopKind {
    fn as_str(self) -> &'static str {
        match self {
            HopKind::Peer => "peer",
            HopKind::Loopback => "loopback",
            HopKind::Replace => "replace",
            HopKind::Listing => "listing",
            HopKind::Origin => "origin",
        }
    }
}

/// Why a hop header was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    #[error("hop header is malformed")]
    Malformed,
    #[error("hop header was signed {0} s away from this clock (more than {HOP_WINDOW_SECS} s)")]
    Expired(u64),
    #[error("hop header's signature does not verify")]
    BadSignature,
}

/// The fleet's shared secret, as an HMAC-SHA256 key that signs and verifies hop headers.
///
/// A hop header is `v1 <kind> <unix seconds> <hex HMAC>`, the HMAC taken over the kind, the
/// time, the method and the request target (path and query) it travels with. So a client can
/// neither claim to be a peer nor reuse a proof for another path or method, and a proof
/// expires after [`HOP_WINDOW_SECS`]. Within that window a captured proof can be replayed for
/// the same request (hops travel in-region, over plain HTTP); what it grants is harmless for
/// the same request: a peer proof only stops owner routing, a loopback proof only forbids
/// fetching, a replace proof signs [`replacement_signed_target`], so replaying it can only
/// send origin the same verified bytes again, and an origin proof repeats the same read, or
/// the same upload of a path that origin never overwrites.
#[derive(Clone)]
pub struct HopKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKey(<secret>)")
    }
}

impl HopKey {
    /// A key from the fleet's secret (any length; at least 32 random bytes is sensible).
    pub fn new(secret: &[u8]) -> Self {
        HopKey { mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length") }
    }

    fn tag(&self, kind: HopKind, time: u64, method: &str, target: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(b"hangar-hop v1\n");
        mac.update(kind.as_str().as_bytes());
        mac.update(format!("\n{time}\n{method}\n").as_bytes());
        mac.update(target.as_bytes());
        mac
    }

    /// The [`HOP_HEADER`] value for a `method` request for `target` (path and query) sent at
    /// `now` (unix seconds).
    pub fn sign(&self, kind: HopKind, method: &str, target: &str, now: u64) -> String {
        let tag = self.tag(kind, now, method, target).finalize().into_bytes();
        format!("v1 {} {now} {}", kind.as_str(), hex::encode(tag))
    }

    /// Check a [`HOP_HEADER`] value received with a `method` request for `target` at `now`.
    pub fn verify(&self, value: &str, method: &str, target: &str, now: u64) -> Result<HopKind, HopError> {
        let mut parts = value.split(' ');
        let (Some("v1"), Some(kind), Some(time), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(HopError::Malformed);
        };
        let kind = match kind {
            "peer" => HopKind::Peer,
            "loopback" => HopKind::Loopback,
            "replace" => HopKind::Replace,
            "listing" => HopKind::Listing,
            "origin" => HopKind::Origin,
            _ => return Err(HopError::Malformed),
        };
        let time: u64 = time.parse().map_err(|_| HopError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| HopError::Malformed)?;
        let skew = now.abs_diff(time);
        if skew > HOP_WINDOW_SECS {
            return Err(HopError::Expired(skew));
        }
        self.tag(kind, time, method, target).verify_slice(&tag).map_err(|_| HopError::BadSignature)?;
        Ok(kind)
    }
}

/// Repository names become URL segments and storage keys: 1 to 64 ASCII letters, digits, `-`,
/// `_` and `.`, and not `.` or `..`.
pub fn valid_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "."
        && name != ".."
}

/// Characters escaped when a cache key path becomes the path of an origin URL.
const KEY_PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}');

/// `<base_path>objects/<repository>/<key path>`: where origin keeps the object a proxy caches
/// under `key_path` (a cache key path of any shape, query included; escaped into one path).
/// `base_path` is origin's base URL path, ending with `/`.
pub fn object_path(base_path: &str, repository: &str, key_path: &str) -> String {
    format!("{base_path}objects/{repository}/{}", utf8_percent_encode(key_path, KEY_PATH))
}

/// Why a request path is not an origin object path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectPathError {
    #[error("not an object path (/objects/<repository>/<path>)")]
    NotObjects,
    #[error("no path after the repository")]
    NoPath,
    #[error("invalid repository name")]
    BadRepository,
    #[error("path is not UTF-8")]
    NotUtf8,
    #[error("invalid path")]
    BadPath,
}

/// `(repository, key path)` from a request path made by [`object_path`] (with base path `/`),
/// the key path percent-decoded.
pub fn parse_object_path(uri_path: &str) -> Result<(String, String), ObjectPathError> {
    let rest = uri_path.strip_prefix("/objects/").ok_or(ObjectPathError::NotObjects)?;
    let (repo, path) = rest.split_once('/').ok_or(ObjectPathError::NoPath)?;
    if !valid_repository_name(repo) {
        return Err(ObjectPathError::BadRepository);
    }
    let path = percent_decode_str(path).decode_utf8().map_err(|_| ObjectPathError::NotUtf8)?.into_owned();
    if path.is_empty() || path.contains('\0') {
        return Err(ObjectPathError::BadPath);
    }
    Ok((repo.to_string(), path))
}

/// Origin's record of one published path: which content-addressed blob it names. Created
/// once and never overwritten, which is what makes a published artefact immutable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The repository name ([`valid_repository_name`]).
    pub repository: String,
    /// The key path, as [`parse_object_path`] returns it.
    pub path: String,
    /// 64 lower-case hex digits.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// The `Content-Type` the artefact was published with, served back with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_round_trip_and_names_are_checked() {
        let p = object_path("/base/", "npm", "@s/p/-/p 1.tgz?x=1#f");
        assert_eq!(p, "/base/objects/npm/@s/p/-/p%201.tgz%3Fx=1%23f");
        let p = object_path("/", "npm", "@s/p/-/p 1.tgz?x=1#f");
        assert_eq!(parse_object_path(&p).unwrap(), ("npm".into(), "@s/p/-/p 1.tgz?x=1#f".into()));
        assert_eq!(parse_object_path("/objects/npm/%40s%2Fp/-/p-1.tgz%3Fx").unwrap(), ("npm".into(), "@s/p/-/p-1.tgz?x".into()));
        assert_eq!(parse_object_path("/objects/../x"), Err(ObjectPathError::BadRepository));
        assert_eq!(parse_object_path("/objects/npm/"), Err(ObjectPathError::BadPath));
        assert_eq!(parse_object_path("/other"), Err(ObjectPathError::NotObjects));
        assert!(!valid_repository_name("../x") && !valid_repository_name("") && !valid_repository_name(&"a".repeat(65)));
        assert!(valid_repository_name("pypi") && valid_repository_name("a.b-c_d"));
    }

    #[test]
    fn hop_proofs_bind_kind_target_and_time() {
        let key = HopKey::new(b"fleet secret");
        let now = 1_800_000_000;
        let peer = key.sign(HopKind::Peer, "GET", "/npm/a?x=1", now);
        assert_eq!(key.verify(&peer, "GET", "/npm/a?x=1", now + 5), Ok(HopKind::Peer));
        assert_eq!(key.verify(&peer, "GET", "/npm/b?x=1", now), Err(HopError::BadSignature), "another path");
        assert_eq!(key.verify(&peer, "PUT", "/npm/a?x=1", now), Err(HopError::BadSignature), "another method");
        assert_eq!(key.verify(&peer.replace(" peer ", " loopback "), "GET", "/npm/a?x=1", now), Err(HopError::BadSignature), "another kind");
        assert_eq!(key.verify(&peer, "GET", "/npm/a?x=1", now + HOP_WINDOW_SECS + 1), Err(HopError::Expired(HOP_WINDOW_SECS + 1)));
        assert_eq!(HopKey::new(b"other").verify(&peer, "GET", "/npm/a?x=1", now), Err(HopError::BadSignature), "another fleet");
        for bad in ["", "1", "v1 peer", "v1 peer x 00", "v2 peer 1 00", "v1 ghost 1 00", "v1 peer 1 zz"] {
            assert!(matches!(key.verify(bad, "GET", "/", now), Err(HopError::Malformed | HopError::Expired(_))), "{bad:?} is refused before any MAC is computed");
        }
        assert_eq!(key.verify(&key.sign(HopKind::Loopback, "GET", "/", now), "GET", "/", now), Ok(HopKind::Loopback));
        assert_eq!(key.verify(&key.sign(HopKind::Listing, "GET", "/", now), "GET", "/", now), Ok(HopKind::Listing));
        assert!(!format!("{key:?}").contains("fleet"), "the secret is never printed");
    }
}
