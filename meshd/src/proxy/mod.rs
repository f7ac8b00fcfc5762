//! The data plane: the ingress gateway, and each pod's inbound and outbound
//! sidecar listeners. A request is decided first (a pure function of the
//! snapshot), then the route's policies run (fault, mirror, timeout,
//! retries), then the cluster's (balancing, circuit breakers, outlier
//! detection), then bytes move.

pub mod answer;
pub mod downstream;
pub mod fields;
mod gate;
pub mod h1;
mod normalize;
pub mod report;
pub mod respond;
pub mod runtime;
pub mod upstream;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, COOKIE, HOST, SERVER, SET_COOKIE};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use self::answer::Answer;
use self::downstream::{Call, Parts};
use self::fields::Fields;
use crate::security::peer_auth::MtlsMode;
use crate::snapshot::matcher::{cookie, split_authority, Headers, RequestView, SourceView};
use crate::snapshot::policy::{hash64, parse_retry_on, roll, HashKey, LbPolicy, RetryOn, RetryPolicy};
use crate::snapshot::ratelimit::Context;
use crate::snapshot::route::{Decision, HeaderOps, Matched, Target, WeightedTarget};
use crate::snapshot::{Cluster, LocalReply, SnapshotHandle, Workload};
use crate::telemetry::accesslog::Record;
use crate::telemetry::metrics::TcpSeries;
use crate::telemetry::trace::SpanContext;
use crate::telemetry::Telemetry;
use respond::ResponseFlags;
use runtime::{ActiveGuard, AttemptResult, ClusterRt, EndpointRt, ProxyRuntime, Registry};
use upstream::UpstreamError;
use views::Views;

/// Errors a body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every listener speaks.
pub type Body = BoxBody<Bytes, BoxError>;

/// Largest request body buffered for retries and mirrors (Envoy's default buffer limit is 1 MiB; meshd allows more).
const BODY_LIMIT: usize = 16 << 20;

/// The `server` header a listener writes, as Istio configures Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerName {
    /// Gateways and inbound listeners: `istio-envoy`.
    IstioEnvoy,
    /// Outbound sidecar listeners keep Envoy's default: `envoy`.
    Envoy,
    /// No proxy of ours answered (a pod without a sidecar): the upstream's own header stays.
    Keep,
}

impl ServerName {
    /// The header value.
    pub fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            ServerName::IstioEnvoy => "istio-envoy",
            ServerName::Envoy | ServerName::Keep => "envoy",
        })
    }
}

/// What a pod's inbound side does, set by `meshd pod stop|fail|start`.
#[derive(Debug)]
pub struct PodControl {
    mode: AtomicU8,
    changed: watch::Sender<()>,
}

impl Default for PodControl {
    fn default() -> Self {
        PodControl { mode: AtomicU8::new(0), changed: watch::Sender::new(()) }
    }
}

/// A pod's emulated condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodMode {
    /// Serving normally.
    Running,
    /// The app answers every request with 503.
    Failing,
    /// The process is down: connections are refused.
    Stopped,
}

impl PodControl {
    /// The current mode.
    pub fn mode(&self) -> PodMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => PodMode::Failing,
            2 => PodMode::Stopped,
            _ => PodMode::Running,
        }
    }

    /// Sets the mode.
    pub fn set(&self, mode: PodMode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    /// A receiver that wakes on every mode change.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

/// What a listener does with requests.
#[derive(Debug)]
pub enum Role {
    /// The ingress gateway's HTTP listener.
    Gateway {
        /// The gateway workload (labels match `selector: istio: ingressgateway`).
        workload: Arc<Workload>,
        /// Its runtime state.
        rt: Arc<ProxyRuntime>,
    },
    /// The ingress gateway's HTTPS listener: TLS terminated per server, chosen by SNI.
    GatewayTls {
        /// The gateway workload.
        workload: Arc<Workload>,
        /// Its runtime state.
        rt: Arc<ProxyRuntime>,
    },
    /// A TCP server of the ingress gateway (Gateway server with protocol TCP).
    GatewayTcp {
        /// The gateway's runtime state.
        rt: Arc<ProxyRuntime>,
        /// The Gateway server's port.
        port: u16,
    },
    /// A pod's outbound sidecar listener: the pod's apps use it as their HTTP proxy.
    Outbound {
        /// The calling workload.
        workload: Arc<Workload>,
        /// Its runtime state.
        rt: Arc<ProxyRuntime>,
    },
    /// The outbound side of a pod without a sidecar: services by name, no mesh policy, plaintext.
    Plain {
        /// The calling workload.
        workload: Arc<Workload>,
        /// Its runtime state (no mTLS identity).
        rt: Arc<ProxyRuntime>,
    },
    /// The shared outbound port (15001): the outbound side of the snapshot's mesh client.
    MeshClient {
        /// The client workload and runtime last used, refreshed when the snapshot names another.
        cache: ArcSwapOption<(Arc<Workload>, Arc<ProxyRuntime>)>,
    },
    /// A pod's inbound sidecar listener, in front of one container port.
    Inbound {
        /// The pod's sidecar runtime (rate limits).
        rt: Arc<ProxyRuntime>,
        /// The pod.
        workload: Arc<Workload>,
        /// The container port it fronts (PeerAuthentication's port).
        port: u16,
        /// The pod's mTLS server config; None when security is off.
        tls: Option<Arc<rustls::ServerConfig>>,
        /// Raw TCP (a Service port of TCP protocol) rather than HTTP.
        tcp: bool,
        /// The local app's connection pool (`inbound|port||`).
        app: ClusterRt,
        /// Pool settings for the app.
        cluster: Arc<Cluster>,
        /// The pod's emulated condition.
        control: Arc<PodControl>,
        /// Its destination reports, by caller.
        series: Arc<report::InboundSeries>,
    },
}

impl Role {
    /// An inbound listener in front of the app at `app` (container port `port`).
    pub fn inbound(
        app: SocketAddr,
        port: u16,
        control: Arc<PodControl>,
        rt: Arc<ProxyRuntime>,
        tls: Option<Arc<rustls::ServerConfig>>,
        tcp: bool,
    ) -> Role {
        let cluster = Cluster {
            name: format!("inbound|{port}||"),
            index: 0,
            service: String::new(),
            port,
            subset: None,
            endpoints: vec![crate::snapshot::Endpoint {
                addr: app,
                pod: String::new(),
                identity: String::new(),
                mtls: false,
                origin: None,
            }],
            lb: LbPolicy::RoundRobin,
            pool: crate::snapshot::policy::PoolSettings::default(),
            outlier: None,
            destination_rule: None,
            tls_mode: None,
            external: false,
        };
        Role::Inbound {
            workload: Arc::new(rt.workload.clone()),
            rt,
            port,
            tls,
            tcp,
            app: ClusterRt::single(app),
            cluster: Arc::new(cluster),
            control,
            series: Arc::default(),
        }
    }
}

/// State shared by every listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    snapshot: SnapshotHandle,
    registry: Arc<Registry>,
    telemetry: Option<Telemetry>,
    /// Where accepted connections are served; None: on the accepting task's runtime.
    workers: Option<Arc<crate::workers::Workers>>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_RQ_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static X_EXPECTED_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
static X_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
static X_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
static X_FCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static PEER_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static TRUE: HeaderValue = HeaderValue::from_static("true");

/// `x-forwarded-proto`'s values: what the proxy was spoken to in.
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The policies of a pod without a sidecar: none (built once, not per request).
static NO_POLICY: std::sync::LazyLock<crate::snapshot::route::RoutePolicy> = std::sync::LazyLock::new(|| {
    crate::snapshot::route::RoutePolicy { retry: RetryPolicy::none(), ..Default::default() }
});

/// Headers that describe one hop and are never forwarded: the names [`Found::class`] calls
/// hop-by-hop, listed for the tests that check it.
#[cfg(test)]
static HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::PROXY_AUTHORIZATION,
];

/// What a listener knows of one downstream connection.
#[derive(Debug)]
struct ConnInfo {
    peer: SocketAddr,
    /// The peer's address as a field value (`x-forwarded-for`), made once a connection when the
    /// gateway first needs it.
    peer_value: std::sync::OnceLock<HeaderValue>,
    /// `X-Forwarded-Client-Cert` for requests on an mTLS connection.
    xfcc: Option<HeaderValue>,
    /// The mTLS peer's identity without `spiffe://` (an AuthorizationPolicy principal).
    principal: Option<String>,
    /// The listener's address.
    local: Option<SocketAddr>,
}

impl ConnInfo {
    /// An accepted connection's addresses, before any mTLS identity.
    fn of(stream: &TcpStream, peer: SocketAddr) -> ConnInfo {
        ConnInfo { peer, peer_value: Default::default(), xfcc: None, principal: None, local: stream.local_addr().ok() }
    }

    fn peer_value(&self) -> &HeaderValue {
        // An address's text is always a valid value.
        self.peer_value
            .get_or_init(|| HeaderValue::try_from(self.peer.ip().to_string()).unwrap_or(HeaderValue::from_static("")))
    }
}

/// Envoy's internal addresses (`Network::Utility::isInternalAddress`): loopback and the private
/// ranges, where it marks a request `x-envoy-internal` rather than naming its external address.
fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xff00) == 0xfd00
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
    }
}

/// What the gateway, as Envoy with `use_remote_address` and no trusted hops, tells the upstream
/// of its client: the peer's address appended to `x-forwarded-for`, then `x-envoy-internal:
/// true` for an internal peer or `x-envoy-external-address` for another (a client's own copies
/// of the two are dropped).
fn forward_for(fields: &mut Fields, conn: &ConnInfo) {
    let peer = conn.peer_value();
    // One look for the three names: a client seldom sends any of them.
    let (mut listed, mut marked) = (false, false);
    fields.for_each(|name, _| match name {
        b"x-forwarded-for" => listed = true,
        b"x-envoy-internal" | b"x-envoy-external-address" => marked = true,
        _ => {}
    });
    if listed {
        // A client's own list (every line of it, as Envoy joins them), then the peer.
        let mut joined = Vec::new();
        fields.each_value(&X_FORWARDED_FOR, |v| {
            joined.extend_from_slice(v);
            joined.push(b',');
        });
        joined.extend_from_slice(peer.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            fields.remove(&X_FORWARDED_FOR);
            fields.append(X_FORWARDED_FOR.clone(), v);
        }
    } else {
        fields.append(X_FORWARDED_FOR.clone(), peer.clone());
    }
    if marked {
        fields.remove_if(|n| n == b"x-envoy-internal" || n == b"x-envoy-external-address");
    }
    if is_internal(conn.peer.ip()) {
        fields.append(X_ENVOY_INTERNAL.clone(), TRUE.clone());
    } else {
        fields.append(X_EXTERNAL_ADDRESS.clone(), peer.clone());
    }
}

/// The request as the policies see it: everything but the body, which is buffered once.
struct Outgoing {
    method: Method,
    /// Origin-form target, parsed once for every attempt.
    uri: Uri,
    fields: Fields,
    body: Bytes,
    /// Which names of interest `fields` held when `outgoing` scanned them, less the ones removed
    /// since; `REQUEST_ID` and `FRAMING` are not kept up to date (nothing reads them later).
    found: Found,
    /// `x-forwarded-proto`, written with the head (None: it is in `fields`).
    proto: Option<&'static HeaderValue>,
    /// Istio's peer id, written with the head.
    peer: Option<HeaderValue>,
    /// The span to propagate, written with the head (None: none, or already in `fields`).
    span: Option<SpanContext>,
}

impl Outgoing {
    /// The head of one attempt, borrowed: only the attempt count differs between attempts.
    fn head<'a>(&'a self, attempt: &'a HeaderValue) -> h1::Head<'a> {
        h1::Head {
            method: &self.method,
            uri: &self.uri,
            fields: &self.fields,
            added: h1::Added {
                fields: [
                    Some((&X_ATTEMPT_COUNT, attempt)),
                    self.proto.map(|v| (&X_FORWARDED_PROTO, v)),
                    self.peer.as_ref().map(|v| (&PEER_ID, v)),
                ],
                span: self.span.as_ref(),
            },
        }
    }

    /// The first attempt as a whole request, every field in its map.
    fn request(&self) -> Request<Body> {
        self.head(&number(1)).to_request(respond::full(self.body.clone()))
    }
}

/// The endpoint a response came from (or the last one tried).
#[derive(Debug, Clone)]
struct UpstreamHost {
    addr: SocketAddr,
    /// Whether the upstream answered (false: a local reply after a failed attempt).
    responded: bool,
    /// The endpoint's runtime state (its metric label set); None for an inbound app.
    endpoint: Option<Arc<EndpointRt>>,
    /// `x-envoy-upstream-service-time` as the response carries it (ms), for the access log: a
    /// number, not its header value, as this is moved with every response.
    service_ms: Option<u32>,
}

/// Which route and cluster served a request, for the access log and metrics.
#[derive(Debug, Clone)]
struct RouteInfo {
    cluster: Arc<Cluster>,
    route: Option<Arc<str>>,
}

/// Envoy's name for the inbound route to the app.
static INBOUND_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("default"));

/// A response and how it was made, for the access log and metrics. Kept beside the response
/// rather than in its extension map, which allocates for every entry.
struct Served {
    resp: Answer,
    flags: ResponseFlags,
    /// The endpoint it came from (or the last one tried).
    upstream: Option<UpstreamHost>,
    /// The route and cluster that served it.
    route: Option<RouteInfo>,
    /// The response must not be sent: the downstream connection is closed instead.
    abort: bool,
}

impl Served {
    /// A response from the upstream, as it came.
    fn upstream(resp: Answer) -> Served {
        Served { resp, flags: ResponseFlags::new("-", "via_upstream"), upstream: None, route: None, abort: false }
    }
}

impl From<respond::Reply> for Served {
    fn from(r: respond::Reply) -> Served {
        Served { resp: r.resp.into(), flags: r.flags, upstream: None, route: None, abort: false }
    }
}

/// A request's telemetry until it is reported: dropped unreported, the request was abandoned by
/// its client (the connection closed while it was served).
struct Unfinished<'a> {
    proxy: &'a Proxy,
    role: &'a Role,
    info: &'a ConnInfo,
    observed: Option<(&'a Telemetry, &'a ProxyRuntime, Observed)>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some((tel, rt, o)) = self.observed.take() {
            self.proxy.report_disconnect(tel, rt, self.role, self.info, o);
        }
    }
}

/// Where a role sends a request.
enum Dispatch<'r> {
    /// The pod's app, through its inbound sidecar.
    Inbound((&'r ProxyRuntime, &'r ClusterRt, &'r Arc<Cluster>, &'r PodControl)),
    /// The snapshot's routes, as the gateway or a workload's outbound side sees them.
    Route(&'r Workload, &'r ProxyRuntime, Caller),
    /// A local reply, sent by this server.
    Reply(LocalReply, ServerName),
}

/// What a reporting proxy reads of a request before serving it (its id, the caller's trace)
/// and keeps for its metrics and access log.
struct Observed {
    t0: Instant,
    /// The calling sidecar's id (inbound only).
    peer_id: Option<HeaderValue>,
    /// The access-log record, written in its box when the request comes and completed by
    /// [`Proxy::report`]. Kept apart, the same fields were written three times a request: on
    /// the stack, into the request's future, into the box.
    record: Box<Record>,
}

impl Observed {
    /// Reads the request, naming it when it has no `x-request-id` yet.
    fn of(req: &mut Call, inbound: bool, proxy: &Arc<str>, info: &ConnInfo) -> Observed {
        let start = std::time::SystemTime::now();
        let t0 = Instant::now();
        // One pass over the headers rather than a hashed lookup per name; the first value of
        // each, as `get` gives. Only what outlives the request is copied.
        let (mut id, mut b3_trace, mut b3_span, mut traceparent) = (None, None, None, None);
        let (mut user_agent, mut forwarded_for, mut authority, mut peer_id, mut length) =
            (None, None, None, None, None);
        let fields = &req.parts.fields;
        fields.for_each(|name, value| {
            let slot = match name {
                b"user-agent" => &mut user_agent,
                b"host" => &mut authority,
                b"content-length" => &mut length,
                b"x-request-id" => &mut id,
                b"x-forwarded-for" => &mut forwarded_for,
                b"x-b3-traceid" => &mut b3_trace,
                b"x-b3-spanid" => &mut b3_span,
                b"traceparent" => &mut traceparent,
                b"x-envoy-peer-metadata-id" if inbound => &mut peer_id,
                _ => return,
            };
            slot.get_or_insert(value);
        });
        // Named before routing, as Envoy does; the span goes to the next hop as the request does.
        let span = SpanContext::continue_from(b3_trace, b3_span, traceparent);
        let bytes_received = length.and_then(h1::content_length).unwrap_or(0);
        let kept = |v: Option<&[u8]>| v.and_then(|v| fields.shared(v));
        let (user_agent, forwarded_for, authority, peer_id) =
            (kept(user_agent), kept(forwarded_for), kept(authority), kept(peer_id));
        let id = match kept(id) {
            Some(id) => id,
            None => {
                let id = request_id();
                req.parts.fields.append(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        let protocol = match req.parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        // What only the response tells is left blank here; `report` writes it.
        let record = Box::write(
            Box::new_uninit(),
            Record {
                proxy: proxy.clone(),
                start,
                method: req.parts.method.clone(),
                uri: req.parts.uri.clone(),
                protocol,
                status: 0,
                flags: std::borrow::Cow::Borrowed("-"),
                details: std::borrow::Cow::Borrowed(""),
                bytes_received,
                bytes_sent: 0,
                duration_us: 0,
                upstream_service_time: None,
                forwarded_for,
                user_agent,
                request_id: Some(id),
                authority,
                upstream_host: None,
                upstream_cluster: None,
                downstream_local: info.local,
                downstream_remote: info.peer,
                route: None,
                span: Some(span),
                series: None,
            },
        );
        Observed { t0, peer_id, record }
    }

    /// This proxy's span, for the next hop.
    fn span(&self) -> Option<&SpanContext> {
        self.record.span.as_ref()
    }
}

/// The error that closes a connection hyper serves instead of answering.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("upstream connection failed; closing the downstream connection")]
struct AbortConnection;

/// Who sends through a routing listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The ingress gateway's HTTP listener.
    Gateway,
    /// The ingress gateway's HTTPS listener.
    GatewayTls,
    /// A sidecar's outbound side.
    Sidecar,
    /// A pod without a sidecar (kube-proxy behaviour).
    Plain,
}

impl Caller {
    /// The `server` header of the replies the proxy writes itself.
    fn server(self) -> ServerName {
        match self {
            Caller::Sidecar => ServerName::Envoy,
            Caller::Gateway | Caller::GatewayTls => ServerName::IstioEnvoy,
            Caller::Plain => ServerName::Keep,
        }
    }

    /// The scheme the client spoke to the proxy in.
    fn scheme(self) -> &'static str {
        if self == Caller::GatewayTls {
            "https"
        } else {
            "http"
        }
    }
}

/// How to send a request: the retry policy, hash key, server header and mTLS identity.
#[derive(Clone, Copy)]
struct Plan<'a> {
    retry: &'a RetryPolicy,
    hash: Option<u64>,
    server: ServerName,
    tls: Option<&'a Arc<rustls::ClientConfig>>,
}

/// How one upstream attempt ended.
enum Attempt {
    Response(Answer),
    Failed(UpstreamError),
    PerTryTimeout,
}

impl Proxy {
    /// A proxy reading routes from `snapshot`, with per-proxy state in `registry`.
    pub fn new(snapshot: SnapshotHandle, registry: Arc<Registry>) -> Proxy {
        Proxy { snapshot, registry, telemetry: None, workers: None }
    }

    /// Serves accepted connections on `workers`' event loops.
    pub fn with_workers(mut self, workers: Arc<crate::workers::Workers>) -> Proxy {
        self.workers = Some(workers);
        self
    }

    /// Reports every request to `telemetry` (metrics, access log, spans).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Proxy {
        self.telemetry = Some(telemetry);
        self
    }

    /// The runtime registry (for stats).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serves `listener` in `role` until `shutdown` turns true; open connections then finish their requests.
    pub async fn serve(self, listener: TcpListener, role: Role, mut shutdown: watch::Receiver<bool>) {
        let role = Arc::new(role);
        let mut listener = Some(listener);
        let local = listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut changes = match &*role {
            Role::Inbound { control, .. } => Some(control.subscribe()),
            _ => None,
        };
        loop {
            // A stopped pod refuses connections: its listener is closed until it starts again.
            if let Role::Inbound { control, .. } = &*role {
                if control.mode() == PodMode::Stopped {
                    listener = None;
                    tokio::select! {
                        _ = mode_changed(&mut changes) => continue,
                        _ = stopped(&mut shutdown) => return,
                    }
                }
                if listener.is_none() {
                    match local {
                        Some(addr) => match TcpListener::bind(addr).await {
                            Ok(l) => listener = Some(l),
                            Err(e) => {
                                tracing::warn!(%addr, error = %e, "cannot listen again");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        },
                        None => return,
                    }
                }
            }
            let Some(l) = listener.as_ref() else { return };
            let accepted = tokio::select! {
                a = l.accept() => a,
                _ = stopped(&mut shutdown) => return,
                _ = mode_changed(&mut changes) => continue,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let role = role.clone();
            let shutdown = shutdown.clone();
            let changes = changes.clone();
            // The connection's future is kilobytes: boxed once, where it is made, so that the
            // task and tokio's moves of it carry a pointer. Apps that open a connection per
            // call (Bookinfo's do, as the originals) pay those moves on every call.
            let serve = move |stream| Box::pin(proxy.connection(Accepted { stream, peer, role, shutdown, changes }));
            match &self.workers {
                Some(workers) => workers.hand_off(stream, serve),
                None => {
                    tokio::spawn(serve(stream));
                }
            }
        }
    }

    /// One accepted connection: inbound listeners enforce the port's mTLS mode first. Every path
    /// but plaintext HTTP runs [`apart`].
    async fn connection(self, conn: Accepted) {
        if let Role::GatewayTls { .. } = &*conn.role {
            return apart(self.gateway_tls(conn)).await;
        }
        let Accepted { stream, peer, role, shutdown, changes } = conn;
        if let Role::GatewayTcp { rt, port } = &*role {
            return apart(self.gateway_tcp(stream, rt, *port)).await;
        }
        let Role::Inbound { workload, port, tls, tcp, .. } = &*role else {
            let info = Arc::new(ConnInfo::of(&stream, peer));
            return self.serve_io(stream, info, role, shutdown, changes, None).await;
        };
        let mode = self.snapshot.load().peer_auth.mode(&workload.namespace, &workload.labels, *port);
        let mut first = [0u8; 1];
        let tls_hello = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16);
        match (tls, tls_hello, mode) {
            (Some(cfg), true, MtlsMode::Strict | MtlsMode::Permissive) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                let conn = Accepted { stream, peer, role, shutdown, changes };
                apart(self.inbound_tls(acceptor, conn)).await
            }
            (_, false, MtlsMode::Strict) if tls.is_some() => {
                // STRICT and a plaintext client: reset, as Envoy does (curl: exit 56).
                reset(stream);
            }
            (_, true, _) => {
                // TLS where the port takes plaintext only (or security is off): nothing to talk to.
                reset(stream);
            }
            _ => {
                let info = Arc::new(ConnInfo::of(&stream, peer));
                let strict = tls.is_some();
                let (ns, labels, port) = (workload.namespace.clone(), workload.labels.clone(), *port);
                let recheck: Recheck =
                    Box::new(move |snap| !strict || snap.peer_auth.mode(&ns, &labels, port) != MtlsMode::Strict);
                if *tcp {
                    return apart(self.tcp_inbound(stream, &info, &role)).await;
                }
                self.serve_io(stream, info, role, shutdown, changes, Some(recheck)).await
            }
        }
    }

    /// An mTLS connection at a pod's inbound port: the handshake, then its HTTP or TCP.
    async fn inbound_tls(self, acceptor: tokio_rustls::TlsAcceptor, conn: Accepted) {
        let Accepted { stream, peer, role, shutdown, changes } = conn;
        let Role::Inbound { workload, port, tcp, .. } = &*role else { return };
        let mut info = ConnInfo::of(&stream, peer);
        let Ok(tls_stream) = acceptor.accept(stream).await else {
            return; // a failed handshake (unknown CA, no client certificate) closes the connection
        };
        let (_, session) = tls_stream.get_ref();
        let client_cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
        let client = client_cert.as_deref().and_then(crate::security::tls::spiffe_of);
        info.xfcc = client_cert.as_ref().zip(client.as_ref()).and_then(|(c, client)| {
            let server = crate::security::ca::spiffe_id(&workload.namespace, &workload.service_account);
            HeaderValue::from_str(&crate::security::tls::xfcc(&server, c, client)).ok()
        });
        info.principal = client.map(|c| c.trim_start_matches("spiffe://").to_string());
        let info = Arc::new(info);
        let (ns, labels, port) = (workload.namespace.clone(), workload.labels.clone(), *port);
        let recheck: Recheck = Box::new(move |snap| snap.peer_auth.mode(&ns, &labels, port) != MtlsMode::Disable);
        if *tcp {
            return self.tcp_inbound(tls_stream, &info, &role).await;
        }
        self.serve_io(tls_stream, info, role, shutdown, changes, Some(recheck)).await
    }

    /// A TCP connection at the gateway: the first `tcp` route bound to this server picks a
    /// destination per connection; bytes are then copied both ways (over mTLS to a sidecar).
    async fn gateway_tcp(self, mut client: TcpStream, rt: &ProxyRuntime, port: u16) {
        let snapshot = self.snapshot.load();
        let Some(server) = snapshot.tcp_servers.iter().find(|s| s.port == port) else { return };
        let Some(Target::Clusters(by_port)) = server.routes.first().and_then(|r| r.pick()) else { return };
        let Some((_, cluster)) = by_port.first() else { return };
        let generation = rt.for_snapshot(&snapshot);
        let crt = &generation.clusters[cluster.index];
        let Some(idx) = crt.pick(cluster, None, None) else { return };
        let ep = crt.endpoints[idx].clone();
        let _active = ActiveGuard::new(&ep);
        let series = self.telemetry.as_ref().map(|t| report::tcp_source(&t.metrics, &snapshot, rt, cluster, &ep));
        let copied = match upstream::dial(&ep, rt.tls.as_ref(), cluster.pool.connect_timeout).await {
            Ok(upstream::Dialed::Plain(mut up)) => {
                count_open(&series);
                tokio::io::copy_bidirectional(&mut client, &mut up).await
            }
            Ok(upstream::Dialed::Tls(mut up)) => {
                count_open(&series);
                tokio::io::copy_bidirectional(&mut client, &mut up).await
            }
            Err(e) => {
                crt.record(cluster, idx, AttemptResult::LocalFailure);
                tracing::debug!(error = %e, "tcp upstream connect failed");
                return;
            }
        };
        count_close(&series, copied);
    }

    /// A TCP connection at a pod's inbound port: AuthorizationPolicy for TCP (a denial closes
    /// the connection), then bytes copied to the app.
    async fn tcp_inbound<I>(&self, mut io: I, info: &ConnInfo, role: &Role)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use crate::security::authz::{Decision as Authz, Request as AuthzRequest, Target as AuthzTarget};
        let Role::Inbound { workload, port, app, rt, .. } = role else { return };
        let snapshot = self.snapshot.load();
        let target = AuthzTarget { namespace: &workload.namespace, labels: &workload.labels };
        if snapshot.authz.applies_to(&target) {
            let principal = info.principal.as_deref();
            let req = AuthzRequest {
                source_principal: principal,
                source_namespace: principal.and_then(crate::security::authz::principal_namespace),
                source_ip: Some(info.peer.ip()),
                remote_ip: Some(info.peer.ip()),
                port: *port,
                tcp: true,
                ..Default::default()
            };
            if let Authz::Deny { policy } = snapshot.authz.evaluate(&target, &req) {
                tracing::debug!(%policy, "rbac: tcp connection denied");
                return;
            }
        }
        let Some(ep) = app.endpoints.first() else { return };
        if let Ok(mut up) = TcpStream::connect(ep.addr).await {
            let _ = up.set_nodelay(true);
            let series =
                self.telemetry.as_ref().map(|t| report::tcp_destination(&t.metrics, rt, info.principal.as_deref()));
            count_open(&series);
            let copied = tokio::io::copy_bidirectional(&mut io, &mut up).await;
            count_close(&series, copied);
        }
    }

    /// The gateway's HTTPS side: reads the ClientHello, picks the Gateway server whose hosts match
    /// the SNI, and terminates TLS with its certificate. Without SNI only a server for `*` can
    /// serve it, as Envoy matches filter chains on `server_names`; otherwise it is closed.
    async fn gateway_tls(self, conn: Accepted) {
        let Accepted { stream, peer, role, shutdown, changes } = conn;
        let info = Arc::new(ConnInfo::of(&stream, peer));
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let Ok(start) = acceptor.await else { return };
        let sni = start.client_hello().server_name().map(|s| s.to_ascii_lowercase());
        let snapshot = self.snapshot.load();
        let server = match &sni {
            Some(name) => snapshot.tls_servers.iter().find(|s| s.hosts.iter().any(|h| h.matches(name))),
            None => snapshot.tls_servers.iter().find(|s| s.hosts.contains(&crate::snapshot::matcher::HostPattern::Any)),
        };
        let Some(server) = server else { return };
        let Ok(tls_stream) = start.into_stream(server.config.clone()).await else { return };
        self.serve_io(tls_stream, info, role, shutdown, changes, None).await
    }

    /// Serves HTTP on one connection until it ends, the listener shuts down, or the pod stops.
    /// HTTP/1.1 goes through the proxy's own loop ([`downstream`]); whatever that loop hands on
    /// (HTTP/2, upgrades, streamed bodies) through hyper.
    async fn serve_io<I>(
        self,
        io: I,
        info: Arc<ConnInfo>,
        role: Arc<Role>,
        mut shutdown: watch::Receiver<bool>,
        mut changes: Option<watch::Receiver<()>>,
        recheck: Option<Recheck>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let snapshots = self.snapshot.clone();
        let drain = downstream::Drain::default();
        let conn = self.serve_http(io, info, role.clone(), &drain);
        tokio::pin!(conn);
        enum Signal {
            Shutdown,
            PodStopped,
            Disallowed,
        }
        // The signals are rare and the connection wakes this task for every request: gated, they
        // are polled only when one of them fired.
        let signals = gate::Gated::new(async {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => Signal::Shutdown,
                _ = pod_stopped(&mut changes, &role) => Signal::PodStopped,
                _ = disallowed(&snapshots, recheck) => Signal::Disallowed,
            }
        });
        // The connection first, and no random order drawn on every wake.
        tokio::select! {
            biased;
            _ = conn.as_mut() => {}
            signal = signals => match signal {
                // A stopped pod's open connections die with it.
                Signal::PodStopped => {}
                // A config change that no longer admits this connection drains it, as Envoy
                // drains a filter chain that changed (a plaintext connection when the port turns
                // STRICT); so does a shutdown.
                Signal::Shutdown | Signal::Disallowed => {
                    if !drain.start() {
                        conn.await;
                    }
                }
            },
        }
    }

    /// One connection's requests: the HTTP/1.1 loop, then hyper for what it hands on.
    async fn serve_http<I>(self, io: I, info: Arc<ConnInfo>, role: Arc<Role>, drain: &downstream::Drain)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut handler = ConnHandler { proxy: &self, role: &role, info: &info, views: Views::default() };
        let rest = match downstream::serve(io, drain, &mut handler).await {
            downstream::Served::Handoff(rest) => rest,
            downstream::Served::Closed => return,
            // kube-proxy's path: the upstream reset the connection, so this one is reset too
            // (curl's exit 56, as the authentication task shows), not closed with a FIN (52).
            downstream::Served::Aborted(io) => {
                if let Some(tcp) = (&io as &dyn std::any::Any).downcast_ref::<TcpStream>() {
                    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                }
                return;
            }
        };
        apart(self.serve_hyper(rest, info, role, drain)).await
    }

    /// The rest of a connection the HTTP/1.1 loop handed on, served by hyper.
    async fn serve_hyper<I>(
        self,
        rest: downstream::Rewind<I>,
        info: Arc<ConnInfo>,
        role: Arc<Role>,
        drain: &downstream::Drain,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = service_fn(move |req: Request<Incoming>| {
            let proxy = self.clone();
            let role = role.clone();
            let info = info.clone();
            // Boxed where it is made: hyper runs each HTTP/2 stream as a task of its own, and
            // tokio moves a task's future whole, on spawn and at its end; the answer's is
            // kilobytes. (A box in hyper's executor would still copy it whole on the way in.)
            Box::pin(async move {
                let mut req = req.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed());
                if req.version() == http::Version::HTTP_2 {
                    h1_form(&mut req);
                }
                // Streams run at once, each on a task of its own: each reads the config anew.
                let answer = proxy.answer(&role, &info, &mut Views::default(), Call::from(req)).await;
                // hyper writes the response after this returns, so here (unlike the HTTP/1.1
                // loop) the record is written first; left to the tick it would wait a second.
                crate::telemetry::flush_local();
                answer.map(Answer::into_response).ok_or(AbortConnection)
            })
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Envoy's limit on a request's head (`max_request_headers_kb`), where hyper's own would
        // buffer 400 KiB of an HTTP/1.1 head and refuse an HTTP/2 header list past 16 KiB.
        builder.http1().max_buf_size(h1::MAX_HEAD);
        builder.http2().max_header_list_size(h1::MAX_HEADER_LIST);
        let conn = builder.serve_connection(TokioIo::new(rest), svc);
        tokio::pin!(conn);
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            _ = drain.drained() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }

    /// The response to send, or `None` when the connection must close unanswered: without a
    /// sidecar there is no proxy to answer, and the caller sees the connection fail.
    ///
    /// Handles one request: the first proxy names it (`x-request-id`), every proxy opens a span,
    /// counts it in its metrics and hands its access-log record to the telemetry writer. The
    /// role's target is chosen first so that one await serves every role: each layer of
    /// futures would move the request in and the response out again.
    #[allow(clippy::manual_async_fn, reason = "an `async fn` would copy the request into a local of its own")]
    fn answer<'a>(
        &'a self,
        role: &'a Role,
        info: &'a ConnInfo,
        views: &'a mut Views,
        mut req: Call,
    ) -> impl Future<Output = Option<Answer>> + 'a {
        // A block, not an `async fn` (here, in `inbound` and in `route`): an `async fn` moves each
        // argument into a local of its own when first polled, which copied the request (232
        // bytes) once more at each layer.
        async move {
            let client;
            // Where the request goes, and the runtime that reports it: none without a sidecar, nor
            // for a local reply that no proxy of the mesh would have made.
            let (dispatch, reporter) = match role {
                Role::Inbound { rt, app, cluster, control, .. } => {
                    (Dispatch::Inbound((rt, app, cluster, control)), Some(&**rt))
                }
                Role::Gateway { workload, rt } => (Dispatch::Route(workload, rt, Caller::Gateway), Some(&**rt)),
                Role::GatewayTls { workload, rt } => (Dispatch::Route(workload, rt, Caller::GatewayTls), Some(&**rt)),
                Role::Outbound { workload, rt } => (Dispatch::Route(workload, rt, Caller::Sidecar), Some(&**rt)),
                // A pod without a sidecar has no proxy to report.
                Role::Plain { workload, rt } => (Dispatch::Route(workload, rt, Caller::Plain), None),
                // TCP listeners never get here.
                Role::GatewayTcp { .. } => (Dispatch::Reply(LocalReply::BadRequest, ServerName::IstioEnvoy), None),
                Role::MeshClient { cache } => match views.client(&self.snapshot, &self.registry, cache) {
                    Some(c) => {
                        client = c;
                        (Dispatch::Route(&client.0, &client.1, Caller::Sidecar), Some(&*client.1))
                    }
                    None => (Dispatch::Reply(LocalReply::NoRoute, ServerName::Envoy), None),
                },
            };
            // What Envoy's connection manager does before any filter or the access log reads
            // the request: the path in normal form (not on kube-proxy's path), and at the
            // gateway the client appended to `x-forwarded-for`.
            let dispatch = match role {
                Role::Plain { .. } => dispatch,
                _ if normalize::uri(&mut req.parts.uri).is_err() => {
                    let server = match &dispatch {
                        Dispatch::Route(_, _, caller) => caller.server(),
                        Dispatch::Inbound(_) => ServerName::IstioEnvoy,
                        Dispatch::Reply(_, server) => *server,
                    };
                    Dispatch::Reply(LocalReply::BadRequest, server)
                }
                Role::Gateway { .. } | Role::GatewayTls { .. } => {
                    forward_for(&mut req.parts.fields, info);
                    dispatch
                }
                _ => dispatch,
            };
            let observed = match (&self.telemetry, reporter) {
                (Some(tel), Some(rt)) => {
                    Some((tel, rt, Observed::of(&mut req, matches!(role, Role::Inbound { .. }), &rt.proxy, info)))
                }
                _ => None,
            };
            // Reports the request as Envoy does if the client leaves first (the future dropped).
            let mut unfinished = Unfinished { proxy: self, role, info, observed };
            let span = unfinished.observed.as_ref().and_then(|(_, _, o)| o.span());
            let served = match dispatch {
                Dispatch::Inbound(pod) => self.inbound(pod, info, views, req, span).await,
                Dispatch::Route(workload, route_rt, caller) => {
                    self.route((workload, route_rt, caller), info, views, req, span).await
                }
                Dispatch::Reply(reply, server) => respond::local_reply(reply, server, false).into(),
            };
            if let Some((tel, rt, observed)) = unfinished.observed.take() {
                self.report(tel, rt, role, info, observed, &served);
            }
            (!served.abort).then_some(served.resp)
        }
    }

    /// A request whose client went away before its response: Envoy logs it `0 DC
    /// downstream_remote_disconnect`. Counted in the inbound side's metrics, whose labels do not
    /// depend on a route; an outbound one is only logged, its route having been dropped with it.
    #[cold]
    fn report_disconnect(&self, tel: &Telemetry, rt: &ProxyRuntime, role: &Role, info: &ConnInfo, o: Observed) {
        // A stopped pod's sidecar dies with it and reports nothing of what it was serving.
        if let Role::Inbound { control, .. } = role {
            if control.mode() == PodMode::Stopped {
                return;
            }
        }
        let elapsed = o.t0.elapsed();
        let series = self.inbound_series(&tel.metrics, rt, role, info, &o);
        let mut record = o.record;
        if let Some(series) = &series {
            series.record(0, "DC", elapsed, record.bytes_received, 0);
        }
        record.status = 0;
        record.flags = std::borrow::Cow::Borrowed("DC");
        record.details = std::borrow::Cow::Borrowed("downstream_remote_disconnect");
        record.duration_us = elapsed.as_micros() as u64;
        record.series = series;
        tel.send(record);
    }

    /// An inbound side's destination report for the request's caller (its peer id and whether
    /// it spoke mTLS); None on another role, whose labels come from the route.
    fn inbound_series(
        &self,
        metrics: &crate::telemetry::metrics::Metrics,
        rt: &ProxyRuntime,
        role: &Role,
        info: &ConnInfo,
        o: &Observed,
    ) -> Option<Arc<crate::telemetry::metrics::Series>> {
        let Role::Inbound { series, port, .. } = role else { return None };
        let caller = o.peer_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        Some(series.get(metrics, &self.snapshot, rt, *port, caller, info.principal.is_some()))
    }

    /// Counts a served request in its metrics and hands its access-log record to the writer.
    fn report(&self, tel: &Telemetry, rt: &ProxyRuntime, role: &Role, info: &ConnInfo, o: Observed, served: &Served) {
        let elapsed = o.t0.elapsed();
        let (resp, route, upstream) = (&served.resp, served.route.as_ref(), served.upstream.as_ref());
        let status = resp.status.as_u16();
        let bytes_sent = resp.fields.get(&CONTENT_LENGTH).and_then(h1::content_length).unwrap_or(0);
        let flag_text = served.flags.flags.clone();
        // Label sets are cached; the snapshot is only read to build one the first time.
        let metrics = &tel.metrics;
        let series =
            match (self.inbound_series(metrics, rt, role, info, &o), route, upstream.and_then(|u| u.endpoint.as_ref()))
            {
                (Some(series), _, _) => series,
                (_, Some(r), Some(ep)) => report::source(metrics, &self.snapshot, rt, &r.cluster, ep),
                (_, Some(r), None) => {
                    let generation = rt.for_snapshot(&self.snapshot.load());
                    match generation.clusters.get(r.cluster.index) {
                        Some(crt) => report::source_no_endpoint(metrics, rt, &r.cluster, &crt.shared),
                        None => report::unrouted(metrics, rt),
                    }
                }
                (_, None, _) => report::unrouted(metrics, rt),
            };
        let mut record = o.record;
        series.record(status, &flag_text, elapsed, record.bytes_received, bytes_sent);
        record.status = status;
        record.flags = flag_text;
        record.details = served.flags.details.clone();
        record.bytes_sent = bytes_sent;
        record.duration_us = elapsed.as_micros() as u64;
        record.upstream_service_time = upstream.and_then(|u| u.service_ms);
        record.upstream_host = upstream.map(|u| u.addr);
        record.upstream_cluster = route.map(|r| r.cluster.clone());
        record.route = route.and_then(|r| r.route.clone());
        record.series = Some(series);
        tel.send(record);
    }

    /// Inbound: hand the request to the local app.
    #[allow(clippy::manual_async_fn, reason = "an `async fn` would copy the request into a local of its own")]
    fn inbound<'a>(
        &'a self,
        (rt, app, cluster, control): (&'a ProxyRuntime, &'a ClusterRt, &'a Arc<Cluster>, &'a PodControl),
        info: &'a ConnInfo,
        views: &'a mut Views,
        req: Call,
        span: Option<&'a SpanContext>,
    ) -> impl Future<Output = Served> + 'a {
        async move {
            let (snapshot, generation) = views.current(&self.snapshot, rt);
            if let Some(limit) = generation.rate_limited(Context::Inbound, Some(cluster.port)) {
                return respond::rate_limited(&limit.limit.headers, ServerName::IstioEnvoy).into();
            }
            let (mut parts, body) = req.into_parts();
            if let Some(denied) =
                admit(snapshot, &rt.workload, cluster.port, info, &mut parts, ServerName::IstioEnvoy, None)
            {
                return denied.into();
            }
            let xfcc = info.xfcc.as_ref();
            if control.mode() == PodMode::Failing {
                let mut reply =
                    respond::direct(503, &Bytes::from_static(b"service unavailable"), ServerName::IstioEnvoy);
                reply.resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                return reply.into();
            }
            // Only an mTLS peer vouches for a client certificate: anything a client sent is dropped,
            // and the peer's is written with the head, as is the span.
            let mut found = Found::scan(&parts.fields);
            found.remove(
                &mut parts.fields,
                Found::HOP_BY_HOP | Found::PEER_ID | Found::CLIENT_CERT | Found::trace(span),
            );
            let added = h1::Added { fields: [xfcc.map(|v| (&X_FCC, v)), None, None], span };
            parts.uri = origin_form(std::mem::take(&mut parts.uri));
            let Some(ep) = app.endpoints.first() else {
                return respond::local_reply(LocalReply::NoHealthyUpstream, ServerName::IstioEnvoy, false).into();
            };
            let started = Instant::now();
            app.shared.stats.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
            let result = match upstream::acquire(&app.shared, ep, &cluster.pool, None).await {
                Ok((conn, _)) => conn.send_head(h1::Head::of(&parts, added), body).await,
                Err(e) => Err(e),
            };
            let (mut served, service_ms) = match result {
                Ok(mut resp) => {
                    let service_ms = finish(&mut resp.fields, ServerName::IstioEnvoy, started, &[]);
                    (Served::upstream(resp), Some(service_ms))
                }
                Err(e) => (respond::local_reply(reply_for(&e), ServerName::IstioEnvoy, false).into(), None),
            };
            let responded = service_ms.is_some();
            served.upstream = Some(UpstreamHost { addr: ep.addr, responded, endpoint: None, service_ms });
            served.route = Some(RouteInfo { cluster: cluster.clone(), route: Some(INBOUND_ROUTE.clone()) });
            served
        }
    }

    /// Gateway and outbound: route by the snapshot, run the route's policies, forward.
    #[allow(clippy::manual_async_fn, reason = "an `async fn` would copy the request into a local of its own")]
    fn route<'a>(
        &'a self,
        (workload, rt, caller): (&'a Workload, &'a ProxyRuntime, Caller),
        // By reference: the peer's address by value (32 bytes, 4-aligned) put the future's
        // arguments apart, and constructing it copied 640 bytes twice.
        conn: &'a ConnInfo,
        views: &'a mut Views,
        req: Call,
        span: Option<&'a SpanContext>,
    ) -> impl Future<Output = Served> + 'a {
        async move {
            let mesh = !matches!(caller, Caller::Gateway | Caller::GatewayTls);
            let server = caller.server();
            let (snapshot, generation) = views.current(&self.snapshot, rt);
            let ctx = if mesh { Context::Outbound } else { Context::Gateway };
            if let Some(limit) = generation.rate_limited(ctx, None) {
                return respond::rate_limited(&limit.limit.headers, server).into();
            }
            let (mut parts, body) = req.into_parts();
            if !mesh {
                // Policies that select the gateway (istio: ingressgateway) apply here, on its port 8080 (8443).
                let port = if caller == Caller::GatewayTls { 8443 } else { 8080 };
                if let Some(denied) =
                    admit(snapshot, &rt.workload, port, conn, &mut parts, server, Some(caller.scheme()))
                {
                    return denied.into();
                }
            }
            // Held by a reference-counted copy of the field (or URI) it came from, not a new string.
            let (from_uri, from_host);
            let authority: &str = match parts.uri.authority() {
                Some(a) => {
                    from_uri = a.clone();
                    from_uri.as_str()
                }
                None => {
                    from_host = parts.fields.value(&HOST);
                    match from_host.as_ref().and_then(|h| h.to_str().ok()) {
                        Some(h) => h,
                        None => return respond::local_reply(LocalReply::NoRoute, server, false).into(),
                    }
                }
            };
            let (host, port) = split_authority(authority);
            let host: std::borrow::Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                host.to_ascii_lowercase().into()
            } else {
                host.into()
            };
            let port = port.unwrap_or(80);
            let vhost = match caller {
                Caller::Sidecar => snapshot.mesh.get(&workload.namespace).and_then(|t| t.lookup(&host)),
                Caller::Plain => snapshot.mesh.get(&workload.namespace).and_then(|t| t.plain.get(&*host)),
                Caller::Gateway => {
                    if snapshot.ingress.https_redirect.iter().any(|p| p.matches(&host)) {
                        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                        // Envoy writes the Host as sent, port and all.
                        return respond::redirect(301, &format!("https://{authority}{path}"), server).into();
                    }
                    snapshot.ingress.lookup(&host)
                }
                Caller::GatewayTls => snapshot.ingress_tls.lookup(&host),
            };
            let Some(vhost) = vhost else {
                return respond::local_reply(LocalReply::NoRoute, server, false).into();
            };
            let path = parts.uri.path();
            let query = parts.uri.query();
            let view = RequestView {
                method: &parts.method,
                path,
                query,
                scheme: caller.scheme(),
                authority,
                port,
                headers: &parts.fields,
            };
            let src = SourceView {
                labels: &workload.labels,
                namespace: &workload.namespace,
                gateway: if mesh { "mesh" } else { "" },
            };
            let decision = crate::snapshot::route::decide(&vhost.routes, &view, &src);
            // Envoy's CORS filter runs on the chosen route before the fault filter and the router.
            let mut cors = None;
            if let Some(policy) = decision.route().and_then(|r| r.policy.cors.as_deref()) {
                if let Some(origin) = parts.fields.value(&http::header::ORIGIN) {
                    let preflight = parts.method == http::Method::OPTIONS
                        && parts.fields.get(&http::header::ACCESS_CONTROL_REQUEST_METHOD).is_some();
                    let allowed = origin.to_str().is_ok_and(|o| policy.allows(o));
                    match (allowed, preflight) {
                        (true, true) => return respond::cors_preflight(Some((policy, origin)), server).into(),
                        (true, false) => cors = Some((policy, origin)),
                        (false, true) if !policy.forward_unmatched => {
                            return respond::cors_preflight(None, server).into()
                        }
                        (false, _) => {}
                    }
                }
            }
            let (matched, target, cluster) = match decision {
                Decision::Forward { matched, target, cluster } => (matched, target, cluster),
                Decision::Redirect { code, location, matched } => {
                    return route_reply(respond::redirect(code, &location, server), matched.route, cors)
                }
                Decision::Direct { status, body, matched } => {
                    return route_reply(respond::direct(status, body, server), matched.route, cors)
                }
                Decision::Reply(r) => return respond::local_reply(r, server, false).into(),
            };
            // kube-proxy neither retries nor times out.
            let policy = if caller == Caller::Plain { &*NO_POLICY } else { &matched.route.policy };
            let mut delayed = false;
            if let Some(fault) = &policy.fault {
                if let Some((delay, pct)) = fault.delay {
                    if roll(pct) {
                        tokio::time::sleep(delay).await;
                        delayed = true;
                    }
                }
                if let Some((with, pct)) = &fault.abort {
                    if roll(*pct) {
                        // The route and its cluster were chosen before the fault filter ran: the
                        // access log and metrics name them, and a delay before the abort shows.
                        let mut served: Served = respond::fault_abort(with, server).into();
                        edit_reply(&mut served, &matched.route.header_edits(target).map(|h| &h.response));
                        if delayed {
                            served.flags = served.flags.with("DI");
                        }
                        served.route = Some(RouteInfo { cluster: cluster.clone(), route: matched.route.name.clone() });
                        return served;
                    }
                }
            }
            let Some(body) = buffer(body, BODY_LIMIT).await else {
                return respond::local_reply(LocalReply::TooLarge, server, false).into();
            };
            let (hash, new_cookie) = request_hash(&cluster.lb, &parts.fields, query, conn.peer);
            let mut out = match outgoing(&mut parts, authority, matched, target, body, span, caller.scheme()) {
                Some(o) => o,
                None => return respond::local_reply(LocalReply::BadRequest, server, false).into(),
            };
            // Client overrides Envoy honours, then drops (most requests carry none: one scan, no
            // lookup). Each attempt writes its own count.
            let (asked, retry) = if out.found.has(Found::OVERRIDES) {
                let map = out.fields.map_mut();
                map.remove(&X_ATTEMPT_COUNT);
                (map.remove(&X_RQ_TIMEOUT), retry_overrides(&policy.retry, map))
            } else {
                (None, std::borrow::Cow::Borrowed(&policy.retry))
            };
            let timeout = match asked.and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
                None => policy.timeout,
            };
            // Metadata exchange: the callee's sidecar learns who called (its metrics' source labels).
            if caller != Caller::Plain && !cluster.external {
                out.found.remove(&mut out.fields, Found::PEER_ID);
                out.peer = Some(rt.peer_id.clone());
            }
            if let Some(t) = retry.per_try_timeout.or(timeout) {
                out.fields.set(X_EXPECTED_TIMEOUT.clone(), HeaderValue::from(t.as_millis() as u64));
            }
            for m in &policy.mirrors {
                if roll(m.percentage) {
                    if let Some(c) = m.target.cluster_for(port) {
                        mirror(&generation.clusters[c.index], c.clone(), &out, authority, rt.tls.clone());
                    }
                }
            }
            let crt = &generation.clusters[cluster.index];
            let started = Instant::now();
            let plan = Plan { retry: &retry, hash, server, tls: rt.tls.as_ref() };
            let attempts = self.attempts(crt, cluster, &out, plan);
            let mut served = match timeout {
                Some(t) => match tokio::time::timeout(t, attempts).await {
                    Ok(r) => r,
                    Err(_) => {
                        crt.shared.stats.upstream_rq_timeout.fetch_add(1, Ordering::Relaxed);
                        respond::local_reply(LocalReply::Timeout, server, false).into()
                    }
                },
                None => attempts.await,
            };
            let ops = matched.route.header_edits(target).map(|h| &h.response);
            if let Some(upstream) = served.upstream.as_mut().filter(|u| u.responded) {
                upstream.service_ms = Some(finish(&mut served.resp.fields, server, started, &ops));
                if let Some(cookie) = new_cookie {
                    if let Ok(v) = HeaderValue::from_str(&cookie) {
                        served.resp.fields.append(SET_COOKIE, v);
                    }
                }
            } else {
                // A reply the proxy wrote (504, 503): Envoy finalizes it with the route's edits too.
                edit_reply(&mut served, &ops);
            }
            if delayed {
                served.flags = served.flags.with("DI");
            }
            add_cors(&mut served, cors);
            served.route = Some(RouteInfo { cluster: cluster.clone(), route: matched.route.name.clone() });
            served
        }
    }

    /// The attempt loop: pick an endpoint, get a connection, send; retry as the policy says.
    async fn attempts(&self, crt: &ClusterRt, cluster: &Cluster, out: &Outgoing, plan: Plan<'_>) -> Served {
        let Plan { retry, hash, server, tls } = plan;
        let stats = &crt.shared.stats;
        let mut previous = None;
        let mut attempt: u32 = 1;
        // A scheduled retry holds a `maxRetries` slot through its backoff and its attempt, as
        // Envoy's retry resource does; the next decision gives it back first.
        let mut retry_slot: Option<Gauge> = None;
        loop {
            let Some(idx) = crt.pick(cluster, hash, previous) else {
                return respond::local_reply(LocalReply::NoHealthyUpstream, server, false).into();
            };
            previous = Some(idx);
            let ep = &crt.endpoints[idx];
            if crt.shared.rq_active.load(Ordering::Acquire) >= u64::from(cluster.pool.max_requests) {
                stats.upstream_rq_overflow.fetch_add(1, Ordering::Relaxed);
                return respond::local_reply(LocalReply::Overflow, server, false).into();
            }
            let _rq = Gauge::new(&crt.shared.rq_active);
            let _active = ActiveGuard::new(ep);
            stats.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
            let send = async {
                let (conn, reused) = upstream::acquire(&crt.shared, ep, &cluster.pool, tls).await?;
                if reused {
                    stats.upstream_rq_reused.fetch_add(1, Ordering::Relaxed);
                }
                let count = number(u64::from(attempt));
                conn.send_head(out.head(&count), respond::full(out.body.clone())).await
            };
            let result = match retry.per_try_timeout {
                Some(t) => match tokio::time::timeout(t, send).await {
                    Ok(r) => r.map_or_else(Attempt::Failed, Attempt::Response),
                    Err(_) => {
                        stats.upstream_rq_per_try_timeout.fetch_add(1, Ordering::Relaxed);
                        Attempt::PerTryTimeout
                    }
                },
                None => send.await.map_or_else(Attempt::Failed, Attempt::Response),
            };
            let retriable = match &result {
                Attempt::Failed(UpstreamError::Overflow) => {
                    // Locally refused: never retried, never counted by outlier detection.
                    return respond::local_reply(LocalReply::Overflow, server, false).into();
                }
                Attempt::Response(resp) => {
                    crt.record(cluster, idx, AttemptResult::Status(resp.status.as_u16()));
                    retriable_response(retry, resp)
                }
                Attempt::Failed(UpstreamError::Connect(_) | UpstreamError::Tls(_)) => {
                    crt.record(cluster, idx, AttemptResult::LocalFailure);
                    retry.on.has(RetryOn::CONNECT_FAILURE | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
                }
                Attempt::Failed(UpstreamError::Reset(_)) => {
                    crt.record(cluster, idx, AttemptResult::LocalFailure);
                    retry.on.has(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR)
                }
                Attempt::PerTryTimeout => {
                    crt.record(cluster, idx, AttemptResult::LocalFailure);
                    retry.on.has(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
                }
            };
            let retried = attempt > 1;
            drop(retry_slot.take());
            let can_retry = retriable && attempt <= retry.attempts;
            // Envoy's URX: the policy would retry, but no attempt is left.
            let limit_reached = retriable && retried && !can_retry;
            // The `maxRetries` slot, taken at once if one is free (no check-then-take race).
            let max = u64::from(cluster.pool.max_retries);
            let budget = can_retry
                && crt
                    .shared
                    .rq_retry_active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                    .is_ok();
            if can_retry && !budget {
                stats.upstream_rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
            }
            if !budget {
                let host = UpstreamHost {
                    addr: ep.addr,
                    responded: matches!(result, Attempt::Response(_)),
                    endpoint: Some(ep.clone()),
                    service_ms: None,
                };
                let mut served = match result {
                    Attempt::Response(resp) => Served::upstream(resp),
                    Attempt::Failed(e) => {
                        let mut served: Served = respond::local_reply(reply_for(&e), server, retried).into();
                        served.abort = server == ServerName::Keep;
                        served
                    }
                    Attempt::PerTryTimeout => {
                        let mut served: Served = respond::local_reply(LocalReply::Timeout, server, false).into();
                        served.flags = ResponseFlags::new("UT", "upstream_per_try_timeout");
                        served
                    }
                };
                if limit_reached {
                    served.flags = served.flags.with("URX");
                }
                if can_retry {
                    // A retry `maxRetries` refused: Envoy marks the answer an upstream overflow.
                    served.flags = served.flags.with("UO");
                }
                served.upstream = Some(host);
                return served;
            }
            drop(result);
            stats.upstream_rq_retry.fetch_add(1, Ordering::Relaxed);
            // The slot `budget` took, held through the backoff and the next attempt.
            retry_slot.replace(Gauge::adopt(&crt.shared.rq_retry_active));
            tokio::time::sleep(backoff(retry.backoff, attempt)).await;
            attempt += 1;
        }
    }
}

fn count_open(series: &Option<Arc<TcpSeries>>) {
    if let Some(s) = series {
        s.opened.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a closed connection and its bytes: received from the caller, sent back to it.
fn count_close(series: &Option<Arc<TcpSeries>>, copied: std::io::Result<(u64, u64)>) {
    if let Some(s) = series {
        s.closed.fetch_add(1, Ordering::Relaxed);
        if let Ok((from_client, to_client)) = copied {
            s.received.fetch_add(from_client, Ordering::Relaxed);
            s.sent.fetch_add(to_client, Ordering::Relaxed);
        }
    }
}

/// Server-side checks in Envoy's filter order: JWT (401 for a bad token), then
/// AuthorizationPolicy (403 `RBAC: access denied`). Some(response) refuses the request.
fn admit(
    snapshot: &crate::snapshot::Snapshot,
    w: &Workload,
    port: u16,
    info: &ConnInfo,
    parts: &mut Parts,
    server: ServerName,
    // The scheme the client spoke in; None at a sidecar, whose caller's proxy says it in
    // `x-forwarded-proto` (read only for a refusal's challenge).
    scheme: Option<&str>,
) -> Option<respond::Reply> {
    use crate::security::authz::{Decision as Authz, Request as AuthzRequest, Target as AuthzTarget};
    let mut auth = None;
    if snapshot.jwt.applies_to(&w.namespace, &w.labels) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        // Both read the request's fields as a map (a request without policies never makes one).
        match snapshot.jwt.authenticate(&w.namespace, &w.labels, parts.fields.map_mut(), parts.uri.query(), now) {
            Ok(a) => auth = a,
            Err(why) => {
                let host = parts.fields.first(HOST.as_str()).unwrap_or("");
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let forwarded = parts.fields.first(X_FORWARDED_PROTO.as_str()).filter(|p| *p == "https");
                let scheme = scheme.or(forwarded).unwrap_or("http");
                return Some(respond::jwt_denied(why, scheme, host, path, server));
            }
        }
    }
    let target = AuthzTarget { namespace: &w.namespace, labels: &w.labels };
    if !snapshot.authz.applies_to(&target) {
        return None;
    }
    let headers: &HeaderMap = parts.fields.map_mut();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    // With no trusted hops Envoy's client address is the last `x-forwarded-for` entry: the one
    // the gateway appended (at the gateway itself, its peer). A client's own entries before it
    // are not believed.
    let xff = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok());
    let principal = info.principal.as_deref();
    let req = AuthzRequest {
        source_principal: principal,
        source_namespace: principal.and_then(crate::security::authz::principal_namespace),
        source_ip: Some(info.peer.ip()),
        remote_ip: xff.or(Some(info.peer.ip())),
        request_principal: auth.as_ref().map(|a| a.principal.as_str()),
        claims: auth.as_ref().map(|a| &a.claims),
        host: authority,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        port,
        headers,
        ..Default::default()
    };
    match snapshot.authz.evaluate(&target, &req) {
        Authz::Allow => None,
        Authz::Deny { policy } => Some(respond::rbac_denied(&policy, server)),
    }
}

/// Envoy's jittered exponential backoff: uniform in [0, (2^n - 1) x base], capped at 10 x base.
pub fn backoff(base: Duration, retry_number: u32) -> Duration {
    let factor = (1u64 << retry_number.min(16)) - 1;
    let max = base.saturating_mul(factor as u32).min(base.saturating_mul(10));
    let ms = max.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { fastrand::u64(..=ms) })
}

/// Whether the response is one the policy retries.
fn retriable_response(retry: &RetryPolicy, resp: &Answer) -> bool {
    let s = resp.status.as_u16();
    let on = retry.on;
    if on.has(RetryOn::FIVE_XX) && s >= 500 {
        return true;
    }
    if on.has(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504) {
        return true;
    }
    if on.has(RetryOn::RETRIABLE_4XX) && s == 409 {
        return true;
    }
    if on.has(RetryOn::RETRIABLE_STATUS_CODES) && retry.codes.contains(&s) {
        return true;
    }
    if on.has(RetryOn::ENVOY_RATELIMITED) && resp.fields.get(&X_RATELIMITED).is_some() {
        return true;
    }
    let grpc = resp.fields.get(&GRPC_STATUS).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u32>().ok());
    matches!(
        (grpc, on),
        (Some(1), on) if on.has(RetryOn::CANCELLED)
    ) || matches!((grpc, on), (Some(4), on) if on.has(RetryOn::DEADLINE_EXCEEDED))
        || matches!((grpc, on), (Some(13), on) if on.has(RetryOn::INTERNAL))
        || matches!((grpc, on), (Some(8), on) if on.has(RetryOn::RESOURCE_EXHAUSTED))
        || matches!((grpc, on), (Some(14), on) if on.has(RetryOn::UNAVAILABLE))
}

/// The policy after the client's `x-envoy-retry-on` / `x-envoy-max-retries` (removed from the request).
/// The policy is copied only when a client header overrides it. Cold, as the rare paths of
/// `route` are (see `respond`): laid apart from the forwarding path.
#[cold]
fn retry_overrides<'p>(policy: &'p RetryPolicy, headers: &mut HeaderMap) -> std::borrow::Cow<'p, RetryPolicy> {
    let mut p = std::borrow::Cow::Borrowed(policy);
    if let Some(v) = headers.remove(&X_RETRY_ON) {
        if let Some(Ok((on, codes))) = v.to_str().ok().map(parse_retry_on) {
            let p = p.to_mut();
            p.on = p.on | on;
            p.codes.extend(codes);
        }
    }
    if let Some(v) = headers.remove(&X_MAX_RETRIES) {
        if let Some(n) = v.to_str().ok().and_then(|s| s.parse().ok()) {
            p.to_mut().attempts = n;
        }
    }
    p
}

/// A gauge held for the life of a request.
struct Gauge<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Gauge<'a> {
    fn new(g: &'a std::sync::atomic::AtomicU64) -> Gauge<'a> {
        g.fetch_add(1, Ordering::AcqRel);
        Gauge(g)
    }

    /// A count already taken (by a compare-and-swap), given back on drop.
    fn adopt(g: &'a std::sync::atomic::AtomicU64) -> Gauge<'a> {
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cold]
fn reply_for(e: &UpstreamError) -> LocalReply {
    match e {
        UpstreamError::Overflow => LocalReply::Overflow,
        UpstreamError::Connect(_) | UpstreamError::Tls(upstream::TlsFailure::Other) => LocalReply::ConnectFailure,
        UpstreamError::Tls(upstream::TlsFailure::WrongVersion) => LocalReply::TlsWrongVersion,
        UpstreamError::Tls(upstream::TlsFailure::VerifyFailed) => LocalReply::TlsVerifyFailed,
        UpstreamError::Reset(_) => LocalReply::UpstreamReset,
    }
}

/// The whole request body, kept for retries and mirrors; `None` past `limit` bytes or when the
/// body breaks. A body of one piece (what the HTTP/1.1 loop gives) is kept without a copy.
async fn buffer(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut one: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else { continue };
        len += data.len();
        if len > limit {
            return None;
        }
        match one.take() {
            None if joined.is_empty() => one = Some(data),
            earlier => {
                if let Some(e) = earlier {
                    joined.extend_from_slice(&e);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Some(one.unwrap_or_else(|| joined.freeze()))
}

/// Answers the requests of one downstream connection.
struct ConnHandler<'a> {
    proxy: &'a Proxy,
    role: &'a Role,
    info: &'a ConnInfo,
    views: Views,
}

impl downstream::Handler for ConnHandler<'_> {
    fn call(&mut self, req: Call) -> impl std::future::Future<Output = Option<Answer>> + Send + '_ {
        // The proxy's own future, not one wrapped around it: each layer moves the request.
        self.proxy.answer(self.role, self.info, &mut self.views, req)
    }

    fn after(&self) {
        crate::telemetry::flush_local();
    }
}

/// The request toward the upstream: rewrite, Host, Envoy's headers, the route's header edits.
fn outgoing(
    parts: &mut Parts,
    authority: &str,
    matched: Matched<'_>,
    target: &WeightedTarget,
    body: Bytes,
    span: Option<&SpanContext>,
    scheme: &str,
) -> Option<Outgoing> {
    let route = matched.route;
    let uri = &parts.uri;
    let rewritten = route.rewrite.as_ref().and_then(|rw| rw.path(uri.path(), uri.query(), matched.prefix));
    // The target moves to the upstream request, as the fields do below.
    let uri = match rewritten {
        Some(p) => Uri::from(http::uri::PathAndQuery::try_from(p).ok()?),
        None => origin_form(std::mem::take(&mut parts.uri)),
    };
    // The fields move to the upstream request rather than being copied.
    let mut fields = std::mem::take(&mut parts.fields);
    let new_authority = route.rewrite.as_ref().and_then(|rw| rw.authority.as_deref()).unwrap_or(authority);
    let mut found = Found::scan(&fields);
    found.remove(&mut fields, Found::HOP_BY_HOP);
    // The client's one Host header is kept when it already names the authority (no new value).
    if !fields.holds_only(&HOST, new_authority.as_bytes()) {
        fields.set(HOST, HeaderValue::from_str(new_authority).ok()?);
    }
    // The scan saw these names, so a request without them costs no lookup.
    if !found.has(Found::REQUEST_ID) {
        fields.append(X_REQUEST_ID.clone(), request_id());
    }
    let framed = found.has(Found::FRAMING);
    if !body.is_empty() || (framed && fields.get(&CONTENT_LENGTH).is_some()) {
        // A client's one length, already right, is kept: setting it anew would make a head a map.
        let length = HeaderValue::from(body.len());
        if !fields.holds_only(&CONTENT_LENGTH, length.as_bytes()) {
            fields.set(CONTENT_LENGTH, length);
        }
    }
    if framed {
        fields.remove(&http::header::TRANSFER_ENCODING);
    }
    let [ops, more] = route.header_edits(target).map(|h| &h.request);
    // The gateway's HTTPS side was spoken to in TLS: Envoy sets the scheme it served.
    let scheme = if scheme == "https" { &HTTPS } else { &HTTP };
    let (proto, span) = if ops.is_empty() && more.is_empty() {
        // The proxy's fields are written with the head, once a client's copies are gone.
        found.remove(&mut fields, Found::FORWARDED_PROTO | Found::trace(span));
        (Some(scheme), span.copied())
    } else {
        // The route's edits see `x-forwarded-proto` as Envoy's do; the span goes in after them.
        let headers = fields.map_mut();
        headers.insert(X_FORWARDED_PROTO.clone(), scheme.clone());
        ops.apply(headers);
        more.apply(headers);
        if let Some(span) = span {
            span.inject(headers);
        }
        found = Found::scan(&fields);
        (None, None)
    };
    Some(Outgoing { method: parts.method.clone(), uri, fields, body, found, proto, peer: None, span })
}

/// Sends a copy to a mirror cluster, fire and forget, with the authority suffixed `-shadow`.
#[cold]
fn mirror(
    crt: &ClusterRt,
    cluster: Arc<Cluster>,
    out: &Outgoing,
    authority: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) {
    let Ok(shadow) = HeaderValue::from_str(&shadow_authority(authority)) else {
        return;
    };
    let mut req = out.request();
    req.headers_mut().insert(HOST, shadow);
    let Some(idx) = crt.pick(&cluster, None, None) else {
        return;
    };
    let ep = crt.endpoints[idx].clone();
    let shared = crt.shared.clone();
    tokio::spawn(async move {
        let _active = ActiveGuard::new(&ep);
        if let Ok((conn, _)) = upstream::acquire(&shared, &ep, &cluster.pool, tls.as_ref()).await {
            if let Ok(resp) = conn.send(req).await {
                // Drain so the connection goes back to the pool; the response is discarded.
                let _ = resp.body.collect().await;
            }
        }
    });
}

/// Envoy's mirror authority: `-shadow` goes on the host, before any port.
fn shadow_authority(authority: &str) -> String {
    match split_authority(authority) {
        (host, Some(p)) => format!("{host}-shadow:{p}"),
        (host, None) => format!("{host}-shadow"),
    }
}

/// The consistent-hash key of a request, and a cookie to set when the policy issues one.
fn request_hash(
    lb: &LbPolicy,
    headers: &Fields,
    query: Option<&str>,
    peer: SocketAddr,
) -> (Option<u64>, Option<String>) {
    let LbPolicy::Hash { key, .. } = lb else {
        return (None, None);
    };
    match key {
        // Envoy hashes the value's bytes, text or not.
        HashKey::Header(name) => (headers.get_named(name).map(hash64), None),
        HashKey::SourceIp => (Some(hash64(peer.ip().to_string().as_bytes())), None),
        HashKey::QueryParam(name) => (
            query.and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| hash64(v.as_bytes()))
                })
            }),
            None,
        ),
        HashKey::Cookie { name, path, ttl } => {
            let mut found = None;
            headers.each_value(&COOKIE, |c| {
                if found.is_none() {
                    found = fields::text(c).and_then(|c| cookie(c, name)).map(str::to_string);
                }
            });
            match (found, ttl) {
                (Some(v), _) => (Some(hash64(v.as_bytes())), None),
                (None, Some(ttl)) => {
                    let value = format!("{:016x}", fastrand::u64(..));
                    let mut cookie = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                    if let Some(p) = path {
                        cookie.push_str(&format!("; Path={p}"));
                    }
                    cookie.push_str("; HttpOnly");
                    (Some(hash64(format!("\"{value}\"").as_bytes())), Some(cookie))
                }
                (None, None) => (None, None),
            }
        }
    }
}

/// An HTTP/2 request in the shape the rest of the proxy and an HTTP/1.1 upstream expect: `Host`
/// from `:authority`, an origin-form target. Envoy does the same when it forwards HTTP/2 as
/// HTTP/1.1. The version stays HTTP/2, so the access log shows the protocol the caller used.
fn h1_form<B>(req: &mut Request<B>) {
    if let Some(authority) = req.uri().authority() {
        if !req.headers().contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
        *req.uri_mut() = origin_form(std::mem::take(req.uri_mut()));
    }
}

/// The request target in origin form: the path moves out of `uri`, so its bytes are neither
/// copied nor shared (a share is a reference count taken and dropped).
fn origin_form(uri: Uri) -> Uri {
    Uri::from(uri.into_parts().path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")))
}

/// A route's own answer (a redirect, a direct response), finalized as Envoy's are: the route's
/// response edits, and the CORS filter's marks for an allowed origin.
#[cold]
fn route_reply(
    reply: respond::Reply,
    route: &crate::snapshot::route::HttpRoute,
    cors: Option<(&crate::snapshot::route::Cors, HeaderValue)>,
) -> Served {
    let mut served: Served = reply.into();
    edit_reply(&mut served, &[&route.headers.response]);
    add_cors(&mut served, cors);
    served
}

/// The response to an allowed cross-origin request, as Envoy's CORS filter marks it.
fn add_cors(served: &mut Served, cors: Option<(&crate::snapshot::route::Cors, HeaderValue)>) {
    let Some((policy, origin)) = cors else { return };
    let h = served.resp.fields.map_mut();
    policy.allow(h, origin);
    if let Some(v) = &policy.expose {
        h.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}

/// A local reply of a matched route (a direct response, a redirect, a fault abort, a 504): Envoy's
/// `sendLocalReply` finalizes its headers with the route's edits as it does a response's.
#[cold]
fn edit_reply(served: &mut Served, ops: &[&HeaderOps]) {
    if ops.iter().all(|op| op.is_empty()) {
        return;
    }
    let headers = served.resp.fields.map_mut();
    for op in ops {
        op.apply(headers);
    }
}

/// Shapes an upstream response's headers for the caller: Envoy's headers and the route's edits
/// (which make a head a map: they are written for one). Returns the service time it set, last,
/// for the access log (ms).
fn finish(fields: &mut Fields, server: ServerName, started: Instant, ops: &[&HeaderOps]) -> u32 {
    let own = server != ServerName::Keep;
    let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    let service_time = number(ms.into());
    if matches!(fields, Fields::Head(_)) && ops.iter().all(|op| op.is_empty()) {
        // A head as it came: one pass drops what is stripped and what the proxy writes itself,
        // which then goes after the upstream's fields, where `set` would put it too. (A
        // `Fields` method taking the fields to set costs 170 instructions more a request.)
        let service = X_SERVICE_TIME.as_str().as_bytes();
        fields.remove_if(|name| name == service || (own && name == b"server") || is_hop_by_hop(name));
        if own {
            fields.append(SERVER, server.value());
        }
        fields.append(X_SERVICE_TIME.clone(), service_time);
        return ms;
    }
    strip_hop_by_hop(fields);
    for op in ops {
        op.apply(fields.map_mut());
    }
    if own {
        fields.set(SERVER, server.value());
    }
    fields.set(X_SERVICE_TIME.clone(), service_time);
    ms
}

/// Closes with a TCP reset (RST), as Envoy does to a plaintext client of a STRICT port.
fn reset(stream: TcpStream) {
    // SO_LINGER 0 makes close() send RST at once; it does not block with a zero timeout.
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// An accepted connection, with what serving it watches: the listener's shutdown and, at a
/// pod's inbound port, the pod's mode.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    role: Arc<Role>,
    shutdown: watch::Receiver<bool>,
    changes: Option<watch::Receiver<()>>,
}

/// Runs a connection's path that is not plaintext HTTP (TLS, TCP, hyper's) as a future of its own,
/// boxed: polled in place, it is inlined into the task's poll with every temporary it moves (a
/// TLS stream, hyper's connection; tens of KiB), and every wake-up of a plaintext connection
/// would then probe a stack frame of 64 KiB, a page at a time.
fn apart<'a>(f: impl Future<Output = ()> + Send + 'a) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(f)
}

/// Resolves on the next pod mode change; never when there is no pod control.
async fn mode_changed(rx: &mut Option<watch::Receiver<()>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A condition a connection must keep meeting under new snapshots.
type Recheck = Box<dyn Fn(&crate::snapshot::Snapshot) -> bool + Send + Sync>;

/// Resolves when a new snapshot no longer meets `recheck`; never without one.
async fn disallowed(snapshots: &SnapshotHandle, recheck: Option<Recheck>) {
    let Some(ok) = recheck else { return std::future::pending().await };
    let mut rx = snapshots.subscribe();
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !ok(&snapshots.load()) {
            return;
        }
    }
}

/// Resolves when the pod behind an inbound listener is stopped.
async fn pod_stopped(rx: &mut Option<watch::Receiver<()>>, role: &Role) {
    let Role::Inbound { control, .. } = role else {
        return std::future::pending().await;
    };
    loop {
        if control.mode() == PodMode::Stopped {
            return;
        }
        mode_changed(rx).await;
    }
}

/// Resolves once `rx` turns true (or its sender is gone); holds no guard across awaits.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn strip_hop_by_hop(fields: &mut Fields) {
    fields.remove_if(is_hop_by_hop)
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    Found::class(name) == Found::HOP_BY_HOP
}

/// The names a proxy removes or replaces when a message carries them, found by one pass over
/// its names matching their spelling (no hashing). Most messages carry none, and the removals
/// run only for those that do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found(u8);

impl Found {
    /// [`HOP_BY_HOP`].
    const HOP_BY_HOP: u8 = 1;
    /// The `x-envoy-*` headers a client may send to steer the proxy (removed where they are read).
    const OVERRIDES: u8 = 2;
    /// A caller's trace context ([`PROPAGATED`](crate::telemetry::trace::PROPAGATED)).
    const TRACE: u8 = 4;
    const FORWARDED_PROTO: u8 = 8;
    const PEER_ID: u8 = 16;
    const CLIENT_CERT: u8 = 32;
    /// `x-request-id`: read, never removed.
    const REQUEST_ID: u8 = 64;
    /// `content-length` and `transfer-encoding`, which the proxy sets for the body it forwards.
    const FRAMING: u8 = 128;
    /// The classes `remove` removes (the others are read, or replaced where they are read).
    const REMOVABLE: u8 =
        Found::HOP_BY_HOP | Found::TRACE | Found::FORWARDED_PROTO | Found::PEER_ID | Found::CLIENT_CERT;

    /// The class of a name in lower case.
    fn class(name: &[u8]) -> u8 {
        match name {
            b"connection"
            | b"proxy-connection"
            | b"keep-alive"
            | b"te"
            | b"trailer"
            | b"upgrade"
            | b"proxy-authorization" => Found::HOP_BY_HOP,
            b"x-envoy-upstream-rq-timeout-ms"
            | b"x-envoy-retry-on"
            | b"x-envoy-max-retries"
            | b"x-envoy-attempt-count" => Found::OVERRIDES,
            b"x-b3-traceid" | b"x-b3-spanid" | b"x-b3-parentspanid" | b"x-b3-sampled" | b"traceparent" => Found::TRACE,
            b"x-forwarded-proto" => Found::FORWARDED_PROTO,
            b"x-envoy-peer-metadata-id" => Found::PEER_ID,
            b"x-forwarded-client-cert" => Found::CLIENT_CERT,
            b"x-request-id" => Found::REQUEST_ID,
            b"content-length" | b"transfer-encoding" => Found::FRAMING,
            _ => 0,
        }
    }

    fn scan(fields: &Fields) -> Found {
        let mut found = 0;
        fields.for_each(|name, _| found |= Found::class(name));
        Found(found)
    }

    /// The caller's trace context goes when the proxy sends a span of its own.
    fn trace(span: Option<&SpanContext>) -> u8 {
        if span.is_some() {
            Found::TRACE
        } else {
            0
        }
    }

    fn has(self, classes: u8) -> bool {
        self.0 & classes != 0
    }

    /// Removes every name of `classes` that the scan found a class member of (of the `REMOVABLE`),
    /// by the same classes the scan used: one pass over a head, a hashed removal each from a map.
    fn remove(&mut self, fields: &mut Fields, classes: u8) {
        let gone = self.0 & classes & Found::REMOVABLE;
        if gone == 0 {
            return;
        }
        self.0 &= !gone;
        fields.remove_if(|name| Found::class(name) & gone != 0);
    }
}

/// A random UUID v4, as Envoy generates for `x-request-id`.
fn request_id() -> HeaderValue {
    let a = fastrand::u128(..);
    let v = (a & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let mut h = [0u8; 32];
    crate::telemetry::trace::hex(&mut h, v);
    let mut id = [b'-'; 36];
    for (range, at) in [(0..8, 0), (8..12, 9), (12..16, 14), (16..20, 19), (20..32, 24)] {
        id[at..at + range.len()].copy_from_slice(&h[range]);
    }
    // Owned by one allocation, so the copies the access log keeps share it.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id)).expect("hex digits and dashes are a valid header value")
}

/// A count or a duration in milliseconds as a header value: the small ones (attempt counts,
/// service times on loopback) without an allocation.
fn number(n: u64) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match DIGITS.get(n as usize) {
        Some(d) => HeaderValue::from_static(d),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plaintext connection's task carries the TLS, TCP and hyper paths boxed ([`apart`]):
    /// inline, the largest of them (an mTLS handshake, then hyper) made every connection's task
    /// two and a half times the size its HTTP/1.1 needs, and the frame of each of its polls 64 KiB.
    #[tokio::test]
    async fn a_connections_task_is_the_size_of_its_plaintext_http() {
        let proxy = Proxy::new(SnapshotHandle::default(), Arc::new(Registry::new(None)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = (TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap());
        let role = Arc::new(Role::MeshClient { cache: Default::default() });
        let (_tx, shutdown) = watch::channel(false);
        let info = Arc::new(ConnInfo::of(&b, addr));
        let accepted =
            Accepted { stream: a, peer: addr, role: role.clone(), shutdown: shutdown.clone(), changes: None };
        let connection = proxy.clone().connection(accepted);
        let http = proxy.serve_io(b, info, role, shutdown, None, None);
        let (connection, http) = (std::mem::size_of_val(&connection), std::mem::size_of_val(&http));
        // Around its HTTP a connection keeps a few hundred bytes of its own (the role, the
        // accepted stream while it peeks); an mTLS path inline would be 8 KiB more.
        assert!(connection <= http + 1024, "a connection's task takes {connection} bytes, its HTTP {http}");
    }

    #[test]
    fn request_id_is_uuid_v4() {
        let id = request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!([8, 13, 18, 23].iter().all(|&i| &id[i..i + 1] == "-"), "{id}");
        assert!(id.chars().filter(|c| *c != '-').all(|c| c.is_ascii_hexdigit()), "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn every_hop_by_hop_header_is_stripped_and_nothing_else() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static("a"));
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("id"));
            let mut map = Fields::Map(h);
            strip_hop_by_hop(&mut map);
            // The same fields as an upstream's head, its names capitalised.
            let capital = |n: &str| n.split('-').map(|p| p[..1].to_uppercase() + &p[1..]).collect::<Vec<_>>().join("-");
            let text =
                format!("HTTP/1.1 200 OK\r\nHost: a\r\n{}: x\r\nX-Request-Id: id\r\n\r\n", capital(name.as_str()));
            let mut head = Fields::from_text(&text);
            strip_hop_by_hop(&mut head);
            for f in [map, head] {
                assert!(f.get(name).is_none(), "{name}");
                assert!(f.get(&HOST).is_some() && f.get(&X_REQUEST_ID).is_some(), "{name}");
                let mut count = 0;
                f.for_each(|_, _| count += 1);
                assert_eq!(count, 2, "{name}");
            }
        }
    }

    #[test]
    fn finish_shapes_a_head_as_it_shapes_a_map() {
        let text = "HTTP/1.1 200 OK\r\nServer: upstream\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n\
                    X-Envoy-Upstream-Service-Time: 99\r\nContent-Length: 2\r\n\r\n";
        let fields = |f: &Fields| {
            let mut all = Vec::new();
            f.for_each(|n, v| all.push(format!("{}: {}", String::from_utf8_lossy(n), String::from_utf8_lossy(v))));
            all
        };
        for server in [ServerName::IstioEnvoy, ServerName::Envoy, ServerName::Keep] {
            let mut head = Fields::from_text(text);
            let mut map = Fields::from_text(text);
            map.map_mut();
            let started = Instant::now();
            // What `finish` hands the access log is what the response carries.
            for shaped in [&mut head, &mut map] {
                let ms = finish(shaped, server, started, &[]);
                assert_eq!(shaped.value(&X_SERVICE_TIME), Some(number(ms.into())), "{server:?}");
            }
            assert!(matches!(head, Fields::Head(_)), "a head stays a head");
            let (head, map) = (fields(&head), fields(&map));
            let server_line = match server {
                ServerName::Keep => "server: upstream".to_string(),
                s => format!("server: {}", s.value().to_str().unwrap()),
            };
            assert!(head.contains(&server_line) && head.contains(&"x-envoy-upstream-service-time: 0".to_string()));
            assert!(!head.iter().any(|f| f.starts_with("connection")), "{head:?}");
            assert_eq!(head.len(), map.len(), "{head:?} {map:?}");
            // The same fields; the proxy's own go last on a head, where a map keeps their slot.
            let sorted = |mut v: Vec<String>| {
                v.sort();
                v
            };
            assert_eq!(sorted(head.clone()), sorted(map), "{server:?}");
            assert_eq!(head.last().unwrap(), "x-envoy-upstream-service-time: 0");
        }
    }

    #[test]
    fn names_are_found_by_their_class_and_removed_by_it() {
        let classes: [(&[&HeaderName], u8); 8] = [
            (&HOP_BY_HOP.each_ref(), Found::HOP_BY_HOP),
            (&[&X_RQ_TIMEOUT, &X_RETRY_ON, &X_MAX_RETRIES, &X_ATTEMPT_COUNT], Found::OVERRIDES),
            (&crate::telemetry::trace::PROPAGATED, Found::TRACE),
            (&[&X_FORWARDED_PROTO], Found::FORWARDED_PROTO),
            (&[&PEER_ID], Found::PEER_ID),
            (&[&X_FCC], Found::CLIENT_CERT),
            (&[&X_REQUEST_ID], Found::REQUEST_ID),
            (&[&CONTENT_LENGTH, &http::header::TRANSFER_ENCODING], Found::FRAMING),
        ];
        let count = |f: &Fields| {
            let mut n = 0;
            f.for_each(|_, _| n += 1);
            n
        };
        for (names, class) in classes {
            for &name in names {
                let mut h = HeaderMap::new();
                h.insert(HOST, HeaderValue::from_static("a"));
                h.insert(X_SERVICE_TIME.clone(), HeaderValue::from_static("1"));
                assert_eq!(Found::scan(&Fields::Map(h.clone())), Found(0), "another x-envoy header is of no class");
                // A value the head parser takes for any of the names.
                let value = if *name == http::header::TRANSFER_ENCODING { "chunked" } else { "1" };
                h.insert(name.clone(), HeaderValue::from_static(value));
                // The same fields as a parsed head, removed in its one pass.
                let text = format!(
                    "HTTP/1.1 200 OK\r\nHost: a\r\nX-Envoy-Upstream-Service-Time: 1\r\n{name}: {value}\r\n\r\n"
                );
                for mut fields in [Fields::Map(h.clone()), Fields::from_text(&text)] {
                    let mut found = Found::scan(&fields);
                    assert_eq!(found, Found(class), "{name}");
                    found.remove(&mut fields, !Found::OVERRIDES);
                    let kept = class & Found::REMOVABLE == 0;
                    let left = if kept { 3 } else { 2 };
                    assert_eq!(count(&fields), left, "{name}");
                    assert_eq!(fields.get(name).is_some(), kept, "{name}");
                    assert!(fields.get(&HOST).is_some() && fields.get(&X_SERVICE_TIME).is_some(), "{name}");
                }
            }
        }
    }

    #[test]
    fn numbers_are_header_values_small_or_not() {
        for n in [0, 1, 9, 10, 250, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn shadow_host_goes_before_the_port() {
        assert_eq!(shadow_authority("httpbin:8000"), "httpbin-shadow:8000");
        assert_eq!(shadow_authority("httpbin.default.svc.cluster.local"), "httpbin.default.svc.cluster.local-shadow");
    }

    #[test]
    fn cookie_hash_is_issued_once_and_then_followed() {
        let key = HashKey::Cookie { name: "user".into(), path: Some("/".into()), ttl: Some(Duration::from_secs(60)) };
        let lb = LbPolicy::Hash { key, table: Arc::new(crate::snapshot::policy::HashTable::Ring(vec![])) };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let none = Fields::default();
        let (h1, set) = request_hash(&lb, &none, None, peer);
        let set = set.expect("a cookie is issued when absent and ttl is set");
        assert!(set.starts_with("user=\"") && set.contains("Max-Age=60; Path=/"), "{set}");
        let value = set.split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("x=y"));
        h.append(COOKIE, HeaderValue::from_str(&format!("a=b; {value}")).unwrap());
        let text = format!("HTTP/1.1 200 OK\r\nCookie: x=y\r\nCookie: a=b; {value}\r\n\r\n");
        for fields in [Fields::Map(h), Fields::from_text(&text)] {
            let (h2, again) = request_hash(&lb, &fields, None, peer);
            assert_eq!(h1, h2, "the issued cookie, in the second Cookie field, hashes like the first request");
            assert!(again.is_none());
        }
        let no_ttl = LbPolicy::Hash {
            key: HashKey::Cookie { name: "user".into(), path: None, ttl: None },
            table: Arc::new(crate::snapshot::policy::HashTable::Ring(vec![])),
        };
        assert_eq!(request_hash(&no_ttl, &none, None, peer), (None, None));
        let q = LbPolicy::Hash {
            key: HashKey::QueryParam("u".into()),
            table: Arc::new(crate::snapshot::policy::HashTable::Ring(vec![])),
        };
        assert_eq!(request_hash(&q, &none, Some("x=1&u=7"), peer).0, Some(hash64(b"7")));
    }

    #[test]
    fn a_header_hash_takes_the_value_as_bytes_text_or_not() {
        let lb = LbPolicy::Hash {
            key: HashKey::Header("X-User".into()),
            table: Arc::new(crate::snapshot::policy::HashTable::Ring(vec![])),
        };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_bytes("José".as_bytes()).unwrap());
        let head = Fields::from_text("HTTP/1.1 200 OK\r\nX-User: José\r\n\r\n");
        for fields in [Fields::Map(h), head] {
            assert_eq!(request_hash(&lb, &fields, None, peer), (Some(hash64("José".as_bytes())), None));
        }
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let base = Duration::from_millis(25);
        for n in 1..8 {
            for _ in 0..50 {
                let b = backoff(base, n);
                assert!(b <= base * ((1 << n) - 1).min(10), "{n}: {b:?}");
            }
        }
    }
}
