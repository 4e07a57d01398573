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
    hangar_e2e::put(origin.addr, path, body, &headers).await
}

async fn publish_rules(origin: &Service) {
    let v1 = b"version one".to_vec();
    let sha = hex(&sha2::Sha256::digest(&v1));
    assert_eq!(put(origin, "/objects/r/a/file.tgz", &v1, Some(&sha)).await.0, 201);
    let r = get(origin.addr, "/objects/r/a/file.tgz").await;
    assert_eq!((r.status, r.body.as_slice(), r.header("x-hangar-sha256")), (200, v1.as_slice(), Some(sha.as_str())));
    assert_eq!(put(origin, "/objects/r/a/file.tgz", &v1, None).await.0, 200, "the same bytes again: accepted, nothing changes");
    let (status, text) = put(origin, "/objects/r/a/file.tgz", b"version two", None).await;
    assert_eq!(status, 409, "a published path is never overwritten: {text}");
    assert_eq!(get(origin.addr, "/objects/r/a/file.tgz").await.body, v1);
    let (status, _) = put(origin, "/objects/r/b/file.tgz", b"tampered", Some(&sha)).await;
    assert_eq!(status, 422, "a body that does not match its declared digest is refused");
    assert_eq!(get(origin.addr, "/objects/r/b/file.tgz").await.status, 404, "and nothing was stored");
    assert_eq!(get(origin.addr, "/objects/r/missing").await.status, 404);
    assert_eq!(get(origin.addr, "/objects/../etc/passwd").await.status, 404);
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
    let r = get(origin.addr, "/objects/r/big.bin").await;
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
    let config = format!("[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n[repository.freshness]\nimmutable = [\"*.bin\"]\n[origin]\nurl = \"http://{}/\"\n", up.url(), origin.addr);
    let a = Proxy::builder(&root.path().join("a")).config(&config).start();
    assert_eq!(get(a.addr, "/x.bin").await.status, 200);
    a.wait_for_metric("hangar_origin_uploads_total", &[("result", "stored")], 1.0).await;

    let r = http(origin.addr, "GET", "/objects/files/x.bin", &[]).await.unwrap().collect().await;
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
