//! Assembling a running proxy from a [`Config`] and its pluggable parts: storage, eviction,
//! fleet membership, outcome sinks, services and listeners.
//!
//! ```no_run
//! # fn main() -> Result<(), hangar_proxy::StartError> {
//! let config = hangar_proxy::Config::default();
//! hangar_proxy::ProxyBuilder::new(config, "defaults")?.run()
//! # }
//! ```
//!
//! [`ProxyBuilder::new`] runs every check a config can be put to without binding or touching the
//! network (the config's own validation, each repository's format, the TLS listener's
//! certificate and key); `check-config` runs exactly that. [`ProxyBuilder::run`] binds the
//! listeners (an address in use fails at once), opens the cache and serves until SIGTERM
//! (graceful) or SIGINT (fast).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_core::UpstreamUrl;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::connections::{ConnectionLimits, Guarded};

use crate::access_log::AccessLog;
use crate::admin::AdminApp;
use crate::client::Client;
use crate::config::{Config, ConfigError, DisabledRepository};
use crate::listeners::{ListenError, PreBound};
use crate::fleet::{Alone, Fleet, FleetParts, Member, Membership, StaticMembers};
use crate::metadata::{MemoryMetadata, Metadata, MetadataSink, MetadataWriter, RedisMetadata};
use crate::metrics::{Metrics, MetricsSink, RepoMetrics};
use crate::offline::OfflineSwitch;
use crate::origin::{OriginClient, OriginHandOff, Uploader};
use crate::outcome::{OutcomeSink, Sinks};
use crate::pointers::PointerIndex;
use crate::reachability::UpstreamCheck;
use crate::repository::Repository;
use crate::request::HangarProxy;
use crate::router::Router;
use crate::storage::eviction::DiskEviction;
use crate::storage::{StorageOptions, TieredStorage};
use crate::upstream::Resolver;

/// How often the disk tier's eviction order is saved while running.
const EVICTION_SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid (the error names the file and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cache directory cannot be created, read or written.
    #[error("opening cache directory {dir}: {source}")]
    Cache { dir: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// The audit log's directory cannot be created or its writer started.
    #[error("opening the audit log in {dir} (auth.audit_dir): {source}")]
    Audit { dir: String, source: std::io::Error },
    /// A listener cannot be bound (the address is in use, or not this host's).
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The fleet cannot be joined as configured.
    #[error("{0}")]
    Fleet(String),
    /// The async runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A proxy about to start: a validated config plus the parts an embedder may replace or add.
pub struct ProxyBuilder {
    config: Config,
    /// Where the config came from, for error messages (`config/hangar.toml`, `command line`).
    source: String,
    membership: Option<Arc<dyn Membership>>,
    sinks: Vec<Arc<dyn OutcomeSink>>,
    /// Repositories the config names but the environment left out.
    disabled: Vec<DisabledRepository>,
    /// `repository 'name': ...` lines about valid but doubtful settings.
    warnings: Vec<String>,
    /// The bootstrap admin credential ([`crate::auth::BOOTSTRAP_VARIABLE`]), if given.
    bootstrap: Option<String>,
}

impl ProxyBuilder {
    /// Check `config` (named `source` in errors) as startup would, without touching the disk
    /// or the network.
    /// A repository's error names it (`repository[0].files_upstream: repository 'pypi'
    /// (format pypi): ...`), as startup would.
    pub fn new(config: Config, source: &str) -> Result<Self, ConfigError> {
        config.validate(source)?;
        config.validate_identity(source)?;
        let metrics = Metrics::new();
        let mut warnings = Vec::new();
        for (i, cfg) in config.repositories.iter().enumerate() {
            let repo = Repository::from_config(cfg, &metrics, None)
                .map_err(|e| ConfigError::Invalid { file: source.to_string(), key: format!("repository[{i}].{}", e.key), message: format!("repository '{}' (format {}): {}", cfg.name, cfg.format, e.message) })?;
            warnings.extend(repo.format.config_warnings().into_iter().map(|w| format!("repository '{}': {w}", cfg.name)));
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            crate::listeners::check_tls(cert, key).map_err(|e| match e {
                ListenError::Tls { key, path, message } => ConfigError::Invalid { file: source.to_string(), key: key.to_string(), message: format!("'{path}': {message}") },
                other => ConfigError::Invalid { file: source.to_string(), key: "tls_cert".into(), message: other.to_string() },
            })?;
        }
        Ok(ProxyBuilder { config, source: source.to_string(), membership: None, sinks: Vec::new(), disabled: Vec::new(), warnings, bootstrap: None })
    }

    /// Tell clients of the repositories in `disabled` why they are off (a 404 naming the
    /// variable that would enable it) instead of that nothing is mounted there.
    pub fn disabled(mut self, disabled: Vec<DisabledRepository>) -> Self {
        self.disabled = disabled;
        self
    }

    /// Accept `credential` as a bearer token (or the password of HTTP basic, any user name)
    /// with every permission on both listeners: how a fresh install is first configured
    /// (`HANGAR_ADMIN_TOKEN`). Empty: none.
    pub fn bootstrap_admin(mut self, credential: Option<String>) -> Self {
        self.bootstrap = credential.filter(|c| !c.is_empty());
        self
    }

    /// Doubtful but valid settings found by [`ProxyBuilder::new`], one line each; `run` logs
    /// them as warnings.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The config this proxy will run.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Find fleet members through `membership` instead of what the config says (Redis, the
    /// static list, or alone). The config's `fleet.secret` signs hops, and must be set.
    pub fn membership(mut self, membership: Arc<dyn Membership>) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Tell `sink` how every request ended, after the built-in sinks (metrics, fleet
    /// metadata, origin hand-off).
    pub fn outcome_sink(mut self, sink: Arc<dyn OutcomeSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Build every part and serve until a shutdown signal (SIGTERM graceful, SIGINT fast).
    /// Prints `hangar-proxy ready: listen=ADDR admin=ADDR` on stdout once both listeners
    /// accept connections.
    pub fn run(self) -> Result<(), StartError> {
        let config = &self.config;
        // First, so that a port in use fails before anything else is opened or started.
        let listen = crate::listeners::bind("listen", &config.listen, config.listen_reuseport)?;
        let admin_listen = crate::listeners::bind("admin_listen", &config.admin_listen, config.listen_reuseport)?;
        // With TLS on the client listener, the proxy's own reads through its cache (listings,
        // origin uploads) use a plain listener on loopback that only this host can reach.
        let internal = match config.tls_cert {
            Some(_) => Some(crate::listeners::bind("internal", if listen.addr.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }, false)?),
            None => None,
        };
        if let Some(internal) = &internal {
            tracing::info!(addr = %internal.addr, "plain listener on loopback for the proxy's own reads through its cache (TLS is on the client listener)");
        }
        let own_addr = internal.as_ref().map_or(listen.addr, |i| i.addr);
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
        let metrics = Arc::new(Metrics::new());
        let opts = StorageOptions {
            memory_bytes: config.cache.memory_bytes.0,
            memory_max_object_bytes: config.cache.memory_max_object_bytes.0,
            disk_bytes: config.cache.disk_bytes.0,
            fsync: config.cache.fsync,
            min_free_disk_bytes: config.cache.min_free_disk_bytes.0,
        };
        let dir = config.cache_dir();
        let cache_error = |e: crate::storage::StorageError| StartError::Cache { dir: dir.display().to_string(), source: e.into() };
        let (storage, entries) = TieredStorage::open(&dir, &opts, metrics.clone()).map_err(cache_error)?;
        let storage: &'static TieredStorage = Box::leak(Box::new(storage));
        // A budget the filesystem cannot hold would never evict, and stop admitting instead.
        let budget = match storage.disk().capacity().map(|c| c.saturating_sub(opts.min_free_disk_bytes)) {
            Some(0) => {
                let why = format!("cache.min_free_disk_bytes ({}) leaves no room for a cache on this filesystem: lower it, or put cache.dir on a larger one", opts.min_free_disk_bytes);
                return Err(StartError::Cache { dir: dir.display().to_string(), source: why.into() });
            }
            Some(fits) if fits < opts.disk_bytes => {
                tracing::warn!(dir = %dir.display(), configured = opts.disk_bytes, effective = fits, "cache.disk_bytes is larger than the cache filesystem (less min_free_disk_bytes): using what fits");
                fits
            }
            _ => opts.disk_bytes,
        };
        let eviction: &'static DiskEviction = Box::leak(Box::new(DiskEviction::new(budget, &dir.join("eviction"))));
        let derived = Arc::new(crate::derived::DerivedFiles::open(&dir.join("derived"), opts.fsync).map_err(cache_error)?);
        let restored = entries.len();
        {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
            rt.block_on(async {
                let over_budget = eviction.restore(entries).await;
                let span = pingora::cache::trace::Span::inactive().handle();
                for item in over_budget {
                    let _ = storage.purge(PurgeTarget::Exact(&item), PurgeType::Eviction, &span).await;
                }
            });
        }
        tracing::info!(dir = %dir.display(), entries = restored, "disk cache opened");

        let mut repos = Vec::with_capacity(config.repositories.len());
        for (i, cfg) in config.repositories.iter().enumerate() {
            let journal = PointerIndex::journal_path(&dir, &cfg.name);
            let repo = Repository::from_config(cfg, &metrics, Some(&journal)).map_err(|e| ConfigError::Invalid { file: self.source.clone(), key: format!("repository[{i}].{}", e.key), message: e.message })?;
            tracing::info!(repository = %repo.name, prefix = %repo.prefix, format = %repo.format.kind(), "repository enabled");
            repos.push(repo);
        }
        let repo_count = repos.len();
        if repo_count == 0 {
            tracing::warn!("no repository is enabled: every request will be answered 404");
        }
        let repo_metrics: HashMap<String, RepoMetrics> = repos.iter().map(|r| (r.name.clone(), r.metrics.clone())).collect();
        let upstreams = UpstreamCheck {
            targets: repos.iter().filter(|r| !config.offline && !config.repositories.iter().any(|c| c.name == r.name && c.offline)).flat_map(|r| std::iter::once(r.upstream.clone()).chain(r.files.clone()).map(|u| (r.name.clone(), u))).collect(),
            resolver: Arc::new(Resolver::from_system()),
        };
        let router = Arc::new(Router::new(repos).with_disabled(self.disabled.clone()));
        let offline = Arc::new(OfflineSwitch::new(config.offline, config.repositories.iter().map(|r| (r.name.clone(), r.offline))));
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(config.cache.lock_timeout.0));

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

        let resolver = Arc::new(Resolver::from_system());
        let client = Arc::new(Client::new(resolver.clone()));
        let (fleet, store) = self.fleet(listen.addr, &metrics)?;
        let (writer, write_task) = MetadataWriter::spawn(store.clone(), config.fleet.write_queue, metrics.metadata_writes.clone());
        let mut sinks = Sinks::default();
        sinks.push(Arc::new(MetricsSink::new(metrics.clone(), repo_metrics)));
        if config.access_log {
            sinks.push(Arc::new(AccessLog));
        }
        sinks.push(Arc::new(MetadataSink::new(writer, &fleet.me().addr, fleet.region(), fleet.is_shared())));
        let origin = config.origin.as_ref().map(|o| {
            let url = UpstreamUrl::parse(&o.url).expect("validated");
            Arc::new(OriginClient::new(url, o.upload_queue, metrics.origin_uploads.clone()))
        });
        if let Some(origin) = &origin {
            sinks.push(Arc::new(OriginHandOff::new(origin.clone())));
        }
        for sink in self.sinks {
            sinks.push(sink);
        }
        let audit_dir = config.auth.audit_dir.as_ref().map_or_else(|| dir.join("audit"), std::path::PathBuf::from);
        // Kept until the server has stopped: dropping it writes out what is queued.
        let (audit, _audit_guard) = crate::auth::audit::AuditLog::start(&audit_dir).map_err(|source| StartError::Audit { dir: audit_dir.display().to_string(), source })?;
        sinks.push(audit.clone());
        let registry_secret = config.fleet.secret.as_ref().map(|s| s.0.as_bytes());
        let auth = crate::auth::Authorizer::new(&config.auth, self.bootstrap.as_deref(), client.clone(), registry_secret);
        if auth.has_bootstrap() {
            tracing::warn!("bootstrap admin credential enabled ({}): every permission on every listener; configure tokens and unset it", crate::auth::BOOTSTRAP_VARIABLE);
        }
        if config.auth.grants.is_empty() {
            tracing::warn!("no [[auth.grant]] in the config: every request is refused (deny by default)");
        }
        let proxy = HangarProxy {
            auth: auth.clone(),
            router: router.clone(),
            storage,
            eviction,
            cache_lock: lock,
            resolver,
            client: client.clone(),
            metrics: metrics.clone(),
            offline: offline.clone(),
            listen_addr: own_addr,
            origin: origin.clone(),
            fleet: fleet.clone(),
            sinks,
            keepalive_secs: config.connections.keepalive_timeout.0.as_secs_f64().ceil() as u64,
            derived,
        };
        // (The sockets are bound already, SO_REUSEPORT as configured; these options are the
        // ones pingora applies to each accepted connection.)
        let socket_opts = || {
            let mut o = TcpSocketOptions::default();
            o.tcp_snd_buf = (config.send_buffer_bytes.0 > 0).then_some(config.send_buffer_bytes.0 as usize);
            o
        };
        let limits = ConnectionLimits {
            max_clients: match config.connections.max_clients {
                0 => crate::connections::default_max_clients(),
                n => n,
            },
            keepalive_timeout: config.connections.keepalive_timeout.0,
            header_timeout: config.connections.header_timeout.0,
        };
        tracing::info!(max_clients = limits.max_clients, "client connection limit");
        let mut app = pingora::proxy::HttpProxy::new(proxy, server.configuration.clone());
        app.handle_init_modules();
        let mut proxy_service = Service::new("hangar-proxy".to_string(), Guarded::new(app, limits, metrics.connections.clone()));
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = pingora::listeners::tls::TlsSettings::intermediate(cert, key).map_err(|e| ListenError::Tls { key: "tls_cert", path: cert.clone(), message: e.to_string() })?;
                proxy_service.add_tls_with_settings(&listen.key(), Some(socket_opts()), tls);
            }
            _ => proxy_service.add_tcp_with_settings(&listen.key(), socket_opts()),
        }
        let mut admin_service = Service::new("hangar-admin".to_string(), AdminApp { metrics, storage, eviction, repositories: repo_count, offline, router, metadata: store, auth, audit });
        admin_service.add_tcp_with_settings(&admin_listen.key(), socket_opts());
        let (proxy_addr, admin_addr, scheme) = (listen.addr, admin_listen.addr, if config.tls_cert.is_some() { "https" } else { "http" });
        if let Some(internal) = &internal {
            proxy_service.add_tcp_with_settings(&internal.key(), socket_opts());
        }
        server.add_service(PreBound::new(proxy_service, std::iter::once(listen).chain(internal).collect()));
        server.add_service(PreBound::new(admin_service, vec![admin_listen]));
        server.add_service(background_service("upstream-check", upstreams));
        server.add_service(background_service("eviction-saver", EvictionSaver { eviction }));
        server.add_service(background_service("fleet", FleetService { fleet: fleet.clone(), writer: parking_lot::Mutex::new(Some(Box::pin(write_task))) }));
        if let (Some(origin), Some(settings)) = (origin, &config.origin) {
            tracing::info!(url = %settings.url, "regional origin enabled");
            let uploader = Uploader { client, listen: own_addr, fleet };
            server.add_service(background_service("origin-uploader", OriginUploader { origin, uploader: parking_lot::Mutex::new(Some(uploader)), workers: settings.upload_workers }));
        }

        // Both sockets listen (connections queue until pingora accepts them): a line scripts
        // and tests can wait for, and parse the ports from.
        println!("hangar-proxy ready: listen={proxy_addr} admin={admin_addr}");
        tracing::info!(listen = %proxy_addr, admin = %admin_addr, scheme, "hangar-proxy ready");
        server.run(pingora::server::RunArgs::default());
        // Every service has stopped: save the eviction order so the next start resumes it.
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?.block_on(eviction.persist());
        tracing::info!("hangar-proxy stopped");
        Ok(())
    }

    /// The fleet this proxy belongs to, and the store its object index is kept in.
    fn fleet(&self, listen: SocketAddr, metrics: &Metrics) -> Result<(Arc<Fleet>, Arc<dyn Metadata>), StartError> {
        let settings = &self.config.fleet;
        let shared = settings.is_shared() || self.membership.is_some();
        let advertise = settings.advertise.as_ref().map_or(Ok(listen), |a| a.parse()).expect("validated");
        let me = Member { addr: advertise.to_string() };
        // (A fleet from the config was validated for both in `new`; one plugged in by an
        // embedder is checked here.)
        if shared && advertise.ip().is_unspecified() {
            return Err(StartError::Fleet(format!("fleet.advertise: required when listening on {listen}: the address the other proxies reach this one at")));
        }
        if shared && settings.secret.is_none() {
            return Err(StartError::Fleet("fleet.secret: required for a fleet: members sign their hops to each other with it".into()));
        }
        let redis = match &settings.redis {
            Some(url) => Some(Arc::new(RedisMetadata::new(url, &settings.region).map_err(|e| StartError::Fleet(format!("fleet.redis: {e}")))?)),
            None => None,
        };
        let store: Arc<dyn Metadata> = match &redis {
            Some(r) => r.clone(),
            None => Arc::new(MemoryMetadata::default()),
        };
        let membership: Arc<dyn Membership> = match (&self.membership, redis, settings.members.is_empty()) {
            (Some(m), _, _) => m.clone(),
            (None, Some(r), _) => r,
            (None, None, false) => Arc::new(StaticMembers::new(&settings.members)),
            (None, None, true) => Arc::new(Alone),
        };
        if shared {
            tracing::info!(me = %me.addr, region = %settings.region, redis = settings.redis.is_some(), members = ?settings.members, "joining the fleet");
        }
        let secret = match &settings.secret {
            Some(s) => s.0.as_bytes().to_vec(),
            None => crate::fleet::random_secret(),
        };
        let fleet = Fleet::new(FleetParts {
            me,
            region: settings.region.clone(),
            shared,
            membership,
            secret,
            heartbeat: settings.heartbeat.0,
            member_ttl: settings.member_ttl.0,
            members_gauge: metrics.fleet_members.clone(),
            rejected: metrics.hop_proofs_rejected.clone(),
        });
        Ok((Arc::new(fleet), store))
    }
}

/// Saves eviction state periodically, so a crash loses at most one interval of recency
/// updates. (The final save happens after the server stops, in [`ProxyBuilder::run`].)
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

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Heartbeats into the fleet's membership and applies queued metadata writes.
struct FleetService {
    fleet: Arc<Fleet>,
    writer: parking_lot::Mutex<Option<Task>>,
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

/// Hands fetched artefacts to the regional origin.
struct OriginUploader {
    origin: Arc<OriginClient>,
    uploader: parking_lot::Mutex<Option<Uploader>>,
    workers: usize,
}

#[async_trait]
impl BackgroundService for OriginUploader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(uploader) = self.uploader.lock().take() else { return };
        tokio::select! {
            _ = self.origin.clone().run(uploader, self.workers) => {}
            _ = shutdown.changed() => {}
        }
    }
}
