//! HTTP caching semantics for `generic` repositories (RFC 9111), one rule per test.

use hangar_e2e::{get, http, Proxy, Route, Upstream};

fn proxy_for(up: &Upstream, dir: &std::path::Path) -> Proxy {
    Proxy::builder(dir).upstream("/", &up.url()).start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_variant_per_listed_request_header() {
    let up = Upstream::start().await;
    up.route("/doc", Route::ok(Vec::new()).echo_header("Accept").header("Vary", "Accept"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    let fetch = |accept: &'static str| async move {
        let r = http(proxy.addr, "GET", "/doc", &[("Accept", accept)]).await.unwrap().collect().await;
        (r.cache().to_string(), String::from_utf8_lossy(&r.body).to_string())
    };
    assert_eq!(fetch("text/html").await, ("miss".into(), "text/html".into()));
    assert_eq!(fetch("application/json").await, ("miss".into(), "application/json".into()));
    assert_eq!(fetch("text/html").await, ("hit".into(), "text/html".into()));
    assert_eq!(fetch("application/json").await, ("hit".into(), "application/json".into()));
    assert_eq!(up.hits("/doc"), 2, "one upstream request per variant");
    // Purging the URL drops every variant.
    let r = http(proxy.admin, "DELETE", "/cache/root/doc", &[]).await.unwrap().collect().await;
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "{\"purged\":2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_star_is_never_stored() {
    let up = Upstream::start().await;
    up.route("/any", Route::ok(b"x".to_vec()).header("Vary", "*"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/any").await;
    assert_eq!(get(proxy.addr, "/any").await.cache(), "miss");
    assert_eq!(up.hits("/any"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_are_forwarded_never_cached_and_invalidate_the_url() {
    let up = Upstream::start().await;
    up.route("/res", Route::ok(b"v1".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/res").await;
    assert_eq!(get(proxy.addr, "/res").await.cache(), "hit");

    // A failed write changes nothing.
    up.route("/res", Route::ok(b"denied".to_vec()).status(403).header("Cache-Control", "no-store"));
    let r = http(proxy.addr, "PUT", "/res", &[("Content-Length", "0")]).await;
    let r = r.unwrap().collect().await;
    assert_eq!(r.status, 403);
    assert_eq!(get(proxy.addr, "/res").await.cache(), "hit");

    // A successful one reaches the upstream with its body and invalidates the cached GET.
    up.route("/res", Route::ok(b"stored".to_vec()).status(201).header("Cache-Control", "no-store"));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"POST /res HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 201"), "{}", String::from_utf8_lossy(&resp));
    let posts = up.requests("/res").into_iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1);
    up.route("/res", Route::ok(b"v2".to_vec()));
    let r = get(proxy.addr, "/res").await;
    assert_eq!((r.cache(), r.body.as_slice()), ("miss", &b"v2"[..]), "the POST invalidated the cached copy");
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let n = up.requests("/res").into_iter().filter(|r| r.method == m).count();
        assert!(n <= 1, "{m} went upstream {n} times");
    }
}
