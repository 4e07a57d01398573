//! An HTTPS upstream that speaks only HTTP/2 (ALPN `h2`, nothing else), for the proxy's HTTP/2
//! client side: it serves fixed bodies and records on which connection each request came.
//! Built on the `h2` crate, the HTTP/2 implementation hyper and pingora use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Bytes>>,
    /// (path, connection number) of every request, in arrival order.
    seen: Mutex<Vec<(String, usize)>>,
    connections: AtomicUsize,
    /// TLS handshakes that failed (a client offering no `h2`, say).
    refused: AtomicUsize,
}

/// The server; stopped (every connection with it) when dropped.
pub struct H2Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl H2Upstream {
    /// Listen on a free port of 127.0.0.1 with the certificate `cert_pem` (for `localhost`).
    pub async fn start(cert_pem: &[u8], key_pem: &[u8]) -> H2Upstream {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let certs = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<Vec<_>, _>>().expect("certs");
        let key = rustls_pemfile::private_key(&mut &key_pem[..]).expect("key").expect("a key");
        let mut config = tokio_rustls::rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (st, conns) = (state.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, acceptor) = (st.clone(), acceptor.clone());
                let conn = tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        st.refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let n = st.connections.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut h2) = h2::server::handshake(tls).await else { return };
                    while let Some(Ok((req, mut respond))) = h2.accept().await {
                        let path = req.uri().path().to_string();
                        st.seen.lock().unwrap().push((path.clone(), n));
                        let body = st.routes.lock().unwrap().get(&path).cloned();
                        let (status, body) = body.map_or((404, Bytes::from_static(b"not found")), |b| (200, b));
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-length", body.len())
                            .header("cache-control", "max-age=3600")
                            .body(())
                            .unwrap();
                        if let Ok(mut send) = respond.send_response(resp, false) {
                            let _ = send.send_data(body, true);
                        }
                    }
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        H2Upstream { addr, state, task, connections }
    }

    /// The URL clients use (the certificate names `localhost`).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Serve `body` (200) at `path`.
    pub fn route(&self, path: &str, body: &[u8]) {
        self.state.routes.lock().unwrap().insert(path.to_string(), Bytes::copy_from_slice(body));
    }

    /// Requests received, as (path, connection number from 0).
    pub fn seen(&self) -> Vec<(String, usize)> {
        self.state.seen.lock().unwrap().clone()
    }

    /// TLS handshakes refused (no protocol in common, an untrusted client).
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}
