//! Fresh memory-tier hits answered before pingora's cache phases (`proxy/src/request/fast_hit.rs`):
//! taken only where the answer cannot differ from the full path's, and then the same answer.
//! `hangar_cache_fast_hits_total` tells which way each request went.

use hangar_e2e::{get, http, pattern, Proxy, Response, Route, Upstream};
use sha2::Digest as _;

const FAST: &str = "hangar_cache_fast_hits_total";

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The response's fields, names lowercased, sorted; `Age` and `Date` left out (they count
/// seconds, and two requests may fall either side of one).
fn fields(r: &Response) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("age") && !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_memory_hit_is_answered_at_once_exactly_as_the_full_path_answers_it() {
    let up = Upstream::start().await;
    up.route("/a", Route::pattern(3, 10_000).header("ETag", "\"v1\"").header("X-Upstream", "kept"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    assert_eq!(get(proxy.addr, "/a").await.cache(), "miss");
    assert_eq!(proxy.metric(FAST, &[]).await, 0.0, "a miss is not a fast hit");

    let quick = get(proxy.addr, "/a").await;
    assert_eq!(proxy.metric(FAST, &[]).await, 1.0, "a plain GET of a fresh object in memory takes the shortcut");
    // A conditional that does not match goes the full way and is answered with the whole body.
    let full = http(proxy.addr, "GET", "/a", &[("If-None-Match", "\"other\"")]).await.unwrap().collect().await;
    assert_eq!(proxy.metric(FAST, &[]).await, 1.0, "a conditional request goes the full way");
    assert_eq!((quick.status, full.status, quick.cache()), (200, 200, "hit"));
    assert!(quick.body == pattern(3, 10_000) && full.body == quick.body);
    assert_eq!(fields(&quick), fields(&full), "the same fields as the full path's hit");
    assert!(quick.header("age").and_then(|a| a.parse::<u64>().ok()).is_some(), "Age on a hit (RFC 9111 §4)");
    assert_eq!(quick.header("x-upstream"), Some("kept"));

    // HEAD takes it too: the head alone, the stored length.
    let head = http(proxy.addr, "HEAD", "/a", &[]).await.unwrap().collect().await;
    assert_eq!((head.status, head.cache(), head.header("content-length"), head.body.len()), (200, "hit", Some("10000"), 0));
    assert_eq!(proxy.metric(FAST, &[]).await, 2.0);
    // Reported as the hits they are.
    assert_eq!(proxy.metric("hangar_cache_results_total", &[("repository", "root"), ("result", "hit")]).await, 3.0);
    assert_eq!(proxy.metric("hangar_requests_total", &[("repository", "root"), ("method", "HEAD")]).await, 1.0);
    assert_eq!(up.hits("/a"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_could_be_answered_differently_goes_the_full_way() {
    let up = Upstream::start().await;
    up.route("/a", Route::pattern(1, 4096).header("ETag", "\"v1\"").revalidates());
    up.route("/stale", Route::pattern(2, 4096).header("Cache-Control", "max-age=0").header("ETag", "\"s\"").revalidates());
    up.route("/varies", Route::ok(Vec::new()).echo_header("Accept").header("Vary", "Accept"));
    up.route("/big", Route::pattern(4, 300_000));
    up.route("/chunked", Route::pattern(5, 4096).chunked());
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[cache]\nmemory_max_object_bytes = \"64KiB\"\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n", up.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();
    for p in ["/a", "/stale", "/big", "/chunked"] {
        assert_eq!(get(proxy.addr, p).await.status, 200);
    }
    let r = http(proxy.addr, "GET", "/varies", &[("Accept", "text/plain")]).await.unwrap().collect().await;
    assert_eq!(r.cache(), "miss");

    // A range: 206 with those bytes.
    let r = http(proxy.addr, "GET", "/a", &[("Range", "bytes=10-19")]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (206, "hit", &pattern(1, 20)[10..]));
    // A conditional that matches: 304.
    let r = http(proxy.addr, "GET", "/a", &[("If-None-Match", "\"v1\"")]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache()), (304, "hit"));
    // The client's no-cache: validated with the upstream first.
    let r = http(proxy.addr, "GET", "/a", &[("Cache-Control", "no-cache")]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache()), (200, "revalidated"));
    assert_eq!(up.hits("/a"), 2);
    // A stored response that is no longer fresh: revalidated.
    let r = get(proxy.addr, "/stale").await;
    assert_eq!((r.status, r.cache()), (200, "revalidated"));
    // Variants are picked by the full path.
    let r = http(proxy.addr, "GET", "/varies", &[("Accept", "text/plain")]).await.unwrap().collect().await;
    assert_eq!((r.cache(), r.body.as_slice()), ("hit", &b"text/plain"[..]));
    // Over the memory tier's object limit: a disk hit.
    let r = get(proxy.addr, "/big").await;
    assert_eq!((r.cache(), r.body == pattern(4, 300_000)), ("hit", true));
    // Stored without a length: pingora's hit path frames it (chunked).
    let r = http(proxy.addr, "GET", "/chunked", &[]).await.unwrap();
    assert!(r.is_chunked() && r.header("content-length").is_none());
    let r = r.collect().await;
    assert_eq!((r.cache(), r.body == pattern(5, 4096), r.truncated), ("hit", true, false));
    assert_eq!(proxy.metric(FAST, &[]).await, 0.0, "none of these took the shortcut");

    // The plain request for the same object does, with the headers its revalidation brought.
    up.route("/a", Route::pattern(1, 4096).header("ETag", "\"v1\"").header("X-Release", "2").revalidates());
    let r = http(proxy.addr, "GET", "/a", &[("Cache-Control", "no-cache")]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.header("x-release")), (200, "revalidated", Some("2")));
    let r = get(proxy.addr, "/a").await;
    assert_eq!((r.cache(), r.header("x-release"), r.body == pattern(1, 4096)), ("hit", Some("2"), true));
    assert_eq!(proxy.metric(FAST, &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_served_at_once_only_for_the_digest_asked() {
    let up = Upstream::start().await;
    let body = b"release tarball bytes".to_vec();
    let sha = sha256_hex(&body);
    up.route("/tool.tgz", Route::ok(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={sha}")).await;
    assert_eq!((r.status, r.cache()), (200, "miss"));
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={sha}")).await;
    assert_eq!((r.status, r.cache(), r.body == body), (200, "hit", true));
    assert_eq!(proxy.metric(FAST, &[]).await, 1.0, "the copy was verified against the digest asked");
    // Another digest: not this copy. It is fetched again, and does not match.
    let wrong = "0".repeat(64);
    let r = get(proxy.addr, &format!("/tool.tgz?sha256={wrong}")).await;
    assert!(r.truncated || r.status != 200, "a body with another digest is not delivered whole as the one asked for");
    assert_eq!(proxy.metric(FAST, &[]).await, 1.0);
    assert_eq!(up.hits("/tool.tgz"), 2);
}
