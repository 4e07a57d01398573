//! The benchmark runs once in quick mode so it cannot rot. Its timings are not asserted (they
//! belong to bench/README.md); what it must get right regardless of speed is.

use std::process::Command;

use hangar_e2e::proxy::proxy_bin;

#[test]
fn the_benchmark_runs_in_quick_mode_and_reports_every_cache() {
    let bench = proxy_bin().with_file_name("hangar-bench");
    assert!(bench.exists(), "{} not built", bench.display());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(&bench)
        .args(["--quick", "--json", json.to_str().unwrap(), "--proxy-bin", proxy_bin().to_str().unwrap()])
        .env("PATH", format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default()))
        .output()
        .expect("run hangar-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hangar-bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(&json).expect("JSON report written");

    // Every cache and size measured, with a comparison line per size.
    for cache in ["\"hangar\"", "\"nginx-sendfile\"", "\"nginx\"", "\"varnish\""] {
        assert!(report.contains(cache), "{cache} missing from the report");
    }
    for size in ["1.0 KiB", "100.0 KiB", "10.0 MiB"] {
        let line = stdout.lines().filter(|l| l.trim_start().starts_with(size) && l.ends_with('x')).count();
        assert_eq!(line, 1, "no best-peer comparison for {size}:\n{stdout}");
    }
    let field = |section: &str, cache: &str, key: &str| -> f64 {
        let start = report.find(&format!("\"{section}\"")).expect("section");
        let rest = &report[start..];
        let entry = &rest[rest.find(&format!("\"cache\": \"{cache}\"")).expect("cache entry")..];
        let v = &entry[entry.find(&format!("\"{key}\":")).expect("key") + key.len() + 3..];
        v[..v.find([',', '\n', '}']).unwrap()].trim().parse().expect("number")
    };
    // A stampede on one cold object reaches the upstream once.
    assert_eq!(field("cold", "hangar", "upstream_requests"), 1.0);
    // Hangar's committed entries stay within the budget while the trace runs (the working set
    // is five times the budget, so a cache that did not evict would blow through it). Between
    // a commit and the purges it triggers the store can be one object (at most 4 MiB in
    // quick mode) over.
    let budget = field("zipf", "hangar", "cache_bytes");
    let committed = field("zipf", "hangar", "peak_committed_bytes");
    let working_set = field("zipf", "hangar", "working_set_bytes");
    assert!(working_set > budget * 4.0);
    let largest = 4.0 * 1024.0 * 1024.0;
    assert!(committed <= budget * 1.01 + largest, "{committed} bytes committed on a {budget}-byte budget");
    assert!(committed > budget / 2.0, "the cache was used: {committed} bytes");
    assert!(field("zipf", "hangar", "hit_ratio") > 0.0);
}
