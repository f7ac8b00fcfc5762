//! Access logs in Istio's default TEXT format, one line per request per
//! proxy. The request task only hands a record to a channel; formatting and
//! storing happen on the logger task, off the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

/// One request as a proxy saw it.
#[derive(Debug)]
pub struct Record {
    /// The proxy (pod name, or `istio-ingressgateway`).
    pub proxy: Arc<str>,
    /// When the request started.
    pub start: SystemTime,
    /// Method.
    pub method: String,
    /// Path and query as received (before any rewrite).
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Status sent downstream.
    pub status: u16,
    /// Envoy's response flags, `-` for none.
    pub flags: String,
    /// Envoy's response code details.
    pub details: &'static str,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes (from content-length).
    pub bytes_sent: u64,
    /// Milliseconds until the response headers.
    pub duration_ms: u64,
    /// `x-envoy-upstream-service-time`.
    pub upstream_service_time: Option<String>,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `:authority`.
    pub authority: String,
    /// The upstream endpoint.
    pub upstream_host: Option<SocketAddr>,
    /// The upstream cluster.
    pub upstream_cluster: Option<Arc<str>>,
    /// The listener address.
    pub downstream_local: Option<SocketAddr>,
    /// The client address.
    pub downstream_remote: SocketAddr,
    /// The route name.
    pub route: Option<String>,
}

fn dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, h, m, sec) = crate::load::gofmt::civil_utc(d.as_secs());
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{:03}Z", d.subsec_millis())
}

impl Record {
    /// The line in Istio's default TEXT format (`EnvoyTextLogFormat`).
    pub fn text(&self) -> String {
        let opt = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        format!(
            "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} - {}",
            timestamp(self.start),
            self.method,
            self.path,
            self.protocol,
            self.status,
            self.flags,
            self.details,
            self.bytes_received,
            self.bytes_sent,
            self.duration_ms,
            dash(&self.upstream_service_time),
            dash(&self.forwarded_for),
            dash(&self.user_agent),
            dash(&self.request_id),
            self.authority,
            opt(&self.upstream_host),
            self.upstream_cluster.as_deref().unwrap_or("-"),
            opt(&self.downstream_local),
            self.downstream_remote,
            dash(&self.route),
        )
    }
}

/// Where proxies send their records.
#[derive(Debug, Clone)]
pub struct AccessLog(mpsc::UnboundedSender<Record>);

impl AccessLog {
    /// Starts the logger task: lines go to `logs` under `<proxy>/istio-proxy`, and to stdout if `print`.
    pub fn start(logs: crate::logs::Logs, print: bool) -> AccessLog {
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        tokio::spawn(async move {
            let mut sinks: std::collections::HashMap<Arc<str>, demo_apps::LogSink> = Default::default();
            while let Some(r) = rx.recv().await {
                let line = r.text();
                if print {
                    println!("{} {line}", r.proxy);
                }
                let sink =
                    sinks.entry(r.proxy.clone()).or_insert_with(|| logs.sink(&format!("{}/istio-proxy", r.proxy)));
                sink(&line);
            }
        });
        AccessLog(tx)
    }

    /// Hands a record to the logger (never blocks).
    pub fn send(&self, r: Record) {
        let _ = self.0.send(r);
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
            method: "GET".into(),
            path: "/reviews/0".into(),
            protocol: "HTTP/1.1",
            status: 503,
            flags: "NC".into(),
            details: "cluster_not_found",
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0,
            upstream_service_time: None,
            forwarded_for: None,
            user_agent: Some("curl/8.11.1".into()),
            request_id: Some("abc".into()),
            authority: "reviews:9080".into(),
            upstream_host: None,
            upstream_cluster: None,
            downstream_local: None,
            downstream_remote: "10.244.0.12:54662".parse().unwrap(),
            route: None,
        };
        assert_eq!(
            r.text(),
            "[2023-11-14T22:13:20.123Z] \"GET /reviews/0 HTTP/1.1\" 503 NC cluster_not_found - \"-\" 0 0 0 - \"-\" \"curl/8.11.1\" \"abc\" \"reviews:9080\" \"-\" - - - 10.244.0.12:54662 - -"
        );
    }
}
