//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the offline switch:
//! `GET /offline`, `PUT|DELETE /offline` (global), `PUT|DELETE /offline/<repository>`; and
//! purges: `DELETE /cache/<repository>/<path>` drops one entry, a trailing `*` drops every
//! entry under that prefix (`DELETE /cache/<repository>/*`: the whole repository); and the
//! fleet's object index: `GET /index/<repository>/<path>` says which proxies hold the object,
//! its size, digest, last access and hits by region (fleet-wide with Redis).
//!
//! `GET /audit?since=&until=&principal=&package=&limit=` returns the audit log's events
//! (NDJSON, oldest first).
//!
//! Only `auth.open_admin_paths` (by default `/metrics`, `/healthz`, `/readyz`) are served
//! without a credential; everything else needs one with the `admin` action on every
//! repository (401 without, 403 with one that lacks it).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::cache::eviction::EvictionManager;
use pingora::protocols::http::ServerSession;

use crate::config::Action;
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::offline::OfflineSwitch;
use crate::router::{cache_key, Router};
use crate::storage::TieredStorage;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub storage: &'static TieredStorage,
    pub eviction: &'static (dyn EvictionManager + Sync),
    /// Repositories enabled; a proxy with none is alive but not ready to serve.
    pub repositories: usize,
    pub offline: Arc<OfflineSwitch>,
    pub router: Arc<Router>,
    /// The object index the request path writes (in-process, or the region's Redis).
    pub metadata: Arc<dyn Metadata>,
    /// Everything but the open paths (`/metrics`, `/healthz`, `/readyz` by default) needs the
    /// `admin` action.
    pub auth: Arc<crate::auth::Authorizer>,
    /// Admin actions and refusals are recorded; `GET /audit` reads it.
    pub audit: Arc<crate::auth::audit::AuditLog>,
}

/// `{"error":"<message>"}` and a newline.
fn json_message(message: &str) -> Vec<u8> {
    format!("{{\"error\":\"{}\"}}\n", message.replace('\\', "\\\\").replace('"', "\\\"")).into_bytes()
}

/// A 401 with the challenges clients answer.
fn unauthenticated(message: &str) -> Response<Vec<u8>> {
    let body = json_message(message);
    let mut builder = Response::builder().status(401).header(http::header::CONTENT_TYPE, "application/json").header(http::header::CONTENT_LENGTH, body.len());
    for c in crate::auth::CHALLENGES {
        builder = builder.header(http::header::WWW_AUTHENTICATE, c);
    }
    builder.body(body).expect("static response parts are valid")
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

impl AdminApp {
    /// `GET /audit`: the events the query selects, as NDJSON; a bad parameter is a 400 that
    /// names it.
    async fn audit_events(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let query = match crate::auth::audit::Query::parse(query) {
            Ok(q) => q,
            Err(message) => return reply(400, "application/json", json_message(&message)),
        };
        let dir = self.audit.dir().to_path_buf();
        match tokio::task::spawn_blocking(move || crate::auth::audit::read(&dir, &query)).await {
            Ok(Ok(lines)) => reply(200, "application/x-ndjson", lines),
            Ok(Err(e)) => reply(500, "application/json", json_message(&format!("reading the audit log: {e}"))),
            Err(e) => reply(500, "application/json", json_message(&format!("reading the audit log: {e}"))),
        }
    }

    /// `rest` is `<repository>/<path>`, the path as the client would request it below the
    /// repository's prefix; a trailing `*` makes it a prefix.
    fn purge(&self, rest: &str) -> Response<Vec<u8>> {
        let (name, rel) = rest.split_once('/').unwrap_or((rest, "*"));
        let Some(repo) = self.router.by_name(name) else {
            return reply(404, "application/json", b"{\"error\":\"no such repository\"}\n".to_vec());
        };
        let (rel, prefix) = match rel.strip_suffix('*') {
            Some(p) => (p, true),
            None => (rel, false),
        };
        // A prefix is taken as written.
        let key_path = if prefix {
            rel.to_string()
        } else {
            match key_path(repo, rel) {
                Ok(k) => k,
                Err(response) => return response,
            }
        };
        let key = cache_key(&repo.name, &key_path);
        // Exact purges drop every Vary variant of the URL too.
        let keys = if prefix { self.storage.purge_prefix(key.primary_key()) } else { self.storage.purge_url(&key.to_compact()) };
        for k in &keys {
            self.eviction.remove(pingora::cache::CacheEntryKeyRef::from_entry_id(k, None));
        }
        let purged = keys.len();
        tracing::info!(repository = %repo.name, path = %rel, prefix, purged, "cache purge");
        reply(200, "application/json", format!("{{\"purged\":{purged}}}\n").into_bytes())
    }

    /// `rest` is `<repository>/<path>`: what the object index knows of that object.
    async fn index(&self, rest: &str) -> Response<Vec<u8>> {
        let (name, rel) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(repo) = self.router.by_name(name) else {
            return reply(404, "application/json", b"{\"error\":\"no such repository\"}\n".to_vec());
        };
        let key = match key_path(repo, rel) {
            Ok(k) => k,
            Err(response) => return response,
        };
        match self.metadata.object(&repo.name, &key).await {
            Ok(Some(info)) => reply(200, "application/json", serde_json::to_vec(&info).expect("object info serialises")),
            Ok(None) => reply(404, "application/json", b"{\"error\":\"not in the index\"}\n".to_vec()),
            Err(e) => reply(503, "application/json", format!("{{\"error\":\"{}\"}}\n", e.to_string().replace('"', "'")).into_bytes()),
        }
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        // A breaker's cool-down ends without a request: the gauge says half-open when it is.
        for repo in self.router.repositories() {
            repo.breaker.publish();
        }
        m.tier_bytes.with_label_values(&["memory"]).set(self.storage.memory().bytes() as i64);
        m.tier_objects.with_label_values(&["memory"]).set(self.storage.memory().objects() as i64);
        m.tier_bytes.with_label_values(&["disk"]).set(self.eviction.total_size() as i64);
        m.tier_objects.with_label_values(&["disk"]).set(self.eviction.total_items() as i64);
    }
}

/// The cache key path of `rel` (a path as a client would request it below the repository's
/// prefix, with its query), resolved as a request would be (`@scope/name` and `@scope%2fname`
/// are one npm package); a path the format refuses is a 400 that says why.
fn key_path(repo: &crate::repository::Repository, rel: &str) -> Result<String, Response<Vec<u8>>> {
    let (path, query) = match rel.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rel, None),
    };
    repo.format
        .resolve(&hangar_core::RequestPath { relative: path, query }, &http::HeaderMap::new())
        .map(|r| r.key_path)
        .map_err(|e| reply(400, "application/json", format!("{{\"error\":\"{}\"}}\n", e.to_string().replace('"', "'")).into_bytes()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        // Purges and index lookups name objects with their query (`file?x=1`).
        let path = req.uri.path_and_query().map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string());
        let method = req.method.clone();
        if self.auth.admin_path_is_open(req.uri.path()) {
            return self.serve(&method, &path).await;
        }
        if req.uri.query().is_some_and(|q| self.auth.secret_in_query(q)) {
            return reply(400, "application/json", b"{\"error\":\"a credential in the URL query is refused: send it in the Authorization header\"}\n".to_vec());
        }
        let asked = crate::auth::Asked { action: Action::Admin, repository: None, package: None, registry: false };
        let authorization = req.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let (principal, response) = match self.auth.check(authorization, &asked).await {
            Ok(p) => (p.name().to_string(), self.serve(&method, &path).await),
            Err(crate::auth::Refusal::Unauthenticated(message)) => (if authorization.is_some() { "unauthenticated" } else { crate::config::ANONYMOUS_ROLE }.to_string(), unauthenticated(&message)),
            Err(crate::auth::Refusal::Forbidden { principal, message }) => (principal, reply(403, "application/json", json_message(&message))),
        };
        // Refusals, and whatever changes something (purges, the offline switch), are recorded.
        let status = response.status().as_u16();
        if status == 401 || status == 403 || method != http::Method::GET {
            let path = path.split('?').next().unwrap_or("");
            self.audit.write(crate::auth::audit::Event {
                time: String::new(),
                id: String::new(),
                principal: &principal,
                client,
                action: Action::Admin.as_str(),
                repository: None,
                package: None,
                method: method.as_str(),
                path,
                status,
                result: if status == 401 || status == 403 { "denied" } else { "allowed" },
            });
        }
        response
    }
}

impl AdminApp {
    /// What the admin listener answers to an admitted request.
    async fn serve(&self, method: &http::Method, path: &str) -> Response<Vec<u8>> {
        let method = method.clone();
        if path == "/audit" || path.starts_with("/audit?") {
            if method != http::Method::GET {
                return reply(405, "application/json", b"{\"error\":\"use GET\"}\n".to_vec());
            }
            return self.audit_events(path.split_once('?').map(|(_, q)| q)).await;
        }
        if let Some(rest) = path.strip_prefix("/cache/") {
            if method != http::Method::DELETE {
                return reply(405, "application/json", b"{\"error\":\"use DELETE\"}\n".to_vec());
            }
            return self.purge(rest);
        }
        if let Some(rest) = path.strip_prefix("/index/") {
            if method != http::Method::GET {
                return reply(405, "application/json", b"{\"error\":\"use GET\"}\n".to_vec());
            }
            return self.index(rest).await;
        }
        if let Some(rest) = path.strip_prefix("/offline") {
            let on = match method.as_str() {
                "GET" => None,
                "PUT" | "POST" => Some(true),
                "DELETE" => Some(false),
                _ => return reply(405, "application/json", b"{\"error\":\"use GET, PUT or DELETE\"}\n".to_vec()),
            };
            if let Some(on) = on {
                match rest.strip_prefix('/') {
                    None | Some("") => self.offline.set_global(on),
                    Some(repo) => {
                        if !self.offline.set_repo(repo, on) {
                            return reply(404, "application/json", b"{\"error\":\"no such repository\"}\n".to_vec());
                        }
                    }
                }
                tracing::warn!(target = %rest, offline = on, "offline switch changed");
            }
            return reply(200, "application/json", self.offline.to_json().into_bytes());
        }
        match path.split('?').next().unwrap_or("") {
            "/metrics" => {
                self.refresh_gauges();
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.repositories > 0 && self.storage.disk().root().join("objects").is_dir() {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else if self.repositories == 0 {
                    reply(503, "text/plain", b"no repositories enabled\n".to_vec())
                } else {
                    reply(503, "text/plain", b"cache directory unavailable\n".to_vec())
                }
            }
            _ => reply(404, "application/json", b"{\"error\":\"not found\"}\n".to_vec()),
        }
    }
}
