//! RubyGems through Hangar: `gem install` and `bundle install` (Debian's ruby) against a
//! source the test builds (two gems, a legacy index from `gem generate_index` and a compact
//! index) served by a real HTTP server, then again with that server stopped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use hangar_e2e::clients::{run, run_failing};
use hangar_e2e::services;
use hangar_e2e::{http, Proxy};

fn build_gem(src: &Path, name: &str, deps: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = src.join(name);
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("lib").join(format!("{name}.rb")), format!("module {} ; end\n", name.to_uppercase())).unwrap();
    let deps: String = deps.iter().map(|(d, r)| format!("  s.add_dependency \"{d}\", \"{r}\"\n")).collect();
    std::fs::write(
        dir.join(format!("{name}.gemspec")),
        format!("Gem::Specification.new do |s|\n  s.name = \"{name}\"\n  s.version = \"1.0.0\"\n  s.summary = \"test\"\n  s.authors = [\"hangar\"]\n  s.license = \"MIT\"\n  s.files = [\"lib/{name}.rb\"]\n{deps}end\n"),
    )
    .unwrap();
    run(Command::new("gem").current_dir(&dir).arg("build").arg(format!("{name}.gemspec")));
    dir.join(format!("{name}-1.0.0.gem"))
}

/// A gem source in `repo`: two gems, `gem generate_index`'s legacy index, and a compact index
/// (`versions`, `names`, `info/<name>`) whose checksums are `checksum_of`'s.
fn make_source(root: &Path, tamper: bool) -> std::path::PathBuf {
    make_source_of(root, &[("hgdep", &[]), ("hgdemo", &[("hgdep", "~> 1.0")])], tamper.then_some("hgdep"))
}

/// A source of `gems` (name, dependencies), each at 1.0.0; `tamper` flips a byte of one gem
/// after its checksum was listed.
fn make_source_of(root: &Path, gems: &[(&str, &[(&str, &str)])], tamper: Option<&str>) -> std::path::PathBuf {
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("gems")).unwrap();
    for (name, deps) in gems {
        let g = build_gem(&root.join("src"), name, deps);
        std::fs::copy(&g, repo.join("gems").join(g.file_name().unwrap())).unwrap();
    }
    run(Command::new("gem").args(["generate_index", "--directory"]).arg(&repo));
    let deps: Vec<String> = gems.iter().map(|(n, d)| format!("\"{n}\": \"{}\"", d.iter().map(|(a, b)| format!("{a}:{b}")).collect::<Vec<_>>().join(","))).collect();
    let script = r#"
import hashlib, json, os, sys
repo = sys.argv[1]
deps = json.loads(sys.argv[2])
os.makedirs(os.path.join(repo, "info"), exist_ok=True)
lines = []
for name, d in deps.items():
    gem = open(os.path.join(repo, "gems", name + "-1.0.0.gem"), "rb").read()
    info = "---\n1.0.0 %s|checksum:%s\n" % (d, hashlib.sha256(gem).hexdigest())
    open(os.path.join(repo, "info", name), "w").write(info)
    lines.append("%s 1.0.0 %s" % (name, hashlib.md5(info.encode()).hexdigest()))
open(os.path.join(repo, "versions"), "w").write("created_at: 2026-01-01T00:00:00Z\n---\n" + "\n".join(lines) + "\n")
open(os.path.join(repo, "names"), "w").write("---\n" + "".join(n + "\n" for n in sorted(deps)))
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(&repo).arg(format!("{{{}}}", deps.join(","))));
    if let Some(name) = tamper {
        let path = repo.join(format!("gems/{name}-1.0.0.gem"));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 20] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }
    repo
}

fn config(upstream: SocketAddr) -> String {
    format!("[[repository]]\nname = \"rubygems\"\nprefix = \"/gems/\"\nformat = \"gems\"\nupstream = \"http://{upstream}/\"\n")
}

fn gem_install(scratch: &Path, source: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("gem");
    cmd.env("HOME", scratch).args(["install", "--clear-sources", "--no-document", "--source", source, "--install-dir"]).arg(dir).arg("hgdemo");
    cmd
}

fn bundle_install(scratch: &Path, source: &str, project: &Path) -> Command {
    std::fs::create_dir_all(project).unwrap();
    std::fs::write(project.join("Gemfile"), format!("source \"{source}\"\ngem \"hgdemo\"\n")).unwrap();
    let mut cmd = Command::new("bundle");
    cmd.current_dir(project)
        .env("HOME", scratch)
        .env("BUNDLE_USER_HOME", project.join(".bundle-home"))
        .env("BUNDLE_APP_CONFIG", project.join(".bundle"))
        .env("BUNDLE_PATH", project.join("vendor"))
        .arg("install");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gem_and_bundler_install_through_the_proxy_and_keep_working_with_the_source_down() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_source(root.path(), false);
    let mut upstream = Some(services::file_server(&repo));
    let proxy = Proxy::builder(&root.path().join("cache")).config(&config(upstream.as_ref().unwrap().addr)).start();
    let source = format!("http://{}/gems/", proxy.addr);
    for round in ["online", "source-stopped"] {
        let gems = root.path().join(format!("gem-{round}"));
        run(&mut gem_install(root.path(), &source, &gems));
        for g in ["hgdemo-1.0.0", "hgdep-1.0.0"] {
            assert!(gems.join("gems").join(g).exists(), "{round}: gem installed {g}");
        }
        let project = root.path().join(format!("bundle-{round}"));
        let out = run(&mut bundle_install(root.path(), &source, &project));
        assert!(out.contains("Bundle complete"), "{round}: {out}");
        assert!(project.join("Gemfile.lock").exists());
        if round == "online" {
            assert!(proxy.metric("hangar_cache_results_total", &[("repository", "rubygems"), ("result", "miss")]).await >= 4.0);
            upstream = None;
        }
    }
    drop(upstream);
    assert_eq!(proxy.metric("hangar_integrity_failures_total", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gem_that_does_not_match_its_compact_index_checksum_fails_and_is_not_cached() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_source(root.path(), true);
    let upstream = services::file_server(&repo);
    let proxy = Proxy::builder(&root.path().join("cache")).config(&config(upstream.addr)).start();
    let source = format!("http://{}/gems/", proxy.addr);
    run_failing(&mut gem_install(root.path(), &source, &root.path().join("g")));
    assert!(proxy.metric("hangar_integrity_failures_total", &[]).await >= 1.0);
    let r = http(proxy.addr, "GET", "/gems/gems/hgdep-1.0.0.gem", &[]).await.unwrap().collect().await;
    assert!(r.truncated || r.status != 200, "still refused: the tampered gem was never cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gem_whose_name_ends_in_digits_is_checked_against_its_own_info_file() {
    // `rfc-822-1.0.0.gem` is rfc-822 at 1.0.0, not rfc at 822: its checksum is in info/rfc-822.
    let root = tempfile::tempdir().unwrap();
    let repo = make_source_of(root.path(), &[("rfc-822", &[])], Some("rfc-822"));
    let upstream = services::file_server(&repo);
    let proxy = Proxy::builder(&root.path().join("cache")).config(&config(upstream.addr)).start();
    let source = format!("http://{}/gems/", proxy.addr);
    let mut install = Command::new("gem");
    install.env("HOME", root.path()).args(["install", "--clear-sources", "--no-document", "--source", &source, "--install-dir"]).arg(root.path().join("g")).arg("rfc-822");
    run_failing(&mut install);
    for _ in 0..2 {
        let r = http(proxy.addr, "GET", "/gems/gems/rfc-822-1.0.0.gem", &[]).await.unwrap().collect().await;
        assert!(r.truncated || r.status != 200, "a gem that does not match info/rfc-822 is never delivered whole, nor cached: {}", proxy.stderr());
    }
    assert!(proxy.metric("hangar_integrity_failures_total", &[("repository", "rubygems")]).await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gem_pushed_again_under_its_name_is_fetched_again_once_its_info_file_changes() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_source_of(root.path(), &[("hgdep", &[])], None);
    let upstream = services::file_server(&repo);
    let config = format!("{}[repository.freshness]\nmetadata_ttl = \"0s\"\nstale_while_revalidate = \"0s\"\n", config(upstream.addr));
    let proxy = Proxy::builder(&root.path().join("cache")).config(&config).start();
    let addr = proxy.addr;
    let get = |path: &'static str| async move { http(addr, "GET", path, &[]).await.unwrap().collect().await };
    let first = std::fs::read(repo.join("gems/hgdep-1.0.0.gem")).unwrap();
    assert_eq!(get("/gems/info/hgdep").await.status, 200);
    let r = get("/gems/gems/hgdep-1.0.0.gem").await;
    assert_eq!((r.status, r.body == first, r.cache()), (200, true, "miss"));
    assert_eq!(get("/gems/gems/hgdep-1.0.0.gem").await.cache(), "hit");

    // The gem is rebuilt (other bytes, same name) and its info file lists the new checksum.
    let rebuilt = [first.as_slice(), b"\0"].concat();
    std::fs::write(repo.join("gems/hgdep-1.0.0.gem"), &rebuilt).unwrap();
    use sha2::Digest as _;
    std::fs::write(repo.join("info/hgdep"), format!("---\n1.0.0 |checksum:{:x}\n", sha2::Sha256::digest(&rebuilt))).unwrap();
    // (Within the second the first was written in, Last-Modified would not tell them apart.)
    run(Command::new("touch").args(["-d", "+1 minute"]).arg(repo.join("info/hgdep")));
    let info = get("/gems/info/hgdep").await;
    assert_eq!((info.status, info.cache()), (200, "expired"), "the new info file, fetched in full");
    let r = get("/gems/gems/hgdep-1.0.0.gem").await;
    assert_eq!((r.status, r.body == rebuilt), (200, true), "the cached copy is not what the index lists now: {}", proxy.stderr());
    assert_eq!(get("/gems/gems/hgdep-1.0.0.gem").await.cache(), "hit");
    assert_eq!(proxy.metric("hangar_relisted_total", &[("repository", "rubygems")]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundlers_range_requests_on_versions_are_answered_from_the_cached_file() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_source(root.path(), false);
    let upstream = services::file_server(&repo);
    let proxy = Proxy::builder(&root.path().join("cache")).config(&config(upstream.addr)).start();
    let full = http(proxy.addr, "GET", "/gems/versions", &[]).await.unwrap().collect().await;
    assert_eq!(full.status, 200);
    let len = full.body.len();
    // Bundler asks for what follows the copy it has, overlapping one byte.
    let r = http(proxy.addr, "GET", "/gems/versions", &[("Range", &format!("bytes={}-", len - 10))]).await.unwrap().collect().await;
    assert_eq!((r.status, r.cache(), r.body.as_slice()), (206, "hit", &full.body[len - 10..]));
    assert_eq!(r.header("content-range"), Some(format!("bytes {}-{}/{len}", len - 10, len - 1).as_str()));
    let r = http(proxy.addr, "GET", "/gems/versions", &[("Range", &format!("bytes={}-", len + 5))]).await.unwrap().collect().await;
    assert_eq!(r.status, 416, "a range past the end: the client starts over");
}
