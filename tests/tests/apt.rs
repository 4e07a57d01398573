//! apt through Hangar: `apt-get update` and `apt-get download` against the live Debian mirror
//! (found in the machine's own apt sources) with an isolated APT_CONFIG, then again with the
//! repository offline; and Valid-Until and by-hash rules against a fixture upstream.

use std::path::{Path, PathBuf};
use std::process::Command;

use hangar_e2e::clients::run;
use hangar_e2e::{get, http, Proxy, Route, Upstream};
use sha2::Digest as _;

/// The Debian archive and a suite from the machine's apt sources (deb822 `.sources` files or
/// one-line `sources.list`), skipping the security archive.
fn debian_mirror() -> (String, String) {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for stanza in text.split("\n\n") {
            let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                let uri = uris.split_whitespace().next().unwrap().to_string();
                if stanza.lines().any(|l| l.trim_start().starts_with("Types:") && l.contains("deb")) && !uri.contains("security") && uri.starts_with("http") {
                    return (uri, suites.split_whitespace().next().unwrap().to_string());
                }
            }
        }
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"deb") && words.len() >= 3 && words[1].starts_with("http") && !words[1].contains("security") {
                return (words[1].to_string(), words[2].to_string());
            }
        }
    }
    panic!("no Debian mirror in the machine's apt sources");
}

/// An APT_CONFIG whose sources, state and cache all live in `dir`.
fn apt_config(dir: &Path, proxy: &Proxy, suite: &str) -> PathBuf {
    for d in ["state/lists/partial", "cache/archives/partial", "parts", "prefs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("status"), "").unwrap();
    std::fs::write(
        dir.join("sources.list"),
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://{}/apt/debian {suite} main\n", proxy.addr),
    )
    .unwrap();
    let conf = format!(
        "Dir::State \"{d}/state\";\nDir::State::status \"{d}/status\";\nDir::Cache \"{d}/cache\";\nDir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"{d}/parts\";\nDir::Etc::PreferencesParts \"{d}/prefs\";\nDebug::NoLocking \"1\";\nAPT::Sandbox::User \"root\";\nAcquire::Languages \"none\";\nAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\nAcquire::Retries \"0\";\n",
        d = dir.display()
    );
    let path = dir.join("apt.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn apt_get(conf: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(cwd).env("APT_CONFIG", conf).args(["-q", "-y"]).args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_get_update_and_download_through_the_proxy_and_keep_working_offline() {
    let (mirror, suite) = debian_mirror();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[[repository]]\nname = \"debian\"\nprefix = \"/apt/debian/\"\nformat = \"apt\"\nupstream = \"{mirror}/\"\n");
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).start();
    let scratch = tempfile::tempdir().unwrap();
    let mut fetched = 0.0;
    for round in ["online", "offline"] {
        let root = scratch.path().join(round);
        let conf = apt_config(&root, &proxy, &suite);
        let out = run(&mut apt_get(&conf, &root, &["update"]));
        assert!(out.contains(&format!("http://{}/apt/debian", proxy.addr)), "{round}: {out}");
        let verified = proxy.metric("hangar_verified_total", &[("repository", "debian")]).await;
        run(&mut apt_get(&conf, &root, &["download", "hostname"]));
        let debs: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".deb")).collect();
        assert_eq!(debs.len(), 1, "{round}: hostname's .deb downloaded");
        let upstream_bytes = proxy.metric("hangar_bytes_upstream_total", &[("repository", "debian")]).await;
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "debian"), ("result", "miss")]).await >= 3.0);
            assert_eq!(proxy.metric("hangar_integrity_failures_total", &[]).await, 0.0, "by-hash indexes matched their names");
            assert!(verified >= 1.0, "the indexes fetched by hash were verified");
            let after = proxy.metric("hangar_verified_total", &[("repository", "debian")]).await;
            assert_eq!(after, verified + 1.0, "the .deb was verified against the SHA256 its Packages index lists: {}", proxy.stderr());
            fetched = upstream_bytes;
            let r = http(proxy.admin, "PUT", "/offline/debian", &[("Content-Length", "0"), hangar_e2e::ADMIN]).await.unwrap().collect().await;
            assert_eq!(r.status, 200);
        } else {
            assert_eq!(upstream_bytes, fetched, "offline: nothing fetched upstream");
        }
    }
}

fn in_release(valid_until: std::time::SystemTime) -> Vec<u8> {
    let date = httpdate::fmt_http_date(valid_until).replace("GMT", "UTC");
    format!("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Test\nSuite: test\nValid-Until: {date}\nAcquire-By-Hash: yes\nSHA256:\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_release_is_never_served_past_its_valid_until() {
    let up = Upstream::start().await;
    let now = std::time::SystemTime::now();
    up.route("/dists/old/InRelease", Route::ok(in_release(now - std::time::Duration::from_secs(60))));
    up.route("/dists/soon/InRelease", Route::ok(in_release(now + std::time::Duration::from_secs(2))));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[[repository]]\nname = \"d\"\nprefix = \"/\"\nformat = \"apt\"\nupstream = \"{}/\"\n[repository.freshness]\nmetadata_ttl = \"1h\"\n", up.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();

    let r = get(proxy.addr, "/dists/old/InRelease").await;
    assert!(r.truncated || r.status != 200, "an expired InRelease from the upstream is not delivered whole");
    get(proxy.addr, "/dists/old/InRelease").await;
    assert_eq!(up.hits("/dists/old/InRelease"), 2, "and was not cached");

    let r = get(proxy.addr, "/dists/soon/InRelease").await;
    assert!(!r.truncated && r.status == 200);
    assert_eq!(get(proxy.addr, "/dists/soon/InRelease").await.cache(), "hit", "fresh for metadata_ttl");
    // Let its Valid-Until pass (the behaviour under test is wall-clock expiry), then lose the upstream.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    up.stop();
    let r = get(proxy.addr, "/dists/soon/InRelease").await;
    assert!(r.truncated || r.status != 200, "past Valid-Until: neither a hit nor a stale copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hash_objects_are_verified_against_their_names() {
    let up = Upstream::start().await;
    let good = b"Package: hostname\n".to_vec();
    let sha: String = sha2::Sha256::digest(&good).iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/dists/x/main/binary-amd64/by-hash/SHA256/{sha}");
    up.route(&path, Route::ok(b"Package: evil\n".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[[repository]]\nname = \"d\"\nprefix = \"/\"\nformat = \"apt\"\nupstream = \"{}/\"\n", up.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();
    let r = get(proxy.addr, &path).await;
    assert!(r.truncated || r.status != 200);
    up.route(&path, Route::ok(good.clone()));
    let r = get(proxy.addr, &path).await;
    assert_eq!((r.status, r.cache(), r.body == good), (200, "miss", true));
    assert_eq!(get(proxy.addr, &path).await.cache(), "hit");
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("xz").args(["-z", "-c"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("xz");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(b))
}

const OTHER_DEB: &[u8] = b"!<arch>\nanother package";

/// An InRelease listing one Packages.xz, and that index listing `deb` as the tool's package
/// and [`OTHER_DEB`].
fn archive(deb: &[u8], version: &str) -> (Vec<u8>, Vec<u8>) {
    let packages = format!(
        "Package: tool\nVersion: {version}\nFilename: pool/main/t/tool/tool_1_all.deb\nSize: {}\nSHA256: {}\n\nPackage: other\nVersion: 1\nFilename: pool/main/o/other/other_1_all.deb\nSize: {}\nSHA256: {}\n",
        deb.len(),
        sha256_hex(deb),
        OTHER_DEB.len(),
        sha256_hex(OTHER_DEB)
    );
    let packages_xz = xz(packages.as_bytes());
    let valid = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(86400)).replace("GMT", "UTC");
    let release = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Test\nSuite: t\nValid-Until: {valid}\nAcquire-By-Hash: yes\nSHA256:\n {} {} main/binary-amd64/Packages.xz\n-----BEGIN PGP SIGNATURE-----\n",
        sha256_hex(&packages_xz),
        packages_xz.len()
    );
    (release.into_bytes(), packages_xz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_by_name_follow_the_in_release_and_pool_files_are_verified_against_the_packages_index() {
    let up = Upstream::start().await;
    let deb = b"!<arch>\ndebian-binary   the tool".to_vec();
    let (release, packages_xz) = archive(&deb, "1");
    let by_hash = format!("/dists/t/main/binary-amd64/by-hash/SHA256/{}", sha256_hex(&packages_xz));
    up.route("/dists/t/InRelease", Route::ok(release).without("Cache-Control"));
    up.route(&by_hash, Route::ok(packages_xz.clone()));
    up.route("/dists/t/main/binary-amd64/Packages.xz", Route::ok(b"a newer index than the InRelease names".to_vec()));
    up.route("/pool/main/t/tool/tool_1_all.deb", Route::ok(b"!<arch>\nnot the tool".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[[repository]]\nname = \"d\"\nprefix = \"/\"\nformat = \"apt\"\nupstream = \"{}/\"\n[repository.freshness]\nmetadata_ttl = \"0s\"\nstale_while_revalidate = \"0s\"\n", up.url());
    let proxy = Proxy::builder(dir.path()).config(&config).start();

    // Asked for by name, the index is the one the InRelease names, fetched by its hash.
    assert_eq!(get(proxy.addr, "/dists/t/InRelease").await.status, 200);
    let r = get(proxy.addr, "/dists/t/main/binary-amd64/Packages.xz").await;
    assert_eq!((r.status, r.body == packages_xz), (200, true), "{}", proxy.stderr());
    assert_eq!(up.hits("/dists/t/main/binary-amd64/Packages.xz"), 0);
    assert_eq!(up.hits(&by_hash), 1);

    // The pool file the index lists must have the SHA256 it lists.
    for _ in 0..2 {
        let r = get(proxy.addr, "/pool/main/t/tool/tool_1_all.deb").await;
        assert!(r.truncated || r.status != 200, "a .deb that does not match its index is not delivered whole");
    }
    assert_eq!(up.hits("/pool/main/t/tool/tool_1_all.deb"), 2, "and never cached");
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[("repository", "d")]).await, 2.0);
    up.route("/pool/main/t/tool/tool_1_all.deb", Route::ok(deb.clone()));
    let r = get(proxy.addr, "/pool/main/t/tool/tool_1_all.deb").await;
    assert_eq!((r.status, r.body == deb, r.cache()), (200, true, "miss"));
    assert_eq!(get(proxy.addr, "/pool/main/t/tool/tool_1_all.deb").await.cache(), "hit");

    // Killed and restarted, the proxy has learned nothing yet: the index comes from cache,
    // and is read as it goes out, so the next pool file is verified too.
    let mut proxy = proxy;
    proxy.kill9();
    proxy.restart();
    up.route("/pool/main/o/other/other_1_all.deb", Route::ok(b"!<arch>\nnot that package".to_vec()));
    assert_eq!(get(proxy.addr, &by_hash).await.cache(), "hit");
    let r = get(proxy.addr, "/pool/main/o/other/other_1_all.deb").await;
    assert!(r.truncated || r.status != 200, "verified against the cached index: {}", proxy.stderr());
    up.route("/pool/main/o/other/other_1_all.deb", Route::ok(OTHER_DEB.to_vec()));
    let r = get(proxy.addr, "/pool/main/o/other/other_1_all.deb").await;
    assert_eq!((r.status, r.body.as_slice()), (200, OTHER_DEB));

    // The archive moves on: once the new InRelease is served, so is its index.
    let (release2, packages2) = archive(b"version two", "2");
    up.route("/dists/t/InRelease", Route::ok(release2).without("Cache-Control"));
    up.route(&format!("/dists/t/main/binary-amd64/by-hash/SHA256/{}", sha256_hex(&packages2)), Route::ok(packages2.clone()));
    assert_eq!(get(proxy.addr, "/dists/t/InRelease").await.status, 200);
    let r = get(proxy.addr, "/dists/t/main/binary-amd64/Packages.xz").await;
    assert_eq!((r.status, r.body == packages2), (200, true));
    assert_eq!(up.hits("/dists/t/main/binary-amd64/Packages.xz"), 0);
}

/// A flat repository (`deb [trusted=yes] URI ./`): `Release` and `Packages` at the root,
/// listing `deb` as `all/./probe_1.0_all.deb`, as some third-party repositories do.
fn flat_repository(up: &Upstream, deb: &[u8]) {
    let packages = format!(
        "Package: probe\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nFilename: all/./probe_1.0_all.deb\nSize: {}\nSHA256: {}\nDescription: probe\n\n",
        deb.len(),
        sha256_hex(deb)
    );
    let date = httpdate::fmt_http_date(std::time::SystemTime::now()).replace("GMT", "UTC");
    let release = format!("Origin: Test\nLabel: Test\nDate: {date}\nSHA256:\n {} {} Packages\n", sha256_hex(packages.as_bytes()), packages.len());
    up.route("/flat/Release", Route::ok(release.into_bytes()).without("Cache-Control"));
    up.route("/flat/Packages", Route::ok(packages.into_bytes()).without("Cache-Control"));
    up.route("/flat/all/probe_1.0_all.deb", Route::ok(deb.to_vec()));
}

/// A real `.deb` named probe, 1.0, whose description says `text` (so rebuilding it changes
/// its size and digest, not its name).
fn probe_deb(dir: &Path, text: &str) -> Vec<u8> {
    let root = dir.join(format!("probe-{}", text.len()));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(root.join("DEBIAN/control"), format!("Package: probe\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: {text}\n")).unwrap();
    let out = dir.join(format!("probe-{}.deb", text.len()));
    run(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&root).arg(&out));
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_repository_with_dot_segments_and_a_package_rebuilt_under_its_name_work_with_apt_get() {
    let up = Upstream::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let first = probe_deb(scratch.path(), "first build");
    flat_repository(&up, &first);
    let config = format!("[[repository]]\nname = \"flat\"\nprefix = \"/flat/\"\nformat = \"apt\"\nupstream = \"{}/flat/\"\n[repository.freshness]\nmetadata_ttl = \"0s\"\nstale_while_revalidate = \"0s\"\n", up.url());
    let proxy = Proxy::builder(&scratch.path().join("cache")).config(&config).start();
    let root = scratch.path().join("apt");
    let conf = apt_config(&root, &proxy, "./");
    std::fs::write(root.join("sources.list"), format!("deb [trusted=yes] http://{}/flat/ ./\n", proxy.addr)).unwrap();

    run(&mut apt_get(&conf, &root, &["update"]));
    run(&mut apt_get(&conf, &root, &["download", "probe"]));
    assert_eq!(std::fs::read(root.join("probe_1.0_all.deb")).unwrap(), first, "apt-get asked for all/./probe_1.0_all.deb and got it");
    assert_eq!(proxy.metric("hangar_verified_total", &[("repository", "flat")]).await, 1.0, "verified against the flat Packages index");

    // The repository rebuilds the package under the same name and updates its indexes.
    let second = probe_deb(scratch.path(), "second build, with a longer description");
    assert_ne!(first.len(), second.len());
    flat_repository(&up, &second);
    std::fs::remove_file(root.join("probe_1.0_all.deb")).unwrap();
    run(&mut apt_get(&conf, &root, &["update"]));
    run(&mut apt_get(&conf, &root, &["download", "probe"]));
    assert_eq!(std::fs::read(root.join("probe_1.0_all.deb")).unwrap(), second, "not the cached first build: {}", proxy.stderr());
    assert_eq!(proxy.metric("hangar_relisted_total", &[("repository", "flat")]).await, 1.0);
    assert_eq!(up.hits("/flat/all/probe_1.0_all.deb"), 2);
}
