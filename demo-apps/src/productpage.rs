//! productpage: the Bookinfo front end (Python/Flask) — landing page, product page, JSON API, login.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::json::{Json, COMPACT, PYTHON};
use crate::util::{
    backend_base, base64_encode, base64url_decode, env_nonempty, header_str, html_escape, outbound_client, parse_query,
    PROPAGATED,
};
use crate::AppEnv;

/// Per-call timeouts (Python `requests` `timeout=`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub details: Duration,
    /// Per attempt; reviews gets [`REVIEWS_ATTEMPTS`] attempts.
    pub reviews: Duration,
    pub ratings: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { details: Duration::from_secs(3), reviews: Duration::from_secs(3), ratings: Duration::from_secs(3) }
    }
}

/// The original loops twice over the reviews call ("Bug introduced explicitly for illustration
/// in fault injection task"), which is what makes the fault-injection page take ~6 s.
const REVIEWS_ATTEMPTS: usize = 2;

const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";
const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_ERROR: &str = "Sorry, product ratings are currently unavailable for this book.";

const TITLE: &str = "The Comedy of Errors";
const DESCRIPTION_HTML: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.";

struct Backend {
    base: String,
    endpoint: &'static str,
}

impl Backend {
    fn url(&self, product_id: &str) -> String {
        format!("{}/{}/{}", self.base, self.endpoint, product_id)
    }
}

struct St {
    client: reqwest::Client,
    details: Backend,
    reviews: Backend,
    ratings: Backend,
    flood_factor: usize,
    timing: Timing,
    /// `request_result` counter in first-seen order, as prometheus_client prints it.
    results: Mutex<Vec<(&'static str, u16, u64)>>,
}

/// Builds the productpage router; backends come from *_HOSTNAME / SERVICES_DOMAIN / *_SERVICE_PORT.
pub(crate) fn router(env: &AppEnv, timing: Timing) -> std::io::Result<Router> {
    let e = &env.env;
    let st = St {
        client: outbound_client(env.outbound_proxy)?,
        details: Backend {
            base: backend_base(e, "DETAILS_HOSTNAME", "details", "DETAILS_SERVICE_PORT"),
            endpoint: "details",
        },
        reviews: Backend {
            base: backend_base(e, "REVIEWS_HOSTNAME", "reviews", "REVIEWS_SERVICE_PORT"),
            endpoint: "reviews",
        },
        ratings: Backend {
            base: backend_base(e, "RATINGS_HOSTNAME", "ratings", "RATINGS_SERVICE_PORT"),
            endpoint: "ratings",
        },
        flood_factor: env_nonempty(e, "FLOOD_FACTOR").and_then(|v| v.trim().parse().ok()).unwrap_or(0),
        timing,
        results: Mutex::new(Vec::new()),
    };
    Ok(Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/health", get(health))
        .route("/login", post(login))
        .route("/logout", get(logout))
        .route("/productpage", get(front))
        .route("/api/v1/products", get(products))
        .route("/api/v1/products/{id}", get(product_details))
        .route("/api/v1/products/{id}/reviews", get(product_reviews))
        .route("/api/v1/products/{id}/ratings", get(product_ratings))
        .route("/metrics", get(metrics))
        .route("/static/{*path}", get(static_file))
        .fallback(not_found)
        .with_state(Arc::new(st)))
}

impl St {
    fn count(&self, app: &'static str, code: u16) {
        if let Ok(mut r) = self.results.lock() {
            match r.iter_mut().find(|(a, c, _)| *a == app && *c == code) {
                Some(entry) => entry.2 += 1,
                None => r.push((app, code, 1)),
            }
        }
    }

    /// One GET. Err carries the status productpage reports: the upstream's, or 500 when there
    /// was no response (timeout, refused, unreadable body).
    async fn fetch(&self, url: String, headers: &HeaderMap, timeout: Duration) -> Result<Json, u16> {
        let resp = self.client.get(url).headers(headers.clone()).timeout(timeout).send().await.map_err(|_| 500u16)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(status);
        }
        let body = resp.text().await.map_err(|_| 500u16)?;
        Json::parse(&body).map_err(|_| 500u16)
    }

    async fn details(&self, id: &str, h: &HeaderMap) -> (u16, Json) {
        match self.fetch(self.details.url(id), h, self.timing.details).await {
            Ok(j) => {
                self.count("details", 200);
                (200, j)
            }
            Err(code) => {
                self.count("details", code);
                (code, error_json(DETAILS_ERROR))
            }
        }
    }

    async fn reviews(&self, id: &str, h: &HeaderMap) -> (u16, Json) {
        let mut last = 500;
        for _ in 0..REVIEWS_ATTEMPTS {
            match self.fetch(self.reviews.url(id), h, self.timing.reviews).await {
                Ok(j) => {
                    self.count("reviews", 200);
                    return (200, j);
                }
                Err(code) => last = code,
            }
        }
        self.count("reviews", last);
        (last, error_json(REVIEWS_ERROR))
    }

    async fn ratings(&self, id: &str, h: &HeaderMap) -> (u16, Json) {
        match self.fetch(self.ratings.url(id), h, self.timing.ratings).await {
            Ok(j) => {
                self.count("ratings", 200);
                (200, j)
            }
            Err(code) => {
                self.count("ratings", code);
                (code, error_json(RATINGS_ERROR))
            }
        }
    }

    /// FLOOD_FACTOR extra fire-and-forget reviews calls (the rate-limit demo's load).
    fn flood(&self, id: &str, h: &HeaderMap) {
        for _ in 0..self.flood_factor {
            let req = self.client.get(self.reviews.url(id)).headers(h.clone());
            tokio::spawn(async move {
                let _ = req.send().await;
            });
        }
    }
}

fn error_json(msg: &str) -> Json {
    Json::obj(vec![("error", Json::str(msg))])
}

/// The logged-in user from the `session` cookie, if any.
fn session_user(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split(';') {
            let Some((name, val)) = part.trim().split_once('=') else {
                continue;
            };
            if name != "session" {
                continue;
            }
            let decoded = base64url_decode(val).and_then(|b| String::from_utf8(b).ok());
            if let Some(user) = decoded
                .and_then(|t| Json::parse(&t).ok())
                .and_then(|j| j.get("user").and_then(Json::as_str).map(str::to_string))
            {
                return Some(user);
            }
        }
    }
    None
}

/// The session cookie value: base64url of `{"user":…}`. Only productpage reads it, so it is not
/// signed the way Flask signs its sessions.
fn session_cookie(user: &str) -> String {
    let payload = Json::obj(vec![("user", Json::str(user))]).render(&COMPACT);
    base64_encode(payload.as_bytes(), true, false)
}

fn is_hex(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// B3 context as OpenTelemetry's `B3MultiFormat` extracts it: (trace id, span id, sampled).
fn b3_extract(h: &HeaderMap) -> Option<(String, String, bool)> {
    let (trace, span, sampled, flags) = if let Some(single) = header_str(h, "b3") {
        // Single-header form: `{trace}-{span}[-{sampled}[-{parent}]]`, or just the sampling flag.
        let fields: Vec<&str> = single.splitn(4, '-').collect();
        match fields.as_slice() {
            [s] => ("", "", *s, ""),
            [t, s] => (*t, *s, "", ""),
            [t, s, smp] | [t, s, smp, _] => (*t, *s, *smp, ""),
            _ => ("", "", "", ""),
        }
    } else {
        (
            header_str(h, "x-b3-traceid").unwrap_or_default(),
            header_str(h, "x-b3-spanid").unwrap_or_default(),
            header_str(h, "x-b3-sampled").unwrap_or_default(),
            header_str(h, "x-b3-flags").unwrap_or_default(),
        )
    };
    if !is_hex(trace, &[16, 32]) || !is_hex(span, &[16]) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
        return None;
    }
    let is_sampled = matches!(sampled, "1" | "True" | "true" | "d") || flags == "1";
    // Re-injection prints ids as zero-padded lowercase hex (`format(id, "032x")`).
    Some((format!("{:0>32}", trace.to_ascii_lowercase()), span.to_ascii_lowercase(), is_sampled))
}

/// `getForwardHeaders`: B3 re-injected, `end-user` when logged in, then the verbatim list.
fn forward_headers(incoming: &HeaderMap, user: Option<&str>) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some((trace, span, sampled)) = b3_extract(incoming) {
        for (name, value) in [
            ("x-b3-traceid", trace.as_str()),
            ("x-b3-spanid", span.as_str()),
            ("x-b3-sampled", if sampled { "1" } else { "0" }),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.insert(name, v);
            }
        }
    }
    if let Some(v) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
        out.insert("end-user", v);
    }
    crate::util::copy_headers(incoming, PROPAGATED, &mut out);
    out
}

async fn health() -> &'static str {
    "Product page is healthy"
}

async fn front(State(st): State<Arc<St>>, headers: HeaderMap) -> Html<String> {
    let user = session_user(&headers);
    let fwd = forward_headers(&headers, user.as_deref());
    // Sequential on purpose: details first, then reviews, as the original does.
    let (details_status, details) = st.details("0", &fwd).await;
    if st.flood_factor > 0 {
        st.flood("0", &fwd);
    }
    let (reviews_status, reviews) = st.reviews("0", &fwd).await;
    Html(render_product_page(user.as_deref().unwrap_or_default(), details_status, &details, reviews_status, &reviews))
}

fn api_json(status: u16, body: &Json) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body.render(&PYTHON)).into_response()
}

fn products_json() -> Json {
    Json::Arr(vec![Json::obj(vec![
        ("id", Json::int(0)),
        ("title", Json::str(TITLE)),
        ("descriptionHtml", Json::str(DESCRIPTION_HTML)),
    ])])
}

async fn products() -> Response {
    api_json(200, &products_json())
}

async fn product_details(State(st): State<Arc<St>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let fwd = forward_headers(&headers, session_user(&headers).as_deref());
    let (status, body) = st.details(&id, &fwd).await;
    api_json(status, &body)
}

async fn product_reviews(State(st): State<Arc<St>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let fwd = forward_headers(&headers, session_user(&headers).as_deref());
    let (status, body) = st.reviews(&id, &fwd).await;
    api_json(status, &body)
}

async fn product_ratings(State(st): State<Arc<St>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let fwd = forward_headers(&headers, session_user(&headers).as_deref());
    let (status, body) = st.ratings(&id, &fwd).await;
    api_json(status, &body)
}

/// Flask's `redirect()`: 302 with a small HTML body. Without a Referer the original redirects to
/// `None`; meshd sends people back to the product page instead.
fn redirect_back(headers: &HeaderMap, cookie: String) -> Response {
    let target = headers.get(header::REFERER).cloned().unwrap_or_else(|| HeaderValue::from_static("/productpage"));
    let shown = html_escape(target.to_str().unwrap_or("/productpage"));
    let body = format!(
        "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n<p>You should be redirected automatically to the target URL: <a href=\"{shown}\">{shown}</a>. If not, click the link.\n"
    );
    let mut resp = (StatusCode::FOUND, Html(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, target);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Cookie"));
    resp
}

async fn login(uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    // Flask's `request.values`: query args first, then the form.
    let mut values = parse_query(uri.query().unwrap_or_default());
    values.extend(parse_query(&String::from_utf8_lossy(&body)));
    let user = values.into_iter().find(|(k, _)| k == "username").map(|(_, v)| v);
    let cookie = match user {
        Some(u) => format!("session={}; HttpOnly; Path=/", session_cookie(&u)),
        // No username: Flask stores None, which counts as logged out everywhere.
        None => clear_cookie(),
    };
    redirect_back(&headers, cookie)
}

fn clear_cookie() -> String {
    "session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/".to_string()
}

async fn logout(headers: HeaderMap) -> Response {
    redirect_back(&headers, clear_cookie())
}

async fn metrics(State(st): State<Arc<St>>) -> Response {
    let mut out =
        String::from("# HELP request_result_total Backend API request result\n# TYPE request_result_total counter\n");
    if let Ok(r) = st.results.lock() {
        for (app, code, n) in r.iter() {
            let _ = writeln!(out, "request_result_total{{destination_app=\"{app}\",response_code=\"{code}\"}} {n}.0");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

const TAILWIND_CSS: &str = "/* meshd demo stand-in for tailwind.css: just enough to lay the page out */\n\
body{margin:0;font-family:ui-sans-serif,system-ui,sans-serif}\n\
.bg-gray-800{background:#1f2937}.text-white,.text-gray-50{color:#f9fafb}\n\
.text-red-500{color:#ef4444}.text-black-500{color:#000}.text-gray-600{color:#4b5563}\n\
.container{max-width:80rem;margin:0 auto;padding:1rem}.flex{display:flex}.gap-x-1{column-gap:.25rem}\n\
.h-5{height:1.25rem}.w-5{width:1.25rem}.font-semibold{font-weight:600}.font-bold{font-weight:700}\n\
.text-3xl{font-size:1.875rem}.text-2xl{font-size:1.5rem}.text-lg{font-size:1.125rem}\n";

/// A 1x1 transparent PNG standing in for the reviewer avatar.
const IZZY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

async fn static_file(Path(path): Path<String>) -> Response {
    match path.as_str() {
        "tailwind/tailwind.css" => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], TAILWIND_CSS).into_response(),
        "img/izzy.png" => ([(header::CONTENT_TYPE, "image/png")], IZZY_PNG).into_response(),
        _ => not_found().await,
    }
}

/// Werkzeug's 404 page.
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html("<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.</p>\n"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// HTML

const HEAD: &str = r##"<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta http-equiv="X-UA-Compatible" content="IE=edge">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Simple Bookstore App</title>
<link rel="stylesheet" href="static/tailwind/tailwind.css">
<script type="text/javascript">
  window.addEventListener("DOMContentLoaded", () => {
    const dialog = document.querySelector("dialog");
    const open = document.querySelector("#sign-in-button");
    const close = document.querySelector("#close-dialog");
    if (open && dialog) { open.addEventListener("click", () => dialog.showModal()); }
    if (close && dialog) { close.addEventListener("click", () => dialog.close()); }
  });
</script>
</head>
"##;

const FULL_STAR: &str = r#"<svg id="glyphicon glyphicon-star" class="h-5 w-5 flex-none" viewBox="0 0 20 20" fill="currentColor" aria-hidden="true"><polygon points="10,1.5 12.6,7.2 18.8,7.8 14.1,11.9 15.5,18 10,14.8 4.5,18 5.9,11.9 1.2,7.8 7.4,7.2"/></svg>"#;
const EMPTY_STAR: &str = r#"<svg class="h-5 w-5 flex-none" viewBox="0 0 20 20" fill="none" stroke="currentColor" stroke-width="1.5" aria-hidden="true"><polygon points="10,1.5 12.6,7.2 18.8,7.8 14.1,11.9 15.5,18 10,14.8 4.5,18 5.9,11.9 1.2,7.8 7.4,7.2"/></svg>"#;

/// Renders `templates/productpage.html` for the given backend results.
fn render_product_page(user: &str, details_status: u16, details: &Json, reviews_status: u16, reviews: &Json) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str(HEAD);
    h.push_str("<body>\n");
    render_nav(&mut h, user);

    let _ = write!(
        h,
        "<div class=\"container mx-auto px-4 sm:px-6 lg:px-8 py-12\">\n\
         <h1 class=\"text-5xl font-bold tracking-tight text-gray-900\">{}</h1>\n\
         <p class=\"mt-6 text-xl leading-8 text-gray-600\">{}</p>\n</div>\n",
        html_escape(TITLE),
        DESCRIPTION_HTML
    );

    h.push_str("<!-- Book details section -->\n<div class=\"container mx-auto px-4 sm:px-6 lg:px-8 py-12\">\n");
    if details_status == 200 {
        h.push_str("<h4 class=\"text-3xl font-semibold\">Book Details</h4>\n");
        h.push_str("<table class=\"min-w-full divide-y divide-gray-300\">\n<thead>\n<tr>");
        for col in ["ISBN-10", "Publisher", "Pages", "Type", "Language"] {
            let _ = write!(
                h,
                "<th scope=\"col\" class=\"px-2 py-3.5 text-left text-sm font-semibold text-gray-900\">{col}</th>"
            );
        }
        h.push_str("</tr>\n</thead>\n<tbody>\n<tr>");
        for key in ["ISBN-10", "publisher", "pages", "type", "language"] {
            let value = details.get(key).map(Json::display).unwrap_or_default();
            let _ = write!(h, "<td class=\"px-2 py-2 text-sm text-gray-500\">{}</td>", html_escape(&value));
        }
        h.push_str("</tr>\n</tbody>\n</table>\n");
    } else {
        error_pair(&mut h, "Error fetching product details", details);
    }
    h.push_str("</div>\n");

    h.push_str("<!-- Book reviews section -->\n<div class=\"container mx-auto px-4 sm:px-6 lg:px-8 py-12\">\n");
    if reviews_status == 200 {
        h.push_str(
            "<h4 class=\"text-3xl font-semibold\">Book Reviews</h4>\n<div class=\"flex flex-col md:flex-row\">\n",
        );
        let podname = reviews.get("podname").map(Json::display).unwrap_or_default();
        let cluster = reviews.get("clustername").map(Json::display).unwrap_or_default();
        for review in reviews.get("reviews").and_then(Json::as_array).unwrap_or_default() {
            render_review(&mut h, review, &podname, &cluster);
        }
        h.push_str("</div>\n");
    } else {
        error_pair(&mut h, "Error fetching product reviews", reviews);
    }
    h.push_str("</div>\n</body>\n</html>\n");
    h
}

fn error_pair(h: &mut String, title: &str, body: &Json) {
    let detail = body.get("error").map(Json::display).unwrap_or_default();
    let _ = write!(
        h,
        "<p class=\"text-2xl text-red-500\">{title}</p>\n<p class=\"text-lg text-gray-600\">{}</p>\n",
        html_escape(&detail)
    );
}

fn render_nav(h: &mut String, user: &str) {
    h.push_str(
        "<nav class=\"bg-gray-800\">\n<div class=\"mx-auto max-w-7xl px-4 sm:px-6 lg:px-8\">\n\
         <div class=\"flex h-16 items-center justify-between\">\n\
         <a href=\"#\" class=\"text-xl font-bold text-white\">BookInfo Sample</a>\n",
    );
    if user.is_empty() {
        h.push_str(
            "<button type=\"button\" id=\"sign-in-button\" class=\"rounded-md bg-blue-600 px-3 py-2 text-sm font-semibold text-white\">Sign in</button>\n",
        );
    } else {
        let _ = write!(
            h,
            "<div class=\"flex items-center gap-x-4\">\n\
             <p class=\"text-base font-medium text-gray-50\">{}</p>\n\
             <a href=\"logout\" class=\"rounded-md bg-blue-600 px-3 py-2 text-sm font-semibold text-white\">Sign out</a>\n</div>\n",
            html_escape(user)
        );
    }
    h.push_str("</div>\n</div>\n</nav>\n");
    if user.is_empty() {
        h.push_str(
            "<dialog class=\"rounded-lg p-6\">\n\
             <h2 class=\"text-xl font-bold text-gray-900\">Sign in to BookInfo</h2>\n\
             <form method=\"post\" action='login' class=\"mt-4 space-y-4\">\n\
             <label for=\"username\" class=\"block text-sm font-medium text-gray-900\">User Name</label>\n\
             <input type=\"text\" id=\"username\" name=\"username\" class=\"block w-full rounded-md border px-2 py-1\">\n\
             <label for=\"passwd\" class=\"block text-sm font-medium text-gray-900\">Password</label>\n\
             <input type=\"password\" id=\"passwd\" name=\"passwd\" class=\"block w-full rounded-md border px-2 py-1\">\n\
             <button type=\"submit\" class=\"rounded-md bg-blue-600 px-3 py-2 text-sm font-semibold text-white\">Sign in</button>\n\
             <button type=\"button\" id=\"close-dialog\" class=\"rounded-md px-3 py-2 text-sm font-semibold\">Cancel</button>\n\
             </form>\n</dialog>\n",
        );
    }
}

fn render_review(h: &mut String, review: &Json, podname: &str, cluster: &str) {
    h.push_str("<section class=\"px-6 py-12 sm:py-8 lg:px-8\">\n<div class=\"mx-auto max-w-2xl\">\n");
    if let Some(rating) = review.get("rating").filter(|r| r.truthy()) {
        let stars = rating.get("stars").filter(|s| s.truthy());
        if let Some(stars) = stars.and_then(Json::as_i64) {
            let color = rating.get("color").map(Json::display).unwrap_or_default();
            let _ = writeln!(h, "<div class=\"flex gap-x-1 text-{}-500\">", html_escape(&color));
            // Capped so a silly rating cannot blow the page up; real ratings are 1..=5.
            let full = stars.clamp(0, 100);
            for _ in 0..full {
                h.push_str(FULL_STAR);
                h.push('\n');
            }
            for _ in 0..(5 - full).max(0) {
                h.push_str(EMPTY_STAR);
                h.push('\n');
            }
            h.push_str("</div>\n");
        } else if rating.get("error").is_some_and(Json::truthy) {
            h.push_str("<p class=\"text-red-500\">Ratings service is currently unavailable</p>\n");
        }
    }
    let text = review.get("text").map(Json::display).unwrap_or_default();
    let reviewer = review.get("reviewer").map(Json::display).unwrap_or_default();
    let on_cluster = if cluster != "null" && !cluster.is_empty() {
        format!(" on cluster {}", html_escape(cluster))
    } else {
        String::new()
    };
    let _ = write!(
        h,
        "<blockquote class=\"mt-10 text-xl font-semibold leading-8 tracking-tight text-gray-900\">\n\
         <p>\"{}\"</p>\n</blockquote>\n\
         <div class=\"mt-4 flex items-center gap-x-6\">\n\
         <img class=\"h-16 w-16 rounded-full bg-gray-50\" src=\"/static/img/izzy.png\" alt=\"Izzy\">\n\
         <div class=\"text-sm leading-6\">\n\
         <div class=\"font-semibold text-gray-900\">{}</div>\n\
         <div class=\"mt-0.5 text-gray-600 font-mono\">Reviews served by: {}{}</div>\n\
         </div>\n</div>\n</div>\n</section>\n",
        html_escape(&text),
        html_escape(&reviewer),
        html_escape(podname),
        on_cluster
    );
}

/// The landing page: the service tree as a json2html-style table and the two user links.
async fn index(State(st): State<Arc<St>>) -> Html<String> {
    let service = |b: &Backend, children: Vec<Json>| {
        Json::obj(vec![
            ("name", Json::str(b.base.clone())),
            ("endpoint", Json::str(b.endpoint)),
            ("children", Json::Arr(children)),
        ])
    };
    let details = service(&st.details, vec![]);
    let ratings = service(&st.ratings, vec![]);
    let reviews = service(&st.reviews, vec![ratings]);
    // Upstream labels the root with the details URL and endpoint; kept as the page shows it.
    let tree = service(&st.details, vec![details, reviews]);
    let mut table = String::new();
    json2html(&mut table, &tree);
    Html(format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Simple Bookstore App</title>\n\
         <link rel=\"stylesheet\" href=\"static/tailwind/tailwind.css\">\n</head>\n<body>\n\
         <div class=\"container mx-auto px-4 py-12\">\n\
         <h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n\
         {table}\n\
         <h4>Click on one of the links below to auto generate a request to the backend as a real user or a tester</h4>\n\
         <p><a href=\"/productpage?u=normal\">Normal user</a></p>\n\
         <p><a href=\"/productpage?u=test\">Test user</a></p>\n\
         </div>\n</body>\n</html>\n"
    ))
}

const TABLE_ATTRS: &str = "border=\"1\" class=\"table table-condensed table-bordered table-hover\"";

/// json2html's layout: objects as key/value rows, lists of objects as a table with a header row.
fn json2html(out: &mut String, v: &Json) {
    match v {
        Json::Obj(members) => {
            let _ = write!(out, "<table {TABLE_ATTRS}>");
            for (k, val) in members {
                let _ = write!(out, "<tr><th>{}</th><td>", html_escape(k));
                json2html(out, val);
                out.push_str("</td></tr>");
            }
            out.push_str("</table>");
        }
        Json::Arr(items) if items.is_empty() => {}
        Json::Arr(items) => {
            let keys: Vec<&str> = match items.first() {
                Some(Json::Obj(m)) => m.iter().map(|(k, _)| k.as_str()).collect(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                out.push_str("<ul>");
                for item in items {
                    out.push_str("<li>");
                    json2html(out, item);
                    out.push_str("</li>");
                }
                out.push_str("</ul>");
                return;
            }
            let _ = write!(out, "<table {TABLE_ATTRS}><thead><tr>");
            for k in &keys {
                let _ = write!(out, "<th>{}</th>", html_escape(k));
            }
            out.push_str("</tr></thead><tbody>");
            for item in items {
                out.push_str("<tr>");
                for k in &keys {
                    out.push_str("<td>");
                    if let Some(val) = item.get(k) {
                        json2html(out, val);
                    }
                    out.push_str("</td>");
                }
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table>");
        }
        other => out.push_str(&html_escape(&other.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{app_env, client, spawn};
    use crate::AppKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// A reviews stand-in that answers each call with the next (delay, status) of a script.
    async fn scripted_reviews(script: Vec<(u64, u16)>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let script = Arc::new(script);
        let r = Router::new().route(
            "/reviews/{id}",
            get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (delay, status) = script.get(n).copied().unwrap_or((0, 200));
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let body = r#"{"id": "0","podname": "reviews-v1-x-y","clustername": "null","reviews": []}"#;
                    (StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        (spawn(r).await, calls)
    }

    async fn productpage(reviews: std::net::SocketAddr, details_port: u16) -> std::net::SocketAddr {
        let env = app_env(
            AppKind::ProductPage,
            "productpage-v1-1-abcde",
            &[
                ("DETAILS_HOSTNAME", "127.0.0.1".to_string()),
                ("DETAILS_SERVICE_PORT", details_port.to_string()),
                ("REVIEWS_HOSTNAME", "127.0.0.1".to_string()),
                ("REVIEWS_SERVICE_PORT", reviews.port().to_string()),
            ],
        );
        let timing = Timing {
            details: Duration::from_millis(100),
            reviews: Duration::from_millis(100),
            ratings: Duration::from_millis(100),
        };
        spawn(router(&env, timing).unwrap()).await
    }

    #[tokio::test]
    async fn reviews_timeout_is_tried_twice_then_reported() {
        let (reviews, calls) = scripted_reviews(vec![(700, 200), (700, 200)]).await;
        let pp = productpage(reviews, 1).await;
        let t = Instant::now();
        let r = client().get(format!("http://{pp}/productpage")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let elapsed = t.elapsed();
        let body = r.text().await.unwrap();
        assert!(body.contains("Error fetching product reviews"));
        assert!(body.contains(REVIEWS_ERROR));
        assert!(body.contains(DETAILS_ERROR));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(600), "{elapsed:?}");
    }

    #[tokio::test]
    async fn reviews_retry_after_503_succeeds() {
        let (reviews, calls) = scripted_reviews(vec![(0, 503), (0, 200)]).await;
        let pp = productpage(reviews, 1).await;
        let body = client().get(format!("http://{pp}/productpage")).send().await.unwrap().text().await.unwrap();
        assert!(body.contains("Book Reviews"), "{body}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // The API reports the last upstream status after both attempts fail.
        let (reviews, calls) = scripted_reviews(vec![(0, 503), (0, 504)]).await;
        let pp = productpage(reviews, 1).await;
        let r = client().get(format!("http://{pp}/api/v1/products/0/reviews")).send().await.unwrap();
        assert_eq!(r.status(), 504);
        assert_eq!(r.text().await.unwrap(), format!(r#"{{"error": "{REVIEWS_ERROR}"}}"#));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn b3_reinjection() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463AC35C9F6413AD"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert("x-b3-parentspanid", HeaderValue::from_static("0020000000000001"));
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        let out = forward_headers(&h, Some("jason"));
        assert_eq!(out["x-b3-traceid"], "0000000000000000463ac35c9f6413ad");
        assert_eq!(out["x-b3-spanid"], "a2fb4a1d1a96d312");
        assert_eq!(out["x-b3-sampled"], "1");
        assert!(out.get("x-b3-parentspanid").is_none());
        assert_eq!(out["end-user"], "jason");
        assert_eq!(out["x-request-id"], "abc");

        let mut single = HeaderMap::new();
        single.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"));
        let out = forward_headers(&single, None);
        assert_eq!(out["x-b3-sampled"], "0");
        assert!(out.get("end-user").is_none());

        let mut bad = HeaderMap::new();
        bad.insert("x-b3-traceid", HeaderValue::from_static("xyz"));
        bad.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        assert!(forward_headers(&bad, None).get("x-b3-traceid").is_none());
    }

    #[test]
    fn session_cookie_round_trip() {
        let mut h = HeaderMap::new();
        let v = format!("other=1; session={}", session_cookie("jason"));
        h.insert(header::COOKIE, HeaderValue::from_str(&v).unwrap());
        assert_eq!(session_user(&h).as_deref(), Some("jason"));
        h.insert(header::COOKIE, HeaderValue::from_static("session=garbage!"));
        assert_eq!(session_user(&h), None);
    }

    #[test]
    fn default_timing_is_the_reference() {
        let t = Timing::default();
        assert_eq!(t.details, Duration::from_secs(3));
        assert_eq!(t.reviews, Duration::from_secs(3));
        assert_eq!(t.ratings, Duration::from_secs(3));
        assert_eq!(REVIEWS_ATTEMPTS, 2);
    }
}
