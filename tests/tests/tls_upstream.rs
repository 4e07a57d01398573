//! HTTPS upstreams are verified against the trust store, which `SSL_CERT_FILE` can replace.

use hangar_e2e::tls::make_pki;
use hangar_e2e::{get, Proxy, Route, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_configured_trust_store() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let read = |n: &str| std::fs::read(pki.path().join(n)).unwrap();
    let up = Upstream::start_tls(&read("srv.pem"), &read("srv.key")).await;
    up.route("/secure/file", Route::ok(b"over tls".to_vec()));
    let empty_dir = tempfile::tempdir().unwrap();

    // Trusting the test CA through SSL_CERT_FILE: fetched, verified, cached.
    let dir = tempfile::tempdir().unwrap();
    let trusted = Proxy::builder(dir.path())
        .upstream("/", &up.tls_url())
        .env("SSL_CERT_FILE", pki.path().join("ca.pem").to_str().unwrap())
        .env("SSL_CERT_DIR", empty_dir.path().to_str().unwrap())
        .start();
    let r = get(trusted.addr, "/secure/file").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"over tls"[..]));
    assert_eq!(get(trusted.addr, "/secure/file").await.cache(), "hit");
    assert_eq!(up.hits("/secure/file"), 1);

    // Without the CA the certificate is not trusted: no bytes are fetched or served.
    let dir2 = tempfile::tempdir().unwrap();
    let untrusted = Proxy::builder(dir2.path())
        .upstream("/", &up.tls_url())
        .env("SSL_CERT_FILE", "/dev/null")
        .env("SSL_CERT_DIR", empty_dir.path().to_str().unwrap())
        .start();
    let r = get(untrusted.addr, "/secure/file").await;
    assert_eq!(r.status, 502, "an unverifiable upstream certificate is an upstream failure");
    assert_eq!(up.hits("/secure/file"), 1, "no request went over the unverified connection");
    // The upstream records the failed handshake on its own task, after the proxy has already
    // given up on it: wait for that record rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while up.tls_failures() == 0 {
        assert!(std::time::Instant::now() < deadline, "the upstream never saw the rejected handshake");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
