//! Istio's standard metrics (`istio_requests_total`, the duration and size
//! histograms, the TCP counters) with their standard labels, from both
//! reporters. A label set is built once per proxy, peer pair and cluster; the
//! request path then only adds to cells. The registry lock is taken when a
//! new label set or response code first appears and when Prometheus scrapes.
//!
//! A response code's cells are sharded by writing thread, as Envoy keeps a worker's stats
//! apart: each worker thread writes cells of its own with plain loads and stores (an atomic
//! add is a locked instruction, about 7 ns here, and a request made ten of them), on cache lines
//! no other worker writes. Reads add the shards up.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Adds `v` to `cell`: with a plain load and store when the calling thread is the cell's only
/// writer (`owned`), else atomically.
fn add(cell: &AtomicU64, v: u64, owned: bool) {
    if owned {
        cell.store(cell.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    } else {
        cell.fetch_add(v, Ordering::Relaxed);
    }
}

impl Histogram {
    /// Records one value; `owned`: the calling thread is this histogram's only writer.
    fn record(&self, v: f64, owned: bool) {
        let i = BUCKETS.iter().position(|b| v <= *b).unwrap_or(BUCKETS.len());
        add(&self.cells[i], 1, owned);
        add(&self.sum_milli, (v * 1000.0) as u64, owned);
        add(&self.count, 1, owned);
    }

    /// The sum of `parts`, to be read.
    fn sum<'a>(parts: impl Iterator<Item = &'a Histogram>) -> Histogram {
        let total = Histogram::default();
        for p in parts {
            for (t, c) in total.cells.iter().zip(&p.cells) {
                add(t, c.load(Ordering::Relaxed), true);
            }
            add(&total.sum_milli, p.sum_milli.load(Ordering::Relaxed), true);
            add(&total.count, p.count.load(Ordering::Relaxed), true);
        }
        total
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

thread_local! {
    /// The shard this thread writes: its own once it has claimed one, else the shared shard 0.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Shards handed out so far, the shared one included. Never handed out twice, so a claimed
/// shard has one writer for the life of the process.
static CLAIMED: AtomicUsize = AtomicUsize::new(1);

/// Shards a code series has at most; threads past them write the shared one.
const MAX_SHARDS: usize = 33;

/// Gives the calling thread (a worker) cells of its own in every code series created from now
/// on; in older ones, which have no shard for it, it writes the shared cells.
pub fn claim_shard() {
    let n = CLAIMED.fetch_add(1, Ordering::Relaxed);
    if n < MAX_SHARDS {
        SHARD.set(n);
    }
}

/// One thread's counters of a code series, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cells {
    requests: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The counters of one label set and one response code and flags.
#[derive(Debug)]
pub struct CodeSeries {
    /// `response_code`.
    pub code: u16,
    /// `response_flags`.
    pub flags: Box<str>,
    /// Shard 0 is written atomically by any thread; each other one by the thread that claimed it.
    shards: Box<[Cells]>,
}

impl CodeSeries {
    fn new(code: u16, flags: &str) -> CodeSeries {
        let n = CLAIMED.load(Ordering::Relaxed).min(MAX_SHARDS);
        CodeSeries { code, flags: flags.into(), shards: (0..n).map(|_| Cells::default()).collect() }
    }

    fn count(&self, duration: Duration, request_bytes: u64, response_bytes: u64) {
        let shard = SHARD.get();
        let (cells, owned) = match self.shards.get(shard) {
            Some(cells) if shard > 0 => (cells, true),
            _ => (&self.shards[0], false),
        };
        add(&cells.requests, 1, owned);
        cells.duration.record(duration.as_secs_f64() * 1000.0, owned);
        cells.request_bytes.record(request_bytes as f64, owned);
        cells.response_bytes.record(response_bytes as f64, owned);
    }

    /// `istio_requests_total`.
    pub fn requests(&self) -> u64 {
        self.shards.iter().map(|c| c.requests.load(Ordering::Relaxed)).sum()
    }

    /// `istio_request_duration_milliseconds`.
    pub fn duration(&self) -> Histogram {
        Histogram::sum(self.shards.iter().map(|c| &c.duration))
    }

    /// `istio_request_bytes`.
    pub fn request_bytes(&self) -> Histogram {
        Histogram::sum(self.shards.iter().map(|c| &c.request_bytes))
    }

    /// `istio_response_bytes`.
    pub fn response_bytes(&self) -> Histogram {
        Histogram::sum(self.shards.iter().map(|c| &c.response_bytes))
    }
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

    /// Counts one request, plus a copy-on-write insert the first time a code shows up.
    pub fn record(&self, code: u16, flags: &str, duration: Duration, request_bytes: u64, response_bytes: u64) {
        // Counted under the load's guard: a clone of the code's Arc would be two more atomic adds.
        if let Some(c) = self.codes.load().iter().find(|c| c.code == code && &*c.flags == flags) {
            return c.count(duration, request_bytes, response_bytes);
        }
        self.code(code, flags).count(duration, request_bytes, response_bytes);
    }

    fn code(&self, code: u16, flags: &str) -> Arc<CodeSeries> {
        let find = |v: &Vec<Arc<CodeSeries>>| v.iter().find(|c| c.code == code && &*c.flags == flags).cloned();
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.codes.load_full();
        if let Some(c) = find(&current) {
            return c;
        }
        let c = Arc::new(CodeSeries::new(code, flags));
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
            let _ = writeln!(out, "istio_requests_total{{{labels}}} {}", c.requests());
        }
        type Pick = fn(&CodeSeries) -> Histogram;
        let histograms: [(&str, Pick); 3] = [
            ("istio_request_duration_milliseconds", CodeSeries::duration),
            ("istio_request_bytes", CodeSeries::request_bytes),
            ("istio_response_bytes", CodeSeries::response_bytes),
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
    fn a_worker_counts_in_cells_of_its_own_and_reads_add_every_thread_up() {
        let m = Metrics::default();
        let series = m.http(key(Reporter::Source));
        let thousand = |series: &Series| {
            for _ in 0..1000 {
                series.record(200, "-", Duration::from_millis(3), 10, 100);
            }
        };
        // Two workers claim before the code's first request, so the code has a shard for each.
        let (claimed, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (series, claimed) = (series.clone(), claimed.clone());
                std::thread::spawn(move || {
                    claim_shard();
                    claimed.send(()).unwrap();
                    std::thread::park();
                    thousand(&series);
                })
            })
            .collect();
        rx.recv().unwrap();
        rx.recv().unwrap();
        series.record(200, "-", Duration::from_millis(3), 10, 100);
        workers.iter().for_each(|t| t.thread().unpark());
        // A thread that never claims, and one that claims after the code was made.
        let others = [false, true].map(|claim| {
            let series = series.clone();
            std::thread::spawn(move || {
                if claim {
                    claim_shard();
                }
                thousand(&series);
            })
        });
        workers.into_iter().chain(others).for_each(|t| t.join().unwrap());

        let codes = series.codes();
        let c = &codes[0];
        let by_shard: Vec<u64> = c.shards.iter().map(|s| s.requests.load(Ordering::Relaxed)).collect();
        // Shard 0: this thread, the one that never claimed, and the one that claimed too late.
        assert_eq!(by_shard[0], 2001, "{by_shard:?}");
        assert_eq!(by_shard.iter().filter(|n| **n == 1000).count(), 2, "{by_shard:?}");
        assert_eq!(c.requests(), 4001);
        assert_eq!(c.duration().cumulative()[BUCKETS.len()], 4001);
        assert_eq!(c.request_bytes().sum_milli.load(Ordering::Relaxed), 4001 * 10 * 1000);
        let mut out = String::new();
        m.prometheus(None, &mut out);
        assert!(out.contains("connection_security_policy=\"unknown\",pod=\"reviews-v2-abc\"} 4001"), "{out}");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        for v in [2.0, 3.0, 4.0, 20.0] {
            h.record(v, false);
        }
        let cum = h.cumulative();
        let p50 = quantile(&cum, 0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        let p99 = quantile(&cum, 0.99).unwrap();
        assert!((10.0..=25.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&Histogram::default().cumulative(), 0.5), None);
    }
}
