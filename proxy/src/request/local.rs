//! Responses the proxy writes itself: errors with a JSON body that says what to fix, and the
//! answers formats give for their clients ([`LocalAnswer`]).

use bytes::Bytes;
use hangar_core::wire::CACHE_HEADER;
use hangar_core::CacheResult;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::format::{FormatError, LocalAnswer};

/// An answer the proxy gives without the cache or an upstream.
#[derive(Debug)]
pub enum Reply {
    /// `{"error":...,"status":...,"path":...}`.
    Error { status: u16, message: String, allow: Option<String> },
    /// A 401 error reply with its `WWW-Authenticate` challenge: a registry's (its token
    /// endpoint), or by default those of [`crate::auth::CHALLENGES`].
    Unauthenticated { message: String, challenge: Option<String> },
    /// A 429: over a rate limit, with when to ask again (`Retry-After`, seconds).
    Limited { message: String, retry_after: u64 },
    /// A JSON body only for this client (a registry token): 200, never stored by a cache.
    Json(Bytes),
    /// What the format answers (a registry's version check, a registry error).
    Format(LocalAnswer),
    /// A file the proxy derived from an artefact it holds (a wheel's core metadata): served
    /// as a hit, immutable like the artefact.
    Derived(Bytes),
}

impl Reply {
    /// An error reply with `status` and a message that says what to fix.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Reply::Error { status, message: message.into(), allow: None }
    }

    /// A format's refusal: 404 for what it does not serve, 400 for what is malformed.
    pub fn refused(e: FormatError) -> Self {
        match e {
            FormatError::NotFound(why) => Reply::error(404, why),
            e => Reply::error(400, e.to_string()),
        }
    }
}

/// The JSON body of an error reply.
pub fn json_error(status: u16, message: &str, path: &str) -> Bytes {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(|c: char| c.is_control(), "");
    Bytes::from(format!("{{\"error\":\"{}\",\"status\":{status},\"path\":\"{}\"}}\n", esc(message), esc(path)))
}

/// Write an error reply: the JSON body and `headers` (`Allow` for a 405, the challenges of a
/// 401, `Retry-After` for a 429).
async fn write_error(session: &mut Session, status: u16, message: &str, headers: Vec<(header::HeaderName, String)>) -> Result<()> {
    // The path helps say which request failed; a path the reply refuses for its length
    // is not worth repeating whole.
    let path = session.req_header().uri.path();
    let path = match path.char_indices().nth(256) {
        Some((cut, _)) => format!("{}...", &path[..cut]),
        None => path.to_string(),
    };
    let body = json_error(status, message, &path);
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(CACHE_HEADER, CacheResult::Bypass.as_str())?;
    for (name, value) in headers {
        resp.append_header(name, value)?;
    }
    // An over-long or malformed request is not worth keeping the connection for.
    if status == 414 || status == 431 || status == 400 {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Write `reply` as the response; `Ok(true)` tells pingora the request is answered.
pub async fn respond(session: &mut Session, ctx: &mut RequestCtx, reply: Reply) -> Result<bool> {
    ctx.local = Some(CacheResult::Bypass);
    match reply {
        Reply::Error { status, message, allow } => write_error(session, status, &message, allow.map(|a| (header::ALLOW, a)).into_iter().collect()).await?,
        Reply::Unauthenticated { message, challenge } => {
            let challenges = match challenge {
                Some(c) => vec![(header::WWW_AUTHENTICATE, c)],
                None => crate::auth::CHALLENGES.iter().map(|c| (header::WWW_AUTHENTICATE, c.to_string())).collect(),
            };
            write_error(session, 401, &message, challenges).await?
        }
        Reply::Limited { message, retry_after } => write_error(session, 429, &message, vec![(header::RETRY_AFTER, retry_after.to_string())]).await?,
        Reply::Json(body) => {
            let mut resp = ResponseHeader::build(200, Some(4))?;
            resp.insert_header(header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
            resp.insert_header(header::CACHE_CONTROL, "no-store")?;
            resp.insert_header(CACHE_HEADER, CacheResult::Bypass.as_str())?;
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await?;
        }
        Reply::Derived(body) => {
            ctx.local = Some(CacheResult::Hit);
            let mut resp = ResponseHeader::build(200, Some(4))?;
            resp.insert_header(header::CONTENT_TYPE, "application/octet-stream")?;
            resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
            resp.insert_header(header::CACHE_CONTROL, "max-age=31536000, immutable")?;
            resp.insert_header(CACHE_HEADER, CacheResult::Hit.as_str())?;
            let head = session.req_header().method == http::Method::HEAD;
            session.write_response_header(Box::new(resp), head).await?;
            if !head {
                session.write_response_body(Some(body), true).await?;
            }
        }
        Reply::Format(answer) => {
            let mut resp = ResponseHeader::build(answer.status, Some(4 + answer.headers.len()))?;
            resp.insert_header(header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
            for (name, value) in answer.headers {
                resp.insert_header(*name, *value)?;
            }
            resp.insert_header(CACHE_HEADER, CacheResult::Bypass.as_str())?;
            let head = session.req_header().method == http::Method::HEAD;
            session.write_response_header(Box::new(resp), head).await?;
            if !head {
                session.write_response_body(Some(Bytes::from_static(answer.body.as_bytes())), true).await?;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_escape() {
        let b = json_error(404, "no \"repo\"", "/a\"b\n");
        assert_eq!(&b[..], &b"{\"error\":\"no \\\"repo\\\"\",\"status\":404,\"path\":\"/a\\\"b\"}\n"[..]);
    }
}
