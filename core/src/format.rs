//! The package formats Hangar knows, by the name a repository's `format` key uses.
//!
//! This is the list only: what each format means by its URLs lives in the proxy's `format/`
//! module, one module per variant. Adding a format adds a variant here and a module there.

use serde::{Deserialize, Serialize};

/// The `format` key of a repository (`format = "npm"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// Plain HTTP files: release assets, tarballs, anything addressed by URL.
    #[default]
    Generic,
    /// A PEP 503/691 simple index and the host its files live on.
    Pypi,
    /// An npm registry: packuments and tarballs.
    Npm,
    /// A cargo sparse index (RFC 2789) and its download host.
    Cargo,
    /// A Maven 2 repository.
    Maven,
    /// A Debian-style apt archive.
    Apt,
    /// A RubyGems source (compact index and legacy specs).
    Gems,
    /// A Docker / OCI distribution registry.
    Oci,
}

impl FormatKind {
    /// Every format, in the order the documentation lists them.
    pub const ALL: [FormatKind; 8] = [
        FormatKind::Generic,
        FormatKind::Pypi,
        FormatKind::Npm,
        FormatKind::Cargo,
        FormatKind::Maven,
        FormatKind::Apt,
        FormatKind::Gems,
        FormatKind::Oci,
    ];

    /// The config and metrics name (`"npm"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            FormatKind::Generic => "generic",
            FormatKind::Pypi => "pypi",
            FormatKind::Npm => "npm",
            FormatKind::Cargo => "cargo",
            FormatKind::Maven => "maven",
            FormatKind::Apt => "apt",
            FormatKind::Gems => "gems",
            FormatKind::Oci => "oci",
        }
    }
}

impl std::fmt::Display for FormatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        for kind in FormatKind::ALL {
            let name: StrDeserializer<Error> = kind.as_str().into_deserializer();
            assert_eq!(FormatKind::deserialize(name).unwrap(), kind);
        }
    }
}
