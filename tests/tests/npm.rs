//! npm through Hangar: npm install, npm ci, pnpm and yarn against the live registry
//! (npm's configured one), then again with the repository offline; and the format's rules
//! against a fixture upstream.

use std::path::Path;
use std::process::Command;

use hangar_e2e::clients::{client, make_tgz, npm_registry, packument, run, run_failing};
use hangar_e2e::{http, Proxy, Route, Upstream};
use sha2::Digest as _;

fn config(registry: &str) -> String {
    format!("[[repository]]\nname = \"npm\"\nprefix = \"/npm/\"\nformat = \"npm\"\nupstream = \"{registry}\"\n")
}

const PACKAGE_JSON: &str = r#"{"name":"hangar-npm-test","version":"1.0.0","private":true,"dependencies":{"is-number":"7.0.0","chalk":"4.1.2"}}"#;

/// A fresh project directory with `package.json` (and a lockfile, if given).
fn project(root: &Path, name: &str, lockfile: Option<(&str, &[u8])>) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("package.json"), PACKAGE_JSON).unwrap();
    if let Some((file, body)) = lockfile {
        std::fs::write(dir.join(file), body).unwrap();
    }
    dir
}

/// The direct dependencies are at the top of node_modules; the transitive ones wherever the
/// client's layout puts them (pnpm keeps them under `.pnpm/`).
fn installed(dir: &Path) {
    for p in ["is-number", "chalk"] {
        assert!(dir.join("node_modules").join(p).join("package.json").exists(), "{}: {p} not installed", dir.display());
    }
    for p in ["ansi-styles", "supports-color", "has-flag", "color-convert", "color-name"] {
        assert!(find_package(&dir.join("node_modules"), p), "{}: {p} not installed", dir.display());
    }
}

fn find_package(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let path = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        (e.file_name() == name && path.join("package.json").exists()) || (is_dir && find_package(&path, name))
    })
}

fn npm(scratch: &Path, dir: &Path, registry: &str, args: &[&str]) -> Command {
    let mut cmd = client("npm", scratch);
    cmd.current_dir(dir).args(args).args(["--registry", registry, "--cache"]).arg(dir.join(".npm-cache"));
    cmd
}

fn pnpm(scratch: &Path, dir: &Path, registry: &str) -> Command {
    let mut cmd = client("pnpm", scratch);
    cmd.current_dir(dir)
        .args(["install", "--registry", registry, "--store-dir"])
        .arg(dir.join(".pnpm-store"))
        .arg("--cache-dir")
        .arg(dir.join(".pnpm-cache"))
        .env("npm_config_registry", registry);
    cmd
}

/// yarn install: classic (1.x) takes flags; berry (2+) reads `.yarnrc.yml`.
fn yarn(scratch: &Path, dir: &Path, registry: &str) -> Command {
    let version = run(client("yarn", scratch).current_dir(dir).arg("--version"));
    let mut cmd = client("yarn", scratch);
    cmd.current_dir(dir).env("YARN_ENABLE_TELEMETRY", "0");
    if version.trim().starts_with("1.") {
        cmd.args(["install", "--non-interactive", "--registry", registry, "--cache-folder"]).arg(dir.join(".yarn-cache"));
    } else {
        let rc = format!(
            "npmRegistryServer: \"{registry}\"\nunsafeHttpWhitelist:\n  - \"127.0.0.1\"\nenableGlobalCache: false\ncacheFolder: \"./.yarn-cache\"\nnodeLinker: node-modules\nenableTelemetry: false\n"
        );
        std::fs::write(dir.join(".yarnrc.yml"), rc).unwrap();
        std::fs::write(dir.join("yarn.lock"), "").unwrap();
        cmd.arg("install");
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_pnpm_and_yarn_install_through_the_proxy_and_keep_working_offline() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&npm_registry())).start();
    let registry = format!("http://{}/npm/", proxy.addr);
    let scratch = tempfile::tempdir().unwrap();
    let mut lockfile = None;
    let mut fetched = 0.0;
    for round in ["online", "offline"] {
        let root = scratch.path().join(round);
        // npm install writes the lockfile that npm ci then installs from, each with an empty cache.
        let d = project(&root, "npm-install", None);
        run(&mut npm(scratch.path(), &d, &registry, &["install"]));
        installed(&d);
        let lock = lockfile.get_or_insert_with(|| std::fs::read(d.join("package-lock.json")).unwrap()).clone();
        let d = project(&root, "npm-ci", Some(("package-lock.json", &lock)));
        run(&mut npm(scratch.path(), &d, &registry, &["ci"]));
        installed(&d);
        let d = project(&root, "pnpm", None);
        run(&mut pnpm(scratch.path(), &d, &registry));
        installed(&d);
        let d = project(&root, "yarn", None);
        run(&mut yarn(scratch.path(), &d, &registry));
        installed(&d);

        let upstream_bytes = proxy.metric("hangar_bytes_upstream_total", &[("repository", "npm")]).await;
        if round == "online" {
            // Seven packages: their packuments and tarballs all came through the proxy.
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "npm"), ("result", "miss")]).await >= 14.0);
            assert!(upstream_bytes > 0.0);
            assert_eq!(proxy.metric("hangar_cache_skipped_total", &[("repository", "npm")]).await, 0.0, "every tarball was verified and cached");
            fetched = upstream_bytes;
            let r = http(proxy.admin, "PUT", "/offline/npm", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await;
            assert_eq!(r.status, 200);
        } else {
            assert_eq!(upstream_bytes, fetched, "offline: nothing fetched upstream");
        }
    }
}

/// A project `root/<name>` depending on `package` 1.0.0.
fn depending_on(root: &Path, name: &str, package: &str) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("package.json"), format!(r#"{{"name":"t","version":"1.0.0","dependencies":{{"{package}":"1.0.0"}}}}"#)).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_that_does_not_match_its_integrity_fails_npm_and_is_not_cached() {
    let scratch = tempfile::tempdir().unwrap();
    let good = make_tgz(scratch.path(), "tampered");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 0xff;
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    up.route("/tampered", Route::ok(packument(&registry, "tampered", &good).into_bytes()).header("Content-Type", "application/json"));
    up.route("/tampered/-/tampered-1.0.0.tgz", Route::ok(bad));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&registry)).start();
    let proxied = format!("http://{}/npm/", proxy.addr);
    let write_project = |name: &str| depending_on(scratch.path(), name, "tampered");
    let d = write_project("a");
    // No retries: each attempt would fetch (and reject) the tarball again.
    run_failing(&mut npm(scratch.path(), &d, &proxied, &["install", "--fetch-retries=0"]));
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "npm")]).await, 1.0);

    up.route("/tampered/-/tampered-1.0.0.tgz", Route::ok(good));
    let d = write_project("b");
    run(&mut npm(scratch.path(), &d, &proxied, &["install"]));
    assert!(d.join("node_modules/tampered/package.json").exists());
    assert_eq!(up.hits("/tampered/-/tampered-1.0.0.tgz"), 2, "the tampered tarball was never served from cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packuments_abbreviated_and_full_are_separate_with_tarballs_through_the_proxy() {
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    let full = packument(&registry, "@scope/pkg", b"x").replace("\"name\":\"@scope/pkg\",\"dist-tags\"", "\"name\":\"@scope/pkg\",\"readme\":\"full\",\"dist-tags\"");
    let abbreviated = packument(&registry, "@scope/pkg", b"x");
    up.route(
        "/@scope%2fpkg",
        Route::ok(full.clone().into_bytes())
            .header("Content-Type", "application/json")
            .when_accept("application/vnd.npm.install-v1+json", Route::ok(abbreviated.into_bytes()).header("Content-Type", "application/vnd.npm.install-v1+json")),
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&registry)).start();
    let base = format!("http://{}/npm/", proxy.addr);
    let abbrev_accept = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
    for (i, path) in ["/npm/@scope%2fpkg", "/npm/@scope/pkg"].into_iter().enumerate() {
        let expect = if i == 0 { "miss" } else { "hit" };
        let r = http(proxy.addr, "GET", path, &[("Accept", abbrev_accept)]).await.unwrap().collect().await;
        assert_eq!((r.status, r.cache(), r.header("content-type")), (200, expect, Some("application/vnd.npm.install-v1+json")), "{path}");
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(doc.get("readme").is_none());
        assert_eq!(doc["versions"]["1.0.0"]["dist"]["tarball"], format!("{base}@scope/pkg/-/pkg-1.0.0.tgz"));
        assert_eq!(doc["time"]["1.0.0"], "2020-01-01T00:00:00.000Z");
        let r = http(proxy.addr, "GET", path, &[("Accept", "application/json")]).await.unwrap().collect().await;
        assert_eq!((r.status, r.cache()), (200, expect), "{path}");
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["readme"], "full");
    }
    assert_eq!(up.hits("/@scope%2fpkg"), 2, "one upstream request per representation, both spellings one package");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packuments_are_compressed_for_clients_that_accept_it_and_never_twice() {
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    let doc = packument(&registry, "big", b"x").replace("\"dist-tags\"", &format!("\"readme\":\"{}\",\"dist-tags\"", "lorem ipsum ".repeat(2000)));
    up.route("/big", Route::ok(doc.clone().into_bytes()).header("Content-Type", "application/json"));
    // An upstream that already compressed its answer.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, doc.as_bytes()).unwrap();
    up.route("/pre", Route::ok(gz.finish().unwrap()).header("Content-Type", "application/json").header("Content-Encoding", "gzip"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&registry)).start();
    for path in ["/npm/big", "/npm/pre"] {
        for round in 0..2 {
            let r = http(proxy.addr, "GET", path, &[("Accept-Encoding", "gzip")]).await.unwrap().collect().await;
            assert_eq!((r.status, r.header("content-encoding")), (200, Some("gzip")), "{path} round {round}");
            assert!(r.body.len() * 5 < doc.len(), "{path}: compressed {} of {}", r.body.len(), doc.len());
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain).unwrap();
            let parsed: serde_json::Value = serde_json::from_slice(&plain).expect("one layer of gzip around JSON");
            assert_eq!(parsed["name"], "big");
            let r = http(proxy.addr, "GET", path, &[]).await.unwrap().collect().await;
            assert_eq!(r.header("content-encoding"), None, "{path}: identity for clients that do not ask");
            serde_json::from_slice::<serde_json::Value>(&r.body).expect("plain JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_audit_is_forwarded_upstream_and_never_cached() {
    let up = Upstream::start().await;
    up.route("/-/npm/v1/security/advisories/bulk", Route::ok(b"{}".to_vec()).header("Content-Type", "application/json"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&format!("{}/", up.url()))).start();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"POST /npm/-/npm/v1/security/advisories/bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        assert!(resp.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&resp));
    }
    let posts = up.requests("/-/npm/v1/security/advisories/bulk").into_iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 2, "each audit reaches the upstream");
    let r = http(proxy.addr, "PUT", "/npm/is-number", &[("Content-Length", "0")]).await.unwrap().collect().await;
    assert_eq!(r.status, 405, "a mirror takes no publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_asked_for_before_its_packument_is_verified_through_the_cache() {
    let scratch = tempfile::tempdir().unwrap();
    let good = make_tgz(scratch.path(), "first");
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    for name in ["first", "forged"] {
        up.route(&format!("/{name}"), Route::ok(packument(&registry, name, &good).into_bytes()).header("Content-Type", "application/json"));
    }
    up.route("/first/-/first-1.0.0.tgz", Route::ok(good.clone()));
    up.route("/forged/-/forged-1.0.0.tgz", Route::ok(b"not the tarball the packument lists".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&registry)).start();

    // As `npm ci` does from a lockfile: the tarball first. The proxy reads the packument
    // through its own cache to learn the integrity, verifies, and caches.
    let r = http(proxy.addr, "GET", "/npm/first/-/first-1.0.0.tgz", &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body == good), (200, "miss", true));
    assert_eq!(http(proxy.addr, "GET", "/npm/first/-/first-1.0.0.tgz", &[]).await.unwrap().collect().await.cache(), "hit");
    assert_eq!(up.hits("/first"), 1, "the packument was read once, through the cache");
    let abbreviated = [("Accept", "application/vnd.npm.install-v1+json")];
    assert_eq!(http(proxy.addr, "GET", "/npm/first", &abbreviated).await.unwrap().collect().await.cache(), "hit", "the packument read is cached like any other");

    let r = http(proxy.addr, "GET", "/npm/forged/-/forged-1.0.0.tgz", &[]).await.unwrap().collect().await;
    assert!(r.truncated || r.status != 200, "a forged tarball is not delivered whole");
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "npm")]).await, 1.0);
    assert_ne!(http(proxy.addr, "GET", "/npm/forged/-/forged-1.0.0.tgz", &[]).await.unwrap().collect().await.cache(), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_page_sent_as_a_packument_is_never_stored_and_the_last_good_copy_stands_in() {
    let scratch = tempfile::tempdir().unwrap();
    let tgz = make_tgz(scratch.path(), "flaky");
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    let error_page = Route::ok(b"<!DOCTYPE html><html><body>502 Bad Gateway (corporate proxy)</body></html>".to_vec()).header("Content-Type", "text/html");
    up.route("/flaky", error_page.clone());
    up.route("/flaky/-/flaky-1.0.0.tgz", Route::ok(tgz.clone()));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}[repository.freshness]\nmetadata_ttl = \"0s\"\nstale_while_revalidate = \"0s\"\n", config(&registry));
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).start();
    let proxied = format!("http://{}/npm/", proxy.addr);
    let project = |name: &str| depending_on(scratch.path(), name, "flaky");

    let unreadable = || proxy.metric("hangar_upstream_errors_total", &[("repository", "npm"), ("kind", "unreadable_document")]);
    // The upstream's error page is not a packument: 502 saying why, and nothing stored.
    for _ in 0..2 {
        let r = http(proxy.addr, "GET", "/npm/flaky", &[]).await.unwrap().collect().await;
        assert_eq!(r.status, 502);
        assert!(String::from_utf8_lossy(&r.body).contains("HTML page"), "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(up.hits("/flaky"), 2, "never served from cache");
    assert_eq!(unreadable().await, 2.0, "counted once per request");
    run_failing(&mut npm(scratch.path(), &project("a"), &proxied, &["install", "--fetch-retries=0"]));
    // A JSON type with an HTML body is cut off at its first bytes, and not stored either.
    up.route("/flaky", error_page.clone().header("Content-Type", "application/json"));
    let before = unreadable().await;
    let r = http(proxy.addr, "GET", "/npm/flaky", &[]).await.unwrap().collect().await;
    assert!(r.status != 200 || r.truncated, "an HTML body under a JSON type is not delivered as a packument");
    assert_eq!(unreadable().await, before + 1.0, "refused for what its first bytes are: {}", proxy.stderr());
    proxy.wait_for_log(|l| l.contains("not a packument (JSON)")).await;

    // The upstream recovers: npm installs, and the packument is cached.
    up.route("/flaky", Route::ok(packument(&registry, "flaky", &tgz).into_bytes()).header("Content-Type", "application/json").without("Cache-Control"));
    run(&mut npm(scratch.path(), &project("b"), &proxied, &["install"]));
    assert!(scratch.path().join("b/node_modules/flaky/package.json").exists());

    // It fails again: the last good copy is served, stale, and npm still installs.
    up.route("/flaky", error_page);
    let r = http(proxy.addr, "GET", "/npm/flaky", &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache()), (200, "stale"), "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("\"versions\""));
    run(&mut npm(scratch.path(), &project("c"), &proxied, &["install", "--prefer-online"]));
    assert!(scratch.path().join("c/node_modules/flaky/package.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarballs_in_another_layout_are_installed_through_the_proxy_and_verified() {
    // A GitHub-Packages style registry: `dist.tarball` is `<registry>/download/<name>/<version>/<sha1>`.
    let scratch = tempfile::tempdir().unwrap();
    let tgz = make_tgz(scratch.path(), "widget");
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    let sha1: String = sha1::Sha1::digest(&tgz).iter().map(|b| format!("{b:02x}")).collect();
    let download = format!("/download/widget/1.0.0/{sha1}");
    let doc = packument(&registry, "widget", &tgz).replace(&format!("{registry}widget/-/widget-1.0.0.tgz"), &format!("{registry}{}", &download[1..]));
    assert!(doc.contains(&download));
    up.route("/widget", Route::ok(doc.into_bytes()).header("Content-Type", "application/json"));
    up.route(&download, Route::ok(tgz.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&registry)).start();
    let proxied = format!("http://{}/npm/", proxy.addr);

    // The link the proxy writes is one it serves, and leads to the upstream URL it came from.
    let r = http(proxy.addr, "GET", "/npm/widget", &[]).await.unwrap().collect().await;
    let served: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let link = served["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{proxied}widget/-/~/")), "{link}");
    for project in ["a", "b"] {
        let d = depending_on(scratch.path(), project, "widget");
        run(&mut npm(scratch.path(), &d, &proxied, &["install", "--prefer-online"]));
        assert!(d.join("node_modules/widget/package.json").exists(), "{project}");
    }
    assert_eq!(up.hits(&download), 1, "fetched once, then served from cache");
    assert_eq!(proxy.metric("hangar_verified_total", &[("repository", "npm")]).await, 1.0, "verified against dist.integrity");

    // Bytes that do not match the packument's integrity are not delivered whole, nor cached.
    let forged = format!("/download/widget/2.0.0/{sha1}");
    up.route(&forged, Route::ok(b"not the tarball".to_vec()));
    let doc = packument(&registry, "widget", &tgz).replace(&format!("{registry}widget/-/widget-1.0.0.tgz"), &format!("{registry}{}", &forged[1..]));
    up.route("/widget", Route::ok(doc.into_bytes()).header("Content-Type", "application/json").without("Cache-Control"));
    let dir2 = tempfile::tempdir().unwrap();
    let proxy2 = Proxy::builder(&dir2.path().join("cache")).config(&config(&registry)).start();
    let r = http(proxy2.addr, "GET", "/npm/widget", &[]).await.unwrap().collect().await;
    let served: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let link = served["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_string();
    let path = link.split_once(&proxy2.addr.to_string()).unwrap().1.to_string();
    for _ in 0..2 {
        let r = http(proxy2.addr, "GET", &path, &[]).await.unwrap().collect().await;
        assert!(r.truncated || r.status != 200, "forged bytes are refused");
    }
    assert_eq!(up.hits(&forged), 2, "and never cached");
}
