//! `EnvoyFilter` (`networking.istio.io/v1alpha3`): raw Envoy config patches.
//!
//! The structure around the patches is typed and strict; the patch `value`
//! itself is Envoy configuration and is kept as a [`serde_json::Value`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::{NetworkingWorkloadSelector, PolicyTargetReference};

/// Spec of an `EnvoyFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    /// Workloads the patches apply to.
    pub workload_selector: Option<NetworkingWorkloadSelector>,
    /// Resources the patches apply to (instead of a selector).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The patches.
    #[serde(default)]
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    /// Order of application relative to other EnvoyFilters.
    pub priority: Option<i32>,
}

/// Kind of Envoy object a patch applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyTo {
    /// Invalid (unset).
    Invalid,
    /// A listener.
    Listener,
    /// A filter chain.
    FilterChain,
    /// A network filter.
    NetworkFilter,
    /// An HTTP filter.
    HttpFilter,
    /// A route configuration.
    RouteConfiguration,
    /// A virtual host.
    VirtualHost,
    /// An HTTP route.
    HttpRoute,
    /// A cluster.
    Cluster,
    /// An extension configuration.
    ExtensionConfig,
    /// The bootstrap.
    Bootstrap,
    /// A listener filter.
    ListenerFilter,
}

/// One patch: what to patch, where, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    /// Kind of object patched.
    pub apply_to: Option<ApplyTo>,
    /// Which objects are patched.
    pub r#match: Option<EnvoyConfigObjectMatch>,
    /// The patch.
    pub patch: Option<Patch>,
}

/// Context a patch applies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchContext {
    /// All contexts.
    Any,
    /// Sidecar inbound.
    SidecarInbound,
    /// Sidecar outbound.
    SidecarOutbound,
    /// Gateways.
    Gateway,
    /// Waypoints.
    Waypoint,
}

/// Selection of the objects to patch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    /// Context.
    pub context: Option<PatchContext>,
    /// Proxy version/metadata match.
    pub proxy: Option<ProxyMatch>,
    /// Listener match.
    pub listener: Option<ListenerMatch>,
    /// Route configuration match.
    pub route_configuration: Option<RouteConfigurationMatch>,
    /// Cluster match.
    pub cluster: Option<ClusterMatch>,
    /// Waypoint match.
    pub waypoint: Option<WaypointMatch>,
}

/// Proxy match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// Regex on the proxy version.
    pub proxy_version: Option<String>,
    /// Exact proxy metadata matches.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Listener match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    /// Listener port.
    pub port_number: Option<u32>,
    /// Port name (unused by Istio).
    pub port_name: Option<String>,
    /// Filter chain match.
    pub filter_chain: Option<FilterChainMatch>,
    /// Listener filter name.
    pub listener_filter: Option<String>,
    /// Listener name.
    pub name: Option<String>,
}

/// Filter chain match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    /// Filter chain name.
    pub name: Option<String>,
    /// SNI.
    pub sni: Option<String>,
    /// Transport protocol (`tls`, `raw_buffer`).
    pub transport_protocol: Option<String>,
    /// Application protocols (comma list).
    pub application_protocols: Option<String>,
    /// Filter match.
    pub filter: Option<FilterMatch>,
    /// Destination port.
    pub destination_port: Option<u32>,
    /// Transport socket name.
    pub transport_socket: Option<String>,
}

/// Filter match by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    /// Filter name, e.g. `envoy.filters.network.http_connection_manager`.
    pub name: Option<String>,
    /// Sub-filter (HTTP filter) match.
    pub sub_filter: Option<SubFilterMatch>,
}

/// Sub-filter match by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    /// Sub-filter name.
    pub name: Option<String>,
}

/// Route configuration match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    /// Service port number.
    pub port_number: Option<u32>,
    /// Port name.
    pub port_name: Option<String>,
    /// Gateway name (`ns/name`).
    pub gateway: Option<String>,
    /// Virtual host match.
    pub vhost: Option<VirtualHostMatch>,
    /// Route configuration name.
    pub name: Option<String>,
}

/// Virtual host match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    /// Virtual host name.
    pub name: Option<String>,
    /// Route match.
    pub route: Option<RouteMatch>,
    /// Domain name.
    pub domain_name: Option<String>,
}

/// Route action kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RouteAction {
    /// Any action.
    Any,
    /// Forwarding route.
    Route,
    /// Redirect.
    Redirect,
    /// Direct response.
    DirectResponse,
}

/// Route match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Route name.
    pub name: Option<String>,
    /// Route action.
    pub action: Option<RouteAction>,
}

/// Cluster match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    /// Service port number.
    pub port_number: Option<u32>,
    /// Service FQDN.
    pub service: Option<String>,
    /// Subset.
    pub subset: Option<String>,
    /// Cluster name.
    pub name: Option<String>,
}

/// Waypoint match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    /// Filter match.
    pub filter: Option<FilterMatch>,
    /// Route match.
    pub route: Option<WaypointRouteMatch>,
    /// Port number.
    pub port_number: Option<u32>,
}

/// Waypoint route match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRouteMatch {
    /// Route name.
    pub name: Option<String>,
}

/// Patch operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchOperation {
    /// Invalid (unset).
    Invalid,
    /// Merge into the object.
    Merge,
    /// Add an object.
    Add,
    /// Remove the object.
    Remove,
    /// Insert before the matched filter.
    InsertBefore,
    /// Insert after the matched filter.
    InsertAfter,
    /// Insert first.
    InsertFirst,
    /// Replace the object.
    Replace,
    /// Merge, replacing lists.
    MergeAndReplaceList,
}

/// Filter classes for ordering inserted filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterClass {
    /// Unspecified.
    Unspecified,
    /// Authentication filters.
    Authn,
    /// Authorization filters.
    Authz,
    /// Stats filters.
    Stats,
}

/// A patch: operation and Envoy config value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// Operation.
    pub operation: Option<PatchOperation>,
    /// Envoy configuration (free-form).
    pub value: Option<serde_json::Value>,
    /// Filter class for insertion order.
    pub filter_class: Option<FilterClass>,
}
