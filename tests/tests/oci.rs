//! Docker/OCI through Hangar: Debian's docker-registry (distribution) with token auth, a
//! token server of the test's own (openssl-made key), an image built without Docker and
//! pushed with skopeo; pulled through Hangar with skopeo, then again with the registry stopped.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use hangar_e2e::clients::run;
use hangar_e2e::services::{self};
use hangar_e2e::{Proxy, Route, Upstream};

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
/// `test/hello` for an hour.
fn make_token(dir: &Path, service: &str) -> String {
    run(Command::new("openssl").current_dir(dir).args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "auth.key", "-out", "auth.pem", "-days", "2", "-subj", "/CN=hangar-test-token"]));
    let der = Command::new("openssl").current_dir(dir).args(["x509", "-in", "auth.pem", "-outform", "DER"]).output().unwrap().stdout;
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{}"]}}"#, base64::engine::general_purpose::STANDARD.encode(&der));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = format!(
        r#"{{"iss":"hangar-test","sub":"anyone","aud":"{service}","exp":{},"nbf":{},"iat":{now},"jti":"1","access":[{{"type":"repository","name":"test/hello","actions":["pull","push"]}}]}}"#,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_proxy_with_the_token_flow_and_again_with_the_registry_stopped() {
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
    run(&mut skopeo_copy(&format!("oci:{}:v1", root.path().join("image").display()), &format!("docker://127.0.0.1:{port}/test/hello:v1")));

    let proxy_config = format!("[[repository]]\nname = \"registry\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"http://127.0.0.1:{port}/v2/\"\n");
    let proxy = Proxy::builder(&root.path().join("cache")).config(&proxy_config).start();
    for round in ["online", "registry-stopped"] {
        let out = root.path().join(format!("pulled-{round}"));
        let o = skopeo_copy(&format!("docker://{}/test/hello:v1", proxy.addr), &format!("oci:{}:v1", out.display())).output().unwrap();
        assert!(o.status.success(), "{round}: {}\nproxy: {}", String::from_utf8_lossy(&o.stderr), proxy.stderr());
        let blobs = std::fs::read_dir(out.join("blobs/sha256")).unwrap().count();
        assert_eq!(blobs, 3, "{round}: manifest, config and layer");
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "registry"), ("result", "miss")]).await >= 3.0);
            assert_eq!(proxy.metric("hangar_upstream_errors_total", &[("kind", "token")]).await, 0.0);
            drop(registry.take());
        }
    }
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[]).await, 0.0);
    assert!(token_server.hits("/token") >= 1, "the proxy fetched its own token");
}
