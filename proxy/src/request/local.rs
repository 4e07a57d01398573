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
    /// A 401 error reply with the `WWW-Authenticate` challenges of [`crate::auth::CHALLENGES`].
    Unauthenticated(String),
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

/// Write an error reply: the JSON body, `Allow` for a 405, the challenges for a 401.
async fn write_error(session: &mut Session, status: u16, message: &str, allow: Option<String>) -> Result<()> {
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
    if let Some(allow) = allow {
        resp.insert_header(header::ALLOW, allow)?;
    }
    if status == 401 {
        for c in crate::auth::CHALLENGES {
            resp.append_header(header::WWW_AUTHENTICATE, c)?;
        }
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
        Reply::Error { status, message, allow } => write_error(session, status, &message, allow).await?,
        Reply::Unauthenticated(message) => write_error(session, 401, &message, None).await?,
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
