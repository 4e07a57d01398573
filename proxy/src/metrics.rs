//! Prometheus metrics of one proxy process, served on the admin listener, and the
//! [`MetricsSink`] that counts every request's [`Outcome`].

use std::collections::HashMap;
use std::sync::Arc;

use hangar_core::CacheResult;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of the process, registered under the `hangar_` prefix. Label sets are given
/// per field; README.md lists them for operators.
pub struct Metrics {
    pub registry: Registry,
    /// By repository, method and status class (`2xx`...).
    pub requests: IntCounterVec,
    /// By repository and cache result (hit, miss, stale, revalidated, expired, bypass, ...).
    pub cache_results: IntCounterVec,
    pub bytes_served: IntCounterVec,
    pub bytes_upstream: IntCounterVec,
    pub upstream_latency: HistogramVec,
    /// By tier (`memory`, `disk`).
    pub tier_bytes: IntGaugeVec,
    pub tier_objects: IntGaugeVec,
    pub evictions: IntCounterVec,
    pub abandoned_fills: IntCounter,
    /// Cacheable responses not stored, by reason (`disk_full`).
    pub cache_skipped: IntCounterVec,
    pub upstream_redirects: IntCounterVec,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    pub breaker_trips: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    /// Stale-while-revalidate refreshes run in the background, by upstream status class.
    pub background_refreshes: IntCounterVec,
    /// Pointer lookups (registry tags, apt indexes by name) by outcome: `upstream` (HEAD
    /// answered), `remembered` (within metadata_ttl), `last_known` (upstream failed),
    /// `listed` (from the document listing it), `not_found`, `unresolved`.
    pub pointer_lookups: IntCounterVec,
    /// Bodies whose digest was checked and matched.
    pub verified: IntCounterVec,
    /// Upstream bodies that did not match their published digest (never cached).
    pub integrity_failures: IntCounterVec,
    /// Immutable artefacts asked of origin before the upstream: hit, miss, error, corrupt (its
    /// copy failed verification), other_digest (not the copy a client's `?sha256=` asks for).
    pub origin_fetches: IntCounterVec,
    /// Background uploads to origin: queued, stored, already_stored, replaced (a corrupt copy),
    /// rejected, retried, dropped_queue_full, evicted_before_upload.
    pub origin_uploads: IntCounterVec,
    /// Misses answered by the key's owner in the fleet, and owners found unreachable.
    pub fleet_fetches: IntCounterVec,
    pub fleet_members: IntGauge,
    /// Hop headers (`x-hangar-hop`) that did not verify, by reason.
    pub hop_proofs_rejected: IntCounterVec,
    /// Writes to the shared metadata: written, dropped_queue_full, dropped_store_error.
    pub metadata_writes: IntCounterVec,
    /// Client connections: open, refused at the cap, closed for idling or slow headers.
    pub connections: crate::connections::ConnectionMetrics,
    /// Cached artefacts fetched again because their index now lists another digest (rebuilt
    /// upstream under the same name).
    pub relisted: IntCounterVec,
    /// Files derived from stored artefacts (a wheel's core metadata), by outcome: `derived`,
    /// or `none` (the artefact holds none, or is not a readable one).
    pub derived: IntCounterVec,
    /// Absolute links in rewritten documents left pointing past the proxy (to a host that is
    /// none of the repository's upstreams): downloads that bypass the cache.
    pub links_bypassing: IntCounterVec,
    /// Responses cut short because the client went away (logged at debug, not as errors).
    pub client_disconnects: IntCounter,
    /// Fresh memory-tier hits answered before pingora's cache phases (`request::fast_hit`):
    /// a share of the `hit`s in `cache_results`, the rest went the full way.
    pub fast_hits: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hangar".into()), None).expect("valid prefix");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let requests = counter_vec("requests_total", "Requests by repository, method and status class", &["repository", "method", "status"]);
        let cache_results = counter_vec("cache_results_total", "Cache results by repository", &["repository", "result"]);
        let bytes_served = counter_vec("bytes_served_total", "Body bytes sent to clients", &["repository"]);
        let bytes_upstream = counter_vec("bytes_upstream_total", "Body bytes fetched from upstreams", &["repository"]);
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new("upstream_response_seconds", "Time to the upstream's response headers")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["repository"],
        )
        .expect("valid metric");
        registry.register(Box::new(upstream_latency.clone())).expect("unique metric");
        let tier_bytes = gauge_vec("cache_tier_bytes", "Bytes stored per cache tier", &["tier"]);
        let tier_objects = gauge_vec("cache_tier_objects", "Objects stored per cache tier", &["tier"]);
        let evictions = counter_vec("cache_evictions_total", "Objects evicted per tier", &["tier"]);
        let abandoned_fills = IntCounter::new("cache_abandoned_fills_total", "Cache fills abandoned before completion").expect("valid metric");
        registry.register(Box::new(abandoned_fills.clone())).expect("unique metric");
        let cache_skipped = counter_vec("cache_skipped_total", "Cacheable responses passed through unstored", &["repository", "reason"]);
        let breaker_state = gauge_vec("upstream_breaker_state", "Circuit breaker per repository: 0 closed, 1 open, 2 half-open", &["repository"]);
        let breaker_trips = counter_vec("upstream_breaker_trips_total", "Times the circuit breaker opened", &["repository"]);
        let upstream_redirects = counter_vec("upstream_redirects_total", "Upstream redirects followed", &["repository"]);
        let upstream_errors = counter_vec("upstream_errors_total", "Upstream failures by kind", &["repository", "kind"]);
        let background_refreshes = counter_vec("background_refreshes_total", "Background refreshes of stale entries", &["repository", "status"]);
        let pointer_lookups = counter_vec("pointer_lookups_total", "What mutable names point to, by where the answer came from", &["repository", "result"]);
        let verified = counter_vec("verified_total", "Upstream bodies whose digest was checked and matched", &["repository"]);
        let integrity_failures = counter_vec("integrity_failures_total", "Upstream bodies that did not match their published digest", &["repository"]);
        let origin_fetches = counter_vec("origin_fetches_total", "Immutable artefacts asked of origin first", &["repository", "result"]);
        let origin_uploads = counter_vec("origin_uploads_total", "Background uploads of fetched artefacts to origin", &["result"]);
        let fleet_fetches = counter_vec("fleet_fetches_total", "Misses sent to the key's owner in the fleet", &["repository", "result"]);
        let fleet_members = IntGauge::new("fleet_members", "Live proxies of this region, this one included").expect("valid metric");
        registry.register(Box::new(fleet_members.clone())).expect("unique metric");
        let hop_proofs_rejected = counter_vec("hop_proofs_rejected_total", "Hop headers that did not verify (clients posing as peers, or members whose secrets or clocks differ)", &["reason"]);
        let metadata_writes = counter_vec("metadata_writes_total", "Writes to the fleet's shared metadata", &["result"]);
        let connections = crate::connections::ConnectionMetrics {
            open: IntGauge::new("client_connections", "Client connections open").expect("valid metric"),
            refused: IntCounter::new("client_connections_refused_total", "Client connections answered 503 at connections.max_clients").expect("valid metric"),
            closed: counter_vec("client_connections_closed_total", "Client connections closed by a limit: idle (keepalive_timeout), header_timeout", &["reason"]),
        };
        let derived = counter_vec("derived_files_total", "Files derived from stored artefacts (a wheel's core metadata, PEP 658), by outcome", &["repository", "outcome"]);
        let relisted = counter_vec("relisted_total", "Cached artefacts fetched again because their index lists another digest", &["repository"]);
        let links_bypassing = counter_vec("links_bypassing_total", "Links in rewritten documents left pointing at a host that is not an upstream of the repository", &["repository"]);
        registry.register(Box::new(connections.open.clone())).expect("unique metric");
        registry.register(Box::new(connections.refused.clone())).expect("unique metric");
        let client_disconnects = IntCounter::new("client_disconnects_total", "Responses cut short because the client disconnected").expect("valid metric");
        registry.register(Box::new(client_disconnects.clone())).expect("unique metric");
        let fast_hits = IntCounter::new("cache_fast_hits_total", "Fresh memory-tier hits answered before the cache phases (a share of cache_results_total's hits)").expect("valid metric");
        registry.register(Box::new(fast_hits.clone())).expect("unique metric");
        Metrics {
            registry,
            requests,
            cache_results,
            bytes_served,
            bytes_upstream,
            upstream_latency,
            tier_bytes,
            tier_objects,
            evictions,
            abandoned_fills,
            cache_skipped,
            upstream_redirects,
            breaker_state,
            breaker_trips,
            upstream_errors,
            background_refreshes,
            pointer_lookups,
            verified,
            integrity_failures,
            origin_fetches,
            origin_uploads,
            fleet_fetches,
            fleet_members,
            hop_proofs_rejected,
            metadata_writes,
            relisted,
            derived,
            links_bypassing,
            connections,
            client_disconnects,
            fast_hits,
        }
    }

    /// The Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// One repository's counters, resolved from the label vectors once at startup (clones share
/// the counters).
#[derive(Clone)]
pub struct RepoMetrics {
    get: [IntCounter; 6],
    head: [IntCounter; 6],
    requests: IntCounterVec,
    name: String,
    results: [IntCounter; 6],
    served: IntCounter,
    fetched: IntCounter,
    /// `hangar_upstream_breaker_state` and `_trips_total` of this repository.
    pub breaker_state: IntGauge,
    pub breaker_trips: IntCounter,
}

impl RepoMetrics {
    /// Resolve `repo`'s label values once.
    pub fn new(m: &Metrics, repo: &str) -> Self {
        let by_class = |method: &str| CLASSES.map(|c| m.requests.with_label_values(&[repo, method, c]));
        RepoMetrics {
            get: by_class("GET"),
            head: by_class("HEAD"),
            requests: m.requests.clone(),
            name: repo.to_string(),
            results: CacheResult::ALL.map(|r| m.cache_results.with_label_values(&[repo, r.as_str()])),
            served: m.bytes_served.with_label_values(&[repo]),
            fetched: m.bytes_upstream.with_label_values(&[repo]),
            breaker_state: m.breaker_state.with_label_values(&[repo]),
            breaker_trips: m.breaker_trips.with_label_values(&[repo]),
        }
    }

    /// Count one request: by method and status class, by cache result, and its bytes.
    pub fn record(&self, method: &http::Method, status: u16, result: CacheResult, served: u64, fetched: u64) {
        let class = CLASSES.iter().position(|c| *c == status_class(status)).unwrap_or(5);
        if method == http::Method::GET {
            self.get[class].inc();
        } else if method == http::Method::HEAD {
            self.head[class].inc();
        } else {
            self.requests.with_label_values(&[&self.name, method.as_str(), CLASSES[class]]).inc();
        }
        self.results[result as usize].inc();
        self.served.inc_by(served);
        if fetched > 0 {
            self.fetched.inc_by(fetched);
        }
    }
}

/// `2xx`, `4xx`... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Counts every request's outcome: per repository (label values resolved once, so a request
/// costs one map lookup and a few atomic increments), background refreshes apart.
pub struct MetricsSink {
    metrics: Arc<Metrics>,
    repositories: HashMap<String, RepoMetrics>,
}

impl MetricsSink {
    /// `repositories`: every repository's counters, by name.
    pub fn new(metrics: Arc<Metrics>, repositories: HashMap<String, RepoMetrics>) -> Self {
        MetricsSink { metrics, repositories }
    }
}

impl crate::outcome::OutcomeSink for MetricsSink {
    fn record(&self, o: &crate::outcome::Outcome<'_>) {
        let repository = o.repository.unwrap_or("-");
        if let Some(kind) = o.upstream_error {
            self.metrics.upstream_errors.with_label_values(&[repository, kind]).inc();
        }
        if o.background {
            self.metrics.background_refreshes.with_label_values(&[repository, status_class(o.status)]).inc();
            return;
        }
        match self.repositories.get(repository) {
            Some(repo) => repo.record(o.method, o.status, o.result, o.bytes_served, o.bytes_fetched),
            None => {
                let m = &self.metrics;
                m.requests.with_label_values(&[repository, o.method.as_str(), status_class(o.status)]).inc();
                m.cache_results.with_label_values(&[repository, o.result.as_str()]).inc();
                m.bytes_served.with_label_values(&[repository]).inc_by(o.bytes_served);
            }
        }
    }
}
