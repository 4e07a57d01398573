//! The caches under test, each started pinned to CPU 0 in front of the same origin.
//!
//! Each runs as its operator would run it for this job: nginx with `proxy_cache` (one worker,
//! `sendfile` on or off, its default access log to a file), Varnish with malloc storage (one
//! thread pool; it logs to shared memory), and hangar-proxy on the shipped configuration (one
//! worker thread, its access log to a file). Disk budgets are the same for all.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    #[serde(rename = "hangar")]
    Hangar,
    /// Another hangar-proxy binary (`--baseline-bin`): the build a change is measured against.
    #[serde(rename = "hangar-baseline")]
    HangarBaseline,
    #[serde(rename = "nginx-sendfile")]
    NginxSendfile,
    #[serde(rename = "nginx")]
    Nginx,
    #[serde(rename = "varnish")]
    Varnish,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hangar => "hangar",
            Kind::HangarBaseline => "hangar-baseline",
            Kind::NginxSendfile => "nginx-sendfile",
            Kind::Nginx => "nginx",
            Kind::Varnish => "varnish",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Hangar, Kind::HangarBaseline, Kind::NginxSendfile, Kind::Nginx, Kind::Varnish].into_iter().find(|k| k.name() == s)
    }

    /// Whether this is a hangar-proxy (the build under test or its baseline).
    pub fn is_hangar(self) -> bool {
        matches!(self, Kind::Hangar | Kind::HangarBaseline)
    }
}

/// Sizes every cache gets.
#[derive(Debug, Clone, Copy)]
pub struct CacheSize {
    /// Disk (nginx, hangar) or total storage (varnish malloc) budget.
    pub storage_bytes: u64,
    /// Hangar's memory tier and its object limit, in bytes; `None` keeps the shipped
    /// configuration's values (what an operator who changes nothing runs).
    pub memory: Option<(u64, u64)>,
}

/// hangar-proxy's configuration for a bench run: the shipped file (`config/hangar.toml`) with
/// its repositories replaced by one in front of the bench origin, and only what a bench must
/// change changed: cache directory and size, `fsync = false` (nginx and Varnish do not fsync),
/// no free-space reserve, and the memory tier when `size.memory` says so.
fn hangar_config(shipped: &Path, cache_dir: &Path, size: CacheSize, origin: SocketAddr) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(shipped).with_context(|| format!("reading {}", shipped.display()))?;
    let mut conf: toml::Table = text.parse().with_context(|| format!("parsing {}", shipped.display()))?;
    for fleet_only in ["repository", "group", "fleet", "origin", "tls_cert", "tls_key"] {
        conf.remove(fleet_only);
    }
    let cache = conf.entry("cache").or_insert_with(|| toml::Value::Table(Default::default()));
    let cache = cache.as_table_mut().context("[cache] is not a table")?;
    cache.insert("dir".into(), cache_dir.display().to_string().into());
    cache.insert("disk_bytes".into(), (size.storage_bytes as i64).into());
    cache.insert("fsync".into(), false.into());
    cache.insert("min_free_disk_bytes".into(), 0.into());
    if let Some((memory, max_object)) = size.memory {
        cache.insert("memory_bytes".into(), (memory as i64).into());
        cache.insert("memory_max_object_bytes".into(), (max_object as i64).into());
    }
    let mut repo = toml::Table::new();
    repo.insert("name".into(), "bench".into());
    repo.insert("prefix".into(), "/".into());
    repo.insert("upstream".into(), format!("http://{origin}").into());
    conf.insert("repository".into(), toml::Value::Array(vec![toml::Value::Table(repo)]));
    Ok(toml::to_string(&conf)?)
}

/// The shipped configuration, beside this crate in the source tree.
pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hangar.toml")
}

pub struct Peer {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.kind.is_hangar() {
            let _ = self.child.kill();
        } else {
            // nginx and varnish master processes take their workers down on TERM.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process has used so far, for caches that are one
    /// process (hangar-proxy); `None` for nginx and Varnish, whose work is done in children.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if !self.kind.is_hangar() {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks / per_sec)
    }

    /// Where this cache keeps its objects on disk (none for Varnish's malloc storage).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match self.kind {
            Kind::Varnish => None,
            _ => Some(self._dir.path().join("cache")),
        }
    }
}

/// Bytes of regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A free loopback port for servers that take a port number in their config (nginx, varnish).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn start(kind: Kind, origin: SocketAddr, size: CacheSize, proxy_bin: &Path, cpu: usize) -> anyhow::Result<Peer> {
    let dir = tempfile::Builder::new().prefix("hangar-bench-").tempdir_in("/var/tmp")?;
    let cpu = cpu.to_string();
    match kind {
        Kind::Hangar | Kind::HangarBaseline => {
            let conf = dir.path().join("hangar.toml");
            std::fs::write(&conf, hangar_config(&shipped_config(), &dir.path().join("cache"), size, origin)?)?;
            let mut child = Command::new("taskset")
                .args(["-c", &cpu])
                .arg(proxy_bin)
                .args(["--config", conf.to_str().unwrap(), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log", "error"])
                .stdout(Stdio::piped())
                // Its log (the access log is on in the shipped config) goes to a file, as to a
                // journal: not through the terminal the bench prints to.
                .stderr(std::fs::File::create(dir.path().join("hangar.log"))?)
                .spawn()
                .with_context(|| format!("starting {}", proxy_bin.display()))?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .with_context(|| {
                    let log = std::fs::read_to_string(dir.path().join("hangar.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                    format!("hangar-proxy did not report its address: {line:?}; its log ends:\n{}", tail.join("\n"))
                })?
                .parse()?;
            Ok(Peer { kind, addr, child, _dir: dir })
        }
        Kind::Nginx | Kind::NginxSendfile => {
            let port = free_port()?;
            let d = dir.path().display();
            let sendfile = if kind == Kind::NginxSendfile { "on" } else { "off" };
            let conf = format!(
                "user root;\nworker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\n\
                 events {{ worker_connections 4096; multi_accept on; }}\n\
                 http {{\n  access_log {d}/access.log;\n  sendfile {sendfile};\n  tcp_nopush on;\n  tcp_nodelay on;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy_tmp;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:64m max_size={} inactive=7d use_temp_path=off;\n\
                 upstream origin {{ server {origin}; keepalive 64; }}\n\
                 server {{\n    listen 127.0.0.1:{port} reuseport backlog=4096;\n    location / {{\n      proxy_pass http://origin;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_cache bench;\n      proxy_cache_lock on;\n      proxy_cache_lock_timeout 600s;\n      proxy_cache_valid 200 7d;\n      proxy_max_temp_file_size 0;\n    }}\n  }}\n}}\n",
                size.storage_bytes
            );
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, conf)?;
            let mut child = Command::new("taskset")
                .args(["-c", &cpu, "nginx", "-p"])
                .arg(dir.path())
                .arg("-c")
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting nginx (apt-get install nginx)")?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            wait_listening(addr, &mut child, "nginx")?;
            Ok(Peer { kind, addr, child, _dir: dir })
        }
        Kind::Varnish => {
            let port = free_port()?;
            let workdir: PathBuf = dir.path().join("varnish");
            let mut child = Command::new("taskset")
                .args(["-c", &cpu, "varnishd", "-F", "-j", "none", "-n"])
                .arg(&workdir)
                .args(["-a", &format!("127.0.0.1:{port}"), "-b", &origin.to_string()])
                .args(["-s", &format!("malloc,{}", size.storage_bytes)])
                .args(["-p", "thread_pools=1", "-p", "default_ttl=604800", "-p", "thread_pool_min=100"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting varnishd (apt-get install varnish)")?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            wait_listening(addr, &mut child, "varnishd")?;
            Ok(Peer { kind, addr, child, _dir: dir })
        }
    }
}

/// Peak resident memory (VmHWM) of a process and its children (nginx and varnish workers).
pub fn peak_rss(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}
