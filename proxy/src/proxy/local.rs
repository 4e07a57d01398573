//! Responses the proxy writes itself: errors with a JSON body.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{RequestCtx, CACHE_HEADER};

pub(super) fn json_error(status: u16, message: &str, path: &str) -> Bytes {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(|c: char| c.is_control(), "");
    Bytes::from(format!(
        "{{\"error\":\"{}\",\"status\":{status},\"path\":\"{}\"}}\n",
        esc(message),
        esc(path)
    ))
}

pub(super) async fn respond_local(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    message: &str,
    extra: &[(header::HeaderName, &str)],
) -> Result<bool> {
    let path = session.req_header().uri.path().to_string();
    let body = json_error(status, message, &path);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(CACHE_HEADER, "bypass")?;
    for (k, v) in extra {
        resp.insert_header(k.clone(), *v)?;
    }
    ctx.local_result = Some("bypass");
    // An over-long or malformed request is not worth keeping the connection for.
    if status == 414 || status == 431 || status == 400 {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// A small JSON answer the format gives for a path (a registry's `/v2/` version check).
pub(super) async fn respond_local_json(session: &mut Session, ctx: &mut RequestCtx, status: u16, body: &'static str) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header("docker-distribution-api-version", "registry/2.0")?;
    resp.insert_header(CACHE_HEADER, "bypass")?;
    ctx.local_result = Some("bypass");
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session.write_response_body(Some(Bytes::from_static(body.as_bytes())), true).await?;
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
