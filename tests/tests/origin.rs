//! hangar-origin on its own: content-addressed, never overwritten, verified on write, large
//! objects in multipart uploads, and presigned redirects, on a local directory and on S3 (moto).

use hangar_e2e::services::{self, Service};
use hangar_e2e::{get, http, pattern, Proxy, Route, Upstream};
use sha2::Digest as _;

/// Parts of 5 MiB above 6 MiB, so a 12 MiB object goes up in three.
const MULTIPART: &str = "multipart_threshold = 6291456\npart_size = 5242880";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// PUT `body` to origin, with its declared sha256 if given; returns (status, response text).
async fn put(origin: &Service, path: &str, body: &[u8], sha256: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = sha256.map(|d| ("X-Hangar-Sha256", d)).into_iter().collect();
    services::origin_put(origin, path, body, &headers).await
}

async fn publish_rules(origin: &Service) {
    let v1 = b"version one".to_vec();
    let sha = hex(&sha2::Sha256::digest(&v1));
    assert_eq!(put(origin, "/objects/r/a/file.tgz", &v1, Some(&sha)).await.0, 201);
    let r = services::origin_get(&origin, "/objects/r/a/file.tgz").await;
    assert_eq!((r.status, r.body.as_slice(), r.header("x-hangar-sha256")), (200, v1.as_slice(), Some(sha.as_str())));
    assert_eq!(put(origin, "/objects/r/a/file.tgz", &v1, None).await.0, 200, "the same bytes again: accepted, nothing changes");
    let (status, text) = put(origin, "/objects/r/a/file.tgz", b"version two", None).await;
    assert_eq!(status, 409, "a published path is never overwritten: {text}");
    assert_eq!(services::origin_get(&origin, "/objects/r/a/file.tgz").await.body, v1);
    let (status, _) = put(origin, "/objects/r/b/file.tgz", b"tampered", Some(&sha)).await;
    assert_eq!(status, 422, "a body that does not match its declared digest is refused");
    assert_eq!(services::origin_get(&origin, "/objects/r/b/file.tgz").await.status, 404, "and nothing was stored");
    assert_eq!(services::origin_get(&origin, "/objects/r/missing").await.status, 404);
    assert_eq!(services::origin_get(&origin, "/objects/../etc/passwd").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_serves_and_stores_only_for_the_fleets_proxies() {
    let root = tempfile::tempdir().unwrap();
    let origin = services::origin_on_dir(root.path());
    // The report: an anonymous PUT under a release path, then served to every client.
    let (status, text) = hangar_e2e::put(origin.addr, "/objects/releases/tool-1.0.tar.gz", b"evil", &[]).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("signed"), "the refusal says what is missing: {text}");
    assert_eq!(services::origin_get(&origin, "/objects/releases/tool-1.0.tar.gz").await.status, 404, "nothing was stored");
    assert_eq!(put(&origin, "/objects/releases/tool-1.0.tar.gz", b"real", None).await.0, 201, "a proxy's upload");
    assert_eq!(get(origin.addr, "/objects/releases/tool-1.0.tar.gz").await.status, 401, "reads need the proof too");
    // A proof for another path, another method or from another secret is refused.
    let (name, other_path) = services::origin_proof("GET", "/objects/releases/other");
    let (_, other_method) = services::origin_proof("PUT", "/objects/releases/tool-1.0.tar.gz");
    let stranger = hangar_core::wire::HopKey::new(b"not the fleet's secret").sign(hangar_core::wire::HopKind::Origin, "GET", "/objects/releases/tool-1.0.tar.gz", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    for proof in [other_path, other_method, stranger] {
        let r = http(origin.addr, "GET", "/objects/releases/tool-1.0.tar.gz", &[(name, proof.as_str())]).await.unwrap().collect().await;
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(get(origin.addr, "/healthz").await.status, 200, "health stays open");
    // Without fleet_secret, origin serves no one.
    let bare = tempfile::tempdir().unwrap();
    let dir = bare.path().join("origin");
    std::fs::create_dir_all(&dir).unwrap();
    let unset = services::origin(&format!("spool_dir = \"{}\"\n[store]\nkind = \"local\"\ndir = \"{}\"\n", dir.display(), dir.join("store").display()), &dir, &[]);
    let r = services::origin_get(&unset, "/objects/releases/tool-1.0.tar.gz").await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("fleet_secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_publishes_once_and_verifies_digests() {
    let root = tempfile::tempdir().unwrap();
    let origin = services::origin_on_dir(root.path());
    let dir = root.path().join("origin");
    publish_rules(&origin).await;
    let blobs = hangar_e2e::files_under(&dir.join("store/blobs"));
    assert_eq!(blobs.len(), 1, "content-addressed: one blob for one content: {blobs:?}");
}


/// Send `head` and `body` on one connection, then read the answer until the server closes
/// (the requests say `Connection: close`): the status and the text. Fails, rather than hangs,
/// if no answer comes: a server that waits for more body is a failure here.
async fn raw_request(origin: &Service, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(origin.addr).await.unwrap();
    // Signed as a proxy would: `PUT <target> HTTP/1.1` names what the proof covers.
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap(), words.next().unwrap());
    let (name, proof) = services::origin_proof(method, target);
    let head = head.replacen("\r\n", &format!("\r\n{name}: {proof}\r\n"), 1);
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s; so far: {:?}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8_lossy(&answer).to_string();
    (text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_size_limit_are_refused_and_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let origin = services::origin_on_dir_with(root.path(), "max_upload_bytes = \"1KiB\"");
    let dir = root.path().join("origin");

    // Declared too large: refused before the body is read, so the client need not send it.
    let (status, text) = raw_request(&origin, "PUT /objects/r/declared.bin HTTP/1.1\r\nHost: o\r\nContent-Length: 1025\r\nConnection: close\r\n\r\n", b"").await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("1025 bytes") && text.contains("max_upload_bytes"), "the message says what to change: {text}");

    // No length: refused once the body passes the limit (the final chunk is never sent).
    let chunk = vec![b'x'; 1025];
    let head = "PUT /objects/r/streamed.bin HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut body = format!("{:x}\r\n", chunk.len()).into_bytes();
    body.extend_from_slice(&chunk);
    body.extend_from_slice(b"\r\n");
    let (status, text) = raw_request(&origin, head, &body).await;
    assert_eq!(status, 413, "{text}");

    for path in ["/objects/r/declared.bin", "/objects/r/streamed.bin"] {
        assert_eq!(services::origin_get(&origin, path).await.status, 404, "{path}: nothing was stored");
    }
    assert!(hangar_e2e::files_under(&dir.join("store")).is_empty(), "no blob and no manifest");
    let spooled: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().is_file() && e.file_name() != "origin.toml").map(|e| e.file_name()).collect();
    assert!(spooled.is_empty(), "the spool is cleaned up: {spooled:?}");

    // At the limit: accepted.
    let exact = vec![b'y'; 1024];
    let (status, text) = put(&origin, "/objects/r/exact.bin", &exact, None).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(services::origin_get(&origin, "/objects/r/exact.bin").await.body, exact);
}

/// A proxy hands origin what it fetched. One over origin's limit must come back as a refusal
/// (counted, not retried): without `Expect: 100-continue` the proxy would be writing 8 MiB
/// into a connection origin had already closed, and see only a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_upload_over_origins_limit_is_counted_refused_and_not_retried() {
    let root = tempfile::tempdir().unwrap();
    let origin = services::origin_on_dir_with(root.path(), "max_upload_bytes = \"1MiB\"");
    let up = Upstream::start().await;
    up.route("/pkg/big.bin", Route::pattern(1, 8 << 20));
    up.route("/pkg/small.bin", Route::pattern(2, 4096));
    let config = format!(
        "[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[origin]\nurl = \"http://{}/\"\nupload_workers = 1\n[fleet]\nsecret = \"{}\"\n",
        up.url(),
        origin.addr,
        hangar_e2e::FLEET_SECRET
    );
    let proxy = Proxy::builder(&root.path().join("proxy")).config(&config).start();
    assert_eq!(get(proxy.addr, "/pkg/big.bin").await.status, 200);
    proxy.wait_for_metric("hangar_origin_uploads_total", &[("result", "rejected")], 1.0).await;
    // One worker: the small one is taken only once the big one is settled.
    assert_eq!(get(proxy.addr, "/pkg/small.bin").await.status, 200);
    proxy.wait_for_metric("hangar_origin_uploads_total", &[("result", "stored")], 1.0).await;
    assert_eq!(proxy.metric("hangar_origin_uploads_total", &[("result", "retried")]).await, 0.0, "a refusal is not an outage");
    assert_eq!(proxy.metric("hangar_origin_uploads_total", &[("result", "rejected")]).await, 1.0);
    let blobs = hangar_e2e::files_under(&root.path().join("origin/store/blobs"));
    assert_eq!(blobs.len(), 1, "only the small artefact reached origin: {blobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_publishes_once_verifies_and_uploads_large_objects_in_parts() {
    let root = tempfile::tempdir().unwrap();
    let moto = services::moto(root.path());
    let origin = services::origin_on_s3(root.path(), &moto, "origin-test", "", MULTIPART);
    publish_rules(&origin).await;
    // 12 MiB: above the 6 MiB threshold, three parts of at most 5 MiB.
    let big = pattern(7, 12 << 20);
    let (status, text) = put(&origin, "/objects/r/big.bin", &big, Some(&hex(&sha2::Sha256::digest(&big)))).await;
    assert_eq!(status, 201, "{text}");
    let r = services::origin_get(&origin, "/objects/r/big.bin").await;
    assert!(r.status == 200 && r.body == big, "multipart object reads back whole");
    let log = std::fs::read_to_string(root.path().join("moto.log")).unwrap();
    assert_eq!(log.matches("partNumber=").count(), 3, "three parts reached S3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_served_by_redirect_send_clients_to_a_presigned_s3_url() {
    let root = tempfile::tempdir().unwrap();
    let moto = services::moto(root.path());
    let origin = services::origin_on_s3(root.path(), &moto, "origin-test", "[repositories.files]\nserve = \"redirect\"", MULTIPART);
    let up = Upstream::start().await;
    up.route("/x.bin", Route::pattern(3, 100_000));
    let config = format!("[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[origin]\nurl = \"http://{}/\"\n[fleet]\nsecret = \"{}\"\n", up.url(), origin.addr, hangar_e2e::FLEET_SECRET);
    let a = Proxy::builder(&root.path().join("a")).config(&config).start();
    assert_eq!(get(a.addr, "/x.bin").await.status, 200);
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "stored")], 1.0).await;

    let r = services::origin_get(&origin, "/objects/files/x.bin").await;
    assert_eq!(r.status, 307);
    let location = r.header("location").expect("a presigned URL").to_string();
    assert!(location.starts_with(&format!("http://{}/origin-test/", moto.addr)) && location.contains("Signature"), "{location}");

    // A proxy that never had it follows the redirect to S3 and caches the bytes.
    up.route("/x.bin", Route::ok(b"gone".to_vec()).status(404).header("Cache-Control", "no-store"));
    let b = Proxy::builder(&root.path().join("b")).config(&config).start();
    let r = get(b.addr, "/x.bin").await;
    assert!(r.status == 200 && r.body == pattern(3, 100_000), "{} {:?} {}", r.status, String::from_utf8_lossy(&r.body[..r.body.len().min(300)]), b.stderr());
    assert_eq!(get(b.addr, "/x.bin").await.cache(), "hit");
    assert_eq!(up.hits("/x.bin"), 1);
}
