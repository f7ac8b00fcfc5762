//! `meshd explain`: every decision the mesh takes for one request, in the
//! order the proxies take them, in Istio's words: the listener and virtual
//! host, each VirtualService rule tried and why it did not match, the
//! destination and weights, the DestinationRule policy, fault, timeout and
//! retries, mTLS, and the authorization decision at the callee. It reads the
//! same compiled snapshot the proxies serve, and sends nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::security::peer_auth::MtlsMode;
use crate::snapshot::matcher::{split_authority, Mismatch, RequestMatch, RequestView, SourceView};
use crate::snapshot::policy::{AbortWith, LbPolicy, RetryOn, RetryPolicy};
use crate::snapshot::route::{HttpRoute, RouteAction, Target, VirtualHost};
use crate::snapshot::{Cluster, PodInfo, Snapshot};

/// What to explain.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExplainRequest {
    /// HTTP method (GET when empty).
    #[serde(default)]
    pub method: String,
    /// `http://reviews:9080/reviews/0`, or a path at the gateway (`/productpage`).
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The calling pod or workload (`productpage-v1`), `istio-ingressgateway` for a request
    /// arriving at the gateway; empty: the mesh client (what `meshd curl` sends from).
    #[serde(default)]
    pub from: String,
}

/// One decision.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// `source`, `listener`, `virtualservice`, `destination`, `destinationrule`, `policy`,
    /// `mtls`, `authorization`, `result`.
    pub stage: String,
    /// What was decided and why.
    pub text: String,
}

/// The decisions, and the same as numbered text.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// Decisions in order.
    pub steps: Vec<Step>,
    /// `1. [source] ...` lines.
    pub text: String,
}

/// Who sends the request.
enum From<'s> {
    Gateway,
    Pod(&'s PodInfo),
    Client(&'s crate::snapshot::Workload),
}

struct Out {
    steps: Vec<Step>,
}

impl Out {
    fn push(&mut self, stage: &str, text: impl Into<String>) {
        self.steps.push(Step { stage: stage.to_string(), text: text.into() });
    }

    fn done(self) -> Explanation {
        let mut text = String::new();
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(text, "{:>2}. [{}] {}", i + 1, s.stage, s.text);
        }
        Explanation { steps: self.steps, text }
    }
}

fn pick_source<'s>(snap: &'s Snapshot, from: &str) -> Result<From<'s>, String> {
    let from = from.trim();
    if from.is_empty() {
        return match &snap.mesh_client {
            Some(w) => match snap.pods.iter().find(|p| p.name == w.name) {
                Some(p) => Ok(From::Pod(p)),
                None => Ok(From::Client(w)),
            },
            None => Err("no mesh client in this snapshot".into()),
        };
    }
    if matches!(from, "istio-ingressgateway" | "gateway" | "ingress") {
        return Ok(From::Gateway);
    }
    snap.find_pod(from).map(From::Pod).ok_or_else(|| format!("no pod or workload named {from:?} (see `meshd status`)"))
}

fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::try_from(k.trim().to_ascii_lowercase()).map_err(|_| format!("bad header name {k:?}"))?;
        let value = HeaderValue::try_from(v.trim()).map_err(|_| format!("bad value for header {k}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Explains `req` against `snap`.
pub fn explain(snap: &Snapshot, req: &ExplainRequest) -> Result<Explanation, String> {
    let source = pick_source(snap, &req.from)?;
    let gateway = matches!(source, From::Gateway);
    let url =
        if req.url.starts_with('/') && gateway { format!("http://localhost{}", req.url) } else { req.url.clone() };
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {:?}: {e}", req.url))?;
    let authority =
        uri.authority().map(|a| a.as_str().to_string()).ok_or("the URL needs a host: http://host:port/path")?;
    let method = if req.method.is_empty() {
        Method::GET
    } else {
        req.method.to_ascii_uppercase().parse::<Method>().map_err(|_| "bad method".to_string())?
    };
    let mut headers = header_map(&req.headers)?;
    let (host, port) = split_authority(&authority);
    let host = host.to_ascii_lowercase();
    let port = port.unwrap_or(80);
    if let Ok(v) = HeaderValue::try_from(authority.as_str()) {
        headers.entry(http::header::HOST).or_insert(v);
    }
    let mut out = Out { steps: Vec::new() };
    let gw = crate::daemon::gateway_workload();
    // The caller's mTLS identity as AuthorizationPolicy sees it (no `spiffe://`).
    let identity = match &source {
        From::Gateway => Some((&gw.namespace, &gw.service_account)),
        From::Pod(p) if p.sidecar => Some((&p.namespace, &p.service_account)),
        From::Pod(_) => None,
        From::Client(w) => Some((&w.namespace, &w.service_account)),
    };
    let principal =
        identity.map(|(ns, sa)| crate::security::ca::spiffe_id(ns, sa).trim_start_matches("spiffe://").to_string());
    let (ns, labels, sidecar) = match &source {
        From::Gateway => {
            out.push("source", "istio-ingressgateway (istio-system), the ingress gateway's HTTP listener");
            ("istio-system", &gw.labels, true)
        }
        From::Pod(p) => {
            let side = if p.sidecar {
                "through its sidecar's outbound listener"
            } else {
                "without a sidecar: kube-proxy, no mesh policy"
            };
            out.push("source", format!("{} ({}), workload {}, {side}", p.name, p.namespace, p.workload));
            (p.namespace.as_str(), &p.labels, p.sidecar)
        }
        From::Client(w) => {
            out.push("source", format!("{} ({}), the mesh client, through its sidecar", w.name, w.namespace));
            (w.namespace.as_str(), &w.labels, true)
        }
    };
    let vhost = if gateway {
        if snap.ingress.https_redirect.iter().any(|p| p.matches(&host)) {
            out.push("listener", format!("Gateway server for {host} sets httpsRedirect"));
            out.push("result", "301 to https://".to_string() + &host + uri.path());
            return Ok(out.done());
        }
        snap.ingress.lookup(&host)
    } else if sidecar {
        snap.mesh.get(ns).and_then(|t| t.lookup(&host))
    } else {
        snap.mesh.get(ns).and_then(|t| t.plain.get(&host))
    };
    let Some(vhost) = vhost else {
        let why = if gateway {
            format!(
                "no Gateway server bound to a VirtualService has host {host:?} (servers: {})",
                snap.ingress.servers.join(", ")
            )
        } else {
            format!("{host:?} is neither a Service nor a ServiceEntry host visible from namespace {ns}")
        };
        out.push("listener", why);
        out.push("result", "404 NR route_not_found");
        return Ok(out.done());
    };
    out.push("listener", format!("host {authority} -> virtual host {}", vhost.name));
    let view = RequestView {
        method: &method,
        path: uri.path(),
        query: uri.query(),
        scheme: "http",
        authority: &authority,
        port,
        headers: &headers,
    };
    let src = SourceView { labels, namespace: ns, gateway: if gateway { "" } else { "mesh" } };
    let Some(route) = walk_rules(&mut out, vhost, &view, &src) else {
        out.push("result", "404 NR route_not_found: no rule matched");
        return Ok(out.done());
    };
    act(&mut out, snap, route, port, &Asked { view, headers: &headers }, principal.as_deref());
    Ok(out.done())
}

/// The request as routing sees it, and its headers as authorization reads them.
struct Asked<'a> {
    view: RequestView<'a>,
    headers: &'a HeaderMap,
}

fn why_not(m: &RequestMatch, miss: Mismatch<'_>, view: &RequestView<'_>) -> String {
    let header = |name: &str| view.headers.first(name).map(str::to_string);
    let opt = |m: &Option<crate::snapshot::matcher::StrMatch>| m.as_ref().map(|m| m.to_string()).unwrap_or_default();
    match miss {
        Mismatch::Gateway => format!("limited to gateways {}", m.gateways.join(",")),
        Mismatch::Port(p) => format!("port {} is not {p}", view.port),
        Mismatch::Uri => format!("path {:?} does not match uri {}", view.path, opt(&m.uri)),
        Mismatch::Scheme => format!("scheme {} does not match {}", view.scheme, opt(&m.scheme)),
        Mismatch::Method => format!("method {} does not match {}", view.method, opt(&m.method)),
        Mismatch::Authority => format!("authority {:?} does not match {}", view.authority, opt(&m.authority)),
        Mismatch::Header(n) => match header(n) {
            Some(v) => format!("header {n} is {v:?}"),
            None => format!("header {n} is missing"),
        },
        Mismatch::WithoutHeader(n) => {
            format!("header {n} is {:?}, which withoutHeaders excludes", header(n).unwrap_or_default())
        }
        Mismatch::Query(n) => format!("query parameter {n} is missing or differs"),
        Mismatch::SourceLabels => "the caller's labels differ from sourceLabels".into(),
        Mismatch::SourceNamespace => "the caller is in another namespace than sourceNamespace".into(),
    }
}

/// Tries the virtual host's rules in order, saying why each earlier one did not match.
fn walk_rules<'v>(
    out: &mut Out,
    vhost: &'v VirtualHost,
    view: &RequestView<'_>,
    src: &SourceView<'_>,
) -> Option<&'v HttpRoute> {
    let mut rule_no: BTreeMap<&str, usize> = BTreeMap::new();
    for route in vhost.routes.iter() {
        let n = rule_no.entry(route.virtual_service.as_str()).or_insert(0);
        let label = if route.virtual_service.is_empty() {
            "default route (no VirtualService)".to_string()
        } else {
            format!(
                "VirtualService {} rule #{n}{}",
                route.virtual_service,
                route.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            )
        };
        *n += 1;
        let mut reasons = Vec::new();
        for parent in &route.parent_matches {
            if !parent.is_empty() && !parent.iter().any(|m| m.matches(view, src)) {
                let why: Vec<String> =
                    parent.iter().filter_map(|m| m.mismatch(view, src).map(|x| why_not(m, x, view))).collect();
                reasons.push(format!("the delegating rule did not match: {}", why.join("; ")));
            }
        }
        if reasons.is_empty() && !route.matches.is_empty() {
            match route.matches.iter().position(|m| m.matches(view, src)) {
                Some(i) => {
                    out.push("virtualservice", format!("{label} matched: match #{i} {}", route.matches[i]));
                    return Some(route);
                }
                None => {
                    for (i, m) in route.matches.iter().enumerate() {
                        if let Some(miss) = m.mismatch(view, src) {
                            reasons.push(format!("match #{i} ({m}): {}", why_not(m, miss, view)));
                        }
                    }
                }
            }
        } else if reasons.is_empty() {
            out.push("virtualservice", format!("{label} matched: it has no match conditions (any request)"));
            return Some(route);
        }
        out.push("virtualservice", format!("{label} skipped: {}", reasons.join("; ")));
    }
    None
}

fn pct(p: f64) -> String {
    let s = format!("{p:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn retry_text(r: &RetryPolicy) -> String {
    if r.attempts == 0 {
        return "retries: none (attempts 0)".into();
    }
    const NAMES: [(RetryOn, &str); 14] = [
        (RetryOn::FIVE_XX, "5xx"),
        (RetryOn::GATEWAY_ERROR, "gateway-error"),
        (RetryOn::RESET, "reset"),
        (RetryOn::CONNECT_FAILURE, "connect-failure"),
        (RetryOn::RETRIABLE_4XX, "retriable-4xx"),
        (RetryOn::REFUSED_STREAM, "refused-stream"),
        (RetryOn::RETRIABLE_STATUS_CODES, "retriable-status-codes"),
        (RetryOn::ENVOY_RATELIMITED, "envoy-ratelimited"),
        (RetryOn::RESET_BEFORE_REQUEST, "reset-before-request"),
        (RetryOn::CANCELLED, "cancelled"),
        (RetryOn::DEADLINE_EXCEEDED, "deadline-exceeded"),
        (RetryOn::INTERNAL, "internal"),
        (RetryOn::RESOURCE_EXHAUSTED, "resource-exhausted"),
        (RetryOn::UNAVAILABLE, "unavailable"),
    ];
    let mut on: Vec<String> = NAMES.iter().filter(|(f, _)| r.on.has(*f)).map(|(_, n)| n.to_string()).collect();
    on.extend(r.codes.iter().map(u16::to_string));
    let per_try = r.per_try_timeout.map(|t| format!(", perTryTimeout {t:?}")).unwrap_or_default();
    format!("retries: {} attempts on {}{per_try}, backoff {:?} base", r.attempts, on.join(","), r.backoff)
}

fn lb_text(lb: &LbPolicy) -> &'static str {
    match lb {
        LbPolicy::LeastRequest => "LEAST_REQUEST",
        LbPolicy::RoundRobin => "ROUND_ROBIN",
        LbPolicy::Random => "RANDOM",
        LbPolicy::Passthrough => "PASSTHROUGH",
        LbPolicy::Hash { .. } => "consistent hash",
    }
}

/// The cluster a target sends port `port` to (as the proxy picks it), or why there is none.
fn cluster_of(target: &Target, port: u16) -> Result<&std::sync::Arc<Cluster>, String> {
    match target {
        Target::Missing(why) => Err(why.clone()),
        t => t.cluster_for(port).ok_or_else(|| "no port".to_string()),
    }
}

/// What the matched rule does: the destination and weights, the policies, then the callee's side.
fn act(out: &mut Out, snap: &Snapshot, route: &HttpRoute, port: u16, asked: &Asked<'_>, principal: Option<&str>) {
    let targets = match &route.action {
        RouteAction::Redirect(r) => {
            let to = [r.scheme.clone(), r.authority.clone(), r.uri.clone().or(r.prefix_rewrite.clone())];
            let to: Vec<String> = to.into_iter().flatten().collect();
            out.push("result", format!("{} redirect to {}", r.code, to.join(" ")));
            return;
        }
        RouteAction::Direct { status, body } => {
            out.push("result", format!("{status} directResponse ({} bytes of body)", body.len()));
            return;
        }
        RouteAction::Forward { targets, total } => {
            let total = (*total).max(1);
            let mut parts = Vec::new();
            for t in targets {
                let share = pct(f64::from(t.weight) * 100.0 / f64::from(total));
                match cluster_of(&t.target, port) {
                    Ok(c) => parts.push(format!("{} {share}", c.name)),
                    Err(why) => parts.push(format!("missing destination ({why}) {share}")),
                }
            }
            let how = if targets.len() > 1 { "weights, picked at random per request" } else { "destination" };
            out.push("destination", format!("{how}: {}", parts.join(", ")));
            targets
        }
    };
    let policy = &route.policy;
    if let Some(f) = &policy.fault {
        if let Some((d, p)) = f.delay {
            out.push("policy", format!("fault: delay {d:?} for {} of requests", pct(p)));
        }
        if let Some((with, p)) = &f.abort {
            let what = match with {
                AbortWith::Http(s) => format!("HTTP {s}"),
                AbortWith::Grpc(c) => format!("gRPC status {c}"),
            };
            out.push(
                "policy",
                format!("fault: abort with {what} for {} of requests (`fault filter abort`, flag FI)", pct(*p)),
            );
            if *p >= 100.0 {
                out.push("result", format!("{what} `fault filter abort` from the caller's sidecar; nothing is sent"));
                return;
            }
        }
    }
    match policy.timeout {
        Some(t) => out.push("policy", format!("timeout {t:?} (504 UT upstream_response_timeout after it)")),
        None => out.push("policy", "timeout: none (Istio's default: disabled)"),
    }
    out.push("policy", retry_text(&policy.retry));
    for m in &policy.mirrors {
        if let Ok(c) = cluster_of(&m.target, port) {
            out.push("policy", format!("mirror {} of requests to {} (Host gets -shadow)", pct(m.percentage), c.name));
        }
    }
    // The heaviest destination stands for the rest below.
    let Some(main) = targets.iter().max_by_key(|t| t.weight) else { return };
    let cluster = match cluster_of(&main.target, port) {
        Ok(c) => c,
        Err(why) => {
            out.push("result", format!("503 NC cluster_not_found: {why}"));
            return;
        }
    };
    let dr = match &cluster.destination_rule {
        Some(dr) => format!("DestinationRule {dr}"),
        None => "no DestinationRule".into(),
    };
    let mut policy_bits = vec![format!("load balancer {}", lb_text(&cluster.lb))];
    let pool = &cluster.pool;
    if pool.max_connections != u32::MAX || pool.max_pending != u32::MAX || pool.max_requests != u32::MAX {
        let n = |v: u32| if v == u32::MAX { "unlimited".to_string() } else { v.to_string() };
        policy_bits.push(format!(
            "circuit breaker: maxConnections {}, http1MaxPendingRequests {}, http2MaxRequests {}",
            n(pool.max_connections),
            n(pool.max_pending),
            n(pool.max_requests)
        ));
    }
    if let Some(o) = &cluster.outlier {
        policy_bits.push(format!(
            "outlier detection: eject after {} consecutive 5xx for {:?}, up to {}%",
            o.consecutive_5xx.map_or("-".into(), |n| n.to_string()),
            o.base_ejection_time,
            o.max_ejection_percent
        ));
    }
    out.push("destinationrule", format!("{} for {}: {}", dr, cluster.name, policy_bits.join("; ")));
    let Some(ep) = cluster.endpoints.first() else {
        out.push("result", format!("503 UH no_healthy_upstream: {} has no endpoints", cluster.name));
        return;
    };
    let pods: Vec<&str> = cluster.endpoints.iter().map(|e| e.pod.as_str()).collect();
    let tls = match (&cluster.tls_mode, ep.mtls) {
        (Some(m), _) => format!("tls.mode {m} from the DestinationRule"),
        (None, true) => "auto mTLS: the callee has a sidecar, so ISTIO_MUTUAL".into(),
        (None, false) => "plaintext: the callee has no sidecar (or its PeerAuthentication disables mTLS)".into(),
    };
    out.push("mtls", format!("client side: {tls}; endpoints: {}", pods.join(", ")));
    let Some(pod) = snap.pods.iter().find(|p| p.name == ep.pod) else {
        out.push("result", format!("forwarded to {} (outside the mesh)", ep.addr));
        return;
    };
    let target_port = pod.inbound.iter().find(|(_, a)| **a == ep.addr).map(|(p, _)| *p).unwrap_or(port);
    authorize(out, snap, pod, target_port, ep.mtls, asked, principal);
}

/// The callee's side: PeerAuthentication, RequestAuthentication, AuthorizationPolicy.
fn authorize(
    out: &mut Out,
    snap: &Snapshot,
    pod: &PodInfo,
    port: u16,
    mtls: bool,
    asked: &Asked<'_>,
    principal: Option<&str>,
) {
    use crate::security::authz::{Decision, Request, Target};
    let mode = snap.peer_auth.mode(&pod.namespace, &pod.labels, port);
    let mode_name = mode.name();
    let verdict = match (mode, mtls) {
        (MtlsMode::Strict, false) => {
            out.push(
                "mtls",
                format!("{} port {port}: PeerAuthentication {mode_name}, and the client speaks plaintext", pod.name),
            );
            out.push("result", "connection reset by the callee's sidecar (curl: exit 56)");
            return;
        }
        (MtlsMode::Disable, true) => {
            out.push(
                "mtls",
                format!("{} port {port}: PeerAuthentication DISABLE, and the client speaks mTLS", pod.name),
            );
            out.push("result", "connection reset: the callee takes plaintext only (503 UC at the caller)");
            return;
        }
        (_, true) => "accepts mTLS",
        (_, false) => "accepts plaintext",
    };
    out.push("mtls", format!("{} port {port}: PeerAuthentication {mode_name}, {verdict}", pod.name));
    if snap.jwt.applies_to(&pod.namespace, &pod.labels) {
        let has = asked.headers.contains_key(http::header::AUTHORIZATION);
        let what = if has {
            "a token is present: it is validated (explain does not check it)"
        } else {
            "no token: the request has no request principal"
        };
        out.push("authorization", format!("RequestAuthentication applies to {}: {what}", pod.name));
    }
    let target = Target { namespace: &pod.namespace, labels: &pod.labels };
    if !snap.authz.applies_to(&target) {
        out.push("authorization", format!("no AuthorizationPolicy selects {}: allowed", pod.name));
        out.push("result", format!("forwarded to {} port {port}", pod.name));
        return;
    }
    let principal = if mtls { principal } else { None };
    let req = Request {
        source_principal: principal,
        source_namespace: principal.and_then(crate::security::authz::principal_namespace),
        host: asked.view.authority,
        method: asked.view.method.as_str(),
        path: asked.view.path,
        port,
        headers: asked.headers,
        ..Default::default()
    };
    match snap.authz.evaluate(&target, &req) {
        Decision::Allow => {
            out.push(
                "authorization",
                format!(
                    "AuthorizationPolicy at {}: allowed (source principal {})",
                    pod.name,
                    principal.unwrap_or("none")
                ),
            );
            out.push("result", format!("forwarded to {} port {port}", pod.name));
        }
        Decision::Deny { policy } => {
            let why =
                if policy == "none" { "no ALLOW rule matched".to_string() } else { format!("denied by {policy}") };
            out.push(
                "authorization",
                format!(
                    "AuthorizationPolicy at {}: {why} (source principal {})",
                    pod.name,
                    principal.unwrap_or("none")
                ),
            );
            out.push("result", "403 RBAC: access denied");
        }
    }
}
