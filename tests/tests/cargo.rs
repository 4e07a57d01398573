//! crates.io's sparse index through Hangar: `cargo fetch` with source replacement against the
//! live index (discovered from cargo's own registry cache), then again with the repository
//! offline; and the format's rules against a fixture upstream.

use std::path::{Path, PathBuf};
use std::process::Command;

use hangar_e2e::clients::{cargo_index, client, run, run_failing};
use hangar_e2e::{http, Proxy, Route, Upstream};
use sha2::Digest as _;

fn config(index: &str, dl: &str, freshness: &str) -> String {
    format!("[[repository]]\nname = \"cargo\"\nprefix = \"/cargo/\"\nformat = \"cargo\"\nupstream = \"{index}\"\nfiles_upstream = \"{dl}\"\n[repository.freshness]\n{freshness}\n")
}

/// A project depending on `deps`, with crates.io replaced by the proxy.
fn project(root: &Path, proxy: &Proxy, deps: &str) -> PathBuf {
    let dir = root.join("project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join(".cargo")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), format!("[package]\nname = \"hangar-cargo-test\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}")).unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(
        dir.join(".cargo/config.toml"),
        format!("[source.crates-io]\nreplace-with = \"hangar\"\n\n[source.hangar]\nregistry = \"sparse+http://{}/cargo/\"\n", proxy.addr),
    )
    .unwrap();
    dir
}

/// `cargo fetch` in `dir` with an empty `CARGO_HOME` (no cached index or crates).
fn cargo_fetch(scratch: &Path, dir: &Path, home: &Path) -> Command {
    let mut cmd = client("cargo", scratch);
    cmd.current_dir(dir).arg("fetch").env("CARGO_HOME", home).env("CARGO_NET_RETRY", "0").env_remove("CARGO_TARGET_DIR");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_fetch_through_the_proxy_and_keep_working_offline() {
    let (index, dl) = cargo_index();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&index, &dl, "")).start();
    let scratch = tempfile::tempdir().unwrap();
    let project = project(scratch.path(), &proxy, "itoa = \"1\"\ncfg-if = \"1\"\nmemchr = \"2\"\nryu = \"1\"\n");
    let mut fetched = 0.0;
    for round in ["online", "offline"] {
        let home = scratch.path().join(format!("cargo-home-{round}"));
        let out = run(&mut cargo_fetch(scratch.path(), &project, &home));
        for krate in ["itoa", "cfg-if", "memchr", "ryu"] {
            assert!(out.contains(&format!("Downloaded {krate} v")), "{round}: {krate} not downloaded:\n{out}");
        }
        let upstream_bytes = proxy.metric("hangar_bytes_upstream_total", &[("repository", "cargo")]).await;
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "cargo"), ("result", "miss")]).await >= 8.0, "config.json, index files and crates through the proxy");
            assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "cargo")]).await, 0.0);
            fetched = upstream_bytes;
            let r = http(proxy.admin, "PUT", "/offline/cargo", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await;
            assert_eq!(r.status, 200);
        } else {
            assert_eq!(upstream_bytes, fetched, "offline: nothing fetched upstream");
        }
    }
}

/// A `.crate`: `<name>-<version>/Cargo.toml` and `src/lib.rs` in a gzipped tar.
fn make_crate(dir: &Path, name: &str, version: &str) -> Vec<u8> {
    let root = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("Cargo.toml"), format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n")).unwrap();
    std::fs::write(root.join("src/lib.rs"), "").unwrap();
    run(Command::new("tar").current_dir(dir).args(["czf", "out.crate", &format!("{name}-{version}")]));
    std::fs::read(dir.join("out.crate")).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fixture registry serving crate `hgtest` 1.0.0 (index `hg/te/hgtest`) with `body` as its
/// `.crate` and `cksum` in the index.
fn fixture_registry(up: &Upstream, body: Vec<u8>, cksum: &str) {
    up.route("/index/config.json", Route::ok(format!("{{\"dl\":\"{}/dl\",\"api\":\"{}/api\"}}", up.url(), up.url()).into_bytes()).header("Content-Type", "application/json"));
    let line = format!("{{\"name\":\"hgtest\",\"vers\":\"1.0.0\",\"deps\":[],\"cksum\":\"{cksum}\",\"features\":{{}},\"yanked\":false}}\n");
    up.route("/index/hg/te/hgtest", Route::ok(line.into_bytes()).header("ETag", "\"idx1\"").without("Cache-Control").revalidates());
    up.route("/dl/hgtest/1.0.0/download", Route::ok(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crate_that_does_not_match_the_index_checksum_fails_cargo_and_is_not_cached() {
    let scratch = tempfile::tempdir().unwrap();
    let good = make_crate(scratch.path(), "hgtest", "1.0.0");
    let cksum = hex(&sha2::Sha256::digest(&good));
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 12] ^= 0xff;
    let up = Upstream::start().await;
    fixture_registry(&up, bad, &cksum);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&format!("{}/index/", up.url()), &format!("{}/dl", up.url()), "")).start();
    let project = project(scratch.path(), &proxy, "hgtest = \"=1.0.0\"\n");

    run_failing(&mut cargo_fetch(scratch.path(), &project, &scratch.path().join("home-a")));
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "cargo")]).await, 1.0);

    up.route("/dl/hgtest/1.0.0/download", Route::ok(good));
    let out = run(&mut cargo_fetch(scratch.path(), &project, &scratch.path().join("home-b")));
    assert!(out.contains("Downloaded hgtest v1.0.0"), "{out}");
    assert_eq!(up.hits("/dl/hgtest/1.0.0/download"), 2, "the tampered crate was never served from cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_json_leads_downloads_to_the_proxy_and_index_files_revalidate_with_304s() {
    let up = Upstream::start().await;
    fixture_registry(&up, b"crate".to_vec(), &"0".repeat(64));
    let dir = tempfile::tempdir().unwrap();
    // Index files always validated with the upstream, to show the conditional round trip.
    let proxy = Proxy::builder(&dir.path().join("cache"))
        .config(&config(&format!("{}/index/", up.url()), &format!("{}/dl", up.url()), "metadata_ttl = \"0s\"\nstale_while_revalidate = \"0s\""))
        .start();

    let r = http(proxy.addr, "GET", "/cargo/config.json", &[]).await.unwrap().collect().await;
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["dl"], format!("http://{}/cargo/dl/{{crate}}/{{version}}/{{sha256-checksum}}", proxy.addr));

    // cargo over plain HTTP offers an h2c upgrade; it is ignored, never passed upstream.
    let h2c = [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")];
    let r = http(proxy.addr, "GET", "/cargo/hg/te/hgtest", &h2c).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.header("etag")), (200, "miss", Some("\"idx1\"")));
    assert!(up.requests("/index/hg/te/hgtest")[0].header("upgrade").is_none());

    let r = http(proxy.addr, "GET", "/cargo/hg/te/hgtest", &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache()), (200, "revalidated"));
    let seen = up.requests("/index/hg/te/hgtest");
    assert_eq!(seen[1].header("if-none-match"), Some("\"idx1\""), "revalidated with the upstream's ETag");

    // cargo's own conditional request is answered from cache with a 304.
    let r = http(proxy.addr, "GET", "/cargo/hg/te/hgtest", &[("If-None-Match", "\"idx1\"")]).await.unwrap().collect().await;
    assert_eq!((r.status, r.body.len()), (304, 0));
}
