//! What a 502, 503 or 504 tells the client about why: the host and address that refused, the
//! TLS error, the DNS failure, the breaker and when it closes. Words for people reading a
//! failed build's log; the access log and metrics carry the short kind (`connect`, `dns`, ...).

use std::time::SystemTime;

use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorType};

/// Why connecting to `peer` (the upstream host `peer.sni` at `peer.address()`) failed.
pub fn connect_failure(peer: &HttpPeer, e: &Error) -> String {
    let (host, addr) = (peer.sni.as_str(), &peer._address);
    let cause = e.cause.as_ref().map_or_else(|| e.to_string(), |c| c.to_string());
    match e.etype() {
        ErrorType::ConnectRefused => format!("connection refused by upstream {host} ({addr}): nothing listens there"),
        ErrorType::ConnectTimedout => format!("connecting to upstream {host} ({addr}) timed out"),
        ErrorType::ConnectNoRoute => format!("no route to upstream {host} ({addr})"),
        ErrorType::TLSHandshakeFailure | ErrorType::TLSHandshakeTimedout | ErrorType::InvalidCert | ErrorType::HandshakeError | ErrorType::TLSWantX509Lookup => {
            format!("TLS error with upstream {host} ({addr}): {cause}")
        }
        _ => format!("cannot connect to upstream {host} ({addr}): {cause}"),
    }
}

/// Why an upstream try failed after connecting, when nothing more specific was said.
pub fn upstream_failure(e: &Error) -> String {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "the upstream did not answer in time (timeouts.read)".to_string(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => "the upstream closed the connection".to_string(),
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error | ErrorType::InvalidH2 => format!("the upstream's response was not valid HTTP: {e}"),
        _ => e.to_string(),
    }
}

/// The 503 while `repository`'s breaker is open until `until`.
pub fn breaker_open(repository: &str, until: Option<SystemTime>) -> String {
    let when = until.map_or_else(|| "its cool-down ends".to_string(), |t| httpdate::fmt_http_date(t));
    format!("upstream unavailable: the circuit breaker of repository '{repository}' is open until {when} (too many upstream failures), and this is not cached")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_names_host_and_address() {
        let peer = HttpPeer::new("127.0.0.1:9", false, "up.example".to_string());
        let why = connect_failure(&peer, &Error::new(ErrorType::ConnectRefused));
        assert!(why.contains("connection refused") && why.contains("up.example") && why.contains("127.0.0.1:9"), "{why}");
        let until = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86400);
        assert!(breaker_open("npm", Some(until)).contains("open until Fri, 02 Jan 1970 00:00:00 GMT"));
    }
}
