//! Upstream connections with Envoy's circuit-breaker semantics: a pool per
//! endpoint, `maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests`
//! and `maxRequestsPerConnection` counted per cluster, connections returned
//! to the pool when the response body ends.
//!
//! A connection has no task of its own: whoever holds it (the request, then the response body)
//! drives it, so a request costs no hand-off to another task and back.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

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

/// The connection future hyper gives with a sender, boxed so TLS and plaintext links share a type.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// One HTTP/1.1 connection: the sender, and the connection future that does its I/O.
pub struct Link {
    sender: SendRequest<Body>,
    driver: Driver,
    closed: bool,
    /// Holds the `maxConnections` slot until the link is dropped.
    _slot: CxSlot,
}

impl Link {
    /// Does the connection's pending I/O; wakes `cx` when there is more.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    /// Whether it can take another request. Reads what the peer sent while it sat idle, so a
    /// connection the server closed is seen as closed; nothing is woken later.
    pub fn is_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.closed && !self.sender.is_closed()
    }
}

/// A connection checked out for one request.
pub struct Conn {
    link: Link,
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
    let link = match dialed? {
        Dialed::Tls(tls_stream) => http1(tls_stream, slot).await?,
        Dialed::Plain(stream) => http1(stream, slot).await?,
    };
    Ok(Conn { link, uses: 0, ep: ep.clone(), shared: shared.clone(), max_uses: pool.max_requests_per_connection })
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

/// HTTP/1.1 over `io`; the link holds the pool slot until it is dropped.
async fn http1<I>(io: I, slot: CxSlot) -> Result<Link, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    Ok(Link { sender, driver: Box::pin(conn), closed: false, _slot: slot })
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
        link: c.link,
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
        let link = &mut self.link;
        let ready = poll_fn(|cx| {
            link.drive(cx);
            link.sender.poll_ready(cx)
        });
        if ready.await.is_err() {
            return Err(UpstreamError::Reset("connection closed".into()));
        }
        let mut response = std::pin::pin!(link.sender.send_request(req));
        let resp = poll_fn(|cx| {
            link.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
        .map_err(|e| UpstreamError::Reset(e.to_string()))?;
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

    fn give_back(mut self) {
        let keep = (self.max_uses == 0 || self.uses < self.max_uses) && self.link.is_open();
        if keep {
            self.ep.put_idle(IdleConn { link: self.link, uses: self.uses, since: Instant::now() });
        }
        // A link not kept is dropped here, which closes it and frees its slot.
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
        // The connection reads the body into `inner`: drive it first.
        if let Some(c) = &mut self.conn {
            c.link.drive(cx);
        }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::runtime::ClusterRt;

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
        (reused, conn.send(get()).await.unwrap())
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
}
