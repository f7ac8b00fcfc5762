//! fortio (server side): the `/fortio/` UI stand-in, the `/debug` echo and a body echo elsewhere.
//!
//! meshd implements fortio's `load` and `curl` client verbs itself; pods running the fortio
//! image only need to answer on their ports.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::util::parse_query;
use crate::AppEnv;

/// The fortio version this stand-in reports.
pub(crate) const VERSION: &str = "1.75.2";

struct St {
    hostname: String,
    started: Instant,
}

/// Builds the fortio router (the same one serves 8080 and 8079).
pub(crate) fn router(env: &AppEnv) -> Router {
    let st = St { hostname: env.hostname.clone(), started: Instant::now() };
    Router::new().fallback(handle).with_state(Arc::new(st))
}

const UI_HTML: &str = "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Φορτίο</title>\n</head>\n<body>\n<h1>Φορτίο (fortio) version 1.75.2</h1>\n<p>This is the meshd stand-in for fortio's server. Run load tests with <code>meshd load</code> and single requests with <code>meshd curl</code>.</p>\n<p>Echo debug endpoint: <a href=\"/debug\">/debug</a></p>\n</body>\n</html>\n";

/// The largest request body taken (axum's default limit for a buffered body).
const MAX_BODY: usize = 2 * 1024 * 1024;

async fn handle(State(st): State<Arc<St>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    // The request is taken whole rather than by extractors, which copy the header map on every
    // request: only `/debug` reads the headers.
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response(),
    };
    let uri = &parts.uri;
    let path = uri.path();
    if path == "/fortio" || path.starts_with("/fortio/") {
        return ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], UI_HTML).into_response();
    }
    if path == "/debug" || path.starts_with("/debug/") {
        return ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], debug_text(&st, peer, &parts, &body))
            .into_response();
    }
    // fortio's echo handler: the body comes back as-is with 200, or `size` bytes of its payload.
    let size = parse_query(uri.query().unwrap_or_default()).into_iter().find(|(k, _)| k == "size");
    match size {
        Some((_, size)) => {
            let n = size.parse::<usize>().unwrap_or(0).min(MAX_PAYLOAD);
            ([(header::CONTENT_TYPE, "application/octet-stream")], PAYLOAD.slice(..n)).into_response()
        }
        None => (StatusCode::OK, body).into_response(),
    }
}

/// fortio's largest generated payload (`fnet.MaxPayloadSize`).
const MAX_PAYLOAD: usize = 256 * 1024;

/// The bytes `?size=N` answers with: random, made once, as fortio does.
static PAYLOAD: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    let mut rng = fastrand::Rng::with_seed(0x6d_6573_6864);
    Bytes::from((0..MAX_PAYLOAD).map(|_| rng.u8(..)).collect::<Vec<u8>>())
});

fn debug_text(st: &St, peer: SocketAddr, parts: &axum::http::request::Parts, body: &Bytes) -> String {
    let (method, version, headers) = (&parts.method, parts.version, &parts.headers);
    let mut out = String::new();
    let _ = write!(
        out,
        "Φορτίο version {VERSION} echo debug server up for {}s on {} - request from {peer}\n\n{method} {} {version:?}\n\nheaders:\n\n",
        st.started.elapsed().as_secs(),
        st.hostname,
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
    );
    if let Some(host) = headers.get(header::HOST) {
        let _ = writeln!(out, "Host: {}", String::from_utf8_lossy(host.as_bytes()));
    }
    for (name, value) in headers {
        if name == header::HOST {
            continue;
        }
        let _ = writeln!(out, "{}: {}", canonical(name.as_str()), String::from_utf8_lossy(value.as_bytes()));
    }
    out.push_str("\nbody:\n\n");
    out.push_str(&String::from_utf8_lossy(body));
    out.push('\n');
    out
}

/// Go-style canonical header name, as fortio prints them.
fn canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let o = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            o
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use crate::AppKind;

    #[tokio::test]
    async fn echo_returns_the_body_or_a_payload_of_the_asked_size() {
        let env = testutil::app_env(AppKind::Fortio, "fortio-1", &[]);
        let addr = testutil::spawn(router(&env)).await;
        let client = testutil::client();
        let echoed = client.post(format!("http://{addr}/echo")).body("hello").send().await.unwrap();
        assert_eq!(echoed.status(), 200);
        assert_eq!(echoed.text().await.unwrap(), "hello");
        let sized = client.get(format!("http://{addr}/echo?size=1024")).send().await.unwrap();
        assert_eq!(sized.status(), 200);
        assert_eq!(sized.headers()["content-type"], "application/octet-stream");
        let first = sized.bytes().await.unwrap();
        assert_eq!(first.len(), 1024);
        // The same bytes every time, and capped at fortio's maximum.
        let again = testutil::get(format!("http://{addr}/?x=1&size=1024")).await.unwrap().bytes().await.unwrap();
        assert_eq!(first, again);
        let capped = testutil::get(format!("http://{addr}/?size=999999999")).await.unwrap().bytes().await.unwrap();
        assert_eq!(capped.len(), MAX_PAYLOAD);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let env = testutil::app_env(AppKind::Fortio, "fortio-1", &[]);
        let addr = testutil::spawn(router(&env)).await;
        let client = testutil::client();
        let at = client.post(format!("http://{addr}/echo")).body(vec![b'x'; MAX_BODY]).send().await.unwrap();
        assert_eq!(at.status(), 200);
        assert_eq!(at.bytes().await.unwrap().len(), MAX_BODY);
        let over = client.post(format!("http://{addr}/echo")).body(vec![b'x'; MAX_BODY + 1]).send().await.unwrap();
        assert_eq!(over.status(), 413);
    }
}
