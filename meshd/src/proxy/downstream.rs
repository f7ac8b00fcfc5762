//! HTTP/1.1 from a downstream, written for the proxy hop: the request head is parsed once
//! (values sliced from the bytes read), the handler runs, and the response head goes out with
//! the body's first bytes in one write.
//!
//! Only the common case is served here: an HTTP/1.x request without a body, or with a
//! `content-length` body of up to [`BODY_IN_MEMORY`]. Anything else (the HTTP/2 preface, `Expect`,
//! `Upgrade`, `CONNECT`, a chunked or larger body, a head that does not parse) is handed, with the
//! bytes already read, to hyper's server, which serves the rest of the connection.

use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio_util::io::poll_read_buf;

use super::answer::Answer;
use super::fields::{self, Fields};
use super::h1::{self, Field, Sending, FEW_HEADERS, MAX_HEAD, MAX_HEADERS};
use super::respond::full;
use super::Body;

/// Largest request body read whole before the handler runs; a larger one streams through hyper.
pub const BODY_IN_MEMORY: u64 = 1 << 20;

/// A connection's drain state, shared between its serving loop and the signals that stop it.
#[derive(Debug, Default)]
pub struct Drain {
    requested: AtomicBool,
    /// True while the loop waits for a request with nothing of one read: closing loses nothing.
    idle: AtomicBool,
    /// Wakes a connection hyper serves, which drains on its own.
    notify: Notify,
}

impl Drain {
    /// Asks the connection to stop after the response in progress. True when it is idle and can
    /// simply be dropped.
    pub fn start(&self) -> bool {
        self.requested.store(true, Ordering::Relaxed);
        self.notify.notify_one();
        self.idle.load(Ordering::Relaxed)
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Resolves once a drain was asked for (for a connection hyper serves).
    pub async fn drained(&self) {
        if !self.requested() {
            self.notify.notified().await;
        }
    }
}

/// How a connection's serving ended.
pub enum Served<I> {
    /// Closed (by either side, or after a drain).
    Closed,
    /// The handler gave no answer: the connection is handed back to be reset, as the upstream
    /// reset it (kube-proxy's path to a STRICT port).
    Aborted(I),
    /// hyper must serve the rest: the bytes read so far come first.
    Handoff(Rewind<I>),
}

/// The head of a request the fast path serves; its header lines are spans in the read buffer.
struct Head {
    method: Method,
    version: Version,
    target: (usize, usize),
    /// Length of the head in the read buffer.
    len: usize,
    body: u64,
    keep_alive: bool,
}

enum Parsed {
    Head(Head),
    Partial,
    Handoff,
}

/// A request as the proxy takes it: from this loop, its fields are the head as it came; from
/// hyper, a header map.
pub struct Call {
    pub parts: Parts,
    pub body: Body,
}

/// A request but its body.
#[derive(Debug)]
pub struct Parts {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub fields: Fields,
}

impl Call {
    pub fn into_parts(self) -> (Parts, Body) {
        (self.parts, self.body)
    }
}

impl From<Request<Body>> for Call {
    fn from(req: Request<Body>) -> Call {
        let (p, body) = req.into_parts();
        Call { parts: Parts { method: p.method, uri: p.uri, version: p.version, fields: Fields::Map(p.headers) }, body }
    }
}

/// What answers the requests of a connection.
pub trait Handler {
    /// Answers one request; `None` closes the connection unanswered.
    fn call(&mut self, call: Call) -> impl Future<Output = Option<Answer>> + Send + '_;

    /// Runs once a request is over (its response written, or the connection closed instead):
    /// work the request left that the client need not wait for.
    fn after(&self) {}
}

/// Serves HTTP/1.1 requests on `io` with `handler` until the connection closes, a drain stops
/// it, or a request needs hyper.
pub async fn serve<I, H>(mut io: I, drain: &Drain, handler: &mut H) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut rbuf = BytesMut::with_capacity(h1::READ_ROOM);
    let mut wbuf = Vec::new();
    let mut spans: Vec<Field> = Vec::new();
    // Kept across requests: a client that closed after pipelining is not read again.
    let mut watch = Watch::Open;
    loop {
        // The next request's head (and body). A head is parsed once; while its body arrives
        // only the length is checked (`spans` are offsets, which stay valid as `rbuf` grows).
        let mut parsed: Option<Head> = None;
        let head = loop {
            drain.idle.store(rbuf.is_empty(), Ordering::Relaxed);
            if (drain.requested() || watch == Watch::ClosedAfterMore) && rbuf.is_empty() {
                return Served::Closed;
            }
            if parsed.is_none() && !rbuf.is_empty() {
                match parse(&rbuf, &mut spans) {
                    Parsed::Head(head) => parsed = Some(head),
                    Parsed::Partial => {}
                    Parsed::Handoff => return Served::Handoff(Rewind { prefix: rbuf.freeze(), io }),
                }
            }
            if let Some(head) = parsed.take_if(|h| rbuf.len() as u64 >= h.len as u64 + h.body) {
                break head;
            }
            match poll_fn(|cx| poll_read_buf(Pin::new(&mut io), cx, h1::reserve(&mut rbuf))).await {
                Ok(0) if rbuf.is_empty() => return Served::Closed,
                // The client stopped mid-request: hyper answers that as it always has.
                Ok(0) => return Served::Handoff(Rewind { prefix: rbuf.freeze(), io }),
                Ok(_) => {}
                Err(_) => return Served::Closed,
            }
        };
        drain.idle.store(false, Ordering::Relaxed);
        let (version, head_request, keep_alive) = (head.version, head.method == Method::HEAD, head.keep_alive);
        // Names in lower case, as Envoy forwards them, so that they compare as they are.
        for f in &spans {
            h1::lower_name(&mut rbuf[f.name_range()]);
        }
        let head_bytes = rbuf.split_to(head.len).freeze();
        let body = if head.body == 0 { full(Bytes::new()) } else { full(rbuf.split_to(head.body as usize).freeze()) };
        let Some(req) = request(head, std::mem::take(&mut spans), head_bytes, body) else {
            // A target httparse takes and `http` does not: hyper's answer to it.
            let _ = io.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            return Served::Closed;
        };
        // Run the request, watching the client: a connection it closes cancels the request, as
        // hyper and Envoy do. Bytes it pipelines meanwhile wait in `rbuf`.
        let answer = {
            let mut handling = std::pin::pin!(handler.call(req));
            poll_fn(|cx| {
                if let Poll::Ready(answer) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(answer));
                }
                match watch.poll(&mut io, &mut rbuf, cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        let kept = match answer {
            // The client left.
            None => false,
            Some(None) => {
                handler.after();
                return Served::Aborted(io);
            }
            Some(Some(resp)) => {
                let keep_alive = keep_alive && !drain.requested();
                let out = Out { wbuf: &mut wbuf, rbuf: &mut rbuf, watch: &mut watch };
                match respond(&mut io, out, resp, version, head_request, keep_alive).await {
                    Ok(true) => true,
                    Ok(false) => {
                        // A clean end: TLS says close_notify, so a body the close delimits is complete.
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), io.shutdown()).await;
                        false
                    }
                    Err(_) => false,
                }
            }
        };
        // Once the client has its answer (or the connection is closed), on every way out.
        handler.after();
        if !kept {
            return Served::Closed;
        }
    }
}

/// The client's side of the connection while a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Open,
    /// Closed after sending more requests: those are still answered.
    ClosedAfterMore,
}

impl Watch {
    /// Reads what the client sends while its request is served. Ready: the client is gone with
    /// nothing more asked, so the request is cancelled (hyper and Envoy do the same).
    fn poll<I: AsyncRead + Unpin>(&mut self, io: &mut I, rbuf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()> {
        while *self == Watch::Open && rbuf.len() < MAX_HEAD {
            match poll_read_buf(Pin::new(&mut *io), cx, h1::reserve(rbuf)) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) if rbuf.is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => *self = Watch::ClosedAfterMore,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }
}

/// The buffers and client watch a response is written with.
struct Out<'a> {
    wbuf: &'a mut Vec<u8>,
    rbuf: &'a mut BytesMut,
    watch: &'a mut Watch,
}

/// Parses the request head at the start of `buf` and decides whether this loop serves it.
fn parse(buf: &BytesMut, spans: &mut Vec<Field>) -> Parsed {
    match parse_sized::<FEW_HEADERS>(buf, spans) {
        Err(httparse::Error::TooManyHeaders) => parse_sized::<MAX_HEADERS>(buf, spans).unwrap_or(Parsed::Handoff),
        Err(_) => Parsed::Handoff,
        Ok(parsed) => parsed,
    }
}

fn parse_sized<const N: usize>(buf: &BytesMut, spans: &mut Vec<Field>) -> Result<Parsed, httparse::Error> {
    let mut slots = [httparse::EMPTY_HEADER; N];
    let mut r = httparse::Request::new(&mut slots);
    let len = match r.parse(buf)? {
        // `http` refuses a name of 64 KiB or more: such a head goes to hyper, which answers it.
        httparse::Status::Complete(len) if len > MAX_HEAD => return Ok(Parsed::Handoff),
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Ok(Parsed::Handoff),
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let (Some(method), Some(path), Some(minor)) = (r.method, r.path, r.version) else { return Ok(Parsed::Handoff) };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(Parsed::Handoff) };
    if method == Method::CONNECT {
        return Ok(Parsed::Handoff);
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    spans.clear();
    // The spans go with the request: one allocation of the size needed.
    spans.reserve_exact(r.headers.len());
    let mut body: Option<u64> = None;
    let mut conn_close = minor == 0;
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("transfer-encoding") || is("expect") || is("upgrade") {
            return Ok(Parsed::Handoff);
        }
        if is("content-length") {
            // Anything but one agreed length goes to hyper, which refuses it (400).
            match h1::agreed_length(body, h.value) {
                Some(n) if n <= BODY_IN_MEMORY => body = Some(n),
                _ => return Ok(Parsed::Handoff),
            }
        } else if is("connection") {
            if h1::has_token(h.value, b"upgrade") {
                return Ok(Parsed::Handoff);
            }
            if minor == 0 && h1::has_token(h.value, b"keep-alive") {
                conn_close = false;
            }
            if h1::has_token(h.value, b"close") {
                conn_close = true;
            }
        }
        spans.push(Field::of(buf, h));
    }
    let target = (at(path.as_bytes()), at(path.as_bytes()) + path.len());
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    Ok(Parsed::Head(Head { method, version, target, len, body: body.unwrap_or(0), keep_alive: !conn_close }))
}

/// The request from its parsed head: the fields stay in the head's bytes (httparse has checked
/// each name and value against the characters `http` allows, and `parse` the names' length).
/// `None` when the target does not make a valid `http` URI (hyper has already refused such
/// heads).
fn request(head: Head, spans: Vec<Field>, bytes: Bytes, body: Body) -> Option<Call> {
    let uri = Uri::from_maybe_shared(bytes.slice(head.target.0..head.target.1)).ok()?;
    let fields = Fields::Head(fields::Head::new(bytes, spans));
    Some(Call { parts: Parts { method: head.method, uri, version: head.version, fields }, body })
}

/// What writing a response's fields saw.
struct Seen {
    /// The last `content-length`, when it is a length.
    length: Option<u64>,
    /// A `content-length` was written, a length or not.
    length_line: bool,
    dated: bool,
    chunked: bool,
}

/// Writes a response's fields but those this hop frames itself (and its length, if
/// `drop_length`).
fn write_fields(w: &mut Vec<u8>, fields: &Fields, drop_length: bool) -> Seen {
    let mut seen = Seen { length: None, length_line: false, dated: false, chunked: false };
    fields.write_h1(w, |name, value| {
        match name {
            b"content-length" if drop_length => return false,
            b"content-length" => {
                seen.length = h1::content_length(value);
                seen.length_line = true;
            }
            b"transfer-encoding" => {
                seen.chunked = true;
                return false;
            }
            b"connection" => return false,
            b"date" => seen.dated = true,
            _ => {}
        }
        true
    });
    seen
}

/// Writes `resp`: the head with the body's first bytes behind it, then the rest as it comes.
/// `Ok(false)`: the connection cannot carry another request.
async fn respond<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    out: Out<'_>,
    resp: Answer,
    version: Version,
    head_request: bool,
    mut keep_alive: bool,
) -> std::io::Result<bool> {
    let Out { wbuf, rbuf, watch } = out;
    let Answer { status, fields, mut body } = resp;
    // These never carry a body, nor a length for one.
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    wbuf.clear();
    let w = &mut *wbuf;
    w.extend_from_slice(b"HTTP/1.1 ");
    w.extend_from_slice(status.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    w.extend_from_slice(b"\r\n");
    // The body's framing on this hop is this loop's to choose: the upstream's chunking was
    // decoded, and an HTTP/1.0 client cannot read chunks.
    // A length is kept unless a transfer-encoding comes with it, which is rare: the fields are
    // then written again without it, rather than every response looking for one first.
    let at = w.len();
    let mut seen = write_fields(w, &fields, status == StatusCode::NO_CONTENT);
    if seen.chunked && seen.length_line {
        w.truncate(at);
        seen = write_fields(w, &fields, true);
    }
    let Seen { mut length, dated, chunked, .. } = seen;
    let sending = if bodiless {
        Sending::Nothing
    } else if length.is_some() {
        Sending::Raw
    } else if head_request && !chunked {
        // HEAD: the headers as given; no length is made up for a body never sent.
        Sending::Nothing
    } else if body.is_end_stream() && !chunked {
        w.extend_from_slice(b"content-length: 0\r\n");
        Sending::Nothing
    } else if let Some(n) = body.size_hint().exact().filter(|_| !chunked) {
        let _ = write!(w, "content-length: {n}\r\n");
        length = Some(n);
        Sending::Raw
    } else if version == Version::HTTP_11 {
        w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Sending::Chunked
    } else {
        // HTTP/1.0 without a length: the body ends with the connection.
        keep_alive = false;
        Sending::Raw
    };
    // HEAD: the length the body would have had is said; the body is not sent.
    let no_body = bodiless || head_request;
    let sending = if no_body { Sending::Nothing } else { sending };
    if !dated {
        w.extend_from_slice(b"date: ");
        w.extend_from_slice(&http_date());
        w.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        w.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        w.extend_from_slice(b"connection: keep-alive\r\n");
    }
    w.extend_from_slice(b"\r\n");
    let mut out = h1::Outbound::new(sending, length);
    poll_fn(|cx| {
        let polled = out.poll(&mut *io, wbuf, &mut body, cx);
        // The body waits: notice a client that leaves meanwhile.
        if polled.is_pending() && out.body_waits(wbuf) && watch.poll(&mut *io, rbuf, cx).is_ready() {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()));
        }
        polled
    })
    .await?;
    // A body shorter than its length, longer, or broken leaves the client unsure: close.
    let complete = out.broken.is_none() && !out.overran && (no_body || !out.short());
    Ok(keep_alive && complete)
}

/// Today's `date` header value (IMF-fixdate), formatted once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut out = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == 29 {
            out.copy_from_slice(formatted.as_bytes());
        }
        c.set((secs, out));
        out
    })
}

/// An I/O whose first reads return bytes already taken from it.
pub struct Rewind<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::HeaderValue;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use http::header::TRANSFER_ENCODING;
    use http::HeaderName;

    use super::*;

    /// Echoes the method, target, version, a header and the body; counts what it served.
    struct Echo(Arc<std::sync::atomic::AtomicUsize>);

    impl Handler for Echo {
        async fn call(&mut self, call: Call) -> Option<Answer> {
            self.0.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = call.into_parts();
            if parts.uri.path() == "/abort" {
                return None;
            }
            if parts.uri.path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if parts.uri.path() == "/chunked" {
                // As an upstream's chunked response arrives: decoded, the header kept; a
                // route's edits may put any length beside it (`?length=`), and a date.
                let mut resp = http::Response::new(full("abc"));
                let h = resp.headers_mut();
                h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                match parts.uri.query().and_then(|q| q.strip_prefix("length=")) {
                    Some(odd) => {
                        h.append(http::header::CONTENT_LENGTH, HeaderValue::from_static("3"));
                        h.append(http::header::CONTENT_LENGTH, HeaderValue::from_str(odd).unwrap());
                        h.insert(http::header::DATE, HeaderValue::from_static("Sat, 21 Nov 2026 10:00:00 GMT"));
                    }
                    None => {
                        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("3"));
                    }
                }
                return Some(resp.into());
            }
            let body = body.collect().await.ok()?.to_bytes();
            let text = format!(
                "{} {} {:?} x={} body={}",
                parts.method,
                parts.uri,
                parts.version,
                // The name as the proxy compares it: lower case, whatever the client sent.
                parts.fields.get(&HeaderName::from_static("x-a")).map_or("-".into(), String::from_utf8_lossy),
                String::from_utf8_lossy(&body)
            );
            let mut resp = http::Response::new(full(text));
            resp.headers_mut().insert("x-served", HeaderValue::from_static("fast"));
            Some(resp.into())
        }
    }

    /// A connected pair: the client's stream, and the server's loop running on the other end.
    async fn pair() -> (TcpStream, tokio::task::JoinHandle<(bool, usize)>, Arc<Drain>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let drain = Arc::new(Drain::default());
        let d = drain.clone();
        let task = tokio::spawn(async move {
            let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let served = serve(server, &d, &mut Echo(count.clone())).await;
            (matches!(served, Served::Handoff(_)), count.load(Ordering::Relaxed))
        });
        (client, task, drain)
    }

    /// Reads until `n` responses (by their `x-served` line and a body ending in a known way)
    /// have arrived or the server closes.
    async fn read_all(client: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, task, _) = pair().await;
        client
            .write_all(
                b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n\
                  POST /b HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc\
                  HEAD /c HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let wire = read_all(&mut client).await;
        let (handed_off, served) = task.await.unwrap();
        assert!(!handed_off, "served by the loop, not hyper");
        assert_eq!(served, 3);
        let first = wire.find("GET /a?q=1 HTTP/1.1 x=1 body=").expect(&wire);
        let second = wire.find("POST /b HTTP/1.1 x=- body=abc").expect(&wire);
        assert!(first < second);
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\nx-served: fast\r\ncontent-length: "), "{wire}");
        assert_eq!(wire.matches("date: ").count(), 3);
        // HEAD: the length of the body it would have had, no body, and the close asked for.
        let head = &wire[second..];
        assert!(head.contains("connection: close\r\n\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body after HEAD's head: {head}");
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_pieces_is_served_whole() {
        let (mut client, task, _) = pair().await;
        client.write_all(b"POST /b HTTP/1.1\r\nhost: h\r\nX-A: 1\r\ncontent-length: 6\r\n\r\nab").await.unwrap();
        for piece in [&b"cd"[..], b"ef"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(piece).await.unwrap();
        }
        client.shutdown().await.unwrap();
        let wire = read_all(&mut client).await;
        assert!(wire.contains("POST /b HTTP/1.1 x=1 body=abcdef"), "{wire}");
        assert_eq!(task.await.unwrap(), (false, 1));
    }

    #[tokio::test]
    async fn a_client_that_half_closes_after_pipelining_gets_every_answer() {
        let (mut client, task, _) = pair().await;
        client.write_all(b"GET /slow HTTP/1.1\r\nhost: h\r\n\r\nGET /b HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let wire = read_all(&mut client).await;
        assert!(wire.contains("GET /slow HTTP/1.1") && wire.contains("GET /b HTTP/1.1"), "{wire}");
        assert_eq!(task.await.unwrap(), (false, 2));
    }

    #[tokio::test]
    async fn lengths_that_disagree_or_carry_a_sign_go_to_hyper() {
        for request in [
            &b"POST /s HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\ncontent-length: 5\r\n\r\nhello"[..],
            b"POST /s HTTP/1.1\r\nhost: h\r\ncontent-length: +5\r\n\r\nhello",
        ] {
            let (mut client, task, _) = pair().await;
            client.write_all(request).await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(task.await.unwrap(), (true, 0), "{request:?}");
        }
    }

    #[tokio::test]
    async fn a_chunked_response_is_chunked_anew_for_1_1_and_ends_with_the_connection_for_1_0() {
        let (mut client, task, _) = pair().await;
        client.write_all(b"GET /chunked HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n").await.unwrap();
        let wire = read_all(&mut client).await;
        assert!(wire.contains("transfer-encoding: chunked\r\n"), "{wire}");
        assert!(!wire.contains("content-length"), "{wire}");
        assert!(wire.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{wire}");
        task.await.unwrap();

        let (mut client, task, _) = pair().await;
        client.write_all(b"GET /chunked HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await.unwrap();
        let wire = read_all(&mut client).await;
        assert!(!wire.contains("transfer-encoding") && !wire.contains("content-length"), "{wire}");
        assert!(wire.ends_with("connection: close\r\n\r\nabc"), "{wire}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_length_never_goes_out_with_a_transfer_encoding_whatever_it_says() {
        for request in [
            "GET /chunked?length=x HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            "GET /chunked?length=9 HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            "HEAD /chunked?length=x HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
        ] {
            let (mut client, task, _) = pair().await;
            client.write_all(request.as_bytes()).await.unwrap();
            let wire = read_all(&mut client).await;
            assert!(!wire.contains("content-length"), "{request}: {wire}");
            assert_eq!(wire.matches("transfer-encoding: chunked\r\n").count(), 1, "{request}: {wire}");
            assert_eq!(wire.matches("date: ").count(), 1, "the upstream's date, once: {wire}");
            assert!(wire.contains("date: Sat, 21 Nov 2026 10:00:00 GMT\r\n"), "{wire}");
            if request.starts_with("HEAD") {
                assert!(wire.ends_with("\r\n\r\n"), "no body for HEAD: {wire}");
            } else {
                assert!(wire.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{wire}");
            }
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_kept_alive() {
        let (mut client, task, _) = pair().await;
        client.write_all(b"GET /x HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /y HTTP/1.0\r\n\r\n").await.unwrap();
        let wire = read_all(&mut client).await;
        assert_eq!(task.await.unwrap(), (false, 2));
        assert!(wire.contains("connection: keep-alive\r\n"), "{wire}");
        assert!(wire.contains("GET /y HTTP/1.0"), "{wire}");
        assert!(wire.ends_with("connection: close\r\n\r\nGET /y HTTP/1.0 x=- body="), "{wire}");
    }

    #[tokio::test]
    async fn what_the_loop_does_not_serve_goes_to_hyper_with_every_byte() {
        for request in [
            &b"POST /c HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            b"POST /e HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\nz",
            b"GET /u HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /bad\x01 HTTP/1.1\r\n\r\n",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(request).await.unwrap();
            let drain = Drain::default();
            let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let served = serve(server, &drain, &mut Echo(count.clone())).await;
            let Served::Handoff(mut rest) = served else { panic!("not handed off: {request:?}") };
            assert_eq!(count.load(Ordering::Relaxed), 0);
            let mut replayed = vec![0u8; request.len()];
            rest.read_exact(&mut replayed).await.unwrap();
            assert_eq!(replayed, request, "hyper reads the request from its first byte");
        }
    }

    #[tokio::test]
    async fn an_aborted_answer_closes_and_an_idle_connection_drains_at_once() {
        let (mut client, task, _) = pair().await;
        client.write_all(b"GET /abort HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
        assert_eq!(read_all(&mut client).await, "", "closed without an answer");
        assert_eq!(task.await.unwrap(), (false, 1));

        let (mut client, task, drain) = pair().await;
        client.write_all(b"GET /one HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = client.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("GET /one"));
        // Give the loop time to wait for the next request, then drain: it is idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(drain.start(), "idle between requests");
        task.abort();
    }

    #[tokio::test]
    async fn a_target_http_refuses_is_a_400_and_the_connection_closes() {
        let (mut client, task, _) = pair().await;
        // httparse takes `<` in a target; `http::Uri` does not.
        client.write_all(b"GET /a<b HTTP/1.1\r\nhost: h\r\n\r\nGET /next HTTP/1.1\r\n\r\n").await.unwrap();
        let wire = read_all(&mut client).await;
        assert_eq!(wire, "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        assert_eq!(task.await.unwrap(), (false, 0));
    }

    #[tokio::test]
    async fn a_drain_during_a_request_lets_it_finish_then_closes() {
        let (mut client, task, drain) = pair().await;
        client.write_all(b"GET /slow HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!drain.start(), "a request is in progress");
        let wire = read_all(&mut client).await;
        assert!(wire.contains("connection: close\r\n"), "{wire}");
        assert!(wire.ends_with("GET /slow HTTP/1.1 x=- body="), "{wire}");
        assert_eq!(task.await.unwrap(), (false, 1));
    }
}
