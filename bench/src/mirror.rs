//! Fixture mirrors for the `clients` scenario: a snapshot of what each job fetches from the
//! live registries, kept on disk and served by nginx on loopback.
//!
//! Against a live registry the round trip to the internet dominates and drifts from one minute
//! to the next; against the mirror the client's own work and the proxy's overhead are what is
//! left, so a regression in the miss path shows. The snapshot holds the real packages and,
//! except for PyPI's pages, the registries' own metadata as they sent it:
//!
//! * PyPI: the wheels `pip download` chose, under simple index pages (PEP 503, with sha256
//!   fragments and relative links) that list only those wheels, since the rest are not held.
//!   Like the index reached here, they announce no PEP 658 metadata.
//! * npm: each installed package's packument as the registry sent it to npm's Accept header
//!   (every version listed, tarball URLs pointed at the mirror when served) and the installed
//!   tarballs.
//! * cargo: each locked crate's sparse index file as the index sent it, and the `.crate` files
//!   cargo downloaded, at `dl/{crate}/{version}/download`.
//! * apt: exactly the files `apt-get update` fetched (InRelease, signed by Debian, and the
//!   indexes it names by hash) and the packages' `.deb` files.
//!
//! A snapshot is built once per job (a few minutes, from the live registries) and marked
//! complete only when every file of that job has arrived; a half-built job is rebuilt.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use sha2::Digest as _;

use crate::clients::{self, Job, Registries};

/// npm's Accept header for packuments (the abbreviated form when a registry offers it).
const NPM_ACCEPT: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// The snapshot directory: `<root>/<job>/...` plus `<root>/<job>.complete`.
pub struct Snapshot {
    root: PathBuf,
}

impl Snapshot {
    pub fn new(root: &Path) -> Snapshot {
        Snapshot { root: root.to_path_buf() }
    }

    fn complete(&self, part: &str) -> PathBuf {
        self.root.join(format!("{part}.complete"))
    }

    /// The snapshot part a job reads (uv reads pip's).
    fn part(job: Job) -> &'static str {
        match job {
            Job::Pip | Job::Uv => "pypi",
            Job::Npm => "npm",
            Job::Cargo => "cargo",
            Job::Apt => "debian",
        }
    }

    /// Whether the job's part is complete.
    pub fn has(&self, job: Job) -> bool {
        self.complete(Self::part(job)).exists()
    }

    /// Build the job's part from the live registries `live`, unless it is complete. `scratch`
    /// is a directory the job may be run in.
    pub fn ensure(&self, job: Job, live: &Registries, scratch: &Path) -> anyhow::Result<()> {
        if self.has(job) {
            return Ok(());
        }
        let part = Self::part(job);
        let dir = self.root.join(part);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        println!("{part}: building the fixture mirror in {} from the live registry", dir.display());
        match job {
            Job::Pip | Job::Uv => build_pypi(&dir, live, scratch),
            Job::Npm => build_npm(&dir, live, scratch),
            Job::Cargo => build_cargo(&dir, live, scratch),
            Job::Apt => build_debian(&dir, live, scratch),
        }
        .with_context(|| format!("building the {part} fixture mirror (from the live registry)"))?;
        std::fs::write(self.complete(part), "")?;
        Ok(())
    }
}

/// Fetch `(url, destination)` pairs with one curl (parallel, retried), each to a `.part` file
/// renamed into place only once whole.
fn fetch_all(files: &[(String, PathBuf)], accept: Option<&str>) -> anyhow::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut config = String::new();
    for (url, dest) in files {
        std::fs::create_dir_all(dest.parent().context("destination has a parent")?)?;
        let part = part_path(dest);
        config.push_str(&format!("url = \"{url}\"\noutput = \"{}\"\n", part.display()));
    }
    let mut cmd = Command::new("curl");
    cmd.args(["-fsS", "--no-progress-meter", "--retry", "3", "--parallel", "--parallel-max", "8", "--config", "-"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let mut child = cmd.stdin(Stdio::piped()).spawn().context("starting curl")?;
    child.stdin.take().context("curl stdin")?.write_all(config.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("curl exited with {status} fetching {} files", files.len());
    }
    for (_, dest) in files {
        std::fs::rename(part_path(dest), dest)?;
    }
    Ok(())
}

fn part_path(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", dest.display()))
}

/// PEP 503 normalised project name of a wheel file name (`PyYAML-6.0.2-...` → `pyyaml`).
fn wheel_project(file: &str) -> Option<String> {
    let name = file.split('-').next().filter(|n| !n.is_empty())?;
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    Some(out)
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn build_pypi(dir: &Path, live: &Registries, scratch: &Path) -> anyhow::Result<()> {
    clients::run_job(Job::Pip, live, None, scratch)?;
    let mut projects: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    std::fs::create_dir_all(dir.join("files"))?;
    for entry in std::fs::read_dir(scratch.join("out"))? {
        let path = entry?.path();
        let file = path.file_name().and_then(|f| f.to_str()).context("wheel file name")?.to_string();
        let project = wheel_project(&file).with_context(|| format!("no project name in {file}"))?;
        let sha = sha256_file(&path)?;
        std::fs::copy(&path, dir.join("files").join(&file))?;
        projects.entry(project).or_default().push((file, sha));
    }
    anyhow::ensure!(!projects.is_empty(), "pip downloaded nothing");
    for (project, files) in &projects {
        let links: String = files.iter().map(|(f, sha)| format!("<a href=\"../../files/{f}#sha256={sha}\">{f}</a><br/>\n")).collect();
        let page = format!("<!DOCTYPE html>\n<html><head><title>Links for {project}</title></head><body>\n<h1>Links for {project}</h1>\n{links}</body></html>\n");
        std::fs::create_dir_all(dir.join("simple").join(project))?;
        std::fs::write(dir.join("simple").join(project).join("index.html"), page)?;
    }
    Ok(())
}

/// npm's packument path segment for a package name (`@scope/name` → `@scope%2fname`).
fn npm_escape(name: &str) -> String {
    name.replacen('/', "%2f", 1)
}

fn build_npm(dir: &Path, live: &Registries, scratch: &Path) -> anyhow::Result<()> {
    let registry = live.npm.clone().context("no npm registry")?;
    clients::run_job(Job::Npm, live, None, scratch)?;
    let lock: serde_json::Value = serde_json::from_slice(&std::fs::read(scratch.join("node_modules/.package-lock.json"))?)?;
    let mut installed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, entry) in lock["packages"].as_object().context("no packages in npm's hidden lockfile")? {
        let Some(path_name) = key.rsplit_once("node_modules/").map(|(_, n)| n) else { continue };
        let name = entry["name"].as_str().unwrap_or(path_name);
        let version = entry["version"].as_str().context("installed package without version")?;
        installed.entry(name.to_string()).or_default().insert(version.to_string());
    }
    let meta = dir.join("meta");
    let packuments: Vec<(String, PathBuf)> = installed.keys().map(|n| (format!("{registry}{}", npm_escape(n)), meta.join(format!("{n}.json")))).collect();
    fetch_all(&packuments, Some(NPM_ACCEPT))?;
    let mut tarballs = Vec::new();
    for (name, versions) in &installed {
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(meta.join(format!("{name}.json")))?)?;
        for v in versions {
            let url = doc["versions"][v]["dist"]["tarball"].as_str().with_context(|| format!("no tarball for {name}@{v}"))?;
            let rel = url.strip_prefix(&registry).with_context(|| format!("tarball {url} is not under the registry"))?;
            tarballs.push((url.to_string(), dir.join("files").join(rel)));
        }
    }
    fetch_all(&tarballs, None)?;
    std::fs::write(dir.join("registry"), &registry)?;
    Ok(())
}

/// The path of a crate's file in a sparse index (the cargo book, "Index files").
fn cargo_index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.len() {
        1 => format!("1/{n}"),
        2 => format!("2/{n}"),
        3 => format!("3/{}/{n}", &n[..1]),
        _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
    }
}

fn build_cargo(dir: &Path, live: &Registries, scratch: &Path) -> anyhow::Result<()> {
    let (index, _) = live.cargo.clone().context("no sparse index")?;
    clients::run_job(Job::Cargo, live, None, scratch)?;
    let lock: toml::Value = toml::from_str(&std::fs::read_to_string(scratch.join("project/Cargo.lock"))?)?;
    let cache = std::fs::read_dir(scratch.join("cargo-home/registry/cache"))?.next().context("cargo cached no crates")??.path();
    let mut names = BTreeSet::new();
    for package in lock.get("package").and_then(|p| p.as_array()).context("no packages in Cargo.lock")? {
        let source = package.get("source").and_then(|s| s.as_str()).unwrap_or("");
        if !(source.starts_with("registry+") || source.starts_with("sparse+")) {
            continue;
        }
        let field = |k: &str| package.get(k).and_then(|v| v.as_str()).with_context(|| format!("a locked package without {k}"));
        let (name, version) = (field("name")?, field("version")?);
        let dest = dir.join("dl").join(name).join(version).join("download");
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(cache.join(format!("{name}-{version}.crate")), &dest).with_context(|| format!("copying {name} {version} from cargo's cache"))?;
        names.insert(name.to_string());
    }
    let files: Vec<(String, PathBuf)> = names.iter().map(|n| (format!("{index}{}", cargo_index_path(n)), dir.join("index").join(cargo_index_path(n)))).collect();
    fetch_all(&files, None)
}

/// A URL path as the file a server maps it to (`%2b` → `+`).
fn decoded(rel: &str) -> anyhow::Result<String> {
    Ok(percent_encoding::percent_decode_str(rel).decode_utf8()?.into_owned())
}

fn build_debian(dir: &Path, live: &Registries, scratch: &Path) -> anyhow::Result<()> {
    let (uri, suite) = live.debian.clone().context("no Debian archive")?;
    let uri = uri.trim_end_matches('/').to_string();
    let prefix = uri.splitn(4, '/').nth(3).map_or(String::from("/"), |p| format!("/{p}/"));
    let _ = std::fs::remove_dir_all(scratch);
    let conf = clients::apt_config(scratch, &uri, &suite)?;
    let update = Command::new("apt-get")
        .env("APT_CONFIG", &conf)
        .args(["-qq", "update", "-o", "Debug::Acquire::http=1", "-o", "Debug::Acquire::https=1"])
        .output()?;
    anyhow::ensure!(update.status.success(), "apt-get update against {uri}: {}", String::from_utf8_lossy(&update.stderr));
    let log = format!("{}{}", String::from_utf8_lossy(&update.stdout), String::from_utf8_lossy(&update.stderr));
    let mut files = Vec::new();
    for line in log.lines() {
        let Some(path) = line.strip_prefix("GET ").and_then(|l| l.split_whitespace().next()) else { continue };
        let rel = path.strip_prefix(&prefix).with_context(|| format!("apt fetched {path}, outside {prefix}"))?;
        files.push((format!("{uri}/{rel}"), dir.join(decoded(rel)?)));
    }
    anyhow::ensure!(files.iter().any(|(u, _)| u.ends_with("Release")), "no Release file in apt's log (is Debug::Acquire::http honoured?)");
    let packages = std::fs::read_to_string(clients::inputs().join("apt-packages.txt"))?;
    let uris = Command::new("apt-get").env("APT_CONFIG", &conf).args(["-qq", "--print-uris", "download"]).args(packages.split_whitespace()).output()?;
    anyhow::ensure!(uris.status.success(), "apt-get --print-uris download: {}", String::from_utf8_lossy(&uris.stderr));
    for line in String::from_utf8_lossy(&uris.stdout).lines() {
        let Some(url) = line.split('\'').nth(1) else { continue };
        let rel = url.strip_prefix(&format!("{uri}/")).with_context(|| format!("package {url} is not under {uri}"))?;
        files.push((url.to_string(), dir.join(decoded(rel)?)));
    }
    // apt may ask for one file twice (a retry, a by-hash and a plain name for one index).
    files.sort();
    files.dedup();
    fetch_all(&files, None)?;
    std::fs::write(dir.join("suite"), &suite)?;
    Ok(())
}

/// nginx serving a snapshot on a loopback port, with the documents that name their own
/// address (npm packuments, cargo's `config.json`) written for that port. Stopped when
/// dropped.
pub struct Mirror {
    child: Child,
    base: String,
    snapshot: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // nginx's master takes its workers down on TERM (on KILL they would be left running).
        // SAFETY: signalling a child process this struct owns and has not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Mirror {
    pub fn start(snapshot: &Snapshot) -> anyhow::Result<Mirror> {
        let dir = tempfile::Builder::new().prefix("hangar-bench-mirror-").tempdir_in("/var/tmp")?;
        let port = crate::peers::free_port()?;
        let base = format!("http://127.0.0.1:{port}/");
        let d = dir.path();
        let s = &snapshot.root;
        if snapshot.complete("npm").exists() {
            let registry = std::fs::read_to_string(s.join("npm/registry"))?;
            let mine = format!("{base}npm/");
            let meta = s.join("npm/meta");
            let mut stack = vec![meta.clone()];
            while let Some(p) = stack.pop() {
                for e in std::fs::read_dir(&p)?.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let out = d.join("npm-meta").join(path.strip_prefix(&meta)?);
                    std::fs::create_dir_all(out.parent().context("parent")?)?;
                    std::fs::write(out, std::fs::read_to_string(&path)?.replace(&registry, &mine))?;
                }
            }
        }
        std::fs::write(d.join("cargo-config.json"), format!("{{\"dl\":\"{base}cargo/dl\"}}"))?;
        let conf = format!(
            "user root;\nworker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy_tmp;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n\
                 location /pypi/ {{ alias {s}/pypi/; index index.html; }}\n\
                 location ~ ^/npm/((@[^/]+/)?[^/@]+)$ {{ default_type application/json; alias {d}/npm-meta/$1.json; }}\n\
                 location /npm/ {{ alias {s}/npm/files/; }}\n\
                 location = /cargo/index/config.json {{ default_type application/json; alias {d}/cargo-config.json; }}\n\
                 location /cargo/ {{ default_type text/plain; alias {s}/cargo/; }}\n\
                 location /debian/ {{ alias {s}/debian/; }}\n\
             }}\n}}\n",
            d = d.display(),
            s = s.display(),
        );
        std::fs::write(d.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx for the fixture mirror (apt-get install nginx)")?;
        // Owned before it is waited for, so a mirror that never listens is still stopped.
        let mut mirror = Mirror { child, base, snapshot: s.clone(), _dir: dir };
        crate::peers::wait_listening(format!("127.0.0.1:{port}").parse()?, &mut mirror.child, "nginx (fixture mirror)")?;
        Ok(mirror)
    }

    /// The mirror's registries, for the parts of the snapshot that are complete.
    pub fn registries(&self) -> anyhow::Result<Registries> {
        let done = |part: &str| self.snapshot.join(format!("{part}.complete")).exists();
        let b = &self.base;
        Ok(Registries {
            pypi: done("pypi").then(|| (format!("{b}pypi/simple/"), format!("{b}pypi/files/"))),
            npm: done("npm").then(|| format!("{b}npm/")),
            cargo: done("cargo").then(|| (format!("{b}cargo/index/"), format!("{b}cargo/dl"))),
            debian: match done("debian") {
                true => Some((format!("{b}debian"), std::fs::read_to_string(self.snapshot.join("debian/suite"))?)),
                false => None,
            },
            mirror: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_file_names_give_normalised_projects() {
        assert_eq!(wheel_project("PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl").as_deref(), Some("pyyaml"));
        assert_eq!(wheel_project("charset_normalizer-3.4.0-py3-none-any.whl").as_deref(), Some("charset-normalizer"));
        assert_eq!(wheel_project("zope.interface-7.1-py3-none-any.whl").as_deref(), Some("zope-interface"));
        assert_eq!(wheel_project("-1.0-py3-none-any.whl"), None);
    }

    #[test]
    fn sparse_index_paths_follow_the_cargo_book() {
        assert_eq!(cargo_index_path("a"), "1/a");
        assert_eq!(cargo_index_path("cc"), "2/cc");
        assert_eq!(cargo_index_path("syn"), "3/s/syn");
        assert_eq!(cargo_index_path("Serde_json"), "se/rd/serde_json");
    }

    #[test]
    fn scoped_npm_names_escape_their_slash() {
        assert_eq!(npm_escape("@eslint/js"), "@eslint%2fjs");
        assert_eq!(npm_escape("lodash"), "lodash");
    }
}
