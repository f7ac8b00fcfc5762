//! Compiled HTTP routes and the routing decision: given a request and its
//! source, which rule applies and what to do. Pure: no I/O, no clocks.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use super::matcher::{split_authority, HostPattern, RequestMatch, RequestView, SourceView, UriCond};
use super::Cluster;

/// Header edits: `set`, `add`, `remove`, as Istio's `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Overwrite these.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits in Envoy's order: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Request and response header edits.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// Edits on the request toward the upstream.
    pub request: HeaderOps,
    /// Edits on the response toward the caller.
    pub response: HeaderOps,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path for other matches).
    pub uri: Option<String>,
    /// A prefix is replaced as a Gateway API `ReplacePrefixMatch` replaces it: `/` in place of
    /// `/a` makes `/a/b` into `/b`, not Envoy's `//b`.
    pub whole_segments: bool,
    /// Replaces the authority.
    pub authority: Option<String>,
    /// `uriRegexRewrite`: pattern and replacement (`\1` groups already converted to `${1}`).
    pub uri_regex: Option<(Regex, String)>,
}

impl Rewrite {
    /// The new path-and-query for `path`, given the prefix the route matched on.
    pub fn path(&self, path: &str, query: Option<&str>, matched_prefix: Option<&str>) -> Option<String> {
        let new_path = if let Some(uri) = &self.uri {
            // The match may have ignored case, so the prefix is cut by length.
            let rest = matched_prefix.and_then(|p| {
                (path.len() >= p.len() && path.is_char_boundary(p.len()) && path[..p.len()].eq_ignore_ascii_case(p))
                    .then(|| &path[p.len()..])
            });
            match rest {
                Some(rest) => replace_prefix(uri, rest, self.whole_segments),
                None => uri.clone(),
            }
        } else if let Some((re, rep)) = &self.uri_regex {
            re.replace_all(path, rep.as_str()).into_owned()
        } else {
            return None;
        };
        Some(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }
}

/// `replacement` in place of a matched prefix, before the `rest` of the path. By whole
/// segments (a Gateway API `ReplacePrefixMatch`) one slash joins them, as Istio's
/// `^<prefix>/*` rewrite leaves one; Envoy's prefix rewrite keeps them all (`//b` for `/`).
fn replace_prefix(replacement: &str, rest: &str, whole_segments: bool) -> String {
    match (whole_segments, rest.trim_start_matches('/')) {
        (true, tail) if tail.len() < rest.len() => format!("{}/{tail}", replacement.trim_end_matches('/')),
        _ => format!("{replacement}{rest}"),
    }
}

/// Where a redirect's port comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectPort {
    /// A fixed port.
    Number(u16),
    /// The default port of the scheme (no port in `location`).
    FromProtocolDefault,
    /// The port the request was sent to.
    FromRequestPort,
}

/// `HTTPRedirect`.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Replaces the whole path.
    pub uri: Option<String>,
    /// Replaces the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// The prefix is replaced by whole segments (a Gateway API `ReplacePrefixMatch`), as in
    /// [`Rewrite::whole_segments`].
    pub whole_segments: bool,
    /// Replaces the host.
    pub authority: Option<String>,
    /// Port handling.
    pub port: Option<RedirectPort>,
    /// Replaces the scheme.
    pub scheme: Option<String>,
    /// Status (301 by default).
    pub code: u16,
}

/// A destination with its share of traffic.
#[derive(Debug, Clone)]
pub struct WeightedTarget {
    /// Relative weight.
    pub weight: u32,
    /// Where it goes.
    pub target: Target,
    /// Destination-level header edits.
    pub headers: Headers,
}

/// A resolved destination.
#[derive(Debug, Clone)]
pub enum Target {
    /// The cluster per Service port; the request's port picks one (or the first).
    Clusters(Vec<(u16, Arc<Cluster>)>),
    /// The route names a host or subset that does not exist: 503 NC.
    Missing(String),
}

impl Target {
    /// The cluster a request to `port` goes to: the one for that port, else the first.
    pub fn cluster_for(&self, port: u16) -> Option<&Arc<Cluster>> {
        match self {
            Target::Clusters(by_port) => {
                by_port.iter().find(|(p, _)| *p == port).or_else(|| by_port.first()).map(|(_, c)| c)
            }
            Target::Missing(_) => None,
        }
    }
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Proxy to one of these destinations, chosen by weight.
    Forward {
        /// Destinations.
        targets: Vec<WeightedTarget>,
        /// Sum of weights.
        total: u32,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct {
        /// Status code.
        status: u16,
        /// Body (may be empty).
        body: Bytes,
    },
}

/// A mirror destination and the share of requests copied to it.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Where copies go.
    pub target: Target,
    /// Percent of requests mirrored.
    pub percentage: f64,
}

/// Policies of a route besides its destination.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Route timeout (off when None).
    pub timeout: Option<std::time::Duration>,
    /// Retries (Istio's default policy unless set).
    pub retry: super::policy::RetryPolicy,
    /// Fault injection.
    pub fault: Option<super::policy::Fault>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// `corsPolicy`, as Envoy's CORS filter applies it on the route.
    pub cors: Option<Arc<Cors>>,
}

/// A route's `corsPolicy` in the form Istio hands Envoy's CORS filter: the header values made
/// once, joined with commas.
#[derive(Debug)]
pub struct Cors {
    /// `allowOrigins` (and the deprecated exact `allowOrigin`).
    pub origins: Vec<super::matcher::StrMatch>,
    /// `access-control-allow-methods` on a preflight's answer.
    pub methods: Option<HeaderValue>,
    /// `access-control-allow-headers` on a preflight's answer.
    pub headers: Option<HeaderValue>,
    /// `access-control-expose-headers` on an allowed request's response.
    pub expose: Option<HeaderValue>,
    /// `access-control-max-age` (seconds) on a preflight's answer.
    pub max_age: Option<HeaderValue>,
    /// `access-control-allow-credentials: true`.
    pub credentials: bool,
    /// `unmatchedPreflights: FORWARD` (the default): a preflight from an origin not allowed goes on.
    pub forward_unmatched: bool,
}

impl Cors {
    /// Envoy's `isOriginAllowed`: a pattern that matches `*` allows every origin.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches("*", false) || m.matches(origin, false))
    }

    /// Marks a response for an allowed `origin`, preflight's or not: the origin echoed, and the
    /// credentials flag when the policy sets it.
    pub fn allow(&self, headers: &mut HeaderMap, origin: HeaderValue) {
        headers.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            headers.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// One compiled `HTTPRoute`, possibly flattened out of a delegate VirtualService.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Route name (`name:` in YAML), for logs and explain.
    pub name: Option<Arc<str>>,
    /// The VirtualService it came from, `ns/name`.
    pub virtual_service: String,
    /// Conditions of a delegating parent route (all must hold).
    pub parent_matches: Vec<Arc<[RequestMatch]>>,
    /// Own conditions (any may hold; empty = always).
    pub matches: Vec<RequestMatch>,
    /// What to do.
    pub action: RouteAction,
    /// Path and authority rewrite.
    pub rewrite: Option<Rewrite>,
    /// Route-level header edits.
    pub headers: Headers,
    /// Timeout, retries, fault, mirrors.
    pub policy: RoutePolicy,
    /// What a request gets when its target does not exist (`NoCluster`, or for a route made of
    /// a Gateway API route `NoClusterInternal`).
    pub missing: LocalReply,
}

impl HttpRoute {
    /// The route's header edits and `target`'s, in the order Envoy applies them. Istio makes a
    /// route of more than one destination (weight 0 included) a weighted-cluster list, whose
    /// destination-level edits Envoy applies first and the route's last, so the route's `set`
    /// wins; with one destination Istio appends the destination's edits after the route's.
    pub fn header_edits<'r>(&'r self, target: &'r WeightedTarget) -> [&'r Headers; 2] {
        if matches!(&self.action, RouteAction::Forward { targets, .. } if targets.len() > 1) {
            [&target.headers, &self.headers]
        } else {
            [&self.headers, &target.headers]
        }
    }
}

/// A match result: the route and the prefix its uri condition used.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'s> {
    /// The route.
    pub route: &'s HttpRoute,
    /// Prefix the matched condition used, for `rewrite.uri`.
    pub prefix: Option<&'s str>,
}

fn first_match<'s>(matches: &'s [RequestMatch], req: &RequestView<'_>, src: &SourceView<'_>) -> Option<UriCond<'s>> {
    if matches.is_empty() {
        return Some(UriCond::Absent);
    }
    matches.iter().find(|m| m.matches(req, src)).map(|m| m.uri_cond())
}

impl HttpRoute {
    /// Whether the route applies, and with which prefix.
    pub fn matches<'s>(&'s self, req: &RequestView<'_>, src: &SourceView<'_>) -> Option<Matched<'s>> {
        // Istio merges a delegate's match with its parents': the innermost uri condition wins.
        let mut cond = UriCond::Absent;
        for matches in self.parent_matches.iter().map(|p| &p[..]).chain([&self.matches[..]]) {
            let c = first_match(matches, req, src)?;
            if c != UriCond::Absent {
                cond = c;
            }
        }
        let prefix = match cond {
            // Istio gives a route without any uri condition the prefix `/`, which a rewrite replaces.
            UriCond::Absent => Some("/"),
            UriCond::Prefix(p) => Some(p),
            UriCond::Whole => None,
        };
        Some(Matched { route: self, prefix })
    }
}

/// First matching route wins.
pub fn select_route<'s>(routes: &'s [HttpRoute], req: &RequestView<'_>, src: &SourceView<'_>) -> Option<Matched<'s>> {
    routes.iter().find_map(|r| r.matches(req, src))
}

/// A set of routes for one host.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// The host it serves (FQDN or a VirtualService host), for logs.
    pub name: String,
    /// Ordered routes.
    pub routes: Arc<[HttpRoute]>,
}

/// The sidecar routing table for callers in one namespace.
#[derive(Debug, Default)]
pub struct MeshTable {
    /// Every alias a caller may use (`reviews`, `reviews.default`, FQDN, ...) without a port.
    pub hosts: HashMap<String, Arc<VirtualHost>>,
    /// Wildcard VirtualService hosts, most specific first.
    pub wildcards: Vec<(HostPattern, Arc<VirtualHost>)>,
    /// Every alias to the service's own default route, ignoring VirtualServices: what a
    /// pod without a sidecar reaches through kube-proxy.
    pub plain: HashMap<String, Arc<VirtualHost>>,
}

impl MeshTable {
    /// The virtual host for a request's host (lower-case, without port).
    pub fn lookup(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.hosts.get(host).or_else(|| self.wildcards.iter().find(|(p, _)| p.matches(host)).map(|(_, v)| v))
    }
}

/// The ingress gateway's HTTP routing table.
#[derive(Debug, Default)]
pub struct GatewayTable {
    /// Virtual hosts, most specific pattern first.
    pub vhosts: Vec<(HostPattern, Arc<VirtualHost>)>,
    /// Gateway servers bound to this listener, `ns/name` with their hosts, for status.
    pub servers: Vec<String>,
    /// Hosts of HTTP servers with `tls.httpsRedirect`: answered with a 301 to https.
    pub https_redirect: Vec<HostPattern>,
}

impl GatewayTable {
    /// The virtual host for a request's host (lower-case, without port).
    pub fn lookup(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.vhosts.iter().find(|(p, _)| p.matches(host)).map(|(_, v)| v)
    }
}

/// Why the proxy answers itself instead of forwarding, with Envoy's observables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    /// No virtual host or route: 404, flag NR.
    NoRoute,
    /// The route's cluster does not exist: 503, flag NC.
    NoCluster,
    /// The same on a route made of a Gateway API route: 500, as Istio sets Envoy's
    /// `cluster_not_found_response_code` for those (the Gateway API's answer to a missing backend).
    NoClusterInternal,
    /// The cluster has no endpoint: 503 `no healthy upstream`, flag UH.
    NoHealthyUpstream,
    /// Connecting to the upstream failed: 503, flag UF.
    ConnectFailure,
    /// The TLS handshake got a reply that is not TLS (mTLS to a pod without a sidecar): 503 UF.
    TlsWrongVersion,
    /// The TLS handshake refused the peer's certificate or identity: 503 UF.
    TlsVerifyFailed,
    /// The upstream reset the connection before answering: 503, flag UC.
    UpstreamReset,
    /// The request could not be understood: 400.
    BadRequest,
    /// A circuit breaker refused the request: 503 UO with `x-envoy-overloaded`.
    Overflow,
    /// The route timeout or the last per-try timeout fired: 504 UT.
    Timeout,
    /// The request body exceeds the buffer limit: 413.
    TooLarge,
}

impl LocalReply {
    /// HTTP status Envoy answers with.
    pub fn status(self) -> u16 {
        match self {
            LocalReply::NoRoute => 404,
            LocalReply::BadRequest => 400,
            LocalReply::Timeout => 504,
            LocalReply::TooLarge => 413,
            LocalReply::NoClusterInternal => 500,
            _ => 503,
        }
    }

    /// Envoy's `%RESPONSE_FLAGS%` short form.
    pub fn flag(self) -> &'static str {
        match self {
            LocalReply::NoRoute => "NR",
            LocalReply::NoCluster | LocalReply::NoClusterInternal => "NC",
            LocalReply::NoHealthyUpstream => "UH",
            LocalReply::ConnectFailure | LocalReply::TlsWrongVersion | LocalReply::TlsVerifyFailed => "UF",
            LocalReply::UpstreamReset => "UC",
            LocalReply::BadRequest => "DPE",
            LocalReply::Overflow => "UO",
            LocalReply::Timeout => "UT",
            LocalReply::TooLarge => "-",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub fn details(self) -> &'static str {
        match self {
            LocalReply::NoRoute => "route_not_found",
            LocalReply::NoCluster | LocalReply::NoClusterInternal => "cluster_not_found",
            LocalReply::NoHealthyUpstream => "no_healthy_upstream",
            LocalReply::ConnectFailure | LocalReply::TlsWrongVersion | LocalReply::TlsVerifyFailed => {
                "upstream_reset_before_response_started{remote_connection_failure}"
            }
            LocalReply::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
            LocalReply::BadRequest => "http1.codec_error",
            LocalReply::Overflow => "upstream_reset_before_response_started{overflow}",
            LocalReply::Timeout => "upstream_response_timeout",
            LocalReply::TooLarge => "request_payload_too_large",
        }
    }

    /// The body Envoy sends (text/plain, no trailing newline).
    pub fn body(self) -> &'static str {
        match self {
            LocalReply::NoRoute | LocalReply::NoCluster | LocalReply::NoClusterInternal | LocalReply::BadRequest => "",
            LocalReply::NoHealthyUpstream => "no healthy upstream",
            LocalReply::ConnectFailure => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: 111"
            }
            LocalReply::TlsWrongVersion => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: TLS_error:|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end"
            }
            LocalReply::TlsVerifyFailed => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
            }
            LocalReply::UpstreamReset => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            LocalReply::Overflow => "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            LocalReply::Timeout => "upstream request timeout",
            LocalReply::TooLarge => "Payload Too Large",
        }
    }
}

impl<'s> Decision<'s> {
    /// The route a decision comes from; none for a local reply.
    pub fn route(&self) -> Option<&'s HttpRoute> {
        match self {
            Decision::Forward { matched, .. }
            | Decision::Redirect { matched, .. }
            | Decision::Direct { matched, .. } => Some(matched.route),
            Decision::Reply(_) => None,
        }
    }
}

/// The routing decision for one request: decided first, then bytes move.
#[derive(Debug)]
pub enum Decision<'s> {
    /// Proxy to `cluster`.
    Forward {
        /// The matched route.
        matched: Matched<'s>,
        /// The chosen destination.
        target: &'s WeightedTarget,
        /// The chosen cluster.
        cluster: &'s Arc<Cluster>,
    },
    /// Answer with a redirect to `location`.
    Redirect {
        /// The matched route.
        matched: Matched<'s>,
        /// Status.
        code: u16,
        /// `location` header value.
        location: String,
    },
    /// Answer with a fixed response.
    Direct {
        /// The matched route.
        matched: Matched<'s>,
        /// Status.
        status: u16,
        /// Body.
        body: &'s Bytes,
    },
    /// A local reply (NR, NC, ...).
    Reply(LocalReply),
}

/// Chooses a destination by weight; `roll` is in `0..total`.
pub fn pick_weighted(targets: &[WeightedTarget], total: u32, roll: u32) -> Option<&WeightedTarget> {
    if targets.len() == 1 {
        return targets.first();
    }
    let mut acc = 0;
    for t in targets {
        acc += t.weight;
        if roll < acc {
            return Some(t);
        }
    }
    let _ = total;
    None
}

/// Decides what to do with a request on `routes` (a virtual host's routes).
pub fn decide<'s>(routes: &'s [HttpRoute], req: &RequestView<'_>, src: &SourceView<'_>) -> Decision<'s> {
    let Some(matched) = select_route(routes, req, src) else {
        return Decision::Reply(LocalReply::NoRoute);
    };
    match &matched.route.action {
        RouteAction::Forward { targets, total } => {
            let roll = if *total > 0 { fastrand::u32(..*total) } else { 0 };
            let Some(target) = pick_weighted(targets, *total, roll) else {
                return Decision::Reply(matched.route.missing);
            };
            match target.target.cluster_for(req.port) {
                Some(cluster) => Decision::Forward { matched, target, cluster },
                None => Decision::Reply(matched.route.missing),
            }
        }
        RouteAction::Redirect(r) => {
            Decision::Redirect { matched, code: r.code, location: redirect_location(r, req, matched.prefix) }
        }
        RouteAction::Direct { status, body } => Decision::Direct { matched, status: *status, body },
    }
}

/// Builds the `location` of a redirect the way Envoy does.
fn redirect_location(r: &Redirect, req: &RequestView<'_>, prefix: Option<&str>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let (req_host, req_port) = split_authority(req.authority);
    let host = r.authority.as_deref().unwrap_or(req_host);
    let port = match &r.port {
        Some(RedirectPort::Number(p)) => Some(*p),
        Some(RedirectPort::FromRequestPort) => Some(req.port),
        Some(RedirectPort::FromProtocolDefault) => None,
        // As Envoy builds it: a new authority comes without the request's port; the request's
        // Host keeps its port, unless the scheme changes and it is the old scheme's default.
        None if r.authority.is_some() => None,
        None => req_port.filter(|p| {
            let default = matches!((req.scheme, *p), ("http", 80) | ("https", 443));
            scheme == req.scheme || !default
        }),
    };
    let path = if let Some(uri) = &r.uri {
        uri.clone()
    } else if let (Some(rep), Some(p)) = (&r.prefix_rewrite, prefix) {
        replace_prefix(rep, req.path.strip_prefix(p).unwrap_or(""), r.whole_segments)
    } else {
        req.path.to_string()
    };
    let mut loc = format!("{scheme}://{host}");
    if let Some(p) = port {
        loc.push(':');
        loc.push_str(&p.to_string());
    }
    loc.push_str(&path);
    if let Some(q) = req.query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::matcher::StrMatch;
    use crate::snapshot::policy::{LbPolicy, PoolSettings};
    use crate::snapshot::{Cluster, Labels};
    use http::Method;

    fn cluster(name: &str) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.into(),
            index: 0,
            service: "reviews.default.svc.cluster.local".into(),
            port: 9080,
            subset: None,
            endpoints: vec![],
            lb: LbPolicy::LeastRequest,
            pool: PoolSettings::default(),
            outlier: None,
            destination_rule: None,
            tls_mode: None,
            external: false,
        })
    }

    fn forward(targets: Vec<(u32, Target)>) -> RouteAction {
        let total = targets.iter().map(|t| t.0).sum();
        RouteAction::Forward {
            targets: targets
                .into_iter()
                .map(|(weight, target)| WeightedTarget { weight, target, headers: Headers::default() })
                .collect(),
            total,
        }
    }

    fn route(matches: Vec<RequestMatch>, action: RouteAction) -> HttpRoute {
        HttpRoute {
            name: None,
            virtual_service: "default/reviews".into(),
            parent_matches: vec![],
            matches,
            action,
            rewrite: None,
            headers: Headers::default(),
            policy: RoutePolicy::default(),
            missing: LocalReply::NoCluster,
        }
    }

    fn req<'a>(h: &'a HeaderMap, path: &'a str) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            path,
            query: None,
            scheme: "http",
            authority: "reviews:9080",
            port: 9080,
            headers: h,
        }
    }

    #[test]
    fn first_match_wins_and_missing_subset_is_nc() {
        let labels = Labels::new();
        let src = SourceView { labels: &labels, namespace: "default", gateway: "mesh" };
        let jason =
            RequestMatch { headers: vec![("end-user".into(), StrMatch::Exact("jason".into()))], ..Default::default() };
        let routes = vec![
            route(vec![jason], forward(vec![(100, Target::Missing("v2".into()))])),
            route(vec![], forward(vec![(100, Target::Clusters(vec![(9080, cluster("v1"))]))])),
        ];
        let mut h = HeaderMap::new();
        match decide(&routes, &req(&h, "/"), &src) {
            Decision::Forward { cluster, .. } => assert_eq!(cluster.name, "v1"),
            other => panic!("{other:?}"),
        }
        h.insert("end-user", HeaderValue::from_static("jason"));
        assert!(matches!(decide(&routes, &req(&h, "/"), &src), Decision::Reply(LocalReply::NoCluster)));
        assert!(matches!(
            decide(&routes[..1], &req(&HeaderMap::new(), "/"), &src),
            Decision::Reply(LocalReply::NoRoute)
        ));
    }

    #[test]
    fn weights_split_by_roll() {
        let targets: Vec<_> = [(80, "v1"), (20, "v2")]
            .into_iter()
            .map(|(w, n)| WeightedTarget {
                weight: w,
                target: Target::Clusters(vec![(9080, cluster(n))]),
                headers: Headers::default(),
            })
            .collect();
        let name = |roll| match &pick_weighted(&targets, 100, roll).unwrap().target {
            Target::Clusters(c) => c[0].1.name.clone(),
            Target::Missing(_) => unreachable!(),
        };
        assert_eq!(name(0), "v1");
        assert_eq!(name(79), "v1");
        assert_eq!(name(80), "v2");
        assert_eq!(name(99), "v2");
    }

    #[test]
    fn rewrite_and_redirect() {
        let rw = Rewrite { uri: Some("/v2".into()), ..Default::default() };
        assert_eq!(rw.path("/v1/items", Some("a=1"), Some("/v1")).as_deref(), Some("/v2/items?a=1"));
        assert_eq!(rw.path("/exact", None, None).as_deref(), Some("/v2"));
        // `/` for a prefix: Envoy keeps both slashes; a Gateway API route keeps one.
        let root = Rewrite { uri: Some("/".into()), ..Default::default() };
        assert_eq!(root.path("/v1/items", None, Some("/v1")).as_deref(), Some("//items"));
        let segments = Rewrite { whole_segments: true, ..root };
        assert_eq!(segments.path("/v1/items", None, Some("/v1")).as_deref(), Some("/items"));
        assert_eq!(segments.path("/v1", None, Some("/v1")).as_deref(), Some("/"));
        assert_eq!(segments.path("/v1//items", None, Some("/v1")).as_deref(), Some("/items"), "one slash");
        let deeper = Rewrite { uri: Some("/v2/".into()), ..segments };
        assert_eq!(deeper.path("/v1/items", None, Some("/v1")).as_deref(), Some("/v2/items"));
        let re = Rewrite {
            uri_regex: Some((Regex::new("^/service/([^/]+)(/.*)$").unwrap(), "${2}/instance/${1}".into())),
            ..Default::default()
        };
        assert_eq!(re.path("/service/foo/v1/api", None, None).as_deref(), Some("/v1/api/instance/foo"));
        let h = HeaderMap::new();
        let r = Redirect {
            uri: Some("/new".into()),
            prefix_rewrite: None,
            whole_segments: false,
            authority: Some("example.com".into()),
            port: None,
            scheme: None,
            code: 301,
        };
        assert_eq!(redirect_location(&r, &req(&h, "/old"), None), "http://example.com/new", "no request port");
        let r2 = Redirect { scheme: Some("https".into()), uri: None, ..r };
        assert_eq!(redirect_location(&r2, &req(&h, "/old"), None), "https://example.com/old");
        // A scheme change keeps the Host's own port, but not the old scheme's default one.
        let r3 = Redirect { authority: None, ..r2 };
        assert_eq!(redirect_location(&r3, &req(&h, "/old"), None), "https://reviews:9080/old");
        let on_80 = RequestView { authority: "reviews:80", port: 80, ..req(&h, "/old") };
        assert_eq!(redirect_location(&r3, &on_80, None), "https://reviews/old");
        // A Gateway API `ReplacePrefixMatch` of `/` leaves one slash; Envoy's prefix rewrite two.
        let to_root =
            Redirect { prefix_rewrite: Some("/".into()), port: Some(RedirectPort::FromRequestPort), ..r3.clone() };
        let deep = RequestView { authority: "localhost:8080", port: 8080, ..req(&h, "/old/page") };
        assert_eq!(redirect_location(&to_root, &deep, Some("/old")), "https://localhost:8080//page");
        let segments = Redirect { whole_segments: true, ..to_root };
        assert_eq!(redirect_location(&segments, &deep, Some("/old")), "https://localhost:8080/page");
        // A rewrite on a route without a uri match replaces Istio's implicit prefix `/`, as the
        // Envoy route's prefix_rewrite does: the well-known `/anythingget`.
        let rw = Rewrite { uri: Some("/anything".into()), ..Default::default() };
        let labels = Labels::new();
        let src = SourceView { labels: &labels, namespace: "default", gateway: "mesh" };
        let by_method = [RequestMatch { method: Some(StrMatch::Exact("GET".into())), ..Default::default() }];
        for matches in [by_method.to_vec(), vec![]] {
            let r = route(matches, RouteAction::Direct { status: 200, body: Bytes::new() });
            let prefix = r.matches(&req(&h, "/get"), &src).unwrap().prefix;
            assert_eq!(rw.path("/get", None, prefix).as_deref(), Some("/anythingget"));
        }
    }
}
