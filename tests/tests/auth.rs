//! Who may do what (issue 16): tokens presented as bearer or basic credentials, grants per role
//! and repository, deny by default on the client listener (cache hits included) and on the
//! admin listener, the bootstrap credential, and secrets kept out of URLs and logs.

use base64::Engine as _;
use hangar_e2e::{get, http, Proxy, Route, Upstream, ADMIN};
use sha2::Digest as _;

const BUILDER: &str = "hgr_builder-token-for-the-auth-tests";
const OTHER: &str = "hgr_other-role-token-for-the-auth-tests";
const EXPIRED: &str = "hgr_expired-token-for-the-auth-tests";

fn hash(token: &str) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(token.as_bytes())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn basic(user: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

/// Two repositories over one upstream: `open` anonymous readers may read, `private` only the
/// `builder` role; three tokens (builder, another role, an expired builder).
fn config(up: &Upstream) -> String {
    format!(
        r#"
[[repository]]
name = "open"
prefix = "/open/"
upstream = "{up}/"
[repository.freshness]
immutable = ["*.bin"]

[[repository]]
name = "private"
prefix = "/private/"
upstream = "{up}/"
[repository.freshness]
immutable = ["*.bin"]

[[auth.token]]
name = "builder"
owner = "ci-team"
hash = "{builder}"
roles = ["builder"]
expires = "2999-01-01T00:00:00Z"

[[auth.token]]
name = "other"
hash = "{other}"
roles = ["other"]

[[auth.token]]
name = "expired"
hash = "{expired}"
roles = ["builder"]
expires = "2020-01-01T00:00:00Z"

[[auth.grant]]
role = "anonymous"
repositories = ["open"]
actions = ["read"]

[[auth.grant]]
role = "builder"
repositories = ["private"]
actions = ["read"]
"#,
        up = up.url(),
        builder = hash(BUILDER),
        other = hash(OTHER),
        expired = hash(EXPIRED)
    )
}

async fn start() -> (tempfile::TempDir, Upstream, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.route("/pkg/a.bin", Route::ok(b"artefact bytes".to_vec()));
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config(&up)).deny_by_default().start();
    (dir, up, proxy)
}

async fn read(proxy: &Proxy, path: &str, authorization: Option<&str>) -> hangar_e2e::Response {
    let headers: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
    http(proxy.addr, "GET", path, &headers).await.unwrap().collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_who_reads_what_and_hits_are_checked_too() {
    let (_dir, up, proxy) = start().await;
    assert_eq!(get(proxy.addr, "/open/pkg/a.bin").await.status, 200, "anonymous read is granted on 'open'");

    let r = read(&proxy, "/private/pkg/a.bin", None).await;
    assert_eq!(r.status, 401, "no grant for anonymous on 'private'");
    let challenges: Vec<&str> = r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate")).map(|(_, v)| v.as_str()).collect();
    assert!(challenges.iter().any(|c| c.starts_with("Bearer")) && challenges.iter().any(|c| c.starts_with("Basic")), "{challenges:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("needs a credential"));

    let bearer = format!("Bearer {BUILDER}");
    let r = read(&proxy, "/private/pkg/a.bin", Some(&bearer)).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"artefact bytes"[..]));
    // Now cached: a hit is still checked before it is served.
    assert_eq!(read(&proxy, "/private/pkg/a.bin", None).await.status, 401, "a cached object is not served to whoever asks");
    let r = read(&proxy, "/private/pkg/a.bin", Some(&basic("__token__", BUILDER))).await;
    assert_eq!((r.status, r.cache()), (200, "hit"), "basic with the token as password, any user");
    assert_eq!(up.hits("/pkg/a.bin"), 2, "one fetch per repository; refusals reached no upstream");
    assert!(up.requests("/pkg/a.bin").iter().all(|q| q.header("authorization").is_none()), "a client's credential for Hangar never goes upstream");

    let r = read(&proxy, "/private/pkg/a.bin", Some(&format!("Bearer {OTHER}"))).await;
    assert_eq!(r.status, 403, "a valid token without the grant");
    assert!(String::from_utf8_lossy(&r.body).contains("'other' lacks the 'read' permission on repository 'private'"));

    let r = read(&proxy, "/private/pkg/a.bin", Some(&format!("Bearer {EXPIRED}"))).await;
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    let r = read(&proxy, "/private/pkg/a.bin", Some("Bearer hgr_never-configured")).await;
    assert_eq!(r.status, 401);
    assert!(!String::from_utf8_lossy(&r.body).contains("hgr_never"), "the credential is not echoed");
    assert_eq!(read(&proxy, "/private/pkg/a.bin", Some("Digest abc")).await.status, 401);

    // Writes through a generic repository are `publish` and `delete`, which nobody was granted.
    let write = |method: &'static str, auth: Option<String>| {
        let addr = proxy.addr;
        async move {
            let mut headers = vec![("Content-Length", "0")];
            if let Some(a) = auth.as_deref() {
                headers.push(("Authorization", a));
            }
            http(addr, method, "/open/pkg/new.bin", &headers).await.unwrap().collect().await.status
        }
    };
    assert_eq!(write("PUT", None).await, 401, "anonymous may read 'open', not publish to it");
    assert_eq!(write("DELETE", None).await, 401);
    assert_eq!(write("PUT", Some(bearer.clone())).await, 403);
    assert!(up.requests("/pkg/new.bin").is_empty(), "no write reached the upstream");
    assert_eq!(read(&proxy, "/open/pkg/a.bin", Some(&bearer)).await.status, 200, "a token may read what anonymous may");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_in_the_query_is_refused_and_never_logged() {
    let (_dir, _up, proxy) = start().await;
    let r = get(proxy.addr, &format!("/private/pkg/a.bin?token={BUILDER}")).await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Authorization header"));
    let bearer = format!("Bearer {BUILDER}");
    assert_eq!(read(&proxy, "/private/pkg/a.bin", Some(&bearer)).await.status, 200);
    // The refused request's line is written before the later one's.
    proxy.wait_for_log(|l| l.contains("status=200") && l.contains("/private/pkg/a.bin")).await;
    let log = proxy.stderr();
    assert!(log.contains("path=/private/pkg/a.bin status=400"), "the refusal is logged, without its query: {log}");
    for secret in [BUILDER, &hash(BUILDER)[7..]] {
        assert!(!log.contains(secret), "a secret reached the log: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_needs_an_admin_credential() {
    let (_dir, _up, proxy) = start().await;
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(proxy.admin, open).await.status, 200, "{open} stays open");
    }
    let purge = |auth: Option<String>| {
        let admin = proxy.admin;
        async move {
            let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
            http(admin, "DELETE", "/cache/open/*", &headers).await.unwrap().collect().await
        }
    };
    let r = purge(None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(purge(Some(format!("Bearer {BUILDER}"))).await.status, 403, "a token with read only");
    assert_eq!(purge(Some(ADMIN.1.to_string())).await.status, 200, "the bootstrap credential");
    assert_eq!(purge(Some(basic("anyone", hangar_e2e::ADMIN_TOKEN))).await.status, 200, "also as basic's password");
    let offline = http(proxy.admin, "PUT", "/offline", &[("Content-Length", "0")]).await.unwrap().collect().await;
    assert_eq!(offline.status, 401, "the offline switch too");
    assert_eq!(http(proxy.admin, "GET", "/offline", &[]).await.unwrap().collect().await.status, 401);
    proxy.wait_for_log(|l| l.contains("bootstrap admin credential enabled")).await;
    assert!(!proxy.stderr().contains(hangar_e2e::ADMIN_TOKEN), "its value is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grants_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.route("/a.bin", Route::ok(b"x".to_vec()));
    let proxy = Proxy::builder(&dir.path().join("cache")).upstream("/", &up.url()).deny_by_default().start();
    assert_eq!(get(proxy.addr, "/a.bin").await.status, 401);
    let r = read(&proxy, "/a.bin", Some(ADMIN.1)).await;
    assert_eq!(r.status, 200, "the bootstrap credential may do everything");
    assert_eq!(up.hits("/a.bin"), 1);
    proxy.wait_for_log(|l| l.contains("every request is refused")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_per_principal_and_address_rules_fence_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.route("/pkg/a.bin", Route::ok(b"artefact bytes".to_vec()));
    let config = format!(
        r#"
[[repository]]
name = "open"
prefix = "/open/"
upstream = "{up}/"
[repository.freshness]
immutable = ["*.bin"]

[[repository]]
name = "fenced"
prefix = "/fenced/"
upstream = "{up}/"

[[auth.token]]
name = "builder"
hash = "{builder}"
roles = ["builder"]

[[auth.token]]
name = "other"
hash = "{other}"
roles = ["builder"]

[[auth.grant]]
role = "builder"
repositories = ["*"]
actions = ["read"]

[auth.limits]
principal_reads_per_second = 3

[[auth.addresses]]
repositories = ["fenced"]
allow = ["192.0.2.0/24"]
"#,
        up = up.url(),
        builder = hash(BUILDER),
        other = hash(OTHER)
    );
    let proxy = Proxy::builder(&dir.path().join("cache")).config(&config).deny_by_default().start();
    let (builder, other) = (format!("Bearer {BUILDER}"), format!("Bearer {OTHER}"));

    let r = read(&proxy, "/fenced/pkg/a.bin", Some(&builder)).await;
    assert_eq!(r.status, 403, "loopback is not in the fenced repository's allow list");
    assert!(String::from_utf8_lossy(&r.body).contains("not reachable from 127.0.0.1"), "{}", String::from_utf8_lossy(&r.body));

    // Asked faster than 3 a second, the builder is refused with when to come back...
    let mut admitted = 0;
    let refused = loop {
        let r = read(&proxy, "/open/pkg/a.bin", Some(&builder)).await;
        match r.status {
            200 => admitted += 1,
            429 => break r,
            s => panic!("unexpected {s}"),
        }
        assert!(admitted < 1000, "the budget never ran out");
    };
    assert!(admitted >= 3, "the budget was given first: {admitted}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(String::from_utf8_lossy(&refused.body).contains("principal 'builder' is over its budget of 3 reads per second"), "{}", String::from_utf8_lossy(&refused.body));
    // ...while another principal, from the same address, is not slowed.
    assert_eq!(read(&proxy, "/open/pkg/a.bin", Some(&other)).await.status, 200);
    assert_eq!(up.hits("/pkg/a.bin"), 1, "refusals reached no upstream");
}

/// The audit log's events, as `GET /audit` on the admin listener returns them.
async fn audit(proxy: &Proxy, query: &str) -> Vec<serde_json::Value> {
    let r = http(proxy.admin, "GET", &format!("/audit{query}"), &[ADMIN]).await.unwrap().collect().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
}

/// Polls `GET /audit` until it holds `n` events (its writer gathers lines for a moment).
async fn audit_until(proxy: &Proxy, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let events = audit(proxy, "").await;
        if events.len() >= n || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_writes_and_admin_actions_are_audited_and_survive_kill_9() {
    let (_dir, up, mut proxy) = start().await;
    assert_eq!(read(&proxy, "/private/pkg/a.bin", None).await.status, 401);
    assert_eq!(read(&proxy, "/private/pkg/a.bin", Some(&format!("Bearer {OTHER}"))).await.status, 403);
    assert_eq!(read(&proxy, "/private/pkg/a.bin", Some(&format!("Bearer {BUILDER}"))).await.status, 200, "an allowed read is not audited");
    let put = http(proxy.addr, "PUT", "/open/pkg/new.bin", &[("Content-Length", "0"), ("Authorization", &format!("Bearer {BUILDER}"))]).await.unwrap().collect().await;
    assert_eq!(put.status, 403);
    assert_eq!(http(proxy.admin, "DELETE", "/cache/open/*", &[]).await.unwrap().collect().await.status, 401);
    assert_eq!(http(proxy.admin, "DELETE", "/cache/open/*", &[ADMIN]).await.unwrap().collect().await.status, 200);

    let events = audit_until(&proxy, 5).await;
    let summary: Vec<(String, String, u64, String)> = events
        .iter()
        .map(|e| (e["principal"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string(), e["status"].as_u64().unwrap(), e["result"].as_str().unwrap().to_string()))
        .collect();
    let expected = [("anonymous", "read", 401, "denied"), ("other", "read", 403, "denied"), ("builder", "publish", 403, "denied"), ("anonymous", "admin", 401, "denied"), ("HANGAR_ADMIN_TOKEN", "admin", 200, "allowed")];
    assert_eq!(summary, expected.iter().map(|(p, a, s, r)| (p.to_string(), a.to_string(), *s, r.to_string())).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["time"].is_string() && e["id"].is_string() && e["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:"))), "{events:?}");
    assert_eq!(events[2]["path"], "/open/pkg/new.bin");
    assert_eq!(audit(&proxy, "?principal=other").await.len(), 1);
    let r = http(proxy.admin, "GET", "/audit?since=yesterday", &[ADMIN]).await.unwrap().collect().await;
    assert_eq!(r.status, 400, "a bad time is named: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(http(proxy.admin, "GET", "/audit", &[]).await.unwrap().collect().await.status, 401, "the audit log is for admins");
    assert!(up.requests("/pkg/new.bin").is_empty());

    // kill -9: what was in the log is there after the restart, the same events.
    let before = audit_until(&proxy, 6).await;
    proxy.kill9();
    proxy.restart();
    let after = audit(&proxy, "").await;
    assert!(after.len() >= before.len() && after[..before.len()] == before[..], "lost in the crash:\nbefore {before:?}\nafter {after:?}");
}
