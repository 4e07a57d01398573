//! PyPI through Hangar: pip and uv against the live index (discovered from pip's own
//! defaults), then again with the repository offline; and the format's rules against a fixture
//! upstream.

use std::path::Path;
use std::process::Command;

use hangar_e2e::clients::{client, make_wheel, pypi_upstreams, run, run_failing};
use hangar_e2e::{http, Proxy, Route, Upstream};
use sha2::Digest as _;

fn config(index: &str, files: &str) -> String {
    format!("[[repository]]\nname = \"pypi\"\nprefix = \"/pypi/\"\nformat = \"pypi\"\nupstream = \"{index}\"\nfiles_upstream = \"{files}\"\n")
}

fn pip_download(scratch: &Path, index: &str, dest: &Path, spec: &str) -> Command {
    let mut cmd = client("python3", scratch);
    cmd.args(["-m", "pip", "download", "-v", "--no-cache-dir", "--index-url", index, "-d"]).arg(dest).arg(spec);
    cmd
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_and_uv_install_through_the_proxy_and_keep_working_offline() {
    let (index, files) = pypi_upstreams();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&index, &files)).start();
    let simple = format!("http://{}/pypi/simple/", proxy.addr);
    let scratch = tempfile::tempdir().unwrap();
    let mut fetched = 0.0;
    for round in ["online", "offline"] {
        let pip_dir = scratch.path().join(format!("pip-{round}"));
        let out = run(&mut pip_download(scratch.path(), &simple, &pip_dir, "requests==2.32.3"));
        let got = files_in(&pip_dir);
        for dist in ["requests-2.32.3", "idna-", "urllib3-", "certifi-", "charset_normalizer-"] {
            assert!(got.iter().any(|f| f.starts_with(dist)), "{round}: no {dist} in {got:?}");
        }
        if round == "online" {
            assert!(out.contains(&format!("http://{}/pypi/files/sha256/", proxy.addr)), "pip downloaded through the proxy:\n{out}");
        }
        assert!(!out.contains(files.trim_end_matches('/')), "no download went around the proxy:\n{out}");

        let target = scratch.path().join(format!("uv-{round}"));
        let mut uv = client("uv", scratch.path());
        uv.args(["pip", "install", "--no-cache", "--python", "python3", "--index-url", &simple, "--target"]).arg(&target).arg("requests==2.32.3");
        run(&mut uv);
        assert!(target.join("requests/__init__.py").exists() && target.join("idna").exists(), "{round}: uv installed requests and its dependencies");

        let upstream_bytes = proxy.metric("hangar_bytes_upstream_total", &[("repository", "pypi")]).await;
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "pypi"), ("result", "miss")]).await >= 6.0);
            assert!(upstream_bytes > 100_000.0, "the files came from the upstream through the proxy");
            fetched = upstream_bytes;
            let r = http(proxy.admin, "PUT", "/offline/pypi", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await;
            assert_eq!(r.status, 200);
        } else {
            assert_eq!(upstream_bytes, fetched, "offline: nothing fetched upstream");
        }
    }
    assert!(proxy.metric("hangar_cache_results_total", &[("repository", "pypi"), ("result", "hit")]).await >= 6.0);
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fixture index at `/simple/` and file host at `/files/` on one upstream.
fn fixture_config(up: &Upstream) -> String {
    config(&format!("{}/simple/", up.url()), &format!("{}/files/", up.url()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_does_not_match_the_index_hash_fails_the_client_and_is_not_cached() {
    let scratch = tempfile::tempdir().unwrap();
    let (file, good) = make_wheel(scratch.path(), "tampered", "1.0");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    let up = Upstream::start().await;
    let page = format!("<html><body><a href=\"../../files/{file}#sha256={}\">{file}</a></body></html>", sha256_hex(&good));
    up.route("/simple/tampered/", Route::ok(page.into_bytes()).header("Content-Type", "text/html"));
    up.route(&format!("/files/{file}"), Route::ok(bad));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&fixture_config(&up)).start();
    let simple = format!("http://{}/pypi/simple/", proxy.addr);

    run_failing(&mut pip_download(scratch.path(), &simple, &scratch.path().join("a"), "tampered==1.0"));
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "pypi")]).await, 1.0);

    // The upstream is fixed: the next download is fetched again (nothing bad was kept) and works.
    up.route(&format!("/files/{file}"), Route::ok(good.clone()));
    run(&mut pip_download(scratch.path(), &simple, &scratch.path().join("b"), "tampered==1.0"));
    assert_eq!(std::fs::read(scratch.path().join("b").join(&file)).unwrap(), good);
    assert_eq!(up.hits(&format!("/files/{file}")), 2, "the tampered body was never served from cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_and_json_index_pages_are_separate_variants_linking_through_the_proxy() {
    let up = Upstream::start().await;
    let sha = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";
    let html = format!("<a href=\"{}/files/p/six-1.0.tar.gz#sha256={sha}\" data-requires-python=\"&gt;=3.8\" data-core-metadata=\"sha256={sha}\">six-1.0.tar.gz</a>", up.url());
    let json = format!("{{\"meta\":{{\"api-version\":\"1.1\"}},\"name\":\"six\",\"files\":[{{\"filename\":\"six-1.0.tar.gz\",\"url\":\"{}/files/p/six-1.0.tar.gz\",\"hashes\":{{\"sha256\":\"{sha}\"}},\"core-metadata\":{{\"sha256\":\"{sha}\"}}}}]}}", up.url());
    up.route(
        "/simple/six/",
        Route::ok(html.into_bytes())
            .header("Content-Type", "text/html")
            .when_accept("application/vnd.pypi.simple.v1+json", Route::ok(json.into_bytes()).header("Content-Type", "application/vnd.pypi.simple.v1+json")),
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&fixture_config(&up)).start();
    let base = format!("http://{}/pypi/", proxy.addr);
    let json_accept = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.1, text/html;q=0.01";
    for round in ["miss", "hit"] {
        let r = http(proxy.addr, "GET", "/pypi/simple/six/", &[("Accept", json_accept)]).await.unwrap().collect().await;
        assert_eq!((r.status, r.cache(), r.header("content-type")), (200, round, Some("application/vnd.pypi.simple.v1+json")));
        assert!(r.header("vary").is_some_and(|v| v.to_ascii_lowercase().contains("accept")));
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["files"][0]["url"], format!("{base}files/sha256/{sha}/p/six-1.0.tar.gz"));
        assert_eq!(doc["files"][0]["core-metadata"]["sha256"], sha);

        let r = http(proxy.addr, "GET", "/pypi/simple/six/", &[("Accept", "text/html")]).await.unwrap().collect().await;
        assert_eq!((r.status, r.cache(), r.header("content-type")), (200, round, Some("text/html")));
        let page = String::from_utf8(r.body).unwrap();
        assert!(page.contains(&format!("href=\"{base}files/sha256/{sha}/p/six-1.0.tar.gz#sha256={sha}\"")), "{page}");
        assert!(page.contains("data-requires-python=\"&gt;=3.8\"") && page.contains(&format!("data-core-metadata=\"sha256={sha}\"")));
    }
    assert_eq!(up.hits("/simple/six/"), 2, "one upstream request per representation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_658_metadata_files_come_from_the_file_host_next_to_their_file() {
    let scratch = tempfile::tempdir().unwrap();
    let (file, wheel) = make_wheel(scratch.path(), "six", "1.0");
    // Not the wheel's own METADATA byte for byte: what the index publishes is what is served
    // (the client checks it against the index's hash), never a file the proxy derived.
    let metadata = b"Metadata-Version: 2.1\nName: six\nVersion: 1.0\nSummary: as the index publishes it\n".to_vec();
    let up = Upstream::start().await;
    let page = format!("<a href=\"../../files/p/{file}#sha256={}\" data-core-metadata=\"sha256={}\">{file}</a>", sha256_hex(&wheel), sha256_hex(&metadata));
    up.route("/simple/six/", Route::ok(page.into_bytes()).header("Content-Type", "text/html"));
    up.route(&format!("/files/p/{file}"), Route::ok(wheel.clone()));
    up.route(&format!("/files/p/{file}.metadata"), Route::ok(metadata.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&fixture_config(&up)).start();
    // The client appends `.metadata` to the file URL it was given, digest segment and all.
    let file = format!("/pypi/files/sha256/{}/p/{file}", sha256_hex(&wheel));
    let r = http(proxy.addr, "GET", &format!("{file}.metadata"), &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.body.as_slice()), (200, metadata.as_slice()), "checked by the client against the index's metadata hash, not the file's");
    let r = http(proxy.addr, "GET", "/pypi/simple/six/", &[("Accept", "text/html")]).await.unwrap().collect().await;
    assert!(String::from_utf8_lossy(&r.body).contains(&format!("data-core-metadata=\"sha256={}\"", sha256_hex(&metadata))));
    let r = http(proxy.addr, "GET", &file, &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.body.as_slice()), (200, wheel.as_slice()));
    for _ in 0..2 {
        assert_eq!(http(proxy.addr, "GET", &file, &[]).await.unwrap().collect().await.cache(), "hit", "files are immutable");
    }
    // The wheel is stored, and its index publishes its metadata: none is derived from it.
    let r = http(proxy.addr, "GET", &format!("{file}.metadata"), &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "hit", metadata.as_slice()));
    assert_eq!(proxy.metric("hangar_derived_files_total", &[("repository", "pypi"), ("outcome", "derived")]).await, 0.0);
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "pypi")]).await, 0.0);
}

/// The proxy's access-log lines so far, once the ones for every request already answered are
/// written: a request of its own is the marker (lines are written in order).
async fn access_lines(proxy: &Proxy, marker: &str) -> Vec<String> {
    let r = http(proxy.addr, "GET", marker, &[]).await.unwrap().collect().await;
    assert_eq!(r.status, 404);
    let needle = format!("path={marker} ");
    proxy.wait_for_log(|l| l.contains(&needle)).await;
    proxy.stderr().lines().filter(|l| l.contains(" access: ")).map(str::to_string).collect()
}

/// An index that announces no core metadata (PEP 658): once a wheel is stored, the proxy
/// derives its `METADATA`, serves `<wheel>.metadata`, and the index pages it serves announce
/// it with its sha256; uv and pip then resolve from the metadata without the wheel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_derived_from_stored_wheels_is_served_and_announced() {
    let scratch = tempfile::tempdir().unwrap();
    let (file, wheel) = make_wheel(scratch.path(), "demo", "1.0");
    let metadata = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n".to_vec();
    let (sha, metadata_sha) = (sha256_hex(&wheel), sha256_hex(&metadata));
    let up = Upstream::start().await;
    let html = format!("<html><body><a href=\"../../files/{file}#sha256={sha}\">{file}</a></body></html>");
    let json = format!("{{\"meta\":{{\"api-version\":\"1.1\"}},\"name\":\"demo\",\"files\":[{{\"filename\":\"{file}\",\"url\":\"../../files/{file}\",\"hashes\":{{\"sha256\":\"{sha}\"}}}}]}}");
    up.route(
        "/simple/demo/",
        Route::ok(html.into_bytes())
            .header("Content-Type", "text/html")
            .when_accept("application/vnd.pypi.simple.v1+json", Route::ok(json.into_bytes()).header("Content-Type", "application/vnd.pypi.simple.v1+json")),
    );
    up.route(&format!("/files/{file}"), Route::ok(wheel.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&fixture_config(&up)).start();
    let simple = format!("http://{}/pypi/simple/", proxy.addr);
    let metadata_path = format!("/pypi/files/sha256/{sha}/{file}.metadata");
    let json_accept = "application/vnd.pypi.simple.v1+json";
    let announced = format!("data-core-metadata=\"sha256={metadata_sha}\"");

    // Before the wheel is stored: nothing announced, and the upstream has no metadata file.
    let page = http(proxy.addr, "GET", "/pypi/simple/demo/", &[("Accept", "text/html")]).await.unwrap().collect().await;
    assert_eq!((page.status, page.cache()), (200, "miss"));
    assert!(!String::from_utf8_lossy(&page.body).contains("data-core-metadata"));
    assert_eq!(http(proxy.addr, "GET", &metadata_path, &[]).await.unwrap().collect().await.status, 404);

    // pip downloads the wheel through the proxy, which stores it verified...
    let mut pip = pip_download(scratch.path(), &simple, &scratch.path().join("dl"), "demo==1.0");
    run(&mut pip);
    // ...and then has its core metadata (derived now if the derivation after the fill has not
    // finished), byte for byte the wheel's.
    let r = http(proxy.addr, "GET", &metadata_path, &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (200, "hit", metadata.as_slice()));
    assert_eq!(proxy.metric("hangar_derived_files_total", &[("repository", "pypi"), ("outcome", "derived")]).await, 1.0);

    // The page stored before announces nothing: it is fetched again, once, and announces it.
    let fetched = up.hits("/simple/demo/");
    let page = http(proxy.addr, "GET", "/pypi/simple/demo/", &[("Accept", "text/html")]).await.unwrap().collect().await;
    let text = String::from_utf8_lossy(&page.body).to_string();
    assert!(text.contains(&announced) && text.contains(&format!("data-dist-info-metadata=\"sha256={metadata_sha}\"")), "{text}");
    assert!(page.header("x-hangar-derived-count").is_none(), "the count is the proxy's own");
    assert_eq!(up.hits("/simple/demo/"), fetched + 1);
    let again = http(proxy.addr, "GET", "/pypi/simple/demo/", &[("Accept", "text/html")]).await.unwrap().collect().await;
    assert_eq!((again.cache(), again.body == page.body, up.hits("/simple/demo/")), ("hit", true, fetched + 1));
    let doc = http(proxy.addr, "GET", "/pypi/simple/demo/", &[("Accept", json_accept)]).await.unwrap().collect().await;
    let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(doc["files"][0]["core-metadata"]["sha256"], metadata_sha.as_str());

    // uv resolves from the metadata alone: it asks for it, not for the wheel. pip reads it
    // first too (pip 23 still downloads the wheel it would install, even for --dry-run).
    let before = access_lines(&proxy, "/pypi/simple/marker-1/").await.len();
    let input = scratch.path().join("requirements.in");
    std::fs::write(&input, "demo==1.0\n").unwrap();
    let mut uv = client("uv", scratch.path());
    uv.args(["pip", "compile", "--no-cache", "--no-header", "--python", "python3", "--index-url", &simple]).arg(&input);
    assert!(run(&mut uv).contains("demo==1.0"));
    let lines = access_lines(&proxy, "/pypi/simple/marker-2/").await;
    let asked = |lines: &[String], suffix: &str| lines.iter().filter(|l| l.contains(&format!("{file}{suffix} status="))).count();
    assert_eq!((asked(&lines[before..], ".metadata"), asked(&lines[before..], "")), (1, 0), "uv: the metadata, not the wheel: {lines:#?}");
    let before = lines.len();
    let mut pip = client("python3", scratch.path());
    pip.args(["-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-cache-dir", "--index-url", &simple, "demo==1.0"]);
    assert!(run(&mut pip).contains("demo-1.0"));
    let lines = access_lines(&proxy, "/pypi/simple/marker-3/").await;
    let first = lines[before..].iter().find(|l| l.contains(&file)).expect("pip asked for the file");
    assert!(first.contains(&format!("{file}.metadata status=200")), "pip: the metadata first: {lines:#?}");

    // The derived file outlives a restart.
    let mut proxy = proxy;
    proxy.restart();
    let r = http(proxy.addr, "GET", &metadata_path, &[]).await.unwrap().collect().await;
    assert_eq!((r.status, r.body.as_slice()), (200, metadata.as_slice()));
}
