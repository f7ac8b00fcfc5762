//! httpbin: go-httpbin v2.15.0 (Istio's sample image) and, for the mirroring task, the older
//! kennethreitz/httpbin (Flask behind gunicorn) with string header values and a gunicorn access log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::Response;
use axum::Router;

use crate::json::{Json, FLASK_PRETTY, GO_PRETTY};
use crate::util::{base64_encode, header_str, parse_query, percent_decode, Civil};
use crate::{AppEnv, LogSink, HTTPBIN_FLAVOR_ENV};

/// Which httpbin implementation to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// mccutchen/go-httpbin v2.15.0.
    Go,
    /// kennethreitz/httpbin (Python), used by the mirroring task on port 80.
    Kennethreitz,
}

impl Flavor {
    /// The flavour [`crate::image_env`] asked for; without that hint, container port 80 means the
    /// kennethreitz image (the mirroring task's Deployment), anything else go-httpbin.
    pub(crate) fn of(env: &AppEnv, container_port: u16) -> Flavor {
        match env.env.get(HTTPBIN_FLAVOR_ENV).map(String::as_str) {
            Some("kennethreitz") => Flavor::Kennethreitz,
            Some(_) => Flavor::Go,
            None if container_port == 80 => Flavor::Kennethreitz,
            None => Flavor::Go,
        }
    }
}

/// go-httpbin's default `-max-body-size`.
const MAX_BODY: usize = 1024 * 1024;
/// go-httpbin's default `-max-duration`; kennethreitz clamps `/delay` to the same 10 s.
const MAX_DELAY: Duration = Duration::from_secs(10);

const JSON_GO: &str = "application/json; charset=utf-8";
const TEXT_GO: &str = "text/plain; charset=utf-8";
const HTML_UTF8: &str = "text/html; charset=utf-8";

struct St {
    flavor: Flavor,
    hostname: String,
    log: LogSink,
    max_delay: Duration,
}

/// Builds the httpbin router. One fallback handler does the routing so that 404/405 answers
/// and the access log look like the original's for every path.
pub(crate) fn router(env: &AppEnv, flavor: Flavor) -> Router {
    let st = St { flavor, hostname: env.hostname.clone(), log: env.log.clone(), max_delay: MAX_DELAY };
    Router::new().fallback(handle).with_state(Arc::new(st))
}

/// The startup lines each server prints.
pub(crate) fn log_startup(env: &AppEnv, flavor: Flavor, port: u16) {
    let now = Civil::now();
    match flavor {
        Flavor::Go => (env.log)(&format!(
            "time={} level=INFO msg=\"go-httpbin listening on http://0.0.0.0:{port}\"",
            now.rfc3339_millis()
        )),
        Flavor::Kennethreitz => {
            let ts = now.ymd_hms();
            (env.log)(&format!("[{ts} +0000] [1] [INFO] Starting gunicorn 19.9.0"));
            (env.log)(&format!("[{ts} +0000] [1] [INFO] Listening at: http://0.0.0.0:{port} (1)"));
        }
    }
}

/// The parts of a request the handlers look at.
struct Req {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    peer: SocketAddr,
    body: Bytes,
}

impl Req {
    fn path(&self) -> &str {
        self.uri.path()
    }

    /// Path and query as received (Go's `RequestURI`, gunicorn's `RAW_URI`).
    fn request_uri(&self) -> String {
        self.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| self.uri.path().to_string())
    }

    /// The request authority (absolute-form URI first, else the Host header).
    fn host(&self) -> String {
        self.uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header_str(&self.headers, "host").map(str::to_string))
            .unwrap_or_default()
    }

    fn scheme(&self) -> &str {
        if let Some(s) = header_str(&self.headers, "x-forwarded-proto").filter(|s| !s.is_empty()) {
            return s;
        }
        if let Some(s) = header_str(&self.headers, "x-forwarded-protocol").filter(|s| !s.is_empty()) {
            return s;
        }
        if header_str(&self.headers, "x-forwarded-ssl") == Some("on") {
            return "https";
        }
        "http"
    }

    fn url(&self) -> String {
        format!("{}://{}{}", self.scheme(), self.host(), self.request_uri())
    }

    fn user_agent(&self) -> String {
        header_text(&self.headers, "user-agent")
    }

    fn args(&self) -> Vec<(String, String)> {
        parse_query(self.uri.query().unwrap_or_default())
    }

    fn content_type(&self) -> String {
        let ct = header_text(&self.headers, "content-type");
        ct.split(';').next().unwrap_or_default().to_string()
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// go-httpbin's client IP: first X-Forwarded-For entry, else the peer `host:port`.
    fn go_origin(&self) -> String {
        match header_str(&self.headers, "x-forwarded-for").filter(|v| !v.is_empty()) {
            Some(xff) => xff.split(',').next().unwrap_or_default().trim().to_string(),
            None => self.peer.to_string(),
        }
    }

    /// kennethreitz's origin: the whole X-Forwarded-For value, else the peer IP.
    fn kr_origin(&self) -> String {
        header_str(&self.headers, "x-forwarded-for").map(str::to_string).unwrap_or_else(|| self.peer.ip().to_string())
    }
}

/// Header value as text; non-UTF-8 bytes are replaced rather than dropped.
fn header_text(h: &HeaderMap, name: &str) -> String {
    h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
}

/// A finished response whose body size is known for the access log.
struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Reply {
    fn new(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
        let mut r = Reply { status, headers: Vec::new(), body: body.into() };
        r = r.with(header::CONTENT_TYPE, content_type);
        r
    }

    fn with(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.retain(|(n, _)| *n != name);
            self.headers.push((name, v));
        }
        self
    }

    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() = self.status;
        for (n, v) in self.headers {
            resp.headers_mut().insert(n, v);
        }
        resp
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Writes one access-log line per request; a request dropped before it finished (client gone
/// during `/delay`) is logged as go-httpbin's 499.
struct AccessLog {
    sink: LogSink,
    flavor: Flavor,
    started: Instant,
    method: String,
    uri: String,
    version: &'static str,
    user_agent: String,
    referer: String,
    go_client_ip: String,
    peer_ip: String,
    done: bool,
}

impl AccessLog {
    fn new(st: &St, r: &Req, started: Instant) -> AccessLog {
        AccessLog {
            sink: st.log.clone(),
            flavor: st.flavor,
            started,
            method: r.method.to_string(),
            uri: r.request_uri(),
            version: match r.version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
            user_agent: r.user_agent(),
            referer: header_text(&r.headers, "referer"),
            go_client_ip: r.go_origin(),
            peer_ip: r.peer.ip().to_string(),
            done: false,
        }
    }

    fn finish(&mut self, status: u16, size: usize) {
        self.done = true;
        self.write(status, size);
    }

    fn write(&self, status: u16, size: usize) {
        let line = match self.flavor {
            Flavor::Go => {
                let ms = self.started.elapsed().as_secs_f64() * 1e3;
                let level = match status {
                    500.. => "ERROR",
                    400..=499 => "WARN",
                    _ => "INFO",
                };
                let msg = format!("{status} {} {} {ms:.1}ms", self.method, self.uri);
                format!(
                    "time={} level={level} msg={} status={status} method={} uri={} size_bytes={size} duration_ms={ms} user_agent={} client_ip={}",
                    Civil::now().rfc3339_millis(),
                    slog_value(&msg),
                    slog_value(&self.method),
                    slog_value(&self.uri),
                    slog_value(&self.user_agent),
                    slog_value(&self.go_client_ip),
                )
            }
            Flavor::Kennethreitz => {
                let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
                format!(
                    "{} - - [{}] \"{} {} {}\" {status} {size} \"{}\" \"{}\"",
                    self.peer_ip,
                    Civil::now().clf(),
                    self.method,
                    self.uri,
                    self.version,
                    dash(&self.referer),
                    dash(&self.user_agent),
                )
            }
        };
        (self.sink)(&line);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if !self.done && self.flavor == Flavor::Go {
            self.write(499, 0);
        }
    }
}

/// Quotes a slog text value the way Go's TextHandler does when it must.
fn slog_value(s: &str) -> String {
    let needs = s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control() || (!c.is_ascii() && c.is_whitespace()));
    if !needs {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn handle(State(st): State<Arc<St>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let too_large = body.is_err();
    let r = Req {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        peer,
        body: body.unwrap_or_default(),
    };
    let mut log = AccessLog::new(&st, &r, started);
    let reply = if too_large {
        match st.flavor {
            Flavor::Go => go_error(400, Some("error parsing request body: http: request body too large".into())),
            Flavor::Kennethreitz => {
                werkzeug_page(413, "Request Entity Too Large", "The data value transmitted exceeds the capacity limit.")
            }
        }
    } else if r.method == Method::OPTIONS {
        preflight(&r)
    } else {
        match st.flavor {
            Flavor::Go => go_route(&st, &r).await,
            Flavor::Kennethreitz => kr_route(&st, &r).await,
        }
    };
    let reply = cors(reply, &r);
    let size = if r.method == Method::HEAD { 0 } else { reply.body.len() };
    log.finish(reply.status.as_u16(), size);
    reply.into_response()
}

fn cors(reply: Reply, r: &Req) -> Reply {
    let origin = header_str(&r.headers, "origin").filter(|o| !o.is_empty()).unwrap_or("*").to_string();
    reply.with(header::ACCESS_CONTROL_ALLOW_ORIGIN, &origin).with(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")
}

fn preflight(r: &Req) -> Reply {
    let mut reply = Reply::new(StatusCode::OK, TEXT_GO, Bytes::new())
        .with(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, HEAD, PUT, DELETE, PATCH, OPTIONS")
        .with(header::ACCESS_CONTROL_MAX_AGE, "3600");
    if let Some(h) = header_str(&r.headers, "access-control-request-headers") {
        reply = reply.with(header::ACCESS_CONTROL_ALLOW_HEADERS, h);
    }
    reply
}

/// The single path segment after `prefix`, percent-decoded (a path wildcard's value).
fn segment(path: &str, prefix: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains('/')).then(|| percent_decode(rest, false))
}

/// Ordered key/value pairs as a sorted map of lists (Go `url.Values`).
fn values_json(pairs: Vec<(String, String)>) -> Json {
    let mut map: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(Json::Str(v));
    }
    Json::Obj(map.into_iter().map(|(k, v)| (k, Json::Arr(v))).collect())
}

/// Pairs as Flask's `semiflatten`: one value as a string, several as a list.
fn semiflat_json(pairs: Vec<(String, String)>) -> Json {
    let mut map: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(Json::Str(v));
    }
    Json::Obj(
        map.into_iter()
            .map(|(k, mut v)| {
                let value = if v.len() == 1 { v.pop().unwrap_or(Json::Null) } else { Json::Arr(v) };
                (k, value)
            })
            .collect(),
    )
}

fn uuid4() -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

const INDEX_HTML: &str = "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>httpbin</title>\n</head>\n<body>\n\
<h1>httpbin</h1>\n<p>A simple HTTP request and response service (meshd demo).</p>\n<ul>\n\
<li><a href=\"/get\">/get</a> the request's query args, headers and origin</li>\n\
<li><a href=\"/headers\">/headers</a> the request's headers</li>\n\
<li><a href=\"/ip\">/ip</a> the requester's address</li>\n\
<li><a href=\"/user-agent\">/user-agent</a> the request's User-Agent</li>\n\
<li><a href=\"/status/418\">/status/{code}</a> answers with a status code; <code>200,503</code> or <code>200:0.9,503:0.1</code> picks one at random</li>\n\
<li><a href=\"/delay/1\">/delay/{duration}</a> answers after a delay (at most 10s)</li>\n\
<li><a href=\"/anything\">/anything</a>, /post, /put, /patch, /delete echo the request</li>\n\
<li><a href=\"/hostname\">/hostname</a>, <a href=\"/uuid\">/uuid</a>, <a href=\"/html\">/html</a>, <a href=\"/json\">/json</a></li>\n\
</ul>\n</body>\n</html>\n";

const MOBY_HTML: &str = "<!DOCTYPE html>\n<html>\n  <head>\n  </head>\n  <body>\n      <h1>Herman Melville - Moby-Dick</h1>\n\n      <div>\n        <p>\n          Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.\n        </p>\n      </div>\n  </body>\n</html>";

fn sample_json() -> Json {
    let slide = |pairs: Vec<(&str, Json)>| Json::obj(pairs);
    Json::obj(vec![(
        "slideshow",
        Json::obj(vec![
            ("author", Json::str("Yours Truly")),
            ("date", Json::str("date of publication")),
            (
                "slides",
                Json::Arr(vec![
                    slide(vec![("title", Json::str("Wake up to WonderWidgets!")), ("type", Json::str("all"))]),
                    slide(vec![
                        (
                            "items",
                            Json::Arr(vec![
                                Json::str("Why <em>WonderWidgets</em> are great"),
                                Json::str("Who <em>buys</em> WonderWidgets"),
                            ]),
                        ),
                        ("title", Json::str("Overview")),
                        ("type", Json::str("all")),
                    ]),
                ]),
            ),
            ("title", Json::str("Sample Slide Show")),
        ]),
    )])
}

/// Parses a status code list entry the way each flavour does, then answers with it.
fn parse_weighted(raw: &str) -> Result<Vec<(i64, f64)>, String> {
    raw.split(',')
        .map(|pair| {
            let (code, weight) = match pair.split_once(':') {
                Some((c, w)) => {
                    let w = w.parse::<f64>().map_err(|_| format!("invalid weight value: {w:?}"))?;
                    (c, w)
                }
                None => (pair, 1.0),
            };
            let code = code.parse::<i64>().map_err(|_| format!("invalid choice value: {code:?}"))?;
            Ok((code, weight))
        })
        .collect()
}

fn weighted_choice(choices: &[(i64, f64)]) -> Option<i64> {
    let total: f64 = choices.iter().map(|(_, w)| w).sum();
    let pick = fastrand::f64() * total;
    let mut acc = 0.0;
    for (code, w) in choices {
        acc += w;
        if pick < acc {
            return Some(*code);
        }
    }
    None
}

/// httpbin's `/status` answers, including the special cases both flavours share.
fn status_reply(code: i64, content_type: &str) -> Reply {
    let Ok(code) = u16::try_from(code) else {
        return Reply::new(StatusCode::INTERNAL_SERVER_ERROR, content_type, Bytes::new());
    };
    // Go sends a 1xx as an informational response and then 200 when the handler returns.
    let final_code = if (100..200).contains(&code) { 200 } else { code };
    let Ok(st) = StatusCode::from_u16(final_code) else {
        return Reply::new(StatusCode::INTERNAL_SERVER_ERROR, content_type, Bytes::new());
    };
    let reply = Reply::new(st, content_type, Bytes::new());
    match code {
        300 => Reply {
            body: Bytes::from_static(b"<!doctype html>\n<head>\n<title>Multiple Choices</title>\n</head>\n<body>\n<ul>\n<li><a href=\"/image/jpeg\">/image/jpeg</a></li>\n<li><a href=\"/image/png\">/image/png</a></li>\n<li><a href=\"/image/svg\">/image/svg</a></li>\n</body>\n</html>"),
            ..reply
        }
        .with(header::LOCATION, "/image/jpeg"),
        301 | 302 | 303 | 305 | 307 => reply.with(header::LOCATION, "/redirect/1"),
        308 => Reply {
            body: Bytes::from_static(b"<!doctype html>\n<head>\n<title>Permanent Redirect</title>\n</head>\n<body>Permanently redirected to <a href=\"/image/jpeg\">/image/jpeg</a>\n</body>\n</html>"),
            ..reply
        }
        .with(header::LOCATION, "/image/jpeg"),
        401 => reply.with(header::WWW_AUTHENTICATE, "Basic realm=\"Fake Realm\""),
        402 => Reply {
            body: Bytes::from_static(b"Fuck you, pay me!"),
            ..reply
        }
        .with(HeaderName::from_static("x-more-info"), "http://vimeo.com/22053820"),
        406 => {
            let body = Json::obj(vec![
                (
                    "message",
                    Json::str("Client did not request a supported media type"),
                ),
                (
                    "accept",
                    Json::Arr(
                        ["image/webp", "image/svg+xml", "image/jpeg", "image/png", "image/"]
                            .into_iter()
                            .map(Json::str)
                            .collect(),
                    ),
                ),
            ]);
            Reply::new(st, JSON_GO, format!("{}\n", body.render(&GO_PRETTY)))
        }
        407 => reply.with(header::PROXY_AUTHENTICATE, "Basic realm=\"Fake Realm\""),
        418 => Reply {
            body: Bytes::from_static(b"I'm a teapot!"),
            ..reply
        }
        .with(
            HeaderName::from_static("x-more-info"),
            "http://tools.ietf.org/html/rfc2324",
        ),
        _ => reply,
    }
}

// ---------------------------------------------------------------------------------------------
// go-httpbin

fn go_json(code: StatusCode, v: &Json) -> Reply {
    Reply::new(code, JSON_GO, format!("{}\n", v.render(&GO_PRETTY)))
}

fn go_error(code: u16, detail: Option<String>) -> Reply {
    let st = status(code);
    let mut fields = vec![
        ("status_code", Json::int(i64::from(code))),
        ("error", Json::str(st.canonical_reason().unwrap_or_default())),
    ];
    if let Some(d) = detail {
        fields.push(("detail", Json::Str(d)));
    }
    go_json(st, &Json::obj(fields))
}

/// Canonical header names (Go's `textproto.CanonicalMIMEHeaderKey`), values as lists, and
/// `Host` from the request authority.
fn go_headers(r: &Req) -> Json {
    let mut map: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for (name, value) in &r.headers {
        map.entry(go_canonical(name.as_str()))
            .or_default()
            .push(Json::Str(String::from_utf8_lossy(value.as_bytes()).into_owned()));
    }
    map.insert("Host".to_string(), vec![Json::Str(r.host())]);
    Json::Obj(map.into_iter().map(|(k, v)| (k, Json::Arr(v))).collect())
}

fn go_canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            out
        })
        .collect()
}

/// `/get`-style body: args, headers, method, origin, url.
fn go_no_body(r: &Req) -> Json {
    Json::obj(vec![
        ("args", values_json(r.args())),
        ("headers", go_headers(r)),
        ("method", Json::str(r.method.as_str())),
        ("origin", Json::str(r.go_origin())),
        ("url", Json::str(r.url())),
    ])
}

/// `/anything`-style body: the `/get` fields plus data, files, form, json.
fn go_with_body(r: &Req) -> Result<Json, Reply> {
    let mut data = String::new();
    let mut form = Json::Obj(Vec::new());
    let mut json = Json::Null;
    if !r.body.is_empty() {
        data = r.body_text();
        let ct = r.content_type();
        match ct.as_str() {
            "text/html" | "text/plain" => {}
            "application/x-www-form-urlencoded" => form = values_json(parse_query(&data)),
            // Multipart parts are not split out (no multipart parser here); the raw body stays in data.
            "multipart/form-data" => {}
            "application/json" => {
                json = Json::parse(&data)
                    .map(Json::sorted)
                    .map_err(|e| go_error(400, Some(format!("error parsing request body: {e}"))))?;
            }
            _ => {
                let ct = if ct.is_empty() { "application/octet-stream" } else { ct.as_str() };
                data = format!("data:{ct};base64,{}", base64_encode(&r.body, true, true));
            }
        }
    }
    let Json::Obj(mut fields) = go_no_body(r) else {
        return Err(go_error(500, None));
    };
    fields.push(("data".into(), Json::Str(data)));
    fields.push(("files".into(), Json::Obj(Vec::new())));
    fields.push(("form".into(), form));
    fields.push(("json".into(), json));
    Ok(Json::Obj(fields))
}

async fn go_route(st: &St, r: &Req) -> Reply {
    let path = r.path();
    let m = &r.method;
    let get_or_head = *m == Method::GET || *m == Method::HEAD;
    match path {
        "/" => Reply::new(StatusCode::OK, HTML_UTF8, INDEX_HTML).with(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' camo.githubusercontent.com",
        ),
        "/get" if get_or_head => go_json(StatusCode::OK, &go_no_body(r)),
        "/headers" => go_json(StatusCode::OK, &Json::obj(vec![("headers", go_headers(r))])),
        "/ip" => go_json(StatusCode::OK, &Json::obj(vec![("origin", Json::str(r.go_origin()))])),
        "/user-agent" => go_json(StatusCode::OK, &Json::obj(vec![("user-agent", Json::str(r.user_agent()))])),
        "/uuid" => go_json(StatusCode::OK, &Json::obj(vec![("uuid", Json::str(uuid4()))])),
        "/hostname" => go_json(StatusCode::OK, &Json::obj(vec![("hostname", Json::str(st.hostname.clone()))])),
        "/html" => Reply::new(StatusCode::OK, HTML_UTF8, MOBY_HTML),
        "/json" => go_json(StatusCode::OK, &sample_json()),
        "/post" if *m == Method::POST => go_body_reply(r),
        "/put" if *m == Method::PUT => go_body_reply(r),
        "/patch" if *m == Method::PATCH => go_body_reply(r),
        "/delete" if *m == Method::DELETE => go_body_reply(r),
        "/get" | "/post" | "/put" | "/patch" | "/delete" => go_error(405, None),
        p if p == "/anything" || p.starts_with("/anything/") => {
            if *m == Method::HEAD {
                go_json(StatusCode::OK, &go_no_body(r))
            } else {
                go_body_reply(r)
            }
        }
        p => {
            if let Some(code) = segment(p, "/status/") {
                go_status(&code)
            } else if let Some(d) = segment(p, "/delay/") {
                go_delay(st, r, &d).await
            } else if let Some(n) = segment(p, "/redirect/").or_else(|| segment(p, "/relative-redirect/")) {
                go_redirect(&n)
            } else {
                go_error(404, None)
            }
        }
    }
}

fn go_body_reply(r: &Req) -> Reply {
    match go_with_body(r) {
        Ok(j) => go_json(StatusCode::OK, &j),
        Err(reply) => reply,
    }
}

/// Go's `strconv.Atoi` with its error text.
fn go_atoi(s: &str) -> Result<i64, String> {
    s.parse::<i64>().map_err(|_| {
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        let why = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        format!("strconv.Atoi: parsing {s:?}: {why}")
    })
}

fn go_status(raw: &str) -> Reply {
    let code = if !raw.contains(',') {
        match go_atoi(raw) {
            Err(e) => return go_error(400, Some(format!("invalid status code: {raw:?}: {e}"))),
            Ok(c) if !(100..=599).contains(&c) => {
                return go_error(400, Some(format!("invalid status code: {c} not in range [100, 599]")))
            }
            Ok(c) => c,
        }
    } else {
        let choices = match parse_weighted(raw) {
            Ok(c) => c,
            Err(e) => return go_error(400, Some(e)),
        };
        match weighted_choice(&choices) {
            Some(c) => c,
            None => return go_error(500, None),
        }
    };
    status_reply(code, TEXT_GO)
}

fn go_redirect(raw: &str) -> Reply {
    match go_atoi(raw) {
        Err(e) => go_error(400, Some(format!("invalid redirect count: {e}"))),
        Ok(n) if n < 1 => go_error(400, Some("redirect count must be > 0".into())),
        Ok(1) => Reply::new(StatusCode::FOUND, TEXT_GO, Bytes::new()).with(header::LOCATION, "/get"),
        Ok(n) => Reply::new(StatusCode::FOUND, TEXT_GO, Bytes::new())
            .with(header::LOCATION, &format!("/relative-redirect/{}", n - 1)),
    }
}

async fn go_delay(st: &St, r: &Req, raw: &str) -> Reply {
    let nanos = match parse_delay(raw) {
        Ok(n) => n,
        Err(e) => return go_error(400, Some(format!("invalid duration: {e}"))),
    };
    let max = st.max_delay.as_nanos() as i128;
    if nanos > max {
        return go_error(
            400,
            Some(format!(
                "invalid duration: duration {} longer than {}",
                go_duration_string(nanos),
                go_duration_string(max)
            )),
        );
    }
    if nanos < 0 {
        return go_error(
            400,
            Some(format!("invalid duration: duration {} shorter than 0s", go_duration_string(nanos))),
        );
    }
    let delay = Duration::from_nanos(nanos as u64);
    tokio::time::sleep(delay).await;
    go_body_reply(r).with(
        HeaderName::from_static("server-timing"),
        &format!("initial_delay;dur={:.2};desc=\"initial delay\"", delay.as_secs_f64() * 1e3),
    )
}

/// go-httpbin's duration input: a Go duration (`1.5s`, `300ms`), else float seconds truncated
/// to milliseconds. Errors carry Go's message for the float parse.
fn parse_delay(input: &str) -> Result<i128, String> {
    if let Some(n) = go_parse_duration(input) {
        return Ok(n);
    }
    match input.parse::<f64>() {
        Ok(f) => Ok((f * 1000.0) as i64 as i128 * 1_000_000),
        Err(_) => Err(format!("strconv.ParseFloat: parsing {input:?}: invalid syntax")),
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
fn go_parse_duration(input: &str) -> Option<i128> {
    let (neg, mut s) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
            if int_len == 0 && frac_len == 0 {
                return None;
            }
        } else if int_len == 0 {
            return None;
        }
        let unit_len = s.bytes().take_while(|b| *b != b'.' && !b.is_ascii_digit()).count();
        if unit_len == 0 {
            return None;
        }
        let unit: f64 = match &s[..unit_len] {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        s = &s[unit_len..];
        let value: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .ok()?;
        total += value * unit;
    }
    if total > 9.3e18 {
        // Go rejects anything beyond int64 nanoseconds as invalid.
        return None;
    }
    let n = total.round() as i128;
    Some(if neg { -n } else { n })
}

/// Go's `time.Duration.String`.
fn go_duration_string(nanos: i128) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let frac = |v: u128, unit: u128, width: usize| -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            whole.to_string()
        } else {
            let digits = format!("{rest:0width$}");
            format!("{whole}.{}", digits.trim_end_matches('0'))
        }
    };
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}\u{b5}s", frac(u, 1_000, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 1_000_000, 6))
    } else {
        let hours = u / 3_600_000_000_000;
        let rem = u % 3_600_000_000_000;
        let minutes = rem / 60_000_000_000;
        let secs = format!("{}s", frac(rem % 60_000_000_000, 1_000_000_000, 9));
        if hours > 0 {
            format!("{hours}h{minutes}m{secs}")
        } else if minutes > 0 {
            format!("{minutes}m{secs}")
        } else {
            secs
        }
    };
    format!("{sign}{body}")
}

// ---------------------------------------------------------------------------------------------
// kennethreitz/httpbin

fn kr_json(v: Json) -> Reply {
    Reply::new(StatusCode::OK, "application/json", format!("{}\n", v.sorted().render(&FLASK_PRETTY)))
}

fn werkzeug_page(code: u16, title: &str, text: &str) -> Reply {
    Reply::new(
        status(code),
        HTML_UTF8,
        format!(
            "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<title>{code} {title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n"
        ),
    )
}

fn kr_not_found() -> Reply {
    werkzeug_page(
        404,
        "Not Found",
        "The requested URL was not found on the server.  If you entered the URL manually please check your spelling and try again.",
    )
}

fn kr_server_error() -> Reply {
    werkzeug_page(
        500,
        "Internal Server Error",
        "The server encountered an internal error and was unable to complete your request.  Either the server is overloaded or there is an error in the application.",
    )
}

/// Headers the original hides unless `?show_env` is given (they reveal the hosting setup).
const KR_ENV_HEADERS: &[&str] = &[
    "X-Varnish",
    "X-Request-Start",
    "X-Heroku-Queue-Depth",
    "X-Real-Ip",
    "X-Forwarded-Proto",
    "X-Forwarded-Protocol",
    "X-Forwarded-Ssl",
    "X-Heroku-Queue-Wait-Time",
    "X-Forwarded-For",
    "X-Heroku-Dynos-In-Use",
    "X-Forwarded-Port",
    "X-Request-Id",
    "Via",
    "Total-Route-Time",
    "Connect-Time",
];

/// Python `str.title()` on a header name, as werkzeug presents WSGI headers.
fn kr_title(name: &str) -> String {
    let mut prev_cased = false;
    name.chars()
        .map(|c| {
            let out = if c.is_alphabetic() {
                if prev_cased {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            } else {
                c
            };
            prev_cased = c.is_alphabetic();
            out
        })
        .collect()
}

fn kr_headers(r: &Req) -> Json {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &r.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(kr_title(name.as_str()))
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    map.insert("Host".to_string(), r.host());
    let show_env = r.args().iter().any(|(k, _)| k == "show_env");
    if !show_env {
        for h in KR_ENV_HEADERS {
            map.remove(*h);
        }
    }
    Json::Obj(map.into_iter().map(|(k, v)| (k, Json::Str(v))).collect())
}

/// The request fields `get_dict` can return, by name.
fn kr_dict(r: &Req, keys: &[&str]) -> Json {
    let is_form = matches!(r.content_type().as_str(), "application/x-www-form-urlencoded" | "multipart/form-data");
    // Werkzeug consumes form bodies, so `data` is empty for them.
    let data = if is_form { String::new() } else { r.body_text() };
    let mut fields = Vec::new();
    for key in keys {
        let v = match *key {
            "url" => Json::str(r.url()),
            "args" => semiflat_json(r.args()),
            "form" if is_form => semiflat_json(parse_query(&r.body_text())),
            "form" | "files" => Json::Obj(Vec::new()),
            "data" => Json::str(data.clone()),
            "origin" => Json::str(r.kr_origin()),
            "headers" => kr_headers(r),
            "method" => Json::str(r.method.as_str()),
            "json" => Json::parse(&data).unwrap_or(Json::Null),
            _ => continue,
        };
        fields.push((*key, v));
    }
    Json::obj(fields)
}

const KR_BODY_KEYS: &[&str] = &["url", "args", "form", "data", "origin", "headers", "files", "json"];

async fn kr_route(_st: &St, r: &Req) -> Reply {
    let path = r.path();
    let m = &r.method;
    let get_or_head = *m == Method::GET || *m == Method::HEAD;
    match path {
        "/" if get_or_head => Reply::new(StatusCode::OK, HTML_UTF8, INDEX_HTML),
        "/headers" if get_or_head => kr_json(Json::obj(vec![("headers", kr_headers(r))])),
        "/ip" if get_or_head => kr_json(Json::obj(vec![("origin", Json::str(r.kr_origin()))])),
        "/user-agent" if get_or_head => kr_json(Json::obj(vec![("user-agent", Json::str(r.user_agent()))])),
        "/uuid" if get_or_head => kr_json(Json::obj(vec![("uuid", Json::str(uuid4()))])),
        "/html" if get_or_head => Reply::new(StatusCode::OK, HTML_UTF8, MOBY_HTML),
        "/json" if get_or_head => kr_json(sample_json()),
        "/get" if get_or_head => kr_json(kr_dict(r, &["url", "args", "headers", "origin"])),
        "/post" if *m == Method::POST => kr_json(kr_dict(r, KR_BODY_KEYS)),
        "/put" if *m == Method::PUT => kr_json(kr_dict(r, KR_BODY_KEYS)),
        "/patch" if *m == Method::PATCH => kr_json(kr_dict(r, KR_BODY_KEYS)),
        "/delete" if *m == Method::DELETE => kr_json(kr_dict(r, KR_BODY_KEYS)),
        "/" | "/headers" | "/ip" | "/user-agent" | "/uuid" | "/html" | "/json" | "/get" | "/post" | "/put"
        | "/patch" | "/delete" => {
            werkzeug_page(405, "Method Not Allowed", "The method is not allowed for the requested URL.")
        }
        p if p == "/anything" || p.starts_with("/anything/") => {
            kr_json(kr_dict(r, &["url", "args", "headers", "origin", "method", "form", "data", "files", "json"]))
        }
        p => {
            if let Some(codes) = segment(p, "/status/") {
                kr_status(&codes)
            } else if let Some(d) = segment(p, "/delay/") {
                match d.trim().parse::<f64>() {
                    Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                        tokio::time::sleep(Duration::from_secs_f64(secs.min(10.0))).await;
                        kr_json(kr_dict(r, &["url", "args", "form", "data", "origin", "headers", "files"]))
                    }
                    _ => kr_server_error(),
                }
            } else {
                kr_not_found()
            }
        }
    }
}

fn kr_status(raw: &str) -> Reply {
    let invalid = || Reply::new(StatusCode::BAD_REQUEST, HTML_UTF8, Bytes::from_static(b"Invalid status code"));
    let code = if !raw.contains(',') {
        match raw.trim().parse::<i64>() {
            Ok(c) => c,
            Err(_) => return invalid(),
        }
    } else {
        let Ok(choices) = parse_weighted(raw) else {
            return invalid();
        };
        match weighted_choice(&choices) {
            Some(c) => c,
            None => return kr_server_error(),
        }
    };
    status_reply(code, HTML_UTF8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(go_parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_parse_duration("300ms"), Some(300_000_000));
        assert_eq!(go_parse_duration("-2us"), Some(-2_000));
        assert_eq!(go_parse_duration("0"), Some(0));
        assert_eq!(go_parse_duration("1"), None);
        assert_eq!(go_parse_duration("1x"), None);
        assert_eq!(go_parse_duration(""), None);
        assert_eq!(parse_delay("0.25"), Ok(250_000_000));
        assert_eq!(parse_delay("abc"), Err("strconv.ParseFloat: parsing \"abc\": invalid syntax".to_string()));
        assert_eq!(go_duration_string(11_000_000_000), "11s");
        assert_eq!(go_duration_string(10_500_000_000), "10.5s");
        assert_eq!(go_duration_string(90_000_000_000), "1m30s");
        assert_eq!(go_duration_string(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration_string(1_500_000), "1.5ms");
        assert_eq!(go_duration_string(-1_000_000_000), "-1s");
    }

    #[test]
    fn header_names() {
        assert_eq!(go_canonical("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(go_canonical("user-agent"), "User-Agent");
        assert_eq!(kr_title("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(kr_title("x-b3x"), "X-B3X");
    }

    #[test]
    fn slog_quoting() {
        assert_eq!(slog_value("curl/8.5.0"), "curl/8.5.0");
        assert_eq!(slog_value(""), "\"\"");
        assert_eq!(slog_value("200 GET /x 0.1ms"), "\"200 GET /x 0.1ms\"");
        assert_eq!(slog_value("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn weighted_status_lists() {
        assert_eq!(parse_weighted("200:0.9,503:0.1"), Ok(vec![(200, 0.9), (503, 0.1)]));
        assert_eq!(parse_weighted("200,abc"), Err("invalid choice value: \"abc\"".to_string()));
        assert_eq!(parse_weighted("200:x"), Err("invalid weight value: \"x\"".to_string()));
        for _ in 0..20 {
            assert_eq!(weighted_choice(&[(200, 1.0), (503, 0.0)]), Some(200));
        }
    }

    #[test]
    fn uuid_shape() {
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
