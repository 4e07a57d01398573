//! `hangar-origin`: the durable tier behind Hangar's proxies.
//!
//! Proxies hand it every immutable artefact they fetch from an upstream and ask it before
//! the upstream on a miss, so an artefact the upstream later deletes stays available and a
//! new proxy in the region starts warm. Reading order: [`api`] (the HTTP surface),
//! [`manifest`] (how paths map to content-addressed blobs), [`store`] (S3 or a directory).

pub mod api;
pub mod config;
pub mod manifest;
pub mod store;

use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::TokioIo;

use crate::api::Origin;
use crate::config::{OriginConfig, StoreConfig};
use crate::store::{BlobStore, LocalStore, S3Store};

pub async fn open_store(config: &StoreConfig) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match config {
        StoreConfig::Local { dir } => Arc::new(LocalStore::open(dir).with_context(|| format!("opening {}", dir.display()))?),
        StoreConfig::S3(opts) => Arc::new(S3Store::connect(opts.clone()).await.context("connecting to S3")?),
    })
}

/// Serve until the process is stopped. Prints `hangar-origin ready: listen=ADDR` once
/// the listener accepts connections (port 0 picks a free port).
pub async fn serve(config: OriginConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.spool_dir).with_context(|| format!("creating {}", config.spool_dir.display()))?;
    let store = open_store(&config.store).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let origin = Arc::new(Origin::new(config, store));
    println!("hangar-origin ready: listen={addr}");
    tracing::info!(%addr, "hangar-origin listening");
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let origin = origin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| origin.clone().handle(req));
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), service).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}
