//! Rewritten documents are stored once for every name the proxy is reached by, and rebased as
//! they are served.
//!
//! A document whose links lead back through the proxy (a PyPI page, an npm packument, cargo's
//! `config.json`) names the proxy's own URL. Without a configured `public_url`, that URL is the
//! one each client used (its `Host`), and storing one variant per `Host` would let any client
//! bypass the cache and bloat it by inventing names (every new name a fetch upstream). So the
//! stored document names a placeholder origin, [`PLACEHOLDER_ORIGIN`], and [`Rebase`] replaces
//! it with the client's origin as the body streams out (carrying a few bytes across chunks).
//! Fleet peers get the placeholder form and rebase for their own clients.

use bytes::{Bytes, BytesMut};

/// The origin stored documents name instead of the proxy's: `.invalid` (RFC 6761) never
/// resolves, so a document that escaped unrebased leads nowhere rather than somewhere else.
pub const PLACEHOLDER_ORIGIN: &str = "http://hangar-proxy-base.invalid";

/// Replaces [`PLACEHOLDER_ORIGIN`] in a streamed body with one client's origin.
pub struct Rebase {
    to: Bytes,
    /// The end of the last chunk, which may hold the start of a placeholder.
    carry: BytesMut,
}

impl Rebase {
    /// Rebase onto `origin` (`https://hangar.example`).
    pub fn to(origin: &str) -> Self {
        Rebase { to: Bytes::copy_from_slice(origin.as_bytes()), carry: BytesMut::new() }
    }

    /// The next chunk, rebased; the last `end_of_stream` call flushes what was carried.
    pub fn chunk(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        let from = PLACEHOLDER_ORIGIN.as_bytes();
        let mut data = std::mem::take(&mut self.carry);
        if let Some(c) = chunk {
            data.extend_from_slice(&c);
        }
        let mut out = BytesMut::with_capacity(data.len());
        let mut i = 0;
        let mut copied = 0;
        while i + from.len() <= data.len() {
            if data[i] == from[0] && data[i..].starts_with(from) {
                out.extend_from_slice(&data[copied..i]);
                out.extend_from_slice(&self.to);
                i += from.len();
                copied = i;
            } else {
                i += 1;
            }
        }
        // Only a tail that begins a placeholder waits for the next chunk (so a body whose
        // last chunk comes without an end-of-stream call loses nothing).
        let rest = &data[copied..];
        let keep = if end_of_stream { 0 } else { (1..from.len().min(rest.len() + 1)).rev().find(|&n| rest.ends_with(&from[..n])).unwrap_or(0) };
        let tail = data.len() - keep;
        out.extend_from_slice(&data[copied..tail]);
        self.carry.extend_from_slice(&data[tail..]);
        (!out.is_empty() || end_of_stream).then(|| out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_across_chunk_boundaries() {
        let doc = format!("{{\"a\":\"{PLACEHOLDER_ORIGIN}/npm/x.tgz\",\"b\":\"{PLACEHOLDER_ORIGIN}/npm/y.tgz\",\"c\":\"http://hangar-proxy-base\"}}");
        let expected = doc.replace(PLACEHOLDER_ORIGIN, "https://h.test:8443");
        for split in 1..doc.len() {
            let mut r = Rebase::to("https://h.test:8443");
            let mut out = Vec::new();
            for part in doc.as_bytes().chunks(split) {
                if let Some(b) = r.chunk(Some(Bytes::copy_from_slice(part)), false) {
                    out.extend_from_slice(&b);
                }
            }
            out.extend_from_slice(&r.chunk(None, true).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "chunks of {split}");
        }
        // Nothing is held back unless it could start a placeholder.
        let mut r = Rebase::to("http://x");
        assert_eq!(r.chunk(Some(Bytes::from_static(b"{\"a\":1}")), false).unwrap(), Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(r.chunk(Some(Bytes::from_static(b"x http://hang")), false).unwrap(), Bytes::from_static(b"x "));
    }
}
