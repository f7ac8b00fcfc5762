//! The one place where proxy outcomes become HTTP responses the way Envoy
//! writes them: local replies, fault aborts, redirects, direct responses.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SERVER};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use super::{Body, ServerName};
use crate::snapshot::policy::AbortWith;
use crate::snapshot::LocalReply;

/// Envoy's response flags of a response, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFlags(pub &'static str);

/// Wraps bytes in the proxy's body type.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn text(code: u16, body: impl Into<Bytes>, server: ServerName, flags: &'static str) -> Response<Body> {
    let body = body.into();
    let len = body.len();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status(code);
    let h = resp.headers_mut();
    if len > 0 {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(SERVER, server.value());
    resp.extensions_mut().insert(ResponseFlags(flags));
    resp
}

/// Envoy's local reply for `reply`; `retried` adds Envoy's "retried and the latest" wording.
pub fn local_reply(reply: LocalReply, server: ServerName, retried: bool) -> Response<Body> {
    let body = reply.body();
    let body = match body.split_once("headers. ") {
        Some((head, tail)) if retried => format!("{head}headers. retried and the latest {tail}"),
        _ => body.to_string(),
    };
    let flags = if retried && matches!(reply, LocalReply::ConnectFailure | LocalReply::UpstreamReset) {
        if reply == LocalReply::ConnectFailure {
            "UF,URX"
        } else {
            "UC,URX"
        }
    } else {
        reply.flag()
    };
    let mut resp = text(reply.status(), body, server, flags);
    if reply == LocalReply::Overflow {
        resp.headers_mut().insert(HeaderName::from_static("x-envoy-overloaded"), HeaderValue::from_static("true"));
    }
    resp
}

/// A fault-injection abort: `fault filter abort`, flag FI; gRPC aborts are trailers-only responses.
pub fn fault_abort(with: &AbortWith, server: ServerName) -> Response<Body> {
    match with {
        AbortWith::Http(code) => text(*code, "fault filter abort", server, "FI"),
        AbortWith::Grpc(code) => {
            let mut resp = text(200, Bytes::new(), server, "FI");
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(HeaderName::from_static("grpc-status"), HeaderValue::from(*code));
            h.insert(HeaderName::from_static("grpc-message"), HeaderValue::from_static("fault filter abort"));
            resp
        }
    }
}

/// A VirtualService `redirect`.
pub fn redirect(code: u16, location: &str, server: ServerName) -> Response<Body> {
    let mut resp = text(code, Bytes::new(), server, "-");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// A VirtualService `directResponse`.
pub fn direct(code: u16, body: &Bytes, server: ServerName) -> Response<Body> {
    text(code, body.clone(), server, "-")
}

/// A local rate limit refusal: 429 `local_rate_limited`, flag RL, with the filter's extra headers.
pub fn rate_limited(headers: &[(HeaderName, HeaderValue)], server: ServerName) -> Response<Body> {
    let mut resp = text(429, "local_rate_limited", server, "RL");
    for (k, v) in headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// An AuthorizationPolicy denial: 403 `RBAC: access denied` (no response flag).
pub fn rbac_denied(server: ServerName) -> Response<Body> {
    text(403, "RBAC: access denied", server, "-")
}

/// A present but invalid JWT: 401 with jwt_verify_lib's text and a `www-authenticate` challenge.
pub fn jwt_denied(why: &str, host: &str, path: &str, server: ServerName) -> Response<Body> {
    let mut resp = text(401, why.to_string(), server, "-");
    let challenge = format!("Bearer realm=\"http://{host}{path}\", error=\"invalid_token\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}
