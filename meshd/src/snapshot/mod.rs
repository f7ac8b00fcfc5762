//! The compiled, immutable view of the mesh that the proxies read. One
//! `ArcSwap` holds the current snapshot; a reload builds a new one and swaps
//! it in whole, so a request sees one consistent generation from start to end.

pub(crate) mod compile;
#[cfg(test)]
mod compile_tests;
pub mod gateway_tls;
pub mod matcher;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use compile::{compile, CompileInput};
pub use route::{Decision, HttpRoute, LocalReply};

pub use crate::config::CLUSTER_DOMAIN;
/// Name of the bare client workload behind the shared outbound port when the folder runs no
/// fortio, sleep or curl.
pub const MESH_CLIENT: &str = "meshd-client";
/// Istio's root namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Labels of a workload.
pub type Labels = BTreeMap<String, String>;

/// Whether `labels` carry every `key=value` of `selector` (an empty selector selects all).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Kubernetes Service, resolved.
#[derive(Debug)]
pub struct Service {
    /// `reviews`.
    pub name: String,
    /// `default`.
    pub namespace: String,
    /// `reviews.default.svc.cluster.local`.
    pub fqdn: String,
    /// Service ports.
    pub ports: Vec<ServicePort>,
    /// Pod selector.
    pub selector: Labels,
    /// Endpoints of a ServiceEntry (address, port by port name, labels); empty for a Kubernetes Service.
    pub external: Vec<ExternalEndpoint>,
    /// Where it was declared among the Services. Of several that select a pod, one speaks for it
    /// (its metrics' and spans' service): Istio takes the oldest, which in the tasks is the
    /// app's own (`reviews`, applied before the per-version `reviews-v1`). A folder has no
    /// creation times, so meshd takes the one with the fewest selector labels, then the first
    /// declared: the app's own whatever the files are called.
    pub order: usize,
}

/// An endpoint a ServiceEntry lists (or its resolved host).
#[derive(Debug, Clone)]
pub struct ExternalEndpoint {
    /// Address.
    pub ip: std::net::IpAddr,
    /// Port by ServiceEntry port name.
    pub ports: BTreeMap<String, u16>,
    /// Labels (for subsets).
    pub labels: Labels,
}

/// One port of a Service.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// Port name (`http`), which also gives the protocol.
    pub name: String,
    /// The Service port clients dial.
    pub port: u16,
    /// Container port on the pods (resolved from a number or a port name per pod).
    pub target_port: TargetPort,
    /// Raw TCP rather than HTTP (Istio's protocol selection: port name prefix or `appProtocol`).
    pub tcp: bool,
}

/// Istio's protocol selection for a Service port: `tcp`, `tls`, `mongo`, `mysql`, `redis` (by
/// `appProtocol`, or the port name's prefix before `-`) are TCP; the rest is HTTP here.
pub fn is_tcp_port(name: &str, app_protocol: Option<&str>) -> bool {
    let proto = app_protocol.unwrap_or_else(|| name.split('-').next().unwrap_or(""));
    matches!(proto.to_ascii_lowercase().as_str(), "tcp" | "tls" | "mongo" | "mysql" | "redis")
}

/// A Service's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A container port number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// What the daemon knows of a running pod when it compiles a snapshot.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// `reviews-v2-5b667bcbf8-x4k2p`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod labels.
    pub labels: Labels,
    /// Service account.
    pub service_account: String,
    /// Deployment that owns the pod.
    pub workload: String,
    /// Container ports by name and number.
    pub container_ports: Vec<(Option<String>, u16)>,
    /// Container port -> the address of the pod's inbound sidecar listener for it.
    pub inbound: BTreeMap<u16, SocketAddr>,
    /// The pod's outbound sidecar listener (its apps' HTTP proxy).
    pub outbound: Option<SocketAddr>,
    /// Whether the pod has a sidecar (its inbound addresses are then sidecar listeners).
    pub sidecar: bool,
}

impl Snapshot {
    /// The pod `name` names: exactly, else by its Deployment, else as a prefix of a pod name.
    pub fn find_pod(&self, name: &str) -> Option<&PodInfo> {
        let pods = &self.pods;
        pods.iter()
            .find(|p| p.name == name)
            .or_else(|| pods.iter().find(|p| p.workload == name))
            .or_else(|| pods.iter().find(|p| p.name.starts_with(name)))
    }

    /// The Kubernetes Services that select `pod`, first declared first.
    pub fn services_of(&self, pod: &PodInfo) -> Vec<&Arc<Service>> {
        let mut v: Vec<_> = self
            .services
            .values()
            .filter(|s| s.namespace == pod.namespace && !s.selector.is_empty() && selects(&s.selector, &pod.labels))
            .collect();
        v.sort_by_key(|s| (s.selector.len(), s.order));
        v
    }
}

impl PodInfo {
    /// Resolves a Service targetPort against this pod's containers.
    pub fn resolve_port(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => {
                self.container_ports.iter().find(|(n, _)| n.as_deref() == Some(name.as_str())).map(|(_, p)| *p)
            }
        }
    }
}

/// One upstream endpoint of a cluster: a pod's inbound listener.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The pod behind it.
    pub pod: String,
    /// The SPIFFE identity to expect when `mtls` is on.
    pub identity: String,
    /// Whether callers speak mTLS to it (auto mTLS, or the DestinationRule's `tls.mode`).
    pub mtls: bool,
    /// TLS the caller originates (DestinationRule `tls.mode` SIMPLE or MUTUAL).
    pub origin: Option<Arc<crate::security::origination::OriginTls>>,
}

/// An Envoy-style cluster: `outbound|9080|v1|reviews.default.svc.cluster.local`.
#[derive(Debug)]
pub struct Cluster {
    /// Istio's cluster name.
    pub name: String,
    /// Position in `Snapshot::clusters`, which indexes each proxy's runtime state.
    pub index: usize,
    /// Service FQDN.
    pub service: String,
    /// Service port.
    pub port: u16,
    /// Subset name, if any.
    pub subset: Option<String>,
    /// Endpoints in the cluster.
    pub endpoints: Vec<Endpoint>,
    /// Balancing algorithm.
    pub lb: policy::LbPolicy,
    /// Connection pool and circuit breakers.
    pub pool: policy::PoolSettings,
    /// Outlier detection, if configured.
    pub outlier: Option<policy::OutlierSettings>,
    /// The DestinationRule in force, `name.namespace`.
    pub destination_rule: Option<String>,
    /// The DestinationRule's `tls.mode` (None: auto mTLS).
    pub tls_mode: Option<String>,
    /// A ServiceEntry's hosts, outside the mesh: no metadata exchange with them.
    pub external: bool,
}

/// A workload as the proxies see it: who is calling.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Pod name (or the gateway's name).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: Labels,
    /// Service account.
    pub service_account: String,
    /// The Deployment that owns it (`reviews-v2`; the gateway's own name): metrics' `workload`.
    pub deployment: String,
}

/// A compiled snapshot of the whole mesh.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one on every successful reload.
    pub generation: u64,
    /// Services by FQDN.
    pub services: HashMap<String, Arc<Service>>,
    /// Routing tables of the sidecars, by the caller's namespace.
    pub mesh: HashMap<String, route::MeshTable>,
    /// Routing table of the ingress gateway's HTTP listener.
    pub ingress: route::GatewayTable,
    /// Routing table of the ingress gateway's HTTPS listener.
    pub ingress_tls: route::GatewayTable,
    /// TCP servers of the ingress gateway, by port.
    pub tcp_servers: Vec<Arc<tcp::TcpServer>>,
    /// HTTPS servers, chosen by SNI.
    pub tls_servers: Vec<Arc<gateway_tls::TlsServer>>,
    /// Every cluster, `index` order.
    pub clusters: Vec<Arc<Cluster>>,
    /// Running pods this snapshot routes to.
    pub pods: Vec<PodInfo>,
    /// The workload whose sidecar serves the shared outbound port (15001).
    pub mesh_client: Option<Arc<Workload>>,
    /// Things that are valid but probably not what was meant (a route to a missing subset, ...).
    pub warnings: Vec<String>,
    /// AuthorizationPolicies.
    pub authz: crate::security::authz::AuthzTable,
    /// RequestAuthentications.
    pub jwt: crate::security::jwt::JwtTable,
    /// PeerAuthentication modes.
    pub peer_auth: crate::security::peer_auth::PeerAuthTable,
    /// Local rate limits from EnvoyFilters.
    pub rate_limits: Vec<Arc<ratelimit::LocalRateLimit>>,
    /// Kinds and objects present but not emulated, listed once per reload.
    pub not_emulated: Vec<String>,
    /// One line per resource: `Kind ns/name (file:line)`, for status and the admin API.
    pub resources: Vec<String>,
}

/// Shared handle to the current snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>, tokio::sync::watch::Sender<u64>, Arc<AtomicU64>);

impl Default for SnapshotHandle {
    fn default() -> Self {
        SnapshotHandle(
            Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            tokio::sync::watch::Sender::new(0),
            Arc::default(),
        )
    }
}

impl SnapshotHandle {
    /// The current snapshot; one atomic load.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Swaps in a new snapshot; in-flight requests keep the old one.
    pub fn store(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.0.store(Arc::new(snapshot));
        // Counted after the swap: whoever reads the new count then loads this snapshot or a newer one.
        self.2.fetch_add(1, Ordering::Release);
        self.1.send_replace(generation);
    }

    /// How many snapshots have been stored: a plain load, for readers that keep a snapshot
    /// from one request to the next and load it again only when this moves.
    pub fn stored(&self) -> u64 {
        self.2.load(Ordering::Acquire)
    }

    /// Wakes on every new generation (for connections whose terms depend on the config).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.1.subscribe()
    }
}

/// Resolves a host as Istio does for a config in `namespace`: a name without a
/// dot becomes `<name>.<namespace>.svc.cluster.local`; `*` and dotted names stay.
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_ascii_lowercase()
    } else {
        crate::config::service_fqdn(&host.to_ascii_lowercase(), namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(resolve_short_name("reviews", "default"), "reviews.default.svc.cluster.local");
        assert_eq!(resolve_short_name("httpbin.foo", "bar"), "httpbin.foo");
        assert_eq!(resolve_short_name("*", "bar"), "*");
    }
}
