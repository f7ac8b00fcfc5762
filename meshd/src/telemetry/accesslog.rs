//! Access logs in Istio's default TEXT format (or its JSON format), one line
//! per request per proxy. Formatting happens on the telemetry task, off the
//! request path: the record holds cheap clones of what the request carried.

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
    pub details: &'static str,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes (from content-length).
    pub bytes_sent: u64,
    /// Microseconds until the response headers.
    pub duration_us: u64,
    /// `x-envoy-upstream-service-time`.
    pub upstream_service_time: Option<HeaderValue>,
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
    pub route: Option<String>,
    /// This proxy's span.
    pub span: Option<SpanContext>,
    /// The metric label set the request counted in (names the peers of the span).
    pub series: Option<Arc<Series>>,
}

fn hv(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, h, m, sec) = crate::load::gofmt::civil_utc(d.as_secs());
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{:03}Z", d.subsec_millis())
}

impl Record {
    fn path(&self) -> &str {
        self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    }

    fn authority(&self) -> &str {
        match &self.authority {
            Some(v) => v.to_str().unwrap_or("-"),
            None => self.uri.authority().map(|a| a.as_str()).unwrap_or("-"),
        }
    }

    /// Milliseconds as Envoy's `%DURATION%`.
    pub fn duration_ms(&self) -> u64 {
        self.duration_us / 1000
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
            self.duration_ms(),
            hv(&self.upstream_service_time),
            hv(&self.forwarded_for),
            hv(&self.user_agent),
            hv(&self.request_id),
            self.authority(),
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
        let h = |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string);
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
            "duration": self.duration_ms(),
            "upstream_service_time": h(&self.upstream_service_time),
            "x_forwarded_for": h(&self.forwarded_for),
            "user_agent": h(&self.user_agent),
            "request_id": h(&self.request_id),
            "authority": self.authority(),
            "upstream_host": opt(&self.upstream_host),
            "upstream_cluster": self.upstream_cluster.as_ref().map(|c| c.name.as_str()),
            "upstream_local_address": null,
            "downstream_local_address": opt(&self.downstream_local),
            "downstream_remote_address": self.downstream_remote.to_string(),
            "requested_server_name": null,
            "route_name": self.route,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_text_format() {
        let r = Record {
            proxy: "reviews-v1".into(),
            start: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            method: Method::GET,
            uri: Uri::from_static("/reviews/0"),
            protocol: "HTTP/1.1",
            status: 503,
            flags: "NC".into(),
            details: "cluster_not_found",
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
        };
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
    }
}
