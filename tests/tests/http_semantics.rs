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
    let r = http(proxy.admin, "DELETE", "/cache/root/doc", &[hangar_e2e::ADMIN]).await.unwrap().collect().await;
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
    // Writes are `publish` and `delete`: the test proxies' admin credential may do them.
    let r = http(proxy.addr, "PUT", "/res", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await;
    let r = r.unwrap().collect().await;
    assert_eq!(r.status, 403);
    assert_eq!(get(proxy.addr, "/res").await.cache(), "hit");

    // A successful one reaches the upstream with its body and invalidates the cached GET.
    up.route("/res", Route::ok(b"stored".to_vec()).status(201).header("Cache-Control", "no-store"));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let post = format!("POST /res HTTP/1.1\r\nHost: x\r\n{}: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", hangar_e2e::ADMIN.0, hangar_e2e::ADMIN.1);
    s.write_all(post.as_bytes()).await.unwrap();
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

/// A repository `r` at `/` in front of `up` with these `[repository.freshness]` lines.
fn proxy_with(up: &Upstream, dir: &std::path::Path, freshness: &str) -> Proxy {
    let config = format!(
        "[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\n{freshness}\n",
        up.url()
    );
    Proxy::builder(dir).config(&config).start()
}

async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> hangar_e2e::Response {
    http(proxy.addr, "GET", path, headers).await.unwrap().collect().await
}

/// A body the upstream would send without any freshness or validators.
fn bare(body: &str) -> Route {
    Route::ok(body.as_bytes().to_vec()).without("Cache-Control")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_responses_are_never_stored() {
    let up = Upstream::start().await;
    up.route("/ns", Route::ok(b"x".to_vec()).header("Cache-Control", "no-store, max-age=600"));
    up.route("/priv", Route::ok(b"x".to_vec()).header("Cache-Control", "private, max-age=600"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    for p in ["/ns", "/priv"] {
        get(proxy.addr, p).await;
        assert_eq!(get(proxy.addr, p).await.cache(), "miss", "{p}");
        assert_eq!(up.hits(p), 2, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_freshness_or_validators_is_reused_only_with_a_configured_default() {
    let up = Upstream::start().await;
    up.route("/bare", bare("b"));
    let dir = tempfile::tempdir().unwrap();
    let strict = proxy_with(&up, dir.path(), "");
    get(strict.addr, "/bare").await;
    assert_eq!(get(strict.addr, "/bare").await.cache(), "miss");
    assert_eq!(up.hits("/bare"), 2);
    drop(strict);

    let dir = tempfile::tempdir().unwrap();
    let lenient = proxy_with(&up, dir.path(), "default_ttl = \"1h\"");
    get(lenient.addr, "/bare").await;
    assert_eq!(get(lenient.addr, "/bare").await.cache(), "hit");
    assert_eq!(up.hits("/bare"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_without_freshness_are_stored_and_validated_before_each_use() {
    let up = Upstream::start().await;
    up.route("/etag", bare("tagged").header("ETag", "\"t1\"").revalidates());
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    assert_eq!(get(proxy.addr, "/etag").await.cache(), "miss");
    let r = get(proxy.addr, "/etag").await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "revalidated", &b"tagged"[..]));
    let seen = up.requests("/etag");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some("\"t1\""), "asked with the stored validator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_no_cache_is_stored_but_validated_before_every_use() {
    let up = Upstream::start().await;
    up.route("/nc", Route::ok(b"nc".to_vec()).header("Cache-Control", "no-cache, max-age=600").header("ETag", "\"n\"").revalidates());
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/nc").await;
    for _ in 0..2 {
        let r = get(proxy.addr, "/nc").await;
        assert_eq!((r.cache(), r.body.as_slice()), ("revalidated", &b"nc"[..]));
    }
    assert_eq!(up.hits("/nc"), 3);
    assert!(up.requests("/nc")[1..].iter().all(|r| r.header("if-none-match") == Some("\"n\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_updates_the_stored_headers_and_freshness() {
    let up = Upstream::start().await;
    let v1 = Route::ok(b"payload".to_vec()).header("Cache-Control", "max-age=0").header("ETag", "\"e\"").header("X-Build", "1");
    up.route("/doc", v1.clone().revalidates());
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    assert_eq!(get(proxy.addr, "/doc").await.header("x-build"), Some("1"));
    // Same entity (same ETag), new metadata: the 304 carries it, the stored body stays.
    up.route("/doc", v1.header("X-Build", "2").header("Cache-Control", "max-age=3600").revalidates());
    let r = get(proxy.addr, "/doc").await;
    assert_eq!((r.cache(), r.body.as_slice(), r.header("x-build")), ("revalidated", &b"payload"[..], Some("2")));
    let r = get(proxy.addr, "/doc").await;
    assert_eq!((r.cache(), r.header("x-build")), ("hit", Some("2")), "fresh again by the 304's Cache-Control");
    assert_eq!(up.hits("/doc"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_proxy_revalidate_and_s_maxage_forbid_stale_copies_on_errors() {
    let up = Upstream::start().await;
    let cases = [("/plain", "max-age=0"), ("/mr", "max-age=0, must-revalidate"), ("/pr", "max-age=0, proxy-revalidate"), ("/sm", "s-maxage=0")];
    for (p, cc) in cases {
        up.route(p, Route::ok(p.as_bytes().to_vec()).header("Cache-Control", cc).header("ETag", "\"x\""));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    for (p, _) in cases {
        assert_eq!(get(proxy.addr, p).await.cache(), "miss");
    }
    up.stop();
    let r = get(proxy.addr, "/plain").await;
    assert_eq!((r.status, r.cache()), (200, "stale"), "nothing forbids it: served stale");
    // RFC 9111 §5.2.2.2 (and §5.2.2.8, §5.2.2.10 for shared caches): 504 when the upstream
    // cannot be reached.
    for (p, cc) in &cases[1..] {
        let r = get(proxy.addr, p).await;
        assert_eq!(r.status, 504, "{cc}: the error, never a stale copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_maxage_takes_precedence_over_max_age() {
    let up = Upstream::start().await;
    up.route("/s", Route::ok(b"s".to_vec()).header("Cache-Control", "max-age=0, s-maxage=3600"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/s").await;
    assert_eq!(get(proxy.addr, "/s").await.cache(), "hit");
    assert_eq!(up.hits("/s"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_age_counts_against_freshness_and_is_carried_forward() {
    let up = Upstream::start().await;
    up.route("/aged-out", Route::ok(b"a".to_vec()).header("Cache-Control", "max-age=60").header("Age", "100").header("ETag", "\"a\""));
    up.route("/aged", Route::ok(b"b".to_vec()).header("Cache-Control", "max-age=3600").header("Age", "100"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/aged-out").await;
    assert_ne!(get(proxy.addr, "/aged-out").await.cache(), "hit", "100 s old with a 60 s lifetime is stale on arrival");
    assert_eq!(up.hits("/aged-out"), 2);
    get(proxy.addr, "/aged").await;
    let r = get(proxy.addr, "/aged").await;
    assert_eq!(r.cache(), "hit");
    let age: u64 = r.header("age").expect("Age on a hit").parse().unwrap();
    assert!(age >= 100, "Age {age} includes the upstream's 100 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_is_honoured_relative_to_date() {
    let up = Upstream::start().await;
    let now = std::time::SystemTime::now();
    let fmt = |t: std::time::SystemTime| httpdate::fmt_http_date(t);
    let hour = std::time::Duration::from_secs(3600);
    up.route("/future", bare("f").header("Date", &fmt(now)).header("Expires", &fmt(now + hour)));
    up.route("/past", bare("p").header("Date", &fmt(now)).header("Expires", &fmt(now - hour)).header("ETag", "\"p\""));
    up.route("/invalid", bare("i").header("Expires", "0").header("ETag", "\"i\""));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    for p in ["/future", "/past", "/invalid"] {
        get(proxy.addr, p).await;
    }
    assert_eq!(get(proxy.addr, "/future").await.cache(), "hit");
    assert_ne!(get(proxy.addr, "/past").await.cache(), "hit");
    assert_ne!(get(proxy.addr, "/invalid").await.cache(), "hit", "an invalid Expires means already expired");
    assert_eq!((up.hits("/future"), up.hits("/past"), up.hits("/invalid")), (1, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_no_cache_and_max_age_make_the_proxy_validate_first() {
    let up = Upstream::start().await;
    up.route("/f", Route::ok(b"f".to_vec()).header("ETag", "\"f\"").revalidates());
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/f").await;
    assert_eq!(get(proxy.addr, "/f").await.cache(), "hit");
    assert_eq!(get_with(&proxy, "/f", &[("Cache-Control", "max-age=3600")]).await.cache(), "hit", "young enough");
    assert_eq!(up.hits("/f"), 1);
    for cc in ["no-cache", "max-age=0", "min-fresh=7200"] {
        let r = get_with(&proxy, "/f", &[("Cache-Control", cc)]).await;
        assert_eq!((r.cache(), r.body.as_slice()), ("revalidated", &b"f"[..]), "{cc}");
    }
    let seen = up.requests("/f");
    assert_eq!(seen.len(), 4);
    assert!(seen[1..].iter().all(|r| r.header("if-none-match") == Some("\"f\"")), "conditional revalidations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_max_stale_accepts_a_stale_copy_unless_the_origin_forbids_it() {
    let up = Upstream::start().await;
    up.route("/st", Route::ok(b"st".to_vec()).header("Cache-Control", "max-age=0").header("ETag", "\"s\""));
    up.route("/mr", Route::ok(b"mr".to_vec()).header("Cache-Control", "max-age=0, must-revalidate").header("ETag", "\"m\""));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/st").await;
    get(proxy.addr, "/mr").await;
    let r = get_with(&proxy, "/st", &[("Cache-Control", "max-stale")]).await;
    assert_eq!((r.cache(), r.body.as_slice()), ("stale", &b"st"[..]));
    assert_eq!(up.hits("/st"), 1, "answered without asking the upstream");
    assert_ne!(get_with(&proxy, "/st", &[("Cache-Control", "max-stale=3600")]).await.cache(), "miss");
    assert_eq!(up.hits("/st"), 1);
    get_with(&proxy, "/mr", &[("Cache-Control", "max-stale")]).await;
    assert_eq!(up.hits("/mr"), 2, "must-revalidate beats max-stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_answers_from_cache_or_504_without_contacting_the_upstream() {
    let up = Upstream::start().await;
    up.route("/o", Route::ok(b"o".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    let oic = [("Cache-Control", "only-if-cached")];
    assert_eq!(get_with(&proxy, "/o", &oic).await.status, 504);
    assert_eq!(up.hits("/o"), 0);
    get(proxy.addr, "/o").await;
    let r = get_with(&proxy, "/o", &oic).await;
    assert_eq!((r.status, r.cache()), (200, "hit"));
    assert_eq!(up.hits("/o"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_no_store_keeps_the_response_out_of_the_cache() {
    let up = Upstream::start().await;
    up.route("/n", Route::ok(b"n".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    assert_eq!(get_with(&proxy, "/n", &[("Cache-Control", "no-store")]).await.body, b"n");
    assert_eq!(get(proxy.addr, "/n").await.cache(), "miss", "nothing was stored");
    assert_eq!(get(proxy.addr, "/n").await.cache(), "hit");
    assert_eq!(up.hits("/n"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_can_ignore_request_directives() {
    let up = Upstream::start().await;
    up.route("/i", Route::ok(b"i".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&up, dir.path(), "honor_request_directives = false");
    get(proxy.addr, "/i").await;
    for cc in ["no-cache", "max-age=0"] {
        assert_eq!(get_with(&proxy, "/i", &[("Cache-Control", cc)]).await.cache(), "hit", "{cc}");
    }
    assert_eq!(up.hits("/i"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_conditional_request_is_answered_304_from_cache() {
    let up = Upstream::start().await;
    up.route("/c", Route::ok(b"cached body".to_vec()).header("ETag", "\"c1\""));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/c").await;
    let r = get_with(&proxy, "/c", &[("If-None-Match", "\"c1\"")]).await;
    assert_eq!((r.status, r.cache(), r.body.len()), (304, "hit", 0));
    let r = get_with(&proxy, "/c", &[("If-None-Match", "\"other\"")]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"cached body"[..]));
    assert_eq!(up.hits("/c"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_ttl_replaces_the_upstreams_freshness_on_metadata_paths_only() {
    let up = Upstream::start().await;
    for p in ["/index/pkg", "/files/pkg"] {
        up.route(p, Route::ok(p.as_bytes().to_vec()).header("Cache-Control", "max-age=0").header("ETag", "\"i\""));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&up, dir.path(), "metadata = [\"/index/**\"]\nmetadata_ttl = \"1h\"");
    for p in ["/index/pkg", "/files/pkg"] {
        get(proxy.addr, p).await;
    }
    assert_eq!(get(proxy.addr, "/index/pkg").await.cache(), "hit", "fresh for metadata_ttl");
    assert_ne!(get(proxy.addr, "/files/pkg").await.cache(), "hit", "other paths follow the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_metadata_is_served_at_once_while_one_background_request_refreshes_it() {
    let up = Upstream::start().await;
    up.route("/index/pkg", Route::ok(b"v1".to_vec()).header("Cache-Control", "max-age=0").header("ETag", "\"1\""));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&up, dir.path(), "metadata = [\"/index/**\"]\nstale_while_revalidate = \"10m\"");
    assert_eq!(get(proxy.addr, "/index/pkg").await.cache(), "miss");

    // The upstream now has v2 but will not answer until the gate opens.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    up.route("/index/pkg", Route::ok(b"v2".to_vec()).header("Cache-Control", "max-age=3600").header("ETag", "\"2\"").hold_head(gate.clone()));
    let bounded = |f| tokio::time::timeout(std::time::Duration::from_secs(30), f);
    for _ in 0..3 {
        let r = bounded(get(proxy.addr, "/index/pkg")).await.expect("a stale answer must not wait for the refresh");
        assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "stale", &b"v1"[..]));
    }
    gate.add_permits(1);
    proxy.wait_for_metric("hangar_background_refreshes_total", &[("repository", "r")], 1.0).await;
    let r = get(proxy.addr, "/index/pkg").await;
    assert_eq!((r.cache(), r.body.as_slice()), ("hit", &b"v2"[..]));
    assert_eq!(up.hits("/index/pkg"), 2, "one background refresh for three stale answers");
    assert_eq!(proxy.metric("hangar_requests_total", &[("repository", "r")]).await, 5.0, "the refresh is not counted as a client request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_modified_alone_gives_heuristic_freshness() {
    let up = Upstream::start().await;
    let day_ago = httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(86400));
    up.route("/lm", bare("lm").header("Last-Modified", &day_ago));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path());
    get(proxy.addr, "/lm").await;
    assert_eq!(get(proxy.addr, "/lm").await.cache(), "hit", "fresh for 10% of a day");
    assert_eq!(up.hits("/lm"), 1);
}
