//! `hangar-bench`: hangar-proxy against nginx `proxy_cache` and Varnish, side by side, in one run.
//!
//! Every cache under test is pinned to CPU 0 and the load generator to CPU 1. Scenarios:
//! * `hits`: cache-hit throughput and latency for 1 KiB, 100 KiB and 10 MiB objects (wrk),
//!   several rounds interleaved across the caches (so drift on a shared machine hits all alike),
//!   median reported with the rounds' spread, Hangar's ratio to the best peer per size, and,
//!   with `--baseline-bin`, to another hangar-proxy build (before and after a change);
//! * `cold`: a stampede of concurrent clients on one uncached large object behind a slow
//!   origin: upstream fetches, total time against one client alone, peak RSS;
//! * `zipf`: a fixed Zipf-distributed request sequence over objects of 1 KiB to 50 MiB with a
//!   cache smaller than the working set: hit ratio, upstream bytes, throughput;
//! * `clients` (not in the default set: it needs the live registries, at least once to build
//!   its fixture mirror): pip, uv, npm, cargo and apt jobs direct, through a cold Hangar and
//!   through a warm one, against a local fixture mirror and the live registries ([`clients`]).
//!
//! `--quick` runs everything small enough for the test suite (seconds), so the benchmark
//! cannot rot; its numbers mean nothing. See bench/README.md for results.

mod clients;
mod load;
mod mirror;
mod origin;
mod peers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use origin::Origin;
use peers::{CacheSize, Kind};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CACHE_CPU: usize = 0;
const LOAD_CPU: usize = 1;

struct Options {
    quick: bool,
    json: Option<PathBuf>,
    proxy_bin: PathBuf,
    /// A second hangar-proxy build to compare with, as the `hangar-baseline` peer.
    baseline_bin: Option<PathBuf>,
    peers: Vec<Kind>,
    scenarios: Vec<String>,
    rounds: usize,
    duration: Duration,
    /// The `clients` scenario's jobs.
    client_jobs: Vec<clients::Job>,
    /// Which registries the `clients` scenario goes to: `mirror`, `live`.
    clients_against: Vec<String>,
    /// Where the fixture mirror's snapshot is kept (built on first use).
    mirror_dir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: hangar-bench [--quick] [--json FILE] [--proxy-bin PATH] [--baseline-bin PATH] [--peers hangar,nginx-sendfile,nginx,varnish]\n                    [--scenarios hits,cold,zipf,clients] [--rounds N] [--duration SECS]\n                    [--jobs pip,uv,npm,cargo,apt] [--clients-against mirror,live] [--mirror-dir DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> anyhow::Result<Options> {
    let exe = std::env::current_exe()?;
    let mut o = Options {
        quick: false,
        json: None,
        proxy_bin: exe.with_file_name("hangar-proxy"),
        baseline_bin: None,
        peers: vec![Kind::Hangar, Kind::NginxSendfile, Kind::Nginx, Kind::Varnish],
        scenarios: vec!["hits".into(), "cold".into(), "zipf".into()],
        rounds: 3,
        duration: Duration::from_secs(5),
        client_jobs: clients::JOBS.to_vec(),
        clients_against: vec!["mirror".into(), "live".into()],
        mirror_dir: PathBuf::from("/var/tmp/hangar-bench-mirror"),
    };
    let mut args = std::env::args().skip(1);
    let mut rounds = None;
    let mut duration = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = Some(val().into()),
            "--proxy-bin" => o.proxy_bin = val().into(),
            "--baseline-bin" => o.baseline_bin = Some(val().into()),
            "--peers" => {
                o.peers = val().split(',').map(|p| Kind::parse(p).with_context(|| format!("unknown peer {p}"))).collect::<anyhow::Result<_>>()?
            }
            "--scenarios" => o.scenarios = val().split(',').map(str::to_string).collect(),
            "--jobs" => {
                o.client_jobs = val().split(',').map(|j| clients::Job::parse(j).with_context(|| format!("unknown client job {j} (pip, uv, npm, cargo, apt)"))).collect::<anyhow::Result<_>>()?
            }
            "--clients-against" => o.clients_against = val().split(',').map(str::to_string).collect(),
            "--mirror-dir" => o.mirror_dir = val().into(),
            "--rounds" => rounds = Some(val().parse()?),
            "--duration" => duration = Some(Duration::from_secs(val().parse()?)),
            _ => usage(),
        }
    }
    if o.quick {
        o.rounds = 1;
        o.duration = Duration::from_secs(1);
    }
    if o.baseline_bin.is_some() && !o.peers.contains(&Kind::HangarBaseline) {
        o.peers.insert(1, Kind::HangarBaseline);
    }
    o.rounds = rounds.unwrap_or(o.rounds);
    o.duration = duration.unwrap_or(o.duration);
    Ok(o)
}

/// This process's CPU affinity (inherited from whoever started it).
fn affinity() -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            eprintln!("hangar-bench: cannot read the CPU affinity: {}", std::io::Error::last_os_error());
        }
        set
    }
}

/// Run this process (and the processes it starts from now on) on the CPUs in `set`.
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        eprintln!("hangar-bench: cannot set the CPU affinity: {}", std::io::Error::last_os_error());
    }
}

/// Run this process (and the processes it starts from now on) on `cpus` only.
fn pin_self(cpus: impl IntoIterator<Item = usize>) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET only touches it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    };
    set_affinity(&set);
}

#[derive(Serialize)]
struct HitRow {
    size: u64,
    cache: Kind,
    median: load::WrkResult,
    rounds: Vec<load::WrkResult>,
    /// Median CPU microseconds per request, for single-process caches.
    cpu_us_per_request: Option<f64>,
}

#[derive(Serialize)]
struct HitSummary {
    size: u64,
    best_peer: Option<Kind>,
    best_peer_rps: f64,
    hangar_rps: f64,
    ratio: Option<f64>,
    /// The `--baseline-bin` build's median, when one ran.
    baseline_rps: Option<f64>,
}

#[derive(Serialize)]
struct ColdResult {
    cache: Kind,
    object_bytes: u64,
    clients: usize,
    origin_bytes_per_sec: u64,
    alone_secs: f64,
    stampede_secs: f64,
    time_ratio: f64,
    upstream_requests: u64,
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct ZipfResult {
    cache: Kind,
    objects: usize,
    requests: usize,
    working_set_bytes: u64,
    cache_bytes: u64,
    /// Largest size of the cache's directory seen during the run (sampled every 100 ms),
    /// in-flight fills included.
    peak_stored_bytes: u64,
    /// Hangar only: largest size of its committed entries (`objects/`), what the budget bounds.
    peak_committed_bytes: Option<u64>,
    hit_ratio: f64,
    upstream_requests: u64,
    upstream_bytes: u64,
    bytes_served: u64,
    secs: f64,
    throughput_bytes_per_sec: f64,
}

#[derive(Serialize, Default)]
struct Report {
    commit: String,
    quick: bool,
    cpus: usize,
    hits: Vec<HitRow>,
    hit_summary: Vec<HitSummary>,
    cold: Vec<ColdResult>,
    zipf: Vec<ZipfResult>,
    clients: Vec<clients::ClientResult>,
}

fn median(mut rounds: Vec<load::WrkResult>) -> load::WrkResult {
    rounds.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
    rounds[rounds.len() / 2]
}

fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// Relative spread of the rounds: (max - min) / median, the noise a ratio must exceed.
fn spread(rounds: &[load::WrkResult], median: f64) -> f64 {
    let (lo, hi) = rounds.iter().fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r.requests_per_sec), hi.max(r.requests_per_sec)));
    if median > 0.0 { (hi - lo) / median } else { 0.0 }
}

async fn hits(o: &Options, origin: &Origin, report: &mut Report) -> anyhow::Result<()> {
    let sizes: [u64; 3] = [1 << 10, 100 << 10, 10 << 20];
    let size = CacheSize { storage_bytes: 2 << 30, memory: None };
    println!("\n== cache hits (cache on CPU {CACHE_CPU}, wrk on CPU {LOAD_CPU}, {} round(s) of {}s interleaved, median) ==", o.rounds, o.duration.as_secs());
    println!("{:>8}  {:<15} {:>12} {:>12} {:>9} {:>9} {:>8} {:>10}", "size", "cache", "req/s", "MB/s", "p50 ms", "p99 ms", "spread", "cpu us/req");
    let mut running = Vec::new();
    for &kind in &o.peers {
        let bin = if kind == Kind::HangarBaseline { o.baseline_bin.as_deref().context("hangar-baseline needs --baseline-bin")? } else { o.proxy_bin.as_path() };
        running.push(peers::start(kind, origin.addr, size, bin, CACHE_CPU)?);
    }
    for &s in &sizes {
        let path = format!("/obj/{s}/hot");
        for peer in &running {
            // Warm: fill, then one more request to be sure the next ones are hits.
            let mut c = load::Conn::connect(peer.addr).await?;
            for _ in 0..2 {
                let (status, len) = c.get(&path).await?;
                anyhow::ensure!(status == 200 && len == s, "{}: warm-up got {status}/{len}", peer.kind.name());
            }
        }
        let conns = if s >= 10 << 20 { 8 } else { 50 };
        let mut rounds = vec![Vec::new(); running.len()];
        // CPU time per request (single-process caches): steadier than req/s on a shared machine.
        let mut cpu = vec![Vec::new(); running.len()];
        for _ in 0..o.rounds {
            for (i, peer) in running.iter().enumerate() {
                let before = peer.cpu_seconds();
                let r = load::wrk(&format!("http://{}{path}", peer.addr), LOAD_CPU, conns, o.duration).await?;
                if let (Some(a), Some(b)) = (before, peer.cpu_seconds()) {
                    cpu[i].push((b - a) * 1e6 / (r.requests_per_sec * o.duration.as_secs_f64()).max(1.0));
                }
                rounds[i].push(r);
            }
        }
        for ((peer, rounds), mut cpu) in running.iter().zip(rounds).zip(cpu) {
            let m = median(rounds.clone());
            let noise = spread(&rounds, m.requests_per_sec);
            cpu.sort_by(f64::total_cmp);
            let cpu_us = cpu.get(cpu.len() / 2).copied();
            println!(
                "{:>8}  {:<15} {:>12.0} {:>12.1} {:>9.3} {:>9.3} {:>7.0}% {:>10}",
                human(s as f64),
                peer.kind.name(),
                m.requests_per_sec,
                m.bytes_per_sec / 1e6,
                m.p50_ms,
                m.p99_ms,
                noise * 100.0,
                cpu_us.map_or("-".into(), |c| format!("{c:.1}"))
            );
            report.hits.push(HitRow { size: s, cache: peer.kind, median: m, rounds, cpu_us_per_request: cpu_us });
        }
    }
    let with_baseline = o.peers.contains(&Kind::HangarBaseline);
    println!("\n{:>8}  {:<15} {:>12} {:>12} {:>8}{}", "size", "best peer", "peer req/s", "hangar req/s", "ratio", if with_baseline { "    vs baseline" } else { "" });
    for &s in &sizes {
        let rows: Vec<&HitRow> = report.hits.iter().filter(|r| r.size == s).collect();
        let best = rows.iter().filter(|r| !r.cache.is_hangar()).max_by(|a, b| a.median.requests_per_sec.total_cmp(&b.median.requests_per_sec));
        let rps = |kind: Kind| rows.iter().find(|r| r.cache == kind).map(|r| r.median.requests_per_sec).unwrap_or(0.0);
        let (hangar, baseline) = (rps(Kind::Hangar), rps(Kind::HangarBaseline));
        let (best_kind, best_rps) = best.map(|r| (Some(r.cache), r.median.requests_per_sec)).unwrap_or((None, 0.0));
        let ratio = (best_rps > 0.0 && hangar > 0.0).then(|| hangar / best_rps);
        let vs_baseline = (baseline > 0.0 && hangar > 0.0).then(|| hangar / baseline);
        println!(
            "{:>8}  {:<15} {:>12.0} {:>12.0} {:>8}{}",
            human(s as f64),
            best_kind.map_or("-", Kind::name),
            best_rps,
            hangar,
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            vs_baseline.map_or(String::new(), |r| format!(" {r:>14.2}x"))
        );
        report.hit_summary.push(HitSummary { size: s, best_peer: best_kind, best_peer_rps: best_rps, hangar_rps: hangar, ratio, baseline_rps: (baseline > 0.0).then_some(baseline) });
    }
    Ok(())
}

async fn cold(o: &Options, origin: &Origin, report: &mut Report) -> anyhow::Result<()> {
    let (object, clients, rate) = if o.quick { (16u64 << 20, 50usize, 32u64 << 20) } else { (100u64 << 20, 500usize, 4u64 << 20) };
    println!("\n== cold misses: {clients} clients, one uncached {} object, origin at {}/s ==", human(object as f64), human(rate as f64));
    println!("{:<15} {:>10} {:>12} {:>8} {:>10} {:>10}", "cache", "alone s", "stampede s", "ratio", "upstream", "peak RSS");
    let size = CacheSize { storage_bytes: 4 << 30, memory: Some((64 << 20, 1 << 20)) };
    origin.throttle(rate);
    for &kind in o.peers.iter().filter(|k| matches!(k, Kind::Hangar | Kind::NginxSendfile)) {
        let peer = peers::start(kind, origin.addr, size, &o.proxy_bin, CACHE_CPU)?;
        let alone = load::stampede(peer.addr, &format!("/obj/{object}/alone-{}", kind.name()), 1, object).await?;
        let before = origin.requests();
        let stampede = load::stampede(peer.addr, &format!("/obj/{object}/crowd-{}", kind.name()), clients, object).await?;
        let upstream = origin.requests() - before;
        let rss = peers::peak_rss(peer.pid());
        let ratio = stampede.as_secs_f64() / alone.as_secs_f64();
        println!("{:<15} {:>10.2} {:>12.2} {:>7.2}x {:>10} {:>10}", kind.name(), alone.as_secs_f64(), stampede.as_secs_f64(), ratio, upstream, human(rss as f64));
        report.cold.push(ColdResult {
            cache: kind,
            object_bytes: object,
            clients,
            origin_bytes_per_sec: rate,
            alone_secs: alone.as_secs_f64(),
            stampede_secs: stampede.as_secs_f64(),
            time_ratio: ratio,
            upstream_requests: upstream,
            peak_rss_bytes: rss,
        });
    }
    origin.throttle(0);
    Ok(())
}

/// xorshift64*: a fixed, dependency-free PRNG so every cache sees the same sequence.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Object sizes from 1 KiB to `max`, log-distributed and skewed small (as registries are:
/// many small metadata files and packages, a few large ones), and a Zipf(1.0) request sequence.
fn zipf_workload(objects: usize, requests: usize, max: u64) -> (Vec<u64>, Vec<usize>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let span = (max as f64 / 1024.0).ln();
    let sizes: Vec<u64> = (0..objects).map(|_| (1024.0 * (span * rng.next_f64().powi(3)).exp()) as u64).collect();
    let weights: Vec<f64> = (1..=objects).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(objects);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let seq = (0..requests)
        .map(|_| {
            let u = rng.next_f64();
            cdf.partition_point(|&c| c < u).min(objects - 1)
        })
        .collect();
    (sizes, seq)
}

async fn zipf(o: &Options, origin: &Origin, report: &mut Report) -> anyhow::Result<()> {
    let (objects, requests, max) = if o.quick { (300usize, 1500usize, 4u64 << 20) } else { (10_000, 60_000, 50 << 20) };
    let (sizes, seq) = zipf_workload(objects, requests, max);
    let mut seen = vec![false; objects];
    let working_set: u64 = seq.iter().filter_map(|&i| (!std::mem::replace(&mut seen[i], true)).then_some(sizes[i])).sum();
    let cache_bytes = working_set / 5;
    println!(
        "\n== zipf: {requests} requests over {objects} objects (1 KiB..{}), working set {}, cache {} ==",
        human(max as f64),
        human(working_set as f64),
        human(cache_bytes as f64)
    );
    println!("{:<15} {:>9} {:>12} {:>14} {:>8} {:>12} {:>12}", "cache", "hit ratio", "upstream req", "upstream bytes", "secs", "MB/s", "peak stored");
    let size = CacheSize { storage_bytes: cache_bytes, memory: Some(((cache_bytes / 8).max(1 << 20), 1 << 20)) };
    let paths: std::sync::Arc<Vec<String>> = std::sync::Arc::new(seq.iter().map(|&i| format!("/obj/{}/z{i}", sizes[i])).collect());
    for &kind in o.peers.iter().filter(|k| matches!(k, Kind::Hangar | Kind::NginxSendfile)) {
        let peer = peers::start(kind, origin.addr, size, &o.proxy_bin, CACHE_CPU)?;
        let (req0, bytes0) = (origin.requests(), origin.bytes());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (dir, done) = (peer.cache_dir(), done.clone());
            let committed_dir = (kind == Kind::Hangar).then(|| dir.as_ref().map(|d| d.join("objects"))).flatten();
            tokio::task::spawn_blocking(move || {
                let (mut peak, mut peak_committed) = (0, 0);
                while let Some(d) = dir.as_ref() {
                    peak = peak.max(peers::dir_bytes(d));
                    if let Some(c) = committed_dir.as_ref() {
                        peak_committed = peak_committed.max(peers::dir_bytes(c));
                    }
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (peak, committed_dir.is_some().then_some(peak_committed))
            })
        };
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = std::time::Instant::now();
        let mut workers = Vec::new();
        for _ in 0..16 {
            let (paths, next, addr) = (paths.clone(), next.clone(), peer.addr);
            workers.push(tokio::spawn(async move {
                let mut c = load::Conn::connect(addr).await?;
                let mut served = 0u64;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let (status, len) = c.get(p).await?;
                    anyhow::ensure!(status == 200, "{p}: {status}");
                    served += len;
                }
                Ok::<_, anyhow::Error>(served)
            }));
        }
        let mut served = 0;
        for w in workers {
            served += w.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (peak_stored, peak_committed) = sampler.await?;
        let (up_req, up_bytes) = (origin.requests() - req0, origin.bytes() - bytes0);
        let hit_ratio = 1.0 - up_req as f64 / requests as f64;
        println!(
            "{:<15} {:>9.3} {:>12} {:>14} {:>8.2} {:>12.1} {:>12}",
            kind.name(),
            hit_ratio,
            up_req,
            human(up_bytes as f64),
            secs,
            served as f64 / secs / 1e6,
            human(peak_stored as f64)
        );
        report.zipf.push(ZipfResult {
            cache: kind,
            objects,
            requests,
            working_set_bytes: working_set,
            cache_bytes,
            peak_stored_bytes: peak_stored,
            peak_committed_bytes: peak_committed,
            hit_ratio,
            upstream_requests: up_req,
            upstream_bytes: up_bytes,
            bytes_served: served,
            secs,
            throughput_bytes_per_sec: served as f64 / secs,
        });
    }
    Ok(())
}

/// Install the peers and the load generator from Debian when they are missing.
fn ensure_tools(peers: &[Kind]) -> anyhow::Result<()> {
    let have = |bin: &str| {
        ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"].iter().any(|d| std::path::Path::new(d).join(bin).exists())
    };
    let mut missing = Vec::new();
    if !have("wrk") {
        missing.push("wrk");
    }
    if peers.iter().any(|k| matches!(k, Kind::Nginx | Kind::NginxSendfile)) && !have("nginx") {
        missing.push("nginx");
    }
    if peers.contains(&Kind::Varnish) && !have("varnishd") {
        missing.push("varnish");
    }
    if !have("taskset") {
        missing.push("util-linux");
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing from Debian: {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().context("running apt-get")?;
        anyhow::ensure!(status.success(), "apt-get {} failed", args.join(" "));
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(missing);
    apt(&args)
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    ensure_tools(&o.peers)?;
    // Debian puts nginx and varnishd in sbin, which a non-login PATH may lack.
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{path}:/usr/sbin:/sbin"));
    anyhow::ensure!(o.proxy_bin.exists(), "{} not found (cargo build --release --bins, or --proxy-bin)", o.proxy_bin.display());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "the benchmark pins the caches to CPU {CACHE_CPU} and the load to CPU {LOAD_CPU}: it needs 2 CPUs");
    let inherited = affinity();
    pin_self([LOAD_CPU]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut report = Report {
        commit: std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
        quick: o.quick,
        cpus,
        ..Report::default()
    };
    rt.block_on(async {
        let origin = Origin::start().await?;
        for s in &o.scenarios {
            match s.as_str() {
                "hits" => hits(&o, &origin, &mut report).await?,
                "cold" => cold(&o, &origin, &mut report).await?,
                "zipf" => zipf(&o, &origin, &mut report).await?,
                "clients" => {
                    // Real clients, the proxy and the mirror share the machine as they would
                    // on a build host: the CPUs this bench was given, none pinned (pinned,
                    // they all shared one CPU).
                    set_affinity(&inherited);
                    report.clients = clients::run(&o.proxy_bin, o.rounds, &o.client_jobs, &o.clients_against, &o.mirror_dir)?;
                    pin_self([LOAD_CPU]);
                }
                other => anyhow::bail!("unknown scenario {other}"),
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
