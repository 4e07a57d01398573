//! `gems`: a RubyGems source, compact index and legacy index alike.
//!
//! - `versions`, `names`, `info/<name>` (the compact index Bundler and RubyGems read) and the
//!   legacy `specs.4.8.gz` family are metadata. Bundler asks for `versions` with a `Range` to
//!   append to its copy; ranges are answered from the cached file.
//! - `gems/<name>-<version>.gem` and `quick/...` gemspecs are immutable. A `.gem` is verified
//!   against the `checksum:` its `info/<name>` lists (read through the proxy's own cache); a
//!   source without a compact index still gets its gems cached.

use http::HeaderMap;

use hangar_core::{Digest, PathClass, RequestPath};
use super::{with_query, Format, FormatError, FormatKind, Resolved};

pub struct Gems;

/// `rails-7.1.0.gem` -> `rails`; `aws-sdk-s3-1.0.0-java.gem` -> `aws-sdk-s3`: the name ends
/// before the first `-` that starts a version (a digit).
fn gem_name(file: &str) -> Option<&str> {
    let stem = file.strip_suffix(".gem")?;
    stem.char_indices().find(|&(i, c)| c == '-' && stem[i + 1..].starts_with(|d: char| d.is_ascii_digit())).map(|(i, _)| &stem[..i])
}

impl Format for Gems {
    fn kind(&self) -> FormatKind {
        FormatKind::Gems
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if let Some(file) = rel.strip_prefix("gems/") {
            let mut resolved = Resolved::passthrough(with_query(&rel, path.query), PathClass::Immutable);
            if let Some(name) = gem_name(file).filter(|_| !file.contains('/')) {
                resolved.digest_from = Some(format!("info/{name}"));
                resolved.digest_required = false;
            }
            return Ok(resolved);
        }
        let class = if rel.starts_with("quick/") { PathClass::Immutable } else { PathClass::Metadata };
        Ok(Resolved::passthrough(with_query(&rel, path.query), class))
    }

    /// `info/<name>`: `---`, then one line per version: `1.0.0[-platform] deps|checksum:<hex>,...`.
    fn digests_in(&self, document_path: &str, body: &[u8]) -> Result<Vec<(String, Digest)>, FormatError> {
        let name = document_path.strip_prefix("info/").ok_or(FormatError::NotFound("not an info file"))?;
        let text = std::str::from_utf8(body).map_err(|_| FormatError::BadDocument { what: "info file", reason: "not UTF-8".into() })?;
        Ok(text
            .lines()
            .filter(|l| *l != "---")
            .filter_map(|line| {
                let (version, rest) = line.split_once(' ')?;
                let (_, requirements) = rest.split_once('|')?;
                let hex = requirements.split(',').find_map(|r| r.trim().strip_prefix("checksum:"))?;
                Some((format!("gems/{name}-{version}.gem"), Digest::sha256_hex(hex)?))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";

    fn resolve(path: &str) -> Resolved {
        Gems.resolve(&RequestPath { relative: path, query: None }, &HeaderMap::new()).unwrap()
    }

    #[test]
    fn gems_are_immutable_and_checked_against_their_info_file() {
        let g = resolve("gems/aws-sdk-s3-1.0.0-java.gem");
        assert_eq!((g.class, g.digest_from.as_deref()), (PathClass::Immutable, Some("info/aws-sdk-s3")));
        for p in ["versions", "names", "info/rails", "specs.4.8.gz"] {
            assert_eq!(resolve(p).class, PathClass::Metadata, "{p}");
        }
        assert_eq!(resolve("quick/Marshal.4.8/rails-7.1.0.gemspec.rz").class, PathClass::Immutable);
        let info = format!("---\n1.0.0 |checksum:{SHA}\n1.1.0-java rack:>= 2.0|checksum:{SHA},ruby:>= 2.7\n");
        let d = Gems.digests_in("info/x", info.as_bytes()).unwrap();
        assert_eq!(d.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["gems/x-1.0.0.gem", "gems/x-1.1.0-java.gem"]);
    }
}
