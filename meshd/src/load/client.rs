//! One keep-alive HTTP/1.1 connection to the sidecar proxy, sending
//! absolute-form requests like a client configured with an HTTP proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::stats::Histogram;

/// fortio's version string, used in the banner and the User-Agent.
pub const FORTIO_VERSION: &str = "1.75.2";

/// Everything needed to (re)build the request for each call.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// The URL as given by the user (after adding a missing `http://`).
    pub url: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    payload: Bytes,
}

impl RequestSpec {
    /// Validates the URL and `-H` headers; `method` empty means the default.
    pub fn new(
        url: &str,
        headers: &[String],
        method: &str,
        payload: Option<&[u8]>,
        content_type: Option<&str>,
    ) -> anyhow::Result<Self> {
        let url = url.trim_start().to_string();
        let uri: Uri = url.parse().map_err(|e| anyhow::anyhow!("invalid url {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                anyhow::bail!("unsupported scheme {other:?} in {url:?}: only http:// is sent via the sidecar")
            }
            None => anyhow::bail!("missing http:// scheme in {url:?}"),
        }
        let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("missing host in url {url:?}"))?;
        // Always send a path: `http://host:port` means `/`.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("http://{}{}", authority, if path.is_empty() { "/" } else { path }).parse()?;
        let host = authority.as_str().rsplit('@').next().unwrap_or(authority.as_str()).to_string();
        let payload = Bytes::copy_from_slice(payload.unwrap_or_default());
        let mut map = HeaderMap::new();
        map.insert(HOST, HeaderValue::from_str(&host)?);
        map.insert(USER_AGENT, HeaderValue::from_str(&format!("fortio.org/fortio-{FORTIO_VERSION}"))?);
        if let Some(ct) = content_type.filter(|c| !c.is_empty()) {
            map.insert(CONTENT_TYPE, HeaderValue::from_str(ct)?);
        } else if !payload.is_empty() {
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        }
        for h in headers {
            let (k, v) =
                h.split_once(':').ok_or_else(|| anyhow::anyhow!("invalid extra header {h:?}, expecting Key: Value"))?;
            let name = HeaderName::from_bytes(k.trim().as_bytes())?;
            let value = HeaderValue::from_str(v.trim())?;
            // Host and User-Agent replace the defaults; other headers add up.
            if name == HOST || name == USER_AGENT {
                map.insert(name, value);
            } else {
                map.append(name, value);
            }
        }
        let method = if method.is_empty() {
            if payload.is_empty() && content_type.is_none() {
                Method::GET
            } else {
                Method::POST
            }
        } else {
            Method::from_bytes(method.to_ascii_uppercase().as_bytes())?
        };
        Ok(RequestSpec { url, method, uri, headers: map, payload })
    }

    fn build(&self) -> Result<Request<Full<Bytes>>, String> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .version(Version::HTTP_11)
            .body(Full::new(self.payload.clone()))
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Fetched {
    /// Status line parts and headers.
    pub parts: http::response::Parts,
    /// The complete body.
    pub body: Bytes,
}

impl Fetched {
    /// Approximate size of the status line plus headers on the wire
    /// (hyper does not expose the raw bytes).
    pub fn header_size(&self) -> u64 {
        let status = self.status_line().len() + 2;
        let headers: usize = self.parts.headers.iter().map(|(k, v)| k.as_str().len() + 2 + v.len() + 2).sum();
        (status + headers + 2) as u64
    }

    /// `HTTP/1.1 200 OK` (reason phrase from the status code).
    pub fn status_line(&self) -> String {
        let version = match self.parts.version {
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let status = self.parts.status;
        match status.canonical_reason() {
            Some(reason) => format!("{version} {} {reason}", status.as_u16()),
            None => format!("{version} {}", status.as_u16()),
        }
    }

    /// Whether the server will close the connection after this response.
    fn closes(&self) -> bool {
        let has_token = |token: &str| {
            self.parts
                .headers
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match self.parts.version {
            Version::HTTP_10 => !has_token("keep-alive"),
            _ => has_token("close"),
        }
    }
}

/// Why a call yielded code -1.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// TCP connect or HTTP handshake failed.
    Connect(String),
    /// The request failed after connecting.
    Io(String),
    /// No complete response within the timeout.
    Timeout,
}

/// One connection slot of a worker, reopened as needed.
pub struct Client {
    proxy: SocketAddr,
    keepalive: bool,
    sender: Option<SendRequest<Full<Bytes>>>,
    conn_task: Option<JoinHandle<()>>,
    /// Whether the current connection already carried a response (a failure
    /// on such a connection may just be a stale keep-alive: retry once).
    reused: bool,
    /// Successfully opened sockets.
    pub sockets: u64,
    /// Connect durations in seconds.
    pub connect_times: Histogram,
}

impl Client {
    /// New client; no connection is opened until the first call.
    pub fn new(proxy: SocketAddr, keepalive: bool, offset: f64, resolution: f64) -> Self {
        Client {
            proxy,
            keepalive,
            sender: None,
            conn_task: None,
            reused: false,
            sockets: 0,
            connect_times: Histogram::new(offset, resolution),
        }
    }

    /// Drops the current connection (aborting its task closes the socket now).
    pub fn reset(&mut self) {
        self.sender = None;
        self.reused = false;
        if let Some(task) = self.conn_task.take() {
            task.abort();
        }
    }

    async fn connect(&mut self) -> Result<(), FetchError> {
        self.reset();
        let start = Instant::now();
        let stream = TcpStream::connect(self.proxy)
            .await
            .map_err(|e| FetchError::Connect(format!("Unable to connect to {} : {e}", self.proxy)))?;
        // Small requests: don't let Nagle delay them.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| FetchError::Connect(format!("Handshake with {} failed : {e}", self.proxy)))?;
        self.connect_times.record(start.elapsed().as_secs_f64());
        self.sockets += 1;
        self.conn_task = Some(tokio::spawn(async move {
            // Errors surface through the sender; nothing to report here.
            let _ = conn.await;
        }));
        self.sender = Some(sender);
        Ok(())
    }

    /// Makes sure a live connection is open, opening one when needed.
    async fn ensure_conn(&mut self) -> Result<(), FetchError> {
        let alive = match self.sender.as_mut() {
            Some(s) if !s.is_closed() => s.ready().await.is_ok(),
            _ => false,
        };
        if !alive {
            self.connect().await?;
        }
        Ok(())
    }

    async fn attempt(&mut self, spec: &RequestSpec) -> Result<Fetched, (FetchError, bool)> {
        self.ensure_conn().await.map_err(|e| (e, false))?;
        let req = spec.build().map_err(|e| (FetchError::Io(e), false))?;
        let was_reused = self.reused;
        let Some(sender) = self.sender.as_mut() else {
            return Err((FetchError::Connect("no connection".to_string()), false));
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.reset();
                return Err((FetchError::Io(format!("Unable to send/read response : {e}")), was_reused));
            }
        };
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.reset();
                return Err((FetchError::Io(format!("Error reading body : {e}")), false));
            }
        };
        let fetched = Fetched { parts, body };
        // fortio keeps a socket only after an OK code (2xx or 418): after a 503 it closes it
        // and the next call connects again, which the circuit-breaking task's `Sockets used`
        // line shows.
        let ok = super::runner::code_is_ok(i32::from(fetched.parts.status.as_u16()));
        if fetched.closes() || !self.keepalive || !ok {
            // Reconnect for the next call rather than racing hyper's close.
            self.reset();
        } else {
            self.reused = true;
        }
        Ok(fetched)
    }

    /// Sends one request and reads the whole response within `timeout`.
    pub async fn fetch(&mut self, spec: &RequestSpec, timeout: Duration) -> Result<Fetched, FetchError> {
        let res = tokio::time::timeout(timeout, async {
            match self.attempt(spec).await {
                Ok(f) => Ok(f),
                // A reused keep-alive socket may have been closed by the
                // server meanwhile: retry once on a fresh one, like fortio.
                Err((_, true)) => self.attempt(spec).await.map_err(|(e, _)| e),
                Err((e, false)) => Err(e),
            }
        })
        .await;
        match res {
            Ok(r) => r,
            Err(_) => {
                self.reset();
                Err(FetchError::Timeout)
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reset();
    }
}
