//! Compiles the parsed config and the running pods into a snapshot: hosts
//! resolved to FQDNs, routes in order, clusters keyed as Istio names them.
//! Everything that can be wrong in a valid-looking file (a bad regex, a bad
//! header name) is found here, before anything changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use regex::Regex;

use super::matcher::{HostPattern, RequestMatch, StrMatch};
use super::policy::{Fault, HashKey, HashTable, LbPolicy, OutlierSettings, PoolSettings, RetryPolicy};
use super::route::{
    GatewayTable, HeaderOps, Headers, HttpRoute, LocalReply, MeshTable, Mirror, Redirect, RedirectPort, Rewrite,
    RouteAction, RoutePolicy, Target, VirtualHost, WeightedTarget,
};
use super::{
    resolve_short_name, Cluster, Endpoint, ExternalEndpoint, Labels, PodInfo, Service, Snapshot, TargetPort, Workload,
};
use crate::config::api::{self, Resource};
use crate::config::load::NotEmulated;
use crate::config::model::Workloads;
use crate::config::{ConfigError, Located, Origin};
use crate::security::ca::spiffe_id;
use crate::security::peer_auth::{MtlsMode, PeerAuthTable};

/// What a snapshot is made from.
#[derive(Debug)]
pub struct CompileInput<'a> {
    /// Every resource, in file order.
    pub resources: &'a [Located],
    /// Deployments and Services, converted.
    pub workloads: &'a Workloads,
    /// Running pods with their listener addresses.
    pub pods: &'a [PodInfo],
    /// Generation number of the new snapshot.
    pub generation: u64,
    /// Documents that are not emulated.
    pub not_emulated: &'a [NotEmulated],
    /// The config folder, for files that resources name (certificates).
    pub base: Option<&'a std::path::Path>,
    /// `jwksUri` documents fetched over HTTP before compiling, by URI.
    pub jwks: &'a HashMap<String, Result<String, String>>,
}

/// Labels of the ingress gateway workload.
pub(crate) fn ingress_labels() -> Labels {
    [("app", "istio-ingressgateway"), ("istio", "ingressgateway")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

type VsObj = api::Object<api::VirtualServiceSpec>;
type DrObj = api::Object<api::DestinationRuleSpec>;
type GwObj = api::Object<api::GatewaySpec>;

struct Ctx<'a> {
    errors: Vec<ConfigError>,
    services: HashMap<String, Arc<Service>>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// DestinationRules by host FQDN.
    rules: HashMap<String, (&'a DrObj, &'a Origin)>,
    /// VirtualServices by `ns/name`, for delegation.
    vs_by_name: HashMap<String, (&'a VsObj, &'a Origin)>,
    warnings: Vec<String>,
    peer_auth: PeerAuthTable,
    secrets: HashMap<(String, String), super::gateway_tls::SecretData>,
}

impl Ctx<'_> {
    fn err(&mut self, origin: &Origin, field: String, message: String) {
        self.errors.push(ConfigError { file: origin.file.clone(), line: origin.line, field, message });
    }
}

fn string_match(ctx: &mut Ctx<'_>, m: &api::StringMatch, origin: &Origin, field: &str) -> Option<StrMatch> {
    if let Some(e) = &m.exact {
        Some(StrMatch::Exact(e.clone()))
    } else if let Some(p) = &m.prefix {
        Some(StrMatch::Prefix(p.clone()))
    } else if let Some(r) = &m.regex {
        match StrMatch::regex(r) {
            Ok(m) => Some(m),
            Err(e) => {
                ctx.err(origin, format!("{field}.regex"), format!("invalid regular expression {r:?}: {e}"));
                None
            }
        }
    } else {
        Some(StrMatch::Present)
    }
}

fn header_ops(ctx: &mut Ctx<'_>, ops: &Option<api::HeaderOperations>, origin: &Origin, field: &str) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(ops) = ops else { return out };
    let pairs = |map: &BTreeMap<String, String>, which: &str, ctx: &mut Ctx<'_>| {
        let mut v = Vec::new();
        for (k, val) in map {
            match (HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()), HeaderValue::from_str(val)) {
                (Ok(n), Ok(hv)) => v.push((n, hv)),
                _ => ctx.err(origin, format!("{field}.{which}.{k}"), "invalid header name or value".into()),
            }
        }
        v
    };
    out.set = pairs(&ops.set, "set", ctx);
    out.add = pairs(&ops.add, "add", ctx);
    for k in &ops.remove {
        match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => ctx.err(origin, format!("{field}.remove"), format!("invalid header name {k:?}")),
        }
    }
    out
}

fn headers(ctx: &mut Ctx<'_>, h: &Option<api::Headers>, origin: &Origin, field: &str) -> Headers {
    match h {
        None => Headers::default(),
        Some(h) => Headers {
            request: header_ops(ctx, &h.request, origin, &format!("{field}.request")),
            response: header_ops(ctx, &h.response, origin, &format!("{field}.response")),
        },
    }
}

fn compile_match(
    ctx: &mut Ctx<'_>,
    m: &api::HttpMatchRequest,
    vs: (&str, Semantics),
    origin: &Origin,
    field: &str,
) -> RequestMatch {
    let (vs_ns, semantics) = vs;
    let mut out = RequestMatch {
        name: m.name.clone(),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        port: m.port.and_then(|p| u16::try_from(p).ok()),
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
        gateways: m.gateways.iter().map(|g| gateway_ref(g, vs_ns)).collect(),
        ..Default::default()
    };
    if let Some(u) = &m.uri {
        out.uri = match string_match(ctx, u, origin, &format!("{field}.uri")) {
            Some(StrMatch::Prefix(p)) if semantics == Semantics::Gateway => Some(StrMatch::SegmentPrefix(p)),
            other => other,
        };
    }
    if let Some(u) = &m.scheme {
        out.scheme = string_match(ctx, u, origin, &format!("{field}.scheme"));
    }
    if let Some(u) = &m.method {
        out.method = string_match(ctx, u, origin, &format!("{field}.method"));
    }
    if let Some(u) = &m.authority {
        out.authority = string_match(ctx, u, origin, &format!("{field}.authority"));
    }
    for (k, v) in &m.headers {
        let k = k.to_ascii_lowercase();
        // Istio ignores these keys in `headers`: they have their own fields.
        if matches!(k.as_str(), "uri" | "scheme" | "method" | "authority") {
            continue;
        }
        if let Some(sm) = string_match(ctx, v, origin, &format!("{field}.headers.{k}")) {
            out.headers.push((k, sm));
        }
    }
    for (k, v) in &m.without_headers {
        let k = k.to_ascii_lowercase();
        if let Some(sm) = string_match(ctx, v, origin, &format!("{field}.withoutHeaders.{k}")) {
            out.without_headers.push((k, sm));
        }
    }
    for (k, v) in &m.query_params {
        if let Some(sm) = string_match(ctx, v, origin, &format!("{field}.queryParams.{k}")) {
            out.query_params.push((k.clone(), sm));
        }
    }
    out
}

/// How a VirtualService's routes read: as Istio's API says, or as the Gateway API route it
/// was made from says (Istio's internal mark on what it makes of those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantics {
    Istio,
    Gateway,
}

impl Semantics {
    fn of(vs: &VsObj) -> Semantics {
        match vs.metadata.annotations.get(crate::config::translate_gateway_api::ROUTE_SEMANTICS).map(String::as_str) {
            Some("gateway") => Semantics::Gateway,
            _ => Semantics::Istio,
        }
    }
}

/// `name` or `ns/name` of a gateway, as referenced from a VS in `vs_ns`.
fn gateway_ref(g: &str, vs_ns: &str) -> String {
    if g == "mesh" || g.contains('/') {
        g.to_string()
    } else {
        format!("{vs_ns}/{g}")
    }
}

/// The cluster for (service, port, subset), created on first use.
fn cluster_for(
    ctx: &mut Ctx<'_>,
    input: &CompileInput<'_>,
    svc: &Arc<Service>,
    port: u16,
    subset: Option<&str>,
) -> Result<Arc<Cluster>, String> {
    let name = format!("outbound|{port}|{}|{}", subset.unwrap_or(""), svc.fqdn);
    if let Some(c) = ctx.clusters.get(&name) {
        return Ok(c.clone());
    }
    let Some(svc_port) = svc.ports.iter().find(|p| p.port == port) else {
        return Err(format!("service {} has no port {port}", svc.fqdn));
    };
    let rule = ctx.rules.get(&svc.fqdn).map(|(r, _)| *r);
    let mut labels = svc.selector.clone();
    let mut effective = Effective::default();
    effective.apply(rule.and_then(|r| r.spec.traffic_policy.as_ref()), port);
    if let Some(subset) = subset {
        let found = rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == subset));
        let Some(found) = found else {
            return Err(format!("subset {subset} of {} is not defined by any DestinationRule", svc.fqdn));
        };
        labels.extend(found.labels.clone());
        effective.apply(found.traffic_policy.as_ref(), port);
    }
    let endpoints: Vec<Endpoint> = input
        .pods
        .iter()
        .filter(|p| p.namespace == svc.namespace && !svc.selector.is_empty())
        .filter(|p| super::selects(&labels, &p.labels))
        .filter_map(|p| {
            let target = p.resolve_port(&svc_port.target_port)?;
            let addr = *p.inbound.get(&target)?;
            let mtls = match effective.tls.and_then(|t| t.mode) {
                Some(api::TlsMode::IstioMutual) => true,
                Some(_) => false,
                // Auto mTLS: to a sidecar, unless its PeerAuthentication disables mTLS on that port.
                None => p.sidecar && ctx.peer_auth.mode(&p.namespace, &p.labels, target) != MtlsMode::Disable,
            };
            Some(Endpoint {
                addr,
                pod: p.name.clone(),
                identity: spiffe_id(&p.namespace, &p.service_account),
                mtls,
                origin: None,
            })
        })
        .collect();
    let mut endpoints = endpoints;
    // A ServiceEntry's endpoints: no sidecar, so no mTLS; TLS only when the DestinationRule originates it.
    let origin = match effective.tls {
        Some(t) if matches!(t.mode, Some(api::TlsMode::Simple | api::TlsMode::Mutual)) => {
            match crate::security::origination::compile(t, &svc.name, &svc.namespace, &ctx.secrets, input.base) {
                Ok(o) => Some(o),
                Err(e) => {
                    ctx.warnings.push(format!("{name}: tls: {e}: connections will fail"));
                    None
                }
            }
        }
        _ => None,
    };
    for e in svc.external.iter().filter(|e| super::selects(&labels, &e.labels)) {
        let port = e.ports.get(&svc_port.name).copied().unwrap_or(match &svc_port.target_port {
            TargetPort::Number(n) => *n,
            TargetPort::Name(_) => port,
        });
        endpoints.push(Endpoint {
            addr: std::net::SocketAddr::new(e.ip, port),
            pod: svc.name.clone(),
            identity: String::new(),
            mtls: false,
            origin: origin.clone(),
        });
    }
    if origin.is_some() && svc.external.is_empty() {
        ctx.warnings.push(format!("{name}: TLS origination applies to ServiceEntry endpoints only"));
    }
    let lb = lb_policy(effective.lb, &endpoints);
    let cluster = Arc::new(Cluster {
        name: name.clone(),
        index: ctx.clusters.len(),
        service: svc.fqdn.clone(),
        port,
        subset: subset.map(str::to_string),
        endpoints,
        lb,
        pool: PoolSettings::from_api(effective.pool),
        outlier: effective.outlier.map(OutlierSettings::from_api),
        destination_rule: rule.map(|r| {
            let m = &r.metadata;
            format!("{}.{}", m.name(), m.ns())
        }),
        tls_mode: effective.tls.and_then(|t| t.mode).map(|m| {
            match m {
                api::TlsMode::Disable => "DISABLE",
                api::TlsMode::Simple => "SIMPLE",
                api::TlsMode::Mutual => "MUTUAL",
                api::TlsMode::IstioMutual => "ISTIO_MUTUAL",
            }
            .to_string()
        }),
        external: !svc.external.is_empty(),
    });
    ctx.clusters.insert(name, cluster.clone());
    Ok(cluster)
}

/// The traffic policy in force for one cluster, merged as Istio merges it:
/// subset fields override the rule's, and a port-level entry replaces all of
/// its fields (unset ones fall back to defaults, not to the outer level).
#[derive(Default)]
struct Effective<'a> {
    tls: Option<&'a api::ClientTlsSettings>,
    lb: Option<&'a api::LoadBalancerSettings>,
    pool: Option<&'a api::ConnectionPoolSettings>,
    outlier: Option<&'a api::OutlierDetection>,
}

impl<'a> Effective<'a> {
    fn apply(&mut self, policy: Option<&'a api::TrafficPolicy>, port: u16) {
        let Some(p) = policy else { return };
        if p.load_balancer.is_some() {
            self.lb = p.load_balancer.as_ref();
        }
        if p.connection_pool.is_some() {
            self.pool = p.connection_pool.as_ref();
        }
        if p.outlier_detection.is_some() {
            self.outlier = p.outlier_detection.as_ref();
        }
        if p.tls.is_some() {
            self.tls = p.tls.as_ref();
        }
        if let Some(pl) =
            p.port_level_settings.iter().find(|s| s.port.as_ref().map(|x| x.number) == Some(u32::from(port)))
        {
            self.lb = pl.load_balancer.as_ref();
            self.pool = pl.connection_pool.as_ref();
            self.outlier = pl.outlier_detection.as_ref();
            self.tls = pl.tls.as_ref();
        }
    }
}

/// The traffic-policy fields of a DestinationRule (and of its subsets and ports) that meshd
/// parses but does not act on: reported, since each changes what Envoy does.
fn unemulated_policy_fields(dr: &api::Object<api::DestinationRuleSpec>) -> Vec<String> {
    fn lb(at: &str, lb: Option<&api::LoadBalancerSettings>, out: &mut Vec<String>) {
        let Some(l) = lb else { return };
        let fields = [
            ("localityLbSetting", l.locality_lb_setting.is_some()),
            ("warmup", l.warmup.is_some() || l.warmup_duration_secs.is_some()),
            ("backendUtilization", l.backend_utilization.is_some()),
            ("zoneAwareLbSetting", l.zone_aware_lb_setting.is_some()),
        ];
        out.extend(fields.iter().filter(|(_, set)| *set).map(|(f, _)| format!("{at}.loadBalancer.{f}")));
    }
    fn policy(at: &str, p: &api::TrafficPolicy, out: &mut Vec<String>) {
        let fields = [
            ("retryBudget", p.retry_budget.is_some()),
            ("tunnel", p.tunnel.is_some()),
            ("proxyProtocol", p.proxy_protocol.is_some()),
        ];
        out.extend(fields.iter().filter(|(_, set)| *set).map(|(f, _)| format!("{at}.{f}")));
        lb(at, p.load_balancer.as_ref(), out);
        for (i, pl) in p.port_level_settings.iter().enumerate() {
            lb(&format!("{at}.portLevelSettings[{i}]"), pl.load_balancer.as_ref(), out);
        }
    }
    let mut out = Vec::new();
    if let Some(p) = &dr.spec.traffic_policy {
        policy("trafficPolicy", p, &mut out);
    }
    for s in &dr.spec.subsets {
        if let Some(p) = &s.traffic_policy {
            policy(&format!("subsets[{}].trafficPolicy", s.name), p, &mut out);
        }
    }
    out
}

/// A `corsPolicy` as Istio translates it for Envoy's CORS filter: lists joined with commas, the
/// max age in seconds, unmatched preflights forwarded unless `IGNORE`.
fn cors(ctx: &mut Ctx<'_>, c: &api::CorsPolicy, origin: &Origin, field: &str) -> super::route::Cors {
    let mut origins: Vec<StrMatch> = c.allow_origin.iter().map(|o| StrMatch::Exact(o.clone())).collect();
    for (i, m) in c.allow_origins.iter().enumerate() {
        origins.extend(string_match(ctx, m, origin, &format!("{field}.allowOrigins[{i}]")));
    }
    let joined = |v: &[String]| (!v.is_empty()).then(|| v.join(",")).and_then(|s| HeaderValue::from_str(&s).ok());
    super::route::Cors {
        origins,
        methods: joined(&c.allow_methods),
        headers: joined(&c.allow_headers),
        expose: joined(&c.expose_headers),
        max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        credentials: c.allow_credentials == Some(true),
        forward_unmatched: c.unmatched_preflights != Some(api::UnmatchedPreflights::Ignore),
    }
}

fn lb_policy(lb: Option<&api::LoadBalancerSettings>, endpoints: &[Endpoint]) -> LbPolicy {
    let Some(lb) = lb else { return LbPolicy::LeastRequest };
    if let Some(ch) = &lb.consistent_hash {
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashKey::Cookie { name: c.name.clone(), path: c.path.clone(), ttl: c.ttl.as_ref().map(|d| d.0) }
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParam(q.clone())
        } else {
            HashKey::SourceIp
        };
        let keys: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        let table = match &ch.maglev {
            Some(m) => HashTable::maglev(&keys, m.table_size.unwrap_or(65537)),
            None => HashTable::ring(
                &keys,
                ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).or(ch.minimum_ring_size).unwrap_or(1024),
            ),
        };
        return LbPolicy::Hash { key, table: Arc::new(table) };
    }
    match lb.simple.as_ref() {
        Some(api::SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(api::SimpleLb::Random) => LbPolicy::Random,
        Some(api::SimpleLb::Passthrough) => LbPolicy::Passthrough,
        _ => LbPolicy::LeastRequest,
    }
}

/// Resolves a route destination to its clusters (one per service port, or the named port).
fn target(ctx: &mut Ctx<'_>, input: &CompileInput<'_>, d: &api::Destination, vs_ns: &str, who: &str) -> Target {
    let fqdn = resolve_short_name(&d.host, vs_ns);
    let Some(svc) = ctx.services.get(&fqdn).cloned() else {
        ctx.warnings.push(format!("{who}: destination host {} is not a known service (NC)", d.host));
        return Target::Missing(fqdn);
    };
    let ports: Vec<u16> = match d.port.as_ref().and_then(|p| u16::try_from(p.number).ok()) {
        Some(p) => vec![p],
        None => svc.ports.iter().map(|p| p.port).collect(),
    };
    let mut out = Vec::new();
    for port in ports {
        match cluster_for(ctx, input, &svc, port, d.subset.as_deref()) {
            Ok(c) => out.push((port, c)),
            Err(why) => {
                ctx.warnings.push(format!("{who}: {why} (NC)"));
                return Target::Missing(why);
            }
        }
    }
    if out.is_empty() {
        Target::Missing(fqdn)
    } else {
        Target::Clusters(out)
    }
}

fn compile_routes(
    ctx: &mut Ctx<'_>,
    input: &CompileInput<'_>,
    vs: &VsObj,
    origin: &Origin,
    parents: &[Arc<[RequestMatch]>],
    depth: usize,
) -> Vec<HttpRoute> {
    let vs_ns = vs.metadata.ns().to_string();
    let vs_name = format!("{vs_ns}/{}", vs.metadata.name());
    let semantics = Semantics::of(vs);
    let mut out = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let matches: Vec<RequestMatch> = r
            .r#match
            .iter()
            .enumerate()
            .map(|(j, m)| compile_match(ctx, m, (&vs_ns, semantics), origin, &format!("{field}.match[{j}]")))
            .collect();
        if let Some(del) = &r.delegate {
            let ns = del.namespace.clone().unwrap_or_else(|| vs_ns.clone());
            let key = format!("{ns}/{}", del.name.as_deref().unwrap_or(""));
            let Some((child, child_origin)) = ctx.vs_by_name.get(&key).copied() else {
                ctx.warnings.push(format!("{vs_name}: delegate VirtualService {key} not found"));
                continue;
            };
            if depth > 0 {
                ctx.err(origin, format!("{field}.delegate"), "delegation is only one level deep".into());
                continue;
            }
            let mut p = parents.to_vec();
            if !matches.is_empty() {
                p.push(matches.into());
            }
            out.extend(compile_routes(ctx, input, child, child_origin, &p, depth + 1));
            continue;
        }
        let action = if let Some(redir) = &r.redirect {
            RouteAction::Redirect(Redirect {
                uri: redir.uri.clone(),
                prefix_rewrite: redir.prefix_rewrite.clone(),
                whole_segments: semantics == Semantics::Gateway,
                authority: redir.authority.clone(),
                port: match (redir.port, &redir.derive_port) {
                    (Some(p), _) => u16::try_from(p).ok().map(RedirectPort::Number),
                    (None, Some(api::RedirectPortSelection::FromRequestPort)) => Some(RedirectPort::FromRequestPort),
                    (None, Some(api::RedirectPortSelection::FromProtocolDefault)) => {
                        Some(RedirectPort::FromProtocolDefault)
                    }
                    (None, None) => None,
                },
                scheme: redir.scheme.clone(),
                code: redir.redirect_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(301),
            })
        } else if let Some(dr) = &r.direct_response {
            let body = match &dr.body {
                None => Bytes::new(),
                Some(b) => match (&b.string, &b.bytes) {
                    (Some(s), _) => Bytes::from(s.clone()),
                    (None, Some(b64)) => match base64_decode(b64) {
                        Some(v) => Bytes::from(v),
                        None => {
                            ctx.err(origin, format!("{field}.directResponse.body.bytes"), "not valid base64".into());
                            Bytes::new()
                        }
                    },
                    (None, None) => Bytes::new(),
                },
            };
            RouteAction::Direct { status: u16::try_from(dr.status).unwrap_or(500), body }
        } else if !r.route.is_empty() {
            let single = r.route.len() == 1;
            let mut targets = Vec::new();
            for (j, d) in r.route.iter().enumerate() {
                let weight = match d.weight {
                    Some(w) => u32::try_from(w).unwrap_or(0),
                    None if single => 100,
                    None => 0,
                };
                let who = format!("VirtualService {vs_name} ({origin})");
                let t = target(ctx, input, &d.destination, &vs_ns, &who);
                let h = headers(ctx, &d.headers, origin, &format!("{field}.route[{j}].headers"));
                targets.push(WeightedTarget { weight, target: t, headers: h });
            }
            let total = targets.iter().map(|t| t.weight).sum();
            RouteAction::Forward { targets, total }
        } else {
            ctx.err(
                origin,
                field.clone(),
                "an HTTP route needs one of route, redirect, directResponse or delegate".into(),
            );
            continue;
        };
        let rewrite = r.rewrite.as_ref().map(|rw| Rewrite {
            whole_segments: semantics == Semantics::Gateway,
            uri: rw.uri.clone(),
            authority: rw.authority.clone(),
            uri_regex: rw.uri_regex_rewrite.as_ref().and_then(|rr| {
                match Regex::new(rr.r#match.as_deref().unwrap_or("")) {
                    Ok(re) => Some((re, go_to_rust_replacement(rr.rewrite.as_deref().unwrap_or("")))),
                    Err(e) => {
                        ctx.err(
                            origin,
                            format!("{field}.rewrite.uriRegexRewrite.match"),
                            format!("invalid regular expression: {e}"),
                        );
                        None
                    }
                }
            }),
        });
        let mut policy = route_policy(ctx, input, r, &vs_ns, origin, &field);
        policy.cors = r.cors_policy.as_ref().map(|c| Arc::new(cors(ctx, c, origin, &format!("{field}.corsPolicy"))));
        out.push(HttpRoute {
            name: r.name.as_deref().map(Arc::from),
            virtual_service: vs_name.clone(),
            parent_matches: parents.to_vec(),
            matches,
            action,
            rewrite,
            headers: headers(ctx, &r.headers, origin, &format!("{field}.headers")),
            policy,
            missing: match semantics {
                Semantics::Gateway => LocalReply::NoClusterInternal,
                Semantics::Istio => LocalReply::NoCluster,
            },
        });
    }
    out
}

/// Timeout, retries, fault and mirrors of a route. Per the Istio API, a route
/// with a fault gets neither its retries nor its timeout at the client.
fn route_policy(
    ctx: &mut Ctx<'_>,
    input: &CompileInput<'_>,
    r: &api::HttpRoute,
    vs_ns: &str,
    origin: &Origin,
    field: &str,
) -> RoutePolicy {
    let fault = r.fault.as_ref().and_then(|f| match Fault::from_api(f) {
        Ok(f) => Some(f),
        Err(e) => {
            ctx.err(origin, format!("{field}.fault"), e);
            None
        }
    });
    let retry = match RetryPolicy::from_api(r.retries.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            ctx.err(origin, format!("{field}.retries"), e);
            RetryPolicy::default()
        }
    };
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        let pct = r.mirror_percentage.as_ref().map(|p| p.value).or(r.mirror_percent.map(f64::from)).unwrap_or(100.0);
        mirrors.push(Mirror {
            target: target(ctx, input, m, vs_ns, &format!("VirtualService {vs_ns} ({origin}) mirror")),
            percentage: pct.clamp(0.0, 100.0),
        });
    }
    for m in &r.mirrors {
        let pct = m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
        mirrors.push(Mirror {
            target: target(ctx, input, &m.destination, vs_ns, &format!("VirtualService {vs_ns} ({origin}) mirror")),
            percentage: pct.clamp(0.0, 100.0),
        });
    }
    let faulty = fault.is_some();
    RoutePolicy {
        timeout: if faulty { None } else { r.timeout.as_ref().map(|d| d.0).filter(|d| !d.is_zero()) },
        retry: if faulty { RetryPolicy::none() } else { retry },
        fault,
        mirrors,
        cors: None,
    }
}

/// Envoy's `\1` groups become the regex crate's `${1}`.
fn go_to_rust_replacement(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                chars.next();
                out.push_str(&format!("${{{d}}}"));
                continue;
            }
        }
        if c == '$' {
            out.push_str("$$");
            continue;
        }
        out.push(c);
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// Keeps only the matches that apply through `gateway` (`mesh` or `ns/name`); None if none is left.
fn bind_routes(routes: &[HttpRoute], gateway: &str) -> Vec<HttpRoute> {
    routes
        .iter()
        .filter_map(|r| {
            let mut r = r.clone();
            if !r.matches.is_empty() {
                r.matches.retain(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == gateway));
                if r.matches.is_empty() {
                    return None;
                }
                for m in &mut r.matches {
                    m.gateways.clear();
                }
            }
            Some(r)
        })
        .collect()
}

/// A TCP server of the gateway with the `tcp` routes of the VirtualServices bound to it.
fn tcp_server(
    ctx: &mut Ctx<'_>,
    input: &CompileInput<'_>,
    virtual_services: &[(&VsObj, &Origin)],
    gw_ref: &str,
    port: u32,
) -> super::tcp::TcpServer {
    let mut routes = Vec::new();
    for (vs, origin) in virtual_services {
        let vs_ns = vs.metadata.ns();
        if !vs.spec.gateways.iter().any(|g| gateway_ref(g, vs_ns) == gw_ref) {
            continue;
        }
        let vs_name = format!("{vs_ns}/{}", vs.metadata.name());
        for r in &vs.spec.tcp {
            let applies = r.r#match.is_empty()
                || r.r#match.iter().any(|m| {
                    m.port.is_none_or(|p| p == port)
                        && (m.gateways.is_empty() || m.gateways.iter().any(|g| gateway_ref(g, vs_ns) == gw_ref))
                });
            if !applies {
                continue;
            }
            let single = r.route.len() == 1;
            let who = format!("VirtualService {vs_name} ({origin})");
            let targets: Vec<(u32, Target)> = r
                .route
                .iter()
                .map(|d| {
                    let w = d.weight.map(|w| u32::try_from(w).unwrap_or(0)).unwrap_or(if single { 100 } else { 0 });
                    (w, target(ctx, input, &d.destination, vs_ns, &who))
                })
                .collect();
            let total = targets.iter().map(|(w, _)| w).sum();
            routes.push(Arc::new(super::tcp::TcpRoute { virtual_service: vs_name.clone(), targets, total }));
        }
    }
    super::tcp::TcpServer { port: u16::try_from(port).unwrap_or(0), gateway: gw_ref.to_string(), routes }
}

/// Binds the VirtualServices that name gateway `gw_ref` to one server host.
fn bind_server(
    table: &mut Vec<(HostPattern, Vec<HttpRoute>)>,
    compiled: &[(&VsObj, Vec<HttpRoute>)],
    gw_ref: &str,
    host_ns: Option<&str>,
    server_pattern: &HostPattern,
) {
    for (vs, routes) in compiled {
        let vs_ns = vs.metadata.ns();
        if host_ns.is_some_and(|ns| ns != vs_ns) || !vs.spec.gateways.iter().any(|g| gateway_ref(g, vs_ns) == gw_ref) {
            continue;
        }
        let bound = bind_routes(routes, gw_ref);
        let vs_name = format!("{vs_ns}/{}", vs.metadata.name());
        for vs_host in &vs.spec.hosts {
            let vs_pattern = HostPattern::parse(&resolve_short_name(vs_host, vs_ns));
            if !vs_pattern.intersects(server_pattern) {
                continue;
            }
            let pattern = if vs_pattern.specificity() <= server_pattern.specificity() {
                vs_pattern
            } else {
                server_pattern.clone()
            };
            match table.iter_mut().find(|(p, _)| *p == pattern) {
                // Routes of several VirtualServices for one host merge, in order; each VS once.
                Some((_, rs)) => {
                    if !rs.iter().any(|r| r.virtual_service == vs_name) {
                        rs.extend(bound.iter().cloned());
                    }
                }
                None => table.push((pattern, bound.clone())),
            }
        }
    }
}

/// Virtual hosts, most specific pattern first.
fn vhosts(by_pattern: Vec<(HostPattern, Vec<HttpRoute>)>) -> Vec<(HostPattern, Arc<VirtualHost>)> {
    let mut v: Vec<_> = by_pattern
        .into_iter()
        .map(|(p, routes)| {
            let name = p.to_string();
            (p, Arc::new(VirtualHost { name, routes: routes.into() }))
        })
        .collect();
    v.sort_by_key(|(p, _)| p.specificity());
    v
}

/// Every host alias a caller in `caller_ns` may use for a service.
fn aliases(svc: &Service, caller_ns: &str) -> Vec<String> {
    if svc.selector.is_empty() && svc.fqdn == svc.name {
        // A ServiceEntry host is only known by its own name.
        return vec![svc.fqdn.clone()];
    }
    let mut v = vec![
        svc.fqdn.clone(),
        format!("{}.{}", svc.name, svc.namespace),
        format!("{}.{}.svc", svc.name, svc.namespace),
    ];
    if svc.namespace == caller_ns {
        v.push(svc.name.clone());
    }
    v
}

/// Registers a ServiceEntry's hosts as services: STATIC endpoints, or for DNS resolution the
/// host itself resolved now (meshd reaches loopback only, so `localhost`-like names).
fn service_entry(ctx: &mut Ctx<'_>, se: &api::Object<api::ServiceEntrySpec>, origin: &Origin) {
    let ns = se.metadata.ns().to_string();
    let ports: Vec<super::ServicePort> = se
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.number).ok()?;
            let target = p.target_port.and_then(|t| u16::try_from(t).ok()).unwrap_or(port);
            let tcp = super::is_tcp_port(&p.name, p.protocol.as_deref().map(str::to_ascii_lowercase).as_deref());
            Some(super::ServicePort { name: p.name.clone(), port, target_port: TargetPort::Number(target), tcp })
        })
        .collect();
    for host in &se.spec.hosts {
        if host.starts_with('*') {
            ctx.warnings.push(format!(
                "ServiceEntry {ns}/{} ({origin}): wildcard host {host} not emulated",
                se.metadata.name()
            ));
            continue;
        }
        let mut external = Vec::new();
        for e in &se.spec.endpoints {
            let Some(addr) = &e.address else { continue };
            let ip = addr.parse().ok().or_else(|| resolve(addr));
            match ip {
                Some(ip) => external.push(ExternalEndpoint {
                    ip,
                    ports: e.ports.iter().filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?))).collect(),
                    labels: e.labels.clone(),
                }),
                None => ctx
                    .warnings
                    .push(format!("ServiceEntry {ns}/{}: endpoint {addr} does not resolve", se.metadata.name())),
            }
        }
        if se.spec.endpoints.is_empty()
            && matches!(se.spec.resolution, Some(api::Resolution::Dns | api::Resolution::DnsRoundRobin))
        {
            match resolve(host) {
                Some(ip) => external.push(ExternalEndpoint { ip, ports: BTreeMap::new(), labels: Labels::new() }),
                None => ctx.warnings.push(format!(
                    "ServiceEntry {ns}/{} ({origin}): {host} does not resolve here (meshd reaches loopback only): 503 UH",
                    se.metadata.name()
                )),
            }
        }
        let fqdn = host.to_ascii_lowercase();
        ctx.services.insert(
            fqdn.clone(),
            Arc::new(Service {
                name: fqdn.clone(),
                namespace: ns.clone(),
                fqdn,
                ports: ports.clone(),
                selector: Labels::new(),
                external,
                order: usize::MAX,
            }),
        );
    }
}

/// Resolves a name to a loopback address (the only kind meshd may reach).
fn resolve(host: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).find(|ip| ip.is_loopback())
}

/// Compiles a snapshot, or returns every error found.
pub fn compile(input: CompileInput<'_>) -> Result<Snapshot, Vec<ConfigError>> {
    // The Gateway API kinds route as the Istio kinds Istio makes of them.
    let translated = crate::config::translate_gateway_api::translate(input.resources);
    let (made, made_errors, made_warnings) = (translated.resources, translated.errors, translated.warnings);
    let resources: Vec<&Located> = input.resources.iter().chain(&made).collect();
    let mut ctx = Ctx {
        errors: vec![],
        services: HashMap::new(),
        clusters: HashMap::new(),
        rules: HashMap::new(),
        vs_by_name: HashMap::new(),
        warnings: vec![],
        peer_auth: PeerAuthTable::default(),
        secrets: super::gateway_tls::secrets(input.resources),
    };
    for (order, s) in input.workloads.services.iter().enumerate() {
        let fqdn = crate::config::service_fqdn(&s.meta.name, &s.meta.namespace);
        ctx.services.insert(
            fqdn.clone(),
            Arc::new(Service {
                name: s.meta.name.clone(),
                namespace: s.meta.namespace.clone(),
                fqdn,
                ports: s.ports.clone(),
                selector: s.selector.clone(),
                external: vec![],
                order,
            }),
        );
    }
    ctx.errors.extend(made_errors);
    ctx.warnings.extend(made_warnings);
    for r in &resources {
        if let Resource::ServiceEntry(se) = &r.resource {
            service_entry(&mut ctx, se, &r.origin);
        }
    }
    let mut virtual_services: Vec<(&VsObj, &Origin)> = Vec::new();
    let mut gateways: Vec<(&GwObj, &Origin)> = Vec::new();
    let mut envoy_filters = Vec::new();
    let mut peer_auths = Vec::new();
    let mut authz_policies = Vec::new();
    let mut request_authns = Vec::new();
    let mut kinds_not_emulated = Vec::new();
    for r in &resources {
        match &r.resource {
            Resource::VirtualService(vs) => {
                ctx.vs_by_name.insert(format!("{}/{}", vs.metadata.ns(), vs.metadata.name()), (vs, &r.origin));
                virtual_services.push((vs, &r.origin));
            }
            Resource::DestinationRule(dr) => {
                for field in unemulated_policy_fields(dr) {
                    kinds_not_emulated.push(format!(
                        "DestinationRule {}/{} ({}): {field}",
                        dr.metadata.ns(),
                        dr.metadata.name(),
                        r.origin
                    ));
                }
                let host = resolve_short_name(&dr.spec.host, dr.metadata.ns());
                // Istio prefers the rule in the service's own namespace; otherwise the first one seen.
                let own_ns = ctx.services.get(&host).map(|s| s.namespace.as_str() == dr.metadata.ns()).unwrap_or(false);
                if own_ns || !ctx.rules.contains_key(&host) {
                    ctx.rules.insert(host, (dr, &r.origin));
                }
            }
            Resource::Gateway(gw) => gateways.push((gw, &r.origin)),
            Resource::EnvoyFilter(ef) => envoy_filters.push((ef, r.origin.to_string())),
            Resource::PeerAuthentication(pa) => peer_auths.push(pa),
            Resource::AuthorizationPolicy(ap) => authz_policies.push((ap, r.origin.to_string())),
            Resource::RequestAuthentication(ra) => request_authns.push(ra),
            Resource::Namespace(_) | Resource::Service(_) | Resource::ServiceAccount(_) | Resource::Deployment(_) => {}
            // Parsed and validated, but meshd does not act on these kinds yet: say so, never ignore silently.
            Resource::Secret(_) => {}
            Resource::ServiceEntry(_) => {}
            // Translated above.
            Resource::K8sGateway(_) | Resource::HttpRouteK8s(_) | Resource::TcpRouteK8s(_) => {}
            other => kinds_not_emulated.push(format!("{} ({})", crate::config::resource_key(other), r.origin)),
        }
    }
    for (vs, origin) in &virtual_services {
        let (ns, name) = (vs.metadata.ns(), vs.metadata.name());
        if !vs.spec.tls.is_empty() {
            kinds_not_emulated.push(format!("VirtualService {ns}/{name} ({origin}): tls routes"));
        }
        let for_mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if !vs.spec.tcp.is_empty() && for_mesh {
            kinds_not_emulated.push(format!("VirtualService {ns}/{name} ({origin}): tcp routes between sidecars"));
        }
    }

    let (authz, authz_warnings) = crate::security::authz::AuthzTable::compile(&authz_policies);
    ctx.warnings.extend(authz_warnings);
    let jwks_for = |uri: &str| -> Result<String, String> {
        if let Some(r) = input.jwks.get(uri) {
            return r.clone();
        }
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        let path = match input.base {
            Some(b) if std::path::Path::new(path).is_relative() => b.join(path),
            _ => std::path::PathBuf::from(path),
        };
        std::fs::read_to_string(&path).map_err(|e| format!("jwksUri {uri}: {e}"))
    };
    let (jwt, jwt_warnings) = crate::security::jwt::JwtTable::compile(&request_authns, &jwks_for);
    ctx.warnings.extend(jwt_warnings);
    let (peer_auth, pa_warnings) = PeerAuthTable::compile(&peer_auths);
    ctx.peer_auth = peer_auth;
    ctx.warnings.extend(pa_warnings);

    // Routes of every VS that is not a delegate.
    let mut compiled: Vec<(&VsObj, Vec<HttpRoute>)> = Vec::new();
    for (vs, origin) in &virtual_services {
        if vs.spec.hosts.is_empty() {
            continue; // a delegate: compiled into its parents
        }
        let routes = compile_routes(&mut ctx, &input, vs, origin, &[], 0);
        compiled.push((vs, routes));
    }

    // Sidecar tables, one per caller namespace.
    let mut caller_namespaces: HashSet<String> = input.pods.iter().map(|p| p.namespace.clone()).collect();
    caller_namespaces.insert("default".into());
    let mut mesh_vhosts: Vec<(String, Arc<VirtualHost>)> = Vec::new();
    for (vs, routes) in &compiled {
        let bound_to_mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if !bound_to_mesh {
            continue;
        }
        let routes: Arc<[HttpRoute]> = bind_routes(routes, "mesh").into();
        for h in &vs.spec.hosts {
            let fqdn = resolve_short_name(h, vs.metadata.ns());
            if mesh_vhosts.iter().any(|(k, _)| *k == fqdn) {
                continue; // the first VirtualService for a host wins
            }
            mesh_vhosts.push((fqdn.clone(), Arc::new(VirtualHost { name: fqdn, routes: routes.clone() })));
        }
    }
    let mut services: Vec<Arc<Service>> = ctx.services.values().cloned().collect();
    services.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
    let mut default_vhosts: HashMap<String, Arc<VirtualHost>> = HashMap::new();
    for svc in &services {
        let targets: Vec<(u16, Arc<Cluster>)> = svc
            .ports
            .iter()
            .filter_map(|p| cluster_for(&mut ctx, &input, svc, p.port, None).ok().map(|c| (p.port, c)))
            .collect();
        let route = HttpRoute {
            name: Some("default".into()),
            virtual_service: String::new(),
            parent_matches: vec![],
            matches: vec![],
            action: RouteAction::Forward {
                targets: vec![WeightedTarget {
                    weight: 100,
                    target: Target::Clusters(targets),
                    headers: Headers::default(),
                }],
                total: 100,
            },
            rewrite: None,
            headers: Headers::default(),
            policy: RoutePolicy::default(),
            missing: LocalReply::NoCluster,
        };
        default_vhosts
            .insert(svc.fqdn.clone(), Arc::new(VirtualHost { name: svc.fqdn.clone(), routes: vec![route].into() }));
    }
    let mut mesh = HashMap::new();
    for ns in &caller_namespaces {
        let mut table = MeshTable::default();
        for svc in &services {
            let vh = mesh_vhosts
                .iter()
                .find(|(k, _)| *k == svc.fqdn)
                .map(|(_, v)| v.clone())
                .or_else(|| default_vhosts.get(&svc.fqdn).cloned());
            if let Some(vh) = vh {
                for a in aliases(svc, ns) {
                    table.hosts.insert(a, vh.clone());
                }
            }
            if let Some(vh) = default_vhosts.get(&svc.fqdn) {
                for a in aliases(svc, ns) {
                    table.plain.insert(a, vh.clone());
                }
            }
        }
        for (host, vh) in &mesh_vhosts {
            match HostPattern::parse(host) {
                HostPattern::Exact(h) => {
                    table.hosts.entry(h).or_insert_with(|| vh.clone());
                }
                p => table.wildcards.push((p, vh.clone())),
            }
        }
        table.wildcards.sort_by_key(|(p, _)| p.specificity());
        mesh.insert(ns.clone(), table);
    }

    // The ingress gateway: HTTP servers on 80/8080 share one listener, HTTPS servers on 443/8443 another.
    let gw_labels = ingress_labels();
    let secrets = ctx.secrets.clone();
    let mut http_hosts: Vec<(HostPattern, Vec<HttpRoute>)> = Vec::new();
    let mut https_hosts: Vec<(HostPattern, Vec<HttpRoute>)> = Vec::new();
    let mut ingress = GatewayTable::default();
    let mut ingress_tls = GatewayTable::default();
    let mut tls_servers = Vec::new();
    let mut tcp_servers = Vec::new();
    for (gw, origin) in &gateways {
        let selects = super::selects(&gw.spec.selector, &gw_labels);
        if !selects {
            continue;
        }
        let gw_ns = gw.metadata.ns();
        let gw_ref = format!("{gw_ns}/{}", gw.metadata.name());
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let port = server.port.number;
            let proto = server.port.protocol.to_ascii_uppercase();
            if proto == "TCP" {
                tcp_servers.push(Arc::new(tcp_server(&mut ctx, &input, &virtual_services, &gw_ref, port)));
                continue;
            }
            let http = matches!(port, 80 | 8080) && matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC");
            let https = matches!(port, 443 | 8443) && proto == "HTTPS";
            if !http && !https {
                ctx.warnings.push(format!("Gateway {gw_ref}: server port {port} {proto} not emulated yet"));
                continue;
            }
            let redirect = server.tls.as_ref().and_then(|t| t.https_redirect).unwrap_or(false);
            if https {
                let Some(tls) = &server.tls else {
                    ctx.err(origin, format!("spec.servers[{i}].tls"), "an HTTPS server needs tls".into());
                    continue;
                };
                match super::gateway_tls::server_config(tls, gw_ns, &secrets, input.base) {
                    Ok(config) => tls_servers.push(Arc::new(super::gateway_tls::TlsServer {
                        gateway: gw_ref.clone(),
                        hosts: server
                            .hosts
                            .iter()
                            .map(|h| HostPattern::parse(h.rsplit('/').next().unwrap_or(h)))
                            .collect(),
                        config,
                    })),
                    Err(e) => {
                        ctx.warnings
                            .push(format!("Gateway {gw_ref} ({origin}) server {i}: {e}: this server is not served"));
                        continue;
                    }
                }
                ingress_tls.servers.push(format!("{gw_ref} {port} {}", server.hosts.join(",")));
            } else {
                ingress.servers.push(format!("{gw_ref} {port} {}", server.hosts.join(",")));
            }
            let table = if https { &mut https_hosts } else { &mut http_hosts };
            for server_host in &server.hosts {
                let (host_ns, host) = match server_host.split_once('/') {
                    Some((".", h)) => (Some(gw_ns.to_string()), h),
                    Some(("*", h)) => (None, h),
                    Some((ns, h)) => (Some(ns.to_string()), h),
                    None => (None, server_host.as_str()),
                };
                let server_pattern = HostPattern::parse(host);
                if redirect && http {
                    ingress.https_redirect.push(server_pattern.clone());
                    continue;
                }
                bind_server(table, &compiled, &gw_ref, host_ns.as_deref(), &server_pattern);
            }
        }
    }
    ingress.vhosts = vhosts(http_hosts);
    ingress_tls.vhosts = vhosts(https_hosts);

    if !ctx.errors.is_empty() {
        return Err(ctx.errors);
    }
    let mesh_client = mesh_client(input.pods);
    let (rate_limits, ignored_patches) = super::ratelimit::compile(&envoy_filters);
    let mut not_emulated: Vec<String> =
        input.not_emulated.iter().map(|n| format!("{} {} ({})", n.kind, n.name, n.origin)).collect();
    not_emulated.extend(kinds_not_emulated);
    not_emulated.extend(ignored_patches);
    Ok(Snapshot {
        generation: input.generation,
        services: ctx.services,
        mesh,
        ingress,
        ingress_tls,
        tls_servers,
        tcp_servers,
        clusters: {
            let mut v: Vec<Arc<Cluster>> = ctx.clusters.into_values().collect();
            v.sort_by_key(|c| c.index);
            v
        },
        pods: input.pods.to_vec(),
        mesh_client: Some(Arc::new(mesh_client)),
        rate_limits: rate_limits.into_iter().map(Arc::new).collect(),
        peer_auth: ctx.peer_auth,
        authz,
        jwt,
        warnings: {
            let mut w = ctx.warnings;
            w.dedup();
            w
        },
        not_emulated,
        resources: input
            .resources
            .iter()
            .map(|r| format!("{} ({})", crate::config::resource_key(&r.resource), r.origin))
            .collect(),
    })
}

/// The workload behind the shared outbound port: fortio, else sleep, else curl, else a bare client.
fn mesh_client(pods: &[PodInfo]) -> Workload {
    for app in ["fortio", "sleep", "curl"] {
        if let Some(p) = pods.iter().find(|p| p.labels.get("app").map(String::as_str) == Some(app)) {
            return Workload {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                labels: p.labels.clone(),
                service_account: p.service_account.clone(),
                deployment: p.workload.clone(),
            };
        }
    }
    Workload {
        name: super::MESH_CLIENT.into(),
        namespace: "default".into(),
        labels: [("app".to_string(), super::MESH_CLIENT.to_string())].into_iter().collect(),
        service_account: "default".into(),
        deployment: super::MESH_CLIENT.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_groups() {
        assert_eq!(go_to_rust_replacement(r"/\2/instance/\1"), "/${2}/instance/${1}");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    }

    #[test]
    fn gateway_refs() {
        assert_eq!(gateway_ref("bookinfo-gateway", "default"), "default/bookinfo-gateway");
        assert_eq!(gateway_ref("istio-system/gw", "default"), "istio-system/gw");
        assert_eq!(gateway_ref("mesh", "default"), "mesh");
    }
}
