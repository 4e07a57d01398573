//! The operator's first hour (issue 14): a port in use, check-config, the access log, error
//! bodies that say why, disabling repositories from the environment, TLS on the listener.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hangar_e2e::proxy::proxy_bin;
use hangar_e2e::services::free_port;
use hangar_e2e::tls::make_pki;
use hangar_e2e::{get, Proxy, Route, Upstream};

/// Guards against a hang; never used to wait for a condition.
const GUARD: Duration = Duration::from_secs(30);

/// Run the proxy with `args` until it exits; `None` if it is still running after `within`.
fn run_until_exit(args: &[&str], env: &[(&str, &str)], within: Duration) -> Option<(Output, Duration)> {
    let mut command = Command::new(proxy_bin());
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("spawn hangar-proxy");
    let pid = child.id();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => Some((out.expect("wait"), started.elapsed())),
        Err(_) => {
            // Still running: stop it (by its own pid) and report.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = rx.recv_timeout(GUARD);
            None
        }
    }
}

fn check_config(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hangar.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(proxy_bin()).args(["check-config", file.to_str().unwrap()]).env_remove("HANGAR_DISABLE").envs(env.iter().copied()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_port_in_use_fails_at_once_naming_the_address_and_a_second_hangar_does_not_share_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cache = tempfile::tempdir().unwrap();
    let args = ["--listen", &addr, "--admin", "127.0.0.1:0", "--cache-dir", cache.path().to_str().unwrap(), "--upstream", "/=http://127.0.0.1:9/"];
    let (out, took) = run_until_exit(&args, &[], Duration::from_secs(5)).expect("the proxy kept running on a port in use");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(stderr.contains(&format!("listen address {addr} is already in use")), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"), "no ready line without listeners");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Another Hangar on the port: refused the same way, no SO_REUSEPORT split.
    let dir = tempfile::tempdir().unwrap();
    let first = Proxy::builder(dir.path()).upstream("/", "http://127.0.0.1:9/").start();
    let cache2 = tempfile::tempdir().unwrap();
    for (listen, admin) in [(first.addr.to_string(), "127.0.0.1:0".to_string()), ("127.0.0.1:0".to_string(), first.admin.to_string())] {
        let args = ["--listen", &listen, "--admin", &admin, "--cache-dir", cache2.path().to_str().unwrap(), "--upstream", "/=http://127.0.0.1:9/"];
        let (out, _) = run_until_exit(&args, &[], Duration::from_secs(5)).expect("a second hangar started on a port in use");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let (key, clash) = if admin == "127.0.0.1:0" { ("listen", listen) } else { ("admin_listen", admin) };
        assert!(stderr.contains(&format!("{key} address {clash} is already in use")), "{stderr}");
    }
}

#[test]
fn check_config_lists_repositories_and_fails_as_startup_would() {
    let text = "[[repository]]\nname = \"files\"\nprefix = \"/files\"\nupstream = \"http://127.0.0.1:9/base/\"\n\
                [[repository]]\nname = \"py\"\nprefix = \"/py/\"\nformat = \"pypi\"\nupstream = \"http://127.0.0.1:9/simple/\"\nfiles_upstream = \"http://127.0.0.1:9/files/\"\n\
                [[repository]]\nname = \"off\"\nprefix = \"/off/\"\nupstream = \"${HANGAR_TEST_UNSET_UPSTREAM}\"\n";
    let (ok, stdout, stderr) = check_config(text, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (2 repositories enabled)"), "{stdout}");
    let line = |name: &str| stdout.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name} not listed: {stdout}")).to_string();
    let files = line("files");
    assert!(files.contains("generic") && files.contains("/files/") && files.contains("http://127.0.0.1:9/base/"), "{files}");
    let py = line("py");
    assert!(py.contains("pypi") && py.contains("/py/") && py.contains("/simple/") && py.contains("files: http://127.0.0.1:9/files/"), "{py}");
    let off = line("off");
    assert!(off.contains("/off/") && off.contains("disabled") && off.contains("HANGAR_TEST_UNSET_UPSTREAM"), "{off}");

    // A pypi repository without files_upstream fails, naming the repository.
    let (ok, _, stderr) = check_config("[[repository]]\nname = \"mypypi\"\nprefix = \"/p/\"\nformat = \"pypi\"\nupstream = \"http://127.0.0.1:9/simple/\"\n", &[]);
    assert!(!ok);
    assert!(stderr.contains("repository 'mypypi'") && stderr.contains("files_upstream"), "{stderr}");

    // An index without /simple/: valid, with a warning.
    let (ok, _, stderr) = check_config("[[repository]]\nname = \"p\"\nprefix = \"/p/\"\nformat = \"pypi\"\nupstream = \"http://127.0.0.1:9/\"\nfiles_upstream = \"http://127.0.0.1:9/f/\"\n", &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("warning: repository 'p'") && stderr.contains("/simple/"), "{stderr}");

    // Errors about a repository name it, whatever the check.
    let (ok, _, stderr) = check_config("[[repository]]\nname = \"mine\"\nprefix = \"x/\"\nupstream = \"http://127.0.0.1:9/\"\n", &[]);
    assert!(!ok && stderr.contains("repository[0].prefix") && stderr.contains("(repository 'mine')"), "{stderr}");

    // An empty config is valid, and warned of.
    let (ok, _, stderr) = check_config("", &[]);
    assert!(ok && stderr.contains("no repository is enabled"), "{stderr}");
}

#[test]
fn hangar_disable_turns_off_repositories_that_have_defaults() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/hangar.toml");
    let run = |env: &[(&str, &str)]| Command::new(proxy_bin()).args(["check-config", shipped]).envs(env.iter().copied()).output().unwrap();
    let on = String::from_utf8_lossy(&run(&[]).stdout).into_owned();
    assert!(on.lines().any(|l| l.trim_start().starts_with("central") && l.contains("->")), "{on}");
    let out = run(&[("HANGAR_DISABLE", "central,dockerhub")]);
    let off = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["central", "dockerhub"] {
        let line = off.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{off}"));
        assert!(line.contains("disabled") && line.contains("HANGAR_DISABLE"), "{line}");
    }
    let typo = run(&[("HANGAR_DISABLE", "centrall")]);
    assert!(!typo.status.success() && String::from_utf8_lossy(&typo.stderr).contains("'centrall'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_access_log_line_in_plain_text_without_colours() {
    let up = Upstream::start().await;
    up.route("/file.bin", Route::ok(b"twelve bytes".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    assert_eq!(get(proxy.addr, "/file.bin?x=1").await.status, 200);
    let line = proxy.wait_for_log(|l| l.contains("access") && l.contains("path=/file.bin?x=1")).await;
    for field in ["repository=root", "method=GET", "status=200", "cache=miss", "bytes=12", "upstream_status=200", "upstream_ms=", "client=127.0.0.1:"] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(!proxy.stderr().contains('\u{1b}'), "no ANSI escapes when stderr is not a terminal: {:?}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_in_json() {
    let up = Upstream::start().await;
    up.route("/j", Route::ok(b"json".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).arg("--log-format").arg("json").start();
    assert_eq!(get(proxy.addr, "/j").await.status, 200);
    assert_eq!(get(proxy.addr, "/j").await.cache(), "hit");
    let line = proxy.wait_for_log(|l| l.contains("\"access\"") && l.contains("\"hit\"")).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["target"], "access");
    assert_eq!(v["repository"], "root");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/j");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 4);
    assert_eq!(v["upstream_status"], "-", "a hit asks no upstream");
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
    for l in proxy.stderr().lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("every line is JSON ({e}): {l}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_repository_says_which_variable_enables_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[repository]]\nname = \"later\"\nprefix = \"/later/\"\nupstream = \"${HANGAR_TEST_LATER_UPSTREAM}\"\n\
                  [[repository]]\nname = \"fixed\"\nprefix = \"/fixed/\"\nupstream = \"http://127.0.0.1:9/\"\n";
    let proxy = Proxy::builder(dir.path()).config(config).env("HANGAR_DISABLE", "fixed").start();
    let r = get(proxy.addr, "/later/some/file").await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 404);
    assert!(body.contains("'later' is disabled") && body.contains("set HANGAR_TEST_LATER_UPSTREAM"), "{body}");
    let r = get(proxy.addr, "/fixed/x").await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 404);
    assert!(body.contains("'fixed' is disabled") && body.contains("HANGAR_DISABLE"), "{body}");
    let r = get(proxy.addr, "/elsewhere").await;
    assert!(String::from_utf8_lossy(&r.body).contains("no repository is mounted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_says_why_and_an_unreachable_upstream_is_warned_of_at_startup() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &format!("http://127.0.0.1:{port}/")).start();
    let r = get(proxy.addr, "/anything").await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 502);
    assert!(body.contains("connection refused") && body.contains(&format!("127.0.0.1:{port}")), "{body}");
    let line = proxy.wait_for_log(|l| l.contains("upstream unreachable")).await;
    assert!(line.contains("repository=root") && line.contains(&format!("127.0.0.1:{port}")), "{line}");
    // A client that sees an error has its line in the access log too.
    let access = proxy.wait_for_log(|l| l.contains("path=/anything")).await;
    assert!(access.contains("status=502") && access.contains("upstream_error=connect"), "{access}");
    // (Pingora writes its own line before the access line.) Said once, and no headers logged.
    assert!(!proxy.stderr().contains("Fail to proxy"), "{}", proxy.stderr());

    // DNS: the host is named.
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", "http://no-such-host.invalid/").start();
    let r = get(proxy.addr, "/x").await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 502);
    assert!(body.contains("DNS failure for upstream host no-such-host.invalid"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_serves_tls_with_the_configured_certificate() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let (cert, key) = (pki.path().join("srv.pem"), pki.path().join("srv.key"));
    let up = Upstream::start().await;
    up.route("/hello.txt", Route::ok(b"over https".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let proxy = Proxy::builder(dir.path()).config(&config).upstream("/", &up.url()).start();
    let url = format!("https://localhost:{}/hello.txt", proxy.addr.port());
    let curl = |extra: &[&str]| Command::new("curl").args(["-sS", "--max-time", "20", "--cacert", pki.path().join("ca.pem").to_str().unwrap()]).args(extra).arg(&url).output().unwrap();
    let out = curl(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"over https");
    let out = curl(&["-D", "-", "-o", "/dev/null"]);
    assert!(String::from_utf8_lossy(&out.stdout).to_ascii_lowercase().contains("x-hangar-cache: hit"));
    // Plain HTTP is not served on a TLS listener.
    let plain = Command::new("curl").args(["-sS", "--max-time", "20", &format!("http://127.0.0.1:{}/hello.txt", proxy.addr.port())]).output().unwrap();
    assert!(!plain.status.success() || !plain.stdout.starts_with(b"over https"));

    // Files that do not fit are refused by check-config and at startup, naming the key.
    let bad = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), pki.path().join("ca.key").display());
    let (ok, _, stderr) = check_config(&bad, &[]);
    assert!(!ok && stderr.contains("tls_key") && stderr.contains("does not fit"), "{stderr}");
    let missing = format!("tls_cert = \"{}/nope.pem\"\ntls_key = \"{}\"\n", pki.path().display(), key.display());
    let (ok, _, stderr) = check_config(&missing, &[]);
    assert!(!ok && stderr.contains("tls_cert") && stderr.contains("nope.pem"), "{stderr}");
    let (ok, _, stderr) = check_config(&format!("tls_cert = \"{}\"\n", cert.display()), &[]);
    assert!(!ok && stderr.contains("tls_key: required"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_body_is_counted_not_logged_as_an_error() {
    let up = Upstream::start().await;
    up.route("/big", Route::pattern(3, 32 << 20));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(dir.path()).upstream("/", &up.url()).start();
    let mut resp = hangar_e2e::http(proxy.addr, "GET", "/big", &[]).await.expect("response head");
    assert_eq!(resp.status, 200);
    resp.chunk().await.expect("read").expect("first bytes");
    drop(resp);
    proxy.wait_for_metric("hangar_client_disconnects_total", &[], 1.0).await;
    // And from cache: the stored copy, cut short by its client.
    let fill_done = proxy.wait_for_log(|l| l.contains("access") && l.contains("cache=miss")).await;
    assert!(fill_done.contains("path=/big"), "{fill_done}");
    assert_eq!(get(proxy.addr, "/big").await.cache(), "hit");
    let mut resp = hangar_e2e::http(proxy.addr, "GET", "/big", &[]).await.expect("response head");
    resp.chunk().await.expect("read").expect("first bytes");
    drop(resp);
    proxy.wait_for_metric("hangar_client_disconnects_total", &[], 2.0).await;
    // The log is written by a thread of its own: wait for the cut hit's access line (the last
    // line that request logs) before looking for what must not be there.
    let full = format!("bytes={}", 32u64 << 20);
    proxy.wait_for_log(|l| l.contains("access") && l.contains("cache=hit") && !l.contains(&full)).await;
    let stderr = proxy.stderr();
    assert!(!stderr.lines().any(|l| l.contains("ERROR") || l.contains("Downstream")), "a client going away is no error: {stderr}");
}
