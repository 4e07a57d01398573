//! Where origin keeps things: one small [`Manifest`] per logical path, pointing at a
//! content-addressed blob. (The manifest itself is part of the wire protocol, in `hangar-core`.)

pub use hangar_core::wire::Manifest;
use sha2::{Digest, Sha256};

/// Where the bytes with `sha256` live.
pub fn blob_key(sha256: &str) -> String {
    format!("blobs/sha256/{}/{sha256}", &sha256[..2])
}

/// Where the manifest of `path` in `repository` lives. Paths are client strings of any
/// shape, so the key is their digest; the manifest itself keeps the path.
pub fn manifest_key(repository: &str, path: &str) -> String {
    format!("manifests/{repository}/{}", hex::encode(Sha256::digest(path.as_bytes())))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_of_safe_parts() {
        let m = manifest_key("npm", "@scope/pkg/-/pkg-1.0.0.tgz?x=../..");
        assert!(m.starts_with("manifests/npm/") && !m.contains(".."));
        assert_eq!(blob_key("abcd"), "blobs/sha256/ab/abcd");
    }
}
