//! The per-connection worker loop: fortio's `periodic` runner semantics
//! (exact call counts, duration, qps pacing with catch-up, jitter, uniform).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::args::LogLevel;
use super::client::{Client, FetchError, RequestSpec};
use super::gofmt::{clock_hms, fmt_duration};
use super::stats::Histogram;

/// Settings shared by all workers of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Request to send.
    pub spec: RequestSpec,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Effective log level.
    pub level: LogLevel,
    /// Number of workers actually used (may be lowered in paced mode).
    pub threads: usize,
    /// Total target qps; <= 0 means as fast as possible.
    pub qps: f64,
    /// `-n` (0 = use the duration).
    pub exactly: u64,
    /// `-t` (zero = until interrupted).
    pub duration: Duration,
    /// Calls per worker (fortio's `numCalls`; 0 when unbounded).
    pub per_thread: u64,
    /// Extra calls done by worker 0.
    pub leftover: u64,
    /// `-uniform`.
    pub uniform: bool,
    /// `-jitter`.
    pub jitter: bool,
    /// `-nocatchup`.
    pub nocatchup: bool,
    /// `-allow-initial-errors`.
    pub allow_initial_errors: bool,
    /// Histogram offset (seconds) for call durations.
    pub offset: f64,
    /// Histogram resolution (seconds) for call durations.
    pub resolution: f64,
}

/// What a worker measured.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    /// Calls per status code (-1 for socket errors and timeouts).
    pub codes: BTreeMap<i32, u64>,
    /// Duration of every call, seconds.
    pub durations: Histogram,
    /// Duration of non-2xx calls, seconds.
    pub errors: Histogram,
    /// Planned sleeps between paced calls, seconds.
    pub sleeps: Histogram,
    /// Total response sizes (headers + body), bytes.
    pub sizes: Histogram,
    /// Response header sizes, bytes.
    pub header_sizes: Histogram,
    /// Sockets opened (including warmup).
    pub sockets: u64,
    /// Connect durations, seconds.
    pub connect_times: Histogram,
}

impl WorkerReport {
    /// Empty report with fortio's histogram scales.
    pub fn new(plan: &Plan) -> Self {
        WorkerReport {
            codes: BTreeMap::new(),
            durations: Histogram::new(plan.offset, plan.resolution),
            errors: Histogram::new(plan.offset, plan.resolution),
            // Negative offset puts behind-schedule sleeps in their own bucket.
            sleeps: Histogram::new(-0.001, 0.001),
            sizes: Histogram::new(0.0, 100.0),
            header_sizes: Histogram::new(0.0, 5.0),
            sockets: 0,
            connect_times: Histogram::new(plan.offset, plan.resolution),
        }
    }
}

/// fortio treats 2xx and 418 as success.
pub fn code_is_ok(code: i32) -> bool {
    (200..=299).contains(&code) || code == 418
}

/// Outcome of one call: code, header bytes, total bytes, error text.
pub struct CallResult {
    /// HTTP status or -1.
    pub code: i32,
    /// Header bytes (0 on error).
    pub header_size: u64,
    /// Header + body bytes (0 on error).
    pub total_size: u64,
    /// Socket error description for code -1.
    pub error: Option<String>,
}

/// Sends one request through `client` and classifies the outcome.
pub async fn call(client: &mut Client, plan: &Plan) -> CallResult {
    match client.fetch(&plan.spec, plan.timeout).await {
        Ok(f) => {
            let code = i32::from(f.parts.status.as_u16());
            let (header_size, total_size) = (f.header_size(), f.header_size() + f.body.len() as u64);
            // fortio stops reading at a code that is not OK, before the headers: it records no
            // header bytes for it (the task's `Response Header Sizes ... min 0`).
            let header_size = if code_is_ok(code) { header_size } else { 0 };
            CallResult { code, header_size, total_size, error: None }
        }
        Err(e) => {
            let msg = match e {
                FetchError::Connect(m) | FetchError::Io(m) => m,
                FetchError::Timeout => {
                    format!("Timeout after {} waiting for response from {}", fmt_duration(plan.timeout), plan.spec.url)
                }
            };
            CallResult { code: -1, header_size: 0, total_size: 0, error: Some(msg) }
        }
    }
}

/// fortio-style text log line: `HH:MM:SS W file:line> msg`.
pub fn log_line(level: LogLevel, file_line: &str, msg: &str) -> String {
    let c = match level {
        LogLevel::Debug => 'D',
        LogLevel::Verbose => 'V',
        LogLevel::Info => 'I',
        LogLevel::Warning => 'W',
        LogLevel::Error => 'E',
        LogLevel::Critical => 'C',
        LogLevel::Fatal => 'F',
    };
    format!("{} {c} {file_line}> {msg}\n", clock_hms())
}

/// Resolves when a stop is requested; never if the sender went away.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// +/-10% of `d`, uniformly, like fortio's `getJitter`.
fn jitter(d: Duration) -> Duration {
    let tenth = (d.as_nanos() / 10) as i64;
    if tenth <= 0 {
        return d;
    }
    let j = fastrand::i64(-tenth..=tenth);
    Duration::from_nanos((d.as_nanos() as i64 + j).max(0) as u64)
}

/// One warmup call (not counted), as fortio does in duration mode.
/// Returns an error description when it fails and errors aren't allowed.
pub async fn warmup(client: &mut Client, plan: &Plan) -> Result<(), String> {
    let r = call(client, plan).await;
    if !plan.allow_initial_errors && !code_is_ok(r.code) {
        return Err(format!("error {} for {} ({} bytes)", r.code, plan.spec.url, r.total_size));
    }
    Ok(())
}

/// Records one call in the report and queues its log line, if any.
fn record(
    id: usize,
    plan: &Plan,
    rep: &mut WorkerReport,
    r: &CallResult,
    latency: f64,
    log: &mpsc::UnboundedSender<String>,
) {
    *rep.codes.entry(r.code).or_insert(0) += 1;
    rep.durations.record(latency);
    rep.sizes.record(r.total_size as f64);
    rep.header_sizes.record(r.header_size as f64);
    if code_is_ok(r.code) {
        return;
    }
    rep.errors.record(latency);
    let line = match &r.error {
        Some(e) if plan.level.shows(LogLevel::Error) => {
            log_line(LogLevel::Error, "http_client.go:1083", &format!("[{id}] {e}"))
        }
        None if plan.level.shows(LogLevel::Warning) => log_line(
            LogLevel::Warning,
            "http_client.go:1179",
            &format!("[{id}] Non ok http code {} (HTTP/1.1 {})", r.code, r.code),
        ),
        _ => return,
    };
    let _ = log.send(line);
}

/// Runs worker `id` for `num_calls` calls (0 = until the duration or the
/// stop signal) starting at the shared `start`, like fortio's `runOne`.
pub async fn run_worker(
    id: usize,
    mut client: Client,
    plan: Arc<Plan>,
    mut start: Instant,
    num_calls: u64,
    log: mpsc::UnboundedSender<String>,
    mut stop: watch::Receiver<bool>,
) -> WorkerReport {
    let mut rep = WorkerReport::new(&plan);
    let per_thread_qps = plan.qps / plan.threads as f64;
    let use_qps = per_thread_qps > 0.0;
    let has_duration = !plan.duration.is_zero();
    let use_exactly = plan.exactly > 0;
    let end = start + plan.duration;
    if use_qps && plan.uniform {
        // Stagger workers over one period so calls don't all start together.
        let period = 1.0 / per_thread_qps;
        let delay = period - period / plan.threads as f64 * (plan.threads - id) as f64;
        let delay = Duration::from_secs_f64(delay.max(0.0));
        start += delay;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return finish(rep, client),
        }
    }
    let mut i: u64 = 0;
    'main: loop {
        let f_start = Instant::now();
        if !use_exactly && has_duration && f_start > end {
            if !use_qps {
                break;
            }
            // Paced mode does at least 2 calls, and the last one regardless.
            if i >= 2 && i + 1 != num_calls {
                if plan.level.shows(LogLevel::Warning) {
                    let msg = format!(
                        "T{id:03} warning only did {i} out of {num_calls} calls before reaching {}",
                        fmt_duration(plan.duration)
                    );
                    let _ = log.send(log_line(LogLevel::Warning, "periodic.go:863", &msg));
                }
                break;
            }
        }
        let r = call(&mut client, &plan).await;
        let latency = f_start.elapsed().as_secs_f64();
        record(id, &plan, &mut rep, &r, latency, &log);
        if use_qps {
            loop {
                i += 1;
                if (use_exactly || has_duration) && i >= num_calls {
                    break 'main;
                }
                let target = if has_duration && num_calls > 1 {
                    // Spread num_calls over the whole duration: the last
                    // call lands at the end (fortio's formula).
                    (i as f64 + i as f64 / (num_calls - 1) as f64) / per_thread_qps
                } else {
                    i as f64 / per_thread_qps
                };
                let elapsed = start.elapsed().as_secs_f64();
                let mut sleep = target - elapsed;
                if plan.nocatchup && sleep < 0.0 {
                    continue; // skip this call, we're late
                }
                if plan.jitter && sleep > 0.0 {
                    sleep = jitter(Duration::from_secs_f64(sleep)).as_secs_f64();
                }
                // fortio's sleeps are whole-nanosecond Go durations.
                rep.sleeps.record((sleep * 1e9).round() / 1e9);
                if sleep > 0.0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs_f64(sleep)) => {}
                        _ = stopped(&mut stop) => break 'main,
                    }
                }
                break;
            }
        } else {
            i += 1;
            if use_exactly && i >= num_calls {
                break;
            }
            if *stop.borrow() {
                break;
            }
        }
    }
    finish(rep, client)
}

fn finish(mut rep: WorkerReport, mut client: Client) -> WorkerReport {
    client.reset();
    rep.sockets = client.sockets;
    rep.connect_times = client.connect_times.clone();
    rep
}
