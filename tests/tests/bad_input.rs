//! Hostile and malformed requests get clear errors, never a panic or an escape.

use hangar_e2e::{get, http, Proxy, Route, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_never_escape_the_repository() {
    let up = Upstream::start().await;
    up.route("/repo/ok.txt", Route::ok(b"fine".to_vec()));
    up.route("/secret", Route::ok(b"outside the repository".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    up.route("/other/private/secret", Route::ok(b"another repository's".to_vec()));
    let proxy = Proxy::builder(dir.path()).upstream("/files/", &format!("{}/repo/", up.url())).upstream("/files/private/", &format!("{}/other/private/", up.url())).start();

    assert_eq!(get(proxy.addr, "/files/ok.txt").await.body, b"fine");
    for evil in [
        "/files/../secret",
        "/files/%2e%2e/secret",
        "/files/%2E%2e/secret",
        "/files/.%2e/secret",
        "/files/x/%2e%2e/%2e%2e/secret",
        "/files/..%2fsecret",
        "/files/a%2f..%2f..%2fsecret",
        "/files/a%00b",
        "/files/%zz",
        "/files/..%5csecret",
        // A `..` that would land in another repository (here one nested in this one).
        "/files/x/../private/secret",
        "/files/private/../ok.txt",
    ] {
        let r = get(proxy.addr, evil).await;
        assert_eq!(r.status, 400, "{evil} -> {}", r.status);
        assert_eq!(r.header("content-type"), Some("application/json"), "{evil}");
    }
    assert_eq!(up.hits("/secret"), 0, "no request escaped the repository's upstream path");
    assert_eq!(up.hits("/other/private/secret"), 0, "nor reached another repository");
    assert_eq!(up.hits("/repo/private/secret"), 0, "nor a path another repository shadows");
    // RFC 3986 5.2.4: dot segments that stay inside the repository are resolved, not refused.
    for fine in ["/files/./ok.txt", "/./files/ok.txt", "/files/x/../ok.txt", "/files/%2e/x/%2E%2e/ok.txt"] {
        let r = get(proxy.addr, fine).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]), "{fine}");
    }
    assert_eq!(up.hits("/repo/ok.txt"), 1, "one cache key for every spelling");

    let unknown = get(proxy.addr, "/nowhere/x").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("content-type"), Some("application/json"));
    assert!(String::from_utf8_lossy(&unknown.body).contains("\"error\""));

    let trace = http(proxy.addr, "TRACE", "/files/ok.txt", &[]).await.unwrap().collect().await;
    assert_eq!(trace.status, 405);
    assert_eq!(trace.header("allow"), Some("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"));
    assert_eq!(http(proxy.addr, "CONNECT", "/files/ok.txt", &[]).await.unwrap().collect().await.status, 405);

    let long = format!("/files/{}", "a".repeat(10_000));
    assert_eq!(get(proxy.addr, &long).await.status, 414);
    let big = "x".repeat(40_000);
    let r = http(proxy.addr, "GET", "/files/ok.txt", &[("X-Big", &big)]).await.unwrap().collect().await;
    assert_eq!(r.status, 431);
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".to_string())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(http(proxy.addr, "GET", "/files/ok.txt", &refs).await.unwrap().collect().await.status, 431);

    // Garbage on the wire: the connection may be dropped, but the proxy stays up.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"\x00\x01\x02 garbage \r\n\r\n").await.unwrap();
    drop(s);
    assert_eq!(get(proxy.admin, "/healthz").await.status, 200);
    assert_eq!(get(proxy.addr, "/files/ok.txt").await.body, b"fine");
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
}
