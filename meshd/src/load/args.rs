//! Command-line flags of `meshd load`, spelled like fortio's Go flags.

use std::time::Duration;

use super::gofmt::parse_duration;

/// fortio log levels, in increasing severity (Go fortio's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// 0: everything.
    Debug,
    /// 1: verbose details (histograms of sizes).
    Verbose,
    /// 2: fortio's default.
    Info,
    /// 3: used by Istio's circuit-breaking task.
    Warning,
    /// 4: only errors; `-quiet` selects this.
    Error,
    /// 5.
    Critical,
    /// 6.
    Fatal,
}

impl LogLevel {
    /// Go fortio's display name.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "Debug",
            LogLevel::Verbose => "Verbose",
            LogLevel::Info => "Info",
            LogLevel::Warning => "Warning",
            LogLevel::Error => "Error",
            LogLevel::Critical => "Critical",
            LogLevel::Fatal => "Fatal",
        }
    }

    /// Whether messages of `level` are shown at this configured level.
    pub fn shows(self, level: LogLevel) -> bool {
        level >= self
    }
}

/// Parses a level name case-insensitively (also the numeric form `3`).
pub fn parse_loglevel(s: &str) -> Result<LogLevel, String> {
    let all = [
        LogLevel::Debug,
        LogLevel::Verbose,
        LogLevel::Info,
        LogLevel::Warning,
        LogLevel::Error,
        LogLevel::Critical,
        LogLevel::Fatal,
    ];
    if let Ok(n) = s.parse::<usize>() {
        return all.get(n).copied().ok_or_else(|| format!("invalid log level {s}"));
    }
    // fortio also accepts the short "warn"/"err" style spellings.
    let lower = s.to_ascii_lowercase();
    let lower = match lower.as_str() {
        "warn" => "warning",
        "err" => "error",
        "crit" => "critical",
        other => other,
    };
    all.into_iter().find(|l| l.name().eq_ignore_ascii_case(lower)).ok_or_else(|| {
        format!("invalid log level {s:?}, expected one of Debug|Verbose|Info|Warning|Error|Critical|Fatal")
    })
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// `meshd load` flags. Long names are fortio's flag names; run the raw
/// arguments through [`normalize_args`] first so Go-style `-qps 0` works.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Number of connections/goroutines/threads.
    #[arg(short = 'c', long = "c", default_value_t = 4)]
    pub c: usize,
    /// Queries per second, or 0 (or negative) for no wait/max qps.
    #[arg(long = "qps", default_value_t = 8.0, allow_negative_numbers = true)]
    pub qps: f64,
    /// Run for exactly this number of calls instead of a duration
    /// (split evenly between connections, remainder on the first).
    #[arg(short = 'n', long = "n", default_value_t = 0)]
    pub n: u64,
    /// How long to run the test (Go duration; ignored when `-n` is given;
    /// 0 runs until interrupted).
    #[arg(short = 't', long = "t", default_value = "5s", value_parser = duration_arg, allow_hyphen_values = true)]
    pub t: Duration,
    /// Additional header(s) `"Key: Value"`, repeatable.
    #[arg(short = 'H', long = "H", allow_hyphen_values = true)]
    pub headers: Vec<String>,
    /// HTTP method (default GET, or POST when a payload is given).
    #[arg(short = 'X', long = "X")]
    pub method: Option<String>,
    /// Payload string to send (switches the default method to POST).
    #[arg(long = "payload", allow_hyphen_values = true)]
    pub payload: Option<String>,
    /// Content-Type of the payload.
    #[arg(long = "content-type")]
    pub content_type: Option<String>,
    /// Per-request timeout (connect + response); a timeout counts as code -1.
    #[arg(long = "timeout", default_value = "3s", value_parser = duration_arg)]
    pub timeout: Duration,
    /// Log level: Debug|Verbose|Info|Warning|Error|Critical|Fatal.
    #[arg(long = "loglevel", value_parser = parse_loglevel)]
    pub loglevel: Option<LogLevel>,
    /// Comma separated list of percentiles to report.
    #[arg(short = 'p', long = "p", default_value = "50,75,90,99,99.9")]
    pub p: String,
    /// Resolution of the histogram's lowest buckets, in seconds.
    #[arg(short = 'r', long = "r", default_value_t = 0.001)]
    pub r: f64,
    /// Quiet mode: sets the log level to Error.
    #[arg(long = "quiet", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub quiet: bool,
    /// Write the JSON result to this file (`-` for stdout).
    #[arg(long = "json")]
    pub json: Option<String>,
    /// Whether errors during warmup are allowed (otherwise they abort the run).
    #[arg(
        long = "allow-initial-errors",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false
    )]
    pub allow_initial_errors: bool,
    /// Spread each connection's first call over the period instead of bursting.
    #[arg(long = "uniform", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub uniform: bool,
    /// Add +/-10% jitter to the sleep between paced calls.
    #[arg(long = "jitter", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub jitter: bool,
    /// Skip calls instead of catching up when behind schedule.
    #[arg(long = "nocatchup", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub nocatchup: bool,
    /// Keep connections alive between calls (`-keepalive=false` reconnects every call).
    #[arg(long = "keepalive", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = true)]
    pub keepalive: bool,
    /// Do a single fetch like `fortio curl` instead of a load test.
    #[arg(long = "curl", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub curl: bool,
    /// Run labels (only echoed in the JSON result).
    #[arg(long = "labels")]
    pub labels: Option<String>,
    /// Accepted for compatibility (TLS is not used through the sidecar).
    #[arg(short = 'k', long = "k", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub k: bool,
    /// Accepted for compatibility (auto-save of JSON results is not done).
    #[arg(short = 'a', long = "a", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false)]
    pub a: bool,
    /// Target URL, e.g. `http://httpbin:8000/get`.
    pub url: String,
}

impl LoadArgs {
    /// The effective log level: `-quiet` wins, then `-loglevel`, then Info.
    pub fn level(&self) -> LogLevel {
        if self.quiet {
            LogLevel::Error
        } else {
            self.loglevel.unwrap_or(LogLevel::Info)
        }
    }

    /// Parses `-p` into percentile numbers.
    pub fn percentiles(&self) -> anyhow::Result<Vec<f64>> {
        let mut res = Vec::new();
        for part in self.p.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let v: f64 =
                part.parse().map_err(|e| anyhow::anyhow!("Unable to extract percentiles from -p: {part:?}: {e}"))?;
            res.push(v);
        }
        if res.is_empty() {
            anyhow::bail!("Unable to extract percentiles from -p: list can't be empty");
        }
        Ok(res)
    }
}

/// Long flags that take a separate value (`-qps 0`), so the next argument
/// is a value and must not be rewritten even if it starts with `-`.
const VALUE_FLAGS: &[&str] =
    &["c", "qps", "n", "t", "H", "X", "payload", "content-type", "timeout", "loglevel", "p", "r", "json", "labels"];

/// Rewrites Go-style single-dash long flags (`-qps 0`, `-loglevel=Warning`)
/// into clap's `--qps 0`; single-letter flags (`-c 3`) stay short flags,
/// values following a value-taking flag (even `-1`) and everything after
/// `--` are left alone. Call it on the arguments after the `load` verb.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut expect_value = false;
    let mut rest_positional = false;
    for arg in args {
        if rest_positional || expect_value {
            expect_value = false;
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest_positional = true;
            out.push(arg);
            continue;
        }
        let stripped = if let Some(s) = arg.strip_prefix("--") {
            s
        } else if let Some(s) = arg.strip_prefix('-') {
            s
        } else {
            out.push(arg);
            continue;
        };
        if stripped.is_empty() || stripped.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            // A bare "-" or a negative number: not a flag.
            out.push(arg);
            continue;
        }
        let (name, has_value) = match stripped.split_once('=') {
            Some((n, _)) => (n, true),
            None => (stripped, false),
        };
        expect_value = !has_value && VALUE_FLAGS.contains(&name);
        if name.chars().count() == 1 {
            out.push(format!("-{stripped}"));
        } else {
            out.push(format!("--{stripped}"));
        }
    }
    out
}
