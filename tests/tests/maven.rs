//! Maven through Hangar: `mvn dependency:get` (the plugin itself resolved through the proxy
//! too) against Debian's system Maven repository served over HTTP, then again with that
//! upstream stopped; and checksum verification against a fixture upstream.

use std::path::Path;
use std::process::Command;

use hangar_e2e::clients::run;
use hangar_e2e::services;
use hangar_e2e::{get, Proxy, Route, Upstream};
use sha1::Digest as _;

/// Debian's Maven repository (Java library packages install into it), where
/// `dpkg -L maven-repo-helper` and friends put it.
const DEBIAN_MAVEN_REPO: &str = "/usr/share/maven-repo";
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.5.0";

fn config(upstream: &str) -> String {
    format!("[[repository]]\nname = \"debian\"\nprefix = \"/maven/debian/\"\nformat = \"maven\"\nupstream = \"{upstream}\"\n")
}

/// A settings.xml sending every repository (plugins included) through the proxy.
fn settings(dir: &Path, proxy: &Proxy) -> std::path::PathBuf {
    let path = dir.join("settings.xml");
    std::fs::write(
        &path,
        format!("<settings><mirrors><mirror><id>hangar</id><mirrorOf>*</mirrorOf><url>http://{}/maven/debian/</url></mirror></mirrors></settings>\n", proxy.addr),
    )
    .unwrap();
    path
}

fn mvn_get(scratch: &Path, settings: &Path, local_repo: &Path, artifact: &str) -> Command {
    let mut cmd = Command::new("mvn");
    cmd.current_dir(scratch)
        .args(["-B", "-s"])
        .arg(settings)
        .arg(format!("-Dmaven.repo.local={}", local_repo.display()))
        .arg(format!("{DEPENDENCY_PLUGIN}:get"))
        .arg(format!("-Dartifact={artifact}"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvn_resolves_plugins_and_artifacts_through_the_proxy_and_keeps_working_offline() {
    assert!(Path::new(DEBIAN_MAVEN_REPO).join("org/apache/maven/plugins/maven-dependency-plugin/3.5.0").exists(), "tests/run-all installs libmaven-dependency-plugin-java");
    let mut upstream = Some(services::file_server(Path::new(DEBIAN_MAVEN_REPO)));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&format!("http://{}/", upstream.as_ref().unwrap().addr))).start();
    let scratch = tempfile::tempdir().unwrap();
    let settings = settings(scratch.path(), &proxy);
    for round in ["online", "upstream stopped"] {
        let local = scratch.path().join(format!("m2-{}", round.replace(' ', "-")));
        let out = run(&mut mvn_get(scratch.path(), &settings, &local, "commons-io:commons-io:2.11.0"));
        assert!(local.join("commons-io/commons-io/2.11.0/commons-io-2.11.0.jar").exists(), "{round}:\n{out}");
        assert!(local.join("org/apache/maven/plugins/maven-dependency-plugin/3.5.0/maven-dependency-plugin-3.5.0.jar").exists(), "{round}: the plugin came through the proxy too");
        assert!(out.contains(&format!("http://{}/maven/debian/", proxy.addr)), "{round}: downloads went through the proxy");
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "debian"), ("result", "miss")]).await >= 10.0);
            upstream = None;
        }
    }
    drop(upstream);
    assert!(proxy.metric("hangar_cache_results_total", &[("repository", "debian"), ("result", "hit")]).await >= 10.0);
}

fn sha1_hex(b: &[u8]) -> String {
    sha1::Sha1::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artefacts_are_verified_against_the_upstreams_sha1_and_metadata_refreshes_with_its_checksums() {
    let up = Upstream::start().await;
    let jar = b"PK jar bytes".to_vec();
    up.route("/g/a/1.0/a-1.0.jar", Route::ok(b"PK tampered".to_vec()));
    up.route("/g/a/1.0/a-1.0.jar.sha1", Route::ok(format!("{}  a-1.0.jar\n", sha1_hex(&jar)).into_bytes()));
    up.route("/g/a/1.0/a-1.0.pom", Route::ok(b"<project/>".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&format!("{}/", up.url()))).start();

    let r = get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.jar").await;
    assert!(r.truncated || r.status != 200, "a jar that does not match its .sha1 is not delivered whole");
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[]).await, 1.0);
    up.route("/g/a/1.0/a-1.0.jar", Route::ok(jar.clone()));
    let r = get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.jar").await;
    assert_eq!((r.status, r.cache(), r.body == jar), (200, "miss", true), "nothing bad was cached");
    assert_eq!(get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.jar").await.cache(), "hit");
    // Decided for Maven: a release is immutable (Central refuses a redeploy), so a jar and
    // its .sha1 republished upstream do not replace the cached pair, which stays consistent:
    // the .sha1 served names the jar served. (Contrast apt and gems, whose indexes are
    // metadata: a rebuilt file whose index lists another digest is fetched again.)
    assert_eq!(get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.jar.sha1").await.status, 200);
    let rebuilt = b"PK rebuilt under the same version".to_vec();
    up.route("/g/a/1.0/a-1.0.jar", Route::ok(rebuilt.clone()));
    up.route("/g/a/1.0/a-1.0.jar.sha1", Route::ok(sha1_hex(&rebuilt).into_bytes()));
    let (jar_now, sum_now) = (get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.jar").await, get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.jar.sha1").await);
    assert_eq!((jar_now.cache(), sum_now.cache()), ("hit", "hit"));
    assert!(String::from_utf8_lossy(&sum_now.body).starts_with(&sha1_hex(&jar_now.body)), "the pair served agrees");
    assert_eq!(jar_now.body, jar);
    // No checksum upstream: cached anyway.
    get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.pom").await;
    assert_eq!(get(proxy.addr, "/maven/debian/g/a/1.0/a-1.0.pom").await.cache(), "hit");

    // maven-metadata.xml and its .sha1 are refreshed together: when the metadata is
    // fetched anew (here: purged, as after its TTL), its cached checksum goes with it.
    let v1 = b"<metadata><versioning><latest>1.0</latest></versioning></metadata>".to_vec();
    up.route("/g/a/maven-metadata.xml", Route::ok(v1.clone()));
    up.route("/g/a/maven-metadata.xml.sha1", Route::ok(sha1_hex(&v1).into_bytes()));
    assert_eq!(get(proxy.addr, "/maven/debian/g/a/maven-metadata.xml").await.body, v1);
    assert_eq!(get(proxy.addr, "/maven/debian/g/a/maven-metadata.xml.sha1").await.body, sha1_hex(&v1).into_bytes());
    assert_eq!(get(proxy.addr, "/maven/debian/g/a/maven-metadata.xml.sha1").await.cache(), "hit");
    let v2 = b"<metadata><versioning><latest>2.0</latest></versioning></metadata>".to_vec();
    up.route("/g/a/maven-metadata.xml", Route::ok(v2.clone()));
    up.route("/g/a/maven-metadata.xml.sha1", Route::ok(sha1_hex(&v2).into_bytes()));
    let r = hangar_e2e::http(proxy.admin, "DELETE", "/cache/debian/g/a/maven-metadata.xml", &[hangar_e2e::ADMIN]).await.unwrap().collect().await;
    assert_eq!(r.status, 200);
    let meta = get(proxy.addr, "/maven/debian/g/a/maven-metadata.xml").await;
    let sum = get(proxy.addr, "/maven/debian/g/a/maven-metadata.xml.sha1").await;
    assert_eq!((meta.body, sum.body), (v2.clone(), sha1_hex(&v2).into_bytes()), "the checksum matches the metadata served");
}
