//! The proxy core as a user and an operator see it: bytes, status codes, headers, metrics.

use std::sync::Arc;
use std::time::Duration;

use hangar_e2e::{get, http, pattern, pattern_byte, Proxy, Route, Upstream};
use tokio::sync::Semaphore;

/// Guards against a hang turning into a stuck CI job; never used to wait for a condition.
const GUARD: Duration = Duration::from_secs(120);

fn cache_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_fetches_upstream_once() {
    let up = Upstream::start().await;
    up.route("/a.txt", Route::ok(b"hello hangar\n".to_vec()));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();

    let first = get(proxy.addr, "/a.txt").await;
    assert_eq!((first.status, first.cache()), (200, "miss"));
    assert_eq!(first.body, b"hello hangar\n");
    let second = get(proxy.addr, "/a.txt").await;
    assert_eq!((second.status, second.cache()), (200, "hit"));
    assert_eq!(second.body, b"hello hangar\n");
    assert_eq!(up.hits("/a.txt"), 1, "the hit must not reach the upstream");

    assert_eq!(proxy.metric("hangar_cache_results_total", &[("result", "hit")]).await, 1.0);
    assert_eq!(proxy.metric("hangar_cache_results_total", &[("result", "miss")]).await, 1.0);
    assert_eq!(proxy.metric("hangar_requests_total", &[("method", "GET"), ("status", "2xx")]).await, 2.0);
    assert!(proxy.metric("hangar_bytes_served_total", &[]).await >= 26.0);
    assert!(proxy.metric("hangar_upstream_response_seconds_count", &[]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_range_are_answered_from_cache() {
    let up = Upstream::start().await;
    let small = pattern(1, 1000);
    let large = pattern(2, 3 << 20); // over the memory tier's object limit: served from disk
    up.route("/small", Route::ok(small.clone()));
    up.route("/large", Route::pattern(2, 3 << 20));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();

    // Range on a miss streams the requested slice.
    let r = http(proxy.addr, "GET", "/large", &[("Range", "bytes=100-199")]).await.unwrap().collect().await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &large[100..200]);
    assert_eq!(up.hits("/large"), 1);

    for (path, body) in [("/small", &small), ("/large", &large)] {
        let full = get(proxy.addr, path).await;
        assert_eq!(&full.body, body);
        let head = http(proxy.addr, "HEAD", path, &[]).await.unwrap().collect().await;
        assert_eq!((head.status, head.cache()), (200, "hit"));
        assert_eq!(head.header("content-length"), Some(body.len().to_string().as_str()));
        assert!(head.body.is_empty());
        let r = http(proxy.addr, "GET", path, &[("Range", "bytes=10-19")]).await.unwrap().collect().await;
        assert_eq!((r.status, r.cache()), (206, "hit"));
        assert_eq!(r.body, &body[10..20]);
        assert_eq!(r.header("content-range"), Some(format!("bytes 10-19/{}", body.len()).as_str()));
        let tail = http(proxy.addr, "GET", path, &[("Range", "bytes=-5")]).await.unwrap().collect().await;
        assert_eq!(tail.body, &body[body.len() - 5..]);
    }
    assert_eq!(up.hits("/small"), 1);
    assert_eq!(up.hits("/large"), 1, "HEAD and Range after the fill are all hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_make_one_upstream_request_and_stream_early() {
    let up = Upstream::start().await;
    let len: u64 = 4 << 20;
    let gate = Arc::new(Semaphore::new(0));
    // The upstream sends the first 256 KiB, then waits until every client has bytes in hand.
    up.route("/blob", Route::pattern(7, len).hold_at(256 * 1024, gate.clone()));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();

    let (first_bytes_tx, mut first_bytes_rx) = tokio::sync::mpsc::channel::<()>(64);
    let mut clients = Vec::new();
    for _ in 0..50 {
        let tx = first_bytes_tx.clone();
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut resp = http(addr, "GET", "/blob", &[]).await.expect("response head");
            assert_eq!(resp.status, 200);
            let mut body = Vec::with_capacity(len as usize);
            let first = resp.chunk().await.expect("read").expect("first bytes");
            body.extend_from_slice(&first);
            tx.send(()).await.unwrap();
            while let Some(c) = resp.chunk().await.expect("read") {
                body.extend_from_slice(&c);
            }
            body
        }));
    }
    drop(first_bytes_tx);
    tokio::time::timeout(GUARD, async {
        for _ in 0..50 {
            first_bytes_rx.recv().await.expect("a client got its first bytes");
        }
    })
    .await
    .expect("all 50 clients received bytes while the upstream was still holding the body");
    assert_eq!(up.hits("/blob"), 1);
    gate.add_permits(1);
    let expected = pattern(7, len);
    for c in clients {
        let body = tokio::time::timeout(GUARD, c).await.expect("client finished").expect("client ok");
        assert!(body == expected, "every client gets the identical, complete body");
    }
    assert_eq!(up.hits("/blob"), 1, "exactly one upstream request for 50 concurrent misses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_body_is_not_cached_and_the_client_sees_an_error() {
    let up = Upstream::start().await;
    let gate = Arc::new(Semaphore::new(0));
    up.route("/cut", Route::pattern(3, 1 << 20).hold_at(64 * 1024, gate.clone()).truncate_at(512 * 1024));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();

    let mut a = http(proxy.addr, "GET", "/cut", &[]).await.unwrap();
    a.chunk().await.unwrap().expect("first bytes of the fill");
    // A second client joins the fill in progress.
    let mut b = http(proxy.addr, "GET", "/cut", &[]).await.unwrap();
    b.chunk().await.unwrap().expect("joined the fill");
    gate.add_permits(1);
    for resp in [a, b] {
        let (received, truncated) = tokio::time::timeout(GUARD, resp.drain(|_, _| {})).await.unwrap();
        assert!(truncated, "a cut-short body must reach the client as an error, got {received} bytes and a clean end");
    }
    assert_eq!(up.hits("/cut"), 1);
    up.route("/cut", Route::pattern(3, 1 << 20));
    let again = get(proxy.addr, "/cut").await;
    assert_eq!(again.cache(), "miss", "the truncated body was not cached");
    assert_eq!(again.body, pattern(3, 1 << 20));
    assert_eq!(up.hits("/cut"), 2);
    assert!(proxy.metric("hangar_cache_abandoned_fills_total", &[]).await >= 1.0);
    let tmp = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "no temp file left behind");
}

/// pingora issue #932: a reader of an abandoned fill must see an error. With chunked framing a
/// clean end of body would be indistinguishable from a complete (but short) object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_chunked_fill_is_an_error_to_every_reader_not_a_short_object() {
    let up = Upstream::start().await;
    let gate = Arc::new(Semaphore::new(0));
    up.route("/chunky", Route::pattern(4, 1 << 20).chunked().hold_at(128 * 1024, gate.clone()).truncate_at(600 * 1024));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();

    // Both response heads arrive while the upstream holds the body: the fill is in progress
    // and the second request is reading it. Both are streamed what the upstream has sent so
    // far before the upstream goes on (and cuts): once it fails, pingora ends the writer's
    // response where it stands, so this is the only point at which "streamed, not held back
    // until complete" can be seen without a race.
    let mut writer = http(proxy.addr, "GET", "/chunky", &[]).await.unwrap();
    assert!(writer.is_chunked());
    let mut joined = http(proxy.addr, "GET", "/chunky", &[]).await.unwrap();
    assert_eq!(joined.header("x-hangar-cache"), Some("hit"), "joined the fill in progress");
    for (who, resp) in [("writer", &mut writer), ("joined reader", &mut joined)] {
        let streamed = tokio::time::timeout(GUARD, resp.read_ahead(128 * 1024)).await.unwrap();
        streamed.unwrap_or_else(|e| panic!("{who} is streamed the bytes sent before the upstream paused: {e}"));
    }
    gate.add_permits(1);
    for (who, resp) in [("writer", writer), ("joined reader", joined)] {
        let r = tokio::time::timeout(GUARD, resp.collect()).await.unwrap();
        assert!(r.truncated, "{who}: the cut body ended with a terminating chunk ({} bytes), as if complete", r.body.len());
        assert!(r.body.len() >= 128 * 1024, "{who} kept the bytes sent before the cut (got {})", r.body.len());
        assert!(r.body[..] == pattern(4, r.body.len() as u64)[..]);
    }
    assert_eq!(up.hits("/chunky"), 1);
    up.route("/chunky", Route::pattern(4, 1 << 20).chunked());
    let full = get(proxy.addr, "/chunky").await;
    assert_eq!(full.cache(), "miss", "nothing was cached from the cut fill");
    let full = http(proxy.addr, "GET", "/chunky", &[]).await.unwrap().collect().await;
    assert!(!full.truncated);
    assert!(full.body == pattern(4, 1 << 20));
    assert_eq!(full.cache(), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budget_holds_under_a_stream_of_distinct_objects() {
    let up = Upstream::start().await;
    for i in 0..40u8 {
        up.route(&format!("/o{i}"), Route::pattern(i, 100 * 1024));
    }
    let dir = cache_dir();
    let budget = 1_000_000u64;
    let proxy = Proxy::builder(dir.path())
        .config(&format!(
            "[cache]\ndisk_bytes = {budget}\nmemory_bytes = \"256KiB\"\nmemory_max_object_bytes = \"128KiB\"\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
            up.url()
        ))
        .start();
    for i in 0..40u8 {
        let r = get(proxy.addr, &format!("/o{i}")).await;
        assert_eq!(r.body, pattern(i, 100 * 1024));
    }
    let disk_bytes = proxy.metric("hangar_cache_tier_bytes", &[("tier", "disk")]).await;
    assert!(disk_bytes <= budget as f64, "disk tier holds {disk_bytes} bytes over its {budget} budget");
    assert!(disk_bytes > 0.0);
    assert!(proxy.metric("hangar_cache_evictions_total", &[("tier", "disk")]).await >= 30.0);
    let memory_bytes = proxy.metric("hangar_cache_tier_bytes", &[("tier", "memory")]).await;
    assert!(memory_bytes <= 256.0 * 1024.0, "memory tier holds {memory_bytes}");
    // What is on disk agrees with the accounting (bodies are the bulk of it).
    let mut on_disk = 0u64;
    for shard in std::fs::read_dir(dir.path().join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            on_disk += f.metadata().unwrap().len();
        }
    }
    assert!(on_disk <= budget + 64 * 1024, "{on_disk} bytes in the cache dir");
    // The most recent object is still a hit; the first was evicted.
    assert_eq!(get(proxy.addr, "/o39").await.cache(), "hit");
    assert_eq!(get(proxy.addr, "/o0").await.cache(), "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_write_never_serves_the_partial_object() {
    let up = Upstream::start().await;
    up.route("/done1", Route::pattern(1, 200 * 1024));
    up.route("/done2", Route::pattern(2, 2 << 20));
    let gate = Arc::new(Semaphore::new(0));
    up.route("/big", Route::pattern(9, 8 << 20).hold_at(3 << 20, gate.clone()));
    let dir = cache_dir();
    let mut proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    assert_eq!(get(proxy.addr, "/done1").await.cache(), "miss");
    assert_eq!(get(proxy.addr, "/done2").await.cache(), "miss");

    let mut partial = http(proxy.addr, "GET", "/big", &[]).await.unwrap();
    let mut got = 0usize;
    while got < 1 << 20 {
        got += partial.chunk().await.unwrap().expect("bytes").len();
    }
    proxy.kill9();
    let (_, truncated) = partial.drain(|_, _| {}).await;
    assert!(truncated);
    gate.add_permits(1);
    up.route("/big", Route::pattern(9, 8 << 20));

    proxy.restart();
    let big = get(proxy.addr, "/big").await;
    assert_eq!(big.cache(), "miss", "the partial object must not be served after a crash");
    assert!(big.body == pattern(9, 8 << 20));
    assert_eq!(up.hits("/big"), 2);
    let d1 = get(proxy.addr, "/done1").await;
    let d2 = get(proxy.addr, "/done2").await;
    assert_eq!((d1.cache(), d2.cache()), ("hit", "hit"), "entries completed before the kill survive it");
    assert_eq!(d1.body, pattern(1, 200 * 1024));
    assert!(d2.body == pattern(2, 2 << 20));
    assert_eq!((up.hits("/done1"), up.hits("/done2")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_the_eviction_order() {
    let up = Upstream::start().await;
    for name in ["a", "b", "c", "d"] {
        up.route(&format!("/{name}"), Route::pattern(name.as_bytes()[0], 300 * 1024));
    }
    let dir = cache_dir();
    // Room for three objects; the memory tier is off so every hit touches the disk LRU alone.
    let mut proxy = Proxy::builder(dir.path())
        .config(&format!(
            "[cache]\ndisk_bytes = 1000000\nmemory_bytes = 0\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
            up.url()
        ))
        .start();
    for p in ["/a", "/b", "/c"] {
        get(proxy.addr, p).await;
    }
    assert_eq!(get(proxy.addr, "/a").await.cache(), "hit"); // b is now least recently used
    proxy.terminate();
    proxy.restart();
    assert_eq!(get(proxy.addr, "/d").await.cache(), "miss"); // evicts one object
    assert_eq!(get(proxy.addr, "/a").await.cache(), "hit", "recently used survives the restart");
    assert_eq!(get(proxy.addr, "/c").await.cache(), "hit");
    assert_eq!(get(proxy.addr, "/b").await.cache(), "miss", "least recently used before the restart goes first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_object_streams_in_bounded_memory() {
    let up = Upstream::start().await;
    let len: u64 = 1 << 30;
    up.route("/huge", Route::pattern(5, len));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path())
        .config(&format!(
            "[cache]\ndisk_bytes = \"3GiB\"\nfsync = false\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
            up.url()
        ))
        .start();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let resp = http(addr, "GET", "/huge", &[]).await.unwrap();
            let mut bad = 0u64;
            let (n, truncated) = resp
                .drain(|off, c| {
                    for (j, b) in c.iter().enumerate() {
                        if *b != pattern_byte(5, off + j as u64) {
                            bad += 1;
                        }
                    }
                })
                .await;
            (n, truncated, bad)
        }));
    }
    for c in clients {
        let (n, truncated, bad) = tokio::time::timeout(GUARD * 3, c).await.unwrap().unwrap();
        assert_eq!((n, truncated, bad), (len, false, 0));
    }
    // And once more from cache.
    let (n, truncated) = http(proxy.addr, "GET", "/huge", &[]).await.unwrap().drain(|_, _| {}).await;
    assert_eq!((n, truncated), (len, false));
    assert_eq!(up.hits("/huge"), 1);
    let peak = proxy.peak_rss();
    assert!(peak < 200 << 20, "peak RSS {} MiB while serving a 1 GiB object", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_and_cached_under_the_original_url() {
    let up = Upstream::start().await;
    let cdn = Upstream::start().await;
    // The upstream asks for the repository's configured credentials, then redirects.
    let redirect = Route::ok(Vec::new()).status(302).header("Location", &format!("{}/signed/abc?sig=1", cdn.url())).header("Cache-Control", "no-store");
    up.route("/release/v1.tar.gz", Route::ok(Vec::new()).status(401).header("WWW-Authenticate", "Basic realm=\"up\"").when_header("authorization", "Basic dTpzZWNyZXQ=", redirect));
    cdn.route("/signed/abc", Route::ok(b"asset bytes".to_vec()));
    up.route("/moved", Route::ok(Vec::new()).status(301).header("Location", "/here"));
    up.route("/here", Route::ok(b"same host".to_vec()));
    let dir = cache_dir();
    // The "CDN" is on loopback here, which redirects may only reach when allowed.
    let config = format!("[[repository]]\nname = \"root\"\nprefix = \"/\"\nupstream = \"{}\"\nallow_private_redirects = true\ncredentials = {{ username = \"u\", password = \"secret\" }}\n", up.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();

    let r = http(proxy.addr, "GET", "/release/v1.tar.gz", &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"asset bytes"[..]));
    assert!(up.requests("/release/v1.tar.gz").iter().any(|q| q.header("authorization") == Some("Basic dTpzZWNyZXQ=")), "the upstream got its credentials");
    assert_eq!(cdn.requests("/signed/abc")[0].header("authorization"), None, "credentials must not follow a redirect to another host");

    let r = get(proxy.addr, "/moved").await;
    assert_eq!((r.status, r.body.as_slice(), r.cache()), (200, &b"same host"[..], "miss"));
    let r = get(proxy.addr, "/moved").await;
    assert_eq!((r.body.as_slice(), r.cache()), (&b"same host"[..], "hit"));
    assert_eq!((up.hits("/moved"), up.hits("/here")), (1, 1));
    assert_eq!(proxy.metric("hangar_upstream_redirects_total", &[]).await, 2.0);

    up.route("/loop", Route::ok(Vec::new()).status(302).header("Location", "/loop"));
    let r = get(proxy.addr, "/loop").await;
    assert_eq!(r.status, 502, "a redirect loop ends in a clear error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_clear_errors() {
    let up = Upstream::start().await;
    up.route("/slow", Route::ok(b"late".to_vec()).delay(Duration::from_secs(3)));
    up.route("/broken", Route::ok(b"oops".to_vec()).status(500).header("Cache-Control", "no-store"));
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path())
        .config(&format!(
            "[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.timeouts]\nread = \"1s\"\n",
            up.url()
        ))
        .start();
    let slow = get(proxy.addr, "/slow").await;
    assert!(matches!(slow.status, 502 | 504), "read timeout -> gateway error, got {}", slow.status);
    assert!(slow.header("x-hangar-cache").is_some());
    let broken = get(proxy.addr, "/broken").await;
    assert_eq!((broken.status, broken.body.as_slice()), (500, &b"oops"[..]));
    assert_eq!(get(proxy.addr, "/broken").await.cache(), "miss", "errors are not cached");
    assert_eq!(up.hits("/broken"), 2);
    up.stop();
    drop(up);
    let refused = get(proxy.addr, "/anything").await;
    assert_eq!(refused.status, 502);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert!(proxy.metric("hangar_upstream_errors_total", &[]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_head_during_a_fill_are_answered_from_the_partial_object() {
    let up = Upstream::start().await;
    let len: u64 = 6 << 20;
    let held_at: u64 = 3 << 20;
    let gate = Arc::new(Semaphore::new(0));
    up.route("/wheel", Route::pattern(5, len).hold_at(held_at, gate.clone()).serves_ranges());
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    let body = pattern(5, len);

    // The client that causes the fill reads until the upstream holds: the fill has passed
    // every byte before `held_at`, and none after it.
    let mut filler = http(proxy.addr, "GET", "/wheel", &[]).await.expect("filler head");
    assert_eq!(filler.status, 200);
    let mut filled = Vec::new();
    tokio::time::timeout(GUARD, async {
        while (filled.len() as u64) < held_at {
            filled.extend_from_slice(&filler.chunk().await.expect("read").expect("more bytes before the hold"));
        }
    })
    .await
    .expect("the filler got the bytes before the hold");

    // Ranges the fill has passed: 206 with exactly those bytes, while the upstream still holds
    // (a whole-body 200 could not finish before the gate opens).
    for (first, last) in [(100u64, 199u64), (1 << 20, (2 << 20) - 1), (held_at - 10, held_at - 1)] {
        let head = tokio::time::timeout(GUARD, http(proxy.addr, "GET", "/wheel", &[("Range", &format!("bytes={first}-{last}"))]))
            .await
            .expect("a passed range is answered during the fill")
            .unwrap();
        // Before the change this was a 200 whose whole body could not finish while the
        // upstream held: fail on the status, not on the guard.
        assert_eq!(head.status, 206, "range {first}-{last} during the fill");
        let r = tokio::time::timeout(GUARD, head.collect()).await.expect("the range's bytes");
        assert_eq!(r.header("content-range"), Some(format!("bytes {first}-{last}/{len}").as_str()));
        assert!(r.body == body[first as usize..=last as usize], "range {first}-{last}: the right bytes");
    }
    let head = http(proxy.addr, "HEAD", "/wheel", &[]).await.unwrap().collect().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(len.to_string().as_str()));
    assert!(head.body.is_empty());

    // Ranges far past the fill (a zip's directory at the end, as uv reads a wheel's) are asked
    // of the upstream as ranges: answered while the fill is still held, not after it.
    for (range, from) in [("bytes=-100".to_string(), len - 100), (format!("bytes={}-{}", len - 1000, len - 1), len - 1000)] {
        let r = tokio::time::timeout(GUARD, async { http(proxy.addr, "GET", "/wheel", &[("Range", &range)]).await.unwrap().collect().await })
            .await
            .expect("a range far ahead of the fill is answered while the fill waits");
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {from}-{}/{len}", len - 1).as_str()));
        assert!(r.body == body[from as usize..], "{range}: the right bytes: {} bytes, {:?}", r.body.len(), &r.body[..r.body.len().min(20)]);
    }
    let ranged: Vec<_> = up.requests("/wheel").into_iter().filter_map(|r| r.header("range").map(str::to_string)).collect();
    assert_eq!(ranged, vec!["bytes=-100".to_string(), format!("bytes={}-{}", len - 1000, len - 1)], "the upstream was asked for exactly those ranges");

    // A range the fill will soon reach waits for it, then gets its bytes (never the whole body).
    let (first, last) = (held_at + 100, held_at + 199);
    let near = {
        let addr = proxy.addr;
        tokio::spawn(async move { http(addr, "GET", "/wheel", &[("Range", &format!("bytes={first}-{last}"))]).await.unwrap().collect().await })
    };
    gate.add_permits(1);
    // The fill moves at the pace of the client that caused it: keep reading it.
    let filler = tokio::spawn(filler.collect());
    let r = tokio::time::timeout(GUARD, near).await.expect("near range finished").unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes {first}-{last}/{len}").as_str()));
    assert!(r.body == body[first as usize..=last as usize], "near range: the right bytes");
    let rest = tokio::time::timeout(GUARD, filler).await.expect("filler finished").unwrap();
    filled.extend_from_slice(&rest.body);
    assert!(filled == body, "the filling client gets the whole body");
    // Once stored, ranges are the cache's again.
    let r = http(proxy.addr, "GET", "/wheel", &[("Range", "bytes=-100")]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body == body[(len - 100) as usize..]), (206, "hit", true));
    assert_eq!(up.hits("/wheel"), 3, "the fill and the two ranges far ahead of it; passed ranges, the near one and HEAD never reach the upstream");
    // The proxy's log is written by a thread of its own: wait for the last request's line
    // before looking for what must not be there.
    proxy.wait_for_log(|l| l.contains("access") && l.contains("cache=miss")).await;
    assert!(!proxy.stderr().contains("after end of body"), "no body bytes after a HEAD's end: {}", proxy.stderr());
}

/// uv sends `HEAD` for a wheel, then ranges of its end. The `HEAD` starts a fill that its
/// connection serves until the end (the body is read for the cache): the client is told not to
/// reuse it, so its ranges arrive on another connection at once and, being far past the fill,
/// are answered by the upstream instead of waiting for the whole object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_starts_a_fill_does_not_hold_the_clients_next_request() {
    let up = Upstream::start().await;
    let len: u64 = 4 << 20;
    let gate = Arc::new(Semaphore::new(0));
    up.route("/wheel", Route::pattern(7, len).hold_at(1 << 20, gate.clone()).serves_ranges());
    let dir = cache_dir();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    let body = pattern(7, len);

    // A client that keeps connections alive, as uv does.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"HEAD /wheel HTTP/1.1\r\nHost: hangar.test\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(GUARD, async {
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read the HEAD's answer");
            assert!(n > 0, "closed before the head");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("HEAD answered during the fill");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains(&format!("content-length: {len}")), "{head}");
    assert!(head.contains("connection: close"), "the connection stays busy with the fill: not to be reused: {head}");
    let r = tokio::time::timeout(GUARD, async { http(proxy.addr, "GET", "/wheel", &[("Range", "bytes=-100")]).await.unwrap().collect().await })
        .await
        .expect("the next request is answered while the fill is held");
    assert_eq!((r.status, r.body == body[(len - 100) as usize..]), (206, true));

    // The fill goes on once the upstream does, and is stored whole.
    gate.add_permits(1);
    let mut rest = Vec::new();
    tokio::time::timeout(GUARD, conn.read_to_end(&mut rest)).await.expect("the HEAD's connection closes once the fill ends").unwrap();
    assert!(rest.is_empty(), "nothing after a HEAD's head");
    proxy.wait_for_log(|l| l.contains("access") && l.contains("method=HEAD")).await;
    let r = http(proxy.addr, "GET", "/wheel", &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body == body), (200, "hit", true));
    assert_eq!(up.hits("/wheel"), 2, "the fill and the range");
}
