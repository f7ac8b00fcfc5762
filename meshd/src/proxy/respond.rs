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
    pub details: std::borrow::Cow<'static, str>,
}

impl ResponseFlags {
    /// Flags and details.
    pub fn new(flags: &'static str, details: &'static str) -> ResponseFlags {
        ResponseFlags { flags: std::borrow::Cow::Borrowed(flags), details: std::borrow::Cow::Borrowed(details) }
    }

    /// Adds a flag where Envoy lists it: in the order of its response-flag bits, whatever the
    /// order they were set in (`UF,DI,URX`, `DI,FI`, `UT,URX`).
    pub fn with(&self, flag: &str) -> ResponseFlags {
        let rank = |f: &str| FLAG_ORDER.iter().position(|o| *o == f).unwrap_or(FLAG_ORDER.len());
        let mut all: Vec<&str> = self.flags.split(',').filter(|f| *f != "-" && *f != flag).collect();
        all.push(flag);
        all.sort_by_key(|f| rank(f));
        ResponseFlags { flags: std::borrow::Cow::Owned(all.join(",")), details: self.details.clone() }
    }
}

/// `%RESPONSE_FLAGS%` in the order Envoy prints them: its `ResponseFlag` bits, lowest first.
const FLAG_ORDER: [&str; 28] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH",
    "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO",
];

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

/// Envoy's local reply for `reply`; `retried` adds Envoy's "retried and the latest" wording
/// (the caller adds URX when the retries ran out).
#[cold]
pub fn local_reply(reply: LocalReply, server: ServerName, retried: bool) -> Reply {
    let body = reply.body();
    let body = match body.split_once("headers. ") {
        Some((head, tail)) if retried => format!("{head}headers. retried and the latest {tail}"),
        _ => body.to_string(),
    };
    let mut resp = text(reply.status(), body, server, ResponseFlags::new(reply.flag(), reply.details()));
    if reply == LocalReply::Overflow {
        resp.resp.headers_mut().insert(HeaderName::from_static("x-envoy-overloaded"), HeaderValue::from_static("true"));
    }
    resp
}

/// Envoy's CORS filter's answer to a preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`): 200 with the policy's headers for an allowed origin, bare
/// for another (`unmatchedPreflights: IGNORE`). The app never sees it.
#[cold]
pub fn cors_preflight(cors: Option<(&crate::snapshot::route::Cors, HeaderValue)>, server: ServerName) -> Reply {
    use http::header::{ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_MAX_AGE};
    let mut reply = text(200, "", server, ResponseFlags::new("-", "cors_response"));
    if let Some((cors, origin)) = cors {
        let h = reply.resp.headers_mut();
        cors.allow(h, origin);
        for (name, value) in [
            (ACCESS_CONTROL_ALLOW_METHODS, &cors.methods),
            (ACCESS_CONTROL_ALLOW_HEADERS, &cors.headers),
            (ACCESS_CONTROL_MAX_AGE, &cors.max_age),
        ] {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
    }
    reply
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

/// An AuthorizationPolicy denial: 403 `RBAC: access denied` (no response flag); the details name
/// the DENY rule that matched (`ns[<ns>]-policy[<name>]-rule[<i>]`), or `none`.
#[cold]
pub fn rbac_denied(policy: &str, server: ServerName) -> Reply {
    let mut resp = text(403, "RBAC: access denied", server, ResponseFlags::new("-", ""));
    resp.flags.details = format!("rbac_access_denied_matched_policy[{policy}]").into();
    resp
}

/// A present but invalid JWT: 401 (403 for an audience not allowed) with jwt_verify_lib's text
/// and a `www-authenticate` challenge naming the request's URI (its path capped at 256 bytes,
/// as Envoy's filter builds it).
#[cold]
pub fn jwt_denied(why: &str, scheme: &str, host: &str, path: &str, server: ServerName) -> Reply {
    let status = if why == crate::security::jwt::AUDIENCE_NOT_ALLOWED { 403 } else { 401 };
    let mut resp = text(status, why.to_string(), server, ResponseFlags::new("-", ""));
    // Envoy's details carry the status with its spaces made underscores.
    resp.flags.details = format!("jwt_authn_access_denied{{{}}}", why.replace(' ', "_")).into();
    let mut end = path.len().min(256);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let path = &path[..end];
    let challenge = format!("Bearer realm=\"{scheme}://{host}{path}\", error=\"invalid_token\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_refusals_as_envoys_filter_answers_them() {
        let expired = jwt_denied("Jwt is expired", "http", "example.com", "/headers?a=1", ServerName::IstioEnvoy);
        assert_eq!(expired.resp.status(), 401);
        assert_eq!(expired.flags.details, "jwt_authn_access_denied{Jwt_is_expired}");
        assert_eq!(
            expired.resp.headers()[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"http://example.com/headers?a=1\", error=\"invalid_token\""
        );
        // A valid token for another audience is forbidden, not unauthorized.
        let audience =
            jwt_denied(crate::security::jwt::AUDIENCE_NOT_ALLOWED, "https", "h", "/", ServerName::IstioEnvoy);
        assert_eq!(audience.resp.status(), 403);
        assert_eq!(audience.flags.details, "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}");
        assert_eq!(
            audience.resp.headers()[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"https://h/\", error=\"invalid_token\""
        );
    }
}
