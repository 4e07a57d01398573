//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the offline switch:
//! `GET /offline`, `PUT|DELETE /offline` (global), `PUT|DELETE /offline/<repository>`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::cache::eviction::EvictionManager;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::offline::OfflineSwitch;
use crate::storage::TieredStorage;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub storage: &'static TieredStorage,
    pub eviction: &'static (dyn EvictionManager + Sync),
    /// Repositories enabled; a proxy with none is alive but not ready to serve.
    pub repositories: usize,
    pub offline: Arc<OfflineSwitch>,
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
