//! What one client may hold: idle connections are closed, headers must arrive in time however
//! slowly they trickle, and connections over the cap are refused with a 503 while the admin
//! listener and new clients keep working, under a lowered open-file limit.

use std::time::Duration;

use std::sync::Arc;

use hangar_e2e::{get, pattern, Proxy, Route, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Longest any step here waits for the proxy to act, so a missing close fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(up: &Upstream, connections: &str) -> String {
    format!("[connections]\n{connections}\n[[repository]]\nname = \"files\"\nprefix = \"/\"\nupstream = \"{}\"\n", up.url())
}

/// Read until the proxy closes the connection; what it sent before closing.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("the proxy never closed the connection") {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_trickled_headers_are_closed() {
    let up = Upstream::start().await;
    up.route("/f", Route::ok(b"ok".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "keepalive_timeout = \"1s\"\nheader_timeout = \"1s\"")).start();

    // A connection that never sends a request.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(until_closed(&mut silent).await.is_empty());

    // A connection kept alive after a request, then left idle.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    kept.write_all(b"GET /f HTTP/1.1\r\nHost: proxy\r\n\r\n").await.unwrap();
    let answer = until_closed(&mut kept).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("connection: close"), "kept alive until idle: {text}");

    // Headers trickled one byte at a time, each well within pingora's per-read timeout: the
    // deadline for the whole header closes the connection long before the header ends.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /f HTTP/1.1\r\nHost: proxy\r\nX-Slow: ").await.unwrap();
    let mut closed = false;
    let mut buf = [0u8; 1024];
    for _ in 0..150 {
        if slow.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        // Waiting for the proxy's answer is the trickle's pace.
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(n)) => {
                assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "a trickled request was served");
                closed = true;
                break;
            }
            Ok(Err(_)) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a request whose headers took 30 s to trickle in was still being read");
    assert!(proxy.metric("hangar_client_connections_closed_total", &[("reason", "idle")]).await >= 2.0);
    assert!(proxy.metric("hangar_client_connections_closed_total", &[("reason", "header_timeout")]).await >= 1.0);
    // Nothing held: every one of them is closed on the proxy's side too.
    proxy.wait_for_metric_where("hangar_client_connections", &[], "0", |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_and_admin_keeps_working() {
    let up = Upstream::start().await;
    up.route("/f", Route::ok(b"ok".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    // 256 open files: the default cap is a quarter of them.
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "")).open_files(256).start();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    proxy.wait_for_metric("hangar_client_connections", &[], 64.0).await;
    proxy.wait_for_metric("hangar_client_connections_refused_total", &[], 1.0).await;
    // The admin listener is not behind the cap.
    let health = tokio::time::timeout(PATIENCE, get(proxy.admin, "/healthz")).await.expect("admin answered");
    assert_eq!(health.status, 200);
    // A new client over the cap hears why, rather than hanging or being reset.
    let r = tokio::time::timeout(PATIENCE, get(proxy.addr, "/f")).await.expect("refused promptly");
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("max_clients"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(proxy.metric("hangar_client_connections", &[]).await, 64.0, "never more than the cap");
    // Once the idle clients go, new ones are served.
    drop(idle);
    proxy.wait_for_metric_where("hangar_client_connections", &[], "0", |v| v == 0.0).await;
    let r = get(proxy.addr, "/f").await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_longer_than_the_header_deadline_is_left_alone() {
    let up = Upstream::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let body = pattern(3, 200_000);
    up.route("/slow", Route::ok(body.clone()).hold_at(1000, gate.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up, "keepalive_timeout = \"1s\"\nheader_timeout = \"1s\"")).start();
    let addr = proxy.addr;
    let fetch = tokio::spawn(async move { get(addr, "/slow").await });
    // The body stops after its first 1000 bytes for longer than both deadlines: the request
    // is past its headers, so neither applies.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gate.add_permits(1);
    let r = tokio::time::timeout(PATIENCE, fetch).await.expect("the transfer ended").unwrap();
    assert_eq!((r.status, r.truncated, r.body == body), (200, false, true));
}
