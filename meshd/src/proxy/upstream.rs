//! Upstream connections with Envoy's circuit-breaker semantics: a pool per
//! endpoint, `maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests`
//! and `maxRequestsPerConnection` counted per cluster, connections returned
//! to the pool when the response body ends.
//!
//! An HTTP/1.1 connection has no task of its own: whoever holds it (the request, then the
//! response body) drives it, so a request costs no hand-off to another task and back. It speaks
//! the proxy's own HTTP/1.1 client ([`super::h1`]).
//!
//! With `h2UpgradePolicy: UPGRADE` every request to an endpoint shares one HTTP/2 connection, as
//! Envoy's HTTP/2 pool does; that connection's I/O runs on a task of its own, since many requests
//! use it at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::answer::Answer;
use super::fields::Fields;
use super::h1::{self, Framing};
use super::runtime::{ClusterShared, EndpointCx, EndpointRt, IdleConn};
use super::{Body, BoxError};
use crate::snapshot::policy::PoolSettings;

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A circuit breaker refused it (503 UO).
    #[error("overflow")]
    Overflow,
    /// Connecting failed or timed out (503 UF).
    #[error("connect failure: {0}")]
    Connect(String),
    /// The TCP connection opened but the TLS handshake failed (503 UF, with the TLS reason).
    #[error("TLS error: {0}")]
    Tls(TlsFailure),
    /// The connection broke before the response headers (503 UC).
    #[error("connection termination: {0}")]
    Reset(String),
}

/// Why an upstream TLS handshake failed, in the terms BoringSSL gives Envoy's transport failure
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The peer answered in something other than TLS: a server without a sidecar, spoken to
    /// with mTLS (`WRONG_VERSION_NUMBER`).
    #[error("wrong version number")]
    WrongVersion,
    /// The peer's certificate, or its identity, was refused (`CERTIFICATE_VERIFY_FAILED`).
    #[error("certificate verify failed")]
    VerifyFailed,
    /// Anything else (the peer closed or reset during the handshake, ...).
    #[error("handshake failed")]
    Other,
}

impl TlsFailure {
    fn of(e: &std::io::Error) -> TlsFailure {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidMessage(_)) => TlsFailure::WrongVersion,
            Some(rustls::Error::InvalidCertificate(_)) => TlsFailure::VerifyFailed,
            _ => TlsFailure::Other,
        }
    }
}

/// Gives back a connection slot when the connection's task ends.
struct CxSlot(Arc<EndpointCx>);

impl Drop for CxSlot {
    fn drop(&mut self) {
        release_slot(&self.0);
        wake_pending(&self.0.shared);
    }
}

/// Wakes the cluster's pending requests after a connection came back or closed, each to look
/// again for what it waits for: one woken alone may be waiting on another endpoint than the one
/// the connection is to. Without pending requests it is a fence and a load, where a wake-up
/// would be a compare-and-swap or a lock.
fn wake_pending(shared: &ClusterShared) {
    // Paired with the fence in `queued`: a request that joined the queue before this fence is
    // counted here, and one that joins after it sees what was given back before it.
    fence(Ordering::SeqCst);
    if shared.rq_pending_active.load(Ordering::Relaxed) != 0 {
        shared.notify.notify_waiters();
    }
}

/// Releases a pending-queue slot on drop.
struct PendingSlot<'a>(&'a ClusterShared);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.rq_pending_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection future hyper gives with an HTTP/2 sender, boxed so TLS and plaintext links share a type.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// One pooled HTTP/1.1 connection.
pub struct Link {
    conn: h1::Connection,
    /// Holds the `maxConnections` slot until the link is dropped.
    _slot: CxSlot,
}

impl Link {
    /// Whether it can take another request. Reads what the peer sent while it sat idle, so a
    /// connection the server closed is seen as closed; nothing is woken later.
    pub fn is_open(&mut self) -> bool {
        self.conn.is_open()
    }
}

/// A connection checked out for one request.
pub struct Conn {
    link: Link,
    uses: u32,
    /// Its endpoint, whose pool it goes back to (the endpoint's `cx` reaches the cluster).
    ep: Arc<EndpointRt>,
    max_uses: u32,
}

/// Puts a request in the cluster's pending queue until the returned slot drops; a full queue
/// (`http1MaxPendingRequests`) is an overflow.
fn pending<'a>(shared: &'a ClusterShared, pool: &PoolSettings) -> Result<PendingSlot<'a>, UpstreamError> {
    let queued = shared.rq_pending_active.fetch_add(1, Ordering::AcqRel);
    let slot = PendingSlot(shared);
    if queued >= u64::from(pool.max_pending) {
        shared.stats.upstream_rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
        return Err(UpstreamError::Overflow);
    }
    shared.stats.upstream_rq_pending_total.fetch_add(1, Ordering::Relaxed);
    Ok(slot)
}

/// Takes a connection slot for `ep` if `max` allows, or one past it when `ep` has no
/// connection at all: Envoy's pool opens one for a host with none, since the requests queued for
/// it could otherwise wait forever on slots other hosts' idle connections hold. A request that
/// finds the limit reached counts once in `upstream_cx_overflow` (`overflowed` remembers it).
fn try_slot(ep: &EndpointRt, max: u32, overflowed: &mut bool) -> bool {
    let shared = &ep.cx.shared;
    let within = shared
        .cx_active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < u64::from(max)).then_some(n + 1))
        .is_ok();
    if within {
        ep.cx.count.fetch_add(1, Ordering::AcqRel);
        return true;
    }
    if !std::mem::replace(overflowed, true) {
        shared.stats.upstream_cx_overflow.fetch_add(1, Ordering::Relaxed);
    }
    if ep.cx.count.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return false;
    }
    shared.cx_active.fetch_add(1, Ordering::AcqRel);
    true
}

/// Gives back a slot `try_slot` took.
fn release_slot(cx: &EndpointCx) {
    cx.count.fetch_sub(1, Ordering::AcqRel);
    cx.shared.cx_active.fetch_sub(1, Ordering::AcqRel);
}

/// SNI sent to mesh peers; the verifier checks the SPIFFE identity, not this name.
const MESH_SNI: &str = "outbound.mesh.local";

async fn connect(
    ep: &Arc<EndpointRt>,
    shared: &Arc<ClusterShared>,
    pool: &PoolSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Conn, UpstreamError> {
    let slot = CxSlot(ep.cx.clone());
    let io = match open(ep, shared, tls, pool.connect_timeout).await? {
        Dialed::Tls(tls_stream) => h1::Io::Tls(tls_stream),
        Dialed::Plain(stream) => h1::Io::Plain(stream),
    };
    let link = Link { conn: h1::Connection::new(io), _slot: slot };
    Ok(Conn { link, uses: 0, ep: ep.clone(), max_uses: pool.max_requests_per_connection })
}

/// Dials a new pool connection to `ep`, counted in `upstream_cx_total` (and in
/// `upstream_cx_connect_fail` when it fails).
async fn open(
    ep: &EndpointRt,
    shared: &ClusterShared,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: std::time::Duration,
) -> Result<Dialed, UpstreamError> {
    shared.stats.upstream_cx_total.fetch_add(1, Ordering::Relaxed);
    let dialed = dial(ep, tls, timeout).await;
    if dialed.is_err() {
        shared.stats.upstream_cx_connect_fail.fetch_add(1, Ordering::Relaxed);
    }
    dialed
}

/// A connection to an endpoint: mTLS when the endpoint takes it, else plaintext.
pub enum Dialed {
    /// Plaintext.
    Plain(TcpStream),
    /// mTLS, the peer's SPIFFE identity checked.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `ep` within `timeout`, with mTLS (and the expected identity) when the endpoint asks
/// for it. As Envoy's `connect_timeout`, the deadline covers the TLS handshake too: a peer that
/// accepts and then says nothing fails as a connect timeout, not at the route's timeout.
pub async fn dial(
    ep: &EndpointRt,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: std::time::Duration,
) -> Result<Dialed, UpstreamError> {
    match tokio::time::timeout(timeout, handshake(ep, tls)).await {
        Ok(dialed) => dialed,
        Err(_) => Err(UpstreamError::Connect("connection timeout".into())),
    }
}

async fn handshake(ep: &EndpointRt, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Dialed, UpstreamError> {
    let stream = TcpStream::connect(ep.addr).await.map_err(|e| {
        UpstreamError::Connect(e.raw_os_error().map(|c| c.to_string()).unwrap_or_else(|| e.to_string()))
    })?;
    let _ = stream.set_nodelay(true);
    if let Some(origin) = &ep.origin {
        let tls_stream = tokio_rustls::TlsConnector::from(origin.config.clone())
            .connect(origin.sni.clone(), stream)
            .await
            .map_err(|e| UpstreamError::Tls(TlsFailure::of(&e)))?;
        return Ok(Dialed::Tls(Box::new(tls_stream)));
    }
    let (Some(expected), Some(cfg)) = (&ep.mtls, tls) else { return Ok(Dialed::Plain(stream)) };
    let name = rustls_pki_types::ServerName::try_from(MESH_SNI).map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let tls_stream = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, stream)
        .await
        .map_err(|e| UpstreamError::Tls(TlsFailure::of(&e)))?;
    let peer = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::security::tls::spiffe_of(c));
    if peer.as_deref() != Some(expected.as_str()) {
        tracing::debug!(peer = peer.as_deref().unwrap_or("(none)"), %expected, "upstream peer identity refused");
        return Err(UpstreamError::Tls(TlsFailure::VerifyFailed));
    }
    Ok(Dialed::Tls(Box::new(tls_stream)))
}

/// Gets a connection to `ep`: an idle one, a new one within `maxConnections`,
/// or a wait in the pending queue; a full queue is an overflow.
pub async fn acquire(
    shared: &Arc<ClusterShared>,
    ep: &Arc<EndpointRt>,
    pool: &PoolSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Checkout, bool), UpstreamError> {
    // The pool nearly always has a connection ready. Opening one or waiting for one (a TLS
    // handshake, the pending queue) is boxed, so its large state is made only then rather than
    // carried in every request's future.
    if pool.h2_upgrade {
        if let Some(got) = h2_stream(shared, ep, pool) {
            return Ok(got);
        }
        return Box::pin(acquire_h2(shared, ep, pool, tls)).await;
    }
    if let Some(conn) = idle(ep, pool) {
        return Ok((Checkout::H1(conn), true));
    }
    Box::pin(acquire_h1(shared, ep, pool, tls)).await.map(|(c, reused)| (Checkout::H1(c), reused))
}

/// A pooled connection that is still open and not idle past `idleTimeout`, reused.
fn idle(ep: &Arc<EndpointRt>, pool: &PoolSettings) -> Option<Conn> {
    let c = ep.take_idle(pool.idle_timeout)?;
    Some(Conn { link: c.link, uses: c.uses, ep: ep.clone(), max_uses: pool.max_requests_per_connection })
}

async fn acquire_h1(
    shared: &Arc<ClusterShared>,
    ep: &Arc<EndpointRt>,
    pool: &PoolSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Conn, bool), UpstreamError> {
    let mut overflowed = false;
    queued(
        shared,
        pool,
        || idle(ep, pool).map(|c| (c, true)),
        || {
            try_slot(ep, pool.max_connections, &mut overflowed)
                .then_some(async { Ok((connect(ep, shared, pool, tls).await?, false)) })
        },
    )
    .await
}

/// Waits in the pending queue (`http1MaxPendingRequests`) for what `ready` offers, trying it
/// and then `start` (which may open a connection) each time the cluster's pool changes. The
/// caller has found `ready` offering nothing.
async fn queued<T, F>(
    shared: &ClusterShared,
    pool: &PoolSettings,
    mut ready: impl FnMut() -> Option<T>,
    mut start: impl FnMut() -> Option<F>,
) -> Result<T, UpstreamError>
where
    F: Future<Output = Result<T, UpstreamError>>,
{
    let _pending = pending(shared, pool)?;
    // Paired with the fence in `wake_pending`.
    fence(Ordering::SeqCst);
    loop {
        // Registered before looking, so a wake between the look and the wait is not lost.
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(got) = ready() {
            return Ok(got);
        }
        if let Some(connecting) = start() {
            let got = connecting.await;
            if matches!(got, Err(UpstreamError::Connect(_) | UpstreamError::Tls(_))) {
                shared.stats.upstream_rq_pending_failure_eject.fetch_add(1, Ordering::Relaxed);
            }
            return got;
        }
        notified.await;
    }
}

/// What a request got from the pool: an HTTP/1.1 connection of its own, or a stream on the
/// endpoint's shared HTTP/2 connection.
pub enum Checkout {
    /// HTTP/1.1, returned to the pool when the response body ends.
    H1(Conn),
    /// HTTP/2 (`h2UpgradePolicy: UPGRADE`).
    H2(Arc<H2Link>, Arc<EndpointRt>),
}

impl Checkout {
    /// Sends a whole request and waits for the response head.
    pub async fn send(self, req: Request<Body>) -> Result<Answer, UpstreamError> {
        match self {
            Checkout::H1(conn) => {
                let (parts, body) = super::downstream::Call::from(req).into_parts();
                conn.send(h1::Head::of(&parts, h1::Added::default()), body).await
            }
            Checkout::H2(link, ep) => link.send(req, &ep).await,
        }
    }

    /// Sends a request from a borrowed head (an attempt of a request kept for retries) and
    /// waits for the response head.
    pub async fn send_head(self, head: h1::Head<'_>, body: Body) -> Result<Answer, UpstreamError> {
        match self {
            Checkout::H1(conn) => conn.send(head, body).await,
            // hyper's HTTP/2 client takes the request by value.
            Checkout::H2(link, ep) => link.send(head.to_request(body), &ep).await,
        }
    }
}

/// One multiplexed HTTP/2 connection to an endpoint, shared by every request to it.
pub struct H2Link {
    sender: http2::SendRequest<Body>,
    /// Streams opened on it, for `maxRequestsPerConnection`.
    streams: AtomicU32,
    /// When a stream last opened, on the cluster's clock (ms), for `idleTimeout`.
    last_ms: AtomicU64,
}

impl std::fmt::Debug for H2Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Link").field("streams", &self.streams.load(Ordering::Relaxed)).finish()
    }
}

impl H2Link {
    /// Counts one more stream if the connection is up, has not sat idle past `idleTimeout`, and
    /// has room under `maxRequestsPerConnection`.
    fn open_stream(&self, now_ms: u64, pool: &PoolSettings) -> bool {
        if self.sender.is_closed()
            || now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)) >= pool.idle_timeout.as_millis() as u64
        {
            return false;
        }
        let max = pool.max_requests_per_connection;
        let opened =
            self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1));
        if opened.is_ok() {
            self.last_ms.store(now_ms, Ordering::Relaxed);
        }
        opened.is_ok()
    }

    /// Sends `req` as HTTP/2: the authority and scheme go in pseudo-headers, not `Host`.
    async fn send(&self, mut req: Request<Body>, ep: &EndpointRt) -> Result<Answer, UpstreamError> {
        let host = req.headers_mut().remove(http::header::HOST);
        let authority = host
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .or_else(|| Authority::try_from(ep.addr.to_string()).ok());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = authority;
        parts.path_and_query.get_or_insert(PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Reset(e.to_string()))?;
        *req.version_mut() = Version::HTTP_2;
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| UpstreamError::Reset(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.to_string()))?;
        Ok(resp.map(|b| Body::new(b.map_err(BoxError::from))).into())
    }
}

/// Clears the endpoint's "connecting" mark and wakes the requests waiting for the connection.
struct Connecting<'a>(&'a EndpointRt, &'a ClusterShared);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.h2_connecting.store(false, Ordering::Release);
        self.1.notify.notify_waiters();
    }
}

/// A stream on the endpoint's HTTP/2 connection. While none is open, one request connects (within
/// `maxConnections`) and the others wait for it in the pending queue, as Envoy's HTTP/2 pool does.
async fn acquire_h2(
    shared: &Arc<ClusterShared>,
    ep: &Arc<EndpointRt>,
    pool: &PoolSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Checkout, bool), UpstreamError> {
    let mut overflowed = false;
    let start = || {
        if ep.h2_connecting.load(Ordering::Acquire) || !try_slot(ep, pool.max_connections, &mut overflowed) {
            return None;
        }
        if ep.h2_connecting.swap(true, Ordering::AcqRel) {
            // Another request started connecting first: give the slot back and wait for it.
            release_slot(&ep.cx);
            return None;
        }
        let connecting = Connecting(ep, shared);
        Some(async move {
            let _connecting = connecting;
            let link = connect_h2(ep, shared, tls, pool.connect_timeout).await?;
            link.open_stream(shared.now_ms(), pool);
            ep.h2.store(Some(link.clone()));
            Ok((Checkout::H2(link, ep.clone()), false))
        })
    };
    queued(shared, pool, || h2_stream(shared, ep, pool), start).await
}

/// A stream on the endpoint's HTTP/2 connection, counted on it, when the connection can take one.
fn h2_stream(shared: &ClusterShared, ep: &Arc<EndpointRt>, pool: &PoolSettings) -> Option<(Checkout, bool)> {
    let link = ep.h2.load_full().filter(|l| l.open_stream(shared.now_ms(), pool))?;
    Some((Checkout::H2(link, ep.clone()), true))
}

/// Opens an HTTP/2 connection; its task holds the `maxConnections` slot (already taken) until
/// the connection ends.
async fn connect_h2(
    ep: &EndpointRt,
    shared: &Arc<ClusterShared>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: std::time::Duration,
) -> Result<Arc<H2Link>, UpstreamError> {
    let slot = CxSlot(ep.cx.clone());
    let (sender, driver) = match open(ep, shared, tls, timeout).await? {
        Dialed::Tls(tls_stream) => http2_handshake(tls_stream).await?,
        Dialed::Plain(stream) => http2_handshake(stream).await?,
    };
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = driver.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    let now = shared.now_ms();
    Ok(Arc::new(H2Link { sender, streams: AtomicU32::new(0), last_ms: AtomicU64::new(now) }))
}

async fn http2_handshake<I>(io: I) -> Result<(http2::SendRequest<Body>, Driver), UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    // A response's header list may be as long as Envoy takes (hyper's default stops at 16 KiB).
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(h1::MAX_HEADER_LIST)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    Ok((sender, Box::pin(conn)))
}

impl Conn {
    /// Sends a request; the response body gives the connection back to the pool when it ends.
    pub async fn send(mut self, head: h1::Head<'_>, body: Body) -> Result<Answer, UpstreamError> {
        let (status, head, framing) =
            self.link.conn.send(head, body).await.map_err(|e| UpstreamError::Reset(e.to_string()))?;
        self.uses += 1;
        // A response without a body (204, HEAD, content-length 0) may never be polled.
        let conn = if framing.is_end() {
            self.give_back();
            None
        } else {
            Some(self)
        };
        Ok(Answer { status, fields: Fields::Head(head), body: Body::new(PooledBody { conn, framing }) })
    }

    fn give_back(mut self) {
        let keep = (self.max_uses == 0 || self.uses < self.max_uses) && self.link.is_open();
        if keep {
            self.ep.put_idle(IdleConn { link: self.link, uses: self.uses, since: Instant::now() });
            wake_pending(&self.ep.cx.shared);
        }
        // A link not kept is dropped here: that closes it, frees its slot and wakes the pending
        // requests.
    }
}

/// A response body read from its connection, which goes back to the pool at the body's end.
struct PooledBody {
    conn: Option<Conn>,
    framing: Framing,
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(conn) = &mut this.conn else { return Poll::Ready(None) };
        let polled = conn.link.conn.poll_body(cx, &mut this.framing);
        match polled {
            // hyper's server stops polling once `is_end_stream` is true, so the connection goes
            // back as soon as the body is known to be complete.
            Poll::Ready(Some(Ok(data))) => {
                if this.framing.is_end() {
                    this.give_back();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                this.give_back();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken body: the connection is not reused.
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(c) = self.conn.take() {
            c.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::runtime::ClusterRt;
    use http::Response;

    /// An HTTP/1.1 server on a thread of its own (so the test's runtime counts only the proxy's
    /// tasks) that answers `ok` to each request. Sending on the returned channel closes the
    /// connection it has open; the reply says it is closed.
    fn server() -> (SocketAddr, std::sync::mpsc::Sender<std::sync::mpsc::Sender<()>>) {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (close, on_close) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                std_listener.set_nonblocking(true).unwrap();
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let read = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await;
                        if let Ok(done) = on_close.try_recv() {
                            drop(s);
                            let _ = done.send(());
                            break;
                        }
                        match read {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(_)) => s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap(),
                            Err(_) => {}
                        }
                    }
                }
            });
        });
        (addr, close)
    }

    fn get() -> Request<Body> {
        Request::builder().uri("/").header("host", "backend").body(crate::proxy::respond::full("")).unwrap()
    }

    async fn exchange(crt: &ClusterRt, pool: &PoolSettings) -> (bool, Response<Body>) {
        let (conn, reused) = acquire(&crt.shared, &crt.endpoints[0], pool, None).await.unwrap();
        (reused, conn.send(get()).await.unwrap().into_response())
    }

    #[tokio::test]
    async fn a_request_runs_on_its_own_task_and_the_connection_is_reused() {
        let (addr, _close) = server();
        let crt = ClusterRt::single(addr);
        let pool = PoolSettings::default();
        let (reused, resp) = exchange(&crt, &pool).await;
        assert!(!reused);
        // The connection is driven by whoever holds it: no task was spawned for it.
        assert_eq!(tokio::runtime::Handle::current().metrics().num_alive_tasks(), 0);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        let (reused, resp) = exchange(&crt, &pool).await;
        assert!(reused, "the idle connection is used again");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_not_used_again() {
        let (addr, close) = server();
        let crt = ClusterRt::single(addr);
        let pool = PoolSettings::default();
        let (_, resp) = exchange(&crt, &pool).await;
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(crt.shared.cx_active.load(Ordering::Relaxed), 1, "kept idle in the pool");
        let (done, closed) = std::sync::mpsc::channel();
        close.send(done).unwrap();
        tokio::task::spawn_blocking(move || closed.recv().unwrap()).await.unwrap();
        // Let the I/O driver see the FIN, as it does between requests in a running proxy.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (reused, resp) = exchange(&crt, &pool).await;
        assert!(!reused, "the closed connection was dropped, not reused");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(crt.shared.cx_active.load(Ordering::Relaxed), 1, "the closed one's slot was freed");
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_sent_bytes_on_is_not_used_again() {
        // Answers each connection's first request, then says more on it unasked (a 408, as
        // servers do before closing an idle connection) and keeps it open.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (said, on_said) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut open = Vec::new();
            for s in std_listener.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
                std::thread::sleep(Duration::from_millis(5));
                s.write_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n").unwrap();
                let _ = said.send(());
                open.push(s);
            }
        });
        let crt = ClusterRt::single(addr);
        let pool = PoolSettings::default();
        let (_, resp) = exchange(&crt, &pool).await;
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        tokio::task::spawn_blocking(move || on_said.recv().unwrap()).await.unwrap();
        // Let the I/O driver see the bytes, as it does between requests in a running proxy.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (reused, resp) = exchange(&crt, &pool).await;
        assert!(!reused, "the connection the server spoke on was dropped, not reused");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 2);
    }

    /// A server on a thread of its own (so the test's runtime counts only the proxy's tasks)
    /// that runs `serve` on a task of its own for each connection it accepts.
    fn serve_each<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                std_listener.set_nonblocking(true).unwrap();
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(s));
                }
            });
        });
        addr
    }

    /// An HTTP/1.1 server that answers `ok` on every connection at once.
    fn concurrent_server() -> SocketAddr {
        serve_each(|mut s| async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(1..) = s.read(&mut buf).await {
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                    break;
                }
            }
        })
    }

    /// `n` requests in flight at once, each response head in hand before any body is read (so
    /// each holds a connection of its own); then every body is read, which returns them all.
    async fn all_at_once(crt: &Arc<ClusterRt>, pool: &Arc<PoolSettings>, n: usize) -> Vec<bool> {
        let mut heads = Vec::new();
        for _ in 0..n {
            let (crt, pool) = (crt.clone(), pool.clone());
            heads.push(tokio::spawn(async move { exchange(&crt, &pool).await }));
        }
        let mut reuses = Vec::new();
        let mut bodies = Vec::new();
        for h in heads {
            let (reused, resp) = h.await.unwrap();
            reuses.push(reused);
            bodies.push(resp.into_body());
        }
        for b in bodies {
            assert_eq!(b.collect().await.unwrap().to_bytes(), "ok");
        }
        reuses
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_idle_connections_than_the_ring_holds_are_all_kept_and_used_again() {
        let crt = Arc::new(ClusterRt::single(concurrent_server()));
        let pool = Arc::new(PoolSettings::default());
        let n = super::super::runtime::IDLE_RING + 8;
        assert!(all_at_once(&crt, &pool, n).await.iter().all(|r| !r), "a connection each");
        let ep = &crt.endpoints[0];
        assert_eq!(ep.idle_count(), n, "the ring's and the spilled ones");
        assert_eq!(crt.shared.cx_active.load(Ordering::Relaxed), n as u64, "none closed");
        assert!(all_at_once(&crt, &pool, n).await.iter().all(|r| *r), "every one used again");
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), n as u64);
        assert_eq!(ep.idle_count(), n);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_taking_and_returning_at_once_lose_no_connection() {
        let crt = Arc::new(ClusterRt::single(concurrent_server()));
        let pool = Arc::new(PoolSettings::default());
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (crt, pool) = (crt.clone(), pool.clone());
            clients.spawn(async move {
                let mut reused = 0;
                for _ in 0..200 {
                    let (r, resp) = exchange(&crt, &pool).await;
                    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
                    reused += u64::from(r);
                }
                reused
            });
        }
        let mut reused = 0;
        while let Some(done) = clients.join_next().await {
            reused += done.unwrap();
        }
        let opened = crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed);
        assert!(opened <= 4, "at most one a client: {opened}");
        assert_eq!(reused + opened, 800, "every other request found one idle");
        assert_eq!(crt.endpoints[0].idle_count() as u64, opened, "every connection opened is idle again");
        assert_eq!(crt.shared.cx_active.load(Ordering::Relaxed), opened);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_max_connections_one_requests_on_two_threads_wait_their_turn_on_it() {
        let crt = Arc::new(ClusterRt::single(concurrent_server()));
        let pool = Arc::new(PoolSettings { max_connections: 1, ..PoolSettings::default() });
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (crt, pool) = (crt.clone(), pool.clone());
            clients.spawn(async move {
                for _ in 0..100 {
                    let (_, resp) = exchange(&crt, &pool).await;
                    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 1, "one connection, shared in turn");
        assert!(crt.shared.stats.upstream_rq_pending_total.load(Ordering::Relaxed) > 0, "some waited for it");
        assert_eq!(crt.shared.rq_pending_active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connection_given_back_wakes_its_endpoints_waiter_though_another_endpoints_waited_first() {
        let crt = Arc::new(ClusterRt::of(&[concurrent_server(), concurrent_server()]));
        let pool = Arc::new(PoolSettings { max_connections: 1, ..PoolSettings::default() });
        let on = |i: usize| {
            let (crt, pool) = (crt.clone(), pool.clone());
            async move {
                let (conn, _) = acquire(&crt.shared, &crt.endpoints[i], &pool, None).await.unwrap();
                conn.send(get()).await.unwrap().into_response()
            }
        };
        // The cluster's one connection, to the second endpoint, and the one opened past the limit
        // to the first (which had none), each held until its body is read.
        let held = on(1).await;
        let held_first = on(0).await;
        let first = tokio::spawn(on(0));
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        let second = tokio::spawn(on(1));
        settle().await;
        assert_eq!(crt.shared.rq_pending_active.load(Ordering::Relaxed), 2, "both wait");
        assert_eq!(held.into_body().collect().await.unwrap().to_bytes(), "ok");
        // Woken alone, the first waiter (for the other endpoint) would find nothing and wait again,
        // and the second would sleep with its connection idle.
        let resp = tokio::time::timeout(Duration::from_secs(10), second).await.expect("woken").unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert!(!first.is_finished(), "no slot for the other endpoint while its connection is busy");
        assert_eq!(held_first.into_body().collect().await.unwrap().to_bytes(), "ok");
        let resp = tokio::time::timeout(Duration::from_secs(10), first).await.expect("woken").unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_endpoint_dropped_closes_its_idle_connections() {
        // A pod gone from the config takes its proxy's endpoint state with it: the connections
        // idle in its pool must close then, though each holds its endpoint's connection count.
        let (closed, on_close) = std::sync::mpsc::channel();
        let addr = serve_each(move |mut s| {
            let closed = closed.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(1..) = s.read(&mut buf).await {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
                let _ = closed.send(());
            }
        });
        let crt = ClusterRt::single(addr);
        let (_, resp) = exchange(&crt, &PoolSettings::default()).await;
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(crt.endpoints[0].idle_count(), 1);
        drop(crt);
        on_close.recv_timeout(Duration::from_secs(10)).expect("the idle connection closed");
    }

    #[tokio::test]
    async fn at_max_connections_an_endpoint_with_none_gets_one_past_the_limit_as_envoy_opens_it() {
        let crt = ClusterRt::of(&[concurrent_server(), concurrent_server(), concurrent_server()]);
        let pool = PoolSettings { max_connections: 1, ..PoolSettings::default() };
        let send = |i: usize| {
            let (crt, pool) = (&crt, &pool);
            async move {
                let (conn, _) = acquire(&crt.shared, &crt.endpoints[i], pool, None).await.unwrap();
                conn.send(get()).await.unwrap().into_response().into_body().collect().await.unwrap().to_bytes()
            }
        };
        // In turn, as round robin sends them: the first connection, idle once its response is
        // read, holds the cluster's one slot; each other endpoint still gets a connection of its
        // own instead of waiting for a slot that idle connection never gives back.
        for i in [0, 1, 2, 0, 1, 2] {
            let body = tokio::time::timeout(Duration::from_secs(10), send(i)).await.expect("not left waiting");
            assert_eq!(body, "ok");
        }
        let stats = &crt.shared.stats;
        assert_eq!(stats.upstream_cx_total.load(Ordering::Relaxed), 3, "one connection an endpoint, reused");
        assert_eq!(crt.shared.cx_active.load(Ordering::Relaxed), 3);
        assert_eq!(stats.upstream_cx_overflow.load(Ordering::Relaxed), 2, "counted as Envoy counts them");
        // An endpoint that has a connection waits for it, past the limit as within it.
        let (busy, _) = acquire(&crt.shared, &crt.endpoints[2], &pool, None).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), send(2)).await;
        assert!(waiting.is_err(), "no second connection to an endpoint past the limit");
        drop(busy);
        assert_eq!(crt.endpoints[2].cx.count.load(Ordering::Relaxed), 0, "a connection dropped gives its slot back");
        assert_eq!(crt.shared.cx_active.load(Ordering::Relaxed), 2);
    }

    /// An HTTP/2 server (prior knowledge) that answers each request with its version, authority
    /// and path.
    fn h2_server() -> SocketAddr {
        serve_each(|s| async move {
            let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                // Long enough for every request of a burst to be in flight at once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let text = format!("{:?} {} {}", req.version(), req.uri().authority().unwrap(), req.uri().path());
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(text))))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        })
    }

    #[tokio::test]
    async fn with_h2_upgrade_concurrent_requests_share_one_connection() {
        let crt = Arc::new(ClusterRt::single(h2_server()));
        let pool = Arc::new(PoolSettings { h2_upgrade: true, ..PoolSettings::default() });
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (crt, pool) = (crt.clone(), pool.clone());
            burst.spawn(async move {
                let (_, resp) = exchange(&crt, &pool).await;
                assert_eq!(resp.version(), Version::HTTP_11, "handed on as the caller's protocol");
                resp.into_body().collect().await.unwrap().to_bytes()
            });
        }
        while let Some(body) = burst.join_next().await {
            assert_eq!(body.unwrap(), "HTTP/2.0 backend /", "Host became :authority");
        }
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 1);
        assert_eq!(
            crt.shared.stats.upstream_rq_pending_total.load(Ordering::Relaxed),
            8,
            "all waited for the one handshake"
        );
        let (reused, _) = exchange(&crt, &pool).await;
        assert!(reused);
    }

    #[tokio::test]
    async fn with_h2_upgrade_a_response_header_list_may_be_as_long_as_envoys_limit() {
        // 40 KiB of fields: past hyper's default of 16 KiB, under Envoy's 60.
        let big = "b".repeat(40 << 10);
        let addr = serve_each(move |s| {
            let big = big.clone();
            async move {
                let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let resp =
                        Response::builder().header("x-big", big.as_str()).body(http_body_util::Empty::<Bytes>::new());
                    async move { resp }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            }
        });
        let crt = ClusterRt::single(addr);
        let pool = PoolSettings { h2_upgrade: true, ..PoolSettings::default() };
        let (conn, _) = acquire(&crt.shared, &crt.endpoints[0], &pool, None).await.unwrap();
        let resp = conn.send(get()).await.expect("the response is taken").into_response();
        assert_eq!(resp.headers()["x-big"].len(), 40 << 10);
    }

    #[tokio::test]
    async fn with_h2_upgrade_max_requests_per_connection_opens_a_new_connection() {
        let crt = ClusterRt::single(h2_server());
        let pool = PoolSettings { h2_upgrade: true, max_requests_per_connection: 2, ..PoolSettings::default() };
        let mut reuses = Vec::new();
        for _ in 0..5 {
            let (reused, resp) = exchange(&crt, &pool).await;
            resp.into_body().collect().await.unwrap();
            reuses.push(reused);
        }
        assert_eq!(reuses, [false, true, false, true, false]);
        assert_eq!(crt.shared.stats.upstream_cx_total.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_connect_timeout_covers_the_tls_handshake_as_envoys_does() {
        // A peer that accepts and then never answers the ClientHello.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let sec = crate::security::tls::Security::new(
            crate::security::ca::Ca::ephemeral().unwrap(),
            Duration::from_secs(3600),
        );
        let cfg = sec.client_config("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        let shared = Arc::new(ClusterShared::new());
        let ep = EndpointRt::new(addr, Some("cluster.local/ns/default/sa/httpbin".into()), &shared);
        let started = tokio::time::Instant::now();
        let dialed =
            tokio::time::timeout(Duration::from_secs(60), dial(&ep, Some(&cfg), Duration::from_secs(10))).await;
        let err = dialed.expect("dial gave up by itself").err().expect("no handshake");
        assert!(matches!(&err, UpstreamError::Connect(m) if m == "connection timeout"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10), "at the connect timeout, on paused time");
    }
}
