//! Compiled traffic policies: what a route does besides choosing a
//! destination (timeout, retries, fault, mirror) and how a cluster treats
//! its endpoints (load balancing, connection pool, outlier detection), with
//! Istio's defaults filled in.

use std::sync::Arc;
use std::time::Duration;

use crate::config::api;

/// Envoy's retry conditions (`retryOn`), as bit flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    /// Any 5xx, a reset, a connect failure or a per-try timeout.
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// 502, 503, 504, and the failures that map to them.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// The upstream reset or closed before answering.
    pub const RESET: RetryOn = RetryOn(1 << 2);
    /// Connecting failed.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    /// 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    /// HTTP/2 REFUSED_STREAM.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    /// The listed status codes.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    /// A response with `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 7);
    /// A reset before the request was sent.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 8);
    /// gRPC `CANCELLED`.
    pub const CANCELLED: RetryOn = RetryOn(1 << 9);
    /// gRPC `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 10);
    /// gRPC `INTERNAL`.
    pub const INTERNAL: RetryOn = RetryOn(1 << 11);
    /// gRPC `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 12);
    /// gRPC `UNAVAILABLE`.
    pub const UNAVAILABLE: RetryOn = RetryOn(1 << 13);
    /// `retriable-headers` (accepted; needs header matchers Istio does not expose).
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 14);
    /// HTTP/3 post-connect failure (accepted; meshd does not speak HTTP/3).
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 15);

    /// Whether any flag of `other` is set.
    pub fn has(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    fn name(name: &str) -> Option<RetryOn> {
        Some(match name {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" => Self::RESET,
            "reset-before-request" => Self::RESET_BEFORE_REQUEST,
            "connect-failure" => Self::CONNECT_FAILURE,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "retriable-headers" => Self::RETRIABLE_HEADERS,
            "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
            "http3-post-connect-failure" => Self::HTTP3_POST_CONNECT_FAILURE,
            "cancelled" => Self::CANCELLED,
            "deadline-exceeded" => Self::DEADLINE_EXCEEDED,
            "internal" => Self::INTERNAL,
            "resource-exhausted" => Self::RESOURCE_EXHAUSTED,
            "unavailable" => Self::UNAVAILABLE,
            _ => return None,
        })
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, o: RetryOn) -> RetryOn {
        RetryOn(self.0 | o.0)
    }
}

/// Parses a `retryOn` list the way Istio does: policy names and numeric codes;
/// a code adds `retriable-status-codes`. Unknown names are an error.
pub fn parse_retry_on(s: &str) -> Result<(RetryOn, Vec<u16>), String> {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(code) = part.parse::<u16>() {
            if !(100..=599).contains(&code) {
                return Err(format!("status code {code} is out of range"));
            }
            codes.push(code);
            on = on | RetryOn::RETRIABLE_STATUS_CODES;
        } else {
            on = on | RetryOn::name(part).ok_or_else(|| format!("unknown retry policy {part:?}"))?;
        }
    }
    Ok((on, codes))
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Istio's `attempts`).
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Status codes for `retriable-status-codes`.
    pub codes: Vec<u16>,
    /// Base interval of the jittered exponential backoff.
    pub backoff: Duration,
}

/// Envoy's default base retry interval.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

impl Default for RetryPolicy {
    /// Istio's policy for routes without `retries`: 2 attempts on
    /// connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn::CONNECT_FAILURE
                | RetryOn::REFUSED_STREAM
                | RetryOn::UNAVAILABLE
                | RetryOn::CANCELLED
                | RetryOn::RETRIABLE_STATUS_CODES,
            codes: vec![],
            backoff: DEFAULT_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// No retries at all (`attempts: 0`, or a route with a fault).
    pub fn none() -> RetryPolicy {
        RetryPolicy { attempts: 0, ..RetryPolicy::default() }
    }

    /// Compiles `retries`; None means Istio's default.
    pub fn from_api(r: Option<&api::HttpRetry>) -> Result<RetryPolicy, String> {
        let Some(r) = r else { return Ok(RetryPolicy::default()) };
        let attempts =
            u32::try_from(r.attempts.unwrap_or(0)).map_err(|_| "attempts must not be negative".to_string())?;
        let (on, codes) = match &r.retry_on {
            Some(s) => parse_retry_on(s)?,
            // Istio's default conditions apply when only `attempts` is set.
            None => (RetryPolicy::default().on, vec![]),
        };
        Ok(RetryPolicy {
            attempts,
            per_try_timeout: r.per_try_timeout.as_ref().map(|d| d.0),
            on,
            codes,
            backoff: r.backoff.as_ref().map(|d| d.0).unwrap_or(DEFAULT_BACKOFF),
        })
    }
}

/// Share of requests a fault or mirror applies to, in percent (0 to 100).
pub type Percentage = f64;

/// What an abort fault answers with.
#[derive(Debug, Clone, PartialEq)]
pub enum AbortWith {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code (number), sent as a trailers-only response.
    Grpc(u32),
}

/// A route's fault injection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fault {
    /// Delay and its percentage.
    pub delay: Option<(Duration, Percentage)>,
    /// Abort and its percentage.
    pub abort: Option<(AbortWith, Percentage)>,
}

fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    name.parse().ok().or_else(|| CODES.iter().position(|c| c.eq_ignore_ascii_case(name)).map(|i| i as u32))
}

impl Fault {
    /// Compiles `fault`. A fault without a percentage applies to no request
    /// (Istio reads a missing `percentage` and `percent` as 0%).
    pub fn from_api(f: &api::HttpFaultInjection) -> Result<Fault, String> {
        let mut out = Fault::default();
        if let Some(d) = &f.delay {
            let pct = d.percentage.as_ref().map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(0.0);
            match &d.fixed_delay {
                Some(delay) => out.delay = Some((delay.0, pct.clamp(0.0, 100.0))),
                // Istio drops exponentialDelay: Envoy does not implement it.
                None if d.exponential_delay.is_some() => {}
                None => return Err("delay needs fixedDelay".into()),
            }
        }
        if let Some(a) = &f.abort {
            let pct = a.percentage.as_ref().map(|p| p.value).unwrap_or(0.0).clamp(0.0, 100.0);
            let with = if let Some(s) = a.http_status {
                AbortWith::Http(
                    u16::try_from(s).ok().filter(|s| (200..=599).contains(s)).ok_or("httpStatus must be 200-599")?,
                )
            } else if let Some(g) = &a.grpc_status {
                AbortWith::Grpc(grpc_code(g).ok_or_else(|| format!("unknown grpcStatus {g:?}"))?)
            } else if a.http2_error.is_some() {
                // Envoy has no HTTP/2 error abort; the closest observable is a reset.
                AbortWith::Http(503)
            } else {
                return Err("abort needs httpStatus or grpcStatus".into());
            };
            out.abort = Some((with, pct));
        }
        Ok(out)
    }
}

/// Whether an event with `pct` percent probability happens this time.
pub fn roll(pct: Percentage) -> bool {
    pct >= 100.0 || (pct > 0.0 && fastrand::f64() * 100.0 < pct)
}

/// How a consistent-hash balancer finds the hash of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header.
    Header(String),
    /// A cookie, issued with `ttl` when absent.
    Cookie {
        /// Cookie name.
        name: String,
        /// Cookie path.
        path: Option<String>,
        /// Lifetime; a cookie is only generated when set.
        ttl: Option<Duration>,
    },
    /// The caller's IP address.
    SourceIp,
    /// A query parameter.
    QueryParam(String),
}

/// A consistent-hash lookup structure over a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashTable {
    /// Ring hash: sorted (point, endpoint index).
    Ring(Vec<(u64, u32)>),
    /// Maglev: table slot -> endpoint index.
    Maglev(Vec<u32>),
}

/// 64-bit FNV-1a, the stable hash the tables and requests share.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalize (splitmix) so nearby keys spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl HashTable {
    /// A ring of at least `min_size` points over `keys` (endpoint identities).
    pub fn ring(keys: &[String], min_size: u64) -> HashTable {
        if keys.is_empty() {
            return HashTable::Ring(vec![]);
        }
        let per = min_size.div_ceil(keys.len() as u64).clamp(1, 8192);
        let mut ring = Vec::with_capacity(keys.len() * per as usize);
        for (i, k) in keys.iter().enumerate() {
            for r in 0..per {
                ring.push((hash64(format!("{k}_{r}").as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        HashTable::Ring(ring)
    }

    /// A Maglev table of `size` slots (rounded up to a prime for the permutation).
    pub fn maglev(keys: &[String], size: u64) -> HashTable {
        let m = next_prime(size.clamp(7, 65537)) as usize;
        let n = keys.len();
        if n == 0 {
            return HashTable::Maglev(vec![]);
        }
        let params: Vec<(usize, usize)> = keys
            .iter()
            .map(|k| {
                let offset = (hash64(format!("{k}/offset").as_bytes()) % m as u64) as usize;
                let skip = (hash64(format!("{k}/skip").as_bytes()) % (m as u64 - 1) + 1) as usize;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = params[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        HashTable::Maglev(table)
    }

    /// Endpoint indices in preference order for `hash`, up to `n` distinct ones.
    pub fn candidates(&self, hash: u64, n: usize) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::with_capacity(n.min(8));
        match self {
            HashTable::Ring(ring) if !ring.is_empty() => {
                let start = ring.partition_point(|(p, _)| *p < hash);
                for k in 0..ring.len() {
                    let idx = ring[(start + k) % ring.len()].1;
                    if !out.contains(&idx) {
                        out.push(idx);
                        if out.len() == n {
                            break;
                        }
                    }
                }
            }
            HashTable::Maglev(table) if !table.is_empty() => {
                let start = (hash % table.len() as u64) as usize;
                for k in 0..table.len() {
                    let idx = table[(start + k) % table.len()];
                    if !out.contains(&idx) {
                        out.push(idx);
                        if out.len() == n {
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }
}

fn next_prime(mut n: u64) -> u64 {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// A cluster's load-balancing algorithm.
#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    /// Istio's default: power of two choices on in-flight requests.
    LeastRequest,
    /// Round robin.
    RoundRobin,
    /// Uniform random.
    Random,
    /// Forward to the address the caller asked for; meshd has no original
    /// destination, so it behaves as RANDOM over the service's endpoints.
    Passthrough,
    /// Consistent hash.
    Hash {
        /// Where the hash comes from.
        key: HashKey,
        /// The ring or Maglev table.
        table: Arc<HashTable>,
    },
}

/// Envoy circuit-breaker and pool settings of a cluster (per calling proxy).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `tcp.connectTimeout` (Istio default 10 s).
    pub connect_timeout: Duration,
    /// `http.http1MaxPendingRequests`.
    pub max_pending: u32,
    /// `http.http2MaxRequests`.
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection` (0 = unlimited).
    pub max_requests_per_connection: u32,
    /// `http.maxRetries`: concurrent retries allowed.
    pub max_retries: u32,
    /// `http.idleTimeout` (Istio default 1 h).
    pub idle_timeout: Duration,
    /// `http.h2UpgradePolicy: UPGRADE`: requests go to the endpoint over one multiplexed HTTP/2
    /// connection. The mesh default (`DEFAULT`, as in Istio) is not to upgrade.
    pub h2_upgrade: bool,
}

impl Default for PoolSettings {
    /// Istio's defaults: every limit at the maximum (u32::MAX), 10 s connect timeout.
    fn default() -> Self {
        PoolSettings {
            max_connections: u32::MAX,
            connect_timeout: Duration::from_secs(10),
            max_pending: u32::MAX,
            max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            idle_timeout: Duration::from_secs(3600),
            h2_upgrade: false,
        }
    }
}

fn limit(v: Option<i32>, default: u32) -> u32 {
    match v {
        Some(n) if n > 0 => n as u32,
        _ => default,
    }
}

impl PoolSettings {
    /// Compiles `connectionPool` over Istio's defaults.
    pub fn from_api(p: Option<&api::ConnectionPoolSettings>) -> PoolSettings {
        let mut out = PoolSettings::default();
        let Some(p) = p else { return out };
        if let Some(t) = &p.tcp {
            out.max_connections = limit(t.max_connections, out.max_connections);
            if let Some(d) = &t.connect_timeout {
                out.connect_timeout = d.0;
            }
        }
        if let Some(h) = &p.http {
            out.max_pending = limit(h.http1_max_pending_requests, out.max_pending);
            out.max_requests = limit(h.http2_max_requests, out.max_requests);
            out.max_requests_per_connection = h.max_requests_per_connection.unwrap_or(0).max(0) as u32;
            out.max_retries = limit(h.max_retries, out.max_retries);
            if let Some(d) = &h.idle_timeout {
                out.idle_timeout = d.0;
            }
            out.h2_upgrade = h.h2_upgrade_policy == Some(api::H2UpgradePolicy::Upgrade);
        }
        out
    }
}

/// Outlier detection settings of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Consecutive 5xx (including locally originated failures) before ejection; None = off.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 (and connect failures) before ejection; None = off.
    pub consecutive_gateway: Option<u32>,
    /// Analysis interval: ejections are lifted on this tick.
    pub interval: Duration,
    /// Base ejection time, multiplied by the number of ejections.
    pub base_ejection_time: Duration,
    /// Most endpoints ejected at once, percent (at least one is always allowed).
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, detection stops ejecting.
    pub min_health_percent: u32,
}

impl OutlierSettings {
    /// Compiles `outlierDetection` with Istio's defaults.
    pub fn from_api(o: &api::OutlierDetection) -> OutlierSettings {
        let five = o.consecutive_5xx_errors.or(o.consecutive_errors.and_then(|e| u32::try_from(e).ok())).unwrap_or(5);
        OutlierSettings {
            consecutive_5xx: (five > 0).then_some(five),
            consecutive_gateway: o.consecutive_gateway_errors.filter(|n| *n > 0),
            interval: o.interval.as_ref().map(|d| d.0).unwrap_or(Duration::from_secs(10)),
            base_ejection_time: o.base_ejection_time.as_ref().map(|d| d.0).unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: o.max_ejection_percent.map(|p| p.clamp(0, 100) as u32).unwrap_or(10),
            min_health_percent: o.min_health_percent.map(|p| p.clamp(0, 100) as u32).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_names_and_codes() {
        let (on, codes) = parse_retry_on("gateway-error,connect-failure,503").unwrap();
        assert!(on.has(RetryOn::GATEWAY_ERROR) && on.has(RetryOn::CONNECT_FAILURE));
        assert!(on.has(RetryOn::RETRIABLE_STATUS_CODES), "a code adds retriable-status-codes");
        assert_eq!(codes, vec![503]);
        assert!(parse_retry_on("5xx,bogus").is_err());
        let d = RetryPolicy::default();
        assert_eq!(d.attempts, 2);
        assert!(!d.on.has(RetryOn::FIVE_XX), "the default does not retry 5xx");
    }

    #[test]
    fn hash_tables_are_stable_and_spread() {
        let keys: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:80")).collect();
        for table in [HashTable::ring(&keys, 1024), HashTable::maglev(&keys, 65537)] {
            let mut counts = [0; 3];
            for k in 0..3000u32 {
                let c = table.candidates(hash64(&k.to_le_bytes()), 3);
                assert_eq!(c.len(), 3, "every endpoint appears in the preference list");
                assert_eq!(c, table.candidates(hash64(&k.to_le_bytes()), 3), "stable");
                counts[c[0] as usize] += 1;
            }
            assert!(counts.iter().all(|c| *c > 500), "{counts:?}");
        }
    }

    #[test]
    fn fault_without_percentage_is_zero() {
        let f: api::HttpFaultInjection = serde_yaml::from_str("abort: {httpStatus: 500}").unwrap();
        assert_eq!(Fault::from_api(&f).unwrap().abort, Some((AbortWith::Http(500), 0.0)));
        let f: api::HttpFaultInjection = serde_yaml::from_str("delay: {percent: 100, fixedDelay: 2s}").unwrap();
        assert_eq!(Fault::from_api(&f).unwrap().delay, Some((Duration::from_secs(2), 100.0)));
        let f: api::HttpFaultInjection =
            serde_yaml::from_str("abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}").unwrap();
        assert_eq!(Fault::from_api(&f).unwrap().abort, Some((AbortWith::Grpc(14), 50.0)));
        assert!(!roll(0.0));
        assert!(roll(100.0));
    }
}
