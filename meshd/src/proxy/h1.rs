//! HTTP/1.1 toward an upstream, written for the proxy hop: one request at a time on a pooled
//! connection, driven by whoever holds it.
//!
//! A general client costs more than the hop needs: hyper's hands each request through a
//! dispatcher and a channel, and rebuilds what the proxy already has. Here the request head is
//! written from the request as it stands into a buffer the connection keeps (with a small body
//! behind it, so one write sends both); the response head is parsed once, its header values
//! are slices of the bytes read, and the body is handed on as it arrives, without a copy.

use std::future::poll_fn;
use std::io::{IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::downstream::Parts;
use super::fields::{self, Fields};
use super::{Body, BoxError};
use crate::telemetry::trace::SpanContext;

/// Most header lines in a head (Envoy's and hyper's default).
pub(super) const MAX_HEADERS: usize = 100;
/// Header lines parsed for first: a head with more is parsed again with room for all.
pub(super) const FEW_HEADERS: usize = 24;
/// Largest head (Envoy's default limit is 60 KiB of fields; the request line and the lines'
/// ends take some more).
pub(super) const MAX_HEAD: usize = 64 << 10;
/// Largest HTTP/2 header list, as Envoy's default `max_request_headers_kb` sets it.
pub(super) const MAX_HEADER_LIST: u32 = 60 << 10;
/// Where a field's name and value lie in the bytes of its head.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

impl Field {
    /// Where `h`, parsed from `head`, lies in it (a head is at most [`MAX_HEAD`] long).
    pub fn of(head: &[u8], h: &httparse::Header<'_>) -> Field {
        let at = |s: &[u8]| (s.as_ptr() as usize - head.as_ptr() as usize) as u32;
        let (name, value) = (at(h.name.as_bytes()), at(h.value));
        Field { name: (name, name + h.name.len() as u32), value: (value, value + h.value.len() as u32) }
    }

    /// Where the name lies.
    pub fn name_range(&self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    /// Where the value lies.
    pub fn value_range(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }

    /// The field as a header map entry, its value sharing `head`'s bytes; `None` when `http`
    /// refuses the name or the value.
    #[inline]
    pub fn entry(&self, head: &Bytes) -> Option<(HeaderName, HeaderValue)> {
        let name = HeaderName::from_bytes(&head[self.name_range()]).ok()?;
        Some((name, HeaderValue::from_maybe_shared(head.slice(self.value_range())).ok()?))
    }
}

/// Lowers a field name's ASCII capitals in place, as `make_ascii_lowercase` does, eight bytes
/// at a time: every field of every head passes here, and a byte at a time costs a request
/// of a dozen fields a few hundred instructions. Bytes already lower are not written back.
pub(super) fn lower_name(name: &mut [u8]) {
    let mut words = name.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let lower = lower8(x);
        if lower != x {
            w.copy_from_slice(&lower.to_le_bytes());
        }
    }
    // The last few bytes as one word too, gathered by shifts: a copy of a length known only
    // here would be a call to `memcpy` each way.
    let rest = words.into_remainder();
    let x = rest.iter().rev().fold(0u64, |w, &b| w << 8 | u64::from(b));
    let lower = lower8(x);
    if lower != x {
        for (i, b) in rest.iter_mut().enumerate() {
            *b = (lower >> (8 * i)) as u8;
        }
    }
}

/// Each of eight bytes lowered if it is `A` to `Z`. Sums are of the low seven bits, so no
/// byte carries into the next; a byte with its top bit set is not a capital and stays.
fn lower8(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOP: u64 = ONES * 0x80;
    let low7 = x & !TOP;
    let from_a = low7 + ONES * u64::from(0x80 - b'A');
    let past_z = low7 + ONES * u64::from(0x80 - b'Z' - 1);
    let capital = from_a & !past_z & !x & TOP;
    x | capital >> 2
}

/// Room made in the read buffer before a read: a loopback response fits in one read, and a read
/// that comes back short tells the reactor the socket is drained (no extra empty read).
pub(super) const READ_ROOM: usize = 8 << 10;
/// Body bytes gathered behind the head before writing (a request body streams past this).
const WRITE_BATCH: usize = 64 << 10;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4 << 10;

/// Why an exchange or a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The peer closed the connection mid-message.
    #[error("connection closed before message completed")]
    Closed,
    /// The response was not valid HTTP/1.x.
    #[error("invalid HTTP response: {0}")]
    Invalid(&'static str),
    /// A socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The request body failed while being sent.
    #[error("request body: {0}")]
    Body(BoxError),
}

/// The byte stream under a connection: plaintext, or TLS (mTLS to a peer, or TLS origination).
pub enum Io {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sending {
    /// No body.
    Nothing,
    /// As is: `content-length` says how much.
    Raw,
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// How the rest of a response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the server closes the connection.
    UntilClose,
    /// Complete.
    Done,
}

impl Framing {
    /// Whether the body is complete.
    pub fn is_end(self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line (trailers are dropped).
    Trailers,
}

/// One step of the chunked decoder.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// A request head to write. Borrowed, so a retry writes the same head again without a copy.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Method.
    pub method: &'a Method,
    /// Target (origin-form is written).
    pub uri: &'a Uri,
    /// Header fields.
    pub fields: &'a Fields,
    /// What the proxy adds as the head is written.
    pub added: Added<'a>,
}

impl<'a> Head<'a> {
    /// The head of a request as it stands, plus `added`.
    pub fn of(parts: &'a Parts, added: Added<'a>) -> Head<'a> {
        Head { method: &parts.method, uri: &parts.uri, fields: &parts.fields, added }
    }

    /// A whole request with this head, every field in its map, for a client that takes one
    /// (hyper's HTTP/2).
    pub fn to_request(&self, body: Body) -> http::Request<Body> {
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.fields.to_map();
        self.added.insert_into(req.headers_mut());
        req
    }
}

/// Fields the proxy adds to a request as its head is written, rather than by adding them to the
/// request's fields (where a map's insert hashes the name). The fields must not hold them too:
/// the caller drops a client's copies first. Never a framing field: the body's framing is
/// read from the fields alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Added<'a> {
    /// Written after the request's fields (`x-envoy-attempt-count`, `x-forwarded-proto`, ...).
    pub fields: [Option<(&'a HeaderName, &'a HeaderValue)>; 3],
    /// The trace context for the next hop, in B3 and W3C fields.
    pub span: Option<&'a SpanContext>,
}

impl Added<'_> {
    /// Puts the fields into a map, for a client that takes a whole request (hyper's HTTP/2).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields.iter().flatten() {
            headers.insert((*name).clone(), (*value).clone());
        }
        if let Some(span) = self.span {
            span.inject(headers);
        }
    }
}

/// One HTTP/1.1 connection to an upstream.
pub struct Connection {
    io: Io,
    /// Bytes read and not yet handed on; response heads and bodies are split off it.
    rbuf: BytesMut,
    /// The request head (and the first body bytes) being written.
    wbuf: Vec<u8>,
    /// False once the connection cannot carry another request.
    reusable: bool,
}

impl Connection {
    /// A connection over `io`, ready for its first request.
    pub fn new(io: Io) -> Connection {
        Connection { io, rbuf: BytesMut::new(), wbuf: Vec::new(), reusable: true }
    }

    /// Whether it can take another request. Checks without waiting whether the server closed
    /// the connection or sent bytes on it, unasked: either way it is not used again.
    pub fn is_open(&mut self) -> bool {
        if !self.reusable || !self.rbuf.is_empty() {
            return false;
        }
        let open = match &mut self.io {
            // Read only if the I/O driver has noted readiness: no waker stored, no task budget
            // spent, on every pooled request.
            Io::Plain(s) => {
                matches!(s.try_read_buf(&mut self.rbuf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            // Under TLS the session may already hold plaintext or the peer's close, so it is read.
            io @ Io::Tls(_) => {
                let mut cx = Context::from_waker(Waker::noop());
                poll_read_buf(Pin::new(io), &mut cx, &mut self.rbuf).is_pending()
            }
        };
        self.reusable = open;
        open
    }

    /// Sends a request and reads the response head. The body is read after, with
    /// [`Self::poll_body`].
    pub async fn send(
        &mut self,
        head: Head<'_>,
        mut body: Body,
    ) -> Result<(StatusCode, fields::Head, Framing), H1Error> {
        let head_request = *head.method == Method::HEAD;
        let sending = self.encode_head(head, &body);
        let mut out = Outbound::new(sending, None);
        let mut sent = false;
        let head = poll_fn(|cx| {
            // The request, then the response, which may come before the request is complete.
            if !sent {
                match out.poll(&mut self.io, &mut self.wbuf, &mut body, cx) {
                    Poll::Ready(Ok(())) => sent = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
                if let Some(e) = out.broken.take() {
                    return Poll::Ready(Err(H1Error::Body(e)));
                }
            }
            loop {
                if !self.rbuf.is_empty() {
                    if let Some(head) = parse_head(&mut self.rbuf, head_request)? {
                        return Poll::Ready(Ok(head));
                    }
                }
                match poll_read_buf(Pin::new(&mut self.io), cx, reserve(&mut self.rbuf)) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Closed)),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        let (status, head, framing, keep_alive) = head?;
        // An answer before the whole request was sent leaves the connection mid-request.
        self.reusable &= keep_alive && sent && framing != Framing::UntilClose;
        Ok((status, head, framing))
    }

    /// The next piece of the response body, `None` at its end.
    pub fn poll_body(&mut self, cx: &mut Context<'_>, framing: &mut Framing) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            match framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !self.rbuf.is_empty() => {
                    let n = (*left).min(self.rbuf.len() as u64);
                    *left -= n;
                    return Poll::Ready(Some(Ok(self.rbuf.split_to(n as usize).freeze())));
                }
                Framing::UntilClose if !self.rbuf.is_empty() => {
                    return Poll::Ready(Some(Ok(self.rbuf.split().freeze())));
                }
                Framing::Chunked(state) => match decode_chunk(&mut self.rbuf, state)? {
                    Step::Data(data) => return Poll::Ready(Some(Ok(data))),
                    Step::End => {
                        *framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Step::NeedMore => {}
                },
                Framing::Length(_) | Framing::UntilClose => {}
            }
            match poll_read_buf(Pin::new(&mut self.io), cx, reserve(&mut self.rbuf)) {
                Poll::Ready(Ok(0)) if *framing == Framing::UntilClose => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(H1Error::Closed))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes the request line and headers into `wbuf`, adding the body's framing when the
    /// request does not state it.
    fn encode_head(&mut self, parts: Head<'_>, body: &Body) -> Sending {
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        let target = if *parts.method == Method::CONNECT {
            parts.uri.authority().map(|a| a.as_str())
        } else {
            parts.uri.path_and_query().map(|p| p.as_str())
        };
        w.extend_from_slice(target.unwrap_or("/").as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        let (mut length, mut chunked) = (false, false);
        parts.fields.write_h1(w, |name, value| {
            match name {
                b"content-length" => length = true,
                b"transfer-encoding" => chunked = last_token_is(value, b"chunked"),
                _ => {}
            }
            true
        });
        for &(name, value) in parts.added.fields.iter().flatten() {
            write_field(w, name, value);
        }
        if let Some(span) = parts.added.span {
            span.write_h1(w);
        }
        let sending = if chunked {
            Sending::Chunked
        } else if length {
            Sending::Raw
        } else if body.is_end_stream() {
            // What hyper does too: a method that carries a body says it is empty.
            if matches!(*parts.method, Method::POST | Method::PUT | Method::PATCH) {
                w.extend_from_slice(b"content-length: 0\r\n");
            }
            Sending::Nothing
        } else if let Some(n) = body.size_hint().exact() {
            let _ = write!(w, "content-length: {n}\r\n");
            Sending::Raw
        } else {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Sending::Chunked
        };
        w.extend_from_slice(b"\r\n");
        sending
    }
}

/// Room for the next read, reusing the buffer's allocation once what was split off is gone.
pub(super) fn reserve(buf: &mut BytesMut) -> &mut BytesMut {
    if buf.capacity() - buf.len() < READ_ROOM / 4 {
        buf.reserve(READ_ROOM);
    }
    buf
}

/// Writes one header line.
pub(super) fn write_field(w: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    write_line(w, name.as_str().as_bytes(), value.as_bytes());
}

/// Writes one header line from its bytes.
#[inline]
pub(crate) fn write_line(w: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    w.extend_from_slice(name);
    w.extend_from_slice(b": ");
    w.extend_from_slice(value);
    w.extend_from_slice(b"\r\n");
}

/// Appends body bytes in the framing the message was given.
pub(super) fn encode_data(w: &mut Vec<u8>, sending: Sending, data: &[u8]) {
    match sending {
        Sending::Chunked if data.is_empty() => {}
        Sending::Chunked => {
            let _ = write!(w, "{:x}\r\n", data.len());
            w.extend_from_slice(data);
            w.extend_from_slice(b"\r\n");
        }
        _ => w.extend_from_slice(data),
    }
}

/// Writes a message whose head is in `wbuf`, then its body: the body bytes that are ready are
/// gathered behind what is still unwritten, so a head and a small body leave in one write.
/// Where the stream takes vectored writes (TCP, TLS), a body's last piece (the only one of a
/// small body) is not copied but written from where it lies, by the same `writev` as what is
/// gathered before it.
pub(super) struct Outbound {
    written: usize,
    /// Body bytes that go out right after `wbuf[written..]`, uncopied.
    tail: Bytes,
    sending: Sending,
    body_done: bool,
    /// Body bytes the stated length still allows; more are cut (`None`: no stated length).
    left: Option<u64>,
    /// The body ran past its stated length.
    pub overran: bool,
    /// The body's error, when it broke: what was gathered is written, nothing after.
    pub broken: Option<BoxError>,
}

impl Outbound {
    pub(super) fn new(sending: Sending, left: Option<u64>) -> Outbound {
        let body_done = sending == Sending::Nothing;
        Outbound { written: 0, tail: Bytes::new(), sending, body_done, left, overran: false, broken: None }
    }

    /// Whether everything gathered is written and the body has nothing ready.
    pub(super) fn body_waits(&self, wbuf: &[u8]) -> bool {
        !self.body_done && self.written == wbuf.len() && self.tail.is_empty()
    }

    /// Body bytes the stated length expected and never got.
    pub(super) fn short(&self) -> bool {
        self.left.is_some_and(|l| l > 0)
    }

    /// Ready when the whole message is written and flushed.
    pub(super) fn poll<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        wbuf: &mut Vec<u8>,
        body: &mut Body,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.body_done && wbuf.len() - self.written + self.tail.len() < WRITE_BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(mut data) = frame.into_data() {
                            if let Some(left) = &mut self.left {
                                if data.len() as u64 > *left {
                                    data.truncate(*left as usize);
                                    self.overran = true;
                                }
                                *left -= data.len() as u64;
                            }
                            if self.written == wbuf.len() {
                                wbuf.clear();
                                self.written = 0;
                            }
                            if !self.tail.is_empty() {
                                // A body that said it was done went on: gathered, in order.
                                let first = std::mem::take(&mut self.tail);
                                encode_data(wbuf, self.sending, &first);
                                encode_data(wbuf, self.sending, &data);
                            } else if self.sending != Sending::Chunked
                                && io.is_write_vectored()
                                // Only a last piece is kept aside: an earlier one would keep the
                                // upstream's read buffer shared while its next read needs it.
                                && (self.left == Some(0) || body.is_end_stream())
                            {
                                self.tail = data;
                            } else {
                                encode_data(wbuf, self.sending, &data);
                            }
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.broken = Some(e);
                        self.body_done = true;
                    }
                    Poll::Ready(None) => {
                        self.body_done = true;
                        if self.sending == Sending::Chunked {
                            wbuf.extend_from_slice(b"0\r\n\r\n");
                        }
                    }
                    Poll::Pending => {}
                }
            }
            if self.written < wbuf.len() || !self.tail.is_empty() {
                let gathered = &wbuf[self.written..];
                let wrote = if self.tail.is_empty() {
                    Pin::new(&mut *io).poll_write(cx, gathered)
                } else if gathered.is_empty() {
                    Pin::new(&mut *io).poll_write(cx, &self.tail)
                } else {
                    let pieces = [IoSlice::new(gathered), IoSlice::new(&self.tail)];
                    Pin::new(&mut *io).poll_write_vectored(cx, &pieces)
                };
                match wrote {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        let from_wbuf = n.min(wbuf.len() - self.written);
                        self.written += from_wbuf;
                        self.tail.advance(n - from_wbuf);
                        if self.tail.is_empty() {
                            // Let go of the upstream's read buffer as soon as it is written.
                            self.tail = Bytes::new();
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // All gathered is written: flush what TLS buffered, now rather than with the next piece.
            let flushed = Pin::new(&mut *io).poll_flush(cx);
            if !self.body_done {
                return match flushed {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Pending,
                };
            }
            if flushed.is_ready() && wbuf.capacity() > WRITE_BATCH {
                *wbuf = Vec::new();
            }
            return flushed;
        }
    }
}

/// Parses a response head at the start of `buf`, skipping interim (1xx) responses. `None`: not
/// all of it has arrived. Header values are slices of the bytes read, not copies.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<ParsedHead>, H1Error> {
    // Most responses carry a few headers: the small parse leaves less stack to clear.
    match parse_sized::<FEW_HEADERS>(buf, head_request) {
        Err(H1Error::Invalid(TOO_MANY)) => parse_sized::<MAX_HEADERS>(buf, head_request),
        parsed => parsed,
    }
}

/// A response's status and head, how its body is framed, and whether the connection stays open
/// after it.
type ParsedHead = (StatusCode, fields::Head, Framing, bool);

const TOO_MANY: &str = "too many headers";

fn parse_sized<const N: usize>(buf: &mut BytesMut, head_request: bool) -> Result<Option<ParsedHead>, H1Error> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; N];
        let mut res = httparse::Response::new(&mut slots);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(H1Error::Invalid("head too large")),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Invalid(TOO_MANY)),
            Err(_) => return Err(H1Error::Invalid("malformed head")),
        };
        let code = res.code.unwrap_or(0);
        let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("status code"))?;
        if status.is_informational() && code != 101 {
            // 100 Continue and the like: the final response follows.
            buf.advance(len);
            continue;
        }
        // Where each field lies, so the head can be split off and passed on as it came.
        let fields: Vec<Field> = res.headers.iter().map(|h| Field::of(buf, h)).collect();
        // Names in lower case, as Envoy writes them, so that they compare as they are. What
        // frames the body and ends the connection is read on the way, not looked up after.
        let mut delimit = Delimiters::default();
        for f in &fields {
            lower_name(&mut buf[f.name_range()]);
            delimit.see(&buf[f.name_range()], &buf[f.value_range()]);
        }
        let mut head = fields::Head::new(buf.split_to(len).freeze(), fields);
        let framing = framing(&delimit, status, head_request)?;
        if delimit.chunked.is_some() && delimit.length != Ok(None) {
            // Transfer-Encoding overrides Content-Length (RFC 9112, 6.3); forwarding both would
            // let the next hop frame the body differently.
            head.remove(&CONTENT_LENGTH);
        }
        let keep_alive = match version {
            Version::HTTP_11 => !delimit.close,
            _ => delimit.keep_alive,
        } && code != 101;
        return Ok(Some((status, head, framing, keep_alive)));
    }
}

/// The fields of a response head that delimit its body and its connection.
#[derive(Debug, Clone, Copy)]
struct Delimiters {
    /// Whether the last `transfer-encoding` ends in `chunked`; None: no such field.
    chunked: Option<bool>,
    /// The `content-length` (every one must agree and be digits only).
    length: Result<Option<u64>, ()>,
    /// `connection: close`.
    close: bool,
    /// `connection: keep-alive`.
    keep_alive: bool,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters { chunked: None, length: Ok(None), close: false, keep_alive: false }
    }
}

impl Delimiters {
    /// Reads a field whose name is in lower case.
    fn see(&mut self, name: &[u8], value: &[u8]) {
        if name == b"transfer-encoding" {
            self.chunked = Some(last_token_is(value, b"chunked"));
        } else if name == b"content-length" {
            self.length = self.length.and_then(|seen| agreed_length(seen, value).map(Some).ok_or(()));
        } else if name == b"connection" {
            self.close |= has_token(value, b"close");
            self.keep_alive |= has_token(value, b"keep-alive");
        }
    }
}

/// A `content-length` value, if valid and the same as any seen before in the message (differing
/// lengths make it invalid: RFC 9112, section 6.3).
#[inline]
pub(super) fn agreed_length(seen: Option<u64>, value: &[u8]) -> Option<u64> {
    content_length(value).filter(|&n| seen.is_none_or(|l| l == n))
}

/// How the response body is delimited (RFC 9112, section 6.3).
fn framing(delimit: &Delimiters, status: StatusCode, head_request: bool) -> Result<Framing, H1Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Framing::UntilClose);
    }
    match (delimit.chunked, delimit.length) {
        (Some(true), _) => Ok(Framing::Chunked(Chunk::Size)),
        (Some(false), _) => Ok(Framing::UntilClose),
        (None, Ok(length)) => Ok(length.map_or(Framing::UntilClose, Framing::Length)),
        (None, Err(())) => Err(H1Error::Invalid("content-length")),
    }
}

/// One step through a chunked body in `buf`.
fn decode_chunk(buf: &mut BytesMut, state: &mut Chunk) -> Result<Step, H1Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(len) = line_len(buf)? else { return Ok(Step::NeedMore) };
                let digits = buf[..len].split(|&b| b == b';' || b == b' ' || b == b'\t').next().unwrap_or(&[]);
                if digits.is_empty() || digits.len() > 16 {
                    return Err(H1Error::Invalid("chunk size"));
                }
                let mut size: u64 = 0;
                for &d in digits {
                    let v = (d as char).to_digit(16).ok_or(H1Error::Invalid("chunk size"))?;
                    size = size << 4 | u64::from(v);
                }
                buf.advance(len + 2);
                *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = left.min(buf.len() as u64);
                *state = if n == left { Chunk::DataEnd } else { Chunk::Data(left - n) };
                return Ok(Step::Data(buf.split_to(n as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Invalid("chunk end"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some(len) = line_len(buf)? else { return Ok(Step::NeedMore) };
                buf.advance(len + 2);
                if len == 0 {
                    return Ok(Step::End);
                }
            }
        }
    }
}

/// The length of the CRLF-terminated line at the start of `buf`, without its CRLF.
fn line_len(buf: &BytesMut) -> Result<Option<usize>, H1Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() > MAX_LINE => Err(H1Error::Invalid("line too long")),
        None => Ok(None),
    }
}

/// A `content-length` value: digits only (no sign, no spaces), as RFC 9110 defines it.
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    // At most 19 digits: no overflow.
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether the comma-separated `value` lists `token` (case-insensitive).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last of the comma-separated codings in `value` is `token`.
pub(super) fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The head of a whole response in `text`, as [`Connection::send`] parses it.
#[cfg(test)]
pub(super) fn parse_response_head(text: &[u8]) -> fields::Head {
    let (_, head, _, _) = parse_head(&mut BytesMut::from(text), false).expect("a valid head").expect("a whole head");
    head
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use http::Request;

    use super::*;
    use crate::proxy::respond::full;

    #[test]
    fn names_are_lowered_as_make_ascii_lowercase_lowers_them() {
        let base = b"X-Envoy-Upstream-Rq-Timeout-Ms";
        // Every length (a whole word or not), and every byte in the first, a middle and the
        // last place of a word and of the rest.
        for len in 0..=base.len() {
            for at in [0, 3, 7, 8, 12, 15, 16, len.saturating_sub(1)] {
                for b in 0..=255u8 {
                    let mut name = base[..len].to_vec();
                    if at < len {
                        name[at] = b;
                    }
                    let mut want = name.clone();
                    want.make_ascii_lowercase();
                    lower_name(&mut name);
                    assert_eq!(name, want, "byte {b:#x} at {at} of {len}");
                }
            }
        }
    }

    /// A response head as a map, to check what the parse kept.
    fn parts(status: StatusCode, head: fields::Head) -> http::response::Parts {
        let answer = crate::proxy::answer::Answer { status, fields: Fields::Head(head), body: full("") };
        answer.into_response().into_parts().0
    }

    async fn send(conn: &mut Connection, req: Request<Body>) -> Result<(http::response::Parts, Framing), H1Error> {
        let (p, body) = crate::proxy::downstream::Call::from(req).into_parts();
        let (status, head, framing) = conn.send(Head::of(&p, Added::default()), body).await?;
        Ok((parts(status, head), framing))
    }

    fn head(bytes: &[u8], head_request: bool) -> (http::response::Parts, Framing, bool, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let (status, head, framing, keep) = parse_head(&mut buf, head_request).unwrap().expect("complete");
        (parts(status, head), framing, keep, buf)
    }

    #[test]
    fn a_head_is_parsed_once_and_the_body_bytes_stay() {
        let (parts, framing, keep, rest) =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello", false);
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(framing, Framing::Length(5));
        assert!(keep);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn a_head_with_many_headers_is_parsed_whole_and_too_many_is_an_error() {
        let head_with = |n: usize| {
            let mut h = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
            for i in 0..n {
                h.push_str(&format!("x-h{i}: {i}\r\n"));
            }
            h + "\r\n"
        };
        let (parts, _, _, _) = head(head_with(60).as_bytes(), false);
        assert_eq!(parts.headers.len(), 61);
        assert_eq!(parts.headers["x-h59"], "59");
        let mut buf = BytesMut::from(head_with(120).as_bytes());
        assert!(matches!(parse_head(&mut buf, false), Err(H1Error::Invalid(TOO_MANY))));
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let (parts, _, _, _) =
            head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n", false);
        assert_eq!(parts.status, 201);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut buf, false).unwrap().is_none());
        assert!(parse_head(&mut BytesMut::from(&b"HTTP/1.1 2x0 OK\r\n\r\n"[..]), false).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |bytes: &[u8], head_request| head(bytes, head_request).1;
        assert_eq!(f(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true), Framing::Done, "HEAD");
        assert_eq!(f(b"HTTP/1.1 204 No Content\r\n\r\n", false), Framing::Done);
        assert_eq!(f(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false), Framing::Done);
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n", false),
            Framing::Chunked(Chunk::Size),
            "transfer-encoding wins over content-length"
        );
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n", false), Framing::UntilClose);
        let conflicting = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n";
        assert!(parse_head(&mut BytesMut::from(&conflicting[..]), false).is_err());
        let signed = b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n";
        assert!(parse_head(&mut BytesMut::from(&signed[..]), false).is_err());
        let both = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", false);
        assert!(!both.0.headers.contains_key(CONTENT_LENGTH), "the length chunking overrides is not forwarded");
        let bad = b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n";
        assert_eq!(f(bad, true), Framing::Done, "a length a HEAD response does not use is not read");
        let chunked_bad = b"HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(f(chunked_bad, false), Framing::Chunked(Chunk::Size), "nor one chunking overrides");
        assert_eq!(content_length(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        assert_eq!(content_length(b"18"), Some(18));
        assert_eq!(content_length(b"00000000000000000001"), None, "over 19 digits");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!head(b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n", false).2);
        assert!(!head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false).2);
        assert!(head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", false).2);
    }

    #[test]
    fn chunked_bodies_decode_across_reads_and_drop_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n";
        // Fed one byte at a time, then all at once: the same body.
        for step in [1, wire.len()] {
            let mut buf = BytesMut::new();
            let mut state = Chunk::Size;
            let mut body = Vec::new();
            let mut fed = 0;
            loop {
                match decode_chunk(&mut buf, &mut state).unwrap() {
                    Step::Data(d) => body.extend_from_slice(&d),
                    Step::End => break,
                    Step::NeedMore => {
                        let end = (fed + step).min(wire.len());
                        buf.extend_from_slice(&wire[fed..end]);
                        fed = end;
                    }
                }
            }
            assert_eq!(body, b"hello world");
            assert!(buf.is_empty());
        }
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(decode_chunk(&mut bad, &mut Chunk::Size).is_err());
    }

    /// A server that answers each connection with `reply` once the request (up to its blank line
    /// and `body_len` bytes more) is in, and hands back what it read.
    async fn serve_once(reply: &'static [u8], body_len: usize) -> (Connection, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n")
                || got.len() < got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4 + body_len
            {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply).await.unwrap();
            // Hold the connection open until the client goes.
            let _ = s.read(&mut buf).await;
            got
        });
        let io = Io::Plain(TcpStream::connect(addr).await.unwrap());
        (Connection::new(io), server)
    }

    async fn body(conn: &mut Connection, mut framing: Framing) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = poll_fn(|cx| conn.poll_body(cx, &mut framing)).await {
            out.extend_from_slice(&piece.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_request_goes_out_in_one_head_and_the_response_streams_back() {
        let (mut conn, server) = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up: 1\r\n\r\nok", 4).await;
        let req = Request::post("/p?q=1").header("host", "backend").header("x-b3", "ab").body(full("ping")).unwrap();
        let (parts, framing) = send(&mut conn, req).await.unwrap();
        assert_eq!(parts.headers["x-up"], "1");
        assert_eq!(body(&mut conn, framing).await, b"ok");
        assert!(conn.is_open(), "kept for the next request");
        drop(conn);
        let wire = String::from_utf8(server.await.unwrap()).unwrap();
        assert_eq!(wire, "POST /p?q=1 HTTP/1.1\r\nhost: backend\r\nx-b3: ab\r\ncontent-length: 4\r\n\r\nping");
    }

    #[tokio::test]
    async fn a_streamed_request_body_is_chunked() {
        let (mut conn, server) =
            serve_once(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 13).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let stream = ChannelBody(rx).boxed();
        let req = Request::put("/up").header("host", "backend").body(stream).unwrap();
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        drop(tx);
        let (parts, framing) = send(&mut conn, req).await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(body(&mut conn, framing).await, b"ok");
        assert!(conn.is_open());
        drop(conn);
        let wire = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(wire.ends_with("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{wire}");
    }

    /// A body of unknown length, fed through a channel.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(http_body::Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_not_open_and_an_early_close_is_an_error() {
        let (mut conn, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", 0).await;
        let req = Request::get("/").header("host", "b").body(full("")).unwrap();
        let (_, framing) = send(&mut conn, req).await.unwrap();
        assert!(framing.is_end());
        assert!(!conn.is_open(), "the server said close");
        drop(conn);
        server.await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
        });
        let mut conn = Connection::new(Io::Plain(TcpStream::connect(addr).await.unwrap()));
        let req = Request::get("/").header("host", "b").body(full("")).unwrap();
        let (_, mut framing) = send(&mut conn, req).await.unwrap();
        let first = poll_fn(|cx| conn.poll_body(cx, &mut framing)).await.unwrap().unwrap();
        assert_eq!(&first[..], b"abc");
        let cut =
            tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| conn.poll_body(cx, &mut framing))).await.unwrap();
        assert!(matches!(cut, Some(Err(H1Error::Closed))), "{cut:?}");
    }

    /// A writer that takes at most `step` bytes a call, is not ready every other call, and
    /// records what each call offered.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        vectored: bool,
        /// Bytes offered by each call that wrote.
        offered: Vec<usize>,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let offered = bufs.iter().map(|b| b.len()).sum();
            self.offered.push(offered);
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes a head, then a body of `pieces` through `Outbound` into a `Trickle`; with `late`,
    /// each piece comes after the writer was polled. Returns the writer and what was left
    /// gathered in the write buffer.
    async fn write_out(
        pieces: &[&'static [u8]],
        sending: Sending,
        step: usize,
        vectored: bool,
        late: bool,
    ) -> (Trickle, Vec<u8>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(pieces.len());
        let pieces = pieces.to_vec();
        let length = (sending == Sending::Raw).then(|| pieces.iter().map(|p| p.len() as u64).sum());
        let feed = tokio::spawn(async move {
            for p in pieces {
                if late {
                    tokio::task::yield_now().await;
                }
                tx.send(Bytes::from_static(p)).await.unwrap();
            }
        });
        if !late {
            feed.await.unwrap();
        }
        let mut body = ChannelBody(rx).boxed();
        let mut io = Trickle { out: Vec::new(), step, vectored, offered: Vec::new(), ready: false };
        let mut wbuf = b"HEAD\r\n\r\n".to_vec();
        let mut out = Outbound::new(sending, length);
        poll_fn(|cx| out.poll(&mut io, &mut wbuf, &mut body, cx)).await.unwrap();
        (io, wbuf)
    }

    #[tokio::test]
    async fn a_body_goes_out_behind_its_head_in_order_however_few_bytes_each_write_takes() {
        for vectored in [true, false] {
            // One write takes head and body: gathered, or the body's piece written where it lies.
            let (io, wbuf) = write_out(&[b"0123456789"], Sending::Raw, 1 << 20, vectored, false).await;
            assert_eq!(io.out, b"HEAD\r\n\r\n0123456789");
            assert_eq!(io.offered, [18]);
            // Copied behind the head only for a stream that takes one piece a write.
            assert_eq!(wbuf.len(), if vectored { 8 } else { 18 });
            for (step, late) in [1, 3, 7, 8, 9, 64].into_iter().flat_map(|step| [(step, false), (step, true)]) {
                let (io, _) = write_out(&[b"0123456789"], Sending::Raw, step, vectored, late).await;
                assert_eq!(io.out, b"HEAD\r\n\r\n0123456789", "step {step}");
                let (io, _) = write_out(&[b"abc", b"defg", b"h"], Sending::Raw, step, vectored, late).await;
                assert_eq!(io.out, b"HEAD\r\n\r\nabcdefgh", "step {step}");
                let (io, _) = write_out(&[b"abc", b"defg"], Sending::Chunked, step, vectored, late).await;
                assert_eq!(io.out, b"HEAD\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", "step {step}");
            }
        }
    }
}
