//! Docker/OCI through Hangar.
//!
//! Real parts: Debian's docker-registry (distribution) with token auth, a token server of the
//! test's own (openssl-made key), an image built without Docker and pushed with skopeo; pulled
//! through Hangar with skopeo and oras-py, then again with the registry stopped.
//!
//! Fixture registries for what the real one cannot be made to do: tags that move and
//! answers by `Accept`, forged blobs, an https token realm, and blob redirects to a CDN.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use hangar_e2e::clients::run;
use hangar_e2e::services::{self};
use hangar_e2e::{http, Proxy, Route, Upstream};

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A JWT the registry accepts: RS256, the signing certificate in `x5c`, pull and push on
/// `test/hello` and `library/hello` for an hour.
fn make_token(dir: &Path, service: &str) -> String {
    run(Command::new("openssl").current_dir(dir).args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "auth.key", "-out", "auth.pem", "-days", "2", "-subj", "/CN=hangar-test-token"]));
    let der = Command::new("openssl").current_dir(dir).args(["x509", "-in", "auth.pem", "-outform", "DER"]).output().unwrap().stdout;
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{}"]}}"#, base64::engine::general_purpose::STANDARD.encode(&der));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = format!(
        r#"{{"iss":"hangar-test","sub":"anyone","aud":"{service}","exp":{},"nbf":{},"iat":{now},"jti":"1","access":[{{"type":"repository","name":"test/hello","actions":["pull","push"]}},{{"type":"repository","name":"library/hello","actions":["pull","push"]}}]}}"#,
        now + 3600,
        now - 60
    );
    let signing = format!("{}.{}", b64url(header.as_bytes()), b64url(claims.as_bytes()));
    let mut child = Command::new("openssl").current_dir(dir).args(["dgst", "-sha256", "-sign", "auth.key"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(signing.as_bytes()).unwrap();
    let sig = child.wait_with_output().unwrap().stdout;
    format!("{signing}.{}", b64url(&sig))
}

/// A one-layer OCI image layout at `dir`, tag v1, made without Docker.
fn make_image(dir: &Path) {
    let script = r#"
import gzip, hashlib, io, json, os, sys, tarfile
d = sys.argv[1]
os.makedirs(f"{d}/blobs/sha256", exist_ok=True)
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(f"{d}/blobs/sha256/{h}", "wb").write(b)
    return "sha256:" + h, len(b)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w") as t:
    data = b"hello from hangar\n" * 1000
    info = tarfile.TarInfo("hello.txt"); info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer = gzip.compress(raw.getvalue())
ld, ll = put(layer)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]}}).encode()
cd, cl = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cl}, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ll}]}).encode()
md, ml = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ml, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, open(f"{d}/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{d}/oci-layout", "w"))
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(dir));
}

fn skopeo_copy(from: &str, to: &str) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", from, to]);
    cmd
}

/// oras-py (`pip install oras`, into the tests' venv) pulling `reference` into `out`.
fn oras_pull(reference: &str, out: &Path) -> std::process::Output {
    let python = std::env::var("HANGAR_VENV_PYTHON").unwrap_or_else(|_| "/var/tmp/hangar-venv/bin/python".into());
    let script = "import json, sys, oras.client\nc = oras.client.OrasClient(insecure=True)\nprint(json.dumps(c.pull(target=sys.argv[1], outdir=sys.argv[2])))\n";
    Command::new(python).arg("-c").arg(script).arg(reference).arg(out).output().expect("python with oras: tests/run-all installs it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_oras_pull_through_the_proxy_from_several_registries_and_again_with_the_registry_stopped() {
    let root = tempfile::tempdir().unwrap();
    let service = "hangar-test-registry";
    let token = make_token(root.path(), service);
    let token_server = Upstream::start().await;
    token_server.route("/token", Route::ok(format!(r#"{{"token":"{token}","expires_in":3600}}"#).into_bytes()).header("Content-Type", "application/json"));

    let port = services::free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: {}/token\n    service: {service}\n    issuer: hangar-test\n    rootcertbundle: {}\n",
        root.path().join("data").display(),
        token_server.url(),
        root.path().join("auth.pem").display()
    );
    std::fs::write(root.path().join("registry.yml"), config).unwrap();
    let mut registry = Some(KillOnDrop(Command::new("docker-registry").arg("serve").arg(root.path().join("registry.yml")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("docker-registry")));
    services::wait_for_port(format!("127.0.0.1:{port}").parse().unwrap());

    make_image(&root.path().join("image"));
    let layout = format!("oci:{}:v1", root.path().join("image").display());
    run(&mut skopeo_copy(&layout, &format!("docker://127.0.0.1:{port}/test/hello:v1")));
    run(&mut skopeo_copy(&layout, &format!("docker://127.0.0.1:{port}/library/hello:v1")));
    let blob = |digest: &str| root.path().join("image/blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json = |path: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap();
    let manifest_digest = json(&root.path().join("image/index.json"))["manifests"][0]["digest"].as_str().unwrap().to_string();
    let layer_digest = json(&blob(&manifest_digest))["layers"][0]["digest"].as_str().unwrap().to_string();

    // Docker Hub's place (`docker.io`, at `/v2/`) and a second registry under its own prefix;
    // both are the test registry here. The first asks what its tags name on every pull, the
    // second remembers the answer for the default metadata_ttl.
    let upstream = format!("http://127.0.0.1:{port}/v2/");
    let proxy_config = format!(
        "[[repository]]\nname = \"hub\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"{upstream}\"\nnamespace = \"docker.io\"\nfreshness = {{ metadata_ttl = \"0s\" }}\n\
         [[repository]]\nname = \"second\"\nprefix = \"/v2/second/\"\nformat = \"oci\"\nupstream = \"{upstream}\"\nnamespace = \"second.test\"\n"
    );
    let proxy = Proxy::builder(&root.path().join("cache")).config(&proxy_config).start();
    for round in ["online", "registry-stopped"] {
        // `hello` is `library/hello` on Docker Hub; `second/test/hello` is the second registry's `test/hello`.
        for image in ["hello", "second/test/hello"] {
            let out = root.path().join(format!("pulled-{round}-{}", image.replace('/', "-")));
            let o = skopeo_copy(&format!("docker://{}/{image}:v1", proxy.addr), &format!("oci:{}:v1", out.display())).output().unwrap();
            assert!(o.status.success(), "{round} {image}: {}\nproxy: {}", String::from_utf8_lossy(&o.stderr), proxy.stderr());
            let blobs = std::fs::read_dir(out.join("blobs/sha256")).unwrap().count();
            assert_eq!(blobs, 3, "{round}: manifest, config and layer");
        }
        // oras-py, on the default registry.
        let out = root.path().join(format!("oras-{round}"));
        let o = oras_pull(&format!("{}/test/hello:v1", proxy.addr), &out);
        assert!(o.status.success(), "{round} oras: {}{}\nproxy: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr), proxy.stderr());
        // The layer is a gzipped tar, which oras unpacks: its one file arrived intact.
        let files: Vec<String> = serde_json::from_slice(&o.stdout).expect("oras prints the files it pulled");
        assert!(files.len() == 1 && files[0].ends_with(&layer_digest), "{files:?}");
        assert_eq!(std::fs::read(out.join("hello.txt")).unwrap(), b"hello from hangar\n".repeat(1000), "{round}");
        // containerd names the registry with `?ns=`; one not mirrored here is not answered
        // with another's images.
        let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
        let r = http(proxy.addr, "GET", "/v2/test/hello/manifests/v1?ns=second.test", &accept).await.unwrap().collect().await;
        assert_eq!((r.status, r.header("content-type")), (200, Some("application/vnd.oci.image.manifest.v1+json")), "{round}");
        // Docker's registry-mirrors and containerd both ask Docker Hub's names in full.
        let r = http(proxy.addr, "GET", "/v2/library/hello/manifests/v1?ns=docker.io", &accept).await.unwrap().collect().await;
        assert_eq!(r.status, 200, "{round}");
        let r = http(proxy.addr, "GET", "/v2/test/hello/manifests/v1?ns=elsewhere.test", &accept).await.unwrap().collect().await;
        assert_eq!(r.status, 404, "{round}");
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "hub"), ("result", "miss")]).await >= 3.0);
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "second"), ("result", "miss")]).await >= 3.0);
            assert_eq!(proxy.metric("hangar_upstream_errors_total", &[("kind", "token")]).await, 0.0);
            drop(registry.take());
        }
    }
    assert!(proxy.metric("hangar_pointer_lookups_total", &[("repository", "hub"), ("result", "last_known")]).await >= 2.0);
    assert!(proxy.metric("hangar_pointer_lookups_total", &[("repository", "second"), ("result", "remembered")]).await >= 1.0);
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[]).await, 0.0);
    assert!(token_server.hits("/token") >= 1, "the proxy fetched its own token");
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A registry's answer for a manifest: exact bytes, media type and digest.
fn manifest_route(body: &[u8], media_type: &str) -> Route {
    Route::ok(body.to_vec()).without("Cache-Control").header("Content-Type", media_type).header("Docker-Content-Digest", &sha256(body))
}

async fn fetch(proxy: &Proxy, method: &str, target: &str, headers: &[(&str, &str)]) -> hangar_e2e::Response {
    http(proxy.addr, method, target, headers).await.expect("request").collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_asked_with_head_and_served_by_digest_with_the_last_known_digest_when_the_registry_fails() {
    let registry = Upstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec();
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    let (m, i) = (sha256(&manifest), sha256(&index));
    // The tag names the index to clients that accept one, else the single manifest.
    registry.route("/v2/team/app/manifests/v1", manifest_route(&manifest, OCI_MANIFEST).when_accept(OCI_INDEX, manifest_route(&index, OCI_INDEX)));
    registry.route(&format!("/v2/team/app/manifests/{m}"), manifest_route(&manifest, OCI_MANIFEST));
    registry.route(&format!("/v2/team/app/manifests/{i}"), manifest_route(&index, OCI_INDEX));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[[repository]]\nname = \"reg\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"{}/v2/\"\n[repository.freshness]\nmetadata_ttl = \"0s\"\n", registry.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();

    // Two Accept headers, as containerd sends them: both reach the registry, and the answer
    // is the index, byte for byte, with its media type and digest.
    let both = [("Accept", OCI_MANIFEST), ("Accept", OCI_INDEX)];
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &both).await;
    assert_eq!((r.status, r.body.as_slice()), (200, index.as_slice()), "{}", proxy.stderr());
    assert_eq!((r.header("content-type"), r.header("docker-content-digest")), (Some(OCI_INDEX), Some(i.as_str())));
    let heads = registry.requests("/v2/team/app/manifests/v1");
    assert!(heads.iter().all(|s| s.method == "HEAD"), "the tag is only ever asked with HEAD: {heads:?}");
    let accepts: Vec<&str> = heads[0].headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("accept")).map(|(_, v)| v.as_str()).collect();
    assert!(accepts.contains(&OCI_MANIFEST) && accepts.contains(&OCI_INDEX), "every Accept header was forwarded: {accepts:?}");
    assert_eq!(registry.hits(&format!("/v2/team/app/manifests/{i}")), 1);

    // A client that accepts only single manifests gets the manifest; asking again is a cache
    // hit on the manifest by digest, after one more HEAD.
    let single = [("Accept", OCI_MANIFEST)];
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &single).await;
    assert_eq!((r.status, r.body.as_slice(), r.header("docker-content-digest")), (200, manifest.as_slice(), Some(m.as_str())));
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &single).await;
    assert_eq!((r.status, r.cache()), (200, "hit"));
    assert_eq!(registry.hits(&format!("/v2/team/app/manifests/{m}")), 1);
    assert_eq!(registry.hits("/v2/team/app/manifests/v1"), 3);
    assert!(registry.requests("/v2/team/app/manifests/v1").iter().all(|s| s.method == "HEAD"));

    // HEAD on the tag: the manifest's headers, no body.
    let r = fetch(&proxy, "HEAD", "/v2/team/app/manifests/v1", &single).await;
    assert_eq!((r.status, r.header("docker-content-digest"), r.header("content-length")), (200, Some(m.as_str()), Some(manifest.len().to_string().as_str())));
    assert!(r.body.is_empty());

    // The tag moves upstream: the next request follows it.
    let moved = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"v":"2"}}"#.to_vec();
    let m2 = sha256(&moved);
    registry.route("/v2/team/app/manifests/v1", manifest_route(&moved, OCI_MANIFEST));
    registry.route(&format!("/v2/team/app/manifests/{m2}"), manifest_route(&moved, OCI_MANIFEST));
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &single).await;
    assert_eq!((r.status, r.body.as_slice()), (200, moved.as_slice()));

    // A tag the registry does not have is a 404 in the registry's error format.
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/nope", &single).await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("MANIFEST_UNKNOWN"));

    // The registry fails: the tag still leads to the manifest it last named.
    registry.route("/v2/team/app/manifests/v1", Route::ok(b"down".to_vec()).status(503));
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &single).await;
    assert_eq!((r.status, r.body.as_slice()), (200, moved.as_slice()));
    registry.stop();
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &both).await;
    assert_eq!((r.status, r.body.as_slice()), (200, index.as_slice()));
    assert_eq!(proxy.metric("hangar_pointer_lookups_total", &[("repository", "reg"), ("result", "last_known")]).await, 2.0);
    assert_eq!(proxy.metric("hangar_pointer_lookups_total", &[("repository", "reg"), ("result", "not_found")]).await, 1.0);

    // Killed and restarted while the registry is down: the tags still lead to their manifests.
    let mut proxy = proxy;
    proxy.kill9();
    proxy.restart();
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &both).await;
    assert_eq!((r.status, r.body.as_slice()), (200, index.as_slice()), "{}", proxy.stderr());
    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &single).await;
    assert_eq!((r.status, r.body.as_slice()), (200, moved.as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_answer_head_and_range_and_a_wrong_blob_is_never_cached() {
    let registry = Upstream::start().await;
    let blob = hangar_e2e::pattern(7, 300_000);
    let b = sha256(&blob);
    registry.route(&format!("/v2/team/app/blobs/{b}"), Route::ok(blob.clone()).without("Cache-Control"));
    let forged = sha256(b"what the digest promises");
    registry.route(&format!("/v2/team/app/blobs/{forged}"), Route::ok(b"something else".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[[repository]]\nname = \"reg\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"{}/v2/\"\n", registry.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();
    let path = format!("/v2/team/app/blobs/{b}");

    // A range of a blob not yet cached, then of the cached one.
    for expected_cache in ["miss", "hit"] {
        let r = fetch(&proxy, "GET", &path, &[("Range", "bytes=1000-1999")]).await;
        assert_eq!(r.status, 206, "{expected_cache}");
        assert_eq!(r.body.as_slice(), &blob[1000..2000], "{expected_cache}");
        assert_eq!(r.header("content-range"), Some(format!("bytes 1000-1999/{}", blob.len()).as_str()));
    }
    let r = fetch(&proxy, "HEAD", &path, &[]).await;
    assert_eq!((r.status, r.header("content-length"), r.cache()), (200, Some("300000"), "hit"));
    assert_eq!(fetch(&proxy, "GET", &path, &[]).await.body, blob);
    assert_eq!(registry.hits(&path), 1);

    for _ in 0..2 {
        let r = fetch(&proxy, "GET", &format!("/v2/team/app/blobs/{forged}"), &[]).await;
        assert!(r.status != 200 || r.truncated || r.body.is_empty(), "a blob that does not match its digest is not delivered whole");
    }
    assert_eq!(registry.hits(&format!("/v2/team/app/blobs/{forged}")), 2, "and never cached");
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "reg")]).await, 2.0);
    // Asked for by sha512, a registry may still name the blob by its sha256: the client
    // gets the digest it asked for, and that the body was verified against (miss and hit).
    let b512 = { use sha2::Digest as _; format!("sha512:{:x}", sha2::Sha512::digest(&blob)) };
    registry.route(&format!("/v2/team/app/blobs/{b512}"), Route::ok(blob.clone()).header("Docker-Content-Digest", &b));
    for expected_cache in ["miss", "hit"] {
        let r = fetch(&proxy, "GET", &format!("/v2/team/app/blobs/{b512}"), &[]).await;
        assert_eq!((r.status, r.body == blob, r.cache()), (200, true, expected_cache));
        assert_eq!(r.header("docker-content-digest"), Some(b512.as_str()), "{expected_cache}");
    }
    assert_eq!(fetch(&proxy, "HEAD", &path, &[]).await.header("docker-content-digest"), Some(b.as_str()));
    assert_eq!(fetch(&proxy, "GET", "/v2/team/app/blobs/latest", &[]).await.status, 404);
    assert_eq!(fetch(&proxy, "GET", "/v2/Team/app/manifests/v1", &[]).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_from_an_https_realm_with_credentials_and_blob_redirects_lose_the_authorization() {
    let pki = tempfile::tempdir().unwrap();
    hangar_e2e::tls::make_pki(pki.path());
    let read = |n: &str| std::fs::read(pki.path().join(n)).unwrap();
    let auth = Upstream::start_tls(&read("srv.pem"), &read("srv.key")).await;
    auth.route("/token", Route::ok(br#"{"token":"t0ken","expires_in":300}"#.to_vec()).header("Content-Type", "application/json"));
    let realm = format!("{}/token", auth.tls_url().replace("127.0.0.1", "localhost"));
    let cdn = Upstream::start().await;
    let blob = hangar_e2e::pattern(3, 100_000);
    let b = sha256(&blob);
    cdn.route("/signed/blob", Route::ok(blob.clone()));

    let registry = Upstream::start().await;
    let challenge = format!(r#"Bearer realm="{realm}",service="reg.test",scope="repository:team/app:pull""#);
    let guarded = |ok: Route| Route::ok(b"{}".to_vec()).status(401).header("WWW-Authenticate", &challenge).when_header("authorization", "Bearer t0ken", ok);
    let manifest = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    let m = sha256(&manifest);
    registry.route("/v2/team/app/manifests/v1", guarded(manifest_route(&manifest, OCI_MANIFEST)));
    registry.route(&format!("/v2/team/app/manifests/{m}"), guarded(manifest_route(&manifest, OCI_MANIFEST)));
    registry.route(&format!("/v2/team/app/blobs/{b}"), guarded(Route::ok(Vec::new()).status(307).header("Location", &format!("{}/signed/blob", cdn.url()))));
    // A CDN that asks for credentials itself gets none of the registry's.
    let private = sha256(b"private");
    cdn.route("/signed/private", Route::ok(Vec::new()).status(401).header("WWW-Authenticate", "Basic realm=\"cdn\""));
    registry.route(&format!("/v2/team/app/blobs/{private}"), guarded(Route::ok(Vec::new()).status(307).header("Location", &format!("{}/signed/private", cdn.url()))));

    let dir = tempfile::tempdir().unwrap();
    let repo = |name: &str, prefix: &str, extra: &str| {
        format!("[[repository]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nformat = \"oci\"\nupstream = \"{}/v2/\"\nallow_private_redirects = true\n{extra}", registry.url())
    };
    let config = repo("reg", "/v2/", "token_realms = [\"localhost\"]\ncredentials = { username = \"ci\", password = \"${REGISTRY_PASSWORD}\" }\n")
        + &repo("unlisted", "/v2/unlisted/", "");
    let empty = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path())
        .config(&config)
        .env("REGISTRY_PASSWORD", "s3cret")
        .env("SSL_CERT_FILE", pki.path().join("ca.pem").to_str().unwrap())
        .env("SSL_CERT_DIR", empty.path().to_str().unwrap())
        .start();

    let r = fetch(&proxy, "GET", "/v2/team/app/manifests/v1", &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, manifest.as_slice()), "{}", proxy.stderr());
    let r = fetch(&proxy, "GET", &format!("/v2/team/app/blobs/{b}"), &[]).await;
    assert_eq!((r.status, r.body == blob), (200, true), "{}", proxy.stderr());

    let tokens = auth.requests("/token");
    assert_eq!(tokens.len(), 1, "one token, cached for the other requests");
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ci:s3cret"));
    assert_eq!(tokens[0].header("authorization"), Some(basic.as_str()), "the configured credentials went to the realm");
    assert!(tokens[0].path.contains("scope=repository%3Ateam%2Fapp%3Apull") && tokens[0].path.contains("service=reg.test"), "{}", tokens[0].path);
    // Once the token is known, it goes with the first request: no 401 round trip.
    let blob_requests = registry.requests(&format!("/v2/team/app/blobs/{b}"));
    assert_eq!(blob_requests.len(), 1);
    assert_eq!(blob_requests[0].header("authorization"), Some("Bearer t0ken"));
    assert_eq!(registry.requests(&format!("/v2/team/app/manifests/{m}")).len(), 1);
    let at_cdn = cdn.requests("/signed/blob");
    assert_eq!(at_cdn.len(), 1);
    assert_eq!(at_cdn[0].header("authorization"), None, "the registry's token does not follow the redirect to the CDN");

    let r = fetch(&proxy, "GET", &format!("/v2/team/app/blobs/{private}"), &[]).await;
    assert_ne!(r.status, 200);
    let at_cdn = cdn.requests("/signed/private");
    assert_eq!(at_cdn.len(), 1, "the CDN's challenge is not answered");
    assert_eq!(at_cdn[0].header("authorization"), None);

    // The registry stops accepting the cached token: it is dropped, and a new one fetched.
    auth.route("/token", Route::ok(br#"{"token":"n3w","expires_in":300}"#.to_vec()).header("Content-Type", "application/json"));
    let blob2 = hangar_e2e::pattern(4, 1000);
    let b2 = sha256(&blob2);
    let challenge2 = challenge.clone();
    registry.route(&format!("/v2/team/app/blobs/{b2}"), Route::ok(b"{}".to_vec()).status(401).header("WWW-Authenticate", &challenge2).when_header("authorization", "Bearer n3w", Route::ok(blob2.clone())));
    let r = fetch(&proxy, "GET", &format!("/v2/team/app/blobs/{b2}"), &[]).await;
    assert_eq!((r.status, r.body == blob2), (200, true), "{}", proxy.stderr());
    assert_eq!(auth.requests("/token").len(), 2);

    // A realm on a host that is neither the upstream's nor listed gets no request.
    let r = fetch(&proxy, "GET", &format!("/v2/unlisted/team/app/manifests/{m}"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(auth.requests("/token").len(), 2);
    assert!(proxy.metric("hangar_upstream_errors_total", &[("repository", "unlisted"), ("kind", "token")]).await >= 1.0);
}
