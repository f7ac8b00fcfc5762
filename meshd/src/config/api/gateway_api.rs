//! Kubernetes Gateway API kinds (`gateway.networking.k8s.io`): `Gateway`,
//! `HTTPRoute`, `TCPRoute`. Read leniently: unknown fields are ignored and
//! filters, timeouts and allowed routes stay free-form JSON.

use serde::{Deserialize, Serialize};

/// Spec of a Gateway API `Gateway`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct K8sGatewaySpec {
    /// Gateway class, e.g. `istio`.
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// A Gateway listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Listener name (referenced by `sectionName`).
    pub name: String,
    /// Port.
    pub port: i64,
    /// Protocol (`HTTP`, `HTTPS`, `TCP`, `TLS`).
    pub protocol: String,
    /// Host name filter.
    pub hostname: Option<String>,
    /// Which routes may attach (free-form).
    pub allowed_routes: Option<serde_json::Value>,
    /// TLS configuration (free-form).
    pub tls: Option<serde_json::Value>,
}

/// Spec of an `HTTPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways or Services (GAMMA) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A reference to a parent (Gateway or Service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// API group (default `gateway.networking.k8s.io`; `""` for core).
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default the route's).
    pub namespace: Option<String>,
    /// Port (for Service parents).
    pub port: Option<i64>,
    /// Listener name.
    pub section_name: Option<String>,
}

/// An HTTPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Rule name.
    pub name: Option<String>,
    /// Matches (ORed); none matches all.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters (free-form: `RequestMirror`, `RequestHeaderModifier`...).
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts (free-form: `request`, `backendRequest`).
    pub timeouts: Option<serde_json::Value>,
    /// Retry policy (free-form; not emulated, reported).
    pub retry: Option<serde_json::Value>,
}

/// An HTTPRoute match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path match.
    pub path: Option<HttpPathMatch>,
    /// Header matches.
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: Vec<HttpQueryParamMatch>,
    /// Method.
    pub method: Option<String>,
}

/// A path match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Path value (default `/`).
    pub value: Option<String>,
}

/// A header match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Header name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A query parameter match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpQueryParamMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Parameter name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A weighted backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Name (of a Service by default).
    pub name: String,
    /// Namespace (default the route's).
    pub namespace: Option<String>,
    /// Port.
    pub port: Option<i64>,
    /// Weight (default 1).
    pub weight: Option<i64>,
    /// API group (default core).
    pub group: Option<String>,
    /// Kind (default `Service`).
    pub kind: Option<String>,
    /// Filters for this backend only (free-form; not emulated, reported).
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
}

/// Spec of a `TCPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteSpec {
    /// Gateways the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<TcpRouteRule>,
}

/// A TCPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteRule {
    /// Rule name.
    pub name: Option<String>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}
