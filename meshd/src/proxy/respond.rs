//! The one place where proxy outcomes become HTTP responses the way Envoy
//! writes them: local replies, redirects, direct responses.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SERVER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use super::{Body, ServerName};
use crate::snapshot::LocalReply;

/// Wraps bytes in the proxy's body type.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn text(code: u16, body: impl Into<Bytes>, server: ServerName) -> Response<Body> {
    let body = body.into();
    let mut resp = Response::new(full(body.clone()));
    *resp.status_mut() = status(code);
    let h = resp.headers_mut();
    if !body.is_empty() {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(SERVER, server.value());
    resp
}

/// Envoy's local reply for `reply`.
pub fn local_reply(reply: LocalReply, server: ServerName) -> Response<Body> {
    text(reply.status(), reply.body(), server)
}

/// A VirtualService `redirect`.
pub fn redirect(code: u16, location: &str, server: ServerName) -> Response<Body> {
    let mut resp = text(code, Bytes::new(), server);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// A VirtualService `directResponse`.
pub fn direct(code: u16, body: &Bytes, server: ServerName) -> Response<Body> {
    text(code, body.clone(), server)
}
