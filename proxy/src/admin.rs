//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the offline switch:
//! `GET /offline`, `PUT|DELETE /offline` (global), `PUT|DELETE /offline/<repository>`; and
//! purges: `DELETE /cache/<repository>/<path>` drops one entry, a trailing `*` drops every
//! entry under that prefix (`DELETE /cache/<repository>/*`: the whole repository).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::cache::eviction::EvictionManager;
use pingora::protocols::http::ServerSession;

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
        // An exact path is resolved as a request would be (`@scope/name` and `@scope%2fname`
        // are one npm package); a prefix is taken as written.
        let key_path = if prefix {
            rel.to_string()
        } else {
            let (path, query) = match rel.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rel, None),
            };
            let req = pingora::http::RequestHeader::build("GET", b"/", None).expect("static request");
            match repo.format.resolve(&crate::path::RequestPath { relative: path, query }, &req) {
                Ok(r) => r.key_path,
                Err(e) => return reply(400, "application/json", format!("{{\"error\":\"{}\"}}\n", e.to_string().replace('"', "'")).into_bytes()),
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

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.tier_bytes.with_label_values(&["memory"]).set(self.storage.memory().bytes() as i64);
        m.tier_objects.with_label_values(&["memory"]).set(self.storage.memory().objects() as i64);
        m.tier_bytes.with_label_values(&["disk"]).set(self.eviction.total_size() as i64);
        m.tier_objects.with_label_values(&["disk"]).set(self.eviction.total_items() as i64);
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if let Some(rest) = path.strip_prefix("/cache/") {
            if method != http::Method::DELETE {
                return reply(405, "application/json", b"{\"error\":\"use DELETE\"}\n".to_vec());
            }
            return self.purge(rest);
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
        match path.as_str() {
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
