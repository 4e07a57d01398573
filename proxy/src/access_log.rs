//! The access log: one line per request, as an [`OutcomeSink`], on the log target
//! [`crate::logging::ACCESS_TARGET`] (plain `key=value` pairs, or JSON fields with
//! `--log-format json`).
//!
//! Fields, always all present (`-` when there is nothing to say): `repository`, `method`,
//! `path` (path and query as sent), `status` (0: no response, the client went away),
//! `cache` (`X-Hangar-Cache`), `bytes` (body bytes sent), `upstream_status` and
//! `upstream_ms` (the last upstream try's status and time to its response head),
//! `upstream_error` (`dns`, `connect`, `timeout`, ...), `client` (address:port). Headers are
//! never logged: they may carry credentials.

use crate::outcome::{Outcome, OutcomeSink};

/// Writes one access-log line per request.
pub struct AccessLog;

impl OutcomeSink for AccessLog {
    fn record(&self, o: &Outcome<'_>) {
        if o.background {
            return;
        }
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        tracing::info!(
            target: "access",
            repository = %o.repository.unwrap_or("-"),
            method = %o.method,
            path = %o.target,
            status = o.status,
            cache = %o.result.as_str(),
            bytes = o.bytes_served,
            upstream_status = %dash(o.upstream_status.map(|s| s.to_string())),
            upstream_ms = %dash(o.upstream_time.map(|t| format!("{:.1}", t.as_secs_f64() * 1000.0))),
            upstream_error = %o.upstream_error.unwrap_or("-"),
            client = %dash(o.client.map(|c| c.to_string())),
        );
    }
}
