//! The compiled, immutable view of the mesh that the proxies read. One
//! `ArcSwap` holds the current snapshot; a reload builds a new one and swaps
//! it in whole, so a request sees one consistent generation from start to end.

pub(crate) mod compile;
#[cfg(test)]
mod compile_tests;
pub mod matcher;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use compile::{compile, CompileInput};
pub use route::{Decision, HttpRoute, LocalReply};

/// The Kubernetes cluster domain meshd emulates.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// Istio's root namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Labels of a workload.
pub type Labels = BTreeMap<String, String>;

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
}

impl PodInfo {
    /// Resolves a Service targetPort against this pod's containers.
    pub fn resolve_port(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .container_ports
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                .map(|(_, p)| *p),
        }
    }
}

/// Per-endpoint runtime state, kept across snapshots (keyed by address).
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight to this endpoint (LEAST_REQUEST reads it).
    pub active: AtomicU64,
    /// Requests sent, for stats.
    pub total: AtomicU64,
}

/// RAII guard counting one in-flight request on an endpoint.
#[derive(Debug)]
pub struct ActiveGuard(Arc<EndpointState>);

impl ActiveGuard {
    /// Counts a request on `state` until the guard drops.
    pub fn new(state: &Arc<EndpointState>) -> ActiveGuard {
        state.active.fetch_add(1, Ordering::Relaxed);
        state.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(state.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One upstream endpoint of a cluster: a pod's inbound listener.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The pod behind it.
    pub pod: String,
    /// Runtime counters (shared across snapshots).
    pub state: Arc<EndpointState>,
}

/// Load-balancing algorithm of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Istio's default: power of two choices on in-flight requests.
    LeastRequest,
    /// Round robin.
    RoundRobin,
    /// Uniform random.
    Random,
}

/// An Envoy-style cluster: `outbound|9080|v1|reviews.default.svc.cluster.local`.
#[derive(Debug)]
pub struct Cluster {
    /// Istio's cluster name.
    pub name: String,
    /// Service FQDN.
    pub service: String,
    /// Service port.
    pub port: u16,
    /// Subset name, if any.
    pub subset: Option<String>,
    /// Endpoints in the cluster.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Balancing algorithm.
    pub lb: LbPolicy,
    /// Round-robin cursor (only read for ROUND_ROBIN).
    pub rr: AtomicU64,
}

impl Cluster {
    /// Picks an endpoint; None when the cluster has none (503 UH).
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        match eps.len() {
            0 => None,
            1 => eps.first(),
            n => Some(match self.lb {
                LbPolicy::Random => &eps[fastrand::usize(..n)],
                LbPolicy::RoundRobin => &eps[(self.rr.fetch_add(1, Ordering::Relaxed) as usize) % n],
                LbPolicy::LeastRequest => {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ea, eb) = (&eps[a], &eps[b]);
                    if eb.state.active.load(Ordering::Relaxed) < ea.state.active.load(Ordering::Relaxed) {
                        eb
                    } else {
                        ea
                    }
                }
            }),
        }
    }
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
    /// Every cluster by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Running pods this snapshot routes to.
    pub pods: Vec<PodInfo>,
    /// The workload whose sidecar serves the shared outbound port (15001).
    pub mesh_client: Option<Arc<Workload>>,
    /// Kinds and objects present but not emulated, listed once per reload.
    pub not_emulated: Vec<String>,
    /// One line per resource: `Kind ns/name (file:line)`, for status and the admin API.
    pub resources: Vec<String>,
}

/// Shared handle to the current snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>);

impl Default for SnapshotHandle {
    fn default() -> Self {
        SnapshotHandle(Arc::new(ArcSwap::from_pointee(Snapshot::default())))
    }
}

impl SnapshotHandle {
    /// The current snapshot; one atomic load.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Swaps in a new snapshot; in-flight requests keep the old one.
    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

/// Runtime state kept across snapshots: per-endpoint counters.
#[derive(Debug, Default)]
pub struct Runtime {
    endpoints: std::sync::Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

impl Runtime {
    /// The state for an endpoint address, created on first use. Only called while compiling.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr).or_default().clone()
    }

    /// Drops state of endpoints no longer in use.
    pub fn retain(&self, live: &std::collections::HashSet<SocketAddr>) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|a, _| live.contains(a));
    }
}

/// Resolves a host as Istio does for a config in `namespace`: a name without a
/// dot becomes `<name>.<namespace>.svc.cluster.local`; `*` and dotted names stay.
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.{CLUSTER_DOMAIN}", host.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize, lb: LbPolicy) -> Cluster {
        let rt = Runtime::default();
        Cluster {
            name: "c".into(),
            service: "s".into(),
            port: 1,
            subset: None,
            endpoints: (0..n)
                .map(|i| {
                    let addr: SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                    Arc::new(Endpoint {
                        addr,
                        pod: format!("p{i}"),
                        state: rt.endpoint(addr),
                    })
                })
                .collect(),
            lb,
            rr: AtomicU64::new(0),
        }
    }

    #[test]
    fn least_request_avoids_busy_endpoint() {
        let c = cluster(2, LbPolicy::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| ActiveGuard::new(&c.endpoints[0].state)).collect();
        for _ in 0..50 {
            assert_eq!(c.pick().unwrap().pod, "p1");
        }
    }

    #[test]
    fn round_robin_cycles() {
        let c = cluster(3, LbPolicy::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| c.pick().unwrap().pod.clone()).collect();
        assert_eq!(picks, ["p0", "p1", "p2", "p0", "p1", "p2"]);
        assert!(cluster(0, LbPolicy::Random).pick().is_none());
    }

    #[test]
    fn short_names() {
        assert_eq!(
            resolve_short_name("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(resolve_short_name("httpbin.foo", "bar"), "httpbin.foo");
        assert_eq!(resolve_short_name("*", "bar"), "*");
    }
}
