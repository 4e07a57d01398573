//! The HTTP caching rules a shared cache must follow (RFC 9111, RFC 9213 for targeted fields)
//! for `generic` repositories, one rule per test, each against a fixture origin.

use std::time::{Duration, SystemTime};

use hangar_e2e::{get, http, Proxy, Route, Upstream};

fn proxy_for(up: &Upstream, dir: &std::path::Path, extra: &str) -> Proxy {
    let config = format!("[[repository]]\nname = \"root\"\nprefix = \"/\"\nupstream = \"{}\"\n{extra}", up.url());
    Proxy::builder(dir).config(&config).start()
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Two GETs: the second's cache result, and how often the upstream was asked.
async fn twice(proxy: &Proxy, up: &Upstream, path: &str) -> (String, usize) {
    get(proxy.addr, path).await;
    let second = get(proxy.addr, path).await;
    (second.cache().to_string(), up.hits(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_cache_control_fields_steer_hangar_over_cache_control() {
    let up = Upstream::start().await;
    let route = |cc: &str, cdn: Option<&str>, own: Option<&str>| {
        let mut r = Route::ok(b"x".to_vec()).header("Cache-Control", cc);
        if let Some(v) = cdn {
            r = r.header("CDN-Cache-Control", v);
        }
        if let Some(v) = own {
            r = r.header("Hangar-Cache-Control", v);
        }
        r
    };
    up.route("/cdn-stores", route("no-store", Some("max-age=3600"), None));
    up.route("/cdn-refuses", route("max-age=3600", Some("no-store"), None));
    up.route("/cdn-private", route("public, max-age=3600", Some("private"), None));
    up.route("/cdn-short", route("max-age=3600", Some("max-age=0"), None));
    up.route("/own-wins", route("no-store", Some("no-store"), Some("max-age=3600")));
    up.route("/custom-field", route("no-store", None, None).header("Acme-Cache", "max-age=3600"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    assert_eq!(twice(&proxy, &up, "/cdn-stores").await, ("hit".into(), 1), "CDN-Cache-Control takes precedence over Cache-Control");
    assert_eq!(twice(&proxy, &up, "/cdn-refuses").await, ("miss".into(), 2));
    assert_eq!(twice(&proxy, &up, "/cdn-private").await, ("miss".into(), 2));
    assert_eq!(twice(&proxy, &up, "/cdn-short").await.1, 2, "max-age=0 in the targeted field: not reused without asking");
    assert_eq!(twice(&proxy, &up, "/own-wins").await, ("hit".into(), 1), "Hangar-Cache-Control first");
    let dir2 = tempfile::tempdir().unwrap();
    let custom = proxy_for(&up, dir2.path(), "[repository.freshness]\ntargeted_field = \"Acme-Cache\"\n");
    get(custom.addr, "/custom-field").await;
    assert_eq!(get(custom.addr, "/custom-field").await.cache(), "hit", "the operator's own field name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_are_neither_stored_nor_forwarded() {
    let up = Upstream::start().await;
    up.route("/h", Route::ok(b"x".to_vec()).header("Connection", "X-Private-Hop").header("X-Private-Hop", "secret").header("Keep-Alive", "timeout=5").header("X-Kept", "yes"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    let req = [("Connection", "X-Client-Hop"), ("X-Client-Hop", "1"), ("Proxy-Authorization", "Basic eDp5"), ("TE", "trailers")];
    for expected in ["miss", "hit"] {
        let r = http(proxy.addr, "GET", "/h", &req).await.unwrap().collect().await;
        assert_eq!(r.cache(), expected);
        assert_eq!(r.header("x-kept"), Some("yes"));
        assert!(r.header("x-private-hop").is_none() && r.header("keep-alive").is_none(), "{:?}", r.headers);
    }
    let seen = &up.requests("/h")[0];
    for name in ["x-client-hop", "proxy-authorization", "te"] {
        assert!(seen.header(name).is_none(), "{name} was forwarded: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_updates_the_stored_date_and_the_headers_it_carries() {
    let up = Upstream::start().await;
    let old = http_date(SystemTime::now() - Duration::from_secs(3600));
    up.route("/v", Route::ok(b"body".to_vec()).header("Cache-Control", "no-cache").header("ETag", "\"e1\"").header("Date", &old).header("X-Version", "1").revalidates());
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    get(proxy.addr, "/v").await;
    let now = http_date(SystemTime::now());
    up.route("/v", Route::ok(b"body".to_vec()).header("Cache-Control", "no-cache").header("ETag", "\"e1\"").header("Date", &now).header("X-Version", "2").revalidates());
    let r = get(proxy.addr, "/v").await;
    assert_eq!((r.cache(), r.body.as_slice()), ("revalidated", &b"body"[..]));
    assert_eq!((r.header("x-version"), r.header("date")), (Some("2"), Some(now.as_str())), "{:?}", r.headers);
    // And what was stored is the updated head: a 304 that no longer names X-Version keeps it.
    up.route("/v", Route::ok(b"body".to_vec()).header("Cache-Control", "no-cache").header("ETag", "\"e1\"").revalidates());
    let again = get(proxy.addr, "/v").await;
    assert_eq!((again.cache(), again.header("x-version")), ("revalidated", Some("2")), "{:?}", again.headers);
    // A 304 that makes the copy fresh again for an hour: its Date replaces the stored one
    // (an hour old), so the copy's age starts over and the next request is a fresh hit.
    let now = http_date(SystemTime::now());
    up.route("/v", Route::ok(b"body".to_vec()).header("Cache-Control", "max-age=3600").header("ETag", "\"e1\"").header("Date", &now).header("X-Version", "3").revalidates());
    assert_eq!(get(proxy.addr, "/v").await.cache(), "revalidated");
    let hit = get(proxy.addr, "/v").await;
    let age: u64 = hit.header("age").and_then(|a| a.parse().ok()).unwrap_or(u64::MAX);
    assert_eq!((hit.cache(), hit.header("x-version")), ("hit", Some("3")), "{:?}", hit.headers);
    assert!(age < 60, "the age counts from the 304's Date: {age}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_with_a_suffix_is_invalid_and_ignored() {
    let up = Upstream::start().await;
    up.route("/suffix", Route::ok(b"x".to_vec()).header("Cache-Control", "max-age=600").header("Age", "3600abc"));
    up.route("/list", Route::ok(b"x".to_vec()).header("Cache-Control", "max-age=600").header("Age", "3600, 10"));
    up.route("/valid", Route::ok(b"x".to_vec()).header("Cache-Control", "max-age=600").header("Age", "3600"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    assert_eq!(twice(&proxy, &up, "/suffix").await, ("hit".into(), 1));
    assert_eq!(twice(&proxy, &up, "/list").await.1, 2, "a list counts its first member: stale on arrival");
    assert_eq!(twice(&proxy, &up, "/valid").await.1, 2, "a valid Age older than max-age: stale on arrival");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_every_http_date_format_and_before_1970() {
    let up = Upstream::start().await;
    let future = SystemTime::now() + Duration::from_secs(3600);
    let imf = httpdate::fmt_http_date(future);
    // RFC 850 and asctime spellings of the same instant (httpdate parses, but only writes IMF).
    let rfc850 = to_rfc850(&imf);
    let asctime = to_asctime(&imf);
    for (path, expires) in [("/imf", imf.clone()), ("/rfc850", rfc850), ("/asctime", asctime)] {
        up.route(path, Route::ok(b"x".to_vec()).without("Cache-Control").header("Expires", &expires));
    }
    up.route("/1960", Route::ok(b"old".to_vec()).without("Cache-Control").header("Expires", "Fri, 01 Jan 1960 00:00:00 GMT").header("ETag", "\"o\""));
    // A two-digit year more than 50 years ahead is the past century's (RFC 9110 5.6.7).
    up.route("/rfc850-past", Route::ok(b"old".to_vec()).without("Cache-Control").header("Expires", "Saturday, 01-Jan-77 00:00:00 GMT").header("ETag", "\"o\""));
    // An Age that puts the response's birth before 1970 is valid too: stale on arrival.
    up.route("/ancient-age", Route::ok(b"old".to_vec()).header("Cache-Control", "max-age=600").header("Age", "2000000000").header("ETag", "\"o\""));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    for path in ["/imf", "/rfc850", "/asctime"] {
        assert_eq!(twice(&proxy, &up, path).await, ("hit".into(), 1), "{path}");
    }
    let r = get(proxy.addr, "/1960").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"old"[..]), "a date before 1970 is valid: already expired");
    let again = get(proxy.addr, "/1960").await;
    assert_eq!(again.status, 200);
    assert_eq!(up.hits("/1960"), 2, "never fresh");
    for path in ["/rfc850-past", "/ancient-age"] {
        let (_, hits) = twice(&proxy, &up, path).await;
        assert_eq!(hits, 2, "{path}: already expired");
    }
    assert!(!proxy.stderr().contains("UNIX_EPOCH"), "{}", proxy.stderr());
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as `Sunday, 06-Nov-94 08:49:37 GMT`.
fn to_rfc850(imf: &str) -> String {
    let p: Vec<&str> = imf.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    let day = match p[0] {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    format!("{day}, {}-{}-{} {} GMT", p[1], p[2], &p[3][2..], p[4])
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as `Sun Nov  6 08:49:37 1994`.
fn to_asctime(imf: &str) -> String {
    let p: Vec<&str> = imf.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    format!("{} {} {:>2} {} {}", p[0], p[2], p[1].trim_start_matches('0'), p[4], p[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_404_is_revalidated_not_served() {
    let up = Upstream::start().await;
    up.route("/gone", Route::ok(b"missing".to_vec()).status(404).header("Cache-Control", "max-age=1"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    assert_eq!(get(proxy.addr, "/gone").await.status, 404);
    assert_eq!(get(proxy.addr, "/gone").await.cache(), "hit");
    // The name exists now, and the upstream is slow to say so: a stale 404 must not stand in.
    up.route("/gone", Route::ok(b"found".to_vec()).delay(Duration::from_millis(200)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(proxy.addr, "/gone").await;
        if r.cache() != "hit" {
            assert_eq!((r.status, r.body.as_slice()), (200, &b"found"[..]), "once stale, the 404 was {} instead of revalidated", r.cache());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the 404 never went stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_with_an_unreachable_upstream_is_a_504() {
    let up = Upstream::start().await;
    up.route("/m", Route::ok(b"x".to_vec()).header("Cache-Control", "max-age=0, must-revalidate").header("ETag", "\"m\""));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    assert_eq!(get(proxy.addr, "/m").await.status, 200);
    up.stop();
    let r = http(proxy.addr, "GET", "/m", &[]).await.expect("an answer, not a dropped connection").collect().await;
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert!(!r.truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_conditional_request_on_a_miss_is_forwarded() {
    let up = Upstream::start().await;
    up.route("/c", Route::ok(b"content".to_vec()).header("ETag", "\"c1\"").revalidates());
    up.route("/unquoted", Route::ok(b"content".to_vec()).header("ETag", "u1"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    let r = http(proxy.addr, "GET", "/c", &[("If-None-Match", "\"c1\"")]).await.unwrap().collect().await;
    assert_eq!(r.status, 304);
    assert_eq!(up.requests("/c")[0].header("if-none-match"), Some("\"c1\""), "the client's validator went upstream");
    // An origin's unquoted ETag is an opaque tag like any other (RFC 9110 8.8.3): a client
    // that quotes it matches it, one with another tag does not.
    get(proxy.addr, "/unquoted").await;
    let hit = http(proxy.addr, "GET", "/unquoted", &[("If-None-Match", "\"u1\"")]).await.unwrap().collect().await;
    assert_eq!((hit.status, hit.cache()), (304, "hit"));
    let other = http(proxy.addr, "GET", "/unquoted", &[("If-None-Match", "\"u\"")]).await.unwrap().collect().await;
    assert_eq!(other.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_pass_through_and_are_never_cached() {
    let up = Upstream::start().await;
    up.route("/i", Route::ok(b"final".to_vec()).interim(103, &[("Link", "</style.css>; rel=preload")]));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(b"GET /i HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 103"), "the early hints reached the client first: {text}");
    assert!(text.contains("HTTP/1.1 200") && text.ends_with("final"), "{text}");
    let hit = get(proxy.addr, "/i").await;
    assert_eq!((hit.status, hit.cache(), hit.body.as_slice()), (200, "hit", &b"final"[..]), "the final response was cached, not the 103");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_unsafe_method_is_forwarded_and_invalidates_like_post() {
    let up = Upstream::start().await;
    up.route("/r", Route::ok(b"v1".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&up, dir.path(), "");
    get(proxy.addr, "/r").await;
    assert_eq!(get(proxy.addr, "/r").await.cache(), "hit");
    let r = http(proxy.addr, "PURGEX", "/r", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await;
    assert_eq!(r.status, 200, "forwarded, not 405");
    assert_eq!(up.requests("/r").last().map(|q| q.method.clone()), Some("PURGEX".to_string()));
    assert_eq!(get(proxy.addr, "/r").await.cache(), "miss", "a successful unknown method invalidates the URL");
    let dir2 = tempfile::tempdir().unwrap();
    let strict = proxy_for(&up, dir2.path(), "methods = [\"GET\", \"HEAD\"]\n");
    assert_eq!(http(strict.addr, "PURGEX", "/r", &[]).await.unwrap().collect().await.status, 405, "unless the repository forbids it");
}
