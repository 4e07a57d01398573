//! The audit log: every write and delete, every denied request and every admin action, one
//! NDJSON line each, appended to date-partitioned files (`<dir>/<YYYY-MM-DD>.ndjson`, UTC)
//! and queried on the admin listener (`GET /audit`).
//!
//! Lines are queued whole and written by one thread of their own (the log's writer,
//! [`crate::log_writer`]: bounded, nothing dropped, a logger waits when it is full), which
//! calls `fdatasync` after each batch: a line that has reached the file survives `kill -9`
//! and, once synced, a power cut. A line torn by a crash mid-write is skipped by readers (it
//! does not parse), so it can never be read as another event.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::pattern_matches;
use crate::log_writer::{self, LogWriter, LogWriterGuard};
pub use crate::outcome::AuditFacts;
use crate::outcome::{Outcome, OutcomeSink};

/// One line of the audit log. `time` is first: the writer reads the date off the line.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// Unique within the log: the process's start (hex seconds) and a counter.
    pub id: String,
    pub principal: &'a str,
    pub client: Option<SocketAddr>,
    pub action: &'static str,
    pub repository: Option<&'a str>,
    pub package: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// `allowed` or `denied`.
    pub result: &'static str,
}

/// Writes audit events; also an [`OutcomeSink`] for the client listener's requests.
pub struct AuditLog {
    writer: LogWriter,
    dir: PathBuf,
    started: u64,
    next: AtomicU64,
}

impl AuditLog {
    /// Start writing into `dir` (created if missing). The guard writes out what is queued
    /// when dropped: keep it until the server has stopped.
    pub fn start(dir: &Path) -> io::Result<(Arc<AuditLog>, LogWriterGuard)> {
        std::fs::create_dir_all(dir)?;
        let (writer, guard) = log_writer::start(Spool { dir: dir.to_path_buf(), files: HashMap::new(), dirty: Vec::new() })?;
        let started = crate::auth::unix_now() as u64;
        Ok((Arc::new(AuditLog { writer, dir: dir.to_path_buf(), started, next: AtomicU64::new(0) }), guard))
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queue `event` (its `time` and `id` are filled in here).
    pub fn write(&self, mut event: Event<'_>) {
        event.time = now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        event.id = format!("{:x}-{}", self.started, self.next.fetch_add(1, Ordering::Relaxed));
        let Ok(mut line) = serde_json::to_vec(&event) else { return };
        line.push(b'\n');
        if let Err(e) = (&self.writer).write_all(&line) {
            tracing::error!(error = %e, "audit event not written: the audit writer has stopped");
        }
    }
}

impl OutcomeSink for AuditLog {
    fn record(&self, outcome: &Outcome<'_>) {
        let Some(facts) = outcome.audit else { return };
        self.write(Event {
            time: String::new(),
            id: String::new(),
            principal: &facts.principal,
            client: outcome.client,
            action: facts.action.as_str(),
            repository: outcome.repository,
            package: facts.package.as_deref(),
            method: outcome.method.as_str(),
            path: outcome.target,
            status: outcome.status,
            result: if facts.denied || outcome.status == 401 || outcome.status == 403 || outcome.status == 429 { "denied" } else { "allowed" },
        });
    }
}

/// The current instant, UTC (chrono is built without its clock here).
fn now() -> chrono::DateTime<chrono::Utc> {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos()).unwrap_or_default()
}

/// The writer thread's output: each batch's lines appended to their day's file, then synced.
struct Spool {
    dir: PathBuf,
    files: HashMap<String, File>,
    dirty: Vec<String>,
}

impl Spool {
    fn append(&mut self, date: &str, line: &[u8]) -> io::Result<()> {
        if !self.files.contains_key(date) {
            // Yesterday's file is done with once today's is opened (synced first).
            for (_, old) in self.files.iter().filter(|(d, _)| d.as_str() <= date) {
                if let Err(e) = old.sync_data() {
                    tracing::error!(error = %e, dir = %self.dir.display(), "audit file not synced");
                }
            }
            self.files.retain(|d, _| d.as_str() > date);
            let file = OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{date}.ndjson")))?;
            self.files.insert(date.to_string(), file);
        }
        if !self.dirty.iter().any(|d| d == date) {
            self.dirty.push(date.to_string());
        }
        self.files.get_mut(date).map_or(Ok(()), |f| f.write_all(line))
    }
}

impl io::Write for Spool {
    fn write(&mut self, batch: &[u8]) -> io::Result<usize> {
        for line in batch.split_inclusive(|&b| b == b'\n') {
            // `{"time":"YYYY-MM-DD...`
            let date = line.get(9..19).and_then(|d| std::str::from_utf8(d).ok()).filter(|d| d.bytes().all(|b| b.is_ascii_digit() || b == b'-')).unwrap_or("undated").to_string();
            if let Err(e) = self.append(&date, line) {
                tracing::error!(error = %e, dir = %self.dir.display(), "audit event not written");
            }
        }
        Ok(batch.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        for date in std::mem::take(&mut self.dirty) {
            if let Some(Err(e)) = self.files.get(&date).map(File::sync_data) {
                tracing::error!(error = %e, dir = %self.dir.display(), "audit file not synced");
            }
        }
        Ok(())
    }
}

/// What `GET /audit` asks for.
#[derive(Debug, Default)]
pub struct Query {
    /// RFC 3339 bounds (inclusive), compared as UTC instants.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub principal: Option<String>,
    /// A package pattern (`@acme/*`).
    pub package: Option<String>,
    /// Most lines returned (the oldest first).
    pub limit: usize,
}

impl Query {
    /// From a query string; a bad value is an error that names it.
    pub fn parse(query: Option<&str>) -> Result<Query, String> {
        let mut q = Query { limit: 1000, ..Query::default() };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8().map_err(|_| format!("{key}: not UTF-8"))?.into_owned();
            let instant = |v: &str| chrono::DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&chrono::Utc)).map_err(|e| format!("{key}: '{v}' is not an RFC 3339 time like 2026-12-01T00:00:00Z: {e}"));
            match key {
                "since" => q.since = Some(instant(&value)?),
                "until" => q.until = Some(instant(&value)?),
                "principal" => q.principal = Some(value),
                "package" => q.package = Some(value),
                "limit" => q.limit = value.parse().map_err(|_| format!("limit: '{value}' is not a number"))?,
                other => return Err(format!("unknown parameter '{other}': since, until, principal, package, limit")),
            }
        }
        Ok(q)
    }

    fn matches(&self, event: &serde_json::Map<String, Value>) -> bool {
        let text = |k: &str| event.get(k).and_then(Value::as_str);
        let time = text("time").and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&chrono::Utc));
        let Some(time) = time else { return false };
        self.since.is_none_or(|s| time >= s)
            && self.until.is_none_or(|u| time <= u)
            && self.principal.as_deref().is_none_or(|p| text("principal") == Some(p))
            && self.package.as_deref().is_none_or(|p| text("package").is_some_and(|pkg| pattern_matches(p, pkg)))
    }
}

/// The events in `dir` that `query` selects, as NDJSON, oldest first. Lines that do not parse
/// (one torn by a crash) are skipped.
pub fn read(dir: &Path, query: &Query) -> io::Result<Vec<u8>> {
    let first = query.since.map(|s| s.format("%Y-%m-%d").to_string());
    let last = query.until.map(|u| u.format("%Y-%m-%d").to_string());
    let mut days: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".ndjson").map(str::to_string))
        .filter(|d| first.as_deref().is_none_or(|f| d.as_str() >= f) && last.as_deref().is_none_or(|l| d.as_str() <= l))
        .collect();
    days.sort();
    let mut out = Vec::new();
    let mut count = 0;
    for day in days {
        let file = io::BufReader::new(File::open(dir.join(format!("{day}.ndjson")))?);
        for line in file.split(b'\n') {
            let line = line?;
            let Ok(event) = serde_json::from_slice::<serde_json::Map<String, Value>>(&line) else { continue };
            if count < query.limit && query.matches(&event) {
                out.extend_from_slice(&line);
                out.push(b'\n');
                count += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(principal: &'a str, package: Option<&'a str>) -> Event<'a> {
        Event { time: String::new(), id: String::new(), principal, client: None, action: "publish", repository: Some("npm"), package, method: "PUT", path: "/npm/x", status: 403, result: "denied" }
    }

    #[test]
    fn events_are_written_by_day_and_read_back_by_principal_package_and_time_skipping_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (log, guard) = AuditLog::start(dir.path()).unwrap();
        log.write(event("ci", Some("@acme/ui")));
        log.write(event("someone", Some("left-pad")));
        drop(guard);
        let today = now().format("%Y-%m-%d").to_string();
        let file = dir.path().join(format!("{today}.ndjson"));
        // A crash mid-write leaves a torn last line.
        OpenOptions::new().append(true).open(&file).unwrap().write_all(b"{\"time\":\"2026-").unwrap();
        let all = read(dir.path(), &Query::parse(None).unwrap()).unwrap();
        assert_eq!(all.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count(), 2, "{}", String::from_utf8_lossy(&all));
        let ci = String::from_utf8(read(dir.path(), &Query::parse(Some("principal=ci")).unwrap()).unwrap()).unwrap();
        assert!(ci.contains("\"principal\":\"ci\"") && !ci.contains("someone"), "{ci}");
        let acme = String::from_utf8(read(dir.path(), &Query::parse(Some("package=%40acme%2F*")).unwrap()).unwrap()).unwrap();
        assert!(acme.contains("@acme/ui") && !acme.contains("left-pad"), "{acme}");
        let future = read(dir.path(), &Query::parse(Some("since=2999-01-01T00:00:00Z")).unwrap()).unwrap();
        assert!(future.is_empty());
        assert!(Query::parse(Some("since=yesterday")).unwrap_err().starts_with("since:"));
        assert!(Query::parse(Some("who=me")).unwrap_err().contains("unknown parameter"));
    }
}
