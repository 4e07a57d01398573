//! `hangar-proxy check-config` and startup errors, as an operator sees them.

use std::process::Command;

use hangar_e2e::proxy::proxy_bin;

fn check(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hangar.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(proxy_bin())
        .args(["check-config", file.to_str().unwrap()])
        .env_remove("HANGAR_TEST_UPSTREAM")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let name = file.display().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&name, "FILE");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).replace(&name, "FILE"), stderr)
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let cases = [
        ("listen = \"nope\"\n", "FILE: listen: 'nope' is not an IP:port"),
        ("[cache]\ndisk_bytes = \"12 parsecs\"\n", "disk_bytes"),
        ("[[repository]]\nname = \"a\"\nprefix = \"x/\"\nupstream = \"http://127.0.0.1:1\"\n", "FILE: repository[0].prefix: 'x/' must start with '/'"),
        ("[[repository]]\nname = \"a\"\nprefix = \"/x/\"\nupstream = \"ftp://h\"\n", "FILE: repository[0].upstream:"),
        ("[[repository]]\nname = \"a\"\nprefix = \"/x/\"\nformat = \"cobol\"\nupstream = \"http://h\"\n", "cobol"),
        ("unknown_key = 1\n", "unknown_key"),
        ("[[repository]]\nname = \"a\"\nprefix = \"/x/\"\nupstream = \"http://h/\"\n[[repository]]\nname = \"a\"\nprefix = \"/y/\"\nupstream = \"http://h/\"\n", "FILE: repository[1].name: 'a' is used by two repositories"),
        ("listen = \"${NOT_SET_ANYWHERE}\"\n", "FILE: listen: environment variable NOT_SET_ANYWHERE is not set"),
        ("this is not toml", "FILE"),
    ];
    for (text, expected) in cases {
        let (ok, _, stderr) = check(text, &[]);
        assert!(!ok, "{text:?} should be rejected");
        assert!(stderr.contains(expected), "{text:?}: expected {expected:?} in {stderr:?}");
        assert!(stderr.contains("FILE"), "the file is named: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    let (ok, _, stderr) = check("", &[]);
    assert!(ok, "an empty file is the defaults: {stderr}");
}

#[test]
fn an_unset_upstream_variable_disables_only_that_repository() {
    let text = "[[repository]]\nname = \"mirror\"\nprefix = \"/m/\"\nupstream = \"${HANGAR_TEST_UPSTREAM}\"\n[[repository]]\nname = \"fixed\"\nprefix = \"/f/\"\nupstream = \"http://127.0.0.1:9/\"\n";
    let (ok, stdout, stderr) = check(text, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 repositories enabled"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("mirror")).collect();
    assert_eq!(lines.len(), 1, "one clear log line: {stderr}");
    assert!(lines[0].contains("disabled") && lines[0].contains("HANGAR_TEST_UPSTREAM"), "{}", lines[0]);

    let (ok, stdout, _) = check(text, &[("HANGAR_TEST_UPSTREAM", "http://127.0.0.1:8/")]);
    assert!(ok);
    assert!(stdout.contains("2 repositories enabled"), "{stdout}");
}

#[test]
fn the_shipped_default_config_is_valid_without_redis_or_s3() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/hangar.toml");
    let out = Command::new(proxy_bin()).args(["check-config", file]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_flag_value_exits_non_zero_with_a_message() {
    let out = Command::new(proxy_bin()).args(["--listen", "nowhere", "--upstream", "/=http://127.0.0.1:1"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("command line: listen"), "{stderr}");
    let out = Command::new(proxy_bin()).args(["--upstream", "no-equals-sign"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PREFIX=URL"));
}
