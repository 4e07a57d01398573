//! Faults found by trying to break Hangar, each with the input that showed it: a pin checked
//! only on a miss, a cache split by `Host`, bad bytes on origin.

use std::path::{Path, PathBuf};

use hangar_e2e::services::{self, Service};
use hangar_e2e::{get, http, pattern, Proxy, Route, Upstream};
use sha2::Digest as _;

const FLEET_SECRET: &str = hangar_e2e::FLEET_SECRET;

fn sha256_hex(body: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_request_is_never_served_a_cached_copy_with_another_digest() {
    let up = Upstream::start().await;
    let real = b"the real tool".to_vec();
    up.route("/tool.tgz", Route::ok(real.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    // Cached first without a pin.
    assert_eq!(get(proxy.addr, "/tool.tgz").await.body, real);
    assert_eq!(get(proxy.addr, "/tool.tgz").await.cache(), "hit");
    // A pin that the cached bytes do not have: never those bytes.
    let other = sha256_hex(b"something else");
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={other}")).await;
    assert!(r.status != 200 || r.truncated, "a pinned request got the unpinned copy: {} {}", r.status, r.cache());
    // The right pin: fetched again once, verified, and from then on a hit.
    let pin = sha256_hex(&real);
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={pin}")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, real.as_slice()));
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={pin}")).await;
    assert_eq!((r.status, r.cache()), (200, "hit"));
    assert_eq!(up.hits("/tool.tgz"), 3, "the unpinned fill, the refused one, the verified one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_header_neither_splits_nor_bypasses_the_cache() {
    let up = Upstream::start().await;
    up.route("/file", Route::ok(b"x".to_vec()).header("Vary", "Host"));
    let config = format!("{{\"dl\":\"{}/api/v1/crates\",\"api\":\"{}\"}}", up.url(), up.url());
    up.route("/index/config.json", Route::ok(config.into_bytes()).header("Content-Type", "application/json"));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/files/\"\nupstream = \"{}\"\n[[repository]]\nname = \"cargo\"\nprefix = \"/cargo/\"\nformat = \"cargo\"\nupstream = \"{}/index/\"\nfiles_upstream = \"{}/api/v1/crates\"\n",
        up.url(),
        up.url(),
        up.url()
    );
    let proxy = Proxy::builder(dir.path()).config(&toml).start();
    for (i, host) in ["a.test", "b.test", "c.test:8443"].iter().enumerate() {
        let r = http(proxy.addr, "GET", "/files/file", &[("Host", host)]).await.unwrap().collect().await;
        assert_eq!(r.cache(), if i == 0 { "miss" } else { "hit" }, "{host}");
        // A rewritten document names the proxy as each client reached it, from one stored copy.
        let r = http(proxy.addr, "GET", "/cargo/config.json", &[("Host", host), ("X-Forwarded-Proto", if i == 2 { "https" } else { "http" })]).await.unwrap().collect().await;
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)));
        let scheme = if i == 2 { "https" } else { "http" };
        assert_eq!(doc["dl"], format!("{scheme}://{host}/cargo/dl/{{crate}}/{{version}}/{{sha256-checksum}}"), "{host}");
        assert_eq!(r.cache(), if i == 0 { "miss" } else { "hit" }, "config.json for {host}");
    }
    assert_eq!(up.hits("/file"), 1, "one upstream fetch whatever the Host");
    assert_eq!(up.hits("/index/config.json"), 1);
}

/// PUT `body` to origin with `headers`; returns (status, response text).
async fn put(origin: &Service, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    services::origin_put(origin, path, body, headers).await
}

/// hangar-origin on a directory under `root`, trusting the fleet's secret for repairs.
fn origin_with_secret(root: &Path) -> (Service, PathBuf) {
    let dir = root.join("origin");
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("store");
    let config = format!("spool_dir = \"{}\"\nfleet_secret = \"{FLEET_SECRET}\"\n[store]\nkind = \"local\"\ndir = \"{}\"\n", dir.display(), store.display());
    (services::origin(&config, &dir, &[]), store)
}

/// A proxy with origin; `repository` is added to the repository's table (pins, say).
fn proxy_with_origin(cache: &Path, up: &Upstream, origin: &Service, repository: &str) -> Proxy {
    let config = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n{repository}\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[origin]\nurl = \"http://{}/\"\n[fleet]\nsecret = \"{FLEET_SECRET}\"\n",
        up.url(),
        origin.addr
    );
    Proxy::builder(cache).config(&config).start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_copy_on_origin_is_passed_over_reported_and_replaced() {
    let root = tempfile::tempdir().unwrap();
    let (origin, _) = origin_with_secret(root.path());
    wrong_copy_on(&origin, root.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_copy_on_an_s3_origin_is_replaced_too() {
    let root = tempfile::tempdir().unwrap();
    let moto = services::moto(root.path());
    let origin = services::origin_on_s3(root.path(), &moto, "hangar-faults", &format!("fleet_secret = \"{FLEET_SECRET}\""), "");
    wrong_copy_on(&origin, root.path()).await;
}

async fn wrong_copy_on(origin: &Service, root: &Path) {
    let up = Upstream::start().await;
    let real = pattern(7, 300_000);
    up.route("/tool.bin", Route::ok(real.clone()));
    // Other bytes published on origin under the artefact's path (origin's PUT checks only
    // that a body matches its own declared digest).
    let wrong = b"not the tool".to_vec();
    assert_eq!(put(origin, "/objects/files/tool.bin", &wrong, &[]).await.0, 201);
    let wrong_sha = sha256_hex(&wrong);
    // A replacement nobody signed is refused, and changes nothing.
    let real_sha = sha256_hex(&real);
    let (status, text) = put(origin, "/objects/files/tool.bin", &real, &[("X-Hangar-Replaces", &wrong_sha), ("X-Hangar-Sha256", &real_sha)]).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(services::origin_get(&origin, "/objects/files/tool.bin").await.body, wrong);

    // The operator's pin says what the bytes must be; origin names other bytes: the upstream's
    // are served, on the first request, whole.
    let pin = sha256_hex(&real);
    let proxy = proxy_with_origin(&root.join("cache"), &up, origin, &format!("[repository.pins]\n\"/tool.bin\" = \"sha256:{pin}\""));
    let r = get(proxy.addr, "/tool.bin").await;
    assert_eq!((r.status, r.truncated, r.body == real), (200, false, true), "{}", String::from_utf8_lossy(&r.body[..r.body.len().min(200)]));
    assert_eq!(proxy.metric("hangar_origin_fetches_total", &[("result", "corrupt")]).await, 1.0);
    assert_eq!(up.hits("/tool.bin"), 1);
    // ... and origin's copy is replaced by the verified one.
    proxy.wait_for_metric("hangar_origin_uploads_total", &[("result", "replaced")], 1.0).await;
    let r = services::origin_get(&origin, "/objects/files/tool.bin").await;
    assert_eq!((r.body == real, r.header("x-hangar-sha256")), (true, Some(pin.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotten_blob_on_origin_is_never_served_whole_and_is_repaired() {
    let up = Upstream::start().await;
    let real = pattern(9, 300_000);
    up.route("/tool.bin", Route::ok(real.clone()));
    let root = tempfile::tempdir().unwrap();
    let (origin, store) = origin_with_secret(root.path());
    let sha = sha256_hex(&real);
    assert_eq!(put(&origin, "/objects/files/tool.bin", &real, &[("X-Hangar-Sha256", &sha)]).await.0, 201);
    // The stored blob rots: same length, other bytes, same name.
    let blob = hangar_e2e::files_under(&store.join("blobs")).into_iter().find(|p| p.to_string_lossy().contains(&sha)).expect("the blob is named by its digest");
    let rotten = pattern(10, real.len() as u64);
    std::fs::write(&blob, &rotten).unwrap();

    let proxy = proxy_with_origin(&root.path().join("cache"), &up, &origin, "");
    // Nothing says what the bytes must be but origin's own sha256: the body is checked against
    // it, and the transfer fails rather than deliver rotten bytes whole.
    let r = get(proxy.addr, "/tool.bin").await;
    assert!(r.truncated || r.status >= 500, "a rotten copy was served whole: {} ({} bytes)", r.status, r.body.len());
    assert_ne!(r.body, rotten);
    assert_eq!(proxy.metric("hangar_origin_fetches_total", &[("result", "corrupt")]).await, 1.0);
    // The next request goes to the upstream, is served and cached; origin is repaired.
    let r = get(proxy.addr, "/tool.bin").await;
    assert_eq!((r.status, r.body == real), (200, true));
    assert_eq!(up.hits("/tool.bin"), 1);
    assert_eq!(get(proxy.addr, "/tool.bin").await.cache(), "hit");
    proxy.wait_for_metric("hangar_origin_uploads_total", &[("result", "replaced")], 1.0).await;
    assert_eq!(std::fs::read(&blob).unwrap(), real, "the blob holds its digest's bytes again");
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_pin_never_condemns_origins_copy() {
    let up = Upstream::start().await;
    let real = pattern(11, 100_000);
    up.route("/tool.bin", Route::ok(real.clone()));
    let root = tempfile::tempdir().unwrap();
    let (origin, _) = origin_with_secret(root.path());
    let sha = sha256_hex(&real);
    assert_eq!(put(&origin, "/objects/files/tool.bin", &real, &[("X-Hangar-Sha256", &sha)]).await.0, 201);
    let proxy = proxy_with_origin(&root.path().join("cache"), &up, &origin, "");
    // A client pins other bytes: not origin's copy, and not the upstream's either.
    let r = get(proxy.addr, &format!("/tool.bin?sha256={}", sha256_hex(b"other"))).await;
    assert!(r.status != 200 || r.truncated, "bytes that do not match the pin were served");
    assert_eq!(proxy.metric("hangar_origin_fetches_total", &[("result", "other_digest")]).await, 1.0);
    assert_eq!(proxy.metric("hangar_origin_fetches_total", &[("result", "corrupt")]).await, 0.0);
    // Origin's copy is still trusted, and still the one served.
    let r = get(proxy.addr, "/tool.bin").await;
    assert_eq!((r.status, r.body == real), (200, true));
    assert_eq!(proxy.metric("hangar_origin_fetches_total", &[("result", "hit")]).await, 1.0);
    assert_eq!(proxy.metric("hangar_origin_uploads_total", &[("result", "replaced")]).await, 0.0);
    assert_eq!(services::origin_get(&origin, "/objects/files/tool.bin").await.header("x-hangar-sha256"), Some(sha.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_say_what_its_bytes_were_verified_against() {
    let up = Upstream::start().await;
    let claimed = sha256_hex(b"what a pinned client wants");
    up.route("/tool.tgz", Route::ok(b"something else".to_vec()).header("X-Hangar-Digest", &format!("sha256:{claimed}")));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    assert_eq!(get(proxy.addr, "/tool.tgz").await.status, 200);
    let r = get(proxy.addr, "/tool.tgz").await;
    assert_eq!((r.cache(), r.header("x-hangar-digest")), ("hit", None), "the upstream's internal header is neither stored nor passed on");
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={claimed}")).await;
    assert!(r.status != 200 || r.truncated, "a copy never verified against the pin was served for it: {} {}", r.status, r.cache());
}
