//! CI workload identity (issue 16): a local OpenID Connect issuer (an RSA key pair openssl
//! makes, its discovery document and key set served on loopback), whose ID tokens the proxy
//! verifies and maps to roles by claims: valid, expired, wrong audience, wrong issuer, a claim
//! no rule matches, and a rotated key.

use std::process::Command;

use base64::Engine as _;
use hangar_e2e::{http, Proxy, Route, Upstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An RSA key made by openssl: the signing key and its JWK (`n` from openssl's modulus).
fn rsa_key(dir: &std::path::Path, kid: &str) -> (EncodingKey, Value) {
    let pem = dir.join(format!("{kid}.pem"));
    let ok = Command::new("openssl").args(["genrsa", "-out"]).arg(&pem).arg("2048").output().unwrap();
    assert!(ok.status.success(), "openssl genrsa: {}", String::from_utf8_lossy(&ok.stderr));
    let modulus = Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().unwrap();
    let hex = String::from_utf8(modulus.stdout).unwrap().trim().trim_start_matches("Modulus=").to_string();
    let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n), "e": "AQAB"});
    (EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap(), jwk)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An ID token as a CI system mints one for a job of `repository` on `git_ref`.
fn id_token(key: &EncodingKey, kid: &str, iss: &str, aud: &str, exp: i64, repository: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let claims = json!({
        "iss": iss, "aud": aud, "exp": exp, "iat": now() - 5, "nbf": now() - 5,
        "sub": format!("repo:{repository}:ref:refs/heads/main"), "repository": repository, "ref": "refs/heads/main",
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_id_tokens_are_verified_against_the_issuers_keys_and_mapped_to_roles() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Upstream::start().await;
    let iss = issuer.url();
    issuer.route("/.well-known/openid-configuration", Route::ok(json!({"issuer": iss, "jwks_uri": format!("{iss}/keys")}).to_string().into_bytes()).header("Content-Type", "application/json"));
    let (first, first_jwk) = rsa_key(dir.path(), "first");
    issuer.route("/keys", Route::ok(json!({"keys": [first_jwk]}).to_string().into_bytes()).header("Content-Type", "application/json"));

    let up = Upstream::start().await;
    up.route("/pkg/a.bin", Route::ok(b"built by acme".to_vec()));
    // The issuer's URL comes from the environment, as a shipped config would name it.
    let config = format!(
        r#"
[[repository]]
name = "internal"
prefix = "/internal/"
upstream = "{up}/"

[[auth.oidc]]
issuer = "${{TEST_OIDC_ISSUER}}"
audience = "hangar"
jwks_min_refetch = "0s"
[[auth.oidc.rule]]
claims = {{ repository = "acme/*", ref = "refs/heads/main" }}
roles = ["builder"]

[[auth.grant]]
role = "builder"
repositories = ["internal"]
actions = ["read"]
"#,
        up = up.url()
    );
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).env("TEST_OIDC_ISSUER", &iss).deny_by_default().start();
    let read = |token: String| {
        let addr = proxy.addr;
        async move { http(addr, "GET", "/internal/pkg/a.bin", &[("Authorization", &format!("Bearer {token}"))]).await.unwrap().collect().await }
    };
    let body = |r: &hangar_e2e::Response| String::from_utf8_lossy(&r.body).to_string();

    let r = read(id_token(&first, "first", &iss, "hangar", now() + 300, "acme/app")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"built by acme"[..]), "{}", body(&r));
    assert_eq!(issuer.hits("/.well-known/openid-configuration"), 1, "the key set was found by discovery");

    let r = read(id_token(&first, "first", &iss, "hangar", now() - 120, "acme/app")).await;
    assert_eq!(r.status, 401, "expired");
    assert!(body(&r).contains("expired"), "{}", body(&r));
    let r = read(id_token(&first, "first", &iss, "another-service", now() + 300, "acme/app")).await;
    assert_eq!(r.status, 401, "minted for another audience");
    assert!(body(&r).contains("audience"), "{}", body(&r));
    let r = read(id_token(&first, "first", "http://127.0.0.1:1", "hangar", now() + 300, "acme/app")).await;
    assert_eq!(r.status, 401, "an issuer not configured");
    assert!(body(&r).contains("trusts its issuer"), "{}", body(&r));
    let r = read(id_token(&first, "first", &iss, "hangar", now() + 300, "elsewhere/app")).await;
    assert_eq!(r.status, 401, "signed by the issuer, but no rule gives its claims a role: anyone's job could have it");
    assert!(body(&r).contains("no [[auth.oidc.rule]]") && body(&r).contains("repo:elsewhere/app:ref:refs/heads/main"), "named by its subject: {}", body(&r));
    assert_eq!(http(proxy.addr, "GET", "/internal/pkg/a.bin", &[]).await.unwrap().collect().await.status, 401, "no credential");

    // The issuer rotates: publishes the second key alone, then signs with it.
    let (second, second_jwk) = rsa_key(dir.path(), "second");
    issuer.route("/keys", Route::ok(json!({"keys": [second_jwk]}).to_string().into_bytes()).header("Content-Type", "application/json"));
    let r = read(id_token(&second, "second", &iss, "hangar", now() + 300, "acme/app")).await;
    assert_eq!(r.status, 200, "the new key is fetched when a token names it: {}", body(&r));
    let r = read(id_token(&first, "first", &iss, "hangar", now() + 300, "acme/app")).await;
    assert_eq!(r.status, 401, "the retired key no longer verifies");
    assert!(body(&r).contains("kid unknown"), "{}", body(&r));
    assert_eq!(up.hits("/pkg/a.bin"), 1, "refusals reached no upstream");
    assert!(!proxy.stderr().contains("eyJ"), "no token in the log");
}
