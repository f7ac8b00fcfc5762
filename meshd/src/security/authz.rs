//! Istio `AuthorizationPolicy` evaluation, as the server-side proxy (sidecar
//! inbound or ingress gateway) enforces it.
//!
//! [`AuthzTable::compile`] turns every policy into matchers once; then
//! [`AuthzTable::evaluate`] decides a request for one [`Target`] in Istio's
//! documented order:
//!
//! 1. a CUSTOM policy denies everything: meshd has no extension providers, and Istio installs
//!    a deny-all for a provider it cannot find (reported);
//! 2. any matching DENY policy denies;
//! 3. no ALLOW policy on the workload allows;
//! 4. any matching ALLOW policy allows;
//! 5. otherwise deny.
//!
//! AUDIT policies never change the decision, nor do dry-run policies
//! (annotation `istio.io/dry-run: "true"`).
//!
//! Matching follows the `security.istio.io` reference: a policy without
//! `rules` matches nothing, an empty rule matches everything; a rule needs one
//! `from`, one `to` and every `when`; fields of a source or operation are
//! ANDed, values of a field ORed, and `notX` values must all miss. Every string
//! supports exact, `prefix*`, `*suffix` and `*` (non-empty) forms, and paths
//! also the `{*}` / `{**}` templates. mTLS-only attributes (principals,
//! namespaces) and the JWT ones are compared as if empty when absent, so a
//! positive match fails and a `notX` match succeeds, as the Istio security
//! bulletin ISTIO-SECURITY-2021-004 describes.
//!
//! On TCP traffic the HTTP-only attributes cannot be read: a DENY (or AUDIT)
//! rule ignores them, so it matches more, while an ALLOW rule using them is
//! dropped, so it matches nothing ("missing attributes are treated as
//! matches" for DENY).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::api;

/// The Istio root namespace: policies there apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Annotation that makes a policy dry-run (evaluated, never enforced).
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Who a policy protects: a workload (namespace + labels), or the ingress
/// gateway (namespace `istio-system`, labels `istio=ingressgateway`,
/// `app=istio-ingressgateway`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Namespace of the workload.
    pub namespace: &'a str,
    /// Labels of the workload (pod template labels).
    pub labels: &'a BTreeMap<String, String>,
}

/// What a request carries, as the server-side proxy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Peer identity from the mTLS client certificate, without `spiffe://`,
    /// e.g. `cluster.local/ns/default/sa/bookinfo-productpage`; `None` on
    /// plaintext.
    pub source_principal: Option<&'a str>,
    /// Namespace from the peer identity; `None` on plaintext.
    pub source_namespace: Option<&'a str>,
    /// Peer (downstream connection) address.
    pub source_ip: Option<IpAddr>,
    /// Original client address: the last `X-Forwarded-For` entry (no trusted hops), else the
    /// peer address.
    pub remote_ip: Option<IpAddr>,
    /// Local address the connection arrived on (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
    /// `<iss>/<sub>` of a validated JWT.
    pub request_principal: Option<&'a str>,
    /// Payload of the validated JWT, for `request.auth.claims[...]`;
    /// `request.auth.audiences` reads its `aud` and `request.auth.presenter`
    /// its `azp`.
    pub claims: Option<&'a serde_json::Value>,
    /// `:authority` / `Host` as received (with the port when the client sent one).
    pub host: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Request path without the query string.
    pub path: &'a str,
    /// Destination (container) port.
    pub port: u16,
    /// Request headers (empty for TCP).
    pub headers: &'a http::HeaderMap,
    /// TLS server name of the downstream connection.
    pub sni: Option<&'a str>,
    /// TCP traffic: HTTP-only attributes are unavailable.
    pub tcp: bool,
}

impl Default for Request<'_> {
    /// An empty request: no identities, no addresses, no headers, port 0.
    fn default() -> Self {
        // A `&HeaderMap` has no default, so borrow one shared empty map.
        static EMPTY: std::sync::OnceLock<http::HeaderMap> = std::sync::OnceLock::new();
        Request {
            source_principal: None,
            source_namespace: None,
            source_ip: None,
            remote_ip: None,
            destination_ip: None,
            request_principal: None,
            claims: None,
            host: "",
            method: "",
            path: "",
            port: 0,
            headers: EMPTY.get_or_init(http::HeaderMap::new),
            sni: None,
            tcp: false,
        }
    }
}

/// The outcome of [`AuthzTable::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed.
    Allow,
    /// The request is denied (HTTP 403 `RBAC: access denied`, or a closed
    /// TCP connection).
    Deny {
        /// Envoy's RBAC access-log detail: `ns[<ns>]-policy[<name>]-rule[<i>]`
        /// for the DENY rule that matched, `none` when no ALLOW rule did.
        policy: String,
    },
}

/// Policy actions meshd enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Allow,
    Deny,
    Audit,
    /// A CUSTOM policy, whose provider meshd cannot have (it reads no meshConfig): Istio then
    /// installs a deny-all in front of the workload's other policies.
    Custom,
}

/// The RBAC policy Istio installs for a CUSTOM action whose provider it cannot resolve.
const BAD_CUSTOM: &str = "default-deny-all-due-to-bad-CUSTOM-action";

/// A compiled string pattern: Istio's exact, `prefix*`, `*suffix` and `*`
/// forms. A leading `*` wins over a trailing one, as in Istio's generator.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value.
    Presence,
}

impl StrMatch {
    /// Parses a pattern; `fold` lowercases it for case-insensitive fields.
    fn parse(pattern: &str, fold: bool) -> StrMatch {
        let p = if fold { pattern.to_ascii_lowercase() } else { pattern.to_string() };
        if p == "*" {
            StrMatch::Presence
        } else if let Some(rest) = p.strip_prefix('*') {
            StrMatch::Suffix(rest.to_string())
        } else if let Some(rest) = p.strip_suffix('*') {
            StrMatch::Prefix(rest.to_string())
        } else {
            StrMatch::Exact(p)
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value == e,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Suffix(s) => value.ends_with(s.as_str()),
            StrMatch::Presence => !value.is_empty(),
        }
    }
}

/// One segment of a path template before `{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// `{*}`: exactly one non-empty segment.
    One,
}

/// A path template (`/foo/{*}/bar/{**}`), read as an Envoy URI template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathTemplate {
    /// Segments (split on `/`) before `{**}`, or all of them without it.
    head: Vec<Seg>,
    /// With `{**}`: the literal text after it (e.g. `/` or `/bar`); it may
    /// span segments, so it is kept as one string.
    tail: Option<String>,
}

impl PathTemplate {
    /// True when the pattern uses a template operator and must be read as one.
    fn is_template(pattern: &str) -> bool {
        pattern.contains("{*}") || pattern.contains("{**}")
    }

    /// Parses a template, enforcing the documented rules: no `*`, `{` or `}`
    /// outside an operator, an operator fills its whole segment, and `{**}`
    /// is the last operator.
    fn parse(pattern: &str) -> Result<PathTemplate, String> {
        let mut head = Vec::new();
        let mut segs = pattern.split('/');
        for seg in segs.by_ref() {
            match seg {
                "{*}" => head.push(Seg::One),
                "{**}" => {
                    let rest: Vec<&str> = segs.collect();
                    for lit in &rest {
                        if lit.contains(['*', '{', '}']) {
                            return Err(format!(
                                "path template `{pattern}`: `{{**}}` must be the last operator and nothing else may use `*`, `{{` or `}}`"
                            ));
                        }
                    }
                    let tail = rest.iter().map(|s| format!("/{s}")).collect::<String>();
                    return Ok(PathTemplate { head, tail: Some(tail) });
                }
                lit if lit.contains(['*', '{', '}']) => {
                    return Err(format!(
                        "path template `{pattern}`: segment `{lit}` mixes an operator with other characters or uses `*` outside `{{*}}`/`{{**}}`"
                    ));
                }
                lit => head.push(Seg::Lit(lit.to_string())),
            }
        }
        Ok(PathTemplate { head, tail: None })
    }

    fn matches(&self, path: &str) -> bool {
        let seg_ok = |seg: &Seg, part: &str| match seg {
            Seg::Lit(l) => l == part,
            Seg::One => !part.is_empty(),
        };
        match &self.tail {
            None => {
                let parts: Vec<&str> = path.split('/').collect();
                parts.len() == self.head.len() && self.head.iter().zip(&parts).all(|(s, p)| seg_ok(s, p))
            }
            Some(tail) => {
                // The head segments are each followed by `/`; `{**}` then takes
                // any text (slashes included, possibly none) before the tail.
                let parts: Vec<&str> = path.splitn(self.head.len() + 1, '/').collect();
                let Some((rest, heads)) = parts.split_last() else {
                    return false;
                };
                parts.len() == self.head.len() + 1
                    && self.head.iter().zip(heads).all(|(s, p)| seg_ok(s, p))
                    && rest.ends_with(tail.as_str())
            }
        }
    }
}

/// Glob match where each `*` stands for any text: Istio turns the `*` of a
/// namespace into `.*` inside its principal regex.
fn glob_matches(pattern: &str, value: &str) -> bool {
    let p = pattern.as_bytes();
    let v = value.as_bytes();
    let (mut pi, mut vi) = (0, 0);
    // Position of the last `*` seen and the value index it resumed from.
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, vi));
            pi += 1;
        } else if pi < p.len() && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// An address block: a single IP or a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip.trim().parse::<IpAddr>().ok()?, Some(len.trim().parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        (len <= max).then_some(Cidr { addr: ip, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`.
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A request attribute a rule can test.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    /// `source.principal` / `principals` (mTLS only).
    Principal,
    /// `source.namespace` / `namespaces` (mTLS only).
    SourceNamespace,
    /// `serviceAccounts`: `ns/sa` taken from the peer principal (mTLS only).
    ServiceAccount,
    /// `trustDomains`: the principal's part before `/ns/` (mTLS only).
    TrustDomain,
    /// `source.ip` / `ipBlocks`: the peer address.
    SourceIp,
    /// `remote.ip` / `remoteIpBlocks`: the original client address.
    RemoteIp,
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port` / `ports`.
    DestinationPort,
    /// `connection.sni`.
    Sni,
    /// `request.auth.principal` / `requestPrincipals`.
    RequestPrincipal,
    /// `request.auth.audiences`: the JWT `aud`.
    Audiences,
    /// `request.auth.presenter`: the JWT `azp`.
    Presenter,
    /// `request.auth.claims[a][b]...`: a (nested) JWT claim.
    Claim(Vec<String>),
    /// `request.headers[name]`, name lowercased.
    Header(String),
    /// `hosts`: the `:authority`, lowercased.
    Host,
    /// `methods`.
    Method,
    /// `paths`.
    Path,
    /// An attribute meshd cannot read (`experimental.envoy.filters.*`).
    Unavailable,
}

impl Attr {
    /// Attributes that exist only on HTTP requests (the "HTTP only" column
    /// of Istio's conditions page, plus the HTTP-only operation fields).
    fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Claim(_)
                | Attr::Header(_)
                | Attr::Host
                | Attr::Method
                | Attr::Path
        )
    }

    /// Reads the attribute from a request.
    fn read<'r>(&self, req: &Request<'r>) -> Value<'r> {
        let text = |s: Option<&'r str>| s.map_or(Value::Absent, |s| Value::Str(s.into()));
        match self {
            Attr::Principal => text(req.source_principal),
            Attr::SourceNamespace => text(req.source_namespace),
            Attr::ServiceAccount => text(req.source_principal.and_then(|p| p.split_once("/ns/")).map(|(_, sa)| sa))
                .map_str(|s| s.replacen("/sa/", "/", 1)),
            Attr::TrustDomain => text(req.source_principal.and_then(|p| p.split_once("/ns/")).map(|(td, _)| td)),
            Attr::SourceIp => req.source_ip.map_or(Value::Absent, Value::Ip),
            Attr::RemoteIp => req.remote_ip.or(req.source_ip).map_or(Value::Absent, Value::Ip),
            Attr::DestinationIp => req.destination_ip.map_or(Value::Absent, Value::Ip),
            Attr::DestinationPort => Value::Port(req.port),
            Attr::Sni => text(req.sni),
            Attr::RequestPrincipal => text(req.request_principal),
            Attr::Audiences => claim_value(req.claims, &["aud"]),
            Attr::Presenter => claim_value(req.claims, &["azp"]),
            Attr::Claim(path) => claim_value(req.claims, path),
            Attr::Header(name) => match name.as_str() {
                // Envoy exposes the request line as pseudo-headers.
                ":authority" => Value::Str(req.host.into()),
                ":method" => Value::Str(req.method.into()),
                ":path" => Value::Str(req.path.into()),
                _ => {
                    let values: Vec<&str> =
                        req.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
                    if values.is_empty() {
                        Value::Absent
                    } else {
                        // Envoy's header matcher sees repeated headers joined by commas.
                        Value::Str(values.join(",").into())
                    }
                }
            },
            Attr::Host => Value::Str(req.host.to_ascii_lowercase().into()),
            Attr::Method => Value::Str(req.method.into()),
            Attr::Path => Value::Str(req.path.into()),
            Attr::Unavailable => Value::Absent,
        }
    }
}

/// Reads a (nested) claim from the JWT payload. A string claim is one value,
/// a list claim is the list of its string elements (any may match); other
/// JSON types carry no string and match nothing, like Envoy's string matcher.
fn claim_value<'r, S: AsRef<str>>(claims: Option<&'r serde_json::Value>, path: &[S]) -> Value<'r> {
    let mut cur = match claims {
        Some(c) => c,
        None => return Value::Absent,
    };
    for key in path {
        match cur.get(key.as_ref()) {
            Some(next) => cur = next,
            None => return Value::Absent,
        }
    }
    match cur {
        serde_json::Value::String(s) => Value::Str(s.as_str().into()),
        serde_json::Value::Array(items) => Value::List(items.iter().filter_map(|v| v.as_str()).collect()),
        _ => Value::Absent,
    }
}

/// The value of an attribute on one request.
#[derive(Debug, Clone)]
enum Value<'r> {
    /// Not present (no mTLS, no JWT, no such header or claim). Positive
    /// matches fail on it and negative ones succeed, as with Envoy's matchers
    /// on an empty value.
    Absent,
    Str(std::borrow::Cow<'r, str>),
    /// A list claim: matches when any element does.
    List(Vec<&'r str>),
    Ip(IpAddr),
    Port(u16),
}

impl Value<'_> {
    /// Rewrites a string value (absent stays absent).
    fn map_str(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            Value::Str(s) => Value::Str(f(&s).into()),
            other => other,
        }
    }
}

/// A compiled value of a rule field or condition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueMatch {
    Str(StrMatch),
    /// A namespace pattern, where `*` may appear anywhere.
    Glob(String),
    Path(PathTemplate),
    Ip(Cidr),
    Port(u16),
    /// A value Istio's validation would reject (reported at compile time):
    /// it matches nothing.
    Invalid,
}

impl ValueMatch {
    fn matches(&self, value: &Value<'_>) -> bool {
        match value {
            Value::Absent => false,
            Value::Str(s) => self.matches_str(s),
            Value::List(items) => items.iter().any(|s| self.matches_str(s)),
            Value::Ip(ip) => matches!(self, ValueMatch::Ip(c) if c.contains(*ip)),
            Value::Port(p) => matches!(self, ValueMatch::Port(want) if want == p),
        }
    }

    fn matches_str(&self, s: &str) -> bool {
        match self {
            ValueMatch::Str(m) => m.matches(s),
            ValueMatch::Glob(g) => glob_matches(g, s),
            ValueMatch::Path(t) => t.matches(s),
            ValueMatch::Ip(_) | ValueMatch::Port(_) | ValueMatch::Invalid => false,
        }
    }
}

/// One field of a source or operation, or one `when` condition: the value
/// must match one of `values` (when any) and none of `not_values`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    attr: Attr,
    values: Vec<ValueMatch>,
    not_values: Vec<ValueMatch>,
}

impl Check {
    fn matches(&self, req: &Request<'_>) -> bool {
        let v = self.attr.read(req);
        (self.values.is_empty() || self.values.iter().any(|m| m.matches(&v)))
            && !self.not_values.iter().any(|m| m.matches(&v))
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledRule {
    /// Sources, any of which must match; empty means any source.
    from: Vec<Vec<Check>>,
    /// Operations, any of which must match; empty means any operation.
    to: Vec<Vec<Check>>,
    /// Conditions, all of which must match.
    when: Vec<Check>,
    /// The rule uses a condition key Istio does not know: Istio skips such a
    /// rule, so it never matches.
    broken: bool,
}

impl CompiledRule {
    fn checks(&self) -> impl Iterator<Item = &Check> {
        self.from.iter().chain(&self.to).flatten().chain(&self.when)
    }

    /// Whether the rule matches `req` for a policy with action `act`.
    fn matches(&self, act: Act, req: &Request<'_>) -> bool {
        if self.broken {
            return false;
        }
        // Attributes this request cannot provide: HTTP ones on TCP, and the
        // experimental filter metadata meshd has none of.
        let unreadable = |c: &Check| c.attr == Attr::Unavailable || (req.tcp && c.attr.http_only());
        if act == Act::Allow && self.checks().any(unreadable) {
            // Istio drops such an ALLOW rule, so it allows less.
            return false;
        }
        // DENY and AUDIT ignore the field instead, so they match more.
        let ok = |c: &Check| unreadable(c) || c.matches(req);
        (self.from.is_empty() || self.from.iter().any(|s| s.iter().all(ok)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.iter().all(ok)))
            && self.when.iter().all(ok)
    }
}

/// Collects compile warnings, each prefixed with the policy's origin and name.
struct Warnings<'w> {
    out: &'w mut Vec<String>,
    prefix: String,
}

impl Warnings<'_> {
    fn push(&mut self, msg: impl std::fmt::Display) {
        self.out.push(format!("{}: {msg}", self.prefix));
    }
}

/// How the values of a field are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Exact / prefix / suffix / presence.
    Str,
    /// Same, case-insensitive (hosts).
    StrFolded,
    /// `*` anywhere (namespaces).
    Glob,
    /// String forms or a `{*}`/`{**}` template.
    Path,
    /// IP or CIDR.
    Ip,
    /// A port number.
    Port,
}

fn compile_value(kind: Kind, v: &str, what: &str, w: &mut Warnings<'_>) -> ValueMatch {
    match kind {
        Kind::Str => ValueMatch::Str(StrMatch::parse(v, false)),
        Kind::StrFolded => ValueMatch::Str(StrMatch::parse(v, true)),
        Kind::Glob => ValueMatch::Glob(v.to_string()),
        Kind::Path if PathTemplate::is_template(v) => match PathTemplate::parse(v) {
            Ok(t) => ValueMatch::Path(t),
            Err(e) => {
                w.push(format!("{what}: invalid {e}; the value matches nothing"));
                ValueMatch::Invalid
            }
        },
        Kind::Path => ValueMatch::Str(StrMatch::parse(v, false)),
        Kind::Ip => match Cidr::parse(v) {
            Some(c) => ValueMatch::Ip(c),
            None => {
                w.push(format!("{what}: `{v}` is not an IP address or CIDR; the value matches nothing"));
                ValueMatch::Invalid
            }
        },
        Kind::Port => match v.trim().parse::<u16>() {
            Ok(p) => ValueMatch::Port(p),
            Err(_) => {
                w.push(format!("{what}: `{v}` is not a port in [0, 65535]; the value matches nothing"));
                ValueMatch::Invalid
            }
        },
    }
}

/// Adds a check for a field pair (`x` / `notX`) when either is set.
fn push_check(
    checks: &mut Vec<Check>,
    attr: Attr,
    kind: Kind,
    (values, not_values): (&[String], &[String]),
    what: &str,
    w: &mut Warnings<'_>,
) {
    if values.is_empty() && not_values.is_empty() {
        return;
    }
    checks.push(Check {
        attr,
        values: values.iter().map(|v| compile_value(kind, v, what, w)).collect(),
        not_values: not_values.iter().map(|v| compile_value(kind, v, what, w)).collect(),
    });
}

/// A field pair of a source or operation: attribute, value kind, the
/// `x` / `notX` values and the field name for warnings.
type FieldSpec<'s> = (Attr, Kind, (&'s [String], &'s [String]), &'static str);

fn compile_source(s: &api::Source, what: &str, w: &mut Warnings<'_>) -> Vec<Check> {
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_id = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_id {
        w.push(format!(
            "{what}: serviceAccounts cannot be combined with principals or namespaces (Istio rejects this); all are enforced together"
        ));
    }
    let mut c = Vec::new();
    let pairs: [FieldSpec<'_>; 7] = [
        (Attr::Principal, Kind::Str, (&s.principals, &s.not_principals), "principals"),
        (Attr::RequestPrincipal, Kind::Str, (&s.request_principals, &s.not_request_principals), "requestPrincipals"),
        (Attr::SourceNamespace, Kind::Glob, (&s.namespaces, &s.not_namespaces), "namespaces"),
        (Attr::ServiceAccount, Kind::Str, (&s.service_accounts, &s.not_service_accounts), "serviceAccounts"),
        (Attr::SourceIp, Kind::Ip, (&s.ip_blocks, &s.not_ip_blocks), "ipBlocks"),
        (Attr::RemoteIp, Kind::Ip, (&s.remote_ip_blocks, &s.not_remote_ip_blocks), "remoteIpBlocks"),
        (Attr::TrustDomain, Kind::Str, (&s.trust_domains, &s.not_trust_domains), "trustDomains"),
    ];
    for (attr, kind, vals, field) in pairs {
        push_check(&mut c, attr, kind, vals, &format!("{what}.{field}"), w);
    }
    c
}

fn compile_operation(o: &api::Operation, what: &str, w: &mut Warnings<'_>) -> Vec<Check> {
    let mut c = Vec::new();
    let pairs: [FieldSpec<'_>; 4] = [
        (Attr::Host, Kind::StrFolded, (&o.hosts, &o.not_hosts), "hosts"),
        (Attr::DestinationPort, Kind::Port, (&o.ports, &o.not_ports), "ports"),
        (Attr::Method, Kind::Str, (&o.methods, &o.not_methods), "methods"),
        (Attr::Path, Kind::Path, (&o.paths, &o.not_paths), "paths"),
    ];
    for (attr, kind, vals, field) in pairs {
        push_check(&mut c, attr, kind, vals, &format!("{what}.{field}"), w);
    }
    c
}

/// What a `when` key names.
enum CondKey {
    Known(Attr, Kind),
    /// `experimental.envoy.filters.*`: filter metadata meshd does not have.
    Experimental,
    Unknown,
}

/// Splits `prefix[a][b]...` into `a`, `b`, ...; `None` when malformed.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<Vec<&'k str>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let (part, after) = rest.strip_prefix('[')?.split_once(']')?;
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        rest = after;
    }
    (!parts.is_empty()).then_some(parts)
}

/// Maps a condition key to an attribute, per Istio's conditions page.
fn condition_key(key: &str) -> CondKey {
    let known = |a, k| CondKey::Known(a, k);
    match key {
        "source.ip" => known(Attr::SourceIp, Kind::Ip),
        "remote.ip" => known(Attr::RemoteIp, Kind::Ip),
        "source.namespace" => known(Attr::SourceNamespace, Kind::Glob),
        "source.principal" => known(Attr::Principal, Kind::Str),
        "request.auth.principal" => known(Attr::RequestPrincipal, Kind::Str),
        "request.auth.audiences" => known(Attr::Audiences, Kind::Str),
        "request.auth.presenter" => known(Attr::Presenter, Kind::Str),
        "destination.ip" => known(Attr::DestinationIp, Kind::Ip),
        "destination.port" => known(Attr::DestinationPort, Kind::Port),
        "connection.sni" => known(Attr::Sni, Kind::Str),
        _ if key.starts_with("experimental.envoy.filters.") => CondKey::Experimental,
        _ => {
            if let Some(parts) = bracketed(key, "request.headers") {
                if let [name] = parts.as_slice() {
                    return known(Attr::Header(name.to_ascii_lowercase()), Kind::Str);
                }
            } else if let Some(parts) = bracketed(key, "request.auth.claims") {
                return known(Attr::Claim(parts.iter().map(|p| p.to_string()).collect()), Kind::Str);
            }
            CondKey::Unknown
        }
    }
}

/// Compiles a `when` entry into `rule`; marks the rule broken on an unknown key.
fn compile_condition(c: &api::Condition, what: &str, rule: &mut CompiledRule, w: &mut Warnings<'_>) {
    if c.values.is_empty() && c.not_values.is_empty() {
        w.push(format!("{what}: condition `{}` needs values or notValues (Istio rejects it); it is ignored", c.key));
        return;
    }
    match condition_key(&c.key) {
        CondKey::Known(attr, kind) => push_check(&mut rule.when, attr, kind, (&c.values, &c.not_values), what, w),
        CondKey::Experimental => {
            w.push(format!(
                "{what}: condition key `{}` is not emulated; an ALLOW rule using it never matches, a DENY or AUDIT rule ignores it",
                c.key
            ));
            rule.when.push(Check { attr: Attr::Unavailable, values: Vec::new(), not_values: Vec::new() });
        }
        CondKey::Unknown => {
            w.push(format!("{what}: unknown condition key `{}` (Istio rejects it); this rule never matches", c.key));
            rule.broken = true;
        }
    }
}

fn compile_rule(rule: &api::Rule, what: &str, w: &mut Warnings<'_>) -> CompiledRule {
    let mut out = CompiledRule { from: Vec::new(), to: Vec::new(), when: Vec::new(), broken: false };
    for (j, f) in rule.from.iter().enumerate() {
        // `from: [{}]` has no source: it accepts any source.
        let checks =
            f.source.as_ref().map(|s| compile_source(s, &format!("{what}.from[{j}].source"), w)).unwrap_or_default();
        out.from.push(checks);
    }
    for (j, t) in rule.to.iter().enumerate() {
        let checks = t
            .operation
            .as_ref()
            .map(|o| compile_operation(o, &format!("{what}.to[{j}].operation"), w))
            .unwrap_or_default();
        out.to.push(checks);
    }
    for (j, c) in rule.when.iter().enumerate() {
        compile_condition(c, &format!("{what}.when[{j}]"), &mut out, w);
    }
    out
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledPolicy {
    namespace: String,
    name: String,
    act: Act,
    /// `selector.matchLabels`; empty selects every workload in scope.
    selector: BTreeMap<String, String>,
    rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    fn applies(&self, t: &Target<'_>) -> bool {
        (self.namespace == ROOT_NAMESPACE || self.namespace == t.namespace)
            && crate::snapshot::selects(&self.selector, t.labels)
    }

    /// Envoy's RBAC policy name for one rule of this policy.
    fn rule_name(&self, index: usize) -> String {
        format!("ns[{}]-policy[{}]-rule[{}]", self.namespace, self.name, index)
    }
}

/// Compiles one policy; `None` when it is not enforced (reported).
fn compile_policy(
    spec: &api::AuthorizationPolicySpec,
    annotations: &BTreeMap<String, String>,
    namespace: &str,
    name: &str,
    w: &mut Warnings<'_>,
) -> Option<CompiledPolicy> {
    let action = spec.action.unwrap_or(api::Action::Allow);
    let act = match action {
        api::Action::Allow => Act::Allow,
        api::Action::Deny => Act::Deny,
        api::Action::Audit => Act::Audit,
        api::Action::Custom => Act::Custom,
    };
    if spec.provider.is_some() && act != Act::Custom {
        w.push("`provider` is only valid with action CUSTOM (Istio rejects it); it is ignored");
    }
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        w.push("targetRef/targetRefs are not emulated: the policy is ignored");
        return None;
    }
    if annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        w.push(format!("{DRY_RUN_ANNOTATION}: the policy is dry-run, so it is not enforced"));
        return None;
    }
    if act == Act::Custom {
        let provider = spec.provider.as_ref().and_then(|p| p.name.as_deref()).unwrap_or("<none>");
        w.push(format!(
            "action CUSTOM (provider `{provider}`): meshd has no extension providers, so, as Istio does for a provider it cannot find, the workloads it selects refuse every request ({BAD_CUSTOM})"
        ));
    }
    let rules = spec.rules.iter().enumerate().map(|(i, r)| compile_rule(r, &format!("rules[{i}]"), w)).collect();
    Some(CompiledPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        act,
        selector: spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default(),
        rules,
    })
}

/// Every enforced AuthorizationPolicy, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzTable {
    policies: Vec<CompiledPolicy>,
}

impl AuthzTable {
    /// Compiles every AuthorizationPolicy (in config order, each with its
    /// `file:line` origin). Returns the table and warnings for what is not
    /// emulated or would be rejected by Istio: CUSTOM policies (deny-all),
    /// targetRef and dry-run policies (ignored), unknown condition keys (the rule
    /// never matches), invalid IPs, ports or path templates (the value
    /// matches nothing).
    pub fn compile(policies: &[(&api::Object<api::AuthorizationPolicySpec>, String)]) -> (AuthzTable, Vec<String>) {
        let mut warnings = Vec::new();
        let mut compiled = Vec::new();
        for (obj, origin) in policies {
            // The loader fills in the namespace; `default` is kubectl's fallback.
            let namespace = obj.metadata.ns();
            let name = obj.metadata.name.as_deref().unwrap_or_default();
            let mut w =
                Warnings { out: &mut warnings, prefix: format!("{origin}: AuthorizationPolicy {namespace}/{name}") };
            if let Some(p) = compile_policy(&obj.spec, &obj.metadata.annotations, namespace, name, &mut w) {
                compiled.push(p);
            }
        }
        (AuthzTable { policies: compiled }, warnings)
    }

    /// Decides a request to `target` in Istio's order: a matching DENY rule
    /// denies; without ALLOW policies the request is allowed; a matching ALLOW
    /// rule allows; anything else is denied. AUDIT policies are not consulted.
    pub fn evaluate(&self, target: &Target<'_>, req: &Request<'_>) -> Decision {
        let in_scope = || self.policies.iter().filter(|p| p.applies(target));
        // The CUSTOM filter runs first; a bad one denies everything.
        if in_scope().any(|p| p.act == Act::Custom) {
            return Decision::Deny { policy: BAD_CUSTOM.to_string() };
        }
        // Envoy keeps RBAC policies in a map sorted by name, so the first
        // matching DENY rule it reports is the smallest name.
        let denied_by = in_scope()
            .filter(|p| p.act == Act::Deny)
            .flat_map(|p| {
                p.rules.iter().enumerate().filter(|(_, r)| r.matches(Act::Deny, req)).map(|(i, _)| p.rule_name(i))
            })
            .min();
        if let Some(policy) = denied_by {
            return Decision::Deny { policy };
        }
        let mut allows = in_scope().filter(|p| p.act == Act::Allow).peekable();
        if allows.peek().is_none() {
            return Decision::Allow;
        }
        if allows.any(|p| p.rules.iter().any(|r| r.matches(Act::Allow, req))) {
            return Decision::Allow;
        }
        Decision::Deny { policy: "none".to_string() }
    }

    /// Whether any ALLOW or DENY policy applies to `target`; when none does,
    /// every request is allowed and the proxy can skip evaluation.
    pub fn applies_to(&self, target: &Target<'_>) -> bool {
        self.policies.iter().any(|p| matches!(p.act, Act::Allow | Act::Deny | Act::Custom) && p.applies(target))
    }
}

/// The namespace of a principal `cluster.local/ns/<ns>/sa/<sa>`.
pub fn principal_namespace(principal: &str) -> Option<&str> {
    principal.split("/ns/").nth(1)?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-samples/");
    const GW_SA: &str = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
    const PRODUCTPAGE_SA: &str = "cluster.local/ns/default/sa/bookinfo-productpage";
    const REVIEWS_SA: &str = "cluster.local/ns/default/sa/bookinfo-reviews";
    const JWT_PRINCIPAL: &str = "testing@secure.istio.io/testing@secure.istio.io";

    type Policy = api::Object<api::AuthorizationPolicySpec>;

    fn parse(text: &str) -> Policy {
        match api::parse_document(text).expect("valid policy YAML") {
            api::ParseOutcome::Known(api::Resource::AuthorizationPolicy(o)) => o,
            other => panic!("not an AuthorizationPolicy: {other:?}"),
        }
    }

    fn load(rel: &str) -> Policy {
        parse(&std::fs::read_to_string(format!("{SAMPLES}{rel}")).expect("sample file"))
    }

    fn compile(policies: &[Policy]) -> (AuthzTable, Vec<String>) {
        let with_origin: Vec<(&Policy, String)> =
            policies.iter().enumerate().map(|(i, p)| (p, format!("test.yaml:{}", i + 1))).collect();
        AuthzTable::compile(&with_origin)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// An mTLS HTTP request from `principal` (or plaintext when `None`).
    fn req<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            source_principal: principal,
            source_namespace: principal.and_then(|p| p.split('/').nth(2)),
            host: "example",
            method,
            path,
            port: 9080,
            ..Request::default()
        }
    }

    fn denied(d: &Decision) -> bool {
        matches!(d, Decision::Deny { .. })
    }

    fn none() -> Decision {
        Decision::Deny { policy: "none".to_string() }
    }

    /// The Bookinfo workloads of namespace `default`.
    struct Bookinfo {
        productpage: BTreeMap<String, String>,
        details: BTreeMap<String, String>,
        reviews: BTreeMap<String, String>,
        ratings: BTreeMap<String, String>,
    }

    fn bookinfo() -> Bookinfo {
        Bookinfo {
            productpage: labels(&[("app", "productpage"), ("version", "v1")]),
            details: labels(&[("app", "details"), ("version", "v1")]),
            reviews: labels(&[("app", "reviews"), ("version", "v3")]),
            ratings: labels(&[("app", "ratings"), ("version", "v1")]),
        }
    }

    fn in_default(l: &BTreeMap<String, String>) -> Target<'_> {
        Target { namespace: "default", labels: l }
    }

    fn authz_http(step: usize) -> Vec<Policy> {
        let files = [
            "1-allow-nothing.yaml",
            "2-productpage-viewer.yaml",
            "3-details-viewer.yaml",
            "4-reviews-viewer.yaml",
            "5-ratings-viewer.yaml",
        ];
        // Step 3 applies two files (details and reviews viewers).
        let count = [0, 1, 2, 4, 5][step];
        files[..count].iter().map(|f| load(&format!("istio.io-tasks/authz-http/{f}"))).collect()
    }

    #[test]
    fn authz_http_step1_allow_nothing_denies_everything_in_default() {
        let (t, warnings) = compile(&authz_http(1));
        assert!(warnings.is_empty(), "{warnings:?}");
        let b = bookinfo();
        assert_eq!(t.evaluate(&in_default(&b.productpage), &req(Some(GW_SA), "GET", "/productpage")), none());
        assert_eq!(t.evaluate(&in_default(&b.details), &req(Some(PRODUCTPAGE_SA), "GET", "/details/0")), none());
        assert_eq!(t.evaluate(&in_default(&b.reviews), &req(Some(PRODUCTPAGE_SA), "GET", "/reviews/0")), none());
        assert_eq!(t.evaluate(&in_default(&b.ratings), &req(Some(REVIEWS_SA), "GET", "/ratings/0")), none());
        assert!(t.applies_to(&in_default(&b.ratings)));
        // Another namespace is untouched.
        let other = Target { namespace: "foo", labels: &b.productpage };
        assert!(!t.applies_to(&other));
        assert_eq!(t.evaluate(&other, &req(None, "GET", "/")), Decision::Allow);
    }

    #[test]
    fn authz_http_step2_productpage_viewer_allows_get_only() {
        let (t, warnings) = compile(&authz_http(2));
        assert!(warnings.is_empty(), "{warnings:?}");
        let b = bookinfo();
        let pp = in_default(&b.productpage);
        assert_eq!(t.evaluate(&pp, &req(Some(GW_SA), "GET", "/productpage")), Decision::Allow);
        // Any caller, even plaintext, may GET.
        assert_eq!(t.evaluate(&pp, &req(None, "GET", "/productpage")), Decision::Allow);
        assert_eq!(t.evaluate(&pp, &req(Some(GW_SA), "POST", "/productpage")), none());
        // "Error fetching product details" / "reviews": both still denied.
        assert_eq!(t.evaluate(&in_default(&b.details), &req(Some(PRODUCTPAGE_SA), "GET", "/details/0")), none());
        assert_eq!(t.evaluate(&in_default(&b.reviews), &req(Some(PRODUCTPAGE_SA), "GET", "/reviews/0")), none());
    }

    #[test]
    fn authz_http_step3_details_and_reviews_only_from_productpage() {
        let (t, warnings) = compile(&authz_http(3));
        assert!(warnings.is_empty(), "{warnings:?}");
        let b = bookinfo();
        for workload in [&b.details, &b.reviews] {
            let tg = in_default(workload);
            assert_eq!(t.evaluate(&tg, &req(Some(PRODUCTPAGE_SA), "GET", "/x/0")), Decision::Allow);
            assert_eq!(t.evaluate(&tg, &req(Some(PRODUCTPAGE_SA), "POST", "/x/0")), none());
            assert_eq!(t.evaluate(&tg, &req(Some(REVIEWS_SA), "GET", "/x/0")), none());
            // Without mTLS there is no principal to match.
            assert_eq!(t.evaluate(&tg, &req(None, "GET", "/x/0")), none());
        }
        // "Ratings service is currently unavailable".
        assert_eq!(t.evaluate(&in_default(&b.ratings), &req(Some(REVIEWS_SA), "GET", "/ratings/0")), none());
        assert_eq!(t.evaluate(&in_default(&b.productpage), &req(Some(GW_SA), "GET", "/productpage")), Decision::Allow);
    }

    #[test]
    fn authz_http_step4_ratings_only_from_reviews() {
        let (t, warnings) = compile(&authz_http(4));
        assert!(warnings.is_empty(), "{warnings:?}");
        let b = bookinfo();
        let ratings = in_default(&b.ratings);
        assert_eq!(t.evaluate(&ratings, &req(Some(REVIEWS_SA), "GET", "/ratings/0")), Decision::Allow);
        assert_eq!(t.evaluate(&ratings, &req(Some(PRODUCTPAGE_SA), "GET", "/ratings/0")), none());
        assert_eq!(t.evaluate(&ratings, &req(Some(REVIEWS_SA), "POST", "/ratings/0")), none());
        // The whole page works again.
        assert_eq!(t.evaluate(&in_default(&b.productpage), &req(Some(GW_SA), "GET", "/productpage")), Decision::Allow);
        assert_eq!(
            t.evaluate(&in_default(&b.details), &req(Some(PRODUCTPAGE_SA), "GET", "/details/0")),
            Decision::Allow
        );
        assert_eq!(
            t.evaluate(&in_default(&b.reviews), &req(Some(PRODUCTPAGE_SA), "GET", "/reviews/0")),
            Decision::Allow
        );
    }

    fn gateway_labels() -> BTreeMap<String, String> {
        labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")])
    }

    fn gateway(l: &BTreeMap<String, String>) -> Target<'_> {
        Target { namespace: ROOT_NAMESPACE, labels: l }
    }

    /// A request reaching the ingress gateway from outside (plaintext).
    fn external<'a>(path: &'a str, jwt: Option<&'a str>) -> Request<'a> {
        Request {
            request_principal: jwt,
            source_ip: Some([127, 0, 0, 1].into()),
            host: "localhost:8080",
            method: "GET",
            path,
            port: 8080,
            ..Request::default()
        }
    }

    #[test]
    fn frontend_ingress_requires_a_token() {
        let (t, warnings) = compile(&[load("istio.io-tasks/authn-policy/12-frontend-ingress-require-token.yaml")]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let gl = gateway_labels();
        let gw = gateway(&gl);
        assert!(t.applies_to(&gw));
        assert_eq!(
            t.evaluate(&gw, &external("/headers", None)),
            Decision::Deny { policy: "ns[istio-system]-policy[frontend-ingress]-rule[0]".to_string() }
        );
        assert_eq!(t.evaluate(&gw, &external("/headers", Some(JWT_PRINCIPAL))), Decision::Allow);
        // The selector keeps it off the sidecars, even from the root namespace.
        let httpbin = labels(&[("app", "httpbin"), ("version", "v1")]);
        let foo = Target { namespace: "foo", labels: &httpbin };
        assert!(!t.applies_to(&foo));
        assert_eq!(t.evaluate(&foo, &req(None, "GET", "/headers")), Decision::Allow);
    }

    #[test]
    fn frontend_ingress_requires_a_token_per_path() {
        let (t, warnings) =
            compile(&[load("istio.io-tasks/authn-policy/13-frontend-ingress-require-token-per-path.yaml")]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let gl = gateway_labels();
        let gw = gateway(&gl);
        assert!(denied(&t.evaluate(&gw, &external("/headers", None))));
        assert_eq!(t.evaluate(&gw, &external("/ip", None)), Decision::Allow);
        assert_eq!(t.evaluate(&gw, &external("/headers", Some(JWT_PRINCIPAL))), Decision::Allow);
    }

    #[test]
    fn string_match_forms() {
        let exact = StrMatch::parse("abc", false);
        assert!(exact.matches("abc") && !exact.matches("abcd") && !exact.matches("xabc"));
        let prefix = StrMatch::parse("abc*", false);
        assert!(prefix.matches("abc") && prefix.matches("abcd") && !prefix.matches("xabc"));
        let suffix = StrMatch::parse("*abc", false);
        assert!(suffix.matches("abc") && suffix.matches("xabc") && !suffix.matches("abcd"));
        let presence = StrMatch::parse("*", false);
        assert!(presence.matches("x") && !presence.matches(""));
        // A leading `*` wins: the trailing one is then literal.
        assert_eq!(StrMatch::parse("*abc*", false), StrMatch::Suffix("abc*".to_string()));
        let host = StrMatch::parse("*.Example.COM", true);
        assert!(host.matches("www.example.com"));
        assert!(glob_matches("te*st", "teXYst") && glob_matches("*", "") && !glob_matches("te*st", "tesx"));
        assert!(glob_matches("a*b*c", "aXbYc") && !glob_matches("a*b*c", "aXbY"));
    }

    #[test]
    fn path_templates_follow_the_documented_examples() {
        let t = |p: &str| PathTemplate::parse(p).expect("valid template");
        assert!(t("/foo/{*}").matches("/foo/bar"));
        assert!(!t("/foo/{*}").matches("/foo/bar/baz"));
        assert!(!t("/foo/{*}").matches("/foo/"));
        assert!(t("/foo/{**}/").matches("/foo/bar/"));
        assert!(t("/foo/{**}/").matches("/foo//"));
        assert!(t("/foo/{**}/").matches("/foo/bar/baz/"));
        assert!(!t("/foo/{**}/").matches("/foo/bar"));
        assert!(t("/foo/{*}/bar/{**}").matches("/foo/buzz/bar/"));
        assert!(t("/foo/{*}/bar/{**}").matches("/foo/buzz/bar/baz"));
        assert!(!t("/foo/{*}/bar/{**}").matches("/foo/buzz/bar"));
        assert!(t("/foo/{**}").matches("/foo/"));
        assert!(!t("/foo/{**}").matches("/foo"));
        assert!(t("/{**}").matches("/anything/at/all"));
        for bad in ["/*/baz/{*}", "/**/baz/{*}", "/{**}/foo/{*}", "/foo/{*}.txt"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.2.0.0/16").expect("cidr");
        assert!(c.contains("10.2.3.4".parse().expect("ip")));
        assert!(!c.contains("10.3.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.2.0.9".parse().expect("ip")));
        let one = Cidr::parse("10.1.2.3").expect("ip");
        assert!(one.contains("10.1.2.3".parse().expect("ip")) && !one.contains("10.1.2.4".parse().expect("ip")));
        let v6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(v6.contains("fd12::1".parse().expect("ip")) && !v6.contains("fe80::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0").expect("cidr").contains("8.8.8.8".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("bogus").is_none());
    }

    /// A policy named `p` in `ns` with the given spec (YAML, indented 2).
    fn policy(ns: &str, spec: &str) -> Policy {
        parse(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: {ns}\nspec:\n{spec}"
        ))
    }

    fn httpbin_labels() -> BTreeMap<String, String> {
        labels(&[("app", "httpbin")])
    }

    fn foo(l: &BTreeMap<String, String>) -> Target<'_> {
        Target { namespace: "foo", labels: l }
    }

    #[test]
    fn not_fields_must_miss_every_value() {
        let (t, _) = compile(&[policy(
            "foo",
            "  rules:\n  - to:\n    - operation:\n        notMethods: [\"DELETE\", \"PUT\"]\n        notPaths: [\"/admin*\"]\n        ports: [\"9080\"]\n",
        )]);
        let l = httpbin_labels();
        let tg = foo(&l);
        assert_eq!(t.evaluate(&tg, &req(None, "GET", "/ip")), Decision::Allow);
        assert_eq!(t.evaluate(&tg, &req(None, "PUT", "/ip")), none());
        assert_eq!(t.evaluate(&tg, &req(None, "GET", "/admin/x")), none());
        let mut other_port = req(None, "GET", "/ip");
        other_port.port = 8000;
        assert_eq!(t.evaluate(&tg, &other_port), none());
    }

    #[test]
    fn mtls_only_fields_on_plaintext() {
        // ALLOW notNamespaces [foo]: a plaintext request has no namespace, so
        // it is "not foo" and allowed (ISTIO-SECURITY-2021-004).
        let (t, _) =
            compile(&[policy("foo", "  rules:\n  - from:\n    - source:\n        notNamespaces: [\"foo\"]\n")]);
        let l = httpbin_labels();
        let tg = foo(&l);
        assert_eq!(t.evaluate(&tg, &req(None, "GET", "/")), Decision::Allow);
        assert_eq!(t.evaluate(&tg, &req(Some("cluster.local/ns/foo/sa/sleep"), "GET", "/")), none());
        assert_eq!(t.evaluate(&tg, &req(Some("cluster.local/ns/bar/sa/sleep"), "GET", "/")), Decision::Allow);
        // principals ["*"] requires mTLS.
        let (t, _) = compile(&[policy("foo", "  rules:\n  - from:\n    - source:\n        principals: [\"*\"]\n")]);
        assert_eq!(t.evaluate(&tg, &req(None, "GET", "/")), none());
        assert_eq!(t.evaluate(&tg, &req(Some("cluster.local/ns/bar/sa/x"), "GET", "/")), Decision::Allow);
    }

    #[test]
    fn service_accounts_trust_domains_and_namespace_globs() {
        let (t, warnings) = compile(&[policy(
            "foo",
            "  rules:\n  - from:\n    - source:\n        serviceAccounts: [\"bar/sleep\"]\n        trustDomains: [\"cluster.local\"]\n    - source:\n        namespaces: [\"te*st\"]\n",
        )]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let l = httpbin_labels();
        let tg = foo(&l);
        assert_eq!(t.evaluate(&tg, &req(Some("cluster.local/ns/bar/sa/sleep"), "GET", "/")), Decision::Allow);
        assert_eq!(t.evaluate(&tg, &req(Some("other.td/ns/bar/sa/sleep"), "GET", "/")), none());
        assert_eq!(t.evaluate(&tg, &req(Some("cluster.local/ns/bar/sa/curl"), "GET", "/")), none());
        assert_eq!(t.evaluate(&tg, &req(Some("cluster.local/ns/te-x-st/sa/a"), "GET", "/")), Decision::Allow);
    }

    #[test]
    fn hosts_are_case_insensitive_and_exact_means_exact() {
        let (t, _) = compile(&[policy(
            "foo",
            "  rules:\n  - to:\n    - operation:\n        hosts: [\"httpbin.example.com\", \"api.internal:*\"]\n",
        )]);
        let l = httpbin_labels();
        let tg = foo(&l);
        let with_host = |host: &'static str| Request { host, ..req(None, "GET", "/") };
        assert_eq!(t.evaluate(&tg, &with_host("HTTPBIN.Example.com")), Decision::Allow);
        // Istio's exact host match does not strip a port (best practices page).
        assert_eq!(t.evaluate(&tg, &with_host("httpbin.example.com:8080")), none());
        assert_eq!(t.evaluate(&tg, &with_host("API.internal:80")), Decision::Allow);
    }

    #[test]
    fn header_claim_and_ip_conditions() {
        let (t, warnings) = compile(&[policy(
            "foo",
            "  rules:\n  - when:\n    - key: request.headers[X-Version]\n      values: [\"v1*\"]\n    - key: request.auth.claims[groups]\n      values: [\"admin\"]\n    - key: request.auth.claims[nested][role]\n      notValues: [\"guest\"]\n    - key: source.ip\n      values: [\"10.0.0.0/8\"]\n",
        )]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let l = httpbin_labels();
        let tg = foo(&l);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-version", http::HeaderValue::from_static("v1.2"));
        let claims = serde_json::json!({"groups": ["dev", "admin"], "nested": {"role": "user"}});
        let good = Request {
            headers: &headers,
            claims: Some(&claims),
            source_ip: Some([10, 1, 2, 3].into()),
            ..req(None, "GET", "/")
        };
        assert_eq!(t.evaluate(&tg, &good), Decision::Allow);
        let outside = Request { source_ip: Some([192, 168, 0, 1].into()), ..good };
        assert_eq!(t.evaluate(&tg, &outside), none());
        let no_header = Request { headers: &http::HeaderMap::new(), ..good };
        assert_eq!(t.evaluate(&tg, &no_header), none());
        let guest = serde_json::json!({"groups": "admin", "nested": {"role": "guest"}});
        assert_eq!(t.evaluate(&tg, &Request { claims: Some(&guest), ..good }), none());
        let string_claim = serde_json::json!({"groups": "admin"});
        assert_eq!(t.evaluate(&tg, &Request { claims: Some(&string_claim), ..good }), Decision::Allow);
        assert_eq!(t.evaluate(&tg, &Request { claims: None, ..good }), none());
    }

    #[test]
    fn audiences_presenter_port_and_sni_conditions() {
        let (t, warnings) = compile(&[policy(
            "foo",
            "  rules:\n  - when:\n    - key: request.auth.audiences\n      values: [\"bookstore\"]\n    - key: request.auth.presenter\n      values: [\"*.my-svc.com\"]\n    - key: destination.port\n      values: [\"9080\"]\n    - key: connection.sni\n      notValues: [\"blocked.example\"]\n",
        )]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let l = httpbin_labels();
        let tg = foo(&l);
        let claims = serde_json::json!({"aud": ["web", "bookstore"], "azp": "1.my-svc.com"});
        let r = Request { claims: Some(&claims), ..req(None, "GET", "/") };
        assert_eq!(t.evaluate(&tg, &r), Decision::Allow);
        assert_eq!(t.evaluate(&tg, &Request { sni: Some("blocked.example"), ..r }), none());
        assert_eq!(t.evaluate(&tg, &Request { port: 80, ..r }), none());
    }

    #[test]
    fn allow_all_and_empty_deny() {
        // `rules: [{}]` allows everything; a DENY without rules denies nothing.
        let (t, _) = compile(&[policy("foo", "  rules:\n  - {}\n"), policy("foo", "  action: DENY\n")]);
        let l = httpbin_labels();
        assert_eq!(t.evaluate(&foo(&l), &req(None, "DELETE", "/x")), Decision::Allow);
        assert!(t.applies_to(&foo(&l)));
    }

    #[test]
    fn deny_beats_allow_and_names_the_rule() {
        let (t, _) = compile(&[
            policy("foo", "  rules:\n  - {}\n"),
            policy(
                "foo",
                "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"POST\"]\n  - to:\n    - operation:\n        paths: [\"/admin\"]\n",
            ),
        ]);
        let l = httpbin_labels();
        let tg = foo(&l);
        assert_eq!(t.evaluate(&tg, &req(None, "GET", "/")), Decision::Allow);
        assert_eq!(
            t.evaluate(&tg, &req(None, "GET", "/admin")),
            Decision::Deny { policy: "ns[foo]-policy[p]-rule[1]".to_string() }
        );
        assert_eq!(
            t.evaluate(&tg, &req(None, "POST", "/admin")),
            Decision::Deny { policy: "ns[foo]-policy[p]-rule[0]".to_string() }
        );
    }

    #[test]
    fn audit_never_decides() {
        let (t, warnings) = compile(&[policy("foo", "  action: AUDIT\n  rules:\n  - {}\n")]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let l = httpbin_labels();
        assert!(!t.applies_to(&foo(&l)));
        assert_eq!(t.evaluate(&foo(&l), &req(None, "GET", "/")), Decision::Allow);
    }

    #[test]
    fn custom_is_reported_and_denies_everything_as_istio_does_without_its_provider() {
        // The authz-custom task's policy, on a path; an ALLOW-all beside it does not help.
        let (t, warnings) = compile(&[
            policy("foo", "  action: CUSTOM\n  provider:\n    name: my-ext-authz\n  rules:\n  - to: [{operation: {paths: [/headers]}}]\n"),
            policy("foo", "  action: ALLOW\n  rules:\n  - {}\n"),
        ]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("test.yaml:1: AuthorizationPolicy foo/p: "), "{}", warnings[0]);
        assert!(warnings[0].contains("CUSTOM") && warnings[0].contains("my-ext-authz"));
        assert!(warnings[0].contains("refuse every request"), "{}", warnings[0]);
        let l = httpbin_labels();
        assert!(t.applies_to(&foo(&l)));
        let denied = Decision::Deny { policy: "default-deny-all-due-to-bad-CUSTOM-action".into() };
        assert_eq!(t.evaluate(&foo(&l), &req(None, "GET", "/ip")), denied);
        // Other namespaces are not selected.
        assert_eq!(t.evaluate(&in_default(&l), &req(None, "GET", "/ip")), Decision::Allow);
    }

    #[test]
    fn root_namespace_policies_are_mesh_wide() {
        let (t, _) = compile(&[policy(
            ROOT_NAMESPACE,
            "  action: DENY\n  selector:\n    matchLabels:\n      version: v1\n  rules:\n  - {}\n",
        )]);
        let v1 = labels(&[("app", "reviews"), ("version", "v1")]);
        let v2 = labels(&[("app", "reviews"), ("version", "v2")]);
        for ns in ["default", "foo", ROOT_NAMESPACE] {
            let tg = Target { namespace: ns, labels: &v1 };
            assert!(denied(&t.evaluate(&tg, &req(None, "GET", "/"))), "{ns}");
            let tg = Target { namespace: ns, labels: &v2 };
            assert_eq!(t.evaluate(&tg, &req(None, "GET", "/")), Decision::Allow, "{ns}");
        }
        // A non-root policy stays in its namespace.
        let (t, _) = compile(&[policy("bar", "  {}\n")]);
        assert!(t.applies_to(&Target { namespace: "bar", labels: &v1 }));
        assert!(!t.applies_to(&Target { namespace: "foo", labels: &v1 }));
    }

    #[test]
    fn tcp_traffic_and_http_only_fields() {
        let l = httpbin_labels();
        let tg = foo(&l);
        let tcp = Request { tcp: true, port: 9000, ..Request::default() };
        // DENY: the method cannot be read on TCP, so only the port counts.
        let (t, _) = compile(&[policy(
            "foo",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"POST\"]\n        ports: [\"9000\"]\n",
        )]);
        assert!(denied(&t.evaluate(&tg, &tcp)));
        assert_eq!(t.evaluate(&tg, &Request { port: 9001, ..tcp }), Decision::Allow);
        // Same for an HTTP-only condition and a JWT field.
        let (t, _) = compile(&[policy(
            "foo",
            "  action: DENY\n  rules:\n  - from:\n    - source:\n        notRequestPrincipals: [\"*\"]\n    when:\n    - key: request.headers[x-a]\n      values: [\"b\"]\n",
        )]);
        assert!(denied(&t.evaluate(&tg, &tcp)));
        // ALLOW: a rule with an HTTP-only field is dropped on TCP.
        let (t, _) = compile(&[policy(
            "foo",
            "  rules:\n  - to:\n    - operation:\n        methods: [\"GET\"]\n        ports: [\"9000\"]\n  - to:\n    - operation:\n        ports: [\"9001\"]\n",
        )]);
        assert_eq!(t.evaluate(&tg, &tcp), none());
        assert_eq!(t.evaluate(&tg, &Request { port: 9001, ..tcp }), Decision::Allow);
        // The same ALLOW rule still works for HTTP on port 9000.
        assert_eq!(t.evaluate(&tg, &Request { tcp: false, method: "GET", ..tcp }), Decision::Allow);
    }

    #[test]
    fn unknown_and_experimental_condition_keys() {
        let (t, warnings) = compile(&[
            policy(
                "foo",
                "  rules:\n  - when:\n    - key: request.bogus\n      values: [\"x\"]\n  - when:\n    - key: experimental.envoy.filters.network.mysql_proxy[db.table]\n      values: [\"[update]\"]\n",
            ),
            policy(
                "foo",
                "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/x\"]\n    when:\n    - key: experimental.envoy.filters.a[b]\n      values: [\"c\"]\n",
            ),
        ]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("unknown condition key `request.bogus`"));
        assert!(warnings[1].contains("not emulated") && warnings[2].contains("not emulated"));
        let l = httpbin_labels();
        let tg = foo(&l);
        // Both ALLOW rules fail; the DENY ignores the experimental key.
        assert_eq!(t.evaluate(&tg, &req(None, "GET", "/")), none());
        assert_eq!(
            t.evaluate(&tg, &req(None, "GET", "/x")),
            Decision::Deny { policy: "ns[foo]-policy[p]-rule[0]".to_string() }
        );
    }

    #[test]
    fn ignored_policies_and_invalid_values_are_reported() {
        let mut dry = policy("foo", "  action: DENY\n  rules:\n  - {}\n");
        dry.metadata.annotations.insert(DRY_RUN_ANNOTATION.to_string(), "true".to_string());
        let (t, warnings) = compile(&[
            dry,
            policy(
                "foo",
                "  action: DENY\n  targetRefs:\n  - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: gw\n  rules:\n  - {}\n",
            ),
            policy(
                "foo",
                "  rules:\n  - from:\n    - source:\n        ipBlocks: [\"300.1.1.1\"]\n    to:\n    - operation:\n        ports: [\"http\"]\n        paths: [\"/a/{*}.txt\"]\n    when:\n    - key: source.ip\n",
            ),
        ]);
        let expect = ["dry-run", "targetRef", "300.1.1.1", "`http`", "/a/{*}.txt", "needs values"];
        assert_eq!(warnings.len(), expect.len(), "{warnings:?}");
        for (w, e) in warnings.iter().zip(expect) {
            assert!(w.contains(e), "{w} should mention {e}");
        }
        // Only the ALLOW policy is enforced, and its invalid values match nothing.
        let l = httpbin_labels();
        assert_eq!(t.evaluate(&foo(&l), &req(None, "GET", "/a/b.txt")), none());
    }
}
