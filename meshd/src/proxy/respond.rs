//! The one place where proxy outcomes become HTTP responses the way Envoy
//! writes them: local replies, fault aborts, redirects, direct responses.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SERVER};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use super::{Body, ServerName};
use crate::snapshot::policy::AbortWith;
use crate::snapshot::LocalReply;

/// Envoy's response flags and code details of a response, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFlags {
    /// `%RESPONSE_FLAGS%`: `-`, `NR`, `UF,URX`, ...
    pub flags: std::borrow::Cow<'static, str>,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
}

impl ResponseFlags {
    /// Flags and details.
    pub fn new(flags: &'static str, details: &'static str) -> ResponseFlags {
        ResponseFlags { flags: std::borrow::Cow::Borrowed(flags), details }
    }

    /// Adds a flag in front (`DI` goes before the others, as Envoy lists them).
    pub fn with(&self, flag: &str) -> ResponseFlags {
        let flags = if self.flags == "-" { flag.to_string() } else { format!("{flag},{}", self.flags) };
        ResponseFlags { flags: std::borrow::Cow::Owned(flags), details: self.details }
    }
}

/// A response the proxy wrote itself, with the flags the access log gives it.
pub struct Reply {
    /// What the client gets.
    pub resp: Response<Body>,
    /// How the access log and metrics describe it.
    pub flags: ResponseFlags,
}

/// Wraps bytes in the proxy's body type.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes = bytes.into();
    if bytes.is_empty() {
        // Sized zero, so boxing it allocates nothing (most requests have no body).
        return http_body_util::Empty::new().map_err(|never| match never {}).boxed();
    }
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn text(code: u16, body: impl Into<Bytes>, server: ServerName, flags: ResponseFlags) -> Reply {
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
    Reply { resp, flags }
}

// The replies the proxy makes itself are `#[cold]`: the compiler then lays the branches that
// lead to them apart from the forwarding path, whose code a request runs more densely.

/// Envoy's local reply for `reply`; `retried` adds Envoy's "retried and the latest" wording.
#[cold]
pub fn local_reply(reply: LocalReply, server: ServerName, retried: bool) -> Reply {
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
    let mut resp = text(reply.status(), body, server, ResponseFlags::new(flags, reply.details()));
    if reply == LocalReply::Overflow {
        resp.resp.headers_mut().insert(HeaderName::from_static("x-envoy-overloaded"), HeaderValue::from_static("true"));
    }
    resp
}

/// A fault-injection abort: `fault filter abort`, flag FI; gRPC aborts are trailers-only responses.
#[cold]
pub fn fault_abort(with: &AbortWith, server: ServerName) -> Reply {
    match with {
        AbortWith::Http(code) => {
            text(*code, "fault filter abort", server, ResponseFlags::new("FI", "fault_filter_abort"))
        }
        AbortWith::Grpc(code) => {
            let mut resp = text(200, Bytes::new(), server, ResponseFlags::new("FI", "fault_filter_abort"));
            let h = resp.resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(HeaderName::from_static("grpc-status"), HeaderValue::from(*code));
            h.insert(HeaderName::from_static("grpc-message"), HeaderValue::from_static("fault filter abort"));
            resp
        }
    }
}

/// A VirtualService `redirect`.
#[cold]
pub fn redirect(code: u16, location: &str, server: ServerName) -> Reply {
    let mut resp = text(code, Bytes::new(), server, ResponseFlags::new("-", "via_redirect"));
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// A VirtualService `directResponse`.
#[cold]
pub fn direct(code: u16, body: &Bytes, server: ServerName) -> Reply {
    text(code, body.clone(), server, ResponseFlags::new("-", "direct_response"))
}

/// A local rate limit refusal: 429 `local_rate_limited`, flag RL, with the filter's extra headers.
#[cold]
pub fn rate_limited(headers: &[(HeaderName, HeaderValue)], server: ServerName) -> Reply {
    let mut resp = text(429, "local_rate_limited", server, ResponseFlags::new("RL", "local_rate_limited"));
    for (k, v) in headers {
        resp.resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// An AuthorizationPolicy denial: 403 `RBAC: access denied` (no response flag).
#[cold]
pub fn rbac_denied(server: ServerName) -> Reply {
    text(403, "RBAC: access denied", server, ResponseFlags::new("-", "rbac_access_denied_matched_policy[none]"))
}

/// A present but invalid JWT: 401 with jwt_verify_lib's text and a `www-authenticate` challenge.
#[cold]
pub fn jwt_denied(why: &str, host: &str, path: &str, server: ServerName) -> Reply {
    let mut resp = text(401, why.to_string(), server, ResponseFlags::new("-", "jwt_authn_access_denied"));
    let challenge = format!("Bearer realm=\"http://{host}{path}\", error=\"invalid_token\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}
