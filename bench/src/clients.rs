//! The `clients` scenario: real package clients run their usual job (the inputs under
//! `bench/clients/`) direct to a registry, through a cold Hangar (a new proxy on an empty
//! cache) and through the same Hangar warm. Every run starts with an empty client cache, so
//! only the proxy's cache differs. Hangar runs the shipped configuration with its upstreams
//! set to the same registries; rounds interleave direct, cold and warm so a registry's or the
//! machine's drift hits all three alike.
//!
//! Two kinds of registry: the fixture mirror (a snapshot of the jobs' real packages served by
//! nginx on loopback, [`crate::mirror`]), where the proxy's own overhead shows, and the live
//! registries this machine's clients are configured for, where the internet's round trips do.
//!
//! Upstream URLs are discovered, never written here: pip's default index, npm's configured
//! registry, the sparse index cargo has cached under `$CARGO_HOME/registry/index/`, the first
//! Debian archive in the machine's apt sources. A job whose client or registry is missing is
//! skipped with a line saying why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// One client job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Job {
    /// `pip download` of `requirements.txt` (wheels only) into an empty directory.
    Pip,
    /// `uv pip install --target` of `requirements.txt`.
    Uv,
    /// `npm install` of `package.json` (no lockfile: the packuments are resolved).
    Npm,
    /// `cargo fetch` of `Cargo.toml` (no lockfile: the index is resolved).
    Cargo,
    /// `apt-get update` and `apt-get download` of `apt-packages.txt`.
    Apt,
}

/// Every job, in the order they run.
pub const JOBS: [Job; 5] = [Job::Pip, Job::Uv, Job::Npm, Job::Cargo, Job::Apt];

impl Job {
    /// A job by its name (`pip`, `uv`, `npm`, `cargo`, `apt`).
    pub fn parse(name: &str) -> Option<Job> {
        JOBS.into_iter().find(|j| format!("{j:?}").eq_ignore_ascii_case(name))
    }
}

/// One job's result: medians over the rounds (seconds) and the ratios to direct.
#[derive(Debug, Serialize)]
pub struct ClientResult {
    pub job: Job,
    /// `mirror` or `live`.
    pub against: &'static str,
    pub direct_secs: Vec<f64>,
    pub cold_secs: Vec<f64>,
    pub warm_secs: Vec<f64>,
    pub cold_ratio: f64,
    pub warm_ratio: f64,
}

/// The registries a run goes to (see the module docs): each `None` when there is none.
pub(crate) struct Registries {
    /// PyPI's simple index URL (ending in `/`) and its file host's base URL.
    pub(crate) pypi: Option<(String, String)>,
    /// npm's registry URL, ending in `/`.
    pub(crate) npm: Option<String>,
    /// cargo's sparse index URL (ending in `/`) and its `dl`.
    pub(crate) cargo: Option<(String, String)>,
    /// A Debian archive's URI and suite.
    pub(crate) debian: Option<(String, String)>,
    /// A fixture mirror: cargo then needs crates-io replaced even when going direct.
    pub(crate) mirror: bool,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Registries {
    fn discover() -> Registries {
        let pypi = output(Command::new("python3").args(["-c", "from pip._internal.models.index import PyPI; print(PyPI.simple_url); print(PyPI.file_storage_domain)"]))
            .and_then(|o| {
                let mut l = o.lines();
                Some((format!("{}/", l.next()?.trim_end_matches('/')), format!("https://{}/", l.next()?)))
            });
        let npm = output(Command::new("npm").args(["config", "get", "registry"])).and_then(|r| {
            let r = r.lines().last()?.trim().to_string();
            r.starts_with("http").then(|| if r.ends_with('/') { r } else { r + "/" })
        });
        Registries { pypi, npm, cargo: cargo_index(), debian: debian_mirror(), mirror: false }
    }

    /// The environment the shipped configuration reads its upstreams from.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some((index, files)) = &self.pypi {
            env.extend([("HANGAR_PYPI_UPSTREAM", index.clone()), ("HANGAR_PYPI_FILES_UPSTREAM", files.clone())]);
        }
        if let Some(r) = &self.npm {
            env.push(("HANGAR_NPM_UPSTREAM", r.clone()));
        }
        if let Some((index, dl)) = &self.cargo {
            env.extend([("HANGAR_CARGO_UPSTREAM", index.clone()), ("HANGAR_CARGO_DL", dl.clone())]);
        }
        if let Some((uri, _)) = &self.debian {
            env.push(("HANGAR_DEBIAN_UPSTREAM", uri.clone()));
        }
        env
    }

    /// Why `job` cannot run here, if it cannot.
    fn missing(&self, job: Job) -> Option<&'static str> {
        let have = |c: &str| Command::new("sh").args(["-c", &format!("command -v {c}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        match job {
            Job::Pip => self.pypi.is_none().then_some("no pip index"),
            Job::Uv => if self.pypi.is_none() { Some("no pip index") } else if !have("uv") { Some("no uv") } else { None },
            Job::Npm => self.npm.is_none().then_some("no npm registry"),
            Job::Cargo => self.cargo.is_none().then_some("no sparse index cached by cargo"),
            Job::Apt => if self.debian.is_none() { Some("no Debian archive in the apt sources") } else if !have("apt-get") { Some("no apt-get") } else { None },
        }
    }
}

/// The sparse index cargo has used here and its `dl`, from its cached `config.json`.
fn cargo_index() -> Option<(String, String)> {
    let home = std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cargo")))?;
    for entry in std::fs::read_dir(home.join("registry/index")).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("config.json")) else { continue };
        let name = entry.file_name().to_string_lossy().to_string();
        let host = name.rsplit_once('-').map_or(name.as_str(), |(h, _)| h).to_string();
        let config: serde_json::Value = serde_json::from_str(&text).ok()?;
        return Some((format!("https://{host}/"), config["dl"].as_str()?.to_string()));
    }
    None
}

/// The first non-security Debian archive (URI, suite) in the apt sources (deb822 or one-line).
fn debian_mirror() -> Option<(String, String)> {
    let mut texts: Vec<String> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sources" || x == "list"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for stanza in text.split("\n\n") {
            let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                let uri = uris.split_whitespace().next()?.to_string();
                if uri.starts_with("http") && !uri.contains("security") {
                    return Some((uri, suites.split_whitespace().next()?.to_string()));
                }
            }
        }
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.first() == Some(&"deb") && w.len() >= 3 && w[1].starts_with("http") && !w[1].contains("security") {
                return Some((w[1].to_string(), w[2].to_string()));
            }
        }
    }
    None
}

/// A hangar-proxy on the shipped configuration and an empty cache, stopped when dropped.
struct Hangar {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Hangar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(keep) = std::env::var_os("HANGAR_BENCH_KEEP_LOGS") {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let _ = std::fs::create_dir_all(&keep);
            let dest = Path::new(&keep).join(format!("hangar-{}-{}.log", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            let _ = std::fs::copy(self._dir.path().join("hangar.log"), dest);
        }
    }
}

impl Hangar {
    fn start(bin: &Path, env: &[(&'static str, String)]) -> anyhow::Result<Hangar> {
        use std::io::BufRead;
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(crate::peers::shipped_config())
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log", "warn", "--cache-dir"])
            .arg(dir.path().join("cache"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            // Its log (access log included) goes to a file beside its cache, copied on exit to
            // the directory HANGAR_BENCH_KEEP_LOGS names, if it names one.
            .stderr(std::fs::File::create(dir.path().join("hangar.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lines = std::io::BufReader::new(child.stdout.take().context("proxy stdout")?).lines();
        let addr = lines
            .find_map(|l| l.ok()?.split_whitespace().find_map(|w| w.strip_prefix("listen=").map(str::to_string)))
            .context("hangar-proxy did not report ready")?;
        Ok(Hangar { child, addr, _dir: dir })
    }
}

/// The committed inputs of the jobs.
pub(crate) fn inputs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Run `job` once with an empty client cache in `scratch`, against `proxy` (its address) or
/// direct. Returns the wall time; fails with the client's output if the client fails.
pub(crate) fn run_job(job: Job, reg: &Registries, proxy: Option<&str>, scratch: &Path) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch)?;
    let input = inputs();
    let started = Instant::now();
    let mut cmd = match job {
        Job::Pip | Job::Uv => {
            let index = proxy.map_or_else(|| reg.pypi.as_ref().map(|p| p.0.clone()).unwrap_or_default(), |a| format!("http://{a}/pypi/simple/"));
            let mut c = if job == Job::Pip { Command::new("python3") } else { Command::new("uv") };
            if job == Job::Pip {
                c.args(["-m", "pip", "download", "-q", "--no-cache-dir", "--only-binary", ":all:", "-d"]);
            } else {
                c.args(["pip", "install", "-q", "--no-cache", "--python", "python3", "--target"]);
            }
            c.arg(scratch.join("out")).args(["--index-url", &index, "-r"]).arg(input.join("requirements.txt"));
            c.env("PIP_FIND_LINKS", "").env("PIP_CONFIG_FILE", "/dev/null").env("UV_NO_CONFIG", "1").env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
            c
        }
        Job::Npm => {
            std::fs::copy(input.join("package.json"), scratch.join("package.json"))?;
            let registry = proxy.map_or_else(|| reg.npm.clone().unwrap_or_default(), |a| format!("http://{a}/npm/"));
            let mut c = Command::new("npm");
            c.current_dir(scratch)
                .args(["install", "--no-audit", "--no-fund", "--no-package-lock", "--ignore-scripts", "--loglevel=error", "--registry", &registry, "--cache"])
                .arg(scratch.join("npm-cache"))
                .env("npm_config_userconfig", scratch.join(".npmrc"))
                .env("npm_config_update_notifier", "false");
            c
        }
        Job::Cargo => {
            std::fs::create_dir_all(scratch.join("project/src"))?;
            std::fs::copy(input.join("Cargo.toml"), scratch.join("project/Cargo.toml"))?;
            std::fs::write(scratch.join("project/src/lib.rs"), "")?;
            let home = scratch.join("cargo-home");
            std::fs::create_dir_all(&home)?;
            let index = match proxy {
                Some(a) => Some(format!("http://{a}/cargo/")),
                None if reg.mirror => reg.cargo.as_ref().map(|c| c.0.clone()),
                None => None,
            };
            if let Some(index) = index {
                std::fs::write(home.join("config.toml"), format!("[source.crates-io]\nreplace-with = \"hangar\"\n\n[source.hangar]\nregistry = \"sparse+{index}\"\n"))?;
            }
            let mut c = Command::new("cargo");
            c.current_dir(scratch.join("project")).args(["fetch", "--quiet"]).env("CARGO_HOME", &home).env_remove("CARGO_TARGET_DIR");
            c
        }
        Job::Apt => {
            let (uri, suite) = reg.debian.clone().unwrap_or_default();
            let archive = proxy.map_or(uri, |a| format!("http://{a}/apt/debian"));
            let conf = apt_config(scratch, &archive, &suite)?;
            let update = Command::new("apt-get").env("APT_CONFIG", &conf).args(["-qq", "update"]).output()?;
            anyhow::ensure!(update.status.success(), "apt-get update against {archive}: {}", String::from_utf8_lossy(&update.stderr));
            let packages = std::fs::read_to_string(input.join("apt-packages.txt"))?;
            let mut c = Command::new("apt-get");
            c.current_dir(scratch).env("APT_CONFIG", &conf).args(["-qq", "download"]).args(packages.split_whitespace());
            c
        }
    };
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(out.status.success(), "{job:?} ({}) failed: {}{}", proxy.unwrap_or("direct"), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(elapsed)
}

/// An APT_CONFIG whose sources, state and cache all live in `dir`, with `archive` (a Debian
/// archive URL) and `suite` as its one source, checked with Debian's archive keyring.
pub(crate) fn apt_config(dir: &Path, archive: &str, suite: &str) -> anyhow::Result<PathBuf> {
    for d in ["state/lists/partial", "cache/archives/partial", "parts", "prefs"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(dir.join("status"), "")?;
    std::fs::write(dir.join("sources.list"), format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {archive} {suite} main\n"))?;
    let conf = format!(
        "Dir::State \"{d}/state\";\nDir::State::status \"{d}/status\";\nDir::Cache \"{d}/cache\";\nDir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"{d}/parts\";\nDir::Etc::PreferencesParts \"{d}/prefs\";\nDebug::NoLocking \"1\";\nAPT::Sandbox::User \"root\";\nAcquire::Languages \"none\";\nAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n",
        d = dir.display()
    );
    let path = dir.join("apt.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run every job `rounds` times direct, cold and warm against each registry kind in `against`
/// (`mirror`, `live`); print the tables and return the rows. The fixture mirror's snapshot
/// lives in `mirror_dir` and is built there from the live registries when a part is missing.
pub fn run(proxy_bin: &Path, rounds: usize, jobs: &[Job], against: &[String], mirror_dir: &Path) -> anyhow::Result<Vec<ClientResult>> {
    let live = Registries::discover();
    let scratch = tempfile::tempdir()?;
    let mut results = Vec::new();
    for kind in against {
        let (reg, _mirror) = match kind.as_str() {
            "live" => (None, None),
            "mirror" => {
                let snapshot = crate::mirror::Snapshot::new(mirror_dir);
                for &job in jobs {
                    if snapshot.has(job) {
                        continue;
                    }
                    match live.missing(job) {
                        Some(why) => println!("{job:?}: no fixture mirror and none can be built ({why})"),
                        None => snapshot.ensure(job, &live, &scratch.path().join("build"))?,
                    }
                }
                let mirror = crate::mirror::Mirror::start(&snapshot)?;
                (Some(mirror.registries()?), Some(mirror))
            }
            other => anyhow::bail!("--clients-against takes mirror and live, not {other:?}"),
        };
        let reg = reg.as_ref().unwrap_or(&live);
        let label: &'static str = if reg.mirror { "mirror" } else { "live" };
        let env = reg.env();
        println!(
            "\n== clients against the {} registries: real clients, empty client cache each run; direct vs Hangar cold vs warm ({rounds} rounds, interleaved) ==",
            if reg.mirror { "fixture mirror's (nginx on loopback)" } else { "live" }
        );
        for &job in jobs {
            if let Some(why) = reg.missing(job) {
                println!("{job:?}: skipped ({why})");
                continue;
            }
            let run_dir = scratch.path().join("run");
            let (mut direct, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                direct.push(run_job(job, reg, None, &run_dir)?.as_secs_f64());
                let hangar = Hangar::start(proxy_bin, &env)?;
                cold.push(run_job(job, reg, Some(&hangar.addr), &run_dir)?.as_secs_f64());
                warm.push(run_job(job, reg, Some(&hangar.addr), &run_dir)?.as_secs_f64());
            }
            let (d, c, w) = (median(&direct), median(&cold), median(&warm));
            let spread = |v: &[f64]| format!("{:.2}-{:.2}", v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max));
            println!(
                "{:6} direct {d:6.2}s ({})  cold {c:6.2}s ({})  warm {w:6.2}s ({})  cold/direct {:.2}x  warm/direct {:.2}x",
                format!("{job:?}").to_lowercase(),
                spread(&direct),
                spread(&cold),
                spread(&warm),
                c / d,
                w / d
            );
            results.push(ClientResult { job, against: label, direct_secs: direct, cold_secs: cold, warm_secs: warm, cold_ratio: c / d, warm_ratio: w / d });
        }
    }
    Ok(results)
}
