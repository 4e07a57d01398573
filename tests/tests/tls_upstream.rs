//! HTTPS upstreams are verified against the trust store, which `SSL_CERT_FILE` can replace.

use std::path::Path;
use std::process::Command;

use hangar_e2e::{get, Proxy, Route, Upstream};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throwaway CA and a server certificate for `localhost` signed by it.
fn make_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=Hangar Test CA", "-keyout", "ca.key", "-out", "ca.pem"];
    ca.extend(ec);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost", "-keyout", "srv.key", "-out", "srv.csr"];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(dir, &["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", "srv.pem", "-extfile", "ext"]);
}

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
