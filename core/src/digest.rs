//! Content digests: what an artefact's bytes must hash to before the cache keeps them.
//!
//! Registries publish a digest next to every artefact (PyPI's `#sha256=`, npm's
//! `dist.integrity`, cargo's `cksum`); the proxy hashes the body while it streams and refuses
//! to commit a cache entry whose bytes do not match.

use std::fmt;

use base64::Engine;
use sha2::Digest as _;

/// A content digest of one of the algorithms registries publish.
///
/// Displays (and [`Digest::parse`]s) as `<algorithm>:<hex>`, as OCI writes digests.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Digest {
    /// SHA-1: Maven's `.sha1` files and old npm `shasum`s (weak; used only where nothing better is published).
    Sha1([u8; 20]),
    /// SHA-256: PyPI, cargo, OCI, apt, RubyGems.
    Sha256([u8; 32]),
    /// SHA-512: npm's `dist.integrity`.
    Sha512([u8; 64]),
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Digest::Sha1(d) => write!(f, "sha1:{}", hex::encode(d)),
            Digest::Sha256(d) => write!(f, "sha256:{}", hex::encode(d)),
            Digest::Sha512(d) => write!(f, "sha512:{}", hex::encode(d)),
        }
    }
}

impl Digest {
    /// 64 hex digits (surrounding whitespace ignored), as PyPI's `#sha256=` and cargo's `cksum`.
    pub fn sha256_hex(s: &str) -> Option<Self> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut d).ok()?;
        Some(Digest::Sha256(d))
    }

    /// `sha256:<hex>` or `sha512:<hex>` (as OCI writes digests, and as this type displays).
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':')? {
            ("sha256", hex) if hex.len() == 64 => Self::sha256_hex(hex),
            ("sha512", hex) if hex.len() == 128 => {
                let mut d = [0u8; 64];
                hex::decode_to_slice(hex, &mut d).ok()?;
                Some(Digest::Sha512(d))
            }
            _ => None,
        }
    }

    /// Whether `text` is this digest as it displays (`sha1:<hex>`, `sha256:<hex>`, ...),
    /// hex in either case, without allocating: what the request path compares a stored
    /// copy's recorded digest with.
    pub fn is_written_as(&self, text: &str) -> bool {
        let (algorithm, bytes): (&str, &[u8]) = match self {
            Digest::Sha1(d) => ("sha1", d),
            Digest::Sha256(d) => ("sha256", d),
            Digest::Sha512(d) => ("sha512", d),
        };
        let mut buf = [0u8; 64];
        let out = &mut buf[..bytes.len()];
        matches!(text.split_once(':'), Some((a, hex)) if a == algorithm && hex::decode_to_slice(hex, out).is_ok() && out == bytes)
    }

    /// 40 hex digits, as Maven's `.sha1` files.
    pub fn sha1_hex(s: &str) -> Option<Self> {
        let mut d = [0u8; 20];
        hex::decode_to_slice(s.trim(), &mut d).ok()?;
        Some(Digest::Sha1(d))
    }

    /// A Subresource Integrity value (`sha512-<base64>`), as npm's `dist.integrity`. With
    /// several, the strongest wins.
    pub fn from_sri(s: &str) -> Option<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut best: Option<Digest> = None;
        for item in s.split_whitespace() {
            let (alg, value) = item.split_once('-')?;
            let value = value.split('?').next().unwrap_or(value);
            let bytes = b64.decode(value).ok()?;
            let d = match alg {
                "sha512" => Digest::Sha512(bytes.try_into().ok()?),
                "sha256" => Digest::Sha256(bytes.try_into().ok()?),
                "sha1" => Digest::Sha1(bytes.try_into().ok()?),
                _ => continue,
            };
            if best.as_ref().is_none_or(|b| b.strength() < d.strength()) {
                best = Some(d);
            }
        }
        best
    }

    fn strength(&self) -> u8 {
        match self {
            Digest::Sha1(_) => 1,
            Digest::Sha256(_) => 2,
            Digest::Sha512(_) => 3,
        }
    }

    /// The hex digits alone, without the algorithm.
    pub fn hex(&self) -> String {
        match self {
            Digest::Sha1(d) => hex::encode(d),
            Digest::Sha256(d) => hex::encode(d),
            Digest::Sha512(d) => hex::encode(d),
        }
    }

    /// A running hash of this digest's algorithm, to check a body against it as it streams.
    pub fn hasher(&self) -> Hasher {
        match self {
            Digest::Sha1(_) => Hasher::Sha1(sha1::Sha1::new()),
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A running hash of the algorithm of an expected [`Digest`].
#[allow(missing_docs)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// Feed the next bytes of the body.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha1(h) => Digest::Sha1(h.finalize().into()),
            Hasher::Sha256(h) => Digest::Sha256(h.finalize().into()),
            Hasher::Sha512(h) => Digest::Sha512(h.finalize().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_their_published_forms() {
        let mut h = Digest::Sha256([0; 32]).hasher();
        h.update(b"abc");
        assert_eq!(h.finish(), Digest::sha256_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap());
        let sri = "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==";
        let mut h = Digest::from_sri(sri).unwrap().hasher();
        h.update(b"abc");
        assert_eq!(Some(h.finish()), Digest::from_sri(sri));
        assert!(Digest::from_sri("md5-abc").is_none());
        assert!(Digest::sha256_hex("xyz").is_none());
    }

    #[test]
    fn a_digest_knows_its_written_form_in_every_algorithm() {
        for d in [Digest::Sha1([7; 20]), Digest::Sha256([7; 32]), Digest::Sha512([7; 64])] {
            assert!(d.is_written_as(&d.to_string()), "{d}");
            assert!(d.is_written_as(&d.to_string().to_ascii_uppercase().replacen("SHA", "sha", 1)), "hex in either case");
            assert!(!d.is_written_as(&d.to_string().replace("07", "08")));
            assert!(!d.is_written_as(&d.to_string()[1..]) && !d.is_written_as("") && !d.is_written_as("sha256:07"));
        }
        assert!(!Digest::Sha1([7; 20]).is_written_as(&Digest::Sha256([7; 32]).to_string()));
    }

    #[test]
    fn display_parses_back_and_hex_drops_the_algorithm() {
        let d = Digest::sha256_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(Digest::parse(&d.to_string()), Some(d.clone()));
        assert_eq!(d.hex(), "ab".repeat(32));
        assert!(Digest::parse("sha256:abc").is_none() && Digest::parse("md5:00").is_none());
    }
}
