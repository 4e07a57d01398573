//! Real services the fleet tests start: hangar-origin, Debian's redis-server, and moto's S3
//! server. Each binds port 0 (or a port it reports), and is killed when its handle drops.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn target_dir_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let bin = dir.join(name);
    assert!(bin.exists(), "{} not built: run `cargo build --release --bins` first", bin.display());
    bin
}

/// A running child process, killed on drop.
pub struct Service {
    pub addr: SocketAddr,
    child: Child,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Service {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the same command again (same port).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart");
        wait_for_port(self.addr);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until `addr` accepts connections (the service's own readiness signal when it has
/// no ready line), failing after 60 s.
pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never accepted connections");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port nobody listens on right now, for servers that cannot bind port 0 and report it.
/// (The OS picks it; the window before the server binds it is the only race, and a server
/// that loses it fails loudly at startup.)
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `hangar-origin` with this TOML config; reports its address on its ready line.
pub fn origin(config: &str, dir: &Path, envs: &[(&str, &str)]) -> Service {
    let path = dir.join("origin.toml");
    std::fs::write(&path, config).unwrap();
    let program = target_dir_bin("hangar-origin");
    let args = vec!["--config".to_string(), path.display().to_string(), "--listen".into(), "127.0.0.1:0".into()];
    let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut child = Command::new(&program)
        .args(&args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hangar-origin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().rsplit("listen=").next().unwrap().parse().unwrap_or_else(|_| panic!("ready line {line:?}"));
    // Restarts must come back on the same port.
    let args = vec!["--config".to_string(), path.display().to_string(), "--listen".into(), addr.to_string()];
    Service { addr, child, program, args, envs }
}

/// Debian's redis-server on a free port, with its files in `dir`, no persistence.
pub fn redis(dir: &Path) -> Service {
    let port = free_port();
    let program = PathBuf::from("redis-server");
    let args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir", &dir.display().to_string(), "--save", "", "--appendonly", "no"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let child = Command::new(&program).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr);
    Service { addr, child, program, args, envs: Vec::new() }
}

/// moto's S3 server (`moto_server`), from `$HANGAR_MOTO_SERVER` or the test command's venv.
pub fn moto(dir: &Path) -> Service {
    let program = std::env::var_os("HANGAR_MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/hangar-venv/bin/moto_server"));
    assert!(program.exists(), "{} missing: tests/run-all installs moto into /var/tmp/hangar-venv", program.display());
    let port = free_port();
    let args = vec!["-H".to_string(), "127.0.0.1".into(), "-p".into(), port.to_string()];
    // moto logs every request: to a file, never to a pipe nobody drains.
    let log = dir.join("moto.log");
    let mut child = Command::new(&program).args(&args).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().expect("spawn moto_server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("moto_server exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "moto_server never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let envs = Vec::new();
    Service { addr, child, program, args, envs }
}

/// A real HTTP file server (Python's `http.server`) over `dir`, on port 0.
pub fn file_server(dir: &Path) -> Service {
    let program = PathBuf::from("python3");
    let mut child = Command::new(&program)
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port: u16 = line.split(" port ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let args = vec!["-u".into(), "-m".into(), "http.server".into(), port.to_string(), "--bind".into(), "127.0.0.1".into(), "--directory".into(), dir.display().to_string()];
    Service { addr: format!("127.0.0.1:{port}").parse().unwrap(), child, program, args, envs: Vec::new() }
}

/// hangar-origin storing in a directory under `root`.
pub fn origin_on_dir(root: &Path) -> Service {
    origin_on_dir_with(root, "")
}

/// [`origin_on_dir`] with `top` added to its config's top level.
pub fn origin_on_dir_with(root: &Path, top: &str) -> Service {
    let dir = root.join("origin");
    std::fs::create_dir_all(&dir).unwrap();
    let top = with_secret(top);
    origin(&format!("{top}\nspool_dir = \"{}\"\n[store]\nkind = \"local\"\ndir = \"{}\"\n", dir.display(), dir.join("store").display()), &dir, &[])
}

/// The `x-hangar-hop` header a proxy of the fleet ([`crate::FLEET_SECRET`]) signs a `method`
/// request to origin for `target` with: origin's credential.
pub fn origin_proof(method: &str, target: &str) -> (&'static str, String) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let key = hangar_core::wire::HopKey::new(crate::FLEET_SECRET.as_bytes());
    (hangar_core::wire::HOP_HEADER, key.sign(hangar_core::wire::HopKind::Origin, method, target, now))
}

/// GET `target` from origin as a proxy does (signed).
pub async fn origin_get(origin: &Service, target: &str) -> crate::Response {
    let (name, proof) = origin_proof("GET", target);
    crate::http(origin.addr, "GET", target, &[(name, proof.as_str())]).await.expect("request").collect().await
}

/// PUT `body` to origin at `target` with `headers`, as a proxy does (signed).
pub async fn origin_put(origin: &Service, target: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let (name, proof) = origin_proof("PUT", target);
    let mut all = headers.to_vec();
    all.push((name, proof.as_str()));
    crate::put(origin.addr, target, body, &all).await
}

/// `top` with `fleet_secret = FLEET_SECRET` unless it names one: origin serves only requests
/// signed with it, so the proxies of a test need the same `fleet.secret`.
fn with_secret(top: &str) -> String {
    match top.contains("fleet_secret") {
        true => top.to_string(),
        false => format!("fleet_secret = \"{}\"\n{top}", crate::FLEET_SECRET),
    }
}

/// hangar-origin storing in bucket `bucket` of `moto`, with `top` added to its config's top
/// level and `store` to its `[store]` table.
pub fn origin_on_s3(root: &Path, moto: &Service, bucket: &str, top: &str, store: &str) -> Service {
    let dir = root.join("origin");
    std::fs::create_dir_all(&dir).unwrap();
    let top = with_secret(top);
    let config = format!(
        "spool_dir = \"{}\"\n{top}\n[store]\nkind = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"http://{}\"\npath_style = true\ncreate_bucket = true\n{store}\n",
        dir.display(),
        moto.addr
    );
    origin(&config, &dir, &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")])
}
