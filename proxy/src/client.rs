//! The one HTTP client for requests the proxy makes outside pingora's proxy flow: a registry's
//! token endpoint and tag lookups (upstream), reads of its own cache (loopback), uploads to the
//! regional origin.
//!
//! Everything goes through pingora's own connector, so side requests get the same TLS (and
//! trust store), timeouts and connection reuse as proxied ones, and DNS through the shared
//! resolver. Bodies are either read whole up to a limit ([`Client::fetch`]) or streamed
//! ([`Client::open`], [`Client::upload`]); nothing unbounded is ever buffered.

use bytes::{Bytes, BytesMut};
use hangar_core::UpstreamUrl;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;

use crate::config::TimeoutConfig;
use crate::upstream::{make_peer, ResolveError, SharedResolver};

/// How long an upload waits for `100 Continue` (or a refusal) before sending its body anyway.
pub const CONTINUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How much of an upload's answer is kept (origin answers with a line of JSON).
const ANSWER_LIMIT: usize = 64 * 1024;

/// Why a side request failed; each variant names the host.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("request to {host} failed: {source}")]
    Request { host: String, source: Box<pingora::Error> },
    #[error("response from {host} is larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("bad request target '{0}'")]
    BadTarget(String),
    #[error("bad value for request header {0}")]
    BadHeader(http::HeaderName),
}

/// One side request: where it goes and what it says.
pub struct Request<'a> {
    /// GET, HEAD or PUT.
    pub method: http::Method,
    /// Scheme, host and port (its base path is not used: `target` is the whole path).
    pub url: &'a UpstreamUrl,
    /// Path and query.
    pub target: &'a str,
    /// Sent as given; `Host` is `url`'s unless these name another.
    pub headers: &'a [(http::HeaderName, String)],
    /// Connect deadlines, and the longest silence between two reads (or writes).
    pub timeouts: &'a TimeoutConfig,
}

/// A response head and its whole (bounded) body.
pub struct Response {
    /// The final (non-1xx) response head.
    pub head: ResponseHeader,
    pub body: Bytes,
}

impl Response {
    /// A response header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response whose body is read chunk by chunk; the connection goes back to the pool once
/// the body has been read to its end.
pub struct Streaming<'c> {
    client: &'c Client,
    state: BodyState,
    peer: Box<HttpPeer>,
    host: String,
    head: ResponseHeader,
}

enum BodyState {
    Reading(HttpSession),
    Done,
    /// The body broke off: every later read says so again, never a clean end.
    Failed(pingora::ErrorType),
}

impl Streaming<'_> {
    /// The final (non-1xx) response head.
    pub fn head(&self) -> &ResponseHeader {
        &self.head
    }

    /// The next chunk of the body; `None` at its (complete) end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let failed = |host: &str, source| ClientError::Request { host: host.to_string(), source };
        let session = match &mut self.state {
            BodyState::Reading(session) => session,
            BodyState::Done => return Ok(None),
            BodyState::Failed(etype) => return Err(failed(&self.host, pingora::Error::explain(etype.clone(), "the body broke off earlier"))),
        };
        match session.read_response_body().await {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => {
                if let BodyState::Reading(session) = std::mem::replace(&mut self.state, BodyState::Done) {
                    self.client.connector.release_http_session(session, &*self.peer, None).await;
                }
                Ok(None)
            }
            Err(source) => {
                self.state = BodyState::Failed(source.etype().clone());
                Err(failed(&self.host, source))
            }
        }
    }
}

/// The proxy's side-request client; cheap to share.
pub struct Client {
    connector: Connector,
    resolver: SharedResolver,
}

impl Client {
    /// A client with its own connection pool, resolving through `resolver`.
    pub fn new(resolver: SharedResolver) -> Self {
        Client { connector: Connector::new(None), resolver }
    }

    /// Send `req` and read at most `limit` body bytes (a larger body is an error).
    pub async fn fetch(&self, req: &Request<'_>, limit: usize) -> Result<Response, ClientError> {
        let mut response = self.open(req).await?;
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge { host: req.url.host.clone(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { head: response.head, body: body.freeze() })
    }

    /// Send `req` (no body) and return once the response head has arrived.
    pub async fn open(&self, req: &Request<'_>) -> Result<Streaming<'_>, ClientError> {
        let (session, peer) = self.send_head(req, None).await?;
        self.finish(req, session, peer).await
    }

    /// Send `req` with the body read from `body` as it arrives (`length` bytes, or chunked when
    /// `None`), then return the response. A source that fails is an error, and the request is
    /// cut (with a length, the receiver also sees a short body).
    ///
    /// The request says `Expect: 100-continue` (RFC 9110 10.1.1): a receiver that will refuse it
    /// (too large, not allowed) answers before a byte of the body is sent, and that answer is
    /// returned. Without it, a refusal arrives while the body is still being written, the
    /// receiver closes, and all the sender sees is a broken connection: an upload too large to
    /// ever be taken would look like an outage and be retried forever. A receiver that ignores
    /// the expectation is waited for [`CONTINUE_WAIT`], then sent the body anyway.
    pub async fn upload(&self, req: &Request<'_>, length: Option<u64>, body: &mut Streaming<'_>) -> Result<Response, ClientError> {
        let (mut session, peer) = self.send_head(req, Some(length)).await?;
        let failed = |source: Box<pingora::Error>| ClientError::Request { host: req.url.host.clone(), source };
        if let Ok(read) = tokio::time::timeout(CONTINUE_WAIT, session.read_response_header()).await {
            read.map_err(failed)?;
            let head = session.response_header().cloned().ok_or_else(|| failed(pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "no response header")))?;
            if !head.status.is_informational() {
                // Answered without the body: the connection owes a body it will never carry,
                // so it is read to the end of this answer and dropped, not pooled.
                let mut answer = BytesMut::new();
                while let Some(chunk) = session.read_response_body().await.map_err(failed)? {
                    if answer.len() + chunk.len() <= ANSWER_LIMIT {
                        answer.extend_from_slice(&chunk);
                    }
                }
                return Ok(Response { head, body: answer.freeze() });
            }
        }
        while let Some(chunk) = body.chunk().await? {
            session.write_request_body(chunk, false).await.map_err(failed)?;
        }
        let mut response = self.finish(req, session, peer).await?;
        let mut answer = BytesMut::new();
        while let Some(chunk) = response.chunk().await? {
            if answer.len() + chunk.len() <= ANSWER_LIMIT {
                answer.extend_from_slice(&chunk);
            }
        }
        Ok(Response { head: response.head, body: answer.freeze() })
    }

    /// Send the request head; `body` is `None` for no body, `Some(None)` for a chunked one.
    async fn send_head(&self, req: &Request<'_>, body: Option<Option<u64>>) -> Result<(HttpSession, Box<HttpPeer>), ClientError> {
        let url = req.url;
        let addr = self.resolver.resolve(&url.host, url.port).await?;
        let peer = make_peer(url, addr, req.timeouts);
        let failed = |source: Box<pingora::Error>| ClientError::Request { host: url.host.clone(), source };
        let mut head = RequestHeader::build(req.method.clone(), req.target.as_bytes(), Some(req.headers.len() + 2)).map_err(|_| ClientError::BadTarget(req.target.into()))?;
        head.insert_header(http::header::HOST, url.host_header()).map_err(|_| ClientError::BadHeader(http::header::HOST))?;
        for (name, value) in req.headers {
            let set = if name == http::header::HOST { head.insert_header(name.clone(), value.as_str()) } else { head.append_header(name.clone(), value.as_str()).map(|_| ()) };
            set.map_err(|_| ClientError::BadHeader(name.clone()))?;
        }
        match body {
            Some(Some(length)) => head.insert_header(http::header::CONTENT_LENGTH, length.to_string()).map_err(|_| ClientError::BadHeader(http::header::CONTENT_LENGTH))?,
            Some(None) => head.insert_header(http::header::TRANSFER_ENCODING, "chunked").map_err(|_| ClientError::BadHeader(http::header::TRANSFER_ENCODING))?,
            None => {}
        }
        if body.is_some() {
            head.insert_header(http::header::EXPECT, "100-continue").map_err(|_| ClientError::BadHeader(http::header::EXPECT))?;
        }
        let (mut session, _reused) = self.connector.get_http_session(&*peer).await.map_err(failed)?;
        session.set_read_timeout(Some(req.timeouts.read.0));
        session.set_write_timeout(Some(req.timeouts.read.0));
        session.write_request_header(Box::new(head)).await.map_err(failed)?;
        Ok((session, peer))
    }

    async fn finish(&self, req: &Request<'_>, mut session: HttpSession, peer: Box<HttpPeer>) -> Result<Streaming<'_>, ClientError> {
        let failed = |source: Box<pingora::Error>| ClientError::Request { host: req.url.host.clone(), source };
        session.finish_request_body().await.map_err(failed)?;
        // Interim responses (100 Continue, 103 Early Hints) come before the final one.
        let head = loop {
            session.read_response_header().await.map_err(failed)?;
            let head = session.response_header().cloned().ok_or_else(|| failed(pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "no response header")))?;
            if !head.status.is_informational() || head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                break head;
            }
        };
        Ok(Streaming { client: self, state: BodyState::Reading(session), peer, host: req.url.host.clone(), head })
    }
}
