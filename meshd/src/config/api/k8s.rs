//! Kubernetes core kinds, read leniently: only the fields meshd uses are
//! typed, everything else is ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::IntOrString;
use super::ObjectMeta;

/// Spec of a `Namespace` (nothing meshd reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {}

/// Spec of a `ServiceAccount` (which has no spec; nothing meshd reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountSpec {}

/// Spec of a `Service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Ports of the service.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pod labels selecting the endpoints.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Service type (`ClusterIP`, `NodePort`, `LoadBalancer`...).
    #[serde(rename = "type")]
    pub type_: Option<String>,
}

/// A Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name; its prefix (`http`, `tcp`...) selects the protocol.
    pub name: Option<String>,
    /// Service port.
    pub port: i64,
    /// Container port number or name (defaults to `port`).
    pub target_port: Option<IntOrString>,
    /// L4 protocol (`TCP`, `UDP`).
    pub protocol: Option<String>,
    /// Application protocol, overrides the name prefix.
    pub app_protocol: Option<String>,
}

/// Spec of a `Deployment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Number of replicas (default 1).
    pub replicas: Option<i64>,
    /// Pod selector.
    pub selector: Option<LabelSelector>,
    /// Pod template.
    #[serde(default)]
    pub template: PodTemplateSpec,
}

/// A label selector (only `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels to match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A pod template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Pod metadata (labels, annotations).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Pod spec.
    #[serde(default)]
    pub spec: PodSpec,
}

/// A pod spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Service account (identity) of the pod.
    pub service_account_name: Option<String>,
    /// Containers.
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: Option<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Exposed ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// An environment variable (only literal values are read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Literal value.
    pub value: Option<String>,
}

/// A container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port number.
    pub container_port: i64,
    /// Port name.
    pub name: Option<String>,
    /// L4 protocol.
    pub protocol: Option<String>,
}

/// A `Secret` (it has no spec: data sits at the top level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// `v1`.
    pub api_version: String,
    /// `Secret`.
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Secret type, e.g. `kubernetes.io/tls`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Base64-encoded values.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Plain-text values.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}
