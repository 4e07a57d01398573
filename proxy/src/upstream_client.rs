//! Small requests the proxy makes upstream outside pingora's proxy flow: a registry's token
//! endpoint, and the HEAD that finds which digest a tag points to.
//!
//! They go through pingora's own connector, so they get the same TLS (and trust store),
//! timeouts and connection reuse as proxied requests, and DNS through the shared resolver.

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::TimeoutConfig;
use crate::upstream::{make_peer, SharedResolver, UpstreamUrl};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Resolve(#[from] crate::upstream::UpstreamError),
    #[error("request to {host} failed: {source}")]
    Request { host: String, source: Box<pingora::Error> },
    #[error("response from {host} is larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("bad request target '{0}'")]
    BadTarget(String),
    #[error("bad value for request header {0}")]
    BadHeader(http::HeaderName),
}

/// A response head and its (bounded) body.
pub struct Response {
    pub head: ResponseHeader,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct UpstreamClient {
    connector: Connector,
    resolver: SharedResolver,
}

impl UpstreamClient {
    pub fn new(resolver: SharedResolver) -> Self {
        UpstreamClient { connector: Connector::new(None), resolver }
    }

    /// Send `method target` (a path with query) to `upstream`'s host with `headers`, and read
    /// at most `limit` body bytes.
    pub async fn send(
        &self,
        method: &str,
        upstream: &UpstreamUrl,
        target: &str,
        headers: &[(http::HeaderName, String)],
        timeouts: &TimeoutConfig,
        limit: usize,
    ) -> Result<Response, ClientError> {
        let addr = self.resolver.resolve(&upstream.host, upstream.port).await?;
        let peer = make_peer(upstream, addr, timeouts);
        let failed = |source: Box<pingora::Error>| ClientError::Request { host: upstream.host.clone(), source };
        let mut req = RequestHeader::build(method, target.as_bytes(), Some(headers.len() + 2)).map_err(|_| ClientError::BadTarget(target.into()))?;
        req.insert_header(http::header::HOST, upstream.host_header()).map_err(|_| ClientError::BadHeader(http::header::HOST))?;
        for (name, value) in headers {
            req.append_header(name.clone(), value.as_str()).map_err(|_| ClientError::BadHeader(name.clone()))?;
        }
        let (mut session, _reused) = self.connector.get_http_session(&*peer).await.map_err(failed)?;
        session.set_read_timeout(Some(timeouts.read.0));
        session.set_write_timeout(Some(timeouts.read.0));
        session.write_request_header(Box::new(req)).await.map_err(failed)?;
        session.finish_request_body().await.map_err(failed)?;
        session.read_response_header().await.map_err(failed)?;
        let head = session.response_header().cloned().ok_or_else(|| failed(pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "no response header")))?;
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await.map_err(failed)? {
            if body.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge { host: upstream.host.clone(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        self.connector.release_http_session(session, &*peer, None).await;
        Ok(Response { head, body: body.freeze() })
    }
}
