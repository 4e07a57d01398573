//! The client and admin listeners: bound here, before anything else starts, and handed to
//! pingora already listening.
//!
//! Pingora binds its own sockets when a service starts, on a worker thread, after the proxy
//! has announced itself; an address in use is retried for seconds and then panics that thread
//! while the rest of the process runs on. Binding first makes a clash a clean startup error
//! (exit non-zero at once, naming the address), and the ready line true: both sockets are
//! listening when it is printed. Pingora adopts a socket it finds under its address in the
//! listen-fd table it passes to each service ([`PreBound`] puts it there), exactly as it
//! adopts sockets handed over by a graceful upgrade. Per-connection options (`SO_SNDBUF`)
//! stay pingora's: it applies them to every accepted connection.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process (or another Hangar) listens on the address.
    #[error("{key} address {addr} is already in use (another process listens on it; to share a port between processes on purpose, set listen_reuseport = true in every one)")]
    InUse { key: &'static str, addr: String },
    /// Any other failure to bind or listen.
    #[error("{key} address {addr}: {source}")]
    Bind { key: &'static str, addr: String, source: std::io::Error },
    /// The certificate or key for the TLS listener cannot be used.
    #[error("{key} '{path}': {message}")]
    Tls { key: &'static str, path: String, message: String },
}

/// A socket bound and listening on `addr` (the real port, when port 0 was asked for).
pub struct Bound {
    pub addr: SocketAddr,
    socket: socket2::Socket,
}

impl Bound {
    /// The key pingora looks the socket up by: the address as given to `add_tcp`/`add_tls`.
    pub fn key(&self) -> String {
        self.addr.to_string()
    }

    /// The socket's descriptor, now owned by whoever receives it (pingora's fd table).
    fn into_raw_fd(self) -> RawFd {
        self.socket.into_raw_fd()
    }
}

/// Bind and listen on `addr` (`IP:port`, validated by the config; `key` names the setting in
/// errors: `listen`, `admin_listen`), with `SO_REUSEADDR` (a restart does not wait out
/// TIME_WAIT) and `SO_REUSEPORT` only when `reuseport` is set.
pub fn bind(key: &'static str, addr: &str, reuseport: bool) -> Result<Bound, ListenError> {
    let failed = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AddrInUse => ListenError::InUse { key, addr: addr.to_string() },
        _ => ListenError::Bind { key, addr: addr.to_string(), source },
    };
    let parsed: SocketAddr = addr.parse().map_err(|_| failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP:port address")))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(parsed), socket2::Type::STREAM, None).map_err(failed)?;
    socket.set_reuse_address(true).map_err(failed)?;
    if reuseport {
        socket.set_reuse_port(true).map_err(failed)?;
    }
    socket.set_nonblocking(true).map_err(failed)?;
    socket.bind(&parsed.into()).map_err(|e| match e.kind() {
        // With a specific port in use, say which one (port 0 never clashes).
        std::io::ErrorKind::AddrInUse => ListenError::InUse { key, addr: parsed.to_string() },
        _ => failed(e),
    })?;
    socket.listen(1024).map_err(failed)?;
    let bound = socket.local_addr().map_err(failed)?.as_socket().ok_or_else(|| failed(std::io::Error::other("bound socket has no inet address")))?;
    Ok(Bound { addr: bound, socket })
}

/// Check that `cert` and `key` (PEM files) load and belong together, as the TLS listener
/// will need them: a missing file, a file without a certificate or key, or a key that is not
/// the certificate's is an error naming the file.
pub fn check_tls(cert: &str, key: &str) -> Result<(), ListenError> {
    let tls = |key_name: &'static str, path: &str, message: String| ListenError::Tls { key: key_name, path: path.to_string(), message };
    for (name, path) in [("tls_cert", cert), ("tls_key", key)] {
        std::fs::metadata(path).map_err(|e| tls(name, path, format!("cannot read: {e}")))?;
    }
    let (certs, private) = match pingora::tls::load_certs_and_key_files(cert, key) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(tls("tls_cert", cert, format!("no PEM certificate in it, or no PEM private key in tls_key '{key}'"))),
        Err(e) => return Err(tls("tls_cert", cert, format!("not readable as PEM: {e}"))),
    };
    pingora::tls::install_default_crypto_provider();
    pingora::tls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| tls("tls_key", key, format!("does not fit the certificate in tls_cert '{cert}': {e}")))?;
    Ok(())
}

/// A listening service whose sockets were bound beforehand: it puts them in pingora's
/// listen-fd table, under the addresses the service listens on, before the service starts.
pub struct PreBound<S> {
    inner: S,
    sockets: Vec<Bound>,
}

impl<S> PreBound<S> {
    /// `inner` listens on each of `sockets`' [`Bound::key`].
    pub fn new(inner: S, sockets: Vec<Bound>) -> Self {
        PreBound { inner, sockets }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for PreBound<S> {
    async fn start_service(&mut self, fds: Option<ListenFds>, shutdown: ShutdownWatch, listeners_per_fd: usize, ready: ServiceReadyNotifier) {
        if let Some(table) = &fds {
            let mut table = table.lock();
            for bound in self.sockets.drain(..) {
                let key = bound.key();
                table.add(key, bound.into_raw_fd());
            }
        }
        self.inner.start_service(fds, shutdown, listeners_per_fd, ready).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
