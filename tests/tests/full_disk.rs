//! A full cache disk degrades to serving uncached; it never fails clients for good nor leaves a
//! bad entry behind.

use hangar_e2e::{get, http, pattern, Proxy, Route, Tmpfs, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_serves_uncached_and_never_stores_a_bad_entry() {
    let fs = Tmpfs::mount(6 << 20);
    let up = Upstream::start().await;
    up.route("/a", Route::pattern(1, 2 << 20));
    up.route("/b", Route::pattern(2, 5 << 20));
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

    // Known length that does not fit: passed through, complete, not stored.
    for _ in 0..2 {
        let b = get(proxy.addr, "/b").await;
        assert_eq!((b.status, b.cache(), b.truncated), (200, "miss", false));
        assert!(b.body == pattern(2, 5 << 20));
    }
    assert_eq!(up.hits("/b"), 2);
    assert!(proxy.metric("hangar_cache_skipped_total", &[("reason", "disk_full")]).await >= 2.0);

    // Unknown length that turns out not to fit: the write fails mid-body. That one response
    // is an error (its head is already sent); later ones pass through while the disk is full.
    let c = http(proxy.addr, "GET", "/c", &[]).await.unwrap().collect().await;
    assert!(c.truncated, "a failed fill must not look complete");
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
