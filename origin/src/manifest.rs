//! One small record per logical path, pointing at a content-addressed blob.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub repository: String,
    pub path: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// Where the bytes with `sha256` live.
pub fn blob_key(sha256: &str) -> String {
    format!("blobs/sha256/{}/{sha256}", &sha256[..2])
}

/// Where the manifest of `path` in `repository` lives. Paths are client strings of any
/// shape, so the key is their digest; the manifest itself keeps the path.
pub fn manifest_key(repository: &str, path: &str) -> String {
    format!("manifests/{repository}/{}", hex::encode(Sha256::digest(path.as_bytes())))
}

/// Repository names become key segments, so they are held to a safe alphabet.
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_of_safe_parts() {
        let m = manifest_key("npm", "@scope/pkg/-/pkg-1.0.0.tgz?x=../..");
        assert!(m.starts_with("manifests/npm/") && !m.contains(".."));
        assert_eq!(blob_key("abcd"), "blobs/sha256/ab/abcd");
        assert!(!valid_repository("../x") && !valid_repository("") && valid_repository("pypi"));
    }
}
