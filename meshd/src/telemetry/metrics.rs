//! Istio's standard metrics (`istio_requests_total`, the duration and size
//! histograms, the TCP counters) with their standard labels, from both
//! reporters. A label set is built once per proxy, peer pair and cluster; the
//! request path then only does atomic adds. The registry lock is taken when a
//! new label set or response code first appears and when Prometheus scrapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::snapshot::{Labels, PodInfo, Workload};

/// Envoy's default histogram buckets, which Istio's metrics use.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// A Prometheus histogram over [`BUCKETS`] with atomic cells.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last cell is `+Inf`.
    cells: [AtomicU64; BUCKETS.len() + 1],
    /// Sum in thousandths, so a sub-millisecond duration still counts.
    sum_milli: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one value.
    pub fn observe(&self, v: f64) {
        let i = BUCKETS.iter().position(|b| v <= *b).unwrap_or(BUCKETS.len());
        self.cells[i].fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add((v * 1000.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is the total).
    pub fn cumulative(&self) -> [u64; BUCKETS.len() + 1] {
        let mut out = [0; BUCKETS.len() + 1];
        let mut acc = 0;
        for (o, c) in out.iter_mut().zip(&self.cells) {
            acc += c.load(Ordering::Relaxed);
            *o = acc;
        }
        out
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let cum = self.cumulative();
        for (b, n) in BUCKETS.iter().zip(&cum) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", cum[BUCKETS.len()]);
        let sum = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count.load(Ordering::Relaxed));
    }
}

/// The quantile `q` (0..1) estimated from cumulative bucket counts, as
/// Prometheus' `histogram_quantile` does (linear within the bucket).
pub fn quantile(cum: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total = *cum.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev_count = 0u64;
    let mut prev_bound = 0.0;
    for (i, &c) in cum.iter().enumerate() {
        if c as f64 >= rank {
            let Some(&bound) = BUCKETS.get(i) else { return Some(prev_bound) };
            let in_bucket = (c - prev_count) as f64;
            let frac = if in_bucket > 0.0 { (rank - prev_count as f64) / in_bucket } else { 0.0 };
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        prev_count = c;
        prev_bound = BUCKETS.get(i).copied().unwrap_or(prev_bound);
    }
    Some(prev_bound)
}

/// Who reports a request: the client side (gateway, outbound sidecar) or the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reporter {
    /// The proxy that sent the request.
    Source,
    /// The proxy in front of the app that received it.
    Destination,
}

impl Reporter {
    fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The labels Istio gives one side of a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The owning Deployment (`reviews-v2`), `unknown` when not known.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`, or `unknown`.
    pub principal: String,
    /// The `app` label.
    pub app: String,
    /// The `version` label.
    pub version: String,
    /// `service.istio.io/canonical-name`, else `app`, else the workload.
    pub canonical_service: String,
    /// `service.istio.io/canonical-revision`, else `version`, else `latest`.
    pub canonical_revision: String,
}

const UNKNOWN: &str = "unknown";

impl Peer {
    /// A side meshd knows nothing of.
    pub fn unknown() -> Peer {
        let u = || UNKNOWN.to_string();
        Peer {
            workload: u(),
            namespace: u(),
            principal: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: "latest".into(),
        }
    }

    /// The labels of a workload; `principal` only when it has an mTLS identity.
    pub fn new(deployment: &str, namespace: &str, labels: &Labels, service_account: &str, principal: bool) -> Peer {
        let label = |k: &str| labels.get(k).cloned();
        let app = label("app");
        let version = label("version");
        Peer {
            workload: deployment.to_string(),
            namespace: namespace.to_string(),
            principal: if principal {
                crate::security::ca::spiffe_id(namespace, service_account)
            } else {
                UNKNOWN.into()
            },
            canonical_service: label("service.istio.io/canonical-name")
                .or_else(|| app.clone())
                .unwrap_or_else(|| deployment.to_string()),
            canonical_revision: label("service.istio.io/canonical-revision")
                .or_else(|| version.clone())
                .unwrap_or_else(|| "latest".into()),
            app: app.unwrap_or_else(|| UNKNOWN.into()),
            version: version.unwrap_or_else(|| UNKNOWN.into()),
        }
    }

    /// The labels of a calling workload (a proxy with an identity when `principal`).
    pub fn of_workload(w: &Workload, principal: bool) -> Peer {
        Peer::new(&w.deployment, &w.namespace, &w.labels, &w.service_account, principal)
    }

    /// The labels of a pod.
    pub fn of_pod(p: &PodInfo, principal: bool) -> Peer {
        Peer::new(&p.workload, &p.namespace, &p.labels, &p.service_account, principal)
    }

    /// The graph node of this side: `namespace/workload`.
    pub fn node(&self) -> String {
        format!("{}/{}", self.namespace, self.workload)
    }
}

/// The destination service of a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestService {
    /// `reviews.default.svc.cluster.local`, or `unknown`.
    pub fqdn: String,
    /// `reviews`.
    pub name: String,
    /// `default`.
    pub namespace: String,
}

impl DestService {
    /// A service named by its FQDN (`name.namespace.svc...`, or an external host).
    pub fn from_fqdn(fqdn: &str) -> DestService {
        // A Kubernetes service is `name.namespace.svc...`; an external host names itself.
        let (name, namespace) = match fqdn.split_once(".svc.").and_then(|(head, _)| head.split_once('.')) {
            Some((name, ns)) => (name.to_string(), ns.to_string()),
            None => (fqdn.to_string(), UNKNOWN.to_string()),
        };
        DestService { fqdn: fqdn.to_string(), name, namespace }
    }

    /// Not known (no route).
    pub fn unknown() -> DestService {
        DestService { fqdn: UNKNOWN.into(), name: UNKNOWN.into(), namespace: UNKNOWN.into() }
    }
}

/// What identifies one label set (less the response code and flags).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// The reporting proxy (pod name).
    pub proxy: String,
    /// Which side reports.
    pub reporter: Reporter,
    /// The caller.
    pub source: Peer,
    /// The callee.
    pub destination: Peer,
    /// The service called.
    pub service: DestService,
    /// `http`, `grpc` or `tcp`.
    pub protocol: &'static str,
    /// Whether the request travelled over mTLS (the graph's lock).
    pub mtls: bool,
}

impl SeriesKey {
    /// `connection_security_policy`: known on the server side only, as in Istio.
    fn security(&self) -> &'static str {
        match (self.reporter, self.mtls) {
            (Reporter::Source, _) => "unknown",
            (Reporter::Destination, true) => "mutual_tls",
            (Reporter::Destination, false) => "none",
        }
    }

    /// The labels before `response_code`, in Istio's order.
    fn head(&self) -> String {
        let (s, d, svc) = (&self.source, &self.destination, &self.service);
        let mut o = String::with_capacity(900);
        let _ = write!(
            o,
            "reporter=\"{}\",source_workload=\"{}\",source_canonical_service=\"{}\",\
             source_canonical_revision=\"{}\",source_workload_namespace=\"{}\",source_principal=\"{}\",\
             source_app=\"{}\",source_version=\"{}\",source_cluster=\"Kubernetes\",destination_workload=\"{}\",\
             destination_workload_namespace=\"{}\",destination_principal=\"{}\",destination_app=\"{}\",\
             destination_version=\"{}\",destination_service=\"{}\",destination_canonical_service=\"{}\",\
             destination_canonical_revision=\"{}\",destination_service_name=\"{}\",\
             destination_service_namespace=\"{}\",destination_cluster=\"Kubernetes\",request_protocol=\"{}\"",
            self.reporter.label(),
            esc(&s.workload),
            esc(&s.canonical_service),
            esc(&s.canonical_revision),
            esc(&s.namespace),
            esc(&s.principal),
            esc(&s.app),
            esc(&s.version),
            esc(&d.workload),
            esc(&d.namespace),
            esc(&d.principal),
            esc(&d.app),
            esc(&d.version),
            esc(&svc.fqdn),
            esc(&d.canonical_service),
            esc(&d.canonical_revision),
            esc(&svc.name),
            esc(&svc.namespace),
            self.protocol,
        );
        o
    }
}

/// Escapes a Prometheus label value.
fn esc(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
    } else {
        v.into()
    }
}

/// The counters of one label set and one response code and flags.
#[derive(Debug)]
pub struct CodeSeries {
    /// `response_code`.
    pub code: u16,
    /// `response_flags`.
    pub flags: Box<str>,
    /// `istio_requests_total`.
    pub requests: AtomicU64,
    /// `istio_request_duration_milliseconds`.
    pub duration: Histogram,
    /// `istio_request_bytes`.
    pub request_bytes: Histogram,
    /// `istio_response_bytes`.
    pub response_bytes: Histogram,
}

/// One HTTP label set: its response codes grow as they appear.
#[derive(Debug)]
pub struct Series {
    /// What it counts.
    pub key: SeriesKey,
    head: String,
    codes: ArcSwap<Vec<Arc<CodeSeries>>>,
    grow: Mutex<()>,
}

impl Series {
    fn new(key: SeriesKey) -> Series {
        Series { head: key.head(), key, codes: ArcSwap::from_pointee(Vec::new()), grow: Mutex::new(()) }
    }

    /// Counts one request: atomic adds, plus a copy-on-write insert the first time a code shows up.
    pub fn record(&self, code: u16, flags: &str, duration: Duration, request_bytes: u64, response_bytes: u64) {
        let cs = self.code(code, flags);
        cs.requests.fetch_add(1, Ordering::Relaxed);
        cs.duration.observe(duration.as_secs_f64() * 1000.0);
        cs.request_bytes.observe(request_bytes as f64);
        cs.response_bytes.observe(response_bytes as f64);
    }

    fn code(&self, code: u16, flags: &str) -> Arc<CodeSeries> {
        let find = |v: &Vec<Arc<CodeSeries>>| v.iter().find(|c| c.code == code && &*c.flags == flags).cloned();
        if let Some(c) = find(&self.codes.load()) {
            return c;
        }
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.codes.load_full();
        if let Some(c) = find(&current) {
            return c;
        }
        let c = Arc::new(CodeSeries {
            code,
            flags: flags.into(),
            requests: AtomicU64::new(0),
            duration: Histogram::default(),
            request_bytes: Histogram::default(),
            response_bytes: Histogram::default(),
        });
        let mut next = (*current).clone();
        next.push(c.clone());
        self.codes.store(Arc::new(next));
        c
    }

    /// Every response code seen so far.
    pub fn codes(&self) -> Arc<Vec<Arc<CodeSeries>>> {
        self.codes.load_full()
    }
}

/// One TCP label set.
#[derive(Debug)]
pub struct TcpSeries {
    /// What it counts.
    pub key: SeriesKey,
    head: String,
    /// `istio_tcp_connections_opened_total`.
    pub opened: AtomicU64,
    /// `istio_tcp_connections_closed_total`.
    pub closed: AtomicU64,
    /// `istio_tcp_sent_bytes_total` (toward the caller).
    pub sent: AtomicU64,
    /// `istio_tcp_received_bytes_total` (from the caller).
    pub received: AtomicU64,
}

/// Every label set, by key. Locked only when a label set first appears and when scraped.
#[derive(Debug, Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<SeriesKey, Arc<Series>>>,
    tcp: Mutex<BTreeMap<SeriesKey, Arc<TcpSeries>>>,
}

impl Metrics {
    /// The HTTP series of `key`, created on first use (callers cache the Arc).
    pub fn http(&self, key: SeriesKey) -> Arc<Series> {
        let mut map = self.http.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone()).or_insert_with(|| Arc::new(Series::new(key))).clone()
    }

    /// The TCP series of `key`, created on first use.
    pub fn tcp(&self, key: SeriesKey) -> Arc<TcpSeries> {
        let mut map = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(TcpSeries {
                    head: key.head(),
                    key,
                    opened: AtomicU64::new(0),
                    closed: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    received: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Every HTTP series.
    pub fn http_series(&self) -> Vec<Arc<Series>> {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Every TCP series.
    pub fn tcp_series(&self) -> Vec<Arc<TcpSeries>> {
        self.tcp.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// The Prometheus text of Istio's metrics reported by `proxy`, or by every proxy with a
    /// `pod` label added, as a Prometheus scrape of every pod would show them.
    pub fn prometheus(&self, proxy: Option<&str>, out: &mut String) {
        let mine = |k: &SeriesKey| proxy.is_none_or(|p| p == k.proxy);
        let pod = |k: &SeriesKey| match proxy {
            Some(_) => String::new(),
            None => format!(",pod=\"{}\"", esc(&k.proxy)),
        };
        let http: Vec<_> = self.http_series().into_iter().filter(|s| mine(&s.key)).collect();
        let rows: Vec<(String, Arc<CodeSeries>)> = http
            .iter()
            .flat_map(|s| {
                let codes = s.codes();
                let (head, sec, pod) = (&s.head, s.key.security(), pod(&s.key));
                codes
                    .iter()
                    .map(|c| {
                        let labels = format!(
                            "{head},response_code=\"{}\",grpc_response_status=\"\",response_flags=\"{}\",\
                             connection_security_policy=\"{sec}\"{pod}",
                            c.code,
                            esc(&c.flags)
                        );
                        (labels, c.clone())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let _ = writeln!(out, "# TYPE istio_requests_total counter");
        for (labels, c) in &rows {
            let _ = writeln!(out, "istio_requests_total{{{labels}}} {}", c.requests.load(Ordering::Relaxed));
        }
        type Pick = fn(&CodeSeries) -> &Histogram;
        let histograms: [(&str, Pick); 3] = [
            ("istio_request_duration_milliseconds", |c| &c.duration),
            ("istio_request_bytes", |c| &c.request_bytes),
            ("istio_response_bytes", |c| &c.response_bytes),
        ];
        for (name, pick) in histograms {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, c) in &rows {
                pick(c).write(out, name, labels);
            }
        }
        let tcp: Vec<_> = self.tcp_series().into_iter().filter(|s| mine(&s.key)).collect();
        type TcpPick = fn(&TcpSeries) -> &AtomicU64;
        let counters: [(&str, TcpPick); 4] = [
            ("istio_tcp_connections_opened_total", |s| &s.opened),
            ("istio_tcp_connections_closed_total", |s| &s.closed),
            ("istio_tcp_received_bytes_total", |s| &s.received),
            ("istio_tcp_sent_bytes_total", |s| &s.sent),
        ];
        for (name, pick) in counters {
            let _ = writeln!(out, "# TYPE {name} counter");
            for s in &tcp {
                let _ = writeln!(
                    out,
                    "{name}{{{},response_flags=\"-\",connection_security_policy=\"{}\"{}}} {}",
                    s.head,
                    s.key.security(),
                    pod(&s.key),
                    pick(s).load(Ordering::Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reporter: Reporter) -> SeriesKey {
        let labels: Labels = [("app", "reviews"), ("version", "v2")].map(|(k, v)| (k.into(), v.into())).into();
        SeriesKey {
            proxy: "reviews-v2-abc".into(),
            reporter,
            source: Peer::unknown(),
            destination: Peer::new("reviews-v2", "default", &labels, "bookinfo-reviews", true),
            service: DestService::from_fqdn("reviews.default.svc.cluster.local"),
            protocol: "http",
            mtls: true,
        }
    }

    #[test]
    fn label_sets_are_shared_and_codes_counted_apart() {
        let m = Metrics::default();
        let a = m.http(key(Reporter::Destination));
        let b = m.http(key(Reporter::Destination));
        assert!(Arc::ptr_eq(&a, &b));
        a.record(200, "-", Duration::from_millis(3), 0, 100);
        a.record(200, "-", Duration::from_millis(7), 0, 100);
        a.record(503, "UO", Duration::from_micros(200), 0, 81);
        let mut out = String::new();
        m.prometheus(Some("reviews-v2-abc"), &mut out);
        assert!(out.contains(
            "istio_requests_total{reporter=\"destination\",source_workload=\"unknown\",source_canonical_service=\"unknown\""
        ));
        assert!(out.contains("destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\""));
        assert!(out.contains(
            "destination_service=\"reviews.default.svc.cluster.local\",destination_canonical_service=\"reviews\",\
             destination_canonical_revision=\"v2\",destination_service_name=\"reviews\",\
             destination_service_namespace=\"default\""
        ));
        assert!(out.contains(
            "response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",\
             connection_security_policy=\"mutual_tls\"} 2"
        ));
        assert!(out.contains("response_code=\"503\",grpc_response_status=\"\",response_flags=\"UO\""));
        assert!(out.contains("le=\"5\"} 1\n"), "{out}");
        assert!(out.contains("le=\"10\"} 2\n"));
        assert!(out.contains("istio_request_duration_milliseconds_sum{"));
        let mut all = String::new();
        m.prometheus(None, &mut all);
        assert!(all.contains("connection_security_policy=\"mutual_tls\",pod=\"reviews-v2-abc\"} 2"));
        let mut other = String::new();
        m.prometheus(Some("nobody"), &mut other);
        assert!(!other.contains("istio_requests_total{"));
    }

    #[test]
    fn source_reports_leave_the_security_policy_unknown() {
        let m = Metrics::default();
        m.http(key(Reporter::Source)).record(200, "-", Duration::ZERO, 0, 0);
        let mut out = String::new();
        m.prometheus(None, &mut out);
        assert!(out.contains("reporter=\"source\""));
        assert!(out.contains("connection_security_policy=\"unknown\""));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        for v in [2.0, 3.0, 4.0, 20.0] {
            h.observe(v);
        }
        let cum = h.cumulative();
        let p50 = quantile(&cum, 0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        let p99 = quantile(&cum, 0.99).unwrap();
        assert!((10.0..=25.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&Histogram::default().cumulative(), 0.5), None);
    }
}
