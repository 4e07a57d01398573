//! A region as one cache: several hangar-proxy processes, hangar-origin (on a local directory
//! or on S3 served by moto), and Debian's redis-server, all real and on loopback.

use std::path::Path;
use std::sync::Arc;

use hangar_e2e::services::{self, Service};
use hangar_e2e::{get, pattern, Proxy, Route, Upstream};

const OBJECT_LEN: u64 = 64 * 1024;

/// What the test fleets sign their hops with.
const SECRET: &str = hangar_e2e::FLEET_SECRET;

fn object_path(i: usize) -> String {
    format!("/pkg/object-{i}.bin")
}

/// An upstream with `n` immutable objects.
async fn upstream_with(n: usize) -> Upstream {
    let up = Upstream::start().await;
    for i in 0..n {
        up.route(&object_path(i), Route::pattern(i as u8, OBJECT_LEN));
    }
    up
}

fn proxy_config(up: &Upstream, redis: Option<&Service>, origin: Option<&Service>) -> String {
    let mut c = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n",
        up.url()
    );
    if let Some(r) = redis {
        c.push_str(&format!("[fleet]\nredis = \"redis://{}/\"\nregion = \"test\"\nheartbeat = \"100ms\"\nmember_ttl = \"1s\"\nsecret = \"{SECRET}\"\n", r.addr));
    }
    if let Some(o) = origin {
        c.push_str(&format!("[origin]\nurl = \"http://{}/\"\n", o.addr));
        if redis.is_none() {
            c.push_str(&format!("[fleet]\nsecret = \"{SECRET}\"\n"));
        }
    }
    c
}

fn start_proxy(root: &Path, name: &str, config: &str) -> Proxy {
    Proxy::builder(&root.join(name)).config(config).start()
}

async fn wait_for_members(proxies: &[&Proxy], n: usize) {
    for p in proxies {
        p.wait_for_metric("hangar_fleet_members", &[], n as f64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_clients_on_three_proxies_make_one_upstream_request_per_object() {
    let root = tempfile::tempdir().unwrap();
    let redis = services::redis(root.path());
    let origin = services::origin_on_dir(root.path());
    let up = upstream_with(20).await;
    let config = proxy_config(&up, Some(&redis), Some(&origin));
    let proxies: Vec<Arc<Proxy>> = (0..3).map(|i| Arc::new(start_proxy(root.path(), &format!("p{i}"), &config))).collect();
    wait_for_members(&proxies.iter().map(|p| p.as_ref()).collect::<Vec<_>>(), 3).await;

    let mut clients = Vec::new();
    for c in 0..30usize {
        let proxy = proxies[c % 3].clone();
        clients.push(tokio::spawn(async move {
            // Each client walks the objects from its own starting point.
            for k in 0..20 {
                let i = (c + k) % 20;
                let r = get(proxy.addr, &object_path(i)).await;
                assert_eq!(r.status, 200, "client {c} object {i}");
                assert!(r.body == pattern(i as u8, OBJECT_LEN), "client {c} object {i}: wrong body");
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    for i in 0..20 {
        assert_eq!(up.hits(&object_path(i)), 1, "object {i}: one upstream request for the whole region");
    }
    let mut forwarded = 0.0;
    for p in &proxies {
        forwarded += p.metric("hangar_fleet_fetches_total", &[("result", "peer")]).await;
    }
    assert!(forwarded > 0.0, "misses went to their owners");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artefact_deleted_upstream_is_still_served_from_s3_by_a_proxy_that_never_had_it() {
    let root = tempfile::tempdir().unwrap();
    let moto = services::moto(root.path());
    let origin = services::origin_on_s3(root.path(), &moto, "hangar-test", "", "operation_timeout_secs = 5");
    let up = upstream_with(1).await;
    let config = proxy_config(&up, None, Some(&origin));
    let a = start_proxy(root.path(), "a", &config);
    let r = get(a.addr, &object_path(0)).await;
    assert_eq!((r.status, r.cache()), (200, "miss"));
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "stored")], 1.0).await;

    // The upstream deletes it.
    up.route(&object_path(0), Route::ok(b"gone".to_vec()).status(404).header("Cache-Control", "no-store"));
    let b = start_proxy(root.path(), "b", &config);
    let r = get(b.addr, &object_path(0)).await;
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(0, OBJECT_LEN), "served from S3 through origin");
    assert_eq!(up.hits(&object_path(0)), 1, "the upstream was not asked again");
    assert_eq!(b.metric("hangar_origin_fetches_total", &[("result", "hit")]).await, 1.0);

    // A proxy whose disk cache is wiped starts warm from S3 too.
    drop(a);
    std::fs::remove_dir_all(root.path().join("a")).unwrap();
    let a = start_proxy(root.path(), "a", &config);
    let r = get(a.addr, &object_path(0)).await;
    assert!(r.status == 200 && r.body == pattern(0, OBJECT_LEN));
    assert_eq!(up.hits(&object_path(0)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_proxy_fails_no_request_on_the_others() {
    let root = tempfile::tempdir().unwrap();
    let redis = services::redis(root.path());
    let up = upstream_with(30).await;
    let config = proxy_config(&up, Some(&redis), None);
    let a = Arc::new(start_proxy(root.path(), "a", &config));
    let b = Arc::new(start_proxy(root.path(), "b", &config));
    let mut c = start_proxy(root.path(), "c", &config);
    wait_for_members(&[&a, &b, &c], 3).await;
    // Warm the first ten through the fleet, so some live only on the proxy about to die.
    for i in 0..10 {
        assert_eq!(get(a.addr, &object_path(i)).await.status, 200);
    }
    c.kill9();
    // Straight away (membership still lists the dead proxy), every object from both survivors.
    for i in 0..30 {
        for p in [&a, &b] {
            let r = get(p.addr, &object_path(i)).await;
            assert_eq!(r.status, 200, "object {i} from {}", p.addr);
            assert!(r.body == pattern(i as u8, OBJECT_LEN));
        }
    }
    let unreachable = a.metric("hangar_fleet_fetches_total", &[("result", "peer_unreachable")]).await + b.metric("hangar_fleet_fetches_total", &[("result", "peer_unreachable")]).await;
    assert!(unreachable > 0.0, "some requests met the dead owner and moved on");
    for p in [&a, &b] {
        p.wait_for_metric_where("hangar_fleet_members", &[], "2 (the dead proxy left)", |v| v == 2.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_requests_keep_succeeding_and_metadata_resumes_when_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let mut redis = services::redis(root.path());
    let up = upstream_with(20).await;
    let config = proxy_config(&up, Some(&redis), None);
    let a = start_proxy(root.path(), "a", &config);
    let b = start_proxy(root.path(), "b", &config);
    wait_for_members(&[&a, &b], 2).await;
    for i in 0..5 {
        assert_eq!(get(a.addr, &object_path(i)).await.status, 200);
    }
    a.wait_for_metric("hangar_metadata_writes_total", &[("result", "written")], 1.0).await;

    redis.kill();
    for i in 5..15 {
        for p in [&a, &b] {
            let r = get(p.addr, &object_path(i)).await;
            assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i} with Redis down");
        }
    }
    let dropped = a.metric("hangar_metadata_writes_total", &[("result", "dropped_store_error")]).await + b.metric("hangar_metadata_writes_total", &[("result", "dropped_store_error")]).await;
    assert!(dropped > 0.0, "writes during the outage were dropped and counted, not queued");

    redis.restart();
    wait_for_members(&[&a, &b], 2).await;
    let written = a.metric("hangar_metadata_writes_total", &[("result", "written")]).await;
    for i in 15..20 {
        assert_eq!(get(a.addr, &object_path(i)).await.status, 200);
    }
    a.wait_for_metric("hangar_metadata_writes_total", &[("result", "written")], written + 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_unreachable_proxies_keep_serving_and_uploads_resume_when_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let mut moto = services::moto(root.path());
    let origin = services::origin_on_s3(root.path(), &moto, "hangar-test", "", "operation_timeout_secs = 5");
    let up = upstream_with(5).await;
    let config = proxy_config(&up, None, Some(&origin));
    let a = start_proxy(root.path(), "a", &config);

    moto.kill();
    for i in 0..5 {
        let r = get(a.addr, &object_path(i)).await;
        assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i} with S3 down");
    }
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "retried")], 1.0).await;
    assert_eq!(a.metric("hangar_origin_uploads_total", &[("result", "stored")]).await, 0.0);

    moto.restart();
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "stored")], 5.0).await;
    // Every object the queue accepted is in S3: a fresh proxy gets each from origin.
    for i in 0..5 {
        up.route(&object_path(i), Route::ok(b"gone".to_vec()).status(404).header("Cache-Control", "no-store"));
    }
    let fresh = start_proxy(root.path(), "fresh", &config);
    for i in 0..5 {
        let r = get(fresh.addr, &object_path(i)).await;
        assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i} from S3");
    }
}

/// `redis-cli` against the test's Redis.
fn redis_cli(redis: &Service, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli").args(["-p", &redis.addr.port().to_string()]).args(args).output().expect("redis-cli");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_shares_an_index_of_objects_and_members_in_redis() {
    let root = tempfile::tempdir().unwrap();
    let redis = services::redis(root.path());
    let up = upstream_with(1).await;
    let config = proxy_config(&up, Some(&redis), None);
    let a = start_proxy(root.path(), "a", &config);
    let b = start_proxy(root.path(), "b", &config);
    wait_for_members(&[&a, &b], 2).await;
    for p in [&a, &b, &a, &b] {
        assert_eq!(get(p.addr, &object_path(0)).await.status, 200);
    }
    // A 404 the proxy remembers (the fixture's default 404 says no-store, so give one that
    // doesn't): its owner's cache holds it, and nothing in Redis would read it back.
    up.route("/pkg/missing.bin", Route::ok(b"no such object".to_vec()).status(404));
    assert_eq!(get(a.addr, "/pkg/missing.bin").await.status, 404);
    // Each proxy stores its copy and counts a hit. Applied in the background, so wait for the
    // writes to be acknowledged.
    a.wait_for_metric("hangar_metadata_writes_total", &[("result", "written")], 2.0).await;
    b.wait_for_metric("hangar_metadata_writes_total", &[("result", "written")], 2.0).await;
    let object = redis_cli(&redis, &["HGETALL", "hangar:test:obj:files:pkg/object-0.bin"]);
    let fields: Vec<&str> = object.lines().collect();
    let field = |name: &str| fields.iter().position(|f| *f == name).map(|i| fields[i + 1]);
    assert_eq!(field("size"), Some("65536"), "{object}");
    assert!(fields.iter().any(|f| f.starts_with("tier:disk:127.0.0.1:")), "which proxy holds it: {object}");
    assert!(field("hits:test").and_then(|h| h.parse::<u64>().ok()).is_some_and(|h| h >= 2), "hits by region: {object}");
    assert!(field("last_access").is_some());
    assert_eq!(redis_cli(&redis, &["EXISTS", "hangar:test:neg:files:pkg/missing.bin"]).trim(), "0", "nothing is written that nothing reads");
    let members = redis_cli(&redis, &["ZRANGE", "hangar:test:members", "0", "-1"]);
    assert_eq!(members.lines().count(), 2, "{members}");
    // An operator reads the same index from any proxy's admin listener.
    let index = hangar_e2e::http(b.admin, "GET", "/index/files/pkg/object-0.bin", &[hangar_e2e::ADMIN]).await.unwrap().collect().await;
    assert_eq!(index.status, 200, "{}", String::from_utf8_lossy(&index.body));
    let info: serde_json::Value = serde_json::from_slice(&index.body).unwrap();
    assert_eq!(info["size"], 65536);
    assert_eq!(info["tiers"].as_array().map(Vec::len), Some(2), "both proxies hold a copy: {info}");
    assert_eq!(hangar_e2e::http(a.admin, "GET", "/index/files/pkg/never-fetched.bin", &[hangar_e2e::ADMIN]).await.unwrap().collect().await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upload_queue_drops_uploads_and_never_holds_up_a_client() {
    let root = tempfile::tempdir().unwrap();
    let up = upstream_with(6).await;
    // An origin nobody answers at: every hop to it fails at once, every upload waits to retry.
    let closed = services::free_port();
    let config = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[origin]\nurl = \"http://127.0.0.1:{closed}/\"\nupload_queue = 1\nupload_workers = 1\n[fleet]\nsecret = \"{SECRET}\"\n",
        up.url()
    );
    let a = start_proxy(root.path(), "a", &config);
    for i in 0..6 {
        let r = get(a.addr, &object_path(i)).await;
        assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i} served while origin is away");
    }
    // One upload held by the worker, one in the queue; the rest were dropped, and counted.
    let dropped = a.metric("hangar_origin_uploads_total", &[("result", "dropped_queue_full")]).await;
    let queued = a.metric("hangar_origin_uploads_total", &[("result", "queued")]).await;
    assert_eq!(dropped + queued, 6.0);
    assert!(dropped >= 4.0, "dropped {dropped}, queued {queued}");
    assert_eq!(a.metric("hangar_origin_fetches_total", &[("result", "error")]).await, 6.0, "origin was asked first each time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_is_looked_up_once_per_request_and_its_manifest_fetched_once_per_fleet() {
    let root = tempfile::tempdir().unwrap();
    let redis = services::redis(root.path());
    let registry = Upstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec();
    let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&manifest));
    let answer = Route::ok(manifest.clone()).header("Content-Type", "application/vnd.oci.image.manifest.v1+json").header("Docker-Content-Digest", &digest);
    registry.route("/v2/team/app/manifests/v1", answer.clone());
    registry.route(&format!("/v2/team/app/manifests/{digest}"), answer);
    let config = format!(
        "[[repository]]\nname = \"reg\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"{}/v2/\"\n[repository.freshness]\nmetadata_ttl = \"0s\"\n[fleet]\nredis = \"redis://{}/\"\nregion = \"test\"\nheartbeat = \"100ms\"\nmember_ttl = \"1s\"\nsecret = \"{SECRET}\"\n",
        registry.url(),
        redis.addr
    );
    let proxies: Vec<Proxy> = (0..2).map(|i| start_proxy(root.path(), &format!("p{i}"), &config)).collect();
    wait_for_members(&proxies.iter().collect::<Vec<_>>(), 2).await;
    // One of the two is not the manifest's owner and asks the other for it, by digest.
    for p in &proxies {
        let r = get(p.addr, "/v2/team/app/manifests/v1").await;
        assert_eq!((r.status, r.body == manifest), (200, true), "{}", p.stderr());
    }
    let peer_fetches: f64 = {
        let mut n = 0.0;
        for p in &proxies {
            n += p.metric("hangar_fleet_fetches_total", &[("repository", "reg")]).await;
        }
        n
    };
    assert_eq!(peer_fetches, 1.0, "one proxy got the manifest from its owner");
    assert_eq!(registry.hits("/v2/team/app/manifests/v1"), 2, "one tag lookup per client request, none by the owner for its peer");
    assert_eq!(registry.hits(&format!("/v2/team/app/manifests/{digest}")), 1, "the manifest itself came from the registry once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_member_list_makes_one_upstream_request_per_object_without_redis() {
    let root = tempfile::tempdir().unwrap();
    let up = upstream_with(8).await;
    let addrs: Vec<std::net::SocketAddr> = (0..2).map(|_| format!("127.0.0.1:{}", services::free_port()).parse().unwrap()).collect();
    let config = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[fleet]\nmembers = [\"{}\", \"{}\"]\nsecret = \"{SECRET}\"\n",
        up.url(),
        addrs[0],
        addrs[1]
    );
    let proxies: Vec<Proxy> = addrs.iter().enumerate().map(|(i, a)| Proxy::builder(&root.path().join(format!("p{i}"))).listen(*a).config(&config).start()).collect();
    for p in &proxies {
        p.wait_for_metric("hangar_fleet_members", &[], 2.0).await;
    }
    for i in 0..8 {
        for p in &proxies {
            let r = get(p.addr, &object_path(i)).await;
            assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i}");
        }
        assert_eq!(up.hits(&object_path(i)), 1, "object {i}: fetched once, by its owner");
    }
    let mut forwarded = 0.0;
    for p in &proxies {
        forwarded += p.metric("hangar_fleet_fetches_total", &[("result", "peer")]).await;
    }
    assert_eq!(forwarded, 8.0, "each object was asked of its owner by the other proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_posing_as_a_fleet_peer_is_still_routed_to_the_keys_owner() {
    let root = tempfile::tempdir().unwrap();
    let redis = services::redis(root.path());
    let up = upstream_with(6).await;
    let config = proxy_config(&up, Some(&redis), None);
    let (a, b) = (start_proxy(root.path(), "a", &config), start_proxy(root.path(), "b", &config));
    wait_for_members(&[&a, &b], 2).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // The header proxies sent each other before hops were signed, and a signed-looking one
    // whose proof the client cannot make.
    let forged_proof = format!("v1 peer {now} {}", "0".repeat(64));
    let forged = [("x-hangar-fleet-hop", "1"), ("x-hangar-hop", forged_proof.as_str())];
    for i in 0..6 {
        for p in [&a, &b] {
            let r = hangar_e2e::http(p.addr, "GET", &object_path(i), &forged).await.unwrap().collect().await;
            assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i}");
        }
        // A proxy that believed the client would have fetched the object itself.
        assert_eq!(up.hits(&object_path(i)), 1, "object {i}: one fetch for the region");
        let seen = up.requests(&object_path(i));
        assert!(seen.iter().all(|r| r.headers.iter().all(|(k, _)| !k.to_ascii_lowercase().starts_with("x-hangar-"))), "no internal header reaches the upstream: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_serves_a_signed_peer_hop_itself_even_when_its_own_view_names_another_owner() {
    let root = tempfile::tempdir().unwrap();
    let up = upstream_with(40).await;
    let port = || -> std::net::SocketAddr { format!("127.0.0.1:{}", services::free_port()).parse().unwrap() };
    // A sees {A, B}; B sees {B, X}, X being a member nobody answers for. For the keys A sends
    // to B, B's own view often names X as the owner: only a verified hop stops B forwarding.
    let (a_addr, b_addr, x_addr) = (port(), port(), port());
    let config = |members: [std::net::SocketAddr; 2]| {
        format!(
            "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[fleet]\nmembers = [\"{}\", \"{}\"]\nsecret = \"{SECRET}\"\n",
            up.url(),
            members[0],
            members[1]
        )
    };
    let a = Proxy::builder(&root.path().join("a")).listen(a_addr).config(&config([a_addr, b_addr])).start();
    let b = Proxy::builder(&root.path().join("b")).listen(b_addr).config(&config([b_addr, x_addr])).start();
    a.wait_for_metric("hangar_fleet_members", &[], 2.0).await;
    b.wait_for_metric("hangar_fleet_members", &[], 2.0).await;
    for i in 0..40 {
        let r = get(a.addr, &object_path(i)).await;
        assert!(r.status == 200 && r.body == pattern(i as u8, OBJECT_LEN), "object {i}");
        assert_eq!(up.hits(&object_path(i)), 1, "object {i}");
    }
    assert!(a.metric("hangar_fleet_fetches_total", &[("result", "peer")]).await > 0.0, "A sent some keys to B");
    assert_eq!(b.metric("hangar_fleet_fetches_total", &[("result", "peer_unreachable")]).await, 0.0, "B never forwarded a peer's hop: {}", b.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_an_artefact_purged_before_its_turn_reads_the_cache_only_and_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let up = upstream_with(1).await;
    // An origin nobody answers at: the upload reads the artefact back, fails to send it, and
    // tries again later.
    let closed = services::free_port();
    let config = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[origin]\nurl = \"http://127.0.0.1:{closed}/\"\n[fleet]\nsecret = \"{SECRET}\"\n",
        up.url()
    );
    let a = start_proxy(root.path(), "a", &config);
    assert_eq!(get(a.addr, &object_path(0)).await.status, 200);
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "retried")], 1.0).await;
    let purged = hangar_e2e::http(a.admin, "DELETE", &format!("/cache/files{}", object_path(0)), &[hangar_e2e::ADMIN]).await.unwrap().collect().await;
    assert_eq!(purged.status, 200);
    // The next attempt's read-back is the proxy's own (signed): answered from cache or not at
    // all, never fetched from the upstream again.
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "evicted_before_upload")], 1.0).await;
    assert_eq!(up.hits(&object_path(0)), 1, "the read-back did not fetch");
}
