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

/// An HTTPS upstream that offers HTTP/2 is spoken to in HTTP/2: concurrent misses share one
/// connection (and one handshake) instead of opening one each. `upstream_http2 = false` keeps
/// the repository on HTTP/1.1, which this HTTP/2-only upstream then refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_that_offer_http2_get_concurrent_misses_over_one_connection() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let read = |n: &str| std::fs::read(pki.path().join(n)).unwrap();
    let up = hangar_e2e::h2_upstream::H2Upstream::start(&read("srv.pem"), &read("srv.key")).await;
    let paths: Vec<String> = (0..8).map(|i| format!("/h2/file-{i}")).collect();
    for p in &paths {
        up.route(p, format!("body of {p}").as_bytes());
    }
    let empty_dir = tempfile::tempdir().unwrap();
    let ca = pki.path().join("ca.pem");
    let start = |dir: &std::path::Path, http2: bool| {
        Proxy::builder(dir)
            .config(&format!("[[repository]]\nname = \"h2\"\nprefix = \"/\"\nupstream = \"{}\"\nupstream_http2 = {http2}\n", up.url()))
            .env("SSL_CERT_FILE", ca.to_str().unwrap())
            .env("SSL_CERT_DIR", empty_dir.path().to_str().unwrap())
            .start()
    };

    let dir = tempfile::tempdir().unwrap();
    let proxy = start(dir.path(), true);
    // A first request opens the connection; the rest, at once, ride on it.
    let first = get(proxy.addr, &paths[0]).await;
    assert_eq!((first.status, first.body.as_slice()), (200, format!("body of {}", paths[0]).as_bytes()));
    let rest = futures_join(proxy.addr, &paths[1..]).await;
    for (p, r) in paths[1..].iter().zip(&rest) {
        assert_eq!((r.status, r.body.as_slice()), (200, format!("body of {p}").as_bytes()), "{p}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), paths.len(), "one upstream request per object: {seen:?}");
    assert!(seen.iter().all(|(_, conn)| *conn == 0), "every request on the first connection: {seen:?}");
    assert_eq!(get(proxy.addr, &paths[3]).await.cache(), "hit", "stored as from any upstream");
    drop(proxy);

    // Kept on HTTP/1.1: no protocol in common with this upstream, so no response at all.
    let dir2 = tempfile::tempdir().unwrap();
    let h1_only = start(dir2.path(), false);
    assert_eq!(get(h1_only.addr, &paths[0]).await.status, 502);
    assert!(up.refused() >= 1, "the HTTP/1.1-only handshake was refused");
    assert_eq!(up.seen().len(), paths.len(), "nothing reached the upstream over HTTP/1.1");
}

/// GETs of `paths` through the proxy, all at once.
async fn futures_join(addr: std::net::SocketAddr, paths: &[String]) -> Vec<hangar_e2e::client::Response> {
    let tasks: Vec<_> = paths.iter().map(|p| {
        let p = p.clone();
        tokio::spawn(async move { get(addr, &p).await })
    }).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
