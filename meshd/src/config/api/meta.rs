//! Small types shared by several kinds: selectors, target references, int-or-string.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that is either an integer or a string, as Kubernetes'
/// `x-kubernetes-int-or-string` (e.g. a Service `targetPort` of `9080` or `http`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// An integer, e.g. a port number.
    Int(i64),
    /// A string, e.g. a port name.
    String(String),
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

/// `istio.type.v1beta1.WorkloadSelector`: selects workloads by labels
/// (`selector` of the security kinds, `workloadSelector` of DestinationRule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry to be selected; empty selects all.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `istio.networking.v1alpha3.WorkloadSelector`: the `workloadSelector` of
/// ServiceEntry, Sidecar and EnvoyFilter, which spells its field `labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkingWorkloadSelector {
    /// Labels a workload must carry to be selected.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `istio.type.v1beta1.PolicyTargetReference`: `targetRef` / `targetRefs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target; empty means the core group.
    pub group: Option<String>,
    /// Kind of the target, e.g. `Gateway` or `Service`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; defaults to the policy's.
    pub namespace: Option<String>,
}
