//! The data plane: the ingress gateway, and each pod's inbound and outbound
//! sidecar listeners. A request is decided first (a pure function of the
//! snapshot), then its bytes move.

pub mod respond;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, SERVER};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::snapshot::matcher::{split_authority, RequestView, SourceView};
use crate::snapshot::route::{Decision, HeaderOps};
use crate::snapshot::{ActiveGuard, LocalReply, SnapshotHandle, Workload};

/// Errors a body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every listener speaks.
pub type Body = BoxBody<Bytes, BoxError>;

/// The `server` header a listener writes, as Istio configures Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerName {
    /// Gateways and inbound listeners: `istio-envoy`.
    IstioEnvoy,
    /// Outbound sidecar listeners keep Envoy's default: `envoy`.
    Envoy,
}

impl ServerName {
    /// The header value.
    pub fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            ServerName::IstioEnvoy => "istio-envoy",
            ServerName::Envoy => "envoy",
        })
    }
}

/// What a listener does with requests.
#[derive(Debug, Clone)]
pub enum Role {
    /// The ingress gateway's HTTP listener.
    Gateway {
        /// The gateway workload (labels match `selector: istio: ingressgateway`).
        workload: Arc<Workload>,
    },
    /// A pod's outbound sidecar listener: the pod's apps use it as their HTTP proxy.
    Outbound {
        /// The calling workload; `None` means the snapshot's mesh client (port 15001).
        workload: Option<Arc<Workload>>,
    },
    /// A pod's inbound sidecar listener, in front of one container port.
    Inbound {
        /// The app's real address.
        app: SocketAddr,
    },
}

/// State shared by every listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    snapshot: SnapshotHandle,
    client: Client<HttpConnector, Body>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

impl Proxy {
    /// A proxy reading routes from `snapshot`.
    pub fn new(snapshot: SnapshotHandle) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Proxy { snapshot, client }
    }

    /// Serves `listener` in `role` until `shutdown` turns true; open connections then finish their requests.
    pub async fn serve(self, listener: TcpListener, role: Role, mut shutdown: watch::Receiver<bool>) {
        let role = Arc::new(role);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped(&mut shutdown) => return,
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
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let proxy = proxy.clone();
                    let role = role.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(&role, peer, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    }
                    _ = stopped(&mut shutdown) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }

    async fn handle(&self, role: &Role, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        match role {
            Role::Inbound { app } => self.inbound(*app, req).await,
            Role::Gateway { workload } => self.route(workload, None, peer, req).await,
            Role::Outbound { workload: Some(w) } => self.route(w, Some("mesh"), peer, req).await,
            Role::Outbound { workload: None } => {
                let snapshot = self.snapshot.load();
                match &snapshot.mesh_client {
                    Some(w) => self.route(w, Some("mesh"), peer, req).await,
                    None => respond::local_reply(LocalReply::NoRoute, ServerName::Envoy),
                }
            }
        }
    }

    /// Inbound: hand the request to the local app.
    async fn inbound(&self, app: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let Ok(uri) = Uri::try_from(format!("http://{app}{path}")) else {
            return respond::local_reply(LocalReply::BadRequest, ServerName::IstioEnvoy);
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        let upstream = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
        self.send(upstream, ServerName::IstioEnvoy, None).await
    }

    /// Gateway and outbound: route by the snapshot, then forward to the chosen endpoint.
    async fn route(
        &self,
        workload: &Workload,
        mesh: Option<&str>,
        _peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let server = if mesh.is_some() {
            ServerName::Envoy
        } else {
            ServerName::IstioEnvoy
        };
        let snapshot = self.snapshot.load();
        let (mut parts, body) = req.into_parts();
        let authority = match parts.uri.authority() {
            Some(a) => a.as_str().to_string(),
            None => match parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
                Some(h) => h.to_string(),
                None => return respond::local_reply(LocalReply::NoRoute, server),
            },
        };
        let (host, port) = split_authority(&authority);
        let host = host.to_ascii_lowercase();
        let port = port.unwrap_or(80);
        let vhost = match mesh {
            Some(_) => snapshot.mesh.get(&workload.namespace).and_then(|t| t.lookup(&host)),
            None => snapshot.ingress.lookup(&host),
        };
        let Some(vhost) = vhost else {
            return respond::local_reply(LocalReply::NoRoute, server);
        };
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().map(str::to_string);
        let view = RequestView {
            method: &parts.method,
            path: &path,
            query: query.as_deref(),
            scheme: "http",
            authority: &authority,
            port,
            headers: &parts.headers,
        };
        let src = SourceView {
            labels: &workload.labels,
            namespace: &workload.namespace,
            gateway: mesh.unwrap_or(""),
        };
        let (matched, target, cluster) = match crate::snapshot::route::decide(&vhost.routes, &view, &src) {
            Decision::Forward {
                matched,
                target,
                cluster,
            } => (matched, target, cluster),
            Decision::Redirect { code, location, .. } => return respond::redirect(code, &location, server),
            Decision::Direct { status, body, .. } => return respond::direct(status, body, server),
            Decision::Reply(r) => return respond::local_reply(r, server),
        };
        let Some(endpoint) = cluster.pick() else {
            return respond::local_reply(LocalReply::NoHealthyUpstream, server);
        };
        let route = matched.route;
        let new_path = route
            .rewrite
            .as_ref()
            .and_then(|rw| rw.path(&path, query.as_deref(), matched.prefix));
        let path_and_query = new_path
            .as_deref()
            .unwrap_or_else(|| parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let Ok(uri) = Uri::try_from(format!("http://{}{}", endpoint.addr, path_and_query)) else {
            return respond::local_reply(LocalReply::BadRequest, server);
        };
        let new_authority = route.rewrite.as_ref().and_then(|rw| rw.authority.as_deref());
        let host_value = HeaderValue::from_str(new_authority.unwrap_or(&authority));
        parts.uri = uri;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        if let Ok(v) = host_value {
            headers.insert(HOST, v);
        }
        if !headers.contains_key(&X_REQUEST_ID) {
            if let Ok(v) = HeaderValue::from_str(&request_id()) {
                headers.insert(X_REQUEST_ID.clone(), v);
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        headers.insert(X_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
        route.headers.request.apply(headers);
        target.headers.request.apply(headers);
        let _active = ActiveGuard::new(&endpoint.state);
        let upstream = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
        let response_ops = [&route.headers.response, &target.headers.response];
        self.send(upstream, server, Some(&response_ops)).await
    }

    /// Sends to the upstream and shapes the response (or the error) for the caller.
    async fn send(
        &self,
        upstream: Request<Body>,
        server: ServerName,
        response_ops: Option<&[&HeaderOps; 2]>,
    ) -> Response<Body> {
        let started = Instant::now();
        match self.client.request(upstream).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if let Some(ops) = response_ops {
                    for op in ops {
                        op.apply(&mut parts.headers);
                    }
                }
                parts.headers.insert(SERVER, server.value());
                parts.headers.insert(
                    X_SERVICE_TIME.clone(),
                    HeaderValue::from(started.elapsed().as_millis() as u64),
                );
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(e) => {
                let reply = if e.is_connect() {
                    LocalReply::ConnectFailure
                } else {
                    LocalReply::UpstreamReset
                };
                tracing::debug!(error = %e, flag = reply.flag(), "upstream request failed");
                respond::local_reply(reply, server)
            }
        }
    }
}

/// Resolves once `rx` turns true (or its sender is gone); holds no guard across awaits.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A random UUID v4, as Envoy generates for `x-request-id`.
fn request_id() -> String {
    let a = fastrand::u128(..);
    let b = (a & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_id_is_uuid_v4() {
        let id = super::request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}
