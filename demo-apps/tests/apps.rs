//! End-to-end checks of the demo apps through the public API, each on 127.0.0.1 port 0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use demo_apps::{image_env, serve, AppEnv, AppKind, LogSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const R1: &str = "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!";
const R2: &str =
    "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.";

type Lines = Arc<Mutex<Vec<String>>>;

fn sink() -> (LogSink, Lines) {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    (Arc::new(move |s: &str| l.lock().unwrap().push(s.to_string())), lines)
}

fn app(image: &str, hostname: &str, extra: &[(&str, String)]) -> (AppEnv, Lines) {
    let mut env = image_env(image);
    for (k, v) in extra {
        env.insert(k.to_string(), v.clone());
    }
    let (log, lines) = sink();
    let kind = AppKind::from_image(image).expect("known image");
    (AppEnv { kind, hostname: hostname.to_string(), env, args: Vec::new(), outbound_proxy: None, log }, lines)
}

async fn start(env: AppEnv, container_port: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(env, container_port, listener));
    addr
}

/// A loopback port nobody listens on, so calls to it are refused at once.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn get_text(url: String) -> (u16, HeaderMap, String) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn local(addr: SocketAddr, prefix: &str) -> Vec<(&'static str, String)> {
    let (host, port): (&'static str, &'static str) = match prefix {
        "RATINGS" => ("RATINGS_HOSTNAME", "RATINGS_SERVICE_PORT"),
        "DETAILS" => ("DETAILS_HOSTNAME", "DETAILS_SERVICE_PORT"),
        _ => ("REVIEWS_HOSTNAME", "REVIEWS_SERVICE_PORT"),
    };
    vec![(host, addr.ip().to_string()), (port, addr.port().to_string())]
}

async fn ratings() -> SocketAddr {
    let (env, _) = app("examples-bookinfo-ratings-v1", "ratings-v1-7d9f8c6b5-abcde", &[]);
    start(env, 9080).await
}

async fn reviews(version: &str, ratings: SocketAddr) -> (SocketAddr, String) {
    let host = format!("reviews-{version}-5b667bcbf8-x4k2p");
    let (env, _) = app(
        &format!("registry.istio.io/release/examples-bookinfo-reviews-{version}:1.20.3"),
        &host,
        &local(ratings, "RATINGS"),
    );
    (start(env, 9080).await, host)
}

async fn details() -> SocketAddr {
    let (env, _) = app("examples-bookinfo-details-v1", "details-v1-1-abcde", &[]);
    start(env, 9080).await
}

async fn productpage(details: SocketAddr, reviews: SocketAddr) -> SocketAddr {
    let mut extra = local(details, "DETAILS");
    extra.extend(local(reviews, "REVIEWS"));
    let (env, _) = app("examples-bookinfo-productpage-v1", "productpage-v1-1-abcde", &extra);
    start(env, 9080).await
}

fn expected_reviews(host: &str, rating: Option<[&str; 2]>) -> String {
    let r = |i: usize| rating.map(|r| format!(", \"rating\": {}", r[i])).unwrap_or_default();
    format!(
        "{{\"id\": \"0\",\"podname\": \"{host}\",\"clustername\": \"null\",\"reviews\": [{{  \"reviewer\": \"Reviewer1\",  \"text\": \"{R1}\"{}}},{{  \"reviewer\": \"Reviewer2\",  \"text\": \"{R2}\"{}}}]}}",
        r(0),
        r(1)
    )
}

#[tokio::test]
async fn reviews_json_is_exact_for_each_version() {
    let ratings = ratings().await;
    let (v1, h1) = reviews("v1", ratings).await;
    let (v2, h2) = reviews("v2", ratings).await;
    let (v3, h3) = reviews("v3", ratings).await;

    let (status, headers, body) = get_text(format!("http://{v1}/reviews/0")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, expected_reviews(&h1, None));

    let (_, _, body) = get_text(format!("http://{v2}/reviews/0")).await;
    assert_eq!(
        body,
        expected_reviews(&h2, Some([r#"{"stars": 5, "color": "black"}"#, r#"{"stars": 4, "color": "black"}"#]))
    );

    let (_, _, body) = get_text(format!("http://{v3}/reviews/0")).await;
    assert_eq!(
        body,
        expected_reviews(&h3, Some([r#"{"stars": 5, "color": "red"}"#, r#"{"stars": 4, "color": "red"}"#]))
    );

    let (status, _, body) = get_text(format!("http://{v1}/health")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status": "Reviews is healthy"}"#));
    let (status, _, _) = get_text(format!("http://{v1}/reviews/abc")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn reviews_with_ratings_down_reports_the_error_rating() {
    let down: SocketAddr = format!("127.0.0.1:{}", closed_port().await).parse().unwrap();
    let (v2, host) = reviews("v2", down).await;
    let (status, _, body) = get_text(format!("http://{v2}/reviews/0")).await;
    assert_eq!(status, 200, "reviews always answers 200");
    let err = r#"{"error": "Ratings service is currently unavailable"}"#;
    assert_eq!(body, expected_reviews(&host, Some([err, err])));
}

#[tokio::test]
async fn reviews_propagates_end_user_and_tracing_to_ratings() {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let s = seen.clone();
    let fake = Router::new().route(
        "/ratings/{id}",
        get(move |h: HeaderMap| async move {
            *s.lock().unwrap() = Some(h);
            r#"{"id":0,"ratings":{"Reviewer1":2}}"#
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, fake).await });
    let (v3, _) = reviews("v3", fake_addr).await;
    let body = client()
        .get(format!("http://{v3}/reviews/0"))
        .header("end-user", "jason")
        .header("x-request-id", "rid-1")
        .header("x-b3-traceid", "463ac35c9f6413ad")
        .header("x-b3-parentspanid", "0020000000000001")
        .header("x-unrelated", "no")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains(r#""rating": {"stars": 2, "color": "red"}"#));
    // Reviewer2 is missing from this ratings answer, so only that review shows the error.
    assert!(body.contains(r#""rating": {"error": "Ratings service is currently unavailable"}"#));
    let h = seen.lock().unwrap().clone().unwrap();
    assert_eq!(h["end-user"], "jason");
    assert_eq!(h["x-request-id"], "rid-1");
    assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad");
    assert_eq!(h["x-b3-parentspanid"], "0020000000000001");
    assert!(h.get("x-unrelated").is_none());
}

#[tokio::test]
async fn details_json_and_errors() {
    let d = details().await;
    let (status, headers, body) = get_text(format!("http://{d}/details/0")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
    );
    let (_, _, body) = get_text(format!("http://{d}/details/7")).await;
    assert!(body.starts_with(r#"{"id":7,"#));
    let (status, _, body) = get_text(format!("http://{d}/details/abc")).await;
    assert_eq!(status, 400);
    assert_eq!(body, r#"{"error":"please provide numeric product id"}"#);
    let (status, _, body) = get_text(format!("http://{d}/health")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"Details is healthy"}"#));
}

#[tokio::test]
async fn details_v2_answers_like_v1_and_says_so() {
    let (env, lines) =
        app("examples-bookinfo-details-v2", "details-v2-1-abcde", &[("DO_NOT_ENCRYPT", "true".to_string())]);
    let d = start(env, 9080).await;
    let (status, _, body) = get_text(format!("http://{d}/details/0")).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""publisher":"PublisherA""#));
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("not emulated")));
}

#[tokio::test]
async fn ratings_get_post_and_versions() {
    let r = ratings().await;
    let c = client();
    let (status, headers, body) = get_text(format!("http://{r}/ratings/0")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#);

    let (status, _, body) = get_text(format!("http://{r}/ratings/abc")).await;
    assert_eq!(status, 400);
    assert_eq!(body, r#"{"error":"please provide numeric product ID"}"#);

    let post =
        c.post(format!("http://{r}/ratings/7")).body(r#"{ "Reviewer2": 1, "Reviewer1": 3 }"#).send().await.unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(post.text().await.unwrap(), r#"{"id":7,"ratings":{"Reviewer2":1,"Reviewer1":3}}"#);
    let (_, _, body) = get_text(format!("http://{r}/ratings/7")).await;
    assert_eq!(body, r#"{"id":7,"ratings":{"Reviewer2":1,"Reviewer1":3}}"#);

    let bad = c.post(format!("http://{r}/ratings/7")).body("{nope").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.text().await.unwrap(), r#"{"error":"please provide valid ratings JSON"}"#);

    let (status, _, body) = get_text(format!("http://{r}/health")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"Ratings is healthy"}"#));

    let (env, _) = app("examples-bookinfo-ratings-v2", "ratings-v2-1-abcde", &[]);
    let v2 = start(env, 9080).await;
    let (_, _, body) = get_text(format!("http://{v2}/ratings/0")).await;
    assert_eq!(body, r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#);
    let post = c.post(format!("http://{v2}/ratings/0")).body(r#"{"Reviewer1":1}"#).send().await.unwrap();
    assert_eq!(post.status(), 501);
    assert_eq!(post.text().await.unwrap(), r#"{"error":"Post not implemented for database backed ratings"}"#);

    let (env, _) =
        app("examples-bookinfo-ratings-v1", "ratings-v1-1-abcde", &[("SERVICE_VERSION", "v-faulty".to_string())]);
    let faulty = start(env, 9080).await;
    let mut codes = Vec::new();
    for _ in 0..40 {
        let (status, _, body) = get_text(format!("http://{faulty}/ratings/0")).await;
        if status == 503 {
            assert_eq!(body, r#"{"error":"Service unavailable"}"#);
        }
        codes.push(status);
    }
    assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[tokio::test]
async fn productpage_renders_each_reviews_version() {
    let ratings = ratings().await;
    let d = details().await;
    for (version, stars, color) in [("v1", 0, None), ("v2", 9, Some("black")), ("v3", 9, Some("red"))] {
        let (rv, host) = reviews(version, ratings).await;
        let pp = productpage(d, rv).await;
        let (status, headers, body) = get_text(format!("http://{pp}/productpage")).await;
        assert_eq!(status, 200);
        assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(body.contains("<title>Simple Bookstore App</title>"));
        assert!(body.contains("BookInfo Sample"));
        assert!(body.contains("The Comedy of Errors</h1>"));
        assert!(body.contains("William Shakespeare's"));
        assert!(body.contains(r#"<h4 class="text-3xl font-semibold">Book Details</h4>"#));
        assert!(body.contains("PublisherA"));
        assert!(body.contains("Book Reviews</h4>"));
        assert!(body.contains(R1) && body.contains(R2));
        assert_eq!(count(&body, &format!("Reviews served by: {host}")), 2);
        assert_eq!(count(&body, "glyphicon glyphicon-star"), stars, "{version}");
        match color {
            Some(c) => assert_eq!(count(&body, &format!("text-{c}-500\"")), 2, "{version}"),
            None => assert!(!body.contains("gap-x-1 text-")),
        }
        assert!(body.contains("Sign in"));
        assert!(!body.contains("Ratings service is currently unavailable"));
    }
}

#[tokio::test]
async fn productpage_shows_backend_errors() {
    let down: SocketAddr = format!("127.0.0.1:{}", closed_port().await).parse().unwrap();
    let pp = productpage(down, down).await;
    let t = Instant::now();
    let (status, _, body) = get_text(format!("http://{pp}/productpage")).await;
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(status, 200, "productpage answers 200 even when backends fail");
    assert!(body.contains(r#"<p class="text-2xl text-red-500">Error fetching product details</p>"#));
    assert!(body.contains(
        r#"<p class="text-lg text-gray-600">Sorry, product details are currently unavailable for this book.</p>"#
    ));
    assert!(body.contains(r#"<p class="text-2xl text-red-500">Error fetching product reviews</p>"#));
    assert!(body.contains("Sorry, product reviews are currently unavailable for this book."));
    assert!(!body.contains("Book Details</h4>"));

    // ratings down behind a working reviews v2: the stars turn into the error line.
    let d = details().await;
    let (rv, _) = reviews("v2", down).await;
    let pp = productpage(d, rv).await;
    let (_, _, body) = get_text(format!("http://{pp}/productpage")).await;
    assert_eq!(count(&body, r#"<p class="text-red-500">Ratings service is currently unavailable</p>"#), 2);
    assert_eq!(count(&body, "glyphicon glyphicon-star"), 0);

    let (status, _, body) = get_text(format!("http://{pp}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE request_result_total counter"));
    assert!(body.contains(r#"request_result_total{destination_app="details",response_code="200"} 1.0"#));
    assert!(body.contains(r#"request_result_total{destination_app="reviews",response_code="200"} 1.0"#));
}

#[tokio::test]
async fn productpage_login_sends_end_user_to_reviews() {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let s = seen.clone();
    let fake_reviews = Router::new().route(
        "/reviews/{id}",
        get(move |h: HeaderMap| async move {
            s.lock().unwrap().push(h);
            r#"{"id": "0","podname": "reviews-v2-x-y","clustername": "null","reviews": [{  "reviewer": "Reviewer1",  "text": "t", "rating": {"stars": 3, "color": "black"}}]}"#
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rv = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, fake_reviews).await });
    let d = details().await;
    let pp = productpage(d, rv).await;
    let c = client();

    let login = c
        .post(format!("http://{pp}/login"))
        .form(&[("username", "jason"), ("passwd", "whatever")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 302);
    assert_eq!(login.headers()["location"], "/productpage");
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("session="), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    let with_referer = c
        .post(format!("http://{pp}/login"))
        .header("referer", "http://localhost:8080/productpage?u=test")
        .form(&[("username", "jason"), ("passwd", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(with_referer.headers()["location"], "http://localhost:8080/productpage?u=test");

    let page = c
        .get(format!("http://{pp}/productpage"))
        .header("cookie", &cookie)
        .header("x-request-id", "req-42")
        .header("user-agent", "curl/8.5.0")
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header("x-b3-spanid", "e457b5a2e4d86bd1")
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<p class="text-base font-medium text-gray-50">jason</p>"#));
    assert!(page.contains("Sign out"));
    assert!(page.contains(r#"href="logout""#));
    assert!(!page.contains("Sign in"));
    assert_eq!(count(&page, "glyphicon glyphicon-star"), 3);

    let h = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(h["end-user"], "jason");
    assert_eq!(h["x-request-id"], "req-42");
    assert_eq!(h["user-agent"], "curl/8.5.0");
    assert_eq!(h["cookie"], cookie.as_str());
    assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(h["x-b3-spanid"], "e457b5a2e4d86bd1");
    assert_eq!(h["x-b3-sampled"], "1");
    assert_eq!(h["host"], format!("127.0.0.1:{}", rv.port()).as_str());

    // Anonymous requests carry no end-user.
    c.get(format!("http://{pp}/productpage")).send().await.unwrap();
    let h = seen.lock().unwrap().last().cloned().unwrap();
    assert!(h.get("end-user").is_none());

    let logout = c.get(format!("http://{pp}/logout")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(logout.status(), 302);
    assert!(logout.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn productpage_calls_go_through_the_sidecar_proxy() {
    let hosts: Arc<Mutex<Vec<String>>> = Arc::default();
    let h1 = hosts.clone();
    let h2 = hosts.clone();
    // Stands in for the pod's sidecar: it receives absolute-form requests for both services.
    let sidecar = Router::new()
        .route(
            "/details/{id}",
            get(move |h: HeaderMap| async move {
                h1.lock().unwrap().push(h["host"].to_str().unwrap().to_string());
                r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
            }),
        )
        .route(
            "/reviews/{id}",
            get(move |h: HeaderMap| async move {
                h2.lock().unwrap().push(h["host"].to_str().unwrap().to_string());
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }),
        );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, sidecar).await });

    let (mut env, _) = app("examples-bookinfo-productpage-v1", "productpage-v1-1-abcde", &[]);
    env.outbound_proxy = Some(proxy);
    let pp = start(env, 9080).await;
    let (status, _, body) = get_text(format!("http://{pp}/productpage")).await;
    assert_eq!(status, 200);
    assert!(body.contains("Book Details</h4>"));
    assert!(body.contains("Error fetching product reviews"));
    assert_eq!(
        *hosts.lock().unwrap(),
        vec!["details:9080", "reviews:9080", "reviews:9080"],
        "details once, reviews twice (the built-in retry), all via the proxy"
    );

    let (status, _, body) = get_text(format!("http://{pp}/api/v1/products/0/reviews")).await;
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"error": "Sorry, product reviews are currently unavailable for this book."}"#);
}

#[tokio::test]
async fn productpage_api_and_static_routes() {
    let ratings = ratings().await;
    let d = details().await;
    let (rv, host) = reviews("v2", ratings).await;
    let mut extra = local(d, "DETAILS");
    extra.extend(local(rv, "REVIEWS"));
    extra.extend(local(ratings, "RATINGS"));
    let (env, _) = app("examples-bookinfo-productpage-v1", "productpage-v1-1-abcde", &extra);
    let pp = start(env, 9080).await;

    let (status, headers, body) = get_text(format!("http://{pp}/api/v1/products")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        r#"[{"id": 0, "title": "The Comedy of Errors", "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play."}]"#
    );
    let (_, _, body) = get_text(format!("http://{pp}/api/v1/products/0")).await;
    assert_eq!(
        body,
        r#"{"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200, "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}"#
    );
    let (_, _, body) = get_text(format!("http://{pp}/api/v1/products/0/reviews")).await;
    assert!(body.starts_with(&format!(
        r#"{{"id": "0", "podname": "{host}", "clustername": "null", "reviews": [{{"reviewer": "Reviewer1""#
    )));
    let (_, _, body) = get_text(format!("http://{pp}/api/v1/products/0/ratings")).await;
    assert_eq!(body, r#"{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}"#);

    let (status, _, body) = get_text(format!("http://{pp}/health")).await;
    assert_eq!((status, body.as_str()), (200, "Product page is healthy"));
    let (status, _, body) = get_text(format!("http://{pp}/")).await;
    assert_eq!(status, 200);
    assert!(body.contains(
        "<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>"
    ));
    assert!(body.contains(r#"<a href="/productpage?u=normal">Normal user</a>"#));
    assert!(body.contains(r#"<a href="/productpage?u=test">Test user</a>"#));
    let (status, headers, _) = get_text(format!("http://{pp}/static/tailwind/tailwind.css")).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/css"));
    let (status, _, _) = get_text(format!("http://{pp}/static/nope.js")).await;
    assert_eq!(status, 404);
}

async fn httpbin(image: &str, port: u16) -> (SocketAddr, Lines) {
    let (env, lines) = app(image, "httpbin-7d9f8c6b5-x4k2p", &[]);
    (start(env, port).await, lines)
}

#[tokio::test]
async fn httpbin_headers_are_arrays_and_requests_are_logged() {
    let (hb, lines) = httpbin("docker.io/mccutchen/go-httpbin:v2.15.0", 8080).await;
    let r = client()
        .get(format!("http://{hb}/headers"))
        .header("x-custom", "a")
        .header("user-agent", "curl/8.5.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
    let text = r.text().await.unwrap();
    assert!(text.starts_with("{\n  \"headers\": {\n"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["headers"]["Host"], serde_json::json!([hb.to_string()]));
    assert_eq!(v["headers"]["X-Custom"], serde_json::json!(["a"]));
    assert_eq!(v["headers"]["User-Agent"], serde_json::json!(["curl/8.5.0"]));

    let log = lines.lock().unwrap().last().cloned().unwrap();
    assert!(log.starts_with("time="), "{log}");
    assert!(log.contains(" level=INFO msg=\"200 GET /headers "), "{log}");
    assert!(log.contains(" status=200 method=GET uri=/headers size_bytes="), "{log}");
    assert!(log.contains(" user_agent=curl/8.5.0 client_ip=127.0.0.1:"), "{log}");

    let (status, _, body) = get_text(format!("http://{hb}/nope")).await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"status_code": 404, "error": "Not Found"}));
    assert!(lines.lock().unwrap().last().unwrap().contains("level=WARN"));
}

#[tokio::test]
async fn httpbin_get_ip_hostname_and_post() {
    let (hb, _) = httpbin("mccutchen/go-httpbin", 8080).await;
    let c = client();
    let r = c
        .get(format!("http://{hb}/get?a=1&a=2&b=x"))
        .header("x-forwarded-for", "10.1.2.3, 10.0.0.1")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["args"], serde_json::json!({"a": ["1", "2"], "b": ["x"]}));
    assert_eq!(v["method"], "GET");
    assert_eq!(v["origin"], "10.1.2.3");
    assert_eq!(v["url"], format!("http://{hb}/get?a=1&a=2&b=x"));

    let (_, _, body) = get_text(format!("http://{hb}/ip")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["origin"].as_str().unwrap().starts_with("127.0.0.1:"));

    let (_, _, body) = get_text(format!("http://{hb}/hostname")).await;
    assert_eq!(body, "{\n  \"hostname\": \"httpbin-7d9f8c6b5-x4k2p\"\n}\n");

    let r = c
        .post(format!("http://{hb}/post"))
        .header("content-type", "application/json")
        .body(r#"{"b": 1, "a": [true, null]}"#)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["json"], serde_json::json!({"a": [true, null], "b": 1}));
    assert_eq!(v["data"], r#"{"b": 1, "a": [true, null]}"#);
    assert_eq!(v["form"], serde_json::json!({}));
    assert_eq!(v["files"], serde_json::json!({}));

    let r = c.get(format!("http://{hb}/post")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn httpbin_status_codes() {
    let (hb, _) = httpbin("mccutchen/go-httpbin", 8080).await;
    let (status, headers, body) = get_text(format!("http://{hb}/status/418")).await;
    assert_eq!(status, 418);
    assert_eq!(body, "I'm a teapot!");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

    let (status, _, body) = get_text(format!("http://{hb}/status/503")).await;
    assert_eq!((status, body.as_str()), (503, ""));
    let (status, headers, _) = get_text(format!("http://{hb}/status/302")).await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], "/redirect/1");
    let (status, headers, _) = get_text(format!("http://{hb}/status/401")).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"Fake Realm\"");

    for _ in 0..10 {
        let (status, _, _) = get_text(format!("http://{hb}/status/200:1,503:0")).await;
        assert_eq!(status, 200);
        let (status, _, _) = get_text(format!("http://{hb}/status/201,202")).await;
        assert!(status == 201 || status == 202);
    }

    let (status, _, body) = get_text(format!("http://{hb}/status/abc")).await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status_code"], 400);
    assert_eq!(v["error"], "Bad Request");
    assert_eq!(v["detail"], "invalid status code: \"abc\": strconv.Atoi: parsing \"abc\": invalid syntax");
    let (status, _, body) = get_text(format!("http://{hb}/status/600")).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid status code: 600 not in range [100, 599]"));
}

#[tokio::test]
async fn httpbin_delay_bounds() {
    let (hb, _) = httpbin("mccutchen/go-httpbin", 8080).await;
    let t = Instant::now();
    let (status, headers, body) = get_text(format!("http://{hb}/delay/0.2")).await;
    let elapsed = t.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(900));
    assert_eq!(headers["server-timing"], "initial_delay;dur=200.00;desc=\"initial delay\"");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["args", "headers", "method", "origin", "url", "data", "files", "form", "json"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }

    let (status, _, _) = get_text(format!("http://{hb}/delay/100ms")).await;
    assert_eq!(status, 200);
    let t = Instant::now();
    let (status, _, body) = get_text(format!("http://{hb}/delay/11")).await;
    assert!(t.elapsed() < Duration::from_millis(500), "rejected before sleeping");
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["detail"], "invalid duration: duration 11s longer than 10s");
    let (status, _, body) = get_text(format!("http://{hb}/delay/abc")).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid duration: strconv.ParseFloat: parsing \\\"abc\\\": invalid syntax"));
    let (status, _, body) = get_text(format!("http://{hb}/delay/-1")).await;
    assert_eq!(status, 400);
    assert!(body.contains("shorter than 0s"));
}

#[tokio::test]
async fn kennethreitz_httpbin_uses_strings_and_gunicorn_log() {
    let (hb, lines) = httpbin("docker.io/kennethreitz/httpbin", 80).await;
    let r = client()
        .get(format!("http://{hb}/headers"))
        .header("user-agent", "curl/7.35.0")
        .header("x-b3-traceid", "abc")
        .header("x-request-id", "hidden")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["headers"]["Host"], hb.to_string());
    assert_eq!(v["headers"]["User-Agent"], "curl/7.35.0");
    assert_eq!(v["headers"]["X-B3-Traceid"], "abc");
    assert!(v["headers"].get("X-Request-Id").is_none());
    assert!(text.contains(&format!("\"Host\": \"{hb}\", \n")), "{text}");

    let log = lines.lock().unwrap().last().cloned().unwrap();
    assert!(log.starts_with("127.0.0.1 - - ["), "{log}");
    assert!(log.contains(" +0000] \"GET /headers HTTP/1.1\" 200 "), "{log}");
    assert!(log.ends_with(" \"-\" \"curl/7.35.0\""), "{log}");

    // The same image on another port still picks the flavour from its image env.
    let (hb2, _) = httpbin("docker.io/kennethreitz/httpbin", 8000).await;
    let (_, _, body) = get_text(format!("http://{hb2}/ip")).await;
    assert_eq!(body, "{\n  \"origin\": \"127.0.0.1\"\n}\n");
}

#[tokio::test]
async fn fortio_server_answers() {
    let (env, _) = app("docker.io/fortio/fortio:latest_release", "fortio-deploy-1-abcde", &[]);
    let f = start(env, 8080).await;
    let (status, _, body) = get_text(format!("http://{f}/fortio/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("fortio"));
    let r = client().get(format!("http://{f}/debug?x=1")).header("x-hello", "world").send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("GET /debug?x=1 HTTP/1.1"), "{text}");
    assert!(text.contains("X-Hello: world"), "{text}");
    assert!(text.contains("fortio-deploy-1-abcde"));
}

#[tokio::test]
async fn tcp_echo_prefixes_each_line() {
    let (mut env, lines) = app("registry.istio.io/release/tcp-echo-server:1.3", "tcp-echo-v1-1-abcde", &[]);
    env.args = vec!["9000,9001,9002".to_string(), "one".to_string()];
    let addr = start(env, 9000).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello\nworld\n").await.unwrap();
    let mut buf = vec![0u8; 64];
    let mut got = Vec::new();
    while got.len() < "one hello\none world\n".len() {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"one hello\none world\n");
    // Still open: another line gets another answer.
    s.write_all(b"again\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"one again\n");
    s.shutdown().await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 0, "closed after EOF");
    assert!(lines.lock().unwrap().iter().any(|l| l == "request: hello"));

    let (env, _) = app("tcp-echo-server", "tcp-echo-x", &[]);
    let addr = start(env, 9001).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"x\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"hello x\n", "default prefix");
}

#[tokio::test]
async fn sleep_pods_serve_nothing() {
    let (env, _) = app("docker.io/curlimages/curl:8.16.0", "sleep-1-abcde", &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let res = tokio::time::timeout(Duration::from_millis(50), serve(env, 80, listener)).await;
    assert!(res.is_err(), "serve for sleep never returns");
}

#[tokio::test]
async fn dropping_serve_stops_the_app() {
    let (env, _) = app("examples-bookinfo-details-v1", "details-v1-1-abcde", &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(env, 9080, listener));
    // A keep-alive connection is open and idle when the app stops.
    let c = client();
    assert_eq!(c.get(format!("http://{addr}/health")).send().await.unwrap().status(), 200);
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(c.get(format!("http://{addr}/health")).send().await.is_err());
}
