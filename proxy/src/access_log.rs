//! The access log: one line per request, as an [`OutcomeSink`], on the log target
//! [`crate::logging::ACCESS_TARGET`] (plain `key=value` pairs, or JSON fields with
//! `--log-format json`). With the process's own log installed, lines are assembled here and
//! handed to its writer thread (see [`crate::logging::access_output`]): tracing decides only
//! whether the target is on.
//!
//! Fields, always all present (`-` when there is nothing to say): `repository`, `method`,
//! `path` (path and query as sent), `status` (0: no response, the client went away),
//! `cache` (`X-Hangar-Cache`), `bytes` (body bytes sent), `upstream_status` and
//! `upstream_ms` (the last upstream try's status and time to its response head),
//! `upstream_error` (`dns`, `connect`, `timeout`, ...), `client` (address:port). Headers are
//! never logged: they may carry credentials.

use std::fmt;
use std::time::Duration;

use crate::outcome::{Outcome, OutcomeSink};

/// A value, or `-` when there is none; written straight into the line (no `String` per field
/// per request).
struct OrDash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Milliseconds with one decimal.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}", self.0.as_secs_f64() * 1000.0)
    }
}

/// Writes one access-log line per request.
pub struct AccessLog;

impl OutcomeSink for AccessLog {
    fn record(&self, o: &Outcome<'_>) {
        if o.background || !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        if let Some(out) = crate::logging::access_output() {
            return out.write_line(|line| if out.json { json_line(line, o) } else { plain_line(line, o) });
        }
        // An embedding with its own subscriber: the same fields, as the event's message.
        tracing::info!(target: "access", "{}", Fields(o));
    }
}

/// The access line's `key=value` pairs, in their fixed order (for the tracing fallback).
struct Fields<'a, 'b>(&'a Outcome<'b>);

impl fmt::Display for Fields<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::with_capacity(192);
        push_fields(&mut line, self.0);
        f.write_str(&line)
    }
}

/// Appends the access line's `key=value` pairs, in their fixed order. Pushed piece by piece
/// (numbers through `itoa`) rather than through one `write!` of ten arguments: the formatting
/// machinery was most of what an access line cost.
fn push_fields(line: &mut String, o: &Outcome<'_>) {
    let mut n = itoa::Buffer::new();
    line.push_str("repository=");
    line.push_str(o.repository.unwrap_or("-"));
    line.push_str(" method=");
    line.push_str(o.method.as_str());
    line.push_str(" path=");
    line.push_str(o.target);
    line.push_str(" status=");
    line.push_str(n.format(o.status));
    line.push_str(" cache=");
    line.push_str(o.result.as_str());
    line.push_str(" bytes=");
    line.push_str(n.format(o.bytes_served));
    line.push_str(" upstream_status=");
    line.push_str(o.upstream_status.map_or("-", |s| n.format(s)));
    line.push_str(" upstream_ms=");
    match o.upstream_time {
        Some(t) => {
            use std::fmt::Write;
            let _ = write!(line, "{}", Millis(t));
        }
        None => line.push('-'),
    }
    line.push_str(" upstream_error=");
    line.push_str(o.upstream_error.unwrap_or("-"));
    line.push_str(" client=");
    match o.client {
        Some(addr) => push_addr(line, &addr, &mut n),
        None => line.push('-'),
    }
}

/// `address:port` as `SocketAddr`'s `Display` writes it; IPv4 octet by octet (its `Display`
/// alone was a fifth of an access line's cost), IPv6 through `Display`.
fn push_addr(line: &mut String, addr: &std::net::SocketAddr, n: &mut itoa::Buffer) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    line.push('.');
                }
                line.push_str(n.format(octet));
            }
            line.push(':');
            line.push_str(n.format(v4.port()));
        }
        std::net::SocketAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(line, "{addr}");
        }
    }
}

/// `TIME  INFO access: key=value ...`, as tracing's plain format writes an event.
fn plain_line(line: &mut String, o: &Outcome<'_>) {
    crate::logging::write_time(line);
    line.push_str("  INFO access: ");
    push_fields(line, o);
    line.push('\n');
}

/// One JSON object with the keys in alphabetical order, as `--log-format json` writes every
/// other event: numbers for `bytes` and `status`, strings for the rest.
fn json_line(line: &mut String, o: &Outcome<'_>) {
    use std::fmt::Write;
    let mut time = String::with_capacity(32);
    crate::logging::write_time(&mut time);
    let string = |line: &mut String, key: &str, value: &dyn fmt::Display| {
        let _ = write!(line, ",\"{key}\":\"");
        let _ = write!(JsonEscaped(line), "{value}");
        line.push('"');
    };
    let _ = write!(line, "{{\"bytes\":{}", o.bytes_served);
    string(line, "cache", &o.result.as_str());
    string(line, "client", &OrDash(o.client));
    line.push_str(",\"level\":\"INFO\"");
    string(line, "method", &o.method);
    string(line, "path", &o.target);
    string(line, "repository", &o.repository.unwrap_or("-"));
    let _ = write!(line, ",\"status\":{}", o.status);
    line.push_str(",\"target\":\"access\"");
    string(line, "time", &time);
    string(line, "upstream_error", &o.upstream_error.unwrap_or("-"));
    string(line, "upstream_ms", &OrDash(o.upstream_time.map(Millis)));
    string(line, "upstream_status", &OrDash(o.upstream_status));
    line.push_str("}\n");
}

/// Writes what is formatted into it as the inside of a JSON string (RFC 8259 §7: quote,
/// backslash and control characters escaped), straight into the line.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome<'a>(method: &'a http::Method, upstream: bool) -> Outcome<'a> {
        Outcome {
            repository: Some("pypi"),
            format: None,
            method,
            target: "/pypi/simple/x/?a=1",
            host: None,
            key_path: None,
            class: None,
            status: 200,
            result: hangar_core::CacheResult::Miss,
            source: hangar_core::event::Source::Upstream,
            stored: true,
            digest: None,
            unverified: false,
            content_length: None,
            bytes_served: 1_234_567,
            bytes_fetched: 0,
            upstream_time: upstream.then(|| Duration::from_micros(12_345)),
            upstream_status: upstream.then_some(200),
            upstream_error: (!upstream).then_some("connect"),
            background: false,
            failed: false,
            client: upstream.then(|| "127.0.0.1:4000".parse().unwrap()),
            audit: None,
        }
    }

    #[test]
    fn the_plain_line_names_every_field_in_order() {
        let get = http::Method::GET;
        let mut line = String::new();
        plain_line(&mut line, &outcome(&get, true));
        let (time, rest) = line.split_once("  INFO access: ").unwrap();
        assert_eq!(time.len(), "2026-12-02T03:21:12.123456Z".len(), "{time}");
        assert_eq!(
            rest,
            "repository=pypi method=GET path=/pypi/simple/x/?a=1 status=200 cache=miss bytes=1234567 upstream_status=200 upstream_ms=12.3 upstream_error=- client=127.0.0.1:4000\n"
        );
        let head = http::Method::HEAD;
        assert_eq!(
            Fields(&outcome(&head, false)).to_string(),
            "repository=pypi method=HEAD path=/pypi/simple/x/?a=1 status=200 cache=miss bytes=1234567 upstream_status=- upstream_ms=- upstream_error=connect client=-"
        );
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for addr in ["127.0.0.1:4000", "10.255.0.9:65535", "0.0.0.0:0", "[::1]:443", "[2001:db8::8a2e:370:7334]:8080"] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let mut line = String::new();
            push_addr(&mut line, &addr, &mut itoa::Buffer::new());
            assert_eq!(line, addr.to_string());
        }
    }

    #[test]
    fn json_strings_are_escaped_and_parse_back() {
        let mut line = String::from("\"");
        fmt::Write::write_str(&mut JsonEscaped(&mut line), "a\"b\\c\nd\u{1}e/é").unwrap();
        line.push('"');
        let back: String = serde_json::from_str(&line).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}e/é");
    }
}
