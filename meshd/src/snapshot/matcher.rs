//! Request matching for HTTP routes: a pure function of the request and the
//! compiled match, tested without sockets.

use std::collections::BTreeMap;

use http::{HeaderMap, Method};
use regex::Regex;

/// A compiled Istio `StringMatch`.
#[derive(Debug, Clone)]
pub enum StrMatch {
    /// Any value, as long as it is present (`{}` in YAML).
    Present,
    /// The whole value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The path is this or goes on below it (`/static`: `/static`, `/static/a`, not
    /// `/staticfoo`): a Gateway API `PathPrefix`, Envoy's `path_separated_prefix`.
    SegmentPrefix(String),
    /// The whole value matches this RE2-style expression (anchored at compile time).
    Regex(Regex),
}

impl StrMatch {
    /// Whether `value` satisfies the match; `ignore_case` applies to exact and prefix only.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StrMatch::Present => true,
            StrMatch::Exact(s) if ignore_case => s.eq_ignore_ascii_case(value),
            StrMatch::Exact(s) => s == value,
            StrMatch::Prefix(p) if ignore_case => {
                value.len() >= p.len() && value.is_char_boundary(p.len()) && value[..p.len()].eq_ignore_ascii_case(p)
            }
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            // `/` is every path; a longer prefix ends at a segment's end.
            StrMatch::SegmentPrefix(p) => value
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.ends_with('/')),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }

    /// Compiles a regex with Envoy's full-match semantics.
    pub fn regex(pattern: &str) -> Result<StrMatch, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(StrMatch::Regex)
    }
}

/// One compiled `HTTPMatchRequest`: every present condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    /// The match's `name`, logged with the route name.
    pub name: Option<String>,
    /// Path (without query).
    pub uri: Option<StrMatch>,
    /// `ignoreUriCase`.
    pub ignore_uri_case: bool,
    /// `http` or `https`.
    pub scheme: Option<StrMatch>,
    /// Request method.
    pub method: Option<StrMatch>,
    /// The `:authority` / Host value as sent.
    pub authority: Option<StrMatch>,
    /// Lower-case header name to condition.
    pub headers: Vec<(String, StrMatch)>,
    /// Headers that must not match.
    pub without_headers: Vec<(String, StrMatch)>,
    /// Query parameters.
    pub query_params: Vec<(String, StrMatch)>,
    /// The port the request was sent to.
    pub port: Option<u16>,
    /// Labels the calling workload must carry.
    pub source_labels: BTreeMap<String, String>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
    /// Gateways (`ns/name` or `mesh`) this match is limited to; empty means the VS's own.
    pub gateways: Vec<String>,
}

/// What the matcher sees of a request.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Path without the query string.
    pub path: &'a str,
    /// Query string without `?`, if any.
    pub query: Option<&'a str>,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Authority as sent (may include the port).
    pub authority: &'a str,
    /// Destination port.
    pub port: u16,
    /// Request headers.
    pub headers: &'a dyn Headers,
}

/// Request headers as the matchers read them: the first value of a name, as text (`None` for
/// a value that is not visible ASCII, as `http` reads one).
pub trait Headers: std::fmt::Debug + Sync {
    /// The first value of `name`, which may be spelled in any case.
    fn first(&self, name: &str) -> Option<&str>;
}

impl Headers for HeaderMap {
    fn first(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Who sends the request: the calling workload, or a gateway.
#[derive(Debug)]
pub struct SourceView<'a> {
    /// Labels of the calling workload (or the gateway's labels).
    pub labels: &'a BTreeMap<String, String>,
    /// Namespace of the caller.
    pub namespace: &'a str,
    /// `mesh` for sidecars, `ns/name` of the Gateway at the ingress.
    pub gateway: &'a str,
}

/// The first condition of a match that a request fails (no allocation: it borrows the match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch<'m> {
    /// The match is limited to other gateways.
    Gateway,
    /// Another port.
    Port(u16),
    /// The path.
    Uri,
    /// The scheme.
    Scheme,
    /// The method.
    Method,
    /// The authority.
    Authority,
    /// A header is missing or has another value.
    Header(&'m str),
    /// A header that must not match does.
    WithoutHeader(&'m str),
    /// A query parameter.
    Query(&'m str),
    /// The caller's labels.
    SourceLabels,
    /// The caller's namespace.
    SourceNamespace,
}

impl RequestMatch {
    /// Whether the request satisfies every condition of this match.
    pub fn matches(&self, req: &RequestView<'_>, src: &SourceView<'_>) -> bool {
        self.mismatch(req, src).is_none()
    }

    /// The first condition the request fails, in Envoy's evaluation order; None when it matches.
    pub fn mismatch(&self, req: &RequestView<'_>, src: &SourceView<'_>) -> Option<Mismatch<'_>> {
        if !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == src.gateway) {
            return Some(Mismatch::Gateway);
        }
        if let Some(p) = self.port {
            if p != req.port {
                return Some(Mismatch::Port(p));
            }
        }
        if self.uri.as_ref().is_some_and(|m| !m.matches(req.path, self.ignore_uri_case)) {
            return Some(Mismatch::Uri);
        }
        if self.scheme.as_ref().is_some_and(|m| !m.matches(req.scheme, false)) {
            return Some(Mismatch::Scheme);
        }
        if self.method.as_ref().is_some_and(|m| !m.matches(req.method.as_str(), false)) {
            return Some(Mismatch::Method);
        }
        if self.authority.as_ref().is_some_and(|m| !m.matches(req.authority, false)) {
            return Some(Mismatch::Authority);
        }
        for (name, m) in &self.headers {
            match req.headers.first(name) {
                Some(v) if m.matches(v, false) => {}
                _ => return Some(Mismatch::Header(name)),
            }
        }
        for (name, m) in &self.without_headers {
            if req.headers.first(name).is_some_and(|v| m.matches(v, false)) {
                return Some(Mismatch::WithoutHeader(name));
            }
        }
        for (name, m) in &self.query_params {
            match query_value(req.query, name) {
                Some(v) if query_matches(m, v) => {}
                _ => return Some(Mismatch::Query(name)),
            }
        }
        if !super::selects(&self.source_labels, src.labels) {
            return Some(Mismatch::SourceLabels);
        }
        if self.source_namespace.as_ref().is_some_and(|ns| ns != src.namespace) {
            return Some(Mismatch::SourceNamespace);
        }
        None
    }

    /// The prefix this match tested the path with, for `rewrite.uri`.
    /// What the uri condition says of the path, for rewrites.
    pub fn uri_cond(&self) -> UriCond<'_> {
        match &self.uri {
            Some(StrMatch::Prefix(p) | StrMatch::SegmentPrefix(p)) => UriCond::Prefix(p),
            None => UriCond::Absent,
            Some(_) => UriCond::Whole,
        }
    }
}

impl std::fmt::Display for StrMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrMatch::Present => write!(f, "present"),
            StrMatch::Exact(s) => write!(f, "exact {s:?}"),
            StrMatch::Prefix(s) => write!(f, "prefix {s:?}"),
            StrMatch::SegmentPrefix(s) => write!(f, "path prefix {s:?}"),
            // Shown as written: the anchors were added at compile time.
            StrMatch::Regex(r) => {
                let p = r.as_str();
                let inner = p.strip_prefix("^(?:").and_then(|p| p.strip_suffix(")$")).unwrap_or(p);
                write!(f, "regex {inner:?}")
            }
        }
    }
}

impl std::fmt::Display for RequestMatch {
    /// `uri prefix "/productpage", headers end-user exact "jason"`; `any request` when empty.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(m) = &self.uri {
            parts.push(format!("uri {m}{}", if self.ignore_uri_case { " (ignoring case)" } else { "" }));
        }
        for (label, m) in [("scheme", &self.scheme), ("method", &self.method), ("authority", &self.authority)] {
            if let Some(m) = m {
                parts.push(format!("{label} {m}"));
            }
        }
        parts.extend(self.headers.iter().map(|(n, m)| format!("headers {n} {m}")));
        parts.extend(self.without_headers.iter().map(|(n, m)| format!("withoutHeaders {n} {m}")));
        parts.extend(self.query_params.iter().map(|(n, m)| format!("queryParams {n} {m}")));
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if !self.source_labels.is_empty() {
            let l: Vec<String> = self.source_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("sourceLabels {}", l.join(",")));
        }
        if let Some(ns) = &self.source_namespace {
            parts.push(format!("sourceNamespace {ns}"));
        }
        if !self.gateways.is_empty() {
            parts.push(format!("gateways {}", self.gateways.join(",")));
        }
        if parts.is_empty() {
            return write!(f, "any request");
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// Envoy's query-parameter match: Istio hands `exact: ""` on as an exact match of the empty
/// string, which `?key` and `?key=` meet and `?key=value` does not.
fn query_matches(m: &StrMatch, v: &str) -> bool {
    m.matches(v, false)
}

/// Finds the first value of `key` in a raw query string, without decoding
/// anything but `+` and `%XX` when needed.
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

/// A match's uri condition as a rewrite sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriCond<'s> {
    /// No uri condition: Istio's merge gives a delegate's route its parent's, and a route
    /// without any the prefix `/`.
    Absent,
    /// A prefix, which `rewrite.uri` replaces.
    Prefix(&'s str),
    /// An exact or regex match: the whole path is replaced.
    Whole,
}

/// Host patterns in Istio's form: `*`, `*.suffix` or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// `*.example.com`: hosts ending in `.example.com` (the stored suffix keeps the dot).
    Suffix(String),
    /// An exact, lower-case name.
    Exact(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => write!(f, "*"),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Exact(s) => write!(f, "{s}"),
        }
    }
}

impl HostPattern {
    /// Parses a host as written in YAML.
    pub fn parse(host: &str) -> HostPattern {
        let host = host.to_ascii_lowercase();
        if host == "*" {
            HostPattern::Any
        } else if let Some(rest) = host.strip_prefix('*') {
            HostPattern::Suffix(rest.to_string())
        } else {
            HostPattern::Exact(host)
        }
    }

    /// Whether `host` (lower-case, no port) is covered by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Exact(e) => e == host,
        }
    }

    /// Whether two patterns can select a common host (used to bind a VS host to a Gateway server).
    pub fn intersects(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) | (_, HostPattern::Any) => true,
            (HostPattern::Exact(a), p) | (p, HostPattern::Exact(a)) => p.matches(a),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => a.ends_with(b.as_str()) || b.ends_with(a.as_str()),
        }
    }

    /// Sort key: exact names first, then longer suffixes, then `*`.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(e) => (0, usize::MAX - e.len()),
            HostPattern::Suffix(s) => (1, usize::MAX - s.len()),
            HostPattern::Any => (2, 0),
        }
    }
}

/// Splits `host[:port]` (or `[v6]:port`) into the lower-case host and the port.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// The value of the cookie `name` in a `cookie` header's text (`a=1; b=2`).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a HeaderMap, path: &'a str, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            path,
            query,
            scheme: "http",
            authority: "reviews:9080",
            port: 9080,
            headers,
        }
    }

    fn mesh_src(labels: &BTreeMap<String, String>) -> SourceView<'_> {
        SourceView { labels, namespace: "default", gateway: "mesh" }
    }

    #[test]
    fn header_exact_and_presence() {
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        let labels = BTreeMap::new();
        let m =
            RequestMatch { headers: vec![("end-user".into(), StrMatch::Exact("jason".into()))], ..Default::default() };
        assert!(m.matches(&view(&h, "/", None), &mesh_src(&labels)));
        let other =
            RequestMatch { headers: vec![("end-user".into(), StrMatch::Exact("bob".into()))], ..Default::default() };
        assert!(!other.matches(&view(&h, "/", None), &mesh_src(&labels)));
        let present = RequestMatch { headers: vec![("end-user".into(), StrMatch::Present)], ..Default::default() };
        assert!(present.matches(&view(&h, "/", None), &mesh_src(&labels)));
        assert!(!present.matches(&view(&HeaderMap::new(), "/", None), &mesh_src(&labels)));
        let without =
            RequestMatch { without_headers: vec![("end-user".into(), StrMatch::Present)], ..Default::default() };
        assert!(!without.matches(&view(&h, "/", None), &mesh_src(&labels)));
        assert!(without.matches(&view(&HeaderMap::new(), "/", None), &mesh_src(&labels)));
    }

    #[test]
    fn a_gateway_api_path_prefix_matches_whole_segments() {
        let h = HeaderMap::new();
        let labels = BTreeMap::new();
        let segments = RequestMatch { uri: Some(StrMatch::SegmentPrefix("/static".into())), ..Default::default() };
        for (path, hit) in
            [("/static", true), ("/static/", true), ("/static/a.css", true), ("/staticfoo", false), ("/stat", false)]
        {
            assert_eq!(segments.matches(&view(&h, path, None), &mesh_src(&labels)), hit, "{path}");
        }
        let root = RequestMatch { uri: Some(StrMatch::SegmentPrefix("/".into())), ..Default::default() };
        assert!(root.matches(&view(&h, "/anything", None), &mesh_src(&labels)));
        assert_eq!(segments.uri_cond(), UriCond::Prefix("/static"), "a rewrite replaces it as a prefix");
    }

    #[test]
    fn uri_kinds_and_case() {
        let h = HeaderMap::new();
        let labels = BTreeMap::new();
        let prefix = RequestMatch { uri: Some(StrMatch::Prefix("/static".into())), ..Default::default() };
        assert!(prefix.matches(&view(&h, "/static/img.png", None), &mesh_src(&labels)));
        assert!(!prefix.matches(&view(&h, "/STATIC/img.png", None), &mesh_src(&labels)));
        let icase = RequestMatch { ignore_uri_case: true, ..prefix };
        assert!(icase.matches(&view(&h, "/STATIC/img.png", None), &mesh_src(&labels)));
        let re = RequestMatch { uri: Some(StrMatch::regex("/api/v[0-9]+").unwrap()), ..Default::default() };
        assert!(re.matches(&view(&h, "/api/v1", None), &mesh_src(&labels)));
        assert!(!re.matches(&view(&h, "/api/v1/x", None), &mesh_src(&labels)), "regex is a full match");
    }

    #[test]
    fn query_and_source() {
        let h = HeaderMap::new();
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "productpage".to_string());
        let m = RequestMatch {
            query_params: vec![
                ("u".into(), StrMatch::Exact("test".into())),
                ("flag".into(), StrMatch::Exact(String::new())),
            ],
            source_labels: labels.clone(),
            ..Default::default()
        };
        assert!(m.matches(&view(&h, "/", Some("u=test&flag")), &mesh_src(&labels)));
        assert!(m.matches(&view(&h, "/", Some("u=test&flag=")), &mesh_src(&labels)));
        assert!(!m.matches(&view(&h, "/", Some("u=test&flag=abc")), &mesh_src(&labels)), "exact \"\" is not presence");
        assert!(!m.matches(&view(&h, "/", Some("u=normal&flag")), &mesh_src(&labels)));
        assert!(!m.matches(&view(&h, "/", Some("u=test&flag")), &mesh_src(&BTreeMap::new())));
    }

    #[test]
    fn gateways_and_port() {
        let h = HeaderMap::new();
        let labels = BTreeMap::new();
        let m = RequestMatch { gateways: vec!["default/gw".into()], port: Some(9080), ..Default::default() };
        assert!(!m.matches(&view(&h, "/", None), &mesh_src(&labels)));
        let gw = SourceView { labels: &labels, namespace: "istio-system", gateway: "default/gw" };
        assert!(m.matches(&view(&h, "/", None), &gw));
    }

    #[test]
    fn host_patterns() {
        assert!(HostPattern::parse("*.example.com").matches("dev.example.com"));
        assert!(!HostPattern::parse("*.example.com").matches("example.com"));
        assert!(HostPattern::parse("*").matches("anything"));
        assert!(HostPattern::parse("Httpbin.Example.com").matches("httpbin.example.com"));
        assert!(HostPattern::parse("*.example.com").intersects(&HostPattern::parse("a.example.com")));
        assert!(!HostPattern::parse("a.example.com").intersects(&HostPattern::parse("b.example.com")));
        assert_eq!(split_authority("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_authority("example.com"), ("example.com", None));
    }
}
