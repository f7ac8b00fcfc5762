//! Access logs in Istio's default TEXT format (or its JSON format), one line
//! per request per proxy. The request task hands over a [`Record`] of cheap
//! clones; the telemetry writer packs it into an [`Entry`]; a line is formatted
//! only when the log is read (or printed with `--access-log`).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method, Uri};

use super::metrics::Series;
use super::trace::SpanContext;
use crate::snapshot::Cluster;

/// One request as a proxy saw it.
#[derive(Debug)]
pub struct Record {
    /// The proxy (pod name, or `istio-ingressgateway`).
    pub proxy: Arc<str>,
    /// When the request started.
    pub start: SystemTime,
    /// Method.
    pub method: Method,
    /// The request target as received (before any rewrite).
    pub uri: Uri,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Status sent downstream.
    pub status: u16,
    /// Envoy's response flags, `-` for none.
    pub flags: Cow<'static, str>,
    /// Envoy's response code details.
    pub details: Cow<'static, str>,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes (from content-length).
    pub bytes_sent: u64,
    /// Microseconds until the response headers.
    pub duration_us: u64,
    /// `x-envoy-upstream-service-time`, in milliseconds: spelled only when a line is shown.
    pub upstream_service_time: Option<u32>,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<HeaderValue>,
    /// `user-agent`.
    pub user_agent: Option<HeaderValue>,
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// `:authority` (the Host header).
    pub authority: Option<HeaderValue>,
    /// The upstream endpoint.
    pub upstream_host: Option<SocketAddr>,
    /// The upstream cluster.
    pub upstream_cluster: Option<Arc<Cluster>>,
    /// The listener address.
    pub downstream_local: Option<SocketAddr>,
    /// The client address.
    pub downstream_remote: SocketAddr,
    /// The route name.
    pub route: Option<Arc<str>>,
    /// This proxy's span.
    pub span: Option<SpanContext>,
    /// The metric label set the request counted in (names the peers of the span).
    pub series: Option<Arc<Series>>,
}

/// Header-borne fields of an [`Entry`], in the order they are packed.
#[derive(Debug, Clone, Copy)]
enum Field {
    Path,
    Authority,
    UserAgent,
    ForwardedFor,
    RequestId,
}

const FIELDS: usize = 5;

/// A request as kept for the access log and the trace store: what the [`Record`] borrowed from
/// the request is copied into one buffer, so nothing keeps a connection's read buffer alive,
/// and the line is only formatted (and the bytes read as text) when somebody reads it.
#[derive(Debug)]
pub struct Entry {
    /// The proxy.
    pub proxy: Arc<str>,
    /// When the request started.
    pub start: SystemTime,
    /// Method.
    pub method: Method,
    protocol: &'static str,
    /// Status sent downstream.
    pub status: u16,
    /// Envoy's response flags, `-` for none.
    pub flags: Cow<'static, str>,
    details: Cow<'static, str>,
    bytes_received: u64,
    bytes_sent: u64,
    /// Microseconds until the response headers.
    pub duration_us: u64,
    upstream_service_time: Option<u32>,
    /// The packed header-borne fields, and where each ends (absent: `None`).
    packed: Box<[u8]>,
    ends: [Option<u16>; FIELDS],
    upstream_host: Option<SocketAddr>,
    /// The upstream cluster.
    pub upstream_cluster: Option<Arc<Cluster>>,
    downstream_local: Option<SocketAddr>,
    downstream_remote: SocketAddr,
    route: Option<Arc<str>>,
    /// This proxy's span.
    pub span: Option<SpanContext>,
    /// The metric label set the request counted in (names the peers of the span).
    pub series: Option<Arc<Series>>,
}

impl From<Box<Record>> for Entry {
    /// Takes the fields out of the box one by one: unboxing the whole record first would copy
    /// its 600-odd bytes once more.
    fn from(r: Box<Record>) -> Entry {
        let authority =
            r.authority.as_ref().map(|v| v.as_bytes()).or_else(|| r.uri.authority().map(|a| a.as_str().as_bytes()));
        let path = r.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes();
        let fields: [Option<&[u8]>; FIELDS] = [
            Some(path),
            authority,
            r.user_agent.as_ref().map(|v| v.as_bytes()),
            r.forwarded_for.as_ref().map(|v| v.as_bytes()),
            r.request_id.as_ref().map(|v| v.as_bytes()),
        ];
        let mut packed = Vec::with_capacity(fields.iter().flatten().map(|f| f.len()).sum());
        let mut ends = [None; FIELDS];
        for (end, field) in ends.iter_mut().zip(fields) {
            if let Some(f) = field {
                packed.extend_from_slice(f);
                *end = u16::try_from(packed.len()).ok();
            }
        }
        Entry {
            proxy: r.proxy,
            start: r.start,
            method: r.method,
            protocol: r.protocol,
            status: r.status,
            flags: r.flags,
            details: r.details,
            bytes_received: r.bytes_received,
            bytes_sent: r.bytes_sent,
            duration_us: r.duration_us,
            upstream_service_time: r.upstream_service_time,
            packed: packed.into_boxed_slice(),
            ends,
            upstream_host: r.upstream_host,
            upstream_cluster: r.upstream_cluster,
            downstream_local: r.downstream_local,
            downstream_remote: r.downstream_remote,
            route: r.route,
            span: r.span,
            series: r.series,
        }
    }
}

/// RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
fn timestamp(t: SystemTime) -> String {
    demo_apps::Civil::from_system_time(t).rfc3339_millis()
}

impl Entry {
    /// When the request ended, in microseconds since the epoch: the order entries from several
    /// workers' rings and stores are merged in.
    pub fn ended_us(&self) -> u64 {
        self.start.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64) + self.duration_us
    }

    fn field(&self, f: Field) -> Option<Cow<'_, str>> {
        let i = f as usize;
        let end = usize::from(self.ends[i]?);
        let start = self.ends[..i].iter().rev().flatten().next().map_or(0, |e| usize::from(*e));
        let bytes = self.packed.get(start..end)?;
        // Header values may hold obs-text; the log shows their visible-ASCII form.
        Some(match std::str::from_utf8(bytes) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(bytes.iter().map(|&b| if b.is_ascii() { b as char } else { '?' }).collect()),
        })
    }

    /// The request target as received.
    pub fn path(&self) -> Cow<'_, str> {
        self.field(Field::Path).unwrap_or(Cow::Borrowed("/"))
    }

    fn dash(&self, f: Field) -> Cow<'_, str> {
        self.field(f).unwrap_or(Cow::Borrowed("-"))
    }

    /// The line in Istio's default TEXT format (`EnvoyTextLogFormat`).
    pub fn text(&self) -> String {
        let opt = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        format!(
            "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} - {}",
            timestamp(self.start),
            self.method,
            self.path(),
            self.protocol,
            self.status,
            self.flags,
            self.details,
            self.bytes_received,
            self.bytes_sent,
            self.duration_us / 1000,
            self.upstream_service_time.map_or(Cow::Borrowed("-"), |ms| Cow::Owned(ms.to_string())),
            self.dash(Field::ForwardedFor),
            self.dash(Field::UserAgent),
            self.dash(Field::RequestId),
            self.dash(Field::Authority),
            opt(&self.upstream_host),
            self.upstream_cluster.as_ref().map_or("-", |c| c.name.as_str()),
            opt(&self.downstream_local),
            self.downstream_remote,
            self.route.as_deref().unwrap_or("-"),
        )
    }

    /// The line in Istio's JSON format (`meshConfig.accessLogEncoding: JSON`), keys as Istio names them.
    pub fn json(&self) -> String {
        let opt = |a: &Option<SocketAddr>| a.map(|a| a.to_string());
        serde_json::json!({
            "start_time": timestamp(self.start),
            "method": self.method.as_str(),
            "path": self.path(),
            "protocol": self.protocol,
            "response_code": self.status,
            "response_flags": self.flags,
            "response_code_details": self.details,
            "connection_termination_details": null,
            "upstream_transport_failure_reason": null,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "duration": self.duration_us / 1000,
            "upstream_service_time": self.upstream_service_time.map(|ms| ms.to_string()),
            "x_forwarded_for": self.field(Field::ForwardedFor),
            "user_agent": self.field(Field::UserAgent),
            "request_id": self.field(Field::RequestId),
            "authority": self.dash(Field::Authority),
            "upstream_host": opt(&self.upstream_host),
            "upstream_cluster": self.upstream_cluster.as_ref().map(|c| c.name.as_str()),
            "upstream_local_address": null,
            "downstream_local_address": opt(&self.downstream_local),
            "downstream_remote_address": self.downstream_remote.to_string(),
            "requested_server_name": null,
            "route_name": self.route.as_deref(),
        })
        .to_string()
    }
}

/// The record of a request the mesh could not route (Istio's `NC`).
#[cfg(test)]
pub(crate) fn reviews() -> Record {
    Record {
        proxy: "reviews-v1".into(),
        start: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
        method: Method::GET,
        uri: Uri::from_static("/reviews/0"),
        protocol: "HTTP/1.1",
        status: 503,
        flags: "NC".into(),
        details: "cluster_not_found".into(),
        bytes_received: 0,
        bytes_sent: 0,
        duration_us: 0,
        upstream_service_time: None,
        forwarded_for: None,
        user_agent: Some(HeaderValue::from_static("curl/8.11.1")),
        request_id: Some(HeaderValue::from_static("abc")),
        authority: Some(HeaderValue::from_static("reviews:9080")),
        upstream_host: None,
        upstream_cluster: None,
        downstream_local: None,
        downstream_remote: "10.244.0.12:54662".parse().unwrap(),
        route: None,
        span: None,
        series: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_text_format() {
        let r = Entry::from(Box::new(reviews()));
        assert_eq!(
            r.text(),
            "[2023-11-14T22:13:20.123Z] \"GET /reviews/0 HTTP/1.1\" 503 NC cluster_not_found - \"-\" 0 0 0 - \"-\" \"curl/8.11.1\" \"abc\" \"reviews:9080\" \"-\" - - - 10.244.0.12:54662 - -"
        );
        let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(j["response_code"], 503);
        assert_eq!(j["response_flags"], "NC");
        assert_eq!(j["authority"], "reviews:9080");
        assert_eq!(j["upstream_cluster"], serde_json::Value::Null);
        assert_eq!(j["start_time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(j["user_agent"], "curl/8.11.1");
        assert_eq!(j["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(r.path(), "/reviews/0");
    }

    #[test]
    fn obs_text_is_shown_as_visible_ascii() {
        let r = Record {
            user_agent: Some(HeaderValue::from_bytes(b"caf\xe9 \xc3\xa9").unwrap()),
            request_id: Some(HeaderValue::from_bytes("café".as_bytes()).unwrap()),
            ..reviews()
        };
        let e = Entry::from(Box::new(r));
        let j: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(j["user_agent"], "caf? ??", "bytes that are not UTF-8 show as '?'");
        assert_eq!(j["request_id"], "café", "UTF-8 is kept");
        assert!(e.text().contains("\"caf? ??\" \"café\""), "{}", e.text());
    }
}
