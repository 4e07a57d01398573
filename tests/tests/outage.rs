//! Builds keep running when the upstream fails: stale copies on outages, negative caching,
//! offline mode. Entries are stored already stale (`max-age=0`), so no test waits for a TTL.

use hangar_e2e::{get, http, Proxy, Route, Upstream};

/// One repository `r` at `/` in front of `up`, with extra `[repository.*]` sections.
fn repo(up: &Upstream, sections: &str) -> String {
    format!("[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n{sections}\n", up.url())
}

fn config(up: &Upstream, freshness: &str) -> String {
    repo(up, &format!("[repository.freshness]\n{freshness}"))
}

fn stale_route(body: &str) -> Route {
    Route::ok(body.as_bytes().to_vec()).header("Cache-Control", "max-age=0").header("ETag", "\"v1\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_serves_all_cached_objects_stale() {
    let up = Upstream::start().await;
    for i in 0..100 {
        up.route(&format!("/o{i}"), stale_route(&format!("object {i}")));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).start();
    for i in 0..100 {
        assert_eq!(get(proxy.addr, &format!("/o{i}")).await.cache(), "miss");
    }
    up.stop();
    for i in 0..100 {
        let r = get(proxy.addr, &format!("/o{i}")).await;
        assert_eq!((r.status, r.cache()), (200, "stale"), "/o{i}");
        assert_eq!(r.body, format!("object {i}").as_bytes());
        assert!(r.header("age").is_some());
    }
    assert_eq!(proxy.metric("hangar_cache_results_total", &[("result", "stale")]).await, 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_rate_limits_serve_stale_but_not_found_is_not_an_outage() {
    let up = Upstream::start().await;
    for p in ["/e503", "/e429", "/gone"] {
        up.route(p, stale_route(p));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).start();
    for p in ["/e503", "/e429", "/gone"] {
        get(proxy.addr, p).await;
    }
    up.route("/e503", Route::ok(b"down".to_vec()).status(503).header("Cache-Control", "no-store"));
    up.route("/e429", Route::ok(b"slow down".to_vec()).status(429).header("Cache-Control", "no-store"));
    up.route("/gone", Route::ok(b"deleted".to_vec()).status(404).header("Cache-Control", "no-store"));
    for p in ["/e503", "/e429"] {
        let r = get(proxy.addr, p).await;
        assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "stale", p.as_bytes()), "{p}");
    }
    let r = get(proxy.addr, "/gone").await;
    assert_eq!(r.status, 404, "a 404 from the upstream is an answer, not an outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_bounds_how_old_a_copy_may_be_served() {
    let up = Upstream::start().await;
    up.route("/m", stale_route("mutable"));
    up.route("/pkg.tgz", stale_route("immutable"));
    let dir = tempfile::tempdir().unwrap();
    // No stale window for mutable paths; immutable ones have no limit.
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "max_stale = \"0s\"\nimmutable = [\"*.tgz\"]")).start();
    get(proxy.addr, "/m").await;
    assert_eq!(get(proxy.addr, "/pkg.tgz").await.cache(), "miss");
    up.stop();
    assert_eq!(get(proxy.addr, "/m").await.status, 502, "past max-stale: the error, not an old copy");
    let r = get(proxy.addr, "/pkg.tgz").await;
    assert_eq!((r.status, r.cache()), (200, "hit"), "immutable paths are fresh forever");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_cached_briefly_then_asked_again() {
    let up = Upstream::start().await;
    up.route("/missing", Route::ok(b"no such package".to_vec()).status(404).header("Cache-Control", "max-age=600"));
    up.route("/missing-short", Route::ok(b"no".to_vec()).status(404).header("Cache-Control", "max-age=0"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).start();
    assert_eq!(get(proxy.addr, "/missing").await.cache(), "miss");
    let r = get(proxy.addr, "/missing").await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (404, "hit", &b"no such package"[..]));
    assert_eq!(up.hits("/missing"), 1, "repeated lookups of a missing name do not hammer the upstream");
    // An expired negative entry goes back to the upstream: a new publish becomes visible.
    get(proxy.addr, "/missing-short").await;
    up.route("/missing-short", Route::ok(b"published".to_vec()));
    let r = get(proxy.addr, "/missing-short").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"published"[..]));

    let dir2 = tempfile::tempdir().unwrap();
    let off = Proxy::builder(dir2.path()).config(&config(&up, "negative_ttl = \"0s\"")).start();
    get(off.addr, "/missing").await;
    assert_eq!(get(off.addr, "/missing").await.cache(), "miss", "negative_ttl = 0 disables it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_serves_everything_cached_without_the_upstream() {
    let up = Upstream::start().await;
    up.route("/fresh", Route::ok(b"fresh".to_vec()));
    up.route("/old", stale_route("old"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).start();
    get(proxy.addr, "/fresh").await;
    get(proxy.addr, "/old").await;
    let seen = up.total();

    let r = http(proxy.admin, "PUT", "/offline/r", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("\"r\":true"));
    let r = get(proxy.addr, "/fresh").await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "hit", &b"fresh"[..]));
    let r = get(proxy.addr, "/old").await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "stale", &b"old"[..]));
    let r = get(proxy.addr, "/never-fetched").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(up.total(), seen, "offline: the upstream was not contacted");

    // Back online: the stale entry is refreshed from the upstream again.
    let r = http(proxy.admin, "DELETE", "/offline/r", &[hangar_e2e::ADMIN]).await.unwrap().collect().await;
    assert_eq!(r.status, 200);
    get(proxy.addr, "/old").await;
    assert_eq!(up.total(), seen + 1);
    assert_eq!(http(proxy.admin, "PUT", "/offline/nope", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_offline_from_config_never_contacts_the_upstream() {
    let up = Upstream::start().await;
    up.route("/x", Route::ok(b"x".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&format!("offline = true\n{}", config(&up, ""))).start();
    assert_eq!(get(proxy.addr, "/x").await.status, 504);
    assert_eq!(up.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_breaker_opens_nobody_waits_for_the_dead_upstream() {
    let up = Upstream::start().await;
    for i in 0..100 {
        up.route(&format!("/o{i}"), stale_route(&format!("object {i}")));
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = repo(&up, "[repository.timeouts]\nread = \"1s\"\n[repository.breaker]\nmin_requests = 3\nmin_paths = 3\ncooldown = \"1h\"");
    let proxy = Proxy::builder(dir.path()).config(&toml).start();
    for i in 0..100 {
        get(proxy.addr, &format!("/o{i}")).await;
    }
    let before = up.total();
    // The upstream now accepts requests and never answers: every attempt ends in a read timeout.
    for i in 0..100 {
        up.route(&format!("/o{i}"), stale_route("late").delay(std::time::Duration::from_secs(3600)));
    }
    for i in 0..100 {
        let r = get(proxy.addr, &format!("/o{i}")).await;
        assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "stale", format!("object {i}").as_bytes()));
    }
    assert_eq!(up.total() - before, 3, "only the attempts that opened the breaker reached the upstream");
    assert_eq!(proxy.metric("hangar_upstream_breaker_state", &[("repository", "r")]).await, 1.0);
    assert_eq!(proxy.metric("hangar_upstream_breaker_trips_total", &[("repository", "r")]).await, 1.0);
    assert_eq!(proxy.metric("hangar_upstream_errors_total", &[("kind", "breaker_open")]).await, 97.0);
    // Nothing cached and the breaker open: a clear error at once.
    let r = get(proxy.addr, "/not-cached").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.total() - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_probe_closes_the_breaker_when_the_upstream_recovers() {
    let up = Upstream::start().await;
    up.route("/a", stale_route("cached"));
    let dir = tempfile::tempdir().unwrap();
    // Two failures in a row open it (the success before them must not halve the rate).
    let toml = repo(&up, "[repository.breaker]\nmin_requests = 2\nmin_paths = 1\nfailure_rate = 1.0\ncooldown = \"0s\"");
    let proxy = Proxy::builder(dir.path()).config(&toml).start();
    get(proxy.addr, "/a").await;
    up.route("/a", Route::ok(b"down".to_vec()).status(503).header("Cache-Control", "no-store"));
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/a").await.cache(), "stale");
    }
    // Two failures opened it; with no cool-down the third request was a probe, which failed.
    assert_eq!(proxy.metric("hangar_upstream_breaker_trips_total", &[("repository", "r")]).await, 2.0);
    up.route("/a", stale_route("fresh again"));
    let r = get(proxy.addr, "/a").await;
    assert_eq!(r.body, b"fresh again");
    assert_eq!(proxy.metric("hangar_upstream_breaker_state", &[("repository", "r")]).await, 0.0, "closed");
    assert_eq!(up.hits("/a"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_one_entry_a_prefix_or_a_repository_at_once() {
    let up = Upstream::start().await;
    for p in ["/pkg/a/1", "/pkg/a/2", "/pkg/b/1", "/other"] {
        up.route(p, Route::ok(p.as_bytes().to_vec()));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).start();
    let warm = |p: &'static str| async move { get(proxy.addr, p).await.cache().to_string() };
    for p in ["/pkg/a/1", "/pkg/a/2", "/pkg/b/1", "/other"] {
        assert_eq!(warm(p).await, "miss");
        assert_eq!(warm(p).await, "hit");
    }
    let purge = |target: &'static str| async move {
        let r = http(proxy.admin, "DELETE", target, &[hangar_e2e::ADMIN]).await.unwrap().collect().await;
        (r.status, String::from_utf8_lossy(&r.body).trim().to_string())
    };
    assert_eq!(purge("/cache/r/pkg/b/1").await, (200, "{\"purged\":1}".to_string()));
    assert_eq!(warm("/pkg/b/1").await, "miss", "purged: fetched again");
    assert_eq!(warm("/pkg/a/1").await, "hit", "others untouched");

    assert_eq!(purge("/cache/r/pkg/a/*").await, (200, "{\"purged\":2}".to_string()));
    assert_eq!((warm("/pkg/a/1").await, warm("/pkg/a/2").await), ("miss".to_string(), "miss".to_string()));
    assert_eq!(warm("/other").await, "hit");

    assert_eq!(purge("/cache/r/*").await.0, 200);
    assert_eq!(warm("/other").await, "miss");
    assert_eq!(purge("/cache/r/never-cached").await, (200, "{\"purged\":0}".to_string()));
    assert_eq!(purge("/cache/nope/x").await.0, 404);
    assert_eq!(up.hits("/pkg/b/1"), 2);
    assert_eq!(up.hits("/other"), 2);
}
