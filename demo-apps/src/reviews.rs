//! reviews: the Bookinfo reviews service (Java, Open Liberty) — hand-built JSON, optional ratings call.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::json::Json;
use crate::util::{backend_base, copy_headers, env_nonempty, outbound_client, B3_AND_USER, PROPAGATED};
use crate::AppEnv;

/// Timeouts of the call to ratings (connect + receive in the original).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// When STAR_COLOR is black (v2).
    pub black: Duration,
    /// Any other colour (v3).
    pub other: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { black: Duration::from_millis(10_000), other: Duration::from_millis(2_500) }
    }
}

struct St {
    client: reqwest::Client,
    ratings_url: String,
    ratings_enabled: bool,
    star_color: String,
    podname: String,
    clustername: String,
    timeout: Duration,
}

/// Builds the reviews router from ENABLE_RATINGS, STAR_COLOR, RATINGS_HOSTNAME,
/// RATINGS_SERVICE_PORT, SERVICES_DOMAIN and CLUSTER_NAME.
pub(crate) fn router(env: &AppEnv, timing: Timing) -> std::io::Result<Router> {
    // Java's Boolean.valueOf: only a case-insensitive "true" enables ratings.
    let ratings_enabled = env.env.get("ENABLE_RATINGS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let star_color = env.env.get("STAR_COLOR").cloned().unwrap_or_else(|| "black".to_string());
    let timeout = if star_color == "black" { timing.black } else { timing.other };
    let st = St {
        client: outbound_client(env.outbound_proxy)?,
        ratings_url: format!(
            "{}/ratings",
            backend_base(&env.env, "RATINGS_HOSTNAME", "ratings", "RATINGS_SERVICE_PORT")
        ),
        ratings_enabled,
        star_color,
        podname: env.hostname.clone(),
        // Java string-concatenates a null getenv() result, hence the literal "null".
        clustername: env_nonempty(&env.env, "CLUSTER_NAME").unwrap_or("null").to_string(),
        timeout,
    };
    Ok(Router::new().route("/health", get(health)).route("/reviews/{id}", get(reviews)).with_state(Arc::new(st)))
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health() -> Response {
    json(StatusCode::OK, r#"{"status": "Reviews is healthy"}"#.to_string())
}

async fn reviews(State(st): State<Arc<St>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    // JAX-RS converts the path param with Integer.valueOf; a failed conversion is a 404.
    let Ok(product_id) = id.parse::<i32>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut stars = [-1i64, -1i64];
    if st.ratings_enabled {
        if let Some(ratings) = fetch_ratings(&st, product_id, &headers).await {
            for (slot, who) in stars.iter_mut().zip(["Reviewer1", "Reviewer2"]) {
                if let Some(n) = ratings.get(who).and_then(Json::as_i64) {
                    *slot = n;
                }
            }
        }
    }
    json(StatusCode::OK, reviews_body(&st, product_id, stars))
}

/// One GET to ratings with the propagated headers; None on any error or non-200 (no retry).
async fn fetch_ratings(st: &St, product_id: i32, incoming: &HeaderMap) -> Option<Json> {
    let mut out = HeaderMap::new();
    copy_headers(incoming, PROPAGATED, &mut out);
    copy_headers(incoming, B3_AND_USER, &mut out);
    let resp = st
        .client
        .get(format!("{}/{}", st.ratings_url, product_id))
        .headers(out)
        .timeout(st.timeout)
        .send()
        .await
        .ok()?;
    if resp.status() != reqwest::StatusCode::OK {
        return None;
    }
    let body = resp.text().await.ok()?;
    Json::parse(&body).ok()?.get("ratings").cloned()
}

/// The response JSON, built by hand with the original's exact spacing.
fn reviews_body(st: &St, product_id: i32, stars: [i64; 2]) -> String {
    const TEXTS: [(&str, &str); 2] = [
        (
            "Reviewer1",
            "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
        ),
        (
            "Reviewer2",
            "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
        ),
    ];
    let mut s = format!(
        "{{\"id\": \"{}\",\"podname\": \"{}\",\"clustername\": \"{}\",\"reviews\": [",
        product_id, st.podname, st.clustername
    );
    for (i, ((reviewer, text), n)) in TEXTS.iter().zip(stars).enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{  \"reviewer\": \"{reviewer}\",  \"text\": \"{text}\""));
        if st.ratings_enabled {
            if n != -1 {
                s.push_str(&format!(", \"rating\": {{\"stars\": {}, \"color\": \"{}\"}}", n, st.star_color));
            } else {
                s.push_str(", \"rating\": {\"error\": \"Ratings service is currently unavailable\"}");
            }
        }
        s.push('}');
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{app_env, spawn};
    use crate::AppKind;
    use std::time::Instant;

    async fn slow_ratings(delay: Duration) -> std::net::SocketAddr {
        let r = Router::new().route(
            "/ratings/{id}",
            get(move || async move {
                tokio::time::sleep(delay).await;
                r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
            }),
        );
        spawn(r).await
    }

    async fn reviews_with(color: &str, ratings: std::net::SocketAddr) -> std::net::SocketAddr {
        let env = app_env(
            AppKind::Reviews,
            "reviews-x-1-abcde",
            &[
                ("ENABLE_RATINGS", "true".to_string()),
                ("STAR_COLOR", color.to_string()),
                ("RATINGS_HOSTNAME", "127.0.0.1".to_string()),
                ("RATINGS_SERVICE_PORT", ratings.port().to_string()),
            ],
        );
        let timing = Timing { black: Duration::from_millis(900), other: Duration::from_millis(100) };
        spawn(router(&env, timing).unwrap()).await
    }

    #[tokio::test]
    async fn v3_gives_up_before_v2_does() {
        let ratings = slow_ratings(Duration::from_millis(400)).await;
        let v3 = reviews_with("red", ratings).await;
        let v2 = reviews_with("black", ratings).await;

        let t = Instant::now();
        let body = crate::testutil::get(format!("http://{v3}/reviews/0")).await.unwrap().text().await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(350), "{:?}", t.elapsed());
        assert!(body.contains(r#""rating": {"error": "Ratings service is currently unavailable"}"#));

        let body = crate::testutil::get(format!("http://{v2}/reviews/0")).await.unwrap().text().await.unwrap();
        assert!(body.contains(r#""rating": {"stars": 5, "color": "black"}"#), "{body}");
    }

    #[test]
    fn default_timeouts_are_the_reference_values() {
        let t = Timing::default();
        assert_eq!(t.black, Duration::from_secs(10));
        assert_eq!(t.other, Duration::from_millis(2500));
    }
}
