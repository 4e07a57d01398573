//! Real package-manager clients, and the live registries they are configured for.
//!
//! Upstream URLs are never written in this repository: they are read from the machine's own
//! clients (pip's default index, npm's configured registry, the sparse index cargo has cached
//! under `$CARGO_HOME/registry/`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a client; panic with its output if it fails. Returns stdout and stderr together.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

/// Run a client that is expected to fail; returns its output.
pub fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{cmd:?} succeeded but should have failed:\n{text}");
    text
}

fn stdout_of(cmd: &mut Command) -> String {
    run(cmd.stderr(std::process::Stdio::null())).trim().to_string()
}

/// pip's default index and the host its files are served from, from pip's own defaults.
pub fn pypi_upstreams() -> (String, String) {
    let out = stdout_of(Command::new("python3").args([
        "-c",
        "from pip._internal.models.index import PyPI; print(PyPI.simple_url); print(PyPI.file_storage_domain)",
    ]));
    let mut lines = out.lines();
    let index = lines.next().expect("pip's index URL").trim_end_matches('/').to_string() + "/";
    let files = format!("https://{}/", lines.next().expect("pip's file host"));
    (index, files)
}

/// npm's configured registry.
pub fn npm_registry() -> String {
    let r = stdout_of(Command::new("npm").args(["config", "get", "registry"]));
    let r = r.lines().last().unwrap_or("").trim().to_string();
    if r.ends_with('/') { r } else { r + "/" }
}

/// The sparse index cargo has used on this machine and its `dl`, from the `config.json`
/// cargo caches under `$CARGO_HOME/registry/index/<host>-<hash>/`.
pub fn cargo_index() -> (String, String) {
    let home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo")
    });
    let dir = home.join("registry/index");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let Ok(text) = std::fs::read_to_string(path.join("config.json")) else { continue };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let host = name.rsplit_once('-').map_or(name.as_str(), |(h, _)| h).to_string();
        let dl = text
            .split("\"dl\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .expect("dl in cargo's cached config.json")
            .to_string();
        return (format!("https://{host}/"), dl);
    }
    panic!("no sparse index config.json under {}", dir.display());
}

/// A command for a package client with no user configuration that could send it around the
/// proxy (pip's find-links, a user .npmrc); `scratch` holds whatever config it needs.
pub fn client(program: &str, scratch: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PIP_FIND_LINKS", "")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_INPUT", "1")
        .env("UV_NO_CONFIG", "1")
        .env("npm_config_userconfig", scratch.join(".npmrc"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false");
    cmd
}

/// A wheel with `name` and `version`: a zip with the three files pip reads.
pub fn make_wheel(dir: &Path, name: &str, version: &str) -> (String, Vec<u8>) {
    let file = format!("{name}-{version}-py3-none-any.whl");
    let script = format!(
        "import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1],'w')\nd='{name}-{version}.dist-info/'\nz.writestr('{name}/__init__.py','')\nz.writestr(d+'METADATA','Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n')\nz.writestr(d+'WHEEL','Wheel-Version: 1.0\\nGenerator: hangar-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\nz.writestr(d+'RECORD','')\nz.close()\n"
    );
    let path = dir.join(&file);
    run(Command::new("python3").arg("-c").arg(script).arg(&path));
    (file, std::fs::read(&path).unwrap())
}

/// npm's integrity string (SRI, sha512) of `b`.
pub fn sri(b: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(b)))
}

/// A packument for `name` 1.0.0 whose tarball is on `registry` with the integrity of `tgz`.
pub fn packument(registry: &str, name: &str, tgz: &[u8]) -> String {
    let file = name.rsplit('/').next().unwrap();
    format!(
        r#"{{"name":"{name}","dist-tags":{{"latest":"1.0.0"}},"time":{{"1.0.0":"2020-01-01T00:00:00.000Z"}},"versions":{{"1.0.0":{{"name":"{name}","version":"1.0.0","dist":{{"tarball":"{registry}{name}/-/{file}-1.0.0.tgz","integrity":"{}"}}}}}}}}"#,
        sri(tgz)
    )
}

/// A package tarball: `package/package.json` in a gzipped tar, made with the system tar.
pub fn make_tgz(dir: &Path, name: &str) -> Vec<u8> {
    let pkg = dir.join("package");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("package.json"), format!(r#"{{"name":"{name}","version":"1.0.0"}}"#)).unwrap();
    run(Command::new("tar").current_dir(dir).args(["czf", "pkg.tgz", "package"]));
    std::fs::read(dir.join("pkg.tgz")).unwrap()
}

