//! Real clients presenting tokens (issue 16): pip with HTTP basic (the token as the password in
//! the index URL) and npm with a bearer `_authToken`, against fixture upstreams through a proxy
//! that denies by default. Each: works with a granted token, 401 without one, 403 with a token
//! that lacks the grant.

use std::path::Path;
use std::process::Command;

use hangar_e2e::clients::{client, make_tgz, make_wheel, packument, run, run_failing};
use hangar_e2e::{Proxy, Route, Upstream};
use sha2::Digest as _;

const READER: &str = "hgr_reader-token-for-the-client-tests";
const STRANGER: &str = "hgr_stranger-token-for-the-client-tests";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `[auth]`: READER has role `reader`, granted read on `repository`; STRANGER has a role with
/// no grant; nothing for anonymous.
fn auth(repository: &str) -> String {
    format!(
        "[[auth.token]]\nname = \"reader\"\nhash = \"sha256:{}\"\nroles = [\"reader\"]\n\n[[auth.token]]\nname = \"stranger\"\nhash = \"sha256:{}\"\nroles = [\"nobody\"]\n\n[[auth.grant]]\nrole = \"reader\"\nrepositories = [\"{repository}\"]\nactions = [\"read\"]\n",
        hex(&sha2::Sha256::digest(READER.as_bytes())),
        hex(&sha2::Sha256::digest(STRANGER.as_bytes()))
    )
}

fn pip_download(scratch: &Path, index: &str, dest: &Path) -> Command {
    let mut cmd = client("python3", scratch);
    cmd.args(["-m", "pip", "download", "-vv", "--no-cache-dir", "--retries", "0", "--index-url", index, "-d"]).arg(dest).arg("guarded==1.0");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_reads_with_a_token_as_basic_password_and_is_refused_without_one() {
    let scratch = tempfile::tempdir().unwrap();
    let (file, wheel) = make_wheel(scratch.path(), "guarded", "1.0");
    let up = Upstream::start().await;
    let page = format!("<html><body><a href=\"../../files/{file}#sha256={}\">{file}</a></body></html>", hex(&sha2::Sha256::digest(&wheel)));
    up.route("/simple/guarded/", Route::ok(page.into_bytes()).header("Content-Type", "text/html"));
    up.route(&format!("/files/{file}"), Route::ok(wheel.clone()));
    let config = format!(
        "[[repository]]\nname = \"pypi\"\nprefix = \"/pypi/\"\nformat = \"pypi\"\nupstream = \"{0}/simple/\"\nfiles_upstream = \"{0}/files/\"\n\n{1}",
        up.url(),
        auth("pypi")
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).deny_by_default().start();
    let index = |user_token: Option<&str>| match user_token {
        Some(t) => format!("http://__token__:{t}@{}/pypi/simple/", proxy.addr),
        None => format!("http://{}/pypi/simple/", proxy.addr),
    };

    run(&mut pip_download(scratch.path(), &index(Some(READER)), &scratch.path().join("ok")));
    assert_eq!(std::fs::read(scratch.path().join("ok").join(&file)).unwrap(), wheel, "pip downloaded the wheel with the token");

    let out = run_failing(&mut pip_download(scratch.path(), &index(None), &scratch.path().join("anonymous")));
    assert!(out.contains("401"), "without a token: 401\n{out}");
    let out = run_failing(&mut pip_download(scratch.path(), &index(Some(STRANGER)), &scratch.path().join("stranger")));
    assert!(out.contains("403"), "a token without the grant: 403\n{out}");
    assert!(!scratch.path().join("anonymous").join(&file).exists() && !scratch.path().join("stranger").join(&file).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_reads_with_a_bearer_auth_token_and_is_refused_without_one() {
    let scratch = tempfile::tempdir().unwrap();
    let tgz = make_tgz(scratch.path(), "guarded");
    let up = Upstream::start().await;
    let registry = format!("{}/", up.url());
    up.route("/guarded", Route::ok(packument(&registry, "guarded", &tgz).into_bytes()).header("Content-Type", "application/json"));
    up.route("/guarded/-/guarded-1.0.0.tgz", Route::ok(tgz));
    let config = format!("[[repository]]\nname = \"npm\"\nprefix = \"/npm/\"\nformat = \"npm\"\nupstream = \"{registry}\"\n\n{}", auth("npm"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).deny_by_default().start();
    let proxied = format!("http://{}/npm/", proxy.addr);

    // `npm install` in a fresh project whose .npmrc holds `token` (none: no .npmrc auth).
    let install = |name: &str, token: Option<&str>| {
        let project = scratch.path().join(name);
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("package.json"), r#"{"name":"t","version":"1.0.0","dependencies":{"guarded":"1.0.0"}}"#).unwrap();
        let npmrc = match token {
            Some(t) => format!("registry={proxied}\n//{}/npm/:_authToken={t}\n", proxy.addr),
            None => format!("registry={proxied}\n"),
        };
        std::fs::write(project.join(".npmrc"), npmrc).unwrap();
        let mut cmd = client("npm", scratch.path());
        cmd.current_dir(&project).args(["install", "--fetch-retries=0", "--cache"]).arg(project.join(".npm-cache"));
        (project, cmd)
    };

    let (ok, mut cmd) = install("ok", Some(READER));
    run(&mut cmd);
    assert!(ok.join("node_modules/guarded/package.json").exists(), "npm installed with the token");
    // The proxy read the packument through itself to verify the tarball (no credential of
    // its own needed), so the tarball was kept: a second install does not fetch it again.
    let (again, mut cmd) = install("again", Some(READER));
    run(&mut cmd);
    assert!(again.join("node_modules/guarded/package.json").exists());
    assert_eq!(up.hits("/guarded/-/guarded-1.0.0.tgz"), 1, "the verified tarball was cached");

    let (_, mut cmd) = install("anonymous", None);
    let out = run_failing(&mut cmd);
    assert!(out.contains("401") || out.contains("E401"), "without a token: 401\n{out}");
    let (_, mut cmd) = install("stranger", Some(STRANGER));
    let out = run_failing(&mut cmd);
    assert!(out.contains("403") || out.contains("E403"), "a token without the grant: 403\n{out}");
}
