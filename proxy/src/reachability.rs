//! A startup check of every upstream: can its host be resolved and a TCP connection opened?
//! One log line per upstream, in the background: it never delays readiness and is never
//! fatal (an upstream down at startup may be up by the first request, and a closed network
//! learns from the warnings which repositories it cannot reach, and may disable them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hangar_core::UpstreamUrl;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::upstream::Resolver;

/// How long one upstream gets to resolve and accept a connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks each `(repository, upstream)` once, at startup.
pub struct UpstreamCheck {
    pub targets: Vec<(String, UpstreamUrl)>,
    pub resolver: Arc<Resolver>,
}

/// Why `up` cannot be reached, or `Ok` with how long the connection took.
async fn check(resolver: &Resolver, up: &UpstreamUrl) -> Result<Duration, String> {
    let started = Instant::now();
    let addr = resolver.resolve(&up.host, up.port).await.map_err(|e| format!("DNS failure: {}", e.reason))?;
    match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(format!("connection refused by {addr}")),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("no connection to {addr} within {CHECK_TIMEOUT:?}")),
    }
}

#[async_trait]
impl BackgroundService for UpstreamCheck {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut checks = tokio::task::JoinSet::new();
        for (repository, up) in self.targets.clone() {
            let resolver = self.resolver.clone();
            checks.spawn(async move {
                let host = format!("{}:{}", up.host, up.port);
                match check(&resolver, &up).await {
                    Ok(took) => tracing::info!(%repository, upstream = %host, ms = took.as_millis() as u64, "upstream reachable"),
                    Err(why) => tracing::warn!(%repository, upstream = %host, error = %why, "upstream unreachable at startup (requests to it will fail until it is; not fatal)"),
                }
            });
        }
        tokio::select! {
            _ = async { while checks.join_next().await.is_some() {} } => {}
            _ = shutdown.changed() => {}
        }
    }
}
