//! Upstream connections with Envoy's circuit-breaker semantics: a pool per
//! endpoint, `maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests`
//! and `maxRequestsPerConnection` counted per cluster, connections returned
//! to the pool when the response body ends.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::runtime::{ClusterShared, EndpointRt, IdleConn};
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
    /// The connection broke before the response headers (503 UC).
    #[error("connection termination: {0}")]
    Reset(String),
}

/// Gives back a connection slot when the connection's task ends.
struct CxSlot(Arc<ClusterShared>);

impl Drop for CxSlot {
    fn drop(&mut self) {
        self.0.cx_active.fetch_sub(1, Ordering::AcqRel);
        self.0.notify.notify_one();
    }
}

/// Releases a pending-queue slot on drop.
struct PendingSlot<'a>(&'a ClusterShared);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.rq_pending_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection checked out for one request.
pub struct Conn {
    sender: SendRequest<Body>,
    uses: u32,
    ep: Arc<EndpointRt>,
    shared: Arc<ClusterShared>,
    max_uses: u32,
}

/// Takes one more connection slot if `max` allows.
fn try_slot(shared: &ClusterShared, max: u32) -> bool {
    shared
        .cx_active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < u64::from(max)).then_some(n + 1))
        .is_ok()
}

/// SNI sent to mesh peers; the verifier checks the SPIFFE identity, not this name.
const MESH_SNI: &str = "outbound.mesh.local";

async fn connect(
    ep: &Arc<EndpointRt>,
    shared: &Arc<ClusterShared>,
    pool: &PoolSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Conn, UpstreamError> {
    let slot = CxSlot(shared.clone());
    shared.stats.upstream_cx_total.fetch_add(1, Ordering::Relaxed);
    let dialed = dial(ep, tls, pool.connect_timeout).await;
    if dialed.is_err() {
        shared.stats.upstream_cx_connect_fail.fetch_add(1, Ordering::Relaxed);
    }
    let sender = match dialed? {
        Dialed::Tls(tls_stream) => http1(tls_stream, slot).await?,
        Dialed::Plain(stream) => http1(stream, slot).await?,
    };
    Ok(Conn { sender, uses: 0, ep: ep.clone(), shared: shared.clone(), max_uses: pool.max_requests_per_connection })
}

/// A connection to an endpoint: mTLS when the endpoint takes it, else plaintext.
pub enum Dialed {
    /// Plaintext.
    Plain(TcpStream),
    /// mTLS, the peer's SPIFFE identity checked.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `ep` within `timeout`, with mTLS (and the expected identity) when the endpoint asks for it.
pub async fn dial(
    ep: &EndpointRt,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: std::time::Duration,
) -> Result<Dialed, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(ep.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(UpstreamError::Connect(
                e.raw_os_error().map(|c| c.to_string()).unwrap_or_else(|| e.to_string()),
            ))
        }
        Err(_) => return Err(UpstreamError::Connect("connection timeout".into())),
    };
    let _ = stream.set_nodelay(true);
    if let Some(origin) = &ep.origin {
        let tls_stream = tokio_rustls::TlsConnector::from(origin.config.clone())
            .connect(origin.sni.clone(), stream)
            .await
            .map_err(|e| UpstreamError::Connect(format!("TLS error: {e}")))?;
        return Ok(Dialed::Tls(Box::new(tls_stream)));
    }
    let (Some(expected), Some(cfg)) = (&ep.mtls, tls) else { return Ok(Dialed::Plain(stream)) };
    let name = rustls_pki_types::ServerName::try_from(MESH_SNI).map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let tls_stream = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, stream)
        .await
        .map_err(|e| UpstreamError::Connect(format!("TLS error: {e}")))?;
    let peer = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::security::tls::spiffe_of(c));
    if peer.as_deref() != Some(expected.as_str()) {
        return Err(UpstreamError::Connect(format!(
            "TLS error: peer identity {} is not {expected}",
            peer.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(Dialed::Tls(Box::new(tls_stream)))
}

/// HTTP/1.1 over `io`; the connection's task holds the pool slot until the connection ends.
async fn http1<I>(io: I, slot: CxSlot) -> Result<SendRequest<Body>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _slot = slot;
        let _ = conn.await;
    });
    Ok(sender)
}

/// Gets a connection to `ep`: an idle one, a new one within `maxConnections`,
/// or a wait in the pending queue; a full queue is an overflow.
pub async fn acquire(
    shared: &Arc<ClusterShared>,
    ep: &Arc<EndpointRt>,
    pool: &PoolSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Conn, bool), UpstreamError> {
    let reuse = |c: IdleConn| Conn {
        sender: c.sender,
        uses: c.uses,
        ep: ep.clone(),
        shared: shared.clone(),
        max_uses: pool.max_requests_per_connection,
    };
    if let Some(c) = ep.take_idle(pool.idle_timeout) {
        return Ok((reuse(c), true));
    }
    // No ready connection: the request is pending until it gets one.
    let queued = shared.rq_pending_active.fetch_add(1, Ordering::AcqRel);
    let _pending = PendingSlot(shared);
    if queued >= u64::from(pool.max_pending) {
        shared.stats.upstream_rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
        return Err(UpstreamError::Overflow);
    }
    shared.stats.upstream_rq_pending_total.fetch_add(1, Ordering::Relaxed);
    loop {
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = ep.take_idle(pool.idle_timeout) {
            return Ok((reuse(c), true));
        }
        if try_slot(shared, pool.max_connections) {
            return connect(ep, shared, pool, tls).await.map(|c| (c, false));
        }
        notified.await;
    }
}

impl Conn {
    /// Sends `req`; the response body gives the connection back to the pool when it ends.
    pub async fn send(mut self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        if self.sender.ready().await.is_err() {
            return Err(UpstreamError::Reset("connection closed".into()));
        }
        let resp = self.sender.send_request(req).await.map_err(|e| UpstreamError::Reset(e.to_string()))?;
        self.uses += 1;
        let (parts, body) = resp.into_parts();
        // A response without a body (204, HEAD, content-length 0) may never be polled.
        let conn = if body.is_end_stream() {
            self.give_back();
            None
        } else {
            Some(self)
        };
        let body = PooledBody { inner: body, conn };
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    fn give_back(self) {
        let keep = (self.max_uses == 0 || self.uses < self.max_uses) && !self.sender.is_closed();
        if keep {
            self.ep.put_idle(IdleConn { sender: self.sender, uses: self.uses, since: Instant::now() });
        }
        // Dropping the sender closes the connection; its task then frees the slot and notifies.
        self.shared.notify.notify_one();
    }
}

/// A response body that returns its connection to the pool at the end of the stream.
struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(c) = self.conn.take() {
            c.give_back();
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            // The last frame, or the end: hyper's server stops polling once `is_end_stream` is true,
            // so the connection goes back as soon as the body is known to be complete.
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                // A broken body: the connection is not reused.
                self.conn = None;
            }
            _ => {}
        }
        res.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
