//! Per-proxy runtime state that outlives snapshots: each sidecar (and the
//! gateway) has its own connection pools, circuit-breaker counters, outlier
//! state and stats per cluster, as each Envoy does. The request path reaches
//! it with two atomic loads; the map behind it is only touched when a new
//! snapshot generation is first seen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::snapshot::policy::{roll, LbPolicy, OutlierSettings};
use crate::snapshot::ratelimit::{Context, LocalRateLimit};
use crate::snapshot::{Cluster, Snapshot, Workload};
use crate::telemetry::metrics::Series;

/// Envoy-style counters of one cluster in one proxy.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests sent upstream (each attempt).
    pub upstream_rq_total: AtomicU64,
    /// Requests that waited for a connection.
    pub upstream_rq_pending_total: AtomicU64,
    /// Requests refused because the pending queue was full.
    pub upstream_rq_pending_overflow: AtomicU64,
    /// Requests that waited for a connection whose attempt failed.
    pub upstream_rq_pending_failure_eject: AtomicU64,
    /// Requests refused by `http2MaxRequests`.
    pub upstream_rq_overflow: AtomicU64,
    /// Connections opened.
    pub upstream_cx_total: AtomicU64,
    /// Requests that found `maxConnections` reached when they would open a connection.
    pub upstream_cx_overflow: AtomicU64,
    /// Connection attempts that failed.
    pub upstream_cx_connect_fail: AtomicU64,
    /// Requests sent on a connection that had served an earlier request.
    pub upstream_rq_reused: AtomicU64,
    /// Retries sent.
    pub upstream_rq_retry: AtomicU64,
    /// Retries not sent because of `maxRetries`.
    pub upstream_rq_retry_overflow: AtomicU64,
    /// Route timeouts.
    pub upstream_rq_timeout: AtomicU64,
    /// Per-try timeouts.
    pub upstream_rq_per_try_timeout: AtomicU64,
    /// Outlier ejections so far.
    pub outlier_detection_ejections_total: AtomicU64,
}

/// The connections to one endpoint, open or opening, within `maxConnections` or past it. Each
/// connection holds it to give its slot back as it closes: apart from the endpoint, since the
/// endpoint holds its idle connections.
#[derive(Debug)]
pub struct EndpointCx {
    /// Connections to the endpoint.
    pub count: AtomicU64,
    /// Its cluster's state: the cluster's count and the requests waiting for a slot.
    pub shared: Arc<ClusterShared>,
}

/// Circuit-breaker gauges and counters of one cluster in one proxy; survives reloads.
#[derive(Debug)]
pub struct ClusterShared {
    /// Open connections.
    pub cx_active: AtomicU64,
    /// Requests waiting for a connection.
    pub rq_pending_active: AtomicU64,
    /// Requests in flight.
    pub rq_active: AtomicU64,
    /// Retries in flight.
    pub rq_retry_active: AtomicU64,
    /// Round-robin cursor.
    pub rr: AtomicU64,
    /// Woken when a connection is returned or closed.
    pub notify: Notify,
    /// Counters.
    pub stats: ClusterStats,
    /// The metric label set of requests that reached no endpoint of this cluster.
    pub series: OnceLock<Arc<Series>>,
    /// Zero of the ejection clock.
    epoch: Instant,
}

impl ClusterShared {
    pub(crate) fn new() -> ClusterShared {
        ClusterShared {
            cx_active: AtomicU64::new(0),
            rq_pending_active: AtomicU64::new(0),
            rq_active: AtomicU64::new(0),
            rq_retry_active: AtomicU64::new(0),
            rr: AtomicU64::new(0),
            notify: Notify::new(),
            stats: ClusterStats::default(),
            series: OnceLock::new(),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the cluster's state was made.
    pub fn now_ms(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// Outlier bookkeeping of one endpoint, counted by every worker without a lock, as Envoy's host
/// monitors count.
#[derive(Debug, Default)]
struct OutlierCounts {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejections: AtomicU32,
}

/// Sets a counter to zero, writing only when it is not already (a success usually finds it zero).
fn reset(n: &AtomicU32) {
    if n.load(Ordering::Relaxed) != 0 {
        n.store(0, Ordering::Relaxed);
    }
}

/// An idle upstream connection.
pub struct IdleConn {
    /// The connection.
    pub link: super::upstream::Link,
    /// Requests it has served.
    pub uses: u32,
    /// When it went idle.
    pub since: Instant,
}

impl std::fmt::Debug for IdleConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConn").field("uses", &self.uses).finish()
    }
}

/// One endpoint of one cluster in one proxy; survives reloads.
#[derive(Debug)]
pub struct EndpointRt {
    /// Address.
    pub addr: SocketAddr,
    /// The pod behind it (empty outside the mesh).
    pub pod: String,
    /// The metric label set of requests this proxy sends to it.
    pub series: OnceLock<Arc<Series>>,
    /// The SPIFFE identity to verify when connections use mTLS; None = plaintext.
    pub mtls: Option<String>,
    /// TLS this proxy originates to it (DestinationRule SIMPLE/MUTUAL).
    pub origin: Option<Arc<crate::security::origination::OriginTls>>,
    /// Requests in flight (LEAST_REQUEST reads it).
    pub active: AtomicU64,
    /// Requests sent.
    pub total: AtomicU64,
    /// Requests that got a 5xx or failed.
    pub errors: AtomicU64,
    /// Its connections' count, and its cluster's, which they give back as they close.
    pub cx: Arc<EndpointCx>,
    /// Idle keep-alive connections.
    idle: IdlePool,
    /// The shared HTTP/2 connection (`h2UpgradePolicy: UPGRADE`).
    pub h2: ArcSwapOption<super::upstream::H2Link>,
    /// Whether a request is opening the HTTP/2 connection; the others wait for it.
    pub h2_connecting: AtomicBool,
    /// Ejected until this many ms after the cluster epoch (0 = not ejected).
    ejected_until_ms: AtomicU64,
    outlier: OutlierCounts,
}

impl EndpointRt {
    pub(crate) fn new(addr: SocketAddr, mtls: Option<String>, shared: &Arc<ClusterShared>) -> EndpointRt {
        EndpointRt {
            addr,
            pod: String::new(),
            series: OnceLock::new(),
            mtls,
            origin: None,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cx: Arc::new(EndpointCx { count: AtomicU64::new(0), shared: shared.clone() }),
            idle: IdlePool::default(),
            h2: ArcSwapOption::empty(),
            h2_connecting: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            outlier: OutlierCounts::default(),
        }
    }

    /// Whether outlier detection has this endpoint ejected at `now_ms`.
    pub fn ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Takes an idle connection that is still open and not past `idle_timeout`; the others it
    /// finds on the way are closed.
    pub fn take_idle(&self, idle_timeout: Duration) -> Option<IdleConn> {
        loop {
            let mut c = self.idle.pop()?;
            if c.since.elapsed() < idle_timeout && c.link.is_open() {
                return Some(c);
            }
        }
    }

    /// Returns a connection to the idle pool.
    pub fn put_idle(&self, conn: IdleConn) {
        self.idle.push(conn);
    }

    /// Idle connections held.
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }
}

/// How many idle connections an endpoint keeps in its fixed ring before the rest spill over.
/// The bench's sixteen connections a proxy fit; the ring is made on the first return.
pub(crate) const IDLE_RING: usize = 32;

/// An endpoint's idle connections, shared by every worker and taken without a lock: a
/// fixed ring of [`IDLE_RING`] connections, and past it an unbounded queue, as Envoy keeps no
/// bound on idle connections. Both take no lock: a take or a return is a compare-and-swap (a
/// take may spin briefly on a return another worker is writing). Connections come back in the
/// order they went idle, so each of them keeps being used and none ages out under steady load.
#[derive(Default)]
struct IdlePool {
    ring: OnceLock<crossbeam_queue::ArrayQueue<IdleConn>>,
    spill: crossbeam_queue::SegQueue<IdleConn>,
}

impl IdlePool {
    fn pop(&self) -> Option<IdleConn> {
        if let Some(c) = self.ring.get().and_then(|r| r.pop()) {
            return Some(c);
        }
        // Checked first: popping an empty queue costs a fence, the check two loads.
        if self.spill.is_empty() {
            return None;
        }
        self.spill.pop()
    }

    fn push(&self, conn: IdleConn) {
        if let Err(conn) = self.ring.get_or_init(|| crossbeam_queue::ArrayQueue::new(IDLE_RING)).push(conn) {
            self.spill.push(conn);
        }
    }

    /// Connections held, in the ring and spilled.
    fn len(&self) -> usize {
        self.ring.get().map_or(0, |r| r.len()) + self.spill.len()
    }
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool").field("idle", &self.len()).finish()
    }
}

/// RAII count of one in-flight request on an endpoint; borrowed, as the request holds the
/// endpoint for as long (a reference count would be two more atomic operations a request).
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a EndpointRt);

impl<'a> ActiveGuard<'a> {
    /// Counts a request on `ep` until dropped.
    pub fn new(ep: &'a EndpointRt) -> ActiveGuard<'a> {
        ep.active.fetch_add(1, Ordering::Relaxed);
        ep.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(ep)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an attempt on an endpoint came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// An upstream response with this status.
    Status(u16),
    /// A locally seen failure: connect error, reset, timeout.
    LocalFailure,
}

/// A cluster's runtime view for one snapshot generation.
#[derive(Debug)]
pub struct ClusterRt {
    /// Gauges and counters (shared across generations).
    pub shared: Arc<ClusterShared>,
    /// Endpoint state, aligned with the snapshot cluster's `endpoints`.
    pub endpoints: Vec<Arc<EndpointRt>>,
}

impl ClusterRt {
    /// State for a one-endpoint cluster outside any snapshot (an inbound listener's app).
    pub fn single(addr: SocketAddr) -> ClusterRt {
        ClusterRt::of(&[addr])
    }

    /// State for a plaintext cluster of `addrs` outside any snapshot.
    pub fn of(addrs: &[SocketAddr]) -> ClusterRt {
        let shared = Arc::new(ClusterShared::new());
        let endpoints = addrs.iter().map(|a| Arc::new(EndpointRt::new(*a, None, &shared))).collect();
        ClusterRt { shared, endpoints }
    }

    /// Picks an endpoint index; None when every endpoint is ejected (503 UH) or there is none.
    /// `hash` is the consistent-hash key when the policy needs one; `avoid` is the previous attempt's endpoint.
    pub fn pick(&self, cluster: &Cluster, hash: Option<u64>, avoid: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        // The clock is read, and the endpoints counted, only once an endpoint of the cluster has
        // ever been ejected (never, in most clusters; the counter is never reset): until then
        // every one is healthy.
        let ever = self.shared.stats.outlier_detection_ejections_total.load(Ordering::Relaxed) != 0;
        let (now, healthy_count) = if ever {
            let now = self.shared.now_ms();
            (now, self.endpoints.iter().filter(|e| !e.ejected(now)).count())
        } else {
            (0, n)
        };
        // Istio sets Envoy's panic threshold to minHealthPercent (0 by default): below it, balance over all.
        let panic = cluster
            .outlier
            .as_ref()
            .is_some_and(|o| o.min_health_percent > 0 && healthy_count * 100 < n * o.min_health_percent as usize);
        let all_ok = panic || !ever;
        let ok = |i: usize| all_ok || !self.endpoints[i].ejected(now);
        if healthy_count == 0 && !panic {
            return None;
        }
        let usable = if panic { n } else { healthy_count };
        // Another host than last time, when there is one (Istio's previous-hosts predicate).
        let allowed = |i: usize| ok(i) && (usable < 2 || Some(i) != avoid);
        let nth_allowed = |k: usize| (0..n).filter(|i| allowed(*i)).nth(k);
        let count = (0..n).filter(|i| allowed(*i)).count();
        if count == 0 {
            return None;
        }
        match &cluster.lb {
            LbPolicy::Random | LbPolicy::Passthrough => nth_allowed(fastrand::usize(..count)),
            LbPolicy::RoundRobin => {
                let start = self.shared.rr.fetch_add(1, Ordering::Relaxed) as usize;
                (0..n).map(|k| (start + k) % n).find(|i| allowed(*i))
            }
            LbPolicy::LeastRequest => {
                let a = nth_allowed(fastrand::usize(..count))?;
                if count == 1 {
                    return Some(a);
                }
                let mut b = nth_allowed(fastrand::usize(..count - 1))?;
                if b >= a {
                    b = (b + 1..n).find(|i| allowed(*i)).unwrap_or(b);
                }
                let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
            LbPolicy::Hash { table, .. } => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                table.candidates(h, n).into_iter().map(|i| i as usize).find(|i| ok(*i))
            }
        }
    }

    /// Feeds one attempt's result to outlier detection; returns true if it ejected the endpoint.
    pub fn record(&self, cluster: &Cluster, idx: usize, result: AttemptResult) -> bool {
        let Some(ep) = self.endpoints.get(idx) else {
            return false;
        };
        let failed = !matches!(result, AttemptResult::Status(s) if s < 500);
        if failed {
            ep.errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(od) = &cluster.outlier else { return false };
        let gateway = matches!(result, AttemptResult::LocalFailure | AttemptResult::Status(502..=504));
        let counts = &ep.outlier;
        if !failed {
            reset(&counts.consecutive_5xx);
            reset(&counts.consecutive_gateway);
            return false;
        }
        let consecutive_5xx = counts.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let consecutive_gateway = if gateway {
            counts.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            reset(&counts.consecutive_gateway);
            0
        };
        let hit = od.consecutive_5xx.is_some_and(|t| consecutive_5xx >= t)
            || od.consecutive_gateway.is_some_and(|t| consecutive_gateway >= t);
        if !hit {
            return false;
        }
        let now = self.shared.now_ms();
        let until = ep.ejected_until_ms.load(Ordering::Relaxed);
        if now < until || !self.may_eject(od, now) {
            return false;
        }
        let ejections = counts.ejections.load(Ordering::Relaxed) + 1;
        let duration = ejection_time(od, ejections);
        // Of failures that cross the threshold at once, the one that moves the deadline ejects.
        if ep
            .ejected_until_ms
            .compare_exchange(until, now + duration.as_millis() as u64, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        counts.ejections.store(ejections, Ordering::Relaxed);
        counts.consecutive_5xx.store(0, Ordering::Relaxed);
        counts.consecutive_gateway.store(0, Ordering::Relaxed);
        self.shared.stats.outlier_detection_ejections_total.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Envoy caps ejections at `maxEjectionPercent` of the cluster, but always allows one.
    fn may_eject(&self, od: &OutlierSettings, now: u64) -> bool {
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        let max = (n * od.max_ejection_percent as usize / 100).max(1);
        ejected < max
    }

    /// Endpoints currently ejected, for the admin API.
    pub fn ejected(&self) -> Vec<bool> {
        let now = self.shared.now_ms();
        self.endpoints.iter().map(|e| e.ejected(now)).collect()
    }
}

/// Ejection time: base times the number of ejections, rounded up to the
/// analysis interval (Envoy lifts ejections on its interval timer), capped at 300 s.
fn ejection_time(od: &OutlierSettings, ejections: u32) -> Duration {
    let raw = od.base_ejection_time.saturating_mul(ejections).min(Duration::from_secs(300));
    let interval = od.interval.as_millis().max(1);
    Duration::from_millis((raw.as_millis().div_ceil(interval) * interval) as u64)
}

/// A token bucket of one local rate limit in one proxy; survives reloads that keep its fill
/// interval. Every worker takes from it with a compare-and-swap of one word: the fill interval
/// last counted in the high half, the tokens left in the low half.
#[derive(Debug)]
pub struct Bucket {
    epoch: Instant,
    interval: Duration,
    state: AtomicU64,
}

/// How far ahead of a worker's reading another worker's count of intervals can be: a worker
/// that read the clock and was preempted before its compare-and-swap. Farther is behind.
const AHEAD: u32 = 1 << 16;

impl Bucket {
    fn new(tokens: u64, interval: Duration) -> Bucket {
        Bucket { epoch: Instant::now(), interval, state: AtomicU64::new(u64::from(clamp32(tokens))) }
    }

    /// Takes a token if there is one, refilling `per_fill` every fill interval up to `max` first.
    pub fn take(&self, max: u64, per_fill: u64) -> bool {
        // The fill intervals since the epoch, kept modulo 2^32.
        let now = (self.epoch.elapsed().as_nanos() / self.interval.as_nanos().max(1)) as u32;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (mut fill, mut tokens) = ((cur >> 32) as u32, cur as u32);
            let ahead = fill.wrapping_sub(now);
            if ahead >= AHEAD {
                // Behind by this many intervals, however long the bucket sat untouched.
                let fills = u64::from(now.wrapping_sub(fill));
                fill = now;
                tokens = clamp32(u64::from(tokens).saturating_add(fills.saturating_mul(per_fill)).min(max));
            }
            if tokens == 0 {
                return false;
            }
            let next = u64::from(fill) << 32 | u64::from(tokens - 1);
            match self.state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }
}

/// `maxTokens` is a uint32 in Envoy's token bucket.
fn clamp32(n: u64) -> u32 {
    n.min(u64::from(u32::MAX)) as u32
}

/// A rate limit that applies to this proxy, with its bucket.
#[derive(Debug, Clone)]
pub struct Limit {
    /// The compiled limit.
    pub limit: Arc<LocalRateLimit>,
    /// This proxy's bucket for it.
    pub bucket: Arc<Bucket>,
}

impl Limit {
    /// Whether this request is refused (429).
    pub fn refuses(&self) -> bool {
        let l = &self.limit;
        if !roll(l.enabled) {
            return false;
        }
        !self.bucket.take(l.max_tokens, l.tokens_per_fill) && roll(l.enforced)
    }
}

/// The runtime view of one generation.
#[derive(Debug)]
pub struct Generation {
    /// Snapshot generation it was built for.
    pub generation: u64,
    /// The [`ProxyRuntime::id`] of the proxy it was built for.
    pub proxy: u64,
    /// Cluster state, indexed by `Cluster::index`.
    pub clusters: Vec<ClusterRt>,
    /// Rate limits on this proxy, by listener kind.
    pub limits: Vec<(Context, Limit)>,
}

impl Generation {
    /// The first limit on a listener of kind `ctx` that refuses this request (to inbound `port`),
    /// if any. A limit a route patch puts on one inbound port counts only there, and there in
    /// place of the listener's, as a route's `typed_per_filter_config` replaces the filter's:
    /// a request takes a token from one bucket.
    pub fn rate_limited(&self, ctx: Context, port: Option<u16>) -> Option<&Limit> {
        let on_route = port.is_some() && self.limits.iter().any(|(c, l)| *c == ctx && l.limit.port == port);
        let wanted = if on_route { port } else { None };
        self.limits.iter().find(|(c, l)| *c == ctx && l.limit.port == wanted && l.refuses()).map(|(_, l)| l)
    }
}

#[derive(Debug, Default)]
struct Store {
    clusters: HashMap<String, Arc<ClusterShared>>,
    endpoints: HashMap<(String, SocketAddr, bool, u64), Arc<EndpointRt>>,
    /// By the limit's key and bucket settings: an edited bucket starts new and full, as a new
    /// filter config does in Envoy; an unchanged one keeps its tokens across reloads.
    buckets: HashMap<(String, Duration, u64, u64), Arc<Bucket>>,
}

/// One proxy's (a sidecar's or the gateway's) runtime state.
#[derive(Debug)]
pub struct ProxyRuntime {
    /// The pod (or gateway) it belongs to.
    pub name: String,
    /// The same, shared with access-log records.
    pub proxy: Arc<str>,
    /// Istio's node id, sent to peers as `x-envoy-peer-metadata-id` (metadata exchange).
    pub peer_id: http::HeaderValue,
    /// The metric label set of requests this proxy could not route.
    pub unrouted: OnceLock<Arc<Series>>,
    /// The workload it proxies for (rate limits select on it).
    pub workload: Workload,
    /// Its mTLS client config (its own SPIFFE certificate); None when security is off.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Unique among the runtimes of the process, so that a view cached by a connection tells
    /// whose it is.
    pub id: u64,
    current: ArcSwapOption<Generation>,
    store: Mutex<Store>,
}

/// Runtimes made so far, for [`ProxyRuntime::id`].
static RUNTIMES: AtomicU64 = AtomicU64::new(0);

impl ProxyRuntime {
    /// Empty state for the proxy of `workload`.
    pub fn new(workload: &Workload, tls: Option<Arc<rustls::ClientConfig>>) -> ProxyRuntime {
        let id = format!(
            "sidecar~127.0.0.1~{}.{}~{}.svc.cluster.local",
            workload.name, workload.namespace, workload.namespace
        );
        ProxyRuntime {
            tls,
            name: workload.name.clone(),
            proxy: workload.name.as_str().into(),
            peer_id: http::HeaderValue::try_from(id).unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            unrouted: OnceLock::new(),
            workload: workload.clone(),
            id: RUNTIMES.fetch_add(1, Ordering::Relaxed),
            current: ArcSwapOption::empty(),
            store: Mutex::new(Store::default()),
        }
    }

    /// The runtime view for `snap`; built once per generation, then one atomic load.
    pub fn for_snapshot(&self, snap: &Snapshot) -> Arc<Generation> {
        let workload = &self.workload;
        if let Some(g) = self.current.load_full() {
            if g.generation == snap.generation {
                return g;
            }
        }
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let store = &mut *store;
        let clusters = snap
            .clusters
            .iter()
            .map(|c| {
                let shared =
                    store.clusters.entry(c.name.clone()).or_insert_with(|| Arc::new(ClusterShared::new())).clone();
                let endpoints = c
                    .endpoints
                    .iter()
                    .map(|e| {
                        let mtls = e.mtls.then(|| e.identity.clone());
                        store
                            .endpoints
                            .entry((c.name.clone(), e.addr, e.mtls, e.origin.as_ref().map_or(0, |o| o.fingerprint)))
                            .or_insert_with(|| {
                                let mut rt = EndpointRt::new(e.addr, mtls, &shared);
                                rt.origin = e.origin.clone();
                                rt.pod = e.pod.clone();
                                Arc::new(rt)
                            })
                            .clone()
                    })
                    .collect();
                ClusterRt { shared, endpoints }
            })
            .collect();
        let mut limits = Vec::new();
        for l in &snap.rate_limits {
            for ctx in [Context::Inbound, Context::Outbound, Context::Gateway] {
                if l.applies(workload, ctx) {
                    let max = l.max_tokens;
                    let bucket = store
                        .buckets
                        .entry((l.key.clone(), l.fill_interval, l.max_tokens, l.tokens_per_fill))
                        .or_insert_with(|| Arc::new(Bucket::new(max, l.fill_interval)))
                        .clone();
                    limits.push((ctx, Limit { limit: l.clone(), bucket }));
                }
            }
        }
        let g = Arc::new(Generation { generation: snap.generation, proxy: self.id, clusters, limits });
        // Only move forward: a request still on an older snapshot must not roll the cache back.
        let newer = self.current.load().as_ref().is_none_or(|c| c.generation < g.generation);
        if newer {
            self.current.store(Some(g.clone()));
        }
        g
    }

    /// Every cluster's counters, by name, for `/stats`.
    pub fn clusters(&self) -> Vec<(String, Arc<ClusterShared>)> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = store.clusters.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Every proxy's runtime, by name.
#[derive(Debug, Default)]
pub struct Registry {
    proxies: Mutex<HashMap<String, Arc<ProxyRuntime>>>,
    security: Option<Arc<crate::security::tls::Security>>,
}

impl Registry {
    /// A registry whose proxies get mTLS identities from `security` (None: plaintext only).
    pub fn new(security: Option<Arc<crate::security::tls::Security>>) -> Registry {
        Registry { proxies: Mutex::default(), security }
    }

    /// Certificates and TLS configs, if security is on.
    pub fn security(&self) -> Option<&Arc<crate::security::tls::Security>> {
        self.security.as_ref()
    }

    /// The runtime of the proxy of `workload`, created on first use.
    pub fn get(&self, workload: &Workload) -> Arc<ProxyRuntime> {
        let mut map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = map.get(&workload.name) {
            return rt.clone();
        }
        let spiffe = crate::security::ca::spiffe_id(&workload.namespace, &workload.service_account);
        let tls = self.security.as_ref().and_then(|s| match s.client_config(&spiffe) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(%spiffe, error = %e, "cannot issue a workload certificate: plaintext only");
                None
            }
        });
        let rt = Arc::new(ProxyRuntime::new(workload, tls));
        map.insert(workload.name.clone(), rt.clone());
        rt
    }

    /// The runtime of a pod without a sidecar: no mTLS identity.
    pub fn get_plain(&self, workload: &Workload) -> Arc<ProxyRuntime> {
        let mut map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(workload.name.clone()).or_insert_with(|| Arc::new(ProxyRuntime::new(workload, None))).clone()
    }

    /// Every runtime, sorted by name.
    pub fn all(&self) -> Vec<Arc<ProxyRuntime>> {
        let map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Forgets proxies of pods that are gone.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::policy::PoolSettings;
    use crate::snapshot::Endpoint;

    fn cluster(n: usize, lb: LbPolicy, outlier: Option<OutlierSettings>) -> (Cluster, ClusterRt) {
        let endpoints: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint {
                addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                pod: format!("p{i}"),
                identity: String::new(),
                mtls: false,
                origin: None,
            })
            .collect();
        let rt = ClusterRt::of(&endpoints.iter().map(|e| e.addr).collect::<Vec<_>>());
        let c = Cluster {
            name: "c".into(),
            index: 0,
            service: "s".into(),
            port: 80,
            subset: None,
            endpoints,
            lb,
            pool: PoolSettings::default(),
            outlier,
            destination_rule: None,
            tls_mode: None,
            external: false,
        };
        (c, rt)
    }

    fn od() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: Some(1),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let (c, rt) = cluster(2, LbPolicy::LeastRequest, None);
        let _busy: Vec<_> = (0..5).map(|_| ActiveGuard::new(&rt.endpoints[0])).collect();
        for _ in 0..50 {
            assert_eq!(rt.pick(&c, None, None), Some(1));
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_the_previous_host() {
        let (c, rt) = cluster(3, LbPolicy::RoundRobin, None);
        let picks: Vec<_> = (0..6).map(|_| rt.pick(&c, None, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        for _ in 0..10 {
            assert_ne!(rt.pick(&c, None, Some(0)), Some(0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_lasts_base_times_count_and_returns() {
        let (c, rt) = cluster(2, LbPolicy::RoundRobin, Some(od()));
        assert!(rt.record(&c, 0, AttemptResult::Status(503)));
        for _ in 0..10 {
            assert_eq!(rt.pick(&c, None, None), Some(1), "ejected endpoint is skipped");
        }
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(rt.ejected(), vec![true, false]);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(rt.ejected(), vec![false, false], "back after 30 s");
        // Second ejection lasts twice as long.
        assert!(rt.record(&c, 0, AttemptResult::LocalFailure));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(rt.ejected(), vec![true, false]);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(rt.ejected(), vec![false, false]);
        assert_eq!(rt.shared.stats.outlier_detection_ejections_total.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn all_ejected_is_no_healthy_upstream_and_success_resets() {
        let (c, rt) = cluster(1, LbPolicy::LeastRequest, Some(OutlierSettings { consecutive_5xx: Some(3), ..od() }));
        rt.record(&c, 0, AttemptResult::Status(500));
        rt.record(&c, 0, AttemptResult::Status(500));
        rt.record(&c, 0, AttemptResult::Status(200));
        assert!(!rt.record(&c, 0, AttemptResult::Status(500)), "a success resets the count");
        rt.record(&c, 0, AttemptResult::Status(500));
        assert!(rt.record(&c, 0, AttemptResult::Status(500)));
        assert_eq!(rt.pick(&c, None, None), None, "one endpoint, ejected: UH");
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_per_interval() {
        let b = Bucket::new(4, Duration::from_secs(60));
        let take = || b.take(4, 4);
        assert_eq!((0..6).filter(|_| take()).count(), 4, "max_tokens, then empty");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!take());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!((0..6).filter(|_| take()).count(), 4, "refilled after fill_interval");
    }

    #[test]
    fn workers_taking_at_once_take_each_token_once() {
        let b = Bucket::new(1000, Duration::from_secs(3600));
        let taken: usize = std::thread::scope(|s| {
            let takers: Vec<_> = (0..4).map(|_| s.spawn(|| (0..500).filter(|_| b.take(1000, 1000)).count())).collect();
            takers.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(taken, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refills_each_interval_crossed_up_to_its_max() {
        let b = Bucket::new(2, Duration::from_secs(1));
        let take = || b.take(3, 2);
        assert!(take() && take() && !take());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((0..5).filter(|_| take()).count(), 3, "five fills of two, capped at max");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!((0..5).filter(|_| take()).count(), 2, "one fill in the interval crossed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_left_empty_for_more_than_half_its_count_refills() {
        // 2^31 and more intervals read as negative to a signed difference, which refilled nothing.
        let b = Bucket::new(1, Duration::from_nanos(1));
        assert!(b.take(1, 1) || b.take(1, 1));
        tokio::time::advance(Duration::from_nanos(3 << 30)).await;
        assert!(b.take(1, 1), "refilled after 3 * 2^30 intervals");
    }

    #[tokio::test(start_paused = true)]
    async fn an_edited_bucket_starts_full_and_an_unchanged_one_keeps_its_tokens() {
        let limit = |secs, max| {
            Arc::new(LocalRateLimit {
                key: "default/rl#0".into(),
                namespace: crate::snapshot::ROOT_NAMESPACE.into(),
                selector: Default::default(),
                context: Context::Any,
                max_tokens: max,
                tokens_per_fill: max,
                fill_interval: Duration::from_secs(secs),
                enabled: 100.0,
                enforced: 100.0,
                headers: vec![],
                port: None,
            })
        };
        let snap = |generation, secs| Snapshot { generation, rate_limits: vec![limit(secs, 2)], ..Snapshot::default() };
        let bucket = |g: &Generation| g.limits[0].1.bucket.clone();
        let rt = ProxyRuntime::new(&crate::daemon::gateway_workload(), None);
        let one = bucket(&rt.for_snapshot(&snap(1, 1)));
        assert!(one.take(2, 2) && one.take(2, 2) && !one.take(2, 2));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(Arc::ptr_eq(&bucket(&rt.for_snapshot(&snap(2, 1))), &one), "the same interval keeps the bucket");
        let b = bucket(&rt.for_snapshot(&snap(3, 60)));
        assert!(!Arc::ptr_eq(&b, &one));
        assert!(b.take(2, 2) && b.take(2, 2) && !b.take(2, 2), "full, then empty");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.take(2, 2), "refilled after the new interval");
        // The rate-limit task's bucket raised from 2 to 10 while empty: a new, full bucket.
        assert!(b.take(2, 2) && !b.take(2, 2));
        let raised = Snapshot { generation: 4, rate_limits: vec![limit(60, 10)], ..Snapshot::default() };
        let b = bucket(&rt.for_snapshot(&raised));
        assert!((0..10).all(|_| b.take(10, 10)) && !b.take(10, 10), "ten tokens, then none");
    }

    #[test]
    fn a_routes_own_limit_replaces_the_listeners_and_a_request_takes_one_token() {
        let limit = |key: &str, max, port| {
            Arc::new(LocalRateLimit {
                key: key.into(),
                namespace: crate::snapshot::ROOT_NAMESPACE.into(),
                selector: Default::default(),
                context: Context::Inbound,
                max_tokens: max,
                tokens_per_fill: max,
                fill_interval: Duration::from_secs(3600),
                enabled: 100.0,
                enforced: 100.0,
                headers: vec![],
                port,
            })
        };
        let snap = Snapshot {
            generation: 1,
            rate_limits: vec![limit("default/listener#0", 2, None), limit("default/route#0", 3, Some(9080))],
            ..Snapshot::default()
        };
        let rt = ProxyRuntime::new(&crate::daemon::gateway_workload(), None);
        let g = rt.for_snapshot(&snap);
        let refused = |port| g.rate_limited(Context::Inbound, Some(port)).is_some();
        assert_eq!((0..4).map(|_| refused(9080)).collect::<Vec<_>>(), [false, false, false, true], "the route's 3");
        assert_eq!(
            (0..3).map(|_| refused(8000)).collect::<Vec<_>>(),
            [false, false, true],
            "the listener's 2, untouched"
        );
    }

    #[test]
    fn failures_crossing_the_threshold_at_once_eject_once() {
        let (c, rt) = cluster(4, LbPolicy::Random, Some(od()));
        let ejected: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..50).filter(|_| rt.record(&c, 0, AttemptResult::Status(503))).count()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(ejected, 1);
        assert_eq!(rt.shared.stats.outlier_detection_ejections_total.load(Ordering::Relaxed), 1);
        assert_eq!(rt.ejected(), vec![true, false, false, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_allows_at_least_one() {
        let (c, rt) = cluster(4, LbPolicy::Random, Some(OutlierSettings { max_ejection_percent: 10, ..od() }));
        assert!(rt.record(&c, 0, AttemptResult::Status(500)));
        assert!(!rt.record(&c, 1, AttemptResult::Status(500)), "10% of 4 is 0, but one is always allowed");
        assert_eq!(rt.ejected(), vec![true, false, false, false]);
    }
}
