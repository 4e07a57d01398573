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

/// The name in a gem's file name, `<name>-<version>[-<platform>].gem`: `rails-7.1.0.gem` ->
/// `rails`, `aws-sdk-s3-1.0.0-java.gem` -> `aws-sdk-s3`, `rfc-822-0.4.1.gem` -> `rfc-822`.
///
/// Names may end in `-<digits>` and platforms contain `-`, so the split is the first `-` after
/// which a version (RubyGems' `[0-9]+(\.[0-9a-zA-Z]+)*`) runs to the end or to a platform,
/// which starts with a CPU or runtime RubyGems knows (`java`, `x86_64-linux`,
/// `universal-darwin-22`): `foo-3-rails-1.0.gem` is `foo-3-rails`.
fn gem_name(file: &str) -> Option<&str> {
    let stem = file.strip_suffix(".gem")?;
    stem.match_indices('-').map(|(i, _)| i).find(|&i| {
        let rest = &stem[i + 1..];
        let end = rest.find('-').unwrap_or(rest.len());
        let (version, platform) = (&rest[..end], &rest[end..]);
        let mut parts = version.split('.');
        let numeric = parts.next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let valid = numeric && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        valid && (platform.is_empty() || is_platform(&platform[1..]))
    }).map(|i| &stem[..i])
}

/// Whether `text` reads as a RubyGems platform (`Gem::Platform`): its first part is a CPU
/// (`x86_64`, `arm64`, `universal`, ...) or one of the runtimes that stand alone (`java`).
fn is_platform(text: &str) -> bool {
    const FIRST: [&str; 22] = [
        "x86", "x64", "i386", "i486", "i586", "i686", "arm", "aarch64", "universal", "java", "jruby", "dalvik", "mswin", "mingw", "powerpc", "ppc", "s390", "sparc",
        "mips", "riscv", "loongarch", "wasm",
    ];
    let first = text.split('-').next().unwrap_or("");
    FIRST.iter().any(|p| first.starts_with(p))
}

impl Format for Gems {
    fn kind(&self) -> FormatKind {
        FormatKind::Gems
    }

    /// `info/<name>`, or a gem's (`gems/<name>-<version>[-<platform>].gem`, `quick/...`): the
    /// name ends at the last `-` followed by a digit (a name may hold `-2fa`; a version holds
    /// no `-`, and platforms start with a letter).
    fn package(&self, path: &str) -> Option<String> {
        if let Some(name) = path.strip_prefix("info/") {
            return (!name.is_empty() && !name.contains('/')).then(|| name.to_string());
        }
        if !(path.starts_with("gems/") || path.starts_with("quick/")) {
            return None;
        }
        let file = path.rsplit('/').next()?;
        let cut = file.char_indices().filter(|&(i, c)| c == '-' && file[i + 1..].starts_with(|d: char| d.is_ascii_digit())).last()?.0;
        Some(file[..cut].to_string())
    }

    fn resolve(&self, path: &RequestPath<'_>, _headers: &HeaderMap) -> Result<Resolved, FormatError> {
        let rel = path.checked_relative(false)?;
        if let Some(file) = rel.strip_prefix("gems/") {
            let mut resolved = Resolved::passthrough(with_query(&rel, path.query), PathClass::Immutable);
            if let Some(name) = gem_name(file).filter(|_| !file.contains('/')) {
                resolved.digest_from = Some(format!("info/{name}"));
                // A source without a compact index publishes no digest: its gems are cached
                // unverified. One whose info file does not list the gem gets it served only.
                resolved.digest_required = false;
            }
            return Ok(resolved);
        }
        let class = if rel.starts_with("quick/") { PathClass::Immutable } else { PathClass::Metadata };
        let mut resolved = Resolved::passthrough(with_query(&rel, path.query), class);
        // Each info file is read as it passes, so a gem rebuilt under its name (a new
        // `checksum:`) is not served from the cache once the new info file has been.
        resolved.lists_digests = path.query.is_none() && rel.starts_with("info/") && !rel[5..].contains('/');
        Ok(resolved)
    }

    /// The compact index: `versions` opens with `created_at:` (or `---`), `names` and
    /// `info/<name>` with `---`; the legacy `*specs.4.8.gz` indexes are gzip.
    fn check_document(&self, resolved: &Resolved, content_type: Option<&str>, head: Option<&[u8]>) -> Result<(), String> {
        let path = resolved.key_path.split('?').next().unwrap_or("");
        let starts: &[&str] = match path {
            "versions" => &["created_at:", "---"],
            "names" => &["---"],
            p if p.starts_with("info/") => &["---"],
            p if p.ends_with("specs.4.8.gz") => {
                super::document_like(content_type, None, "legacy index (gzip)", &[])?;
                return match head {
                    Some(h) if !h.is_empty() && !h.starts_with(&[0x1f, 0x8b]) => Err("upstream's legacy index is not gzip: not stored".into()),
                    _ => Ok(()),
                };
            }
            _ => return Ok(()),
        };
        super::document_like(content_type, head, "compact index file", starts)
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
        for (file, name) in [("rfc-822-0.4.1.gem", "rfc-822"), ("rails-7.1.0.gem", "rails"), ("ffi-1.15.5-universal-darwin-22.gem", "ffi"), ("nokogiri-1.16.0-x86_64-linux.gem", "nokogiri"), ("a-b-2-3.0.pre1.gem", "a-b-2"), ("x-1.0.0.rc.1.gem", "x"), ("foo-3-rails-1.0.gem", "foo-3-rails"), ("grpc-1.60.0-x64-mingw-ucrt.gem", "grpc"), ("libv8-node-18.19.0.0-aarch64-linux.gem", "libv8-node")] {
            assert_eq!(gem_name(file), Some(name), "{file}");
        }
        assert_eq!(gem_name("noversion.gem"), None);
        assert!(resolve("info/rails").lists_digests && !resolve("versions").lists_digests);
        let info = format!("---\n1.0.0 |checksum:{SHA}\n1.1.0-java rack:>= 2.0|checksum:{SHA},ruby:>= 2.7\n");
        let d = Gems.digests_in("info/x", info.as_bytes()).unwrap();
        assert_eq!(d.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["gems/x-1.0.0.gem", "gems/x-1.1.0-java.gem"]);
    }
}
