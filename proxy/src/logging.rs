//! The process's log: plain text or one JSON object per line, colours only on a terminal, the
//! access log (target [`ACCESS_TARGET`]) on whatever the level, and two of pingora's messages
//! that mean nothing to an operator kept out at the default level.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::log_writer::{self, LogWriter, LogWriterGuard};

/// The target of access-log lines: `RUST_LOG=access=off` silences them.
pub const ACCESS_TARGET: &str = "access";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// tracing's human format: `TIME LEVEL target: message key=value ...`.
    #[default]
    Plain,
    /// One JSON object per line: `time`, `level`, `target`, then every field (`message` too).
    Json,
}

/// Pingora messages that are routine, not faults: a pooled upstream connection the upstream
/// had closed (the request simply opens another), a cache-meta compression dictionary Hangar
/// does not use, and a client that went away mid-body (counted in
/// `hangar_client_disconnects_total` instead). Shown only when the filter asks for debug.
const ROUTINE: [&str; 4] = ["failed to acquire reusable stream", "no header compression dictionary", "Downstream Error ignored during caching", "Fail to serve cache: Downstream"];

/// Where access-log lines go when [`init`] installed the log: the same writer thread as every
/// other line, but each line assembled by [`crate::access_log`] itself. Going through
/// tracing's formatter cost a hit ~16,000 instructions (a sixth of it, under callgrind);
/// writing the same line directly costs a small fraction of that.
pub(crate) struct AccessOutput {
    writer: LogWriter,
    pub json: bool,
}

static ACCESS_OUTPUT: OnceLock<AccessOutput> = OnceLock::new();

thread_local! {
    /// Each thread's line buffer, reused from line to line.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl AccessOutput {
    /// Build one line with `f` (into an empty, reused buffer: `f` writes the whole line, time
    /// included, and ends it with `\n`) and queue it.
    pub fn write_line(&self, f: impl FnOnce(&mut String)) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            f(line);
            // The writer queues a copy; a full queue makes this wait (never a lost line).
            let _ = (&self.writer).write_all(line.as_bytes());
        });
    }
}

/// The access log's own output, if [`init`] installed the process's log (an embedding that
/// installs its own subscriber gets access lines as ordinary tracing events instead).
pub(crate) fn access_output() -> Option<&'static AccessOutput> {
    ACCESS_OUTPUT.get()
}

thread_local! {
    /// The second the thread last logged in, and its `YYYY-MM-DDTHH:MM:SS` form.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The current time as every other log line writes it (tracing's `SystemTime`: RFC 3339,
/// microseconds, UTC, `2026-12-02T03:21:12.123456Z`). The date and time of day are formatted
/// once per second per thread: through tracing's formatter they were a tenth of a 1 KiB hit's
/// instructions.
pub(crate) fn write_time(line: &mut String) {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            text.clear();
            if let Some(t) = chrono::DateTime::from_timestamp(secs as i64, 0) {
                let _ = write!(text, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second());
            }
            *at = secs;
        }
        line.push_str(text);
    });
    let micros = since.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    line.push('.');
    line.push_str(&"000000"[digits.len()..]);
    line.push_str(digits);
    line.push('Z');
}

/// Keeps the log writer's thread running; dropping it writes out every line still queued
/// (however long the terminal or pipe takes) and stops the thread. Hold it until the process
/// is about to exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] Option<LogWriterGuard>);

/// Install the global subscriber on stderr: `filter` in tracing's `RUST_LOG` syntax (the
/// `RUST_LOG` variable wins when set), the access log at info unless the filter names
/// [`ACCESS_TARGET`] itself, ANSI colours only when stderr is a terminal.
///
/// Lines are formatted on the thread that logs and written by a thread of their own (see
/// [`crate::log_writer`]): bounded, never lossy, flushed at exit.
pub fn init(filter: &str, format: LogFormat) -> LogGuard {
    let wanted = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| filter.to_string());
    let directives = if wanted.contains(ACCESS_TARGET) { wanted.clone() } else { format!("{wanted},{ACCESS_TARGET}=info") };
    let env_filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{ACCESS_TARGET}=info")));
    let verbose = wanted.contains("debug") || wanted.contains("trace");
    // Colours only for a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let quiet = QuietRoutine { verbose };
    let (writer, guard) = match log_writer::start(std::io::stderr()) {
        Ok((writer, guard)) => {
            let _ = ACCESS_OUTPUT.set(AccessOutput { writer: writer.clone(), json: format == LogFormat::Json });
            (BoxMakeWriter::new(writer), Some(guard))
        }
        // No thread to be had: log from the calling thread.
        Err(_) => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let registry = tracing_subscriber::registry().with(env_filter).with(quiet);
    match format {
        LogFormat::Plain => registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer)).init(),
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().with_ansi(false).event_format(Json).with_writer(writer)).init(),
    }
    LogGuard(guard)
}

/// Drops the [`ROUTINE`] messages unless the filter asks for debug.
struct QuietRoutine {
    verbose: bool,
}

impl<S: Subscriber> Layer<S> for QuietRoutine {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // (Levels order by verbosity: WARN and ERROR are below INFO; the routine ones are those.)
        if self.verbose || *event.metadata().level() >= tracing::Level::INFO {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !ROUTINE.iter().any(|r| message.0.starts_with(r))
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// One JSON object per event.
struct Json;

/// An event's fields as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut fields = JsonFields(serde_json::Map::new());
        fields.0.insert("time".into(), time.into());
        fields.0.insert("level".into(), meta.level().as_str().into());
        fields.0.insert("target".into(), meta.target().into());
        event.record(&mut fields);
        // Events forwarded from the `log` crate (pingora's) carry their real target as a field.
        if let Some(target) = fields.0.remove("log.target") {
            fields.0.insert("target".into(), target);
        }
        fields.0.retain(|k, _| !k.starts_with("log."));
        writeln!(writer, "{}", serde_json::Value::Object(fields.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_time_reads_as_tracings_own() {
        // Compared within one second (a try that straddles a second boundary is repeated).
        let mut tries = Vec::new();
        for _ in 0..3 {
            let mut ours = String::new();
            write_time(&mut ours);
            let mut theirs = String::new();
            SystemTime.format_time(&mut Writer::new(&mut theirs)).unwrap();
            if ours[..19] == theirs[..19] {
                assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
                assert!(ours[19..].starts_with('.') && ours.ends_with('Z') && ours[20..26].bytes().all(|b| b.is_ascii_digit()), "{ours}");
                return;
            }
            tries.push((ours, theirs));
        }
        panic!("the date and time of day differ (or each try crossed a second): {tries:?}");
    }
}
