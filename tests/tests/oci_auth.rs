//! The Docker token flow (issue 16): Hangar's registry answers `/v2/` with a Bearer challenge
//! whose realm is its own token endpoint, and real clients (skopeo, oras-py) exchange basic
//! credentials there for a short-lived registry token. With a credential granted `read` they
//! pull; without one they get 401; with one lacking the grant, 403. The upstream is a fixture
//! registry serving one small image.

use std::process::Command;

use hangar_e2e::{http, Proxy, Route, Upstream};
use sha2::Digest as _;

const PULLER: &str = "hgr_puller-token-for-the-registry-tests";
const OTHER: &str = "hgr_other-token-for-the-registry-tests";

fn digest(b: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

fn hash(token: &str) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(token.as_bytes()))
}

/// A fixture registry with `team/app:v1`: an OCI manifest, its config and one layer.
async fn registry() -> (Upstream, usize) {
    let up = Upstream::start().await;
    // An artifact's layer, as oras pushes one: a file with its name in the title annotation.
    let layer = b"layer bytes\n".repeat(500);
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.title":"layer.txt"}}}}]}}"#,
        digest(&config),
        config.len(),
        digest(&layer),
        layer.len()
    )
    .into_bytes();
    let media = "application/vnd.oci.image.manifest.v1+json";
    let manifest_route = || Route::ok(manifest.clone()).without("Cache-Control").header("Content-Type", media).header("Docker-Content-Digest", &digest(&manifest));
    up.route("/v2/team/app/manifests/v1", manifest_route());
    up.route(&format!("/v2/team/app/manifests/{}", digest(&manifest)), manifest_route());
    up.route(&format!("/v2/team/app/blobs/{}", digest(&config)), Route::ok(config.clone()));
    up.route(&format!("/v2/team/app/blobs/{}", digest(&layer)), Route::ok(layer.clone()));
    (up, 3)
}

fn skopeo(args: &[&str]) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args(args);
    cmd
}

/// oras-py pulling `reference` into `out`, with basic credentials when given.
fn oras_pull(reference: &str, out: &std::path::Path, credentials: Option<(&str, &str)>) -> std::process::Output {
    let python = std::env::var("HANGAR_VENV_PYTHON").unwrap_or_else(|_| "/var/tmp/hangar-venv/bin/python".into());
    // `login` keeps the credentials for the pull (in a config file of the test's own).
    let script = "import json, sys, oras.client\nc = oras.client.OrasClient(insecure=True)\nif len(sys.argv) > 3: c.login(username=sys.argv[3], password=sys.argv[4], hostname=sys.argv[1].split('/')[0], tls_verify=False, config_path=sys.argv[2] + '.auth.json')\nprint(json.dumps(c.pull(target=sys.argv[1], outdir=sys.argv[2])))\n";
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script).arg(reference).arg(out);
    if let Some((user, password)) = credentials {
        cmd.arg(user).arg(password);
    }
    cmd.output().expect("python with oras: tests/run-all installs it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_oras_log_in_through_the_token_flow_and_are_refused_without_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let (up, files) = registry().await;
    let config = format!(
        r#"
[[repository]]
name = "images"
prefix = "/v2/"
format = "oci"
upstream = "{up}/v2/"

[[auth.token]]
name = "puller"
hash = "{puller}"
roles = ["puller"]

[[auth.token]]
name = "other"
hash = "{other}"
roles = ["other"]

[[auth.grant]]
role = "puller"
repositories = ["images"]
actions = ["read"]
"#,
        up = up.url(),
        puller = hash(PULLER),
        other = hash(OTHER)
    );
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).deny_by_default().start();
    let host = proxy.addr.to_string();

    // The version check without credentials: the challenge names the token endpoint.
    let r = http(proxy.addr, "GET", "/v2/", &[]).await.unwrap().collect().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(format!("Bearer realm=\"http://{host}/v2/token\",service=\"hangar\"").as_str()));

    // skopeo login: the token flow with basic credentials, then the version check with the token.
    let auth_file = dir.path().join("auth.json");
    let auth_file = auth_file.to_str().unwrap();
    let login = |password: &str| skopeo(&["login", "--tls-verify=false", "--authfile", auth_file, "-u", "ci", "-p", password, &host]).output().unwrap();
    let bad = login("hgr_not-a-token");
    assert!(!bad.status.success(), "a wrong password is refused: {}", String::from_utf8_lossy(&bad.stdout));
    let good = login(PULLER);
    assert!(good.status.success(), "{}{}\nproxy: {}", String::from_utf8_lossy(&good.stdout), String::from_utf8_lossy(&good.stderr), proxy.stderr());

    let pull = |out: &str, creds: &[&str]| {
        let mut args = vec!["copy", "--src-tls-verify=false"];
        args.extend_from_slice(creds);
        let from = format!("docker://{host}/team/app:v1");
        let to = format!("oci:{}:v1", dir.path().join(out).display());
        skopeo(&[&args[..], &[from.as_str(), to.as_str()]].concat()).output().unwrap()
    };
    let o = pull("with-login", &["--src-authfile", auth_file]);
    assert!(o.status.success(), "{}\nproxy: {}", String::from_utf8_lossy(&o.stderr), proxy.stderr());
    assert_eq!(std::fs::read_dir(dir.path().join("with-login/blobs/sha256")).unwrap().count(), files);

    let o = pull("anonymous", &["--src-no-creds"]);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success() && (err.contains("401") || err.contains("unauthorized") || err.contains("authentication required")), "no credential: {err}");
    let other = format!("ci:{OTHER}");
    let o = pull("other", &["--src-creds", &other]);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success() && (err.contains("403") || err.contains("denied")), "a token without the grant: {err}");

    // The token endpoint itself, as a client sees it.
    let r = http(proxy.addr, "GET", "/v2/token?service=hangar&scope=repository:team/app:pull", &[("Authorization", "Basic Y2k6aGdyX3dyb25n")]).await.unwrap().collect().await;
    assert_eq!(r.status, 401, "wrong basic credentials get no token");
    let basic = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("ci:{PULLER}")));
    let r = http(proxy.addr, "GET", "/v2/token?service=hangar&scope=repository:team/app:pull", &[("Authorization", basic.as_str())]).await.unwrap().collect().await;
    assert_eq!((r.status, r.header("cache-control")), (200, Some("no-store")));
    let issued: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let bearer = format!("Bearer {}", issued["token"].as_str().unwrap());
    assert!(issued["expires_in"].as_i64().is_some_and(|s| s > 0 && s <= 300), "{issued}");
    let r = http(proxy.addr, "GET", "/v2/team/app/manifests/v1", &[("Authorization", bearer.as_str()), ("Accept", "application/vnd.oci.image.manifest.v1+json")]).await.unwrap().collect().await;
    assert_eq!(r.status, 200, "the registry token reads what its credential may");
    let r = http(proxy.addr, "GET", "/v2/token?service=hangar", &[("Authorization", bearer.as_str())]).await.unwrap().collect().await;
    assert_eq!(r.status, 401, "a registry token cannot renew itself past its credential");
    let r = http(proxy.admin, "GET", "/audit", &[("Authorization", bearer.as_str())]).await.unwrap().collect().await;
    assert_eq!(r.status, 401, "nor is it a credential anywhere but the registry");

    // oras-py: basic credentials, exchanged at the same endpoint.
    let o = oras_pull(&format!("{host}/team/app:v1"), &dir.path().join("oras"), Some(("ci", PULLER)));
    assert!(o.status.success(), "oras: {}{}\nproxy: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr), proxy.stderr());
    assert_eq!(std::fs::read(dir.path().join("oras/layer.txt")).unwrap(), b"layer bytes\n".repeat(500));
    let o = oras_pull(&format!("{host}/team/app:v1"), &dir.path().join("oras-anonymous"), None);
    assert!(!o.status.success(), "oras without credentials is refused");
    assert!(up.requests("/v2/team/app/manifests/v1").iter().all(|q| q.header("authorization").is_none()), "no client credential went upstream");
}
