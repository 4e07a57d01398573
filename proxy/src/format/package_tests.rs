//! The package each format names in a path: what grants limited to package names match.

use super::*;

#[test]
fn each_format_names_the_package_a_path_is_about() {
    let up = |files: Option<&str>| Upstreams { primary: UpstreamUrl::parse("http://127.0.0.1:1/").unwrap(), files: files.map(str::to_string), ..Default::default() };
    let cases: &[(FormatKind, Option<&str>, &str, Option<&str>)] = &[
        (FormatKind::Npm, None, "left-pad", Some("left-pad")),
        (FormatKind::Npm, None, "@acme%2fui", Some("@acme/ui")),
        (FormatKind::Npm, None, "@acme/ui/-/ui-1.0.0.tgz", Some("@acme/ui")),
        (FormatKind::Npm, None, "left-pad/-/left-pad-1.3.0.tgz", Some("left-pad")),
        (FormatKind::Npm, None, "-/npm/v1/security/advisories/bulk", None),
        (FormatKind::Pypi, Some("http://127.0.0.1:2/"), "simple/Acme_Tools/", Some("acme-tools")),
        (FormatKind::Pypi, Some("http://127.0.0.1:2/"), "simple/", None),
        (FormatKind::Pypi, Some("http://127.0.0.1:2/"), "files/sha256/ab/packages/acme_tools-1.0-py3-none-any.whl", Some("acme-tools")),
        (FormatKind::Pypi, Some("http://127.0.0.1:2/"), "files/packages/acme_tools-1.0-py3-none-any.whl.metadata", Some("acme-tools")),
        (FormatKind::Pypi, Some("http://127.0.0.1:2/"), "files/packages/acme-tools-1.0.tar.gz", Some("acme-tools")),
        (FormatKind::Maven, None, "com/acme/lib/1.0/lib-1.0.jar", Some("com.acme:lib")),
        (FormatKind::Maven, None, "com/acme/lib/maven-metadata.xml", Some("com.acme:lib")),
        (FormatKind::Maven, None, "com/acme/lib/1.0-SNAPSHOT/maven-metadata.xml", Some("com.acme:lib")),
        (FormatKind::Maven, None, "com/acme.evil/1.0/acme.evil-1.0.jar", Some("com:acme.evil")),
        (FormatKind::Maven, None, "archetype-catalog.xml", None),
        (FormatKind::Cargo, Some("http://127.0.0.1:2/dl"), "3/s/syn", Some("syn")),
        (FormatKind::Cargo, Some("http://127.0.0.1:2/dl"), "se/rd/serde", Some("serde")),
        (FormatKind::Cargo, Some("http://127.0.0.1:2/dl"), "dl/serde/1.0.0/abc", Some("serde")),
        (FormatKind::Cargo, Some("http://127.0.0.1:2/dl"), "config.json", None),
        (FormatKind::Gems, None, "info/acme-tools", Some("acme-tools")),
        (FormatKind::Gems, None, "gems/acme-tools-1.2.0-x86_64-linux.gem", Some("acme-tools")),
        (FormatKind::Gems, None, "gems/acme-2fa-1.0.gem", Some("acme-2fa")),
        (FormatKind::Gems, None, "versions", None),
        (FormatKind::Apt, None, "pool/main/h/hello/hello_2.10-3_amd64.deb", Some("hello")),
        (FormatKind::Apt, None, "dists/bookworm/InRelease", None),
        (FormatKind::Oci, None, "acme/app/manifests/v1", Some("acme/app")),
        (FormatKind::Oci, None, "acme/app/blobs/sha256:00", Some("acme/app")),
        (FormatKind::Oci, None, "", None),
        (FormatKind::Generic, None, "releases/tool-1.0.tar.gz", None),
    ];
    for (kind, files, path, want) in cases {
        let format = build(*kind, &up(*files)).unwrap();
        assert_eq!(format.package(path).as_deref(), *want, "{kind} {path}");
    }
    let hub = build(FormatKind::Oci, &Upstreams { namespace: Some("docker.io".into()), ..up(None) }).unwrap();
    assert_eq!(hub.package("alpine/manifests/3.20").as_deref(), Some("library/alpine"), "what Docker Hub serves");
    assert_eq!(hub.package("acme/app/manifests/v1").as_deref(), Some("acme/app"));
}
