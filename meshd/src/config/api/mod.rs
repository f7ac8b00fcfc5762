//! Typed configuration read from a folder of Istio / Kubernetes YAML.
//!
//! [`parse_document`] reads one YAML document (files are split on `---` by the
//! caller) into a [`Resource`]. Istio kinds are strict, like the CRD schemas
//! in Istio's `crd-all.gen.yaml`: an unknown field, a wrong type, a bad enum
//! value or a missing required field is a [`DocError`] carrying the field path
//! (`spec.http[0].route[0].destination`) and the line and column in the text.
//! Kubernetes kinds and Gateway API kinds are read leniently.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};

mod destination_rule;
mod duration;
mod envoy_filter;
mod gateway_api;
mod k8s;
mod meta;
mod networking;
mod security;
mod virtual_service;

pub use self::destination_rule::*;
pub use self::duration::{Duration, DurationParseError};
pub use self::envoy_filter::*;
pub use self::gateway_api::*;
pub use self::k8s::*;
pub use self::meta::*;
pub use self::networking::*;
pub use self::security::*;
pub use self::virtual_service::*;

/// Kubernetes object metadata (lenient).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Object name.
    pub name: Option<String>,
    /// Object namespace (the folder's default namespace when absent).
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// `metadata.namespace`, or `default` when unset, as `kubectl apply` places it.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// `metadata.name`, empty when unset.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// A typed object: apiVersion, kind, metadata, spec. Unknown top-level keys
/// such as `status` are accepted.
///
/// A missing (or null) `spec` is read as `spec: {}`, so it is an error only
/// for kinds with required spec fields (e.g. a DestinationRule's `host`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    /// `group/version`, e.g. `networking.istio.io/v1`.
    pub api_version: String,
    /// Kind, e.g. `VirtualService`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: S,
}

/// What an [`Object`] is read through before a missing spec is filled in.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "S: DeserializeOwned"))]
struct RawObject<S> {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
}

impl<'de, S: DeserializeOwned> Deserialize<'de> for Object<S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawObject::<S>::deserialize(deserializer)?;
        let spec = match raw.spec {
            Some(spec) => spec,
            None => {
                let empty = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(std::iter::empty::<(
                    String,
                    String,
                )>());
                S::deserialize(empty)
                    .map_err(|e| D::Error::custom(format!("missing field `spec` (an empty spec is invalid: {e})")))?
            }
        };
        Ok(Object { api_version: raw.api_version, kind: raw.kind, metadata: raw.metadata, spec })
    }
}

/// A resource meshd emulates.
// Variants hold the objects inline so callers can match on them directly;
// a resource is built once per document, so the size spread does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// `v1 Namespace`.
    Namespace(Object<NamespaceSpec>),
    /// `v1 Service`.
    Service(Object<ServiceSpec>),
    /// `v1 ServiceAccount`.
    ServiceAccount(Object<ServiceAccountSpec>),
    /// `apps/v1 Deployment`.
    Deployment(Object<DeploymentSpec>),
    /// `v1 Secret`.
    Secret(Secret),
    /// `networking.istio.io VirtualService`.
    VirtualService(Object<VirtualServiceSpec>),
    /// `networking.istio.io DestinationRule`.
    DestinationRule(Object<DestinationRuleSpec>),
    /// `networking.istio.io Gateway`.
    Gateway(Object<GatewaySpec>),
    /// `networking.istio.io ServiceEntry`.
    ServiceEntry(Object<ServiceEntrySpec>),
    /// `networking.istio.io Sidecar`.
    Sidecar(Object<SidecarSpec>),
    /// `networking.istio.io WorkloadEntry`.
    WorkloadEntry(Object<WorkloadEntrySpec>),
    /// `networking.istio.io/v1alpha3 EnvoyFilter`.
    EnvoyFilter(Object<EnvoyFilterSpec>),
    /// `security.istio.io PeerAuthentication`.
    PeerAuthentication(Object<PeerAuthenticationSpec>),
    /// `security.istio.io AuthorizationPolicy`.
    AuthorizationPolicy(Object<AuthorizationPolicySpec>),
    /// `security.istio.io RequestAuthentication`.
    RequestAuthentication(Object<RequestAuthenticationSpec>),
    /// `gateway.networking.k8s.io Gateway`.
    K8sGateway(Object<K8sGatewaySpec>),
    /// `gateway.networking.k8s.io HTTPRoute`.
    HttpRouteK8s(Object<HttpRouteSpec>),
    /// `gateway.networking.k8s.io TCPRoute`.
    TcpRouteK8s(Object<TcpRouteSpec>),
}

impl Resource {
    /// The Kubernetes kind, e.g. `VirtualService`; both gateway kinds give
    /// `Gateway`, the Gateway API routes give `HTTPRoute` and `TCPRoute`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(_) => "Namespace",
            Resource::Service(_) => "Service",
            Resource::ServiceAccount(_) => "ServiceAccount",
            Resource::Deployment(_) => "Deployment",
            Resource::Secret(_) => "Secret",
            Resource::VirtualService(_) => "VirtualService",
            Resource::DestinationRule(_) => "DestinationRule",
            Resource::Gateway(_) => "Gateway",
            Resource::ServiceEntry(_) => "ServiceEntry",
            Resource::Sidecar(_) => "Sidecar",
            Resource::WorkloadEntry(_) => "WorkloadEntry",
            Resource::EnvoyFilter(_) => "EnvoyFilter",
            Resource::PeerAuthentication(_) => "PeerAuthentication",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::RequestAuthentication(_) => "RequestAuthentication",
            Resource::K8sGateway(_) => "Gateway",
            Resource::HttpRouteK8s(_) => "HTTPRoute",
            Resource::TcpRouteK8s(_) => "TCPRoute",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::ServiceAccount(o) => &o.metadata,
            Resource::Deployment(o) => &o.metadata,
            Resource::Secret(o) => &o.metadata,
            Resource::VirtualService(o) => &o.metadata,
            Resource::DestinationRule(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::ServiceEntry(o) => &o.metadata,
            Resource::Sidecar(o) => &o.metadata,
            Resource::WorkloadEntry(o) => &o.metadata,
            Resource::EnvoyFilter(o) => &o.metadata,
            Resource::PeerAuthentication(o) => &o.metadata,
            Resource::AuthorizationPolicy(o) => &o.metadata,
            Resource::RequestAuthentication(o) => &o.metadata,
            Resource::K8sGateway(o) => &o.metadata,
            Resource::HttpRouteK8s(o) => &o.metadata,
            Resource::TcpRouteK8s(o) => &o.metadata,
        }
    }
}

/// The result of reading one YAML document.
#[allow(clippy::large_enum_variant)] // See `Resource`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseOutcome {
    /// A kind meshd emulates.
    Known(Resource),
    /// A well-formed object of a kind meshd does not emulate (ConfigMap, ...).
    NotEmulated {
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
        /// Its `metadata.name` (empty when absent).
        name: String,
    },
    /// The document holds only comments and whitespace.
    Empty,
}

/// An error in one YAML document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocError {
    /// Path of the offending field, e.g. `spec.http[0].route[0].destination`;
    /// `.` for the document itself.
    pub path: String,
    /// 1-based line in the document text, when known.
    pub line: Option<usize>,
    /// 1-based column in the document text, when known.
    pub column: Option<usize>,
    /// What is wrong, e.g. ``unknown field `hots`, expected one of ...``.
    pub message: String,
}

/// The kinds [`parse_document`] dispatches to.
#[derive(Debug, Clone, Copy)]
enum KindId {
    Namespace,
    Service,
    ServiceAccount,
    Deployment,
    Secret,
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    EnvoyFilter,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    K8sGateway,
    HttpRouteK8s,
    TcpRouteK8s,
}

const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
const GATEWAY_API_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha2"];

/// Maps an API group and kind to the kind id and the versions served.
/// `strict` groups make an unknown version an error rather than "not emulated".
fn lookup_kind(group: &str, kind: &str) -> Option<(KindId, &'static [&'static str], bool)> {
    let found = match (group, kind) {
        ("", "Namespace") => (KindId::Namespace, &["v1"][..], false),
        ("", "Service") => (KindId::Service, &["v1"][..], false),
        ("", "ServiceAccount") => (KindId::ServiceAccount, &["v1"][..], false),
        ("", "Secret") => (KindId::Secret, &["v1"][..], false),
        ("apps", "Deployment") => (KindId::Deployment, &["v1"][..], false),
        ("networking.istio.io", "VirtualService") => (KindId::VirtualService, NETWORKING_VERSIONS, true),
        ("networking.istio.io", "DestinationRule") => (KindId::DestinationRule, NETWORKING_VERSIONS, true),
        ("networking.istio.io", "Gateway") => (KindId::Gateway, NETWORKING_VERSIONS, true),
        ("networking.istio.io", "ServiceEntry") => (KindId::ServiceEntry, NETWORKING_VERSIONS, true),
        ("networking.istio.io", "Sidecar") => (KindId::Sidecar, NETWORKING_VERSIONS, true),
        ("networking.istio.io", "WorkloadEntry") => (KindId::WorkloadEntry, NETWORKING_VERSIONS, true),
        ("networking.istio.io", "EnvoyFilter") => (KindId::EnvoyFilter, &["v1alpha3"][..], true),
        ("security.istio.io", "PeerAuthentication") => (KindId::PeerAuthentication, SECURITY_VERSIONS, true),
        ("security.istio.io", "AuthorizationPolicy") => (KindId::AuthorizationPolicy, SECURITY_VERSIONS, true),
        ("security.istio.io", "RequestAuthentication") => (KindId::RequestAuthentication, SECURITY_VERSIONS, true),
        ("gateway.networking.k8s.io", "Gateway") => (KindId::K8sGateway, GATEWAY_API_VERSIONS, true),
        ("gateway.networking.k8s.io", "HTTPRoute") => (KindId::HttpRouteK8s, GATEWAY_API_VERSIONS, true),
        ("gateway.networking.k8s.io", "TCPRoute") => (KindId::TcpRouteK8s, GATEWAY_API_VERSIONS, true),
        _ => return None,
    };
    Some(found)
}

/// Reads one YAML document (a file is split on `---` lines by the caller).
///
/// Returns [`ParseOutcome::Empty`] for a document of only comments and
/// whitespace, [`ParseOutcome::NotEmulated`] for kinds meshd does not emulate,
/// and a [`DocError`] for malformed YAML, a missing `apiVersion`/`kind`, an
/// emulated kind at an unknown version, or a spec the schema rejects.
pub fn parse_document(text: &str) -> Result<ParseOutcome, DocError> {
    if is_blank(text) {
        return Ok(ParseOutcome::Empty);
    }
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| yaml_error(&e, "."))?;
    let map = match value {
        serde_yaml::Value::Null => return Ok(ParseOutcome::Empty),
        serde_yaml::Value::Mapping(map) => map,
        _ => {
            return Err(DocError {
                path: ".".to_string(),
                line: None,
                column: None,
                message: "expected a mapping with `apiVersion` and `kind`".to_string(),
            })
        }
    };
    let api_version = top_level_string(&map, text, "apiVersion")?;
    let kind = top_level_string(&map, text, "kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    let Some((id, versions, strict)) = lookup_kind(group, &kind) else {
        return Ok(not_emulated(&map, api_version, kind));
    };
    if !versions.contains(&version) {
        if !strict {
            return Ok(not_emulated(&map, api_version, kind));
        }
        let (line, column) = key_position(text, "apiVersion");
        let served: Vec<String> = versions.iter().map(|v| format!("{group}/{v}")).collect();
        return Err(DocError {
            path: "apiVersion".to_string(),
            line,
            column,
            message: format!(
                "unsupported apiVersion `{api_version}` for kind {kind}, expected one of {}",
                served.join(", ")
            ),
        });
    }
    let resource = match id {
        KindId::Namespace => Resource::Namespace(typed(text)?),
        KindId::Service => Resource::Service(typed(text)?),
        KindId::ServiceAccount => Resource::ServiceAccount(typed(text)?),
        KindId::Deployment => Resource::Deployment(typed(text)?),
        KindId::Secret => Resource::Secret(typed(text)?),
        KindId::VirtualService => Resource::VirtualService(typed(text)?),
        KindId::DestinationRule => Resource::DestinationRule(typed(text)?),
        KindId::Gateway => Resource::Gateway(typed(text)?),
        KindId::ServiceEntry => Resource::ServiceEntry(typed(text)?),
        KindId::Sidecar => Resource::Sidecar(typed(text)?),
        KindId::WorkloadEntry => Resource::WorkloadEntry(typed(text)?),
        KindId::EnvoyFilter => Resource::EnvoyFilter(typed(text)?),
        KindId::PeerAuthentication => Resource::PeerAuthentication(typed(text)?),
        KindId::AuthorizationPolicy => Resource::AuthorizationPolicy(typed(text)?),
        KindId::RequestAuthentication => Resource::RequestAuthentication(typed(text)?),
        KindId::K8sGateway => Resource::K8sGateway(typed(text)?),
        KindId::HttpRouteK8s => Resource::HttpRouteK8s(typed(text)?),
        KindId::TcpRouteK8s => Resource::TcpRouteK8s(typed(text)?),
    };
    Ok(ParseOutcome::Known(resource))
}

/// True when the text holds only comments, whitespace and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let t = line.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// A `NotEmulated` outcome carrying the object's name.
fn not_emulated(map: &serde_yaml::Mapping, api_version: String, kind: String) -> ParseOutcome {
    let name = map.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or_default().to_string();
    ParseOutcome::NotEmulated { api_version, kind, name }
}

/// A required top-level string (`apiVersion`, `kind`).
fn top_level_string(map: &serde_yaml::Mapping, text: &str, key: &str) -> Result<String, DocError> {
    match map.get(key) {
        Some(serde_yaml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => {
            let (line, column) = key_position(text, key);
            Err(DocError {
                path: key.to_string(),
                line,
                column,
                message: format!("`{key}` must be a non-empty string"),
            })
        }
        None => {
            Err(DocError { path: key.to_string(), line: None, column: None, message: format!("missing field `{key}`") })
        }
    }
}

/// Line and column (1-based) of a top-level `key:` in the text.
fn key_position(text: &str, key: &str) -> (Option<usize>, Option<usize>) {
    let prefix = format!("{key}:");
    let quoted = format!("\"{key}\":");
    for (i, line) in text.lines().enumerate() {
        if line.starts_with(&prefix) || line.starts_with(&quoted) {
            return (Some(i + 1), Some(1));
        }
    }
    (None, None)
}

/// Deserializes the whole document into `T`, tracking the field path.
fn typed<T: DeserializeOwned>(text: &str) -> Result<T, DocError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let mut doc_error = yaml_error(err.inner(), &path);
        // serde_path_to_error includes the unknown key itself; report the
        // object that holds it (the message names the key).
        if let Some(name) = doc_error
            .message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_string())
        {
            if let Some(parent) = doc_error.path.strip_suffix(&format!(".{name}")) {
                doc_error.path = parent.to_string();
            } else if doc_error.path == name {
                doc_error.path = ".".to_string();
            }
        }
        doc_error
    })
}

/// Turns a serde_yaml error into a [`DocError`] at `path`, dropping the
/// location suffix and path prefix serde_yaml adds to its message.
fn yaml_error(err: &serde_yaml::Error, path: &str) -> DocError {
    let location = err.location();
    let mut message = err.to_string();
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    if let Some(index) = message.rfind(" at position ") {
        if message[index + " at position ".len()..].chars().all(|c| c.is_ascii_digit()) {
            message.truncate(index);
        }
    }
    // serde_yaml prefixes its own view of the path, which is `path` or (for
    // an unknown key) its parent.
    if let Some((prefix, rest)) = message.split_once(": ") {
        if !prefix.is_empty() && !prefix.contains(' ') && path.starts_with(prefix) {
            message = rest.to_string();
        }
    }
    DocError {
        path: path.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}
