//! Small helpers shared by the apps: env lookups, the outbound client, serving, escaping, encodings and clocks.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use http::HeaderMap;
use tokio::net::TcpListener;

/// Headers every Bookinfo app copies verbatim from the incoming request to its outgoing calls
/// (productpage `getForwardHeaders`, details `get_forward_headers`, reviews `headers_to_propagate`).
pub(crate) const PROPAGATED: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// The extra headers reviews (and details) forward as-is, on top of [`PROPAGATED`]; productpage
/// re-injects B3 through OpenTelemetry instead, so it does not use this list.
pub(crate) const B3_AND_USER: &[&str] =
    &["x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "end-user"];

/// Looks up a non-empty env value.
pub(crate) fn env_nonempty<'a>(env: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// Builds `http://{HOST|default}{.SERVICES_DOMAIN}:{PORT|9080}` the way the Bookinfo apps do.
///
/// An empty `SERVICES_DOMAIN` is treated as unset: upstream would append a bare `.`, which no
/// resolver accepts, so honouring it would only break the demo.
pub(crate) fn backend_base(
    env: &HashMap<String, String>,
    host_key: &str,
    default_host: &str,
    port_key: &str,
) -> String {
    let host = env_nonempty(env, host_key).unwrap_or(default_host);
    let domain = env_nonempty(env, "SERVICES_DOMAIN").map(|d| format!(".{d}")).unwrap_or_default();
    let port = env_nonempty(env, port_key).unwrap_or("9080");
    format!("http://{host}{domain}:{port}")
}

/// The HTTP client an app uses for calls to other services.
///
/// With a sidecar every call goes through it as an HTTP proxy; without one the process' own
/// `http_proxy` must not leak in, hence `no_proxy`. Idle connections are not pooled: the Python
/// and Java originals open a fresh connection per call, and reusing a connection the sidecar has
/// already closed would surface as a spurious "unavailable" on the page.
pub(crate) fn outbound_client(proxy: Option<SocketAddr>) -> io::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().pool_max_idle_per_host(0);
    let builder = match proxy {
        Some(addr) => builder.proxy(reqwest::Proxy::http(format!("http://{addr}")).map_err(io_err)?),
        None => builder.no_proxy(),
    };
    builder.build().map_err(io_err)
}

/// Wraps any error as an `io::Error` for the `serve` signature.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Serves an axum router until the returned future is dropped.
///
/// The server runs in its own task so that dropping this future can still shut it down
/// gracefully: idle keep-alive connections close at once, so a caller's pooled connection cannot
/// keep talking to an app instance that has been stopped.
pub(crate) async fn serve_router(router: Router, listener: TcpListener) -> io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            // Resolves when the sender is dropped together with the outer future.
            let _ = stop_rx.await;
        });
    let task = tokio::spawn(server.into_future());
    let _stop_on_drop = stop_tx;
    match task.await {
        Ok(res) => res,
        Err(e) => Err(io_err(e)),
    }
}

/// Copies the first value of each named header that is present.
pub(crate) fn copy_headers(from: &HeaderMap, names: &[&'static str], to: &mut HeaderMap) {
    for name in names {
        if let Some(v) = from.get(*name) {
            to.insert(*name, v.clone());
        }
    }
}

/// First value of a header as text, if it is valid visible ASCII.
pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// HTML-escapes text the way Jinja2/MarkupSafe does.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64-encodes with the standard or URL-safe alphabet, with or without `=` padding.
pub(crate) fn base64_encode(data: &[u8], url_safe: bool, pad: bool) -> String {
    let alphabet = if url_safe { B64_URL } else { B64_STD };
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes URL-safe base64 (padding optional); None on any invalid input.
pub(crate) fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64_URL.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space; bad `%` escapes stay).
pub(crate) fn form_decode(s: &str) -> String {
    percent_decode(s, true)
}

/// Percent-decodes text, optionally reading `+` as a space; malformed escapes are kept literally.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string or urlencoded body into ordered key/value pairs.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(p), String::new()),
        })
        .collect()
}

/// A UTC wall-clock time broken into calendar fields, for log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

impl Civil {
    /// The current time in UTC.
    pub(crate) fn now() -> Civil {
        Civil::from_system_time(SystemTime::now())
    }

    /// `t` in UTC, to the millisecond (times before the epoch read as the epoch).
    pub fn from_system_time(t: SystemTime) -> Civil {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Civil::from_unix_millis(since.as_millis() as i64)
    }

    /// Converts milliseconds since the Unix epoch (days-to-civil conversion on the proleptic
    /// Gregorian calendar).
    pub fn from_unix_millis(ms: i64) -> Civil {
        let secs = ms.div_euclid(1000);
        let millis = ms.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: (sod % 3600 / 60) as u32,
            second: (sod % 60) as u32,
            millis,
        }
    }

    /// `2026-11-21T10:00:00.000Z` (Go slog's text handler in a UTC container).
    pub fn rfc3339_millis(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `2026-11-21 10:00:00` (gunicorn and WEBrick startup lines).
    pub(crate) fn ymd_hms(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `21/Nov/2026:10:00:00 +0000` (Apache common log format, as gunicorn writes it).
    pub(crate) fn clf(&self) -> String {
        let mon = MONTHS.get(self.month.saturating_sub(1) as usize).copied().unwrap_or("Jan");
        format!("{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000", self.day, mon, self.year, self.hour, self.minute, self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let c = Civil::from_unix_millis(0);
        assert_eq!(c.rfc3339_millis(), "1970-01-01T00:00:00.000Z");
        // 2026-11-21T10:00:00.123Z
        let c = Civil::from_unix_millis(1_795_255_200_123);
        assert_eq!(c.rfc3339_millis(), "2026-11-21T10:00:00.123Z");
        assert_eq!(c.clf(), "21/Nov/2026:10:00:00 +0000");
        let leap = Civil::from_unix_millis(951_782_400_000); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_encode(b"hello", false, true), "aGVsbG8=");
        assert_eq!(base64_encode(b"hi?>", true, false), "aGk_Pg");
        assert_eq!(base64url_decode("aGk_Pg").as_deref(), Some(&b"hi?>"[..]));
        assert_eq!(base64url_decode("a!"), None);
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_query("a=1&b=x+y&a=%41&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("a".into(), "A".into()),
                ("c".into(), String::new())
            ]
        );
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[test]
    fn backend_urls() {
        let mut env = HashMap::new();
        assert_eq!(backend_base(&env, "DETAILS_HOSTNAME", "details", "DETAILS_SERVICE_PORT"), "http://details:9080");
        env.insert("DETAILS_HOSTNAME".to_string(), "d".to_string());
        env.insert("SERVICES_DOMAIN".to_string(), "ns.svc".to_string());
        env.insert("DETAILS_SERVICE_PORT".to_string(), "1234".to_string());
        assert_eq!(backend_base(&env, "DETAILS_HOSTNAME", "details", "DETAILS_SERVICE_PORT"), "http://d.ns.svc:1234");
    }
}
