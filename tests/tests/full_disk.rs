//! A full cache disk degrades to serving uncached; it never fails clients for good nor leaves a
//! bad entry behind.

use hangar_e2e::{get, http, pattern, Proxy, Route, Tmpfs, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_serves_uncached_and_never_stores_a_bad_entry() {
    let fs = Tmpfs::mount(6 << 20);
    let up = Upstream::start().await;
    up.route("/a", Route::pattern(1, 2 << 20));
    up.route("/b", Route::pattern(2, 7 << 20));
    up.route("/c", Route::pattern(3, 6 << 20).chunked());
    let cache = fs.path().join("cache");
    let proxy = Proxy::builder(&cache)
        .config(&format!(
            "[cache]\ndisk_bytes = \"100MiB\"\nmemory_bytes = 0\nmin_free_disk_bytes = 0\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
            up.url()
        ))
        .start();

    assert_eq!(get(proxy.addr, "/a").await.cache(), "miss");
    let a = get(proxy.addr, "/a").await;
    assert_eq!(a.cache(), "hit");
    assert!(a.body == pattern(1, 2 << 20));

    // Known length larger than the filesystem: passed through, complete, not stored (and
    // nothing evicted for it).
    for _ in 0..2 {
        let b = get(proxy.addr, "/b").await;
        assert_eq!((b.status, b.cache(), b.truncated), (200, "miss", false));
        assert!(b.body == pattern(2, 7 << 20));
    }
    assert_eq!(up.hits("/b"), 2);
    assert!(proxy.metric("hangar_cache_skipped_total", &[("reason", "disk_full")]).await >= 2.0);

    // Unknown length that turns out not to fit: the fill is dropped as it grows past what
    // the disk has, and the client still gets every byte; later ones pass through too.
    let c = http(proxy.addr, "GET", "/c", &[]).await.unwrap().collect().await;
    assert!(!c.truncated && c.body == pattern(3, 6 << 20), "the client gets the whole body though the fill was dropped");
    let c = get(proxy.addr, "/c").await;
    assert_eq!((c.status, c.cache(), c.truncated), (200, "miss", false));
    assert!(c.body == pattern(3, 6 << 20));

    // What was cached before is intact, and nothing partial was left on disk.
    let a = get(proxy.addr, "/a").await;
    assert_eq!(a.cache(), "hit");
    assert!(a.body == pattern(1, 2 << 20));
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    let metas: usize = std::fs::read_dir(cache.join("objects"))
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().flatten().filter(|f| f.file_name().to_string_lossy().ends_with(".meta")).count())
        .sum();
    assert_eq!(metas, 1, "only the complete object is stored");
    assert_eq!(up.hits("/a"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fills_never_cut_a_client_when_the_disk_runs_out() {
    let fs = Tmpfs::mount(64 << 20);
    let up = Upstream::start().await;
    const LEN: u64 = 20_000_000;
    for i in 0..12u8 {
        up.route(&format!("/big/{i}"), Route::pattern(i, LEN));
    }
    up.route("/chunked", Route::pattern(99, 80_000_000).chunked());
    let cache = fs.path().join("cache");
    let proxy = std::sync::Arc::new(
        Proxy::builder(&cache)
            .config(&format!(
                "[cache]\ndisk_bytes = \"1GiB\"\nmemory_bytes = 0\nmin_free_disk_bytes = \"1MiB\"\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
                up.url()
            ))
            .start(),
    );
    let mut clients = Vec::new();
    for i in 0..12u8 {
        let proxy = proxy.clone();
        clients.push(tokio::spawn(async move {
            let r = http(proxy.addr, "GET", &format!("/big/{i}"), &[]).await.unwrap().collect().await;
            (i, r.status, r.truncated, r.body == pattern(i, LEN))
        }));
    }
    for c in clients {
        let (i, status, truncated, whole) = c.await.unwrap();
        assert!(status == 200 && !truncated && whole, "client {i}: {status}, truncated {truncated}, whole {whole}");
    }
    // A body with no length that outgrows the disk as it comes.
    let r = http(proxy.addr, "GET", "/chunked", &[]).await.unwrap().collect().await;
    assert!(r.status == 200 && !r.truncated && r.body == pattern(99, 80_000_000), "the 80 MB chunked body, whole: {} {} {} bytes; {}", r.status, r.truncated, r.body.len(), proxy.stderr());
    assert!(proxy.metric("hangar_cache_skipped_total", &[("reason", "disk_full")]).await >= 1.0, "the dropped fills are counted");
    // What was stored is whole, and nothing partial is left.
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    for i in 0..12u8 {
        let r = get(proxy.addr, &format!("/big/{i}")).await;
        assert!(r.status == 200 && r.body == pattern(i, LEN), "object {i} again ({})", r.cache());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_budget_larger_than_the_filesystem_evicts_within_what_fits() {
    let fs = Tmpfs::mount(48 << 20);
    let up = Upstream::start().await;
    const LEN: u64 = 10 << 20;
    for i in 0..8u8 {
        up.route(&format!("/o/{i}"), Route::pattern(i, LEN));
    }
    let cache = fs.path().join("cache");
    let proxy = Proxy::builder(&cache)
        .config(&format!(
            "[cache]\ndisk_bytes = \"10GiB\"\nmemory_bytes = 0\nmin_free_disk_bytes = \"1MiB\"\n[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n",
            up.url()
        ))
        .start();
    proxy.wait_for_log(|l| l.contains("larger than the cache filesystem")).await;
    // Eight objects of 10 MiB through a 48 MiB filesystem: the oldest are evicted so the newest
    // are still admitted.
    for i in 0..8u8 {
        assert_eq!(get(proxy.addr, &format!("/o/{i}")).await.status, 200);
    }
    let last = get(proxy.addr, "/o/7").await;
    assert_eq!((last.cache(), last.body == pattern(7, LEN)), ("hit", true), "the newest object was admitted");
    assert!(proxy.metric("hangar_cache_evictions_total", &[("tier", "disk")]).await >= 1.0);
}
