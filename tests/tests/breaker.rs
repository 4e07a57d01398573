//! The circuit breaker measures the upstream, not one object: a URL that always fails never
//! takes its repository down, while an upstream failing everywhere is left alone quickly.

use hangar_e2e::{get, pattern, Proxy, Route, Upstream};

fn config(upstream: &str, breaker: &str) -> String {
    format!("[[repository]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n[repository.freshness]\nimmutable = [\"/good/**\"]\n{breaker}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_whose_upstream_resets_every_connection_never_opens_the_breaker() {
    let up = Upstream::start().await;
    up.route("/bad", Route::ok(b"never sent".to_vec()).close_before_head());
    for n in 1..=50 {
        up.route(&format!("/good/{n}"), Route::pattern(n as u8, 4096));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up.url(), "")).start();
    // pip retries a failed download five times in a row.
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/bad").await.status, 502);
    }
    let other = get(proxy.addr, "/good/1").await;
    assert_eq!(other.status, 200, "another path of the repository is unaffected");
    for n in 1..=50 {
        let bad = get(proxy.addr, "/bad").await;
        assert_eq!(bad.status, 502, "request {n} for /bad");
        let why = String::from_utf8_lossy(&bad.body).to_string();
        assert!(why.contains("closed the connection before answering"), "the 502 says what happened: {why}");
        let good = get(proxy.addr, &format!("/good/{n}")).await;
        assert!(good.status == 200 && good.body == pattern(n as u8, 4096), "/good/{n} while /bad fails: {}", good.status);
    }
    assert_eq!(proxy.metric("hangar_upstream_breaker_trips_total", &[("repository", "r")]).await, 0.0);
    assert_eq!(proxy.metric("hangar_upstream_breaker_state", &[("repository", "r")]).await, 0.0);
    assert_eq!(up.hits("/bad"), 110, "each request for /bad tried twice: once, then once more on a fresh connection");
    assert_eq!(proxy.metric("hangar_upstream_errors_total", &[("kind", "reset")]).await, 55.0, "one error per request, however often it was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_opens_the_breaker_and_the_gauge_shows_half_open_without_a_request() {
    let up = Upstream::start().await;
    for n in 0..10 {
        up.route(&format!("/p{n}"), Route::ok(b"down".to_vec()).status(503).header("Cache-Control", "no-store"));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config(&up.url(), "[repository.breaker]\nmin_requests = 4\nmin_paths = 4\ncooldown = \"3s\"\n")).start();
    for n in 0..4 {
        assert_eq!(get(proxy.addr, &format!("/p{n}")).await.status, 503);
    }
    assert_eq!(proxy.metric("hangar_upstream_breaker_trips_total", &[("repository", "r")]).await, 1.0, "4 failures across 4 paths");
    let r = get(proxy.addr, "/p5").await;
    assert_eq!(r.status, 503, "refused at once while open");
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("circuit breaker of repository 'r' is open until") && body.contains("GMT"), "the body says why and until when: {body}");
    assert_eq!(up.total(), 4, "the open breaker sent nothing upstream");
    // The cool-down ends with no request at all: the gauge says so on the next scrape.
    proxy.wait_for_metric_where("hangar_upstream_breaker_state", &[("repository", "r")], "2 (half-open)", |v| v == 2.0).await;
    assert_eq!(up.total(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fails_counts_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).config(&config("http://no-such-host.invalid/", "")).start();
    assert_eq!(get(proxy.addr, "/x").await.status, 502);
    let metrics = proxy.metrics().await;
    let errors: f64 = metrics.lines().filter(|l| l.starts_with("hangar_upstream_errors_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert_eq!(errors, 1.0, "{metrics}");
    assert_eq!(proxy.metric("hangar_upstream_errors_total", &[("kind", "dns")]).await, 1.0);
}
