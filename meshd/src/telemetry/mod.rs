//! What the proxies report: metrics (counted on the request task with atomic
//! adds), and access-log records that a telemetry task turns into log lines,
//! spans in memory and OTLP exports, off the request path. Each worker thread
//! has a telemetry task of its own, so handing over a record never wakes
//! another thread.

pub mod accesslog;
pub mod graph;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use std::collections::HashMap;

use self::accesslog::{Entry, Record};
use self::metrics::Metrics;
use self::trace::{Span, TraceStore};
use crate::logs::AccessLog;

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
    /// The task started with the handle, for threads without one of their own.
    tx: mpsc::UnboundedSender<Box<Record>>,
    sink: Arc<Sink>,
    /// Istio's metrics.
    pub metrics: Arc<Metrics>,
    /// Recent traces.
    pub traces: Arc<TraceStore>,
}

/// Spans go to the collector in batches of at most this many, or every second.
const OTLP_BATCH: usize = 256;

/// Records taken from the channel per wake-up of the telemetry task.
const RECV_BATCH: usize = 64;

impl Telemetry {
    /// Starts the telemetry task: log lines go to `logs` under `<proxy>/istio-proxy`.
    pub fn start(logs: crate::logs::Logs, opts: Options) -> Telemetry {
        let traces = Arc::new(TraceStore::default());
        let sink = Arc::new(Sink { logs, opts, traces: traces.clone() });
        let tx = sink.clone().writer();
        Telemetry { tx, sink, metrics: Arc::new(Metrics::default()), traces }
    }

    /// Gives the calling thread (a worker, inside its runtime) a telemetry task of its own.
    pub fn start_local(&self) {
        let tx = self.sink.clone().writer();
        LOCAL.with(|l| *l.borrow_mut() = Some(tx));
    }

    /// Hands a record to the telemetry task (never blocks). Boxed: a record is some hundred
    /// bytes, which the channel would otherwise copy in and out.
    pub fn send(&self, r: Box<Record>) {
        let unsent = LOCAL.with(|l| match &*l.borrow() {
            Some(tx) => tx.send(r).err().map(|e| e.0),
            None => Some(r),
        });
        if let Some(r) = unsent {
            let _ = self.tx.send(r);
        }
    }
}

thread_local! {
    /// This thread's telemetry task, if it has one.
    static LOCAL: RefCell<Option<mpsc::UnboundedSender<Box<Record>>>> = const { RefCell::new(None) };
}

/// Where records end up; shared by every telemetry task.
#[derive(Debug)]
struct Sink {
    logs: crate::logs::Logs,
    opts: Options,
    traces: Arc<TraceStore>,
}

impl Sink {
    /// Spawns a task that writes the records sent on the returned channel.
    fn writer(self: Arc<Self>) -> mpsc::UnboundedSender<Box<Record>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Box<Record>>();
        tokio::spawn(async move {
            let Sink { logs, opts, traces: store } = &*self;
            let mut access: HashMap<Arc<str>, Arc<AccessLog>> = HashMap::new();
            // The log the last record went to: a worker's records mostly come from one proxy
            // at a time, whose name is one shared string (no hashing to find its log again).
            let mut last: Option<(Arc<str>, Arc<AccessLog>)> = None;
            // A user's http_proxy (often meshd's own 15001) must not carry the export.
            let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
            let mut batch: Vec<Span> = Vec::new();
            let mut records = Vec::with_capacity(RECV_BATCH);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                // In a fixed order, the tick first so a steady stream of records cannot starve it
                // (select's random order draws a number on every wake-up, about one a request).
                tokio::select! {
                    biased;
                    _ = tick.tick() => {
                        flush(&client, opts, &mut batch);
                        // Proxies whose pods are gone: their logs left `logs` already. Another
                        // worker's cache may hold the same log, so its count says nothing.
                        access.retain(|proxy, log| logs.is_current(proxy, log));
                        last = None;
                        continue;
                    }
                    n = rx.recv_many(&mut records, RECV_BATCH) => if n == 0 { break },
                }
                for r in records.drain(..) {
                    let e = Arc::new(Entry::from(*r));
                    if opts.print {
                        println!("{} {}", e.proxy, if opts.json { e.json() } else { e.text() });
                    }
                    let log = match &last {
                        Some((proxy, log)) if Arc::ptr_eq(proxy, &e.proxy) => log,
                        _ => {
                            let log = access
                                .entry(e.proxy.clone())
                                .or_insert_with(|| logs.access_log(&e.proxy, opts.json))
                                .clone();
                            &last.insert((e.proxy.clone(), log)).1
                        }
                    };
                    log.push(e.clone());
                    if e.span.is_some() {
                        if opts.otlp.is_some() {
                            batch.extend(trace::span(&e));
                            if batch.len() >= OTLP_BATCH {
                                flush(&client, opts, &mut batch);
                            }
                        }
                        store.add(e);
                    }
                }
            }
        });
        tx
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
