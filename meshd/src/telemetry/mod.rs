//! What the proxies report: metrics (counted on the request task with atomic
//! adds), and access-log records that a telemetry writer turns into log lines,
//! spans in memory and OTLP exports, off the request path. Each worker thread
//! has a writer of its own, run once a connection has written its response, so
//! handing over a record never wakes another thread, nor a task.

pub mod accesslog;
pub mod graph;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use std::collections::HashMap;

use self::accesslog::{Entry, Record};
use self::metrics::Metrics;
use self::trace::{Span, TraceShard, TraceStore};
use crate::logs::{AccessLog, Ring};

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
    /// The task started with the handle, for threads without a writer of their own.
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
        let tx = sink.clone().spawn_shared();
        Telemetry { tx, sink, metrics: Arc::new(Metrics::default()), traces }
    }

    /// Gives the calling thread (a worker, inside its runtime) a writer of its own: its records
    /// wait in a queue until the connection that made them has answered ([`flush_local`]),
    /// and a task of its own flushes the queue and the OTLP batch every second.
    pub fn start_local(&self) {
        // Spawned first: outside a runtime this panics before the thread has a queue no tick
        // would ever write.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                with_local(Writer::tick);
            }
        });
        let writer = Writer::new(self.sink.clone());
        LOCAL.with(|l| *l.borrow_mut() = Some(writer));
        metrics::claim_shard();
    }

    /// Hands a record over (never blocks): to this thread's queue, or else to the shared task.
    pub fn send(&self, r: Box<Record>) {
        let unsent = LOCAL.with(|l| match &mut *l.borrow_mut() {
            Some(writer) => {
                writer.queue.push(r);
                None
            }
            None => Some(r),
        });
        if let Some(r) = unsent {
            let _ = self.tx.send(r);
        }
    }
}

/// Writes the records this thread queued. A connection calls it once its response is written:
/// the records cost the thread the same work as in a task of their own, without a wake-up, a
/// channel and a task switch for each, and without delaying the response.
pub fn flush_local() {
    with_local(Writer::write_queued);
}

/// A bounded store kept in parts, one per telemetry writer, each under a lock of its own: each
/// part keeps its [`Share`] of the bound, so the store keeps as much whatever the number of
/// workers. (Requests that all come to one worker are kept to that worker's share.)
#[derive(Debug)]
pub struct Parts<T> {
    parts: std::sync::Mutex<Vec<Arc<T>>>,
    count: Arc<AtomicUsize>,
}

impl<T> Default for Parts<T> {
    fn default() -> Parts<T> {
        Parts { parts: Default::default(), count: Default::default() }
    }
}

impl<T> Parts<T> {
    /// A part for a new writer, made by `make` with its share.
    pub fn add(&self, make: impl FnOnce(Share) -> T) -> Arc<T> {
        let part = Arc::new(make(Share(self.count.clone())));
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.push(part.clone());
        self.count.store(parts.len(), Ordering::Relaxed);
        part
    }

    /// Every part, to be read.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A part's share of its store's bound: the bound over the parts there are now (a relaxed load,
/// no lock).
#[derive(Debug)]
pub struct Share(Arc<AtomicUsize>);

impl Share {
    /// This part's share of `bound`.
    pub fn of(&self, bound: usize) -> usize {
        bound.div_ceil(self.0.load(Ordering::Relaxed).max(1))
    }
}

/// The items of `lists` in one list, each list's own order kept: the next item is always the
/// head with the least key (the first list's on a tie). How the rings and shards each writer
/// keeps are read as one.
pub fn merged<T, K: Ord>(lists: &[Vec<T>], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut next = vec![0; lists.len()];
    let mut out = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    while let Some(i) = (0..lists.len()).filter(|&i| next[i] < lists[i].len()).min_by_key(|&i| key(&lists[i][next[i]]))
    {
        out.push(&lists[i][next[i]]);
        next[i] += 1;
    }
    out
}

/// Runs `f` on this thread's writer, if it has one.
fn with_local(f: impl FnOnce(&mut Writer)) {
    LOCAL.with(|l| {
        if let Some(writer) = &mut *l.borrow_mut() {
            f(writer);
        }
    });
}

thread_local! {
    /// This thread's writer, if it has one.
    static LOCAL: RefCell<Option<Writer>> = const { RefCell::new(None) };
}

/// Where records end up; shared by every writer.
#[derive(Debug)]
struct Sink {
    logs: crate::logs::Logs,
    opts: Options,
    traces: Arc<TraceStore>,
}

impl Sink {
    /// Spawns the task that writes the records of threads without a writer of their own, sent
    /// on the returned channel.
    fn spawn_shared(self: Arc<Self>) -> mpsc::UnboundedSender<Box<Record>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Box<Record>>();
        tokio::spawn(async move {
            let mut writer = Writer::new(self);
            writer.queue.reserve(RECV_BATCH);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                // In a fixed order, the tick first so a steady stream of records cannot starve it
                // (select's random order draws a number on every wake-up).
                tokio::select! {
                    biased;
                    _ = tick.tick() => {
                        writer.tick();
                        continue;
                    }
                    n = rx.recv_many(&mut writer.queue, RECV_BATCH) => if n == 0 { break },
                }
                writer.write_queued();
            }
        });
        tx
    }
}

/// Turns records into log entries, stored spans and OTLP batches.
struct Writer {
    sink: Arc<Sink>,
    /// Records waiting to be written. Boxed, as on the shared task's channel: moving a record
    /// of some 600 bytes into the queue and out again costs more than its allocation (about
    /// 260 instructions a request in `make bench-instructions`).
    #[allow(clippy::vec_box)]
    queue: Vec<Box<Record>>,
    /// Each proxy's log, and this writer's ring in it.
    access: HashMap<Arc<str>, (Arc<AccessLog>, Arc<Ring>)>,
    /// The ring the last record went to: a thread's records mostly come from one proxy at a
    /// time, whose name is one shared string (no hashing to find its log again).
    last: Option<(Arc<str>, Arc<Ring>)>,
    /// This writer's part of the trace store, taken with its first span: a writer that never
    /// writes one (the shared task, mostly) takes no share of the store.
    traces: Option<Arc<TraceShard>>,
    /// A user's http_proxy (often meshd's own 15001) must not carry the export.
    client: reqwest::Client,
    batch: Vec<Span>,
}

impl Writer {
    fn new(sink: Arc<Sink>) -> Writer {
        let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        Writer { sink, queue: Vec::new(), access: HashMap::new(), last: None, traces: None, client, batch: Vec::new() }
    }

    /// Writes the queued records.
    fn write_queued(&mut self) {
        let Sink { logs, opts, traces } = &*self.sink;
        for r in self.queue.drain(..) {
            let e = Arc::new(Entry::from(r));
            if opts.print {
                // Not `println!`, which panics when stdout is gone (`meshd up --access-log | head`):
                // the connection that runs this would go with it.
                let line = if opts.json { e.json() } else { e.text() };
                let _ = writeln!(std::io::stdout().lock(), "{} {line}", e.proxy);
            }
            let ring = match &self.last {
                Some((proxy, ring)) if Arc::ptr_eq(proxy, &e.proxy) => ring,
                _ => {
                    let ring = self
                        .access
                        .entry(e.proxy.clone())
                        .or_insert_with(|| {
                            let log = logs.access_log(&e.proxy, opts.json);
                            let ring = log.ring();
                            (log, ring)
                        })
                        .1
                        .clone();
                    &self.last.insert((e.proxy.clone(), ring)).1
                }
            };
            ring.push(e.clone());
            if e.span.is_some() {
                if opts.otlp.is_some() {
                    self.batch.extend(trace::span(&e));
                    if self.batch.len() >= OTLP_BATCH {
                        flush(&self.client, opts, &mut self.batch);
                    }
                }
                self.traces.get_or_insert_with(|| traces.shard()).add(e);
            }
        }
    }

    /// Once a second: records nobody flushed are written, the OTLP batch goes out, and logs of
    /// proxies whose pods are gone are forgotten (they left `logs` already; another writer's
    /// cache may hold the same log, so its count says nothing).
    fn tick(&mut self) {
        self.write_queued();
        let Sink { logs, opts, .. } = &*self.sink;
        flush(&self.client, opts, &mut self.batch);
        self.access.retain(|proxy, (log, _)| logs.is_current(proxy, log));
        self.last = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "reviews-v1/istio-proxy";

    #[tokio::test]
    async fn a_workers_records_wait_for_its_connection_to_answer() {
        let logs = crate::logs::Logs::default();
        let tel = Telemetry::start(logs.clone(), Options::default());
        tel.start_local();
        tel.send(Box::new(accesslog::reviews()));
        assert!(logs.lines(LOG).is_empty(), "queued on this thread, not handed to a task");
        flush_local();
        assert_eq!(logs.lines(LOG).len(), 1);
        flush_local();
        assert_eq!(logs.lines(LOG).len(), 1, "written once");
    }

    #[tokio::test(start_paused = true)]
    async fn records_nobody_flushes_are_written_within_the_second() {
        let logs = crate::logs::Logs::default();
        let tel = Telemetry::start(logs.clone(), Options::default());
        tel.start_local();
        tokio::task::yield_now().await;
        tel.send(Box::new(accesslog::reviews()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(logs.lines(LOG).is_empty());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(logs.lines(LOG).len(), 1);
    }

    #[tokio::test]
    async fn a_thread_without_a_writer_sends_to_the_shared_task() {
        let logs = crate::logs::Logs::default();
        let tel = Telemetry::start(logs.clone(), Options::default());
        tel.send(Box::new(accesslog::reviews()));
        for _ in 0..100 {
            if !logs.lines(LOG).is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the shared task never wrote the record");
    }
}
