//! `meshd load` / `meshd curl`: a fortio-compatible HTTP load generator.
//!
//! Users paste commands from Istio's tasks (e.g. circuit breaking:
//! `fortio load -c 3 -qps 0 -n 30 -loglevel Warning http://httpbin:8000/get`)
//! and expect fortio's report, notably the `Code 200 : 17 (85.0 %)` lines.
//! Requests go to the mesh client's sidecar acting as an HTTP proxy: each
//! worker keeps one HTTP/1.1 keep-alive connection to it and sends
//! absolute-form requests (`GET http://httpbin:8000/get HTTP/1.1`).
//!
//! Flow of [`run`]: banner, plan (threads/calls split like fortio's
//! `periodic` runner), warmup in duration mode, workers, then the report.

mod args;
mod client;
pub(crate) mod gofmt;
mod output;
mod runner;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

pub use args::{normalize_args, parse_loglevel, LoadArgs, LogLevel};
pub use gofmt::{fmt_duration, parse_duration};

use client::{Client, RequestSpec, FORTIO_VERSION};
use gofmt::fmt_g;
use output::RunOutput;
use runner::{log_line, Plan, WorkerReport};

/// Default per-request timeout of `fortio curl` (fortio's `-timeout` default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Outcome of a load run, for callers that want more than the text report.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Calls per HTTP status code; -1 counts socket errors and timeouts.
    pub codes: BTreeMap<i32, u64>,
    /// Calls made (excluding warmup).
    pub calls: u64,
    /// TCP connections opened to the proxy (including warmup).
    pub sockets: u64,
    /// Duration of the measured run.
    pub elapsed: Duration,
}

/// Number of CPUs, shown where fortio shows GOMAXPROCS.
fn procs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Adds `http://` to a scheme-less URL, as fortio does (with a warning).
fn with_scheme(url: &str, level: LogLevel, err: &mut (dyn Write + Send)) -> std::io::Result<String> {
    let url = url.trim_start();
    if url.contains("://") {
        return Ok(url.to_string());
    }
    if level.shows(LogLevel::Warning) {
        let msg = format!("Assuming http:// on missing scheme for '{url}'");
        err.write_all(log_line(LogLevel::Warning, "http_client.go:170", &msg).as_bytes())?;
    }
    Ok(format!("http://{url}"))
}

/// Splits the work like fortio's periodic runner and returns the plan plus
/// the `Starting at ...` text (with any thread/call adjustment warnings).
fn make_plan(args: &LoadArgs, spec: RequestSpec, level: LogLevel) -> (Plan, String) {
    let mut threads = args.c.max(1);
    let gomax = procs();
    let warn = level.shows(LogLevel::Warning);
    let mut text = String::new();
    let (mut per_thread, mut leftover) = (0u64, 0u64);
    let infinite = args.n == 0 && args.t.is_zero();
    if args.qps > 0.0 {
        let qps = fmt_g(args.qps, None);
        if infinite {
            text = format!("Starting at {qps} qps with {threads} thread(s) [gomax {gomax}] until interrupted\n");
        } else {
            let mut num_calls = if args.n > 0 { args.n } else { (args.qps * args.t.as_secs_f64()) as u64 };
            if num_calls < 2 && args.n != 1 {
                let msg =
                    "Increasing the number of calls to the minimum of 2 with 1 thread. total duration will increase";
                if warn {
                    text.push_str(&log_line(LogLevel::Warning, "periodic.go:503", msg));
                }
                num_calls = 2;
                threads = 1;
            }
            if (2 * threads) as u64 > num_calls {
                // Paced mode wants at least 2 calls per thread.
                let new = ((num_calls / 2) as usize).max(1);
                if warn && new != threads {
                    let msg = format!(
                        "Lowering number of threads - total call {num_calls} -> lowering from {threads} to {new} threads"
                    );
                    text.push_str(&log_line(LogLevel::Warning, "periodic.go:508", &msg));
                }
                threads = new;
            }
            per_thread = num_calls / threads as u64;
            let total = per_thread * threads as u64;
            if args.n > 0 {
                leftover = args.n.saturating_sub(total);
                if warn {
                    text.push_str(&format!(
                        "Starting at {qps} qps with {threads} thread(s) [gomax {gomax}] : exactly {}, {per_thread} calls each (total {total} + {leftover})\n",
                        args.n
                    ));
                }
            } else if warn {
                text.push_str(&format!(
                    "Starting at {qps} qps with {threads} thread(s) [gomax {gomax}] for {} : {per_thread} calls each (total {total})\n",
                    fmt_duration(args.t)
                ));
            }
        }
    } else if infinite {
        text = format!("Starting at max qps with {threads} thread(s) [gomax {gomax}] until interrupted\n");
    } else if args.n > 0 {
        // More threads than calls would leave idle workers: use fewer.
        threads = threads.min(args.n as usize);
        per_thread = args.n / threads as u64;
        leftover = args.n % threads as u64;
        if warn {
            text = format!(
                "Starting at max qps with {threads} thread(s) [gomax {gomax}] for exactly {} calls ({per_thread} per thread + {leftover})\n",
                args.n
            );
        }
    } else if warn {
        text = format!("Starting at max qps with {threads} thread(s) [gomax {gomax}] for {}\n", fmt_duration(args.t));
    }
    let plan = Plan {
        spec,
        timeout: args.timeout,
        level,
        threads,
        qps: args.qps,
        exactly: args.n,
        duration: args.t,
        per_thread,
        leftover,
        uniform: args.uniform,
        jitter: args.jitter,
        nocatchup: args.nocatchup,
        allow_initial_errors: args.allow_initial_errors,
        offset: 0.0,
        resolution: if args.r > 0.0 { args.r } else { 0.001 },
    };
    (plan, text)
}

/// Runs a load test against `args.url` through the HTTP proxy at `proxy`,
/// writing fortio's report to `err` (and `-json -` to `out`).
///
/// With `-curl`, does a single fetch like [`curl`] instead. When warmup
/// fails (duration mode without `-allow-initial-errors`) the `Aborting
/// because of ...` line is already written to `err` and an error returned;
/// the caller should exit 1 without printing it again.
pub async fn run(
    args: &LoadArgs,
    proxy: SocketAddr,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<LoadResult> {
    let level = args.level();
    let percentiles = args.percentiles()?;
    if let (Some(l), false) = (args.loglevel, args.quiet) {
        if l != LogLevel::Info {
            let msg = format!("Log level is now {} {} (was 2 Info)", l as u8, l.name());
            err.write_all(log_line(LogLevel::Info, "logger.go:183", &msg).as_bytes())?;
        }
    }
    let url = with_scheme(&args.url, level, err)?;
    if args.curl {
        let started = std::time::Instant::now();
        let method = args.method.as_deref().unwrap_or("");
        let payload = args.payload.as_deref().map(str::as_bytes);
        let spec = RequestSpec::new(&url, &args.headers, method, payload, args.content_type.as_deref())?;
        let status = fetch_and_print(&spec, proxy, args.timeout, out, err).await?;
        return Ok(LoadResult {
            codes: BTreeMap::from([(i32::from(status), 1)]),
            calls: 1,
            sockets: 1,
            elapsed: started.elapsed(),
        });
    }
    let payload = args.payload.as_deref().map(str::as_bytes);
    let method = args.method.as_deref().unwrap_or("");
    let spec = RequestSpec::new(&url, &args.headers, method, payload, args.content_type.as_deref())?;
    let procs = procs();
    let mut banner = format!(
        "Fortio {FORTIO_VERSION} running at {} queries per second, {procs}->{procs} procs",
        fmt_g(args.qps, None)
    );
    if args.n > 0 {
        banner.push_str(&format!(", for {} calls: {url}\n", args.n));
    } else if args.t.is_zero() {
        banner.push_str(&format!(", until interrupted: {url}\n"));
    } else {
        banner.push_str(&format!(", for {}: {url}\n", fmt_duration(args.t)));
    }
    err.write_all(banner.as_bytes())?;
    let (plan, starting) = make_plan(args, spec, level);
    let plan = Arc::new(plan);
    let mut clients: Vec<Client> =
        (0..plan.threads).map(|_| Client::new(proxy, args.keepalive, plan.offset, plan.resolution)).collect();
    if args.n == 0 {
        clients = warmup_all(clients, &plan, err).await?;
    }
    err.write_all(starting.as_bytes())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctrl_c = if args.n == 0 && args.t.is_zero() {
        // "Until interrupted": ^C ends the run and still prints the report.
        Some(tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = stop_tx.send(true);
            }
        }))
    } else {
        None
    };
    let started = SystemTime::now();
    let start = tokio::time::Instant::now();
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<String>();
    let mut handles = Vec::with_capacity(plan.threads);
    for (id, client) in clients.into_iter().enumerate() {
        let calls = plan.per_thread + if id == 0 { plan.leftover } else { 0 };
        let fut = runner::run_worker(id, client, plan.clone(), start, calls, log_tx.clone(), stop_rx.clone());
        handles.push(tokio::spawn(fut));
    }
    drop(log_tx);
    // Workers' log lines are written as they come; the channel closes when
    // every worker has finished.
    while let Some(line) = log_rx.recv().await {
        err.write_all(line.as_bytes())?;
    }
    let mut reports = Vec::with_capacity(handles.len());
    for h in handles {
        reports.push(h.await?);
    }
    let elapsed = start.elapsed();
    if let Some(task) = ctrl_c {
        task.abort();
    }
    let mut total = WorkerReport::new(&plan);
    for r in &reports {
        total.durations.merge(&r.durations);
        total.errors.merge(&r.errors);
        total.sleeps.merge(&r.sleeps);
        total.sizes.merge(&r.sizes);
        total.header_sizes.merge(&r.header_sizes);
        total.sockets += r.sockets;
        for (code, n) in &r.codes {
            *total.codes.entry(*code).or_insert(0) += n;
        }
    }
    let report = RunOutput {
        args,
        plan: &plan,
        percentiles: &percentiles,
        reports: &reports,
        total: &total,
        elapsed,
        proxy,
        started,
    };
    err.write_all(report.summary().as_bytes())?;
    if let Some(file) = &args.json {
        let json = report.json();
        let name = if file == "-" {
            out.write_all(json.as_bytes())?;
            "stdout".to_string()
        } else {
            std::fs::write(file, json.as_bytes()).map_err(|e| anyhow::anyhow!("Unable to create {file}: {e}"))?;
            file.clone()
        };
        writeln!(err, "Successfully wrote {} bytes of Json data to {name}", json.len())?;
    }
    err.flush()?;
    Ok(LoadResult { codes: total.codes, calls: total.durations.counter.count, sockets: total.sockets, elapsed })
}

/// One warmup call per connection, in parallel; aborts on a failure unless
/// `-allow-initial-errors` (printing fortio's `Aborting because of ...`).
async fn warmup_all(
    clients: Vec<Client>,
    plan: &Arc<Plan>,
    err: &mut (dyn Write + Send),
) -> anyhow::Result<Vec<Client>> {
    let mut handles = Vec::with_capacity(clients.len());
    for mut client in clients {
        let plan = plan.clone();
        handles.push(tokio::spawn(async move {
            let res = runner::warmup(&mut client, &plan).await;
            (client, res)
        }));
    }
    let mut clients = Vec::with_capacity(handles.len());
    let mut failure = None;
    for h in handles {
        let (client, res) = h.await?;
        if let (Err(e), None) = (res, &failure) {
            failure = Some(e);
        }
        clients.push(client);
    }
    if let Some(e) = failure {
        writeln!(err, "Aborting because of {e}")?;
        anyhow::bail!("Aborting because of {e}");
    }
    Ok(clients)
}

/// Fetches once and prints like `fortio curl`; returns the status code.
async fn fetch_and_print(
    spec: &RequestSpec,
    proxy: SocketAddr,
    timeout: Duration,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<u16> {
    let mut client = Client::new(proxy, false, 0.0, 0.001);
    let fetched = client.fetch(spec, timeout).await.map_err(|e| match e {
        client::FetchError::Connect(m) | client::FetchError::Io(m) => anyhow::anyhow!(m),
        client::FetchError::Timeout => anyhow::anyhow!("timeout after {} fetching {}", fmt_duration(timeout), spec.url),
    })?;
    let mut head = fetched.status_line();
    head.push('\n');
    for (name, value) in &fetched.parts.headers {
        head.push_str(&format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes())));
    }
    head.push('\n');
    err.write_all(head.as_bytes())?;
    out.write_all(&fetched.body)?;
    out.flush()?;
    let status = fetched.parts.status.as_u16();
    if status != 200 {
        // fortio logs this and exits 1; the caller decides the exit code.
        let summary: String = String::from_utf8_lossy(&fetched.body).chars().take(512).collect();
        let msg = format!("Error status {status} : {summary}");
        err.write_all(log_line(LogLevel::Error, "fortio_main.go:425", &msg).as_bytes())?;
    }
    err.flush()?;
    Ok(status)
}

/// `fortio curl`: sends one request through the proxy, writes the status
/// line and headers (`HTTP/1.1 200 OK`, `name: value`, blank line) to `err`
/// and the body to `out`, and returns the status code. A non-200 status
/// also logs fortio's `Error status <code> : <body>` line on `err` (fortio
/// then exits 1). `method` empty means GET, or POST with a payload.
/// Socket errors and the 3 s timeout are returned as errors.
pub async fn curl(
    url: &str,
    headers: &[String],
    method: &str,
    payload: Option<&[u8]>,
    proxy: SocketAddr,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<u16> {
    let url = with_scheme(url, LogLevel::Info, err)?;
    let spec = RequestSpec::new(&url, headers, method, payload, None)?;
    fetch_and_print(&spec, proxy, DEFAULT_TIMEOUT, out, err).await
}
