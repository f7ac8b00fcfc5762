//! What the proxies report: metrics (counted on the request task with atomic
//! adds), and access-log records that one telemetry task turns into log
//! lines, spans in memory and OTLP exports, off the request path.

pub mod accesslog;
pub mod graph;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use self::accesslog::Record;
use self::metrics::{Metrics, Reporter};
use self::trace::{Span, SpanKind, TraceStore};

/// How access logs are written and where spans go.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Print every proxy's access log to stdout too.
    pub print: bool,
    /// Istio's JSON access-log encoding instead of TEXT.
    pub json: bool,
    /// An OpenTelemetry collector (OTLP/HTTP): `http://127.0.0.1:4318`.
    pub otlp: Option<String>,
}

/// The proxies' handle on telemetry.
#[derive(Debug, Clone)]
pub struct Telemetry {
    tx: mpsc::UnboundedSender<Record>,
    /// Istio's metrics.
    pub metrics: Arc<Metrics>,
    /// Recent traces.
    pub traces: Arc<TraceStore>,
}

/// Spans go to the collector in batches of at most this many, or every second.
const OTLP_BATCH: usize = 256;

impl Telemetry {
    /// Starts the telemetry task: log lines go to `logs` under `<proxy>/istio-proxy`.
    pub fn start(logs: crate::logs::Logs, opts: Options) -> Telemetry {
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        let traces = Arc::new(TraceStore::default());
        let store = traces.clone();
        tokio::spawn(async move {
            let mut sinks: std::collections::HashMap<Arc<str>, demo_apps::LogSink> = Default::default();
            // A user's http_proxy (often meshd's own 15001) must not carry the export.
            let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
            let mut batch: Vec<Span> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let r = tokio::select! {
                    r = rx.recv() => match r { Some(r) => r, None => break },
                    _ = tick.tick() => {
                        flush(&client, &opts, &mut batch);
                        continue;
                    }
                };
                let line = if opts.json { r.json() } else { r.text() };
                if opts.print {
                    println!("{} {line}", r.proxy);
                }
                let sink =
                    sinks.entry(r.proxy.clone()).or_insert_with(|| logs.sink(&format!("{}/istio-proxy", r.proxy)));
                sink(&line);
                if let Some(span) = span_of(&r) {
                    if opts.otlp.is_some() {
                        batch.push(span.clone());
                        if batch.len() >= OTLP_BATCH {
                            flush(&client, &opts, &mut batch);
                        }
                    }
                    store.add(span);
                }
            }
        });
        Telemetry { tx, metrics: Arc::new(Metrics::default()), traces }
    }

    /// Hands a record to the telemetry task (never blocks).
    pub fn send(&self, r: Record) {
        let _ = self.tx.send(r);
    }
}

fn flush(client: &reqwest::Client, opts: &Options, batch: &mut Vec<Span>) {
    let Some(endpoint) = &opts.otlp else { return };
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let (client, endpoint) = (client.clone(), endpoint.clone());
    tokio::spawn(async move { otlp::export(&client, &endpoint, spans).await });
}

/// The span of a record: a server span at an inbound sidecar, a client span elsewhere.
fn span_of(r: &Record) -> Option<Span> {
    let ctx = r.span?;
    let series = r.series.as_ref();
    let kind = match series.map(|s| s.key.reporter) {
        Some(Reporter::Destination) => SpanKind::Server,
        _ => SpanKind::Client,
    };
    let workload = series
        .map(|s| match kind {
            SpanKind::Server => s.key.destination.workload.clone(),
            SpanKind::Client => s.key.source.workload.clone(),
        })
        .unwrap_or_else(|| r.proxy.to_string());
    let service = series.map(|s| s.key.service.fqdn.as_str()).filter(|s| *s != "unknown");
    let operation = match (service, &r.upstream_cluster) {
        (Some(svc), Some(c)) if c.port != 0 => format!("{svc}:{}/*", c.port),
        (Some(svc), _) => format!("{svc}/*"),
        (None, _) => "unknown".to_string(),
    };
    Some(Span {
        trace_id: ctx.trace_hex(),
        span_id: format!("{:016x}", ctx.span_id),
        parent_span_id: ctx.parent.map(|p| format!("{p:016x}")),
        proxy: r.proxy.to_string(),
        workload,
        kind,
        operation,
        start_unix_us: trace::unix_us(r.start),
        duration_us: r.duration_us,
        status: r.status,
        flags: r.flags.to_string(),
        cluster: r.upstream_cluster.as_ref().map_or("-".into(), |c| c.name.clone()),
        request: format!("{} {}", r.method, r.uri.path()),
    })
}
