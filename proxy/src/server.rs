//! Assembling a running proxy from a [`Config`]: storage, eviction, services, listeners.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::offline::OfflineSwitch;
use crate::proxy::HangarProxy;
use crate::router::{Repository, Router};
use crate::storage::eviction::DiskEviction;
use crate::storage::{StorageOptions, TieredStorage};
use crate::upstream::Resolver;

/// How often the disk tier's eviction order is saved while running.
const EVICTION_SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// Saves eviction state periodically, so a crash loses at most one interval of recency
/// updates. (The final save happens after the server stops, in [`run`].)
struct EvictionSaver {
    eviction: &'static DiskEviction,
}

#[async_trait]
impl BackgroundService for EvictionSaver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(EVICTION_SAVE_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.eviction.persist().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Heartbeats into the fleet's metadata and applies queued metadata writes.
struct FleetService {
    fleet: Arc<crate::fleet::Fleet>,
    writer: parking_lot::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, shutdown: ShutdownWatch) {
        if let Some(writer) = self.writer.lock().take() {
            tokio::spawn(writer);
        }
        self.fleet.run(shutdown).await;
    }
}

fn build_fleet(
    settings: &crate::config::FleetSettings,
    listen: std::net::SocketAddr,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<crate::fleet::Fleet>, impl std::future::Future<Output = ()> + Send + 'static)> {
    use crate::metadata::{MemoryMetadata, Member, Metadata, MetadataWriter, RedisMetadata};
    let store: Arc<dyn Metadata> = match &settings.redis {
        Some(url) => Arc::new(RedisMetadata::new(url, &settings.region).map_err(|e| anyhow::anyhow!("fleet.redis: {e}"))?),
        None => Arc::new(MemoryMetadata::default()),
    };
    let advertise = match &settings.advertise {
        Some(a) => a.parse::<std::net::SocketAddr>().with_context(|| format!("fleet.advertise '{a}' is not ip:port"))?,
        None => listen,
    };
    let (writer, task) = MetadataWriter::spawn(store.clone(), settings.write_queue, metrics.metadata_writes.clone());
    let fleet = crate::fleet::Fleet::new(
        Member { addr: advertise.to_string() },
        settings.region.clone(),
        settings.redis.is_some(),
        store,
        writer,
        settings.heartbeat.0,
        settings.member_ttl.0,
        metrics.fleet_members.clone(),
    );
    Ok((Arc::new(fleet), task))
}

/// Hands fetched artefacts to the regional origin.
struct OriginUploader {
    origin: Arc<crate::origin::OriginClient>,
    listen: std::net::SocketAddr,
    workers: usize,
}

#[async_trait]
impl BackgroundService for OriginUploader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.origin.clone().run(self.listen, self.workers) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A listen address with port 0 gets a real port reserved here (bound with SO_REUSEPORT but
/// never listening, so it takes no connections) before pingora binds the same port.
struct Reservation {
    addr: SocketAddr,
    _socket: Option<socket2::Socket>,
}

fn reserve(addr: &str) -> anyhow::Result<Reservation> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("bad listen address {addr}"))?;
    if addr.port() != 0 {
        return Ok(Reservation { addr, _socket: None });
    }
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .context("reserved socket has no inet address")?;
    Ok(Reservation { addr: bound, _socket: Some(socket) })
}

/// Build every part and run until a shutdown signal (SIGTERM graceful, SIGINT fast).
pub fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let opts = StorageOptions {
        memory_bytes: config.cache.memory_bytes.0,
        memory_max_object_bytes: config.cache.memory_max_object_bytes.0,
        disk_bytes: config.cache.disk_bytes.0,
        fsync: config.cache.fsync,
        min_free_disk_bytes: config.cache.min_free_disk_bytes.0,
    };
    let dir = config.cache_dir();
    let (storage, entries) = TieredStorage::open(&dir, &opts, metrics.clone())
        .with_context(|| format!("opening cache directory {}", dir.display()))?;
    let storage: &'static TieredStorage = Box::leak(Box::new(storage));
    let eviction: &'static DiskEviction =
        Box::leak(Box::new(DiskEviction::new(opts.disk_bytes, &dir.join("eviction"))));
    let restored = entries.len();
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let over_budget = eviction.restore(entries).await;
            let span = pingora::cache::trace::Span::inactive().handle();
            for item in over_budget {
                let _ = storage.purge(PurgeTarget::Exact(&item), PurgeType::Eviction, &span).await;
            }
        });
    }
    tracing::info!(dir = %dir.display(), entries = restored, "disk cache opened");

    let mut repos = config
        .repositories
        .iter()
        .map(|r| Repository::from_config(r, &metrics).map_err(|e| anyhow::anyhow!("repository {}: {e}", r.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // What registry tags named survives restarts, for when the registry is down.
    for r in repos.iter_mut().filter(|r| r.format.kind() == crate::format::FormatKind::Oci) {
        let path = crate::pointers::PointerIndex::journal_path(&dir, &r.name);
        r.pointers = crate::pointers::PointerIndex::with_journal(100_000, &path).map_err(|e| anyhow::anyhow!("pointer journal {}: {e}", path.display()))?;
    }
    for r in &repos {
        tracing::info!(repository = %r.name, prefix = %r.prefix, format = r.format.kind().as_str(), "repository enabled");
    }
    let repo_count = repos.len();
    let router = Arc::new(Router::new(repos));
    let offline = Arc::new(OfflineSwitch::new(config.offline, config.repositories.iter().map(|r| (r.name.clone(), r.offline))));
    let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(config.cache.lock_timeout.0));

    let listen = reserve(&config.listen)?;
    let admin_listen = reserve(&config.admin_listen)?;

    let conf = ServerConf {
        threads: config.threads,
        // One runtime per worker thread, no stealing: cheaper scheduling on the hit path, and
        // the default is one thread.
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.shutdown_grace.0.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let origin = match &config.origin {
        Some(o) => {
            let url = crate::upstream::UpstreamUrl::parse(&o.url).with_context(|| format!("origin.url '{}'", o.url))?;
            // Origin is an in-region service; uploads speak plain HTTP to it.
            anyhow::ensure!(!url.tls, "origin.url '{}': origin is reached over http:// (TLS to origin is not supported)", o.url);
            Some(Arc::new(crate::origin::OriginClient::new(url, o.upload_queue, metrics.origin_uploads.clone())))
        }
        None => None,
    };
    let (fleet, fleet_task) = build_fleet(&config.fleet, listen.addr, &metrics)?;
    let resolver: crate::upstream::SharedResolver = Arc::new(Resolver::from_system());
    let proxy = HangarProxy {
        router: router.clone(),
        storage,
        eviction,
        cache_lock: lock,
        resolver: resolver.clone(),
        client: Arc::new(crate::upstream_client::UpstreamClient::new(resolver.clone())),
        metrics: metrics.clone(),
        offline: offline.clone(),
        listen_addr: listen.addr,
        origin: origin.clone(),
        fleet: fleet.clone(),
    };
    let socket_opts = || {
        let mut o = TcpSocketOptions::default();
        o.so_reuseport = Some(true);
        o.tcp_snd_buf = (config.send_buffer_bytes.0 > 0).then_some(config.send_buffer_bytes.0 as usize);
        o
    };
    let mut proxy_service = pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "hangar-proxy");
    proxy_service.add_tcp_with_settings(&listen.addr.to_string(), socket_opts());
    let mut admin_service = Service::new(
        "hangar-admin".to_string(),
        AdminApp { metrics, storage, eviction, repositories: repo_count, offline, router },
    );
    admin_service.add_tcp_with_settings(&admin_listen.addr.to_string(), socket_opts());
    server.add_service(proxy_service);
    server.add_service(admin_service);
    server.add_service(background_service("eviction-saver", EvictionSaver { eviction }));
    server.add_service(background_service("fleet", FleetService { fleet, writer: parking_lot::Mutex::new(Some(Box::pin(fleet_task))) }));
    if let (Some(origin), Some(settings)) = (origin, &config.origin) {
        tracing::info!(url = %settings.url, "regional origin enabled");
        server.add_service(background_service("origin-uploader", OriginUploader { origin, listen: listen.addr, workers: settings.upload_workers }));
    }

    // Announce the real addresses once both accept connections; then release the reservations.
    let (proxy_addr, admin_addr) = (listen.addr, admin_listen.addr);
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for addr in [proxy_addr, admin_addr] {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if std::time::Instant::now() > deadline {
                    tracing::error!(%addr, "listener did not come up");
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop((listen, admin_listen));
        // A line scripts and tests can wait for (and parse the ports from).
        println!("hangar-proxy ready: listen={proxy_addr} admin={admin_addr}");
        tracing::info!(listen = %proxy_addr, admin = %admin_addr, "hangar-proxy ready");
    });
    server.run(pingora::server::RunArgs::default());
    // Every service has stopped: save the eviction order so the next start resumes it.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(eviction.persist());
    tracing::info!("hangar-proxy stopped");
    Ok(())
}
