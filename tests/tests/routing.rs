//! The user's first journey (Istio's Bookinfo, request routing, traffic
//! shifting, ingress control): the real binary, real sample YAML, loopback.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{login, raw_exchange, reviews_version, Mesh, TempDir};

const NET: &str = "bookinfo/networking/";

async fn versions(mesh: &Mesh, n: usize, cookie: Option<&str>) -> HashMap<&'static str, usize> {
    let mut seen = HashMap::new();
    let client = mesh.client();
    for _ in 0..n {
        let mut req = client.get(mesh.url("/productpage"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        *seen.entry(reviews_version(&body)).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn empty_folder_serves_bookinfo_with_every_reviews_version() {
    let mesh = Mesh::start(TempDir::new());
    assert!(mesh.output().iter().any(|l| l.contains("built-in sample set")));
    let page = mesh.page("/productpage").await;
    assert!(page.contains("<title>Simple Bookstore App</title>"), "{page}");
    assert!(page.contains("Book Details"));
    // No VirtualService: reviews balances over all three versions.
    let mut seen = HashMap::new();
    for _ in 0..20 {
        let s = versions(&mesh, 10, None).await;
        for (k, v) in s {
            *seen.entry(k).or_insert(0) += v;
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "all of v1, v2, v3 serve: {seen:?}");
    // The same from inside the mesh.
    let body = mesh.mesh_client().get("http://productpage:9080/productpage").send().await.unwrap();
    assert_eq!(body.headers()["server"], "envoy");
    assert!(body.text().await.unwrap().contains("<title>Simple Bookstore App</title>"));
}

#[tokio::test]
async fn all_v1_never_shows_stars_and_test_v2_gives_jason_black_stars() {
    let dir = TempDir::new();
    dir.add_sample(&format!("{NET}destination-rule-all.yaml"));
    dir.add_sample(&format!("{NET}virtual-service-all-v1.yaml"));
    let mesh = Mesh::start(dir);
    let seen = versions(&mesh, 30, None).await;
    assert_eq!(seen.get("v1"), Some(&30), "{seen:?}");

    let mark = mesh.mark();
    mesh.dir.add_sample(&format!("{NET}virtual-service-reviews-test-v2.yaml"));
    mesh.wait_applied(mark);
    let jason = login(&mesh, "jason").await;
    let page = mesh
        .client()
        .get(mesh.url("/productpage"))
        .header("cookie", &jason)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("jason"), "the page shows the signed-in user");
    assert_eq!(reviews_version(&page), "v2");
    assert!(page.contains("text-black-500"));
    assert_eq!(versions(&mesh, 10, Some(&jason)).await.get("v2"), Some(&10));
    assert_eq!(versions(&mesh, 10, None).await.get("v1"), Some(&10));
    let bob = login(&mesh, "bob").await;
    assert_eq!(versions(&mesh, 10, Some(&bob)).await.get("v1"), Some(&10));
}

async fn share(mesh: &Mesh, version: &str, n: usize) -> f64 {
    let seen = versions(mesh, n, None).await;
    *seen.get(version).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test]
async fn weighted_routes_split_traffic_within_bounds() {
    let dir = TempDir::new();
    dir.add_sample(&format!("{NET}destination-rule-all.yaml"));
    dir.add_sample(&format!("{NET}virtual-service-reviews-50-v3.yaml"));
    let mesh = Mesh::start(dir);
    // 300 draws at p = 0.5: the bounds are more than 5 standard deviations wide.
    let v3 = share(&mesh, "v3", 300).await;
    assert!((0.35..=0.65).contains(&v3), "v3 share {v3}");
    assert_eq!(versions(&mesh, 20, None).await.get("v2"), None, "50-v3 never routes to v2");

    let mark = mesh.mark();
    mesh.dir.remove("virtual-service-reviews-50-v3.yaml");
    mesh.dir.add_sample(&format!("{NET}virtual-service-reviews-80-20.yaml"));
    mesh.wait_applied(mark);
    // p = 0.2 over 300: sd 2.3 points; [10%, 30%] is over 4 sd each way.
    let v2 = share(&mesh, "v2", 300).await;
    assert!((0.10..=0.30).contains(&v2), "v2 share {v2}");
}

#[tokio::test]
async fn missing_subset_is_503_nc_and_unknown_host_is_404() {
    let dir = TempDir::new();
    // A route to subset v1 with no DestinationRule: the classic "apply destination rules first".
    dir.add_sample(&format!("{NET}virtual-service-all-v1.yaml"));
    let mesh = Mesh::start(dir);
    let resp = mesh.mesh_client().get("http://reviews:9080/reviews/0").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "");
    let page = mesh.page("/productpage").await;
    assert!(page.contains("Sorry, product reviews are currently unavailable for this book."));

    let resp = mesh.client().get(mesh.url("/nothing-here")).send().await.unwrap();
    assert_eq!(resp.status(), 404, "no route at the gateway: NR");
    assert_eq!(resp.headers()["server"], "istio-envoy");
    // The access logs say why, with Envoy's flags.
    mesh.proxy_log_line("istio-ingressgateway", &["\"GET /nothing-here HTTP/1.1\" 404 NR route_not_found"]);
    let line = mesh.proxy_log_line(
        "productpage-v1-",
        &["\"GET /reviews/0 HTTP/1.1\" 503 NC cluster_not_found", "\"reviews:9080\""],
    );
    assert!(line.starts_with('['), "{line}");
}

#[tokio::test]
async fn invalid_edit_keeps_old_routing_and_fixed_edit_applies() {
    let dir = TempDir::new();
    dir.add_sample(&format!("{NET}destination-rule-all.yaml"));
    dir.add_sample(&format!("{NET}virtual-service-all-v1.yaml"));
    let mesh = Mesh::start(dir);
    assert_eq!(versions(&mesh, 5, None).await.get("v1"), Some(&5));

    let good =
        std::fs::read_to_string(common::samples().join(format!("{NET}virtual-service-reviews-v3.yaml"))).unwrap();
    let bad = good.replace("host: reviews", "hots: reviews");
    let mark = mesh.mark();
    mesh.dir.write("reviews.yaml", &bad);
    let err = mesh.wait_for_line_after(mark, |l| l.contains("error:"), Duration::from_secs(20));
    mesh.wait_rejected(mark);
    let line_no = bad.lines().position(|l| l.contains("hots:")).unwrap() + 1;
    assert!(err.contains(&format!("reviews.yaml:{line_no}")), "error names file:line: {err}");
    assert!(err.contains("hots"), "error names the field: {err}");
    assert_eq!(versions(&mesh, 10, None).await.get("v1"), Some(&10), "old routing still serves");

    // The fix: all-v1 and reviews-v3 both define `reviews`; replace all-v1 by the fixed file.
    let mark = mesh.mark();
    mesh.dir.write("reviews.yaml", &good);
    mesh.wait_applied(mark);
    let mark = mesh.mark();
    mesh.dir.remove("virtual-service-all-v1.yaml");
    mesh.wait_applied(mark);
    assert_eq!(versions(&mesh, 10, None).await.get("v3"), Some(&10));
}

/// The gateway tells the app who its client is as Envoy's ingress does (`use_remote_address`, no
/// trusted hops): the peer appended to `X-Forwarded-For`, `X-Envoy-Internal` for a local peer;
/// and `remoteIpBlocks` believes only that last entry, not one a client wrote itself.
#[tokio::test]
async fn the_gateway_appends_its_client_to_x_forwarded_for_and_trusts_no_hop() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("istio.io-tasks/ingress-control/5-browser-httpbin-gateway-and-vs.yaml");
    dir.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-doc-net, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]\n",
    );
    let mesh = Mesh::start(dir);
    let headers = |xff: Option<&'static str>| {
        let (c, url) = (mesh.client(), mesh.url("/headers"));
        async move {
            let mut req = c.get(url);
            if let Some(x) = xff {
                req = req.header("x-forwarded-for", x).header("x-envoy-internal", "spoofed");
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default()["headers"].clone())
        }
    };
    let (status, h) = headers(None).await;
    assert_eq!(status, 200);
    assert_eq!(h["X-Forwarded-For"][0], "127.0.0.1", "{h}");
    assert_eq!(h["X-Envoy-Internal"][0], "true", "{h}");
    // A client's own entry stays in front; the DENY on its range does not apply to it.
    let (status, h) = headers(Some("203.0.113.7")).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["X-Forwarded-For"][0], "203.0.113.7,127.0.0.1", "{h}");
    assert_eq!(h["X-Envoy-Internal"], serde_json::json!(["true"]), "the client's copy is dropped: {h}");
    // The gateway's access log has the field as the connection manager left it.
    mesh.proxy_log_line("istio-ingressgateway", &["\"203.0.113.7,127.0.0.1\""]);
}

#[tokio::test]
async fn ingress_control_task_answers_as_the_page_says() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("istio.io-tasks/ingress-control/1-httpbin-gateway.yaml");
    dir.add_sample("istio.io-tasks/ingress-control/2-httpbin-virtualservice.yaml");
    let mesh = Mesh::start(dir);
    common::ingress_task_answers(&mesh).await;
    let c = mesh.client();
    // The folder has a workload, so the built-in Bookinfo does not run.
    let resp = c.get(mesh.url("/productpage")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Browser variant: hosts "*" and a /headers prefix.
    let mark = mesh.mark();
    mesh.dir.add_sample("istio.io-tasks/ingress-control/5-browser-httpbin-gateway-and-vs.yaml");
    mesh.dir.remove("1-httpbin-gateway.yaml");
    mesh.dir.remove("2-httpbin-virtualservice.yaml");
    mesh.wait_applied(mark);
    let mut ok = false;
    for _ in 0..20 {
        let resp = c.get(mesh.url("/headers")).send().await.unwrap();
        if resp.status() == 200 {
            let v: serde_json::Value = resp.json().await.unwrap();
            assert!(v["headers"]["Host"].is_array(), "go-httpbin arrays: {v}");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "browser variant serves /headers without a Host header");
}

#[tokio::test]
async fn status_lists_pods_and_curl_reaches_services() {
    let mesh = Mesh::start(TempDir::new());
    let out = mesh.cli(&["status"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    for prefix in [
        "productpage-v1-",
        "details-v1-",
        "ratings-v1-",
        "reviews-v1-",
        "reviews-v2-",
        "reviews-v3-",
        "httpbin-",
        "fortio-deploy-",
    ] {
        assert!(table.contains(prefix), "{prefix} in\n{table}");
    }
    let re_name = table.lines().find(|l| l.contains("reviews-v2-")).unwrap();
    let name = re_name.split_whitespace().nth(1).unwrap();
    // pod-template-hash (10) and suffix (5) as Kubernetes names pods.
    let parts: Vec<&str> = name.rsplitn(3, '-').collect();
    assert_eq!(parts[0].len(), 5, "{name}");
    assert_eq!(parts[1].len(), 10, "{name}");

    let out = mesh.cli(&["curl", "http://reviews:9080/reviews/0"]);
    let body = String::from_utf8_lossy(&out.stdout);
    let head = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{head}");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("server: envoy"));
    assert!(body.contains("\"podname\": \"reviews-v"), "{body}");

    // The shared outbound port works as http_proxy for any client.
    let resp = mesh.mesh_client().get("http://httpbin:8000/headers").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["Host"][0], "httpbin:8000");
    assert_eq!(v["headers"]["X-Envoy-Attempt-Count"][0], "1");
    assert!(v["headers"]["X-Request-Id"][0].as_str().unwrap().len() == 36);
}

#[tokio::test]
async fn header_edits_at_route_and_destination_level() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - match: [{uri: {prefix: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
    headers: {response: {set: {x-direct: "yes"}}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
    headers: {response: {set: {x-redirect: "yes"}}}
  - match: [{uri: {prefix: /anything/weighted}}]
    headers:
      request: {set: {x-level: route}}
      response: {set: {x-level: route}}
    route:
    - destination: {host: httpbin}
      weight: 100
      headers:
        request: {set: {x-level: destination}}
        response: {set: {x-level: destination}}
    - destination: {host: httpbin}
      weight: 0
  - headers:
      request:
        set: {x-route: "set", x-level: route}
        add: {x-added: "yes"}
        remove: [x-drop-me]
      response:
        set: {x-served-by: "meshd-route"}
    route:
    - destination: {host: httpbin}
      headers:
        request:
          set: {x-destination: "httpbin", x-level: destination}
        response:
          remove: [access-control-allow-origin]
"#,
    );
    let mesh = Mesh::start(dir);
    let resp = mesh
        .mesh_client()
        .get("http://httpbin:8000/headers")
        .header("x-drop-me", "1")
        .header("x-route", "original")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-served-by"], "meshd-route");
    assert!(!resp.headers().contains_key("access-control-allow-origin"), "removed at the destination level");
    let v: serde_json::Value = resp.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["X-Route"][0], "set", "{h}");
    assert_eq!(h["X-Added"][0], "yes");
    assert_eq!(h["X-Destination"][0], "httpbin");
    assert!(h.get("X-Drop-Me").is_none(), "{h}");
    // One destination: Istio appends its edits after the route's, so the destination's `set` wins.
    assert_eq!(h["X-Level"][0], "destination", "{h}");
    // Replies the proxy writes itself carry the route's response edits too, as Envoy's do.
    let r = mesh.mesh_client().get("http://httpbin:8000/direct").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("x-direct").map(|v| v.to_str().unwrap())), (418, Some("yes")));
    let r = mesh.mesh_client().get("http://httpbin:8000/old").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("x-redirect").map(|v| v.to_str().unwrap())), (301, Some("yes")));
    // A weighted list (weight 0 included): Envoy applies the route's edits last, and they win.
    let resp = mesh.mesh_client().get("http://httpbin:8000/anything/weighted").send().await.unwrap();
    assert_eq!(resp.headers()["x-level"], "route");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["X-Level"][0], "route", "{v}");
}

#[tokio::test]
async fn request_bodies_of_every_framing_reach_the_app_whole() {
    let mesh = Mesh::start(TempDir::new());
    // Through the mesh client's sidecar (an HTTP proxy: absolute-form targets), then httpbin's.
    let cases: [(&str, &[u8]); 3] = [
        ("content-length", b"content-length: 11\r\n\r\nhello world"),
        ("chunked", b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        ("expect", b"expect: 100-continue\r\ncontent-length: 11\r\n\r\nhello world"),
    ];
    for (framing, tail) in cases {
        let mut req =
            b"POST http://httpbin:8000/post HTTP/1.1\r\nhost: httpbin:8000\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                .to_vec();
        req.extend_from_slice(tail);
        let wire = raw_exchange(mesh.proxy, &req).await;
        let final_response = wire.rsplit("HTTP/1.1 ").next().unwrap();
        assert!(final_response.starts_with("200 OK"), "{framing}: {wire}");
        assert!(wire.contains("\"data\": \"hello world\""), "{framing}: the app got the whole body: {wire}");
        if framing == "expect" {
            assert!(wire.starts_with("HTTP/1.1 100 Continue\r\n"), "{wire}");
        }
    }
    // A pipelined pair on one connection, the second closing it.
    let two = b"GET http://httpbin:8000/get?n=1 HTTP/1.1\r\nhost: httpbin:8000\r\n\r\n\
                GET http://httpbin:8000/get?n=2 HTTP/1.1\r\nhost: httpbin:8000\r\nconnection: close\r\n\r\n";
    let wire = raw_exchange(mesh.proxy, two).await;
    assert_eq!(wire.matches("HTTP/1.1 200 OK").count(), 2, "{wire}");
    assert!(wire.find("n=1").unwrap() < wire.find("n=2").unwrap(), "{wire}");
}

/// Status of `GET /productpage` over HTTP/2 (prior knowledge) to the gateway with a header
/// field of `size` bytes: the status, or the error the connection or stream ended with.
async fn h2_status_with_header(addr: std::net::SocketAddr, size: usize) -> Result<u16, String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<hyper::body::Bytes>>(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/productpage"))
        .header("x-big", "a".repeat(size))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap();
    resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn heads_are_held_to_envoys_60_kib_over_either_http_version() {
    let mesh = Mesh::start(TempDir::new());
    let head = |size: usize| {
        format!(
            "GET /productpage HTTP/1.1\r\nhost: bookinfo\r\nx-big: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(size)
        )
    };
    // Under Envoy's default limit (`max_request_headers_kb: 60`) a head is served, over it the
    // answer is 431 and the connection closes.
    let wire = raw_exchange(mesh.gateway, head(40 << 10).as_bytes()).await;
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &wire[..wire.len().min(200)]);
    for size in [70 << 10, 200 << 10] {
        let wire = raw_exchange(mesh.gateway, head(size).as_bytes()).await;
        assert!(wire.starts_with("HTTP/1.1 431 "), "{size}: {}", &wire[..wire.len().min(200)]);
    }
    // A head that never ends is refused once it is past the limit, not buffered on.
    let unended = format!("GET /productpage HTTP/1.1\r\nhost: bookinfo\r\nx-big: {}", "a".repeat(100 << 10));
    let wire = raw_exchange(mesh.gateway, unended.as_bytes()).await;
    assert!(wire.starts_with("HTTP/1.1 431 "), "{}", &wire[..wire.len().min(200)]);
    // HTTP/2 has the same limit for a header list: hyper's own default would refuse 16 KiB.
    assert_eq!(h2_status_with_header(mesh.gateway, 40 << 10).await, Ok(200));
    assert_eq!(h2_status_with_header(mesh.gateway, 70 << 10).await, Ok(431));
    assert_eq!(mesh.client().get(mesh.url("/productpage")).send().await.unwrap().status(), 200);
}

/// `corsPolicy` as Envoy's CORS filter applies it (the VirtualService reference's example): the
/// proxy answers an allowed origin's preflight itself and marks its actual requests' responses;
/// another origin's requests pass unmarked.
#[tokio::test]
async fn cors_preflights_are_answered_by_the_proxy_and_allowed_origins_marked() {
    let dir = TempDir::new();
    dir.write(
        "cors.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
    corsPolicy:
      allowOrigins: [{exact: https://example.com}]
      allowMethods: [POST, GET]
      allowCredentials: false
      allowHeaders: [X-Foo-Bar]
      exposeHeaders: [X-Served-By]
      maxAge: "24h"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"#,
    );
    let mesh = Mesh::start(dir);
    assert!(!mesh.output().join("\n").contains("corsPolicy"), "{:?}", mesh.output());
    let c = mesh.mesh_client();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, "http://reviews:9080/reviews/0")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let r = preflight("https://example.com").await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://example.com");
    assert_eq!(h["access-control-allow-methods"], "POST,GET");
    assert_eq!(h["access-control-allow-headers"], "X-Foo-Bar");
    assert_eq!(h["access-control-max-age"], "86400");
    assert!(!h.contains_key("access-control-allow-credentials"), "allowCredentials false");
    // The mesh client is the built-in set's fortio pod's sidecar.
    mesh.proxy_log_line("fortio-deploy-", &["\"OPTIONS /reviews/0 HTTP/1.1\" 200 - cors_response"]);
    // Another origin's preflight goes on to the app (FORWARD, the default), unmarked.
    let r = preflight("https://other.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    mesh.proxy_log_line("reviews-v1-", &["\"OPTIONS /reviews/0 HTTP/1.1\""]);
    // Actual requests.
    let get = |origin: &'static str| c.get("http://reviews:9080/reviews/0").header("origin", origin).send();
    let r = get("https://example.com").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://example.com");
    assert_eq!(r.headers()["access-control-expose-headers"], "X-Served-By");
    let r = get("https://other.example").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}
