//! ratings: the Bookinfo ratings service (Node.js) with its SERVICE_VERSION failure modes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::json::{Json, COMPACT};
use crate::util::env_nonempty;
use crate::AppEnv;

/// Durations of the failure modes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// v-delayed: how long half of the requests wait.
    pub delay: Duration,
    /// v-unavailable: how often availability flips.
    pub unavailable_period: Duration,
    /// v-unhealthy: how often health flips.
    pub unhealthy_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            delay: Duration::from_secs(7),
            unavailable_period: Duration::from_secs(60),
            unhealthy_period: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V1,
    /// Database-backed upstream; without a database the seed data (5 and 4) is served.
    V2,
    Faulty,
    Delayed,
    Unavailable,
    Unhealthy,
}

struct St {
    mode: Mode,
    started: Instant,
    timing: Timing,
    /// POSTed ratings per product, already printed as compact JSON.
    posted: Mutex<HashMap<i64, String>>,
}

impl St {
    /// Whether the state has flipped an odd number of times since start (both toggling modes
    /// start in the good state).
    fn flipped(&self, period: Duration) -> bool {
        let period = period.as_nanos().max(1);
        (self.started.elapsed().as_nanos() / period) % 2 == 1
    }

    fn unavailable(&self) -> bool {
        match self.mode {
            Mode::Unavailable => self.flipped(self.timing.unavailable_period),
            Mode::Unhealthy => self.flipped(self.timing.unhealthy_period),
            _ => false,
        }
    }

    fn healthy(&self) -> bool {
        !(self.mode == Mode::Unhealthy && self.flipped(self.timing.unhealthy_period))
    }
}

/// Builds the ratings router; SERVICE_VERSION picks the mode (default v1).
pub(crate) fn router(env: &AppEnv, timing: Timing) -> Router {
    let mode = match env_nonempty(&env.env, "SERVICE_VERSION") {
        Some("v2") => Mode::V2,
        Some("v-faulty") => Mode::Faulty,
        Some("v-delayed") => Mode::Delayed,
        Some("v-unavailable") => Mode::Unavailable,
        Some("v-unhealthy") => Mode::Unhealthy,
        _ => Mode::V1,
    };
    let st = St { mode, started: Instant::now(), timing, posted: Mutex::new(HashMap::new()) };
    // The original dispatches on a regex prefix (`^/ratings/[0-9]*`) and reads the id from the
    // raw URL, so one fallback handler mirrors it more closely than axum's path patterns.
    Router::new().fallback(handle).with_state(Arc::new(st))
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn handle(State(st): State<Arc<St>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path();
    if path == "/health" && method == Method::GET {
        return if st.healthy() {
            json(StatusCode::OK, r#"{"status":"Ratings is healthy"}"#.into())
        } else {
            json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"status":"Ratings is not healthy"}"#.into())
        };
    }
    if !path.starts_with("/ratings/") || (method != Method::GET && method != Method::POST) {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Node takes everything after the last '/' of the raw URL, query included, then parseInt.
    let raw = uri.path_and_query().map(|p| p.as_str()).unwrap_or(path);
    let last = raw.rsplit('/').next().unwrap_or_default();
    let Some(id) = js_parse_int(last) else {
        return json(StatusCode::BAD_REQUEST, r#"{"error":"please provide numeric product ID"}"#.into());
    };
    if method == Method::POST {
        return post(&st, id, &body);
    }
    match st.mode {
        Mode::Faulty if fastrand::f64() <= 0.5 => service_unavailable(),
        Mode::Delayed => {
            if fastrand::f64() <= 0.5 {
                tokio::time::sleep(st.timing.delay).await;
            }
            ratings(&st, id)
        }
        Mode::Unavailable | Mode::Unhealthy if st.unavailable() => service_unavailable(),
        _ => ratings(&st, id),
    }
}

fn service_unavailable() -> Response {
    json(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"Service unavailable"}"#.into())
}

fn ratings(st: &St, id: i64) -> Response {
    let stored = st.posted.lock().ok().and_then(|m| m.get(&id).cloned());
    let ratings = stored.unwrap_or_else(|| r#"{"Reviewer1":5,"Reviewer2":4}"#.to_string());
    json(StatusCode::OK, format!(r#"{{"id":{id},"ratings":{ratings}}}"#))
}

fn post(st: &St, id: i64, body: &Bytes) -> Response {
    let parsed = std::str::from_utf8(body).ok().and_then(|t| Json::parse(t).ok());
    let Some(value) = parsed else {
        return json(StatusCode::BAD_REQUEST, r#"{"error":"please provide valid ratings JSON"}"#.into());
    };
    if st.mode == Mode::V2 {
        return json(
            StatusCode::NOT_IMPLEMENTED,
            r#"{"error":"Post not implemented for database backed ratings"}"#.into(),
        );
    }
    let printed = value.render(&COMPACT);
    if let Ok(mut m) = st.posted.lock() {
        m.insert(id, printed.clone());
    }
    json(StatusCode::OK, format!(r#"{{"id":{id},"ratings":{printed}}}"#))
}

/// JavaScript `parseInt(s)` without a radix: leading whitespace, a sign, `0x` for hex, then as
/// many digits as there are; None where JS gives NaN (and beyond i64, which JS would round).
fn js_parse_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, t) = match t.get(..2) {
        Some("0x" | "0X") => (16, &t[2..]),
        _ => (10, t),
    };
    let end = t.char_indices().find(|(_, c)| !c.is_digit(radix)).map_or(t.len(), |(i, _)| i);
    let v = i64::from_str_radix(&t[..end], radix).ok()?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{app_env, client, spawn};
    use crate::AppKind;

    fn timing() -> Timing {
        Timing {
            delay: Duration::from_millis(300),
            unavailable_period: Duration::from_millis(500),
            unhealthy_period: Duration::from_millis(500),
        }
    }

    async fn start(version: &str) -> std::net::SocketAddr {
        let env = app_env(AppKind::Ratings, "ratings-v1-1-abcde", &[("SERVICE_VERSION", version.to_string())]);
        spawn(router(&env, timing())).await
    }

    #[test]
    fn parse_int_like_javascript() {
        assert_eq!(js_parse_int("0"), Some(0));
        assert_eq!(js_parse_int("12abc"), Some(12));
        assert_eq!(js_parse_int("0?x=1"), Some(0));
        assert_eq!(js_parse_int(" -3"), Some(-3));
        assert_eq!(js_parse_int("0x1f"), Some(31));
        assert_eq!(js_parse_int("abc"), None);
        assert_eq!(js_parse_int(""), None);
    }

    #[tokio::test]
    async fn delayed_mode_delays_about_half() {
        let addr = start("v-delayed").await;
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c.get(format!("http://{addr}/ratings/0")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                t.elapsed()
            }));
        }
        let mut slow = 0;
        for t in tasks {
            if t.await.unwrap() >= Duration::from_millis(250) {
                slow += 1;
            }
        }
        // P(all 30 land on one side) is 2^-29.
        assert!(slow > 0 && slow < 30, "slow={slow}");
    }

    #[tokio::test]
    async fn faulty_mode_fails_about_half() {
        let addr = start("v-faulty").await;
        let c = client();
        let mut codes = Vec::new();
        for _ in 0..40 {
            let r = c.get(format!("http://{addr}/ratings/0")).send().await.unwrap();
            codes.push(r.status().as_u16());
        }
        assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
    }

    #[tokio::test]
    async fn unavailable_and_unhealthy_toggle() {
        let unavailable = start("v-unavailable").await;
        let unhealthy = start("v-unhealthy").await;
        let c = client();
        let status = |url: String| {
            let c = c.clone();
            async move { c.get(url).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status(format!("http://{unavailable}/ratings/0")).await, 200);
        assert_eq!(status(format!("http://{unhealthy}/health")).await, 200);
        tokio::time::sleep(Duration::from_millis(650)).await;
        assert_eq!(status(format!("http://{unavailable}/ratings/0")).await, 503);
        assert_eq!(status(format!("http://{unavailable}/health")).await, 200);
        assert_eq!(status(format!("http://{unhealthy}/ratings/0")).await, 503);
        let health = c.get(format!("http://{unhealthy}/health")).send().await.unwrap();
        assert_eq!(health.status(), 500);
        assert_eq!(health.text().await.unwrap(), r#"{"status":"Ratings is not healthy"}"#);
    }

    #[test]
    fn default_timing_is_the_reference() {
        let t = Timing::default();
        assert_eq!(t.delay, Duration::from_secs(7));
        assert_eq!(t.unavailable_period, Duration::from_secs(60));
        assert_eq!(t.unhealthy_period, Duration::from_secs(900));
    }
}
