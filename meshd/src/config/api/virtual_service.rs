//! `VirtualService` (`networking.istio.io`): HTTP, TLS and TCP routing rules.
//!
//! Field names and types follow the CRD schema in `crd-all.gen.yaml`;
//! every struct rejects unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// Spec of a `VirtualService`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to (short names, FQDNs, wildcards, IPs).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (and/or `mesh`) the rules apply to; empty means `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ordered HTTP routes; the first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Ordered TLS (passthrough) routes.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Ordered TCP routes.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces the rule is visible to (`.` this one, `*` all).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// An HTTP route: match conditions and the action taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Route name, logged in access logs.
    pub name: Option<String>,
    /// Match conditions (ORed); none matches everything.
    #[serde(default)]
    pub r#match: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Respond directly instead of forwarding.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Rewrite of URI/authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout; disabled when absent.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror (shadow) destination.
    pub mirror: Option<Destination>,
    /// Several mirror destinations, each with its own percentage.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated mirror percentage (0-100); also accepted as `mirror_percent`.
    #[serde(alias = "mirror_percent")]
    pub mirror_percent: Option<u32>,
    /// Percentage of requests mirrored (100% when absent).
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation.
    pub headers: Option<Headers>,
}

/// Conditions a request must meet (ANDed) for a route to match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Match name, concatenated with the route name in logs.
    pub name: Option<String>,
    /// URI (path) match.
    pub uri: Option<StringMatch>,
    /// URI scheme match.
    pub scheme: Option<StringMatch>,
    /// HTTP method match.
    pub method: Option<StringMatch>,
    /// Authority (Host) match.
    pub authority: Option<StringMatch>,
    /// Header matches; keys are lowercase header names, `{}` tests presence.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Destination port of the request.
    pub port: Option<u32>,
    /// Labels of the source workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive URI matching (exact and prefix only).
    pub ignore_uri_case: Option<bool>,
    /// Headers that must NOT match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the source workload.
    pub source_namespace: Option<String>,
    /// Stat prefix for this match's route.
    pub stat_prefix: Option<String>,
}

/// A string match: one of `exact`, `prefix` or `regex` (RE2, full match);
/// all absent (`{}`) means presence only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Exact, case-sensitive match.
    pub exact: Option<String>,
    /// Prefix match.
    pub prefix: Option<String>,
    /// RE2 regular expression (full match).
    pub regex: Option<String>,
}

/// A weighted HTTP destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative share of traffic.
    pub weight: Option<i32>,
    /// Header manipulation for this destination.
    pub headers: Option<Headers>,
}

/// A service (and optionally subset and port) to send traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host name (short names resolve in the rule's namespace).
    pub host: String,
    /// Subset defined in a DestinationRule.
    pub subset: Option<String>,
    /// Port on the host.
    pub port: Option<PortSelector>,
}

/// A port selected by number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number; `0` (also when absent, which the CRD allows) means unset.
    #[serde(default)]
    pub number: u32,
}

/// Request and response header operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Operations on the request headers.
    pub request: Option<HeaderOperations>,
    /// Operations on the response headers.
    pub response: Option<HeaderOperations>,
}

/// Set, add and remove header operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append to these headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Rewrite of the request before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replacement for the matched URI prefix (or whole path).
    pub uri: Option<String>,
    /// Replacement authority (Host).
    pub authority: Option<String>,
    /// Regex-based path rewrite.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex rewrite of the path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern to match.
    pub r#match: Option<String>,
    /// Replacement, with `\1`-style group references.
    pub rewrite: Option<String>,
}

/// How a redirect picks its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// An HTTP redirect response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replacement path.
    pub uri: Option<String>,
    /// Replacement authority.
    pub authority: Option<String>,
    /// Replacement port.
    pub port: Option<u32>,
    /// Derive the port instead of fixing it.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replacement scheme.
    pub scheme: Option<String>,
    /// Status code (default 301).
    pub redirect_code: Option<u32>,
    /// Replacement for the matched prefix.
    pub prefix_rewrite: Option<String>,
}

/// A fixed response sent without contacting any upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// HTTP status code.
    pub status: u32,
    /// Optional body.
    pub body: Option<HttpBody>,
}

/// Body of a direct response: text or base64 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Body as text.
    pub string: Option<String>,
    /// Body as base64-encoded bytes.
    pub bytes: Option<String>,
}

/// Delegation to another VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: Option<String>,
    /// Its namespace (defaults to the delegating one's).
    pub namespace: Option<String>,
}

/// Retry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries; 0 disables.
    pub attempts: Option<i32>,
    /// Timeout per attempt.
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated retry conditions (`5xx`, `connect-failure`, `503`...).
    pub retry_on: Option<String>,
    /// Retry in other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid previously tried hosts (default true).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base backoff interval (default 25ms).
    pub backoff: Option<Duration>,
}

/// Fault injection: delay and/or abort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    pub delay: Option<Delay>,
    /// Abort with an error.
    pub abort: Option<Abort>,
}

/// Injected delay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// Fixed delay.
    pub fixed_delay: Option<Duration>,
    /// Exponential delay (unsupported by Istio; accepted and ignored).
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    pub percent: Option<i32>,
}

/// Injected abort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// HTTP status returned.
    pub http_status: Option<i32>,
    /// gRPC status returned, e.g. `UNAVAILABLE`.
    pub grpc_status: Option<String>,
    /// HTTP/2 error (hidden field).
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
}

/// A percentage in `[0, 100]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// The percentage; `0` when absent (the CRD does not require it).
    #[serde(default)]
    pub value: f64,
}

/// One mirror destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where to mirror.
    pub destination: Destination,
    /// Share of requests mirrored (100% when absent).
    pub percentage: Option<Percent>,
}

/// What to do with preflight requests whose origin does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Default (forward).
    Unspecified,
    /// Forward to the upstream.
    Forward,
    /// Answer without CORS headers.
    Ignore,
}

/// CORS policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// Handling of unmatched preflight requests.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// A TCP route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Match conditions (ORed).
    #[serde(default)]
    pub r#match: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// L4 match conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs/CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Source subnet (deprecated).
    pub source_subnet: Option<String>,
    /// Labels of the source workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Namespace of the source workload.
    pub source_namespace: Option<String>,
}

/// A TLS (SNI-based) route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Match conditions (required).
    pub r#match: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// TLS match conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match (required).
    pub sni_hosts: Vec<String>,
    /// Destination IPs/CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Labels of the source workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Namespace of the source workload.
    pub source_namespace: Option<String>,
}

/// A weighted L4 destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative share of traffic.
    pub weight: Option<i32>,
}
