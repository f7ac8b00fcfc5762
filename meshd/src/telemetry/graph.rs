//! The versioned-app graph the dashboard draws, as Kiali builds it from
//! `istio_requests_total`: a node per workload, an edge per caller and
//! callee with the request rate over a short window, the error rate and
//! whether mTLS carried it. Rates come from totals sampled once a second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::{quantile, Metrics, Peer, Reporter, Series, BUCKETS};

/// How far back the rates look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// `(source node, target node, protocol)`.
type EdgeKey = (String, String, &'static str);

/// A node of the graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// `namespace/workload`.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// The `app` label (the workload when unlabelled).
    pub app: String,
    /// The `version` label, or empty.
    pub version: String,
    /// The Deployment.
    pub workload: String,
    /// `gateway`, `workload` or `unknown`.
    pub kind: String,
}

/// An edge of the graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Edge {
    /// Caller node id.
    pub source: String,
    /// Callee node id.
    pub target: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// Requests per second over the window.
    pub rps: f64,
    /// Requests since start.
    pub requests: u64,
    /// 5xx responses since start.
    pub errors: u64,
    /// 5xx share over the window (since start when the window saw nothing).
    pub error_rate: f64,
    /// Whether the requests travel over mTLS.
    pub mtls: bool,
    /// Median duration (ms) since start.
    pub p50_ms: Option<f64>,
    /// 99th percentile (ms) since start.
    pub p99_ms: Option<f64>,
}

/// What `/meshd/graph` answers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GraphView {
    /// The config generation.
    pub generation: u64,
    /// Seconds the rates look back.
    pub window_seconds: u64,
    /// The mesh-wide PeerAuthentication mode.
    pub mtls_mode: String,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    requests: u64,
    errors: u64,
}

/// Samples of the edge totals, newest last.
#[derive(Debug, Default)]
pub struct Graph {
    samples: Mutex<VecDeque<(Instant, HashMap<EdgeKey, Totals>)>>,
}

struct EdgeAcc {
    totals: Totals,
    mtls: bool,
    cum: [u64; BUCKETS.len() + 1],
    source: Node,
    target: Node,
}

fn node_of(p: &Peer, fallback_ns: &str, fallback_name: &str) -> Node {
    let unknown = p.workload == "unknown";
    let (namespace, workload) = if unknown {
        (fallback_ns.to_string(), fallback_name.to_string())
    } else {
        (p.namespace.clone(), p.workload.clone())
    };
    let known = |v: &str| if v == "unknown" { String::new() } else { v.to_string() };
    Node {
        id: format!("{namespace}/{workload}"),
        namespace,
        app: if known(&p.app).is_empty() { workload.clone() } else { p.app.clone() },
        version: known(&p.version),
        kind: if unknown {
            "unknown".into()
        } else if p.workload == crate::daemon::GATEWAY_NAME {
            "gateway".into()
        } else {
            "workload".into()
        },
        workload,
    }
}

/// Which series describe an edge: the caller's report, or the callee's when the caller has no proxy.
fn edges(metrics: &Metrics) -> BTreeMap<EdgeKey, EdgeAcc> {
    let mut out: BTreeMap<EdgeKey, EdgeAcc> = BTreeMap::new();
    let series = metrics.http_series();
    let reported_by_source: std::collections::HashSet<(String, String)> = series
        .iter()
        .filter(|s| s.key.reporter == Reporter::Source)
        .map(|s| (s.key.source.node(), s.key.destination.node()))
        .collect();
    for s in &series {
        let k = &s.key;
        if k.reporter == Reporter::Destination && reported_by_source.contains(&(k.source.node(), k.destination.node()))
        {
            continue;
        }
        add(&mut out, s);
    }
    out
}

fn add(out: &mut BTreeMap<EdgeKey, EdgeAcc>, s: &Series) {
    let k = &s.key;
    let source = node_of(&k.source, "unknown", "unknown");
    let target = node_of(&k.destination, &k.service.namespace, &k.service.name);
    let key = (source.id.clone(), target.id.clone(), k.protocol);
    let acc = out.entry(key).or_insert_with(|| EdgeAcc {
        totals: Totals::default(),
        mtls: false,
        cum: [0; BUCKETS.len() + 1],
        source,
        target,
    });
    acc.mtls |= k.mtls;
    for c in s.codes().iter() {
        let n = c.requests();
        acc.totals.requests += n;
        if c.code >= 500 || c.code == 0 {
            acc.totals.errors += n;
        }
        for (a, b) in acc.cum.iter_mut().zip(c.duration().cumulative()) {
            *a += b;
        }
    }
}

impl Graph {
    /// Records the current totals; keeps a window's worth.
    pub fn sample(&self, metrics: &Metrics) {
        let now = Instant::now();
        let totals = edges(metrics).into_iter().map(|(k, a)| (k, a.totals)).collect();
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back((now, totals));
        while s.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW + Duration::from_secs(1)) {
            s.pop_front();
        }
    }

    /// The graph now.
    pub fn view(&self, metrics: &Metrics, generation: u64, mtls_mode: &str) -> GraphView {
        let now = Instant::now();
        let current = edges(metrics);
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let base = samples.iter().find(|(t, _)| now.duration_since(*t) <= WINDOW + Duration::from_secs(1));
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut out = Vec::new();
        for (key, acc) in current {
            let before = base.and_then(|(_, m)| m.get(&key)).copied().unwrap_or_default();
            let secs = base.map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64());
            let d_req = acc.totals.requests.saturating_sub(before.requests);
            let d_err = acc.totals.errors.saturating_sub(before.errors);
            let rps = if secs >= 0.5 { d_req as f64 / secs } else { 0.0 };
            let error_rate = match (d_req, acc.totals.requests) {
                (0, 0) => 0.0,
                (0, all) => acc.totals.errors as f64 / all as f64,
                (n, _) => d_err as f64 / n as f64,
            };
            nodes.entry(acc.source.id.clone()).or_insert(acc.source);
            nodes.entry(acc.target.id.clone()).or_insert(acc.target);
            out.push(Edge {
                source: key.0,
                target: key.1,
                protocol: key.2.to_string(),
                rps: (rps * 100.0).round() / 100.0,
                requests: acc.totals.requests,
                errors: acc.totals.errors,
                error_rate: (error_rate * 1000.0).round() / 1000.0,
                mtls: acc.mtls,
                p50_ms: quantile(&acc.cum, 0.5),
                p99_ms: quantile(&acc.cum, 0.99),
            });
        }
        GraphView {
            generation,
            window_seconds: WINDOW.as_secs(),
            mtls_mode: mtls_mode.to_string(),
            nodes: nodes.into_values().collect(),
            edges: out,
        }
    }
}
