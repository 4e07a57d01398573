//! One [`Outcome`] per request, handed to every [`OutcomeSink`] when the request ends.
//!
//! This is how pingora's `logging` phase is meant to be used: the request path does not know who
//! listens. Metrics ([`crate::metrics::MetricsSink`]), the fleet's object index
//! ([`crate::metadata::MetadataSink`]) and the hand-off of fetched artefacts to origin
//! ([`crate::origin::OriginHandOff`]) are the first sinks; analytics and the audit log are added
//! the same way, through [`crate::ProxyBuilder::outcome_sink`], with no change to the request path.
//! Each sink is told of every request: one that wants only some (artefacts served, fetches)
//! filters on the fields below.

use std::net::SocketAddr;
use std::time::Duration;

use hangar_core::event::Source;
use hangar_core::{CacheResult, Digest, FormatKind, PathClass};

/// What happened to one request, borrowed from the request's own state: building it costs no
/// allocation, and a sink that keeps anything copies what it keeps.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// The repository that served it; `None` when no repository is mounted at the path.
    pub repository: Option<&'a str>,
    /// The repository's format.
    pub format: Option<FormatKind>,
    /// As the client sent it (pingora may have asked the upstream with GET for a HEAD).
    pub method: &'a http::Method,
    /// The request target as the client sent it (path and query).
    pub target: &'a str,
    /// The client's `Host` header.
    pub host: Option<&'a str>,
    /// The cache key path below the repository (what the format resolved the request to).
    pub key_path: Option<&'a str>,
    /// What the path holds (artefact, index, plain HTTP), after the repository's patterns.
    pub class: Option<PathClass>,
    /// Status sent to the client; 0 when no response was sent (the client went away).
    pub status: u16,
    /// What `X-Hangar-Cache` said.
    pub result: CacheResult,
    /// Where the body came from.
    pub source: Source,
    /// The response went into this proxy's cache.
    pub stored: bool,
    /// The digest the body was checked against, when there was one.
    pub digest: Option<&'a Digest>,
    /// The artefact's digest could not be learned: it was served, but not stored.
    pub unverified: bool,
    /// The response's `Content-Length` (the object's size, for a HEAD too), when it had one.
    pub content_length: Option<u64>,
    /// Body bytes sent to the client.
    pub bytes_served: u64,
    /// Body bytes read from the upstream (or a peer, or origin).
    pub bytes_fetched: u64,
    /// Time from sending the last upstream request to its response headers.
    pub upstream_time: Option<Duration>,
    /// The status of the last response from the upstream (or a peer, or origin), when one
    /// arrived.
    pub upstream_status: Option<u16>,
    /// What went wrong with the upstream, once per request (`dns`, `connect`, `timeout`,
    /// `reset`, `breaker_open`, `token`, `rate_limited`, `redirect_refused`, `expired`, `integrity`,
    /// `other`).
    pub upstream_error: Option<&'static str>,
    /// A stale-while-revalidate refresh the proxy ran itself, not a client's request.
    pub background: bool,
    /// The request ended in an error (a cut transfer, an upstream failure).
    pub failed: bool,
    /// The client's address, when it connected over TCP.
    pub client: Option<SocketAddr>,
    /// Who did what, for requests the audit log records (writes, deletes, refusals).
    pub audit: Option<&'a AuditFacts>,
}

/// Who did what, decided when the request was admitted; kept with the request (boxed, and
/// only for what is audited) until its outcome is known.
#[derive(Debug, Clone)]
pub struct AuditFacts {
    /// The principal's name (`anonymous` when no credential, or none that was accepted).
    pub principal: String,
    pub action: crate::config::Action,
    /// The package the path names, when it names one.
    pub package: Option<String>,
    /// Refused (401, 403, 429, or an address rule) before any work.
    pub denied: bool,
}

/// Something that wants to know how requests ended.
///
/// [`OutcomeSink::record`] is called once per request, on the worker thread that served it,
/// after the response has been sent. It must not block or fail: a sink that does I/O queues
/// what it needs (bounded) and drops, and counts, what does not fit. The one exception is the
/// audit log, which may not drop a line: when its 4 MiB queue is full, the worker waits.
pub trait OutcomeSink: Send + Sync {
    fn record(&self, outcome: &Outcome<'_>);
}

/// The sinks of one proxy, in the order they were added.
#[derive(Default, Clone)]
pub struct Sinks {
    sinks: Vec<std::sync::Arc<dyn OutcomeSink>>,
}

impl Sinks {
    /// Add `sink` after those already there.
    pub fn push(&mut self, sink: std::sync::Arc<dyn OutcomeSink>) {
        self.sinks.push(sink);
    }

    /// Hand `outcome` to every sink, in order.
    pub fn record(&self, outcome: &Outcome<'_>) {
        for sink in &self.sinks {
            sink.record(outcome);
        }
    }
}
