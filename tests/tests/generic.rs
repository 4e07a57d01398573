//! `generic` repositories for release assets: redirects to signed URLs, SSRF protection, and
//! digests pinned in the config or asked for with `?sha256=`.

use hangar_e2e::{get, Proxy, Route, Upstream};
use sha2::Digest as _;

fn config(up: &Upstream, extra: &str) -> String {
    format!("[[repository]]\nname = \"rel\"\nprefix = \"/\"\nupstream = \"{}\"\n{extra}\n", up.url())
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_internal_addresses_are_refused_unless_allowed() {
    let up = Upstream::start().await;
    let internal = Upstream::start().await;
    internal.route("/secret", Route::ok(b"internal only".to_vec()));
    up.route("/asset", Route::ok(Vec::new()).status(302).header("Location", &format!("{}/secret", internal.url())).header("Cache-Control", "no-store"));
    up.route("/metadata", Route::ok(Vec::new()).status(302).header("Location", "http://169.254.169.254/latest/meta-data/").header("Cache-Control", "no-store"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).start();
    for p in ["/asset", "/metadata"] {
        let r = get(proxy.addr, p).await;
        assert_eq!(r.status, 502, "{p}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(internal.hits("/secret"), 0, "the internal address was never contacted");
    assert_eq!(proxy.metric("hangar_upstream_errors_total", &[("kind", "redirect_refused")]).await, 2.0);
    drop(proxy);

    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "allow_private_redirects = true")).start();
    let r = get(proxy.addr, "/asset").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"internal only"[..]), "allowed when the operator says so");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_hosts_limit_where_redirects_may_lead() {
    let up = Upstream::start().await;
    let cdn = Upstream::start().await;
    cdn.route("/signed", Route::ok(b"asset".to_vec()));
    up.route("/by-ip", Route::ok(Vec::new()).status(302).header("Location", &format!("http://127.0.0.1:{}/signed", cdn.addr.port())).header("Cache-Control", "no-store"));
    up.route("/by-name", Route::ok(Vec::new()).status(302).header("Location", &format!("http://localhost:{}/signed", cdn.addr.port())).header("Cache-Control", "no-store"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "allow_private_redirects = true\nredirect_hosts = [\"localhost\", \"*.cdn.test\"]")).start();
    assert_eq!(get(proxy.addr, "/by-ip").await.status, 502, "127.0.0.1 is not in redirect_hosts");
    let r = get(proxy.addr, "/by-name").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"asset"[..]));
    assert_eq!(cdn.hits("/signed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_and_requested_digests_are_verified_before_caching() {
    let up = Upstream::start().await;
    let good = b"release tarball bytes".to_vec();
    let sha = sha256_hex(&good);
    for p in ["/tool.tgz", "/other.tgz", "/pinned.tgz"] {
        up.route(p, Route::ok(good.clone()));
    }
    let dir = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let proxy = Proxy::builder(dir.path()).config(&config(&up, &format!("[repository.pins]\n\"/pinned.tgz\" = \"sha256:{wrong}\""))).start();

    let r = get(proxy.addr, &format!("/tool.tgz?sha256={sha}")).await;
    assert_eq!((r.status, r.cache(), r.body == good), (200, "miss", true));
    assert_eq!(get(proxy.addr, "/tool.tgz").await.cache(), "hit", "the digest is not part of the URL that is cached");
    assert_eq!(up.requests("/tool.tgz")[0].path, "/tool.tgz", "the digest is not sent upstream");

    for p in [format!("/other.tgz?sha256={wrong}"), "/pinned.tgz".to_string()] {
        let r = get(proxy.addr, &p).await;
        assert!(r.truncated || r.status != 200, "{p}: a body with the wrong digest is not delivered whole");
    }
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[]).await, 2.0);
    assert_ne!(get(proxy.addr, "/pinned.tgz").await.cache(), "hit", "nothing was cached");
    assert_eq!(get(proxy.addr, &format!("/pinned.tgz?sha256={sha}")).await.status, 400, "a request contradicting a pin is refused");
}
