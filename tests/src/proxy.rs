//! Running the real `hangar-proxy` binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Where the `hangar-proxy` binary is: `$HANGAR_PROXY_BIN`, else next to this test binary's
/// `deps/` directory in the same target dir (built by `cargo build --release --bins`).
pub fn proxy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HANGAR_PROXY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let bin = dir.join("hangar-proxy");
    assert!(bin.exists(), "{} not built: run `cargo build --release --bins` first", bin.display());
    bin
}

/// The bootstrap admin credential every proxy a test starts has (`HANGAR_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "hangar-test-admin-credential";

/// The header that makes a request to the admin listener an admin's.
pub const ADMIN: (&str, &str) = ("Authorization", "Bearer hangar-test-admin-credential");

pub struct ProxyBuilder {
    /// `--allow-anonymous-read` (on unless [`ProxyBuilder::deny_by_default`]).
    anonymous_read: bool,
    listen: String,
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cache_dir: PathBuf,
    open_files: Option<u64>,
}

impl ProxyBuilder {
    /// Run the proxy with this many open files at most (`RLIMIT_NOFILE`, soft and hard).
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// No `--allow-anonymous-read`: only what the config grants is served.
    pub fn deny_by_default(mut self) -> Self {
        self.anonymous_read = false;
        self
    }

    /// A TOML config written to a file and passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Listen on `addr` instead of a port the proxy picks (for fleets whose members are a
    /// fixed list).
    pub fn listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.listen = addr.to_string();
        self
    }

    pub fn upstream(self, prefix: &str, url: &str) -> Self {
        self.arg("--upstream").arg(&format!("{prefix}={url}"))
    }

    pub fn start(self) -> Proxy {
        let mut args = vec![
            "--listen".to_string(),
            self.listen.clone(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--cache-dir".into(),
            self.cache_dir.display().to_string(),
        ];
        let config_file = self.config.as_ref().map(|text| {
            let path = self.cache_dir.with_extension("toml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        if let Some(p) = &config_file {
            args.push("--config".into());
            args.push(p.display().to_string());
        }
        if self.anonymous_read {
            args.push("--allow-anonymous-read".into());
        }
        args.extend(self.args.iter().cloned());
        let mut env = vec![("HANGAR_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string())];
        env.extend(self.env);
        Proxy::spawn(args, env, self.cache_dir, self.open_files)
    }
}

/// A running proxy; SIGKILLed on drop if still running.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub cache_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Child,
    stderr_path: PathBuf,
    open_files: Option<u64>,
}

impl Proxy {
    pub fn builder(cache_dir: &Path) -> ProxyBuilder {
        ProxyBuilder { anonymous_read: true, listen: "127.0.0.1:0".into(), config: None, args: Vec::new(), env: Vec::new(), cache_dir: cache_dir.to_path_buf(), open_files: None }
    }

    fn spawn(args: Vec<String>, env: Vec<(String, String)>, cache_dir: PathBuf, open_files: Option<u64>) -> Proxy {
        let stderr_path = cache_dir.with_extension(format!("stderr.{}", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(proxy_bin());
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(&args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn hangar-proxy");
        // The proxy prints one line once both listeners accept connections.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read ready line");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in ready line {line:?}; stderr: {}", std::fs::read_to_string(&stderr_path).unwrap_or_default()))
                .parse()
                .expect("address")
        };
        let (addr, admin) = (field("listen="), field("admin="));
        Proxy { addr, admin, cache_dir, args, env, child, stderr_path, open_files }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }

    /// Start again with the same arguments (and so the same cache dir) on new ports.
    pub fn restart(&mut self) {
        let args: Vec<String> = self.args.iter().map(|a| if a.starts_with("127.0.0.1:") { "127.0.0.1:0".into() } else { a.clone() }).collect();
        let next = Proxy::spawn(args, self.env.clone(), self.cache_dir.clone(), self.open_files);
        let old = std::mem::replace(self, next);
        drop(old);
    }

    /// Everything the proxy has logged so far. Its log is written by a thread of its own, so
    /// a line may land just after the event it describes: to assert that a line is there,
    /// use [`Proxy::wait_for_log`].
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The first log line matching `pred`, once it has been written (polling the log file,
    /// bounded by two minutes: a line that never comes fails the test).
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(line) = self.stderr().lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(std::time::Instant::now() < deadline, "no such log line in: {}", self.stderr());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = crate::get(self.admin, "/metrics").await;
        String::from_utf8(r.body).expect("utf-8 metrics")
    }

    /// Sum of a metric's samples whose labels contain every `label="value"` given.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Wait until a metric reaches `at_least`: for work the proxy finishes after the response
    /// (a background refresh), where no response marks the moment. Polls the admin endpoint;
    /// panics after 30 s so a missing event fails the test instead of hanging it.
    pub async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) {
        self.wait_for_metric_where(name, labels, &format!(">= {at_least}"), |v| v >= at_least).await
    }

    /// Wait until a metric satisfies `test` (described by `expected` in the failure message).
    pub async fn wait_for_metric_where(&self, name: &str, labels: &[(&str, &str)], expected: &str, test: impl Fn(f64) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v = self.metric(name, labels).await;
            if test(v) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{name}{labels:?} stayed at {v}, expected {expected}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}
