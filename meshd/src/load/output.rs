//! fortio's end-of-run report (text on the err stream, optional JSON).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::args::{LoadArgs, LogLevel};
use super::client::FORTIO_VERSION;
use super::gofmt::{fmt_duration, fmt_g};
use super::runner::{Plan, WorkerReport};
use super::stats::{Histogram, HistogramData};

/// Everything the report needs about a finished run.
pub struct RunOutput<'a> {
    /// Parsed flags.
    pub args: &'a LoadArgs,
    /// Effective plan (threads possibly lowered).
    pub plan: &'a Plan,
    /// Percentiles to report.
    pub percentiles: &'a [f64],
    /// Per-worker measurements, in worker order.
    pub reports: &'a [WorkerReport],
    /// All workers merged.
    pub total: &'a WorkerReport,
    /// Wall time of the run (excluding warmup).
    pub elapsed: Duration,
    /// Address all sockets went to.
    pub proxy: SocketAddr,
    /// Wall-clock start of the run.
    pub started: SystemTime,
}

impl RunOutput<'_> {
    fn calls(&self) -> u64 {
        self.total.durations.counter.count
    }

    /// Achieved queries per second.
    pub fn actual_qps(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64()
    }

    fn sockets(&self) -> u64 {
        self.reports.iter().map(|r| r.sockets).sum()
    }

    fn connect_total(&self) -> Histogram {
        let mut h = Histogram::new(self.plan.offset, self.plan.resolution);
        for r in self.reports {
            h.merge(&r.connect_times);
        }
        h
    }

    /// The report from `Ended after` through `All done`, fortio's order.
    pub fn summary(&self) -> String {
        let level = self.args.level();
        let warn = level.shows(LogLevel::Warning);
        let mut s = String::new();
        let t = self.total;
        if warn {
            let _ = writeln!(
                s,
                "Ended after {} : {} calls. qps={}",
                fmt_duration(self.elapsed),
                self.calls(),
                fmt_g(self.actual_qps(), Some(5))
            );
        }
        if self.plan.qps > 0.0 && t.sleeps.counter.count > 0 {
            let behind = 100.0 * t.sleeps.first_bucket() as f64 / t.sleeps.counter.count as f64;
            // fortio only details sleeps when the pacing fell behind.
            if behind > 5.0 {
                s.push_str(&t.sleeps.export(&[50.0]).text("Aggregated Sleep Time"));
                let _ = writeln!(s, "WARNING {behind:.2}% of sleep were falling behind");
            } else if level.shows(LogLevel::Verbose) {
                s.push_str(&t.sleeps.export(&[50.0]).text("Aggregated Sleep Time"));
            } else if warn {
                s.push_str(&t.sleeps.counter.line("Sleep times"));
            }
        }
        if warn {
            s.push_str(&t.durations.export(self.percentiles).text("Aggregated Function Time"));
            s.push_str(&t.errors.export(self.percentiles).text("Error cases"));
        } else {
            s.push_str(&t.durations.counter.line("Aggregated Function Time"));
            s.push_str(&t.durations.export(self.percentiles).targets());
            s.push_str(&t.errors.counter.line("Error cases"));
        }
        s.push_str("# Socket and IP used for each connection:\n");
        for (i, r) in self.reports.iter().enumerate() {
            let ip = if r.sockets > 0 { self.proxy.to_string() } else { "[]".to_string() };
            let _ = write!(s, "[{i}] {:3} socket used, resolved to {ip}", r.sockets);
            s.push_str(&r.connect_times.counter.line(", connection timing"));
        }
        let connect = self.connect_total();
        if level.shows(LogLevel::Info) {
            s.push_str(&connect.export(self.percentiles).text("Connection time histogram (s)"));
        } else if warn {
            s.push_str(&connect.counter.line("Connection time (s)"));
        }
        let _ = writeln!(s, "Sockets used: {} (for perfect keepalive, would be {})", self.sockets(), self.plan.threads);
        let _ = writeln!(
            s,
            "Uniform: {}, Jitter: {}, Catchup allowed: {}",
            self.plan.uniform, self.plan.jitter, !self.plan.nocatchup
        );
        s.push_str("IP addresses distribution:\n");
        if self.sockets() > 0 {
            let _ = writeln!(s, "{}: {}", self.proxy, self.sockets());
        }
        let total = self.calls() as f64;
        for (code, n) in &t.codes {
            let _ = writeln!(s, "Code {code:3} : {n} ({:.1} %)", 100.0 * *n as f64 / total);
        }
        if level.shows(LogLevel::Verbose) {
            s.push_str(&t.header_sizes.export(&[]).text("Response Header Sizes Histogram"));
            s.push_str(&t.sizes.export(&[]).text("Response Body/Total Sizes Histogram"));
        } else if warn {
            s.push_str(&t.header_sizes.counter.line("Response Header Sizes"));
            s.push_str(&t.sizes.counter.line("Response Body/Total Sizes"));
        }
        // Warmup calls are only made in duration mode, one per connection.
        let warmup = if self.args.n > 0 { 0 } else { self.args.c };
        let _ = writeln!(
            s,
            "All done {} calls (plus {warmup} warmup) {:.3} ms avg, {:.1} qps",
            self.calls(),
            1000.0 * t.durations.counter.avg(),
            self.actual_qps()
        );
        s
    }
}

/// JSON string literal.
fn js(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// JSON number; NaN/infinity (empty counters) become null.
fn jf(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_string()
    }
}

fn histogram_json(h: &HistogramData) -> String {
    let c = &h.counter;
    let data: Vec<String> = h
        .buckets
        .iter()
        .map(|b| {
            format!(
                "{{\"Start\":{},\"End\":{},\"Percent\":{},\"Count\":{}}}",
                jf(b.start),
                jf(b.end),
                jf(b.percent),
                b.count
            )
        })
        .collect();
    let pcts: Vec<String> =
        h.percentiles.iter().map(|(p, v)| format!("{{\"Percentile\":{},\"Value\":{}}}", jf(*p), jf(*v))).collect();
    format!(
        "{{\"Count\":{},\"Min\":{},\"Max\":{},\"Sum\":{},\"Avg\":{},\"StdDev\":{},\"Data\":[{}],\"Percentiles\":{}}}",
        c.count,
        jf(c.min),
        jf(c.max),
        jf(c.sum),
        jf(c.avg()),
        jf(c.stddev()),
        data.join(","),
        if pcts.is_empty() { "null".to_string() } else { format!("[{}]", pcts.join(",")) }
    )
}

impl RunOutput<'_> {
    /// A subset of fortio's JSON result (same field names), one object.
    pub fn json(&self) -> String {
        let started = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        let demo_apps::Civil { year: y, month: mo, day: d, hour: h, minute: mi, second: se, .. } =
            demo_apps::Civil::from_system_time(self.started);
        let start_time = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}.{:09}Z", started.subsec_nanos());
        let id = format!("{y:04}-{mo:02}-{d:02}-{h:02}{mi:02}{se:02}");
        let requested_qps = if self.plan.qps > 0.0 { fmt_g(self.plan.qps, Some(9)) } else { "max".to_string() };
        let requested_duration = if self.args.n > 0 {
            let mut s = format!("exactly {} calls", self.args.n);
            if self.calls() != self.args.n {
                let _ = write!(s, ", interrupted after {}", self.calls());
            }
            s
        } else if self.plan.duration.is_zero() {
            "until stop".to_string()
        } else {
            fmt_duration(self.plan.duration)
        };
        let codes: Vec<String> = self.total.codes.iter().map(|(c, n)| format!("\"{c}\":{n}")).collect();
        let sockets: Vec<String> = self.reports.iter().map(|r| r.sockets.to_string()).collect();
        let ips = if self.sockets() > 0 {
            format!("{}:{}", js(&self.proxy.to_string()), self.sockets())
        } else {
            String::new()
        };
        let mut f: Vec<(&str, String)> = vec![
            ("RunType", js("HTTP")),
            ("Labels", js(self.args.labels.as_deref().unwrap_or(""))),
            ("StartTime", js(&start_time)),
            ("RequestedQPS", js(&requested_qps)),
            ("RequestedDuration", js(&requested_duration)),
            ("ActualQPS", jf(self.actual_qps())),
            ("ActualDuration", self.elapsed.as_nanos().to_string()),
            ("NumThreads", self.plan.threads.to_string()),
            ("Version", js(FORTIO_VERSION)),
            ("DurationHistogram", histogram_json(&self.total.durations.export(self.percentiles))),
            ("ErrorsDurationHistogram", histogram_json(&self.total.errors.export(self.percentiles))),
            ("Exactly", self.args.n.to_string()),
            ("Jitter", self.plan.jitter.to_string()),
            ("Uniform", self.plan.uniform.to_string()),
            ("NoCatchUp", self.plan.nocatchup.to_string()),
            ("RunID", "0".to_string()),
            ("AccessLoggerInfo", js("")),
            ("ID", js(&id)),
            ("RetCodes", format!("{{{}}}", codes.join(","))),
            ("IPCountMap", format!("{{{ips}}}")),
            ("URL", js(&self.plan.spec.url)),
            ("NumConnections", "1".to_string()),
            ("DisableKeepAlive", (!self.args.keepalive).to_string()),
            ("Sizes", histogram_json(&self.total.sizes.export(&[]))),
            ("HeaderSizes", histogram_json(&self.total.header_sizes.export(&[]))),
            ("Sockets", format!("[{}]", sockets.join(","))),
            ("SocketCount", self.sockets().to_string()),
            ("ConnectionStats", histogram_json(&self.connect_total().export(self.percentiles))),
            ("AbortOn", "0".to_string()),
        ];
        let mut s = String::from("{\n");
        let last = f.len().saturating_sub(1);
        for (i, (k, v)) in f.drain(..).enumerate() {
            let _ = write!(s, "  {}: {v}", js(k));
            s.push_str(if i == last { "\n" } else { ",\n" });
        }
        s.push_str("}\n");
        s
    }
}
