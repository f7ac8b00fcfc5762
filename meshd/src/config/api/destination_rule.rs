//! `DestinationRule` (`networking.istio.io`): subsets and client-side traffic policy.
//!
//! Also holds [`ConnectionPoolSettings`], shared with `Sidecar`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::meta::WorkloadSelector;
use super::virtual_service::PortSelector;

/// Spec of a `DestinationRule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// Service the rule applies to (required).
    pub host: String,
    /// Policy for all traffic to the host.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets (service versions).
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces the rule is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Workloads the rule applies to (default: all in the namespace).
    pub workload_selector: Option<WorkloadSelector>,
}

/// Client-side traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool (circuit breaker) limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection (ejection of unhealthy hosts).
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides (no field inheritance).
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel TCP over CONNECT/POST.
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol towards the upstream.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget.
    pub retry_budget: Option<RetryBudget>,
}

/// Traffic policy for one port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port this policy applies to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    pub tls: Option<ClientTlsSettings>,
}

/// A named subset of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Subset name (required).
    pub name: String,
    /// Endpoint labels selecting the subset.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Policy overriding the rule's for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancer settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Utilization-based (ORCA) load balancing.
    pub backend_utilization: Option<BackendUtilizationLb>,
    /// Locality-weighted load balancing.
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Deprecated warmup duration.
    pub warmup_duration_secs: Option<Duration>,
    /// Slow-start warmup.
    pub warmup: Option<WarmupConfiguration>,
    /// Zone-aware load balancing.
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
}

/// Simple load balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default (least request).
    Unspecified,
    /// Deprecated alias of `LEAST_REQUEST`.
    LeastConn,
    /// Random choice.
    Random,
    /// Forward to the original destination address.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Least outstanding requests.
    LeastRequest,
}

/// Consistent-hash load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash on this request header.
    pub http_header_name: Option<String>,
    /// Hash on this cookie.
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring-hash algorithm.
    pub ring_hash: Option<RingHash>,
    /// Maglev algorithm.
    pub maglev: Option<MagLev>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

/// A hashing cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name (required).
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    pub ttl: Option<Duration>,
    /// Extra cookie attributes.
    #[serde(default)]
    pub attributes: Vec<HttpCookieAttribute>,
}

/// A cookie attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookieAttribute {
    /// Attribute name (required).
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// Ring-hash settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size (default 1024).
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Lookup table size (default 65537).
    pub table_size: Option<u64>,
}

/// Utilization-based load balancing from backend ORCA reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendUtilizationLb {
    /// Penalty for error rate.
    pub error_utilization_penalty_percent: Option<u32>,
    /// Metric names used to compute utilization.
    #[serde(default)]
    pub metric_names_for_computing_utilization: Vec<String>,
    /// Weight expiration period.
    pub weight_expiration_period: Option<Duration>,
    /// Weight stabilization ("blackout") period.
    pub weight_stabilization_period: Option<Duration>,
    /// Weight update period.
    pub weight_update_period: Option<Duration>,
}

/// Locality-weighted load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLoadBalancerSetting {
    /// Traffic distribution between localities.
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    /// Failover between regions.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Label keys ordering failover priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Enable locality load balancing.
    pub enabled: Option<bool>,
}

/// Distribution of traffic from one locality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Originating locality.
    pub from: Option<String>,
    /// Weight per destination locality.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Failover from one region to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Originating region.
    pub from: Option<String>,
    /// Failover region.
    pub to: Option<String>,
}

/// Zone-aware load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    /// Enable zone-aware routing.
    pub enabled: Option<bool>,
    /// Failover between regions.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Label keys ordering failover priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Minimum cluster size for zone-aware routing.
    pub min_cluster_size: Option<u32>,
}

/// Slow-start warmup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Warmup duration (required).
    pub duration: Duration,
    /// Initial percentage of traffic (default 10).
    pub minimum_percent: Option<f64>,
    /// Aggression of the ramp (default 1.0).
    pub aggression: Option<f64>,
}

/// Connection pool (circuit breaker) settings per upstream host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP settings.
    pub tcp: Option<TcpSettings>,
    /// HTTP settings.
    pub http: Option<HttpSettings>,
}

/// TCP connection pool settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Maximum connections.
    pub max_connections: Option<i32>,
    /// Connect timeout (default 10s).
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum connection lifetime.
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout.
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before probes start.
    pub time: Option<Duration>,
    /// Interval between probes.
    pub interval: Option<Duration>,
}

/// HTTP upgrade policy to HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Mesh default.
    Default,
    /// Do not upgrade.
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// HTTP connection pool settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Maximum requests queued waiting for a connection.
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests.
    pub http2_max_requests: Option<i32>,
    /// Maximum requests per connection (0 unlimited).
    pub max_requests_per_connection: Option<i32>,
    /// Maximum concurrent retries.
    pub max_retries: Option<i32>,
    /// Idle timeout.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 upgrade policy.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol upstream.
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent HTTP/2 streams.
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 keepalive.
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// HTTP/2 keepalive pings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2KeepAlive {
    /// Ping interval.
    pub interval: Option<Duration>,
    /// Ping timeout.
    pub timeout: Option<Duration>,
}

/// Outlier detection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Count local-origin failures separately.
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures before ejection.
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502/503/504 errors before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx errors before ejection (default 5).
    pub consecutive_5xx_errors: Option<u32>,
    /// Analysis interval (default 10s).
    pub interval: Option<Duration>,
    /// Base ejection time (default 30s).
    pub base_ejection_time: Option<Duration>,
    /// Maximum ejected percentage (default 10).
    pub max_ejection_percent: Option<i32>,
    /// Minimum healthy percentage.
    pub min_health_percent: Option<i32>,
    /// Deprecated consecutive errors.
    pub consecutive_errors: Option<i32>,
    /// HTTP codes counted as errors.
    #[serde(default)]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// Upstream TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext.
    Disable,
    /// TLS, server authenticated.
    Simple,
    /// Mutual TLS with given certificates.
    Mutual,
    /// Mutual TLS with mesh certificates.
    IstioMutual,
}

/// Upstream (client-side) TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// TLS mode.
    pub mode: Option<TlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA certificates file.
    pub ca_certificates: Option<String>,
    /// Secret holding the certificates.
    pub credential_name: Option<String>,
    /// Accepted server SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    pub ca_crl: Option<String>,
}

/// Tunnel settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` or `POST`.
    pub protocol: Option<String>,
    /// Host to tunnel to (required).
    pub target_host: String,
    /// Port to tunnel to (required).
    pub target_port: u32,
}

/// PROXY protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProxyProtocolVersion {
    /// Version 1 (text).
    V1,
    /// Version 2 (binary).
    V2,
}

/// PROXY protocol settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Protocol version.
    pub version: Option<ProxyProtocolVersion>,
}

/// Retry budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percentage of active requests that may be retries (default 20).
    pub percent: Option<f64>,
    /// Minimum concurrent retries allowed (default 3).
    pub min_retry_concurrency: Option<u32>,
    /// Interval over which the budget is computed.
    pub budget_interval: Option<Duration>,
}
