//! Headers that only Hangar's own parts may send (`x-hangar-*`): a client that sends them is
//! answered as any client, and they never reach an upstream.

use hangar_e2e::{http, pattern, Proxy, Route, Upstream};

#[tokio::test]
async fn a_client_cannot_pose_as_the_proxys_own_loopback_read_or_pass_internal_headers_upstream() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.route("/pkg/a.bin", Route::pattern(7, 4096));
    let proxy = Proxy::builder(&root.path().join("p")).upstream("/", &up.url()).start();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // What the proxy's read-back of its own cache sent before hops were signed (it made the
    // proxy answer 504 for anything uncached), and a signed-looking claim with a made-up proof.
    let forged_proof = format!("v1 loopback {now} {}", "0".repeat(64));
    let forged = [("X-Hangar-Only-If-Cached", "1"), ("x-hangar-hop", forged_proof.as_str()), ("x-hangar-sha256", "00"), ("X-Hangar-Anything", "x")];
    let r = http(proxy.addr, "GET", "/pkg/a.bin", &forged).await.unwrap().collect().await;
    assert_eq!(r.status, 200, "fetched as for any client: {}", proxy.stderr());
    assert!(r.body == pattern(7, 4096));
    let seen = up.requests("/pkg/a.bin");
    assert_eq!(seen.len(), 1);
    for (name, _) in forged {
        assert!(seen[0].header(name).is_none(), "{name} reached the upstream");
    }
    // And a hit is a hit: the forged headers change nothing about the cached answer either.
    let again = http(proxy.addr, "GET", "/pkg/a.bin", &forged).await.unwrap().collect().await;
    assert_eq!((again.status, again.cache()), (200, "hit"));
    assert_eq!(up.hits("/pkg/a.bin"), 1);
}
