//! Metrics, traces and access logs as users read them: Istio's metric names
//! and labels after known traffic, one trace across productpage, reviews and
//! ratings, spans exported to an OTLP collector, and the JSON access log.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mesh, TempDir};
use serde_json::Value;

async fn get_text(mesh: &Mesh, path: &str) -> String {
    let resp = mesh.client().get(format!("http://{}{path}", mesh.admin)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.text().await.unwrap()
}

async fn get_json(mesh: &Mesh, path: &str) -> Value {
    serde_json::from_str(&get_text(mesh, path).await).unwrap()
}

/// The value of the one series of `metric` whose labels contain every `want` pair.
fn series_value(text: &str, metric: &str, want: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_metrics_from_both_reporters_with_standard_labels() {
    let mesh = Mesh::start(TempDir::new());
    for _ in 0..12 {
        mesh.page("/productpage").await;
    }
    // A 404 from the gateway: no route for this path.
    let resp = mesh.client().get(mesh.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let text = get_text(&mesh, "/stats/prometheus").await;
    let gw_to_pp = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("destination_workload", "productpage-v1"),
        ("destination_app", "productpage"),
        ("destination_version", "v1"),
        ("destination_service", "productpage.default.svc.cluster.local"),
        ("destination_service_name", "productpage"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ];
    assert_eq!(series_value(&text, "istio_requests_total", &gw_to_pp), vec![12.0], "{text}");
    let pp_at_server = [
        ("reporter", "destination"),
        ("source_workload", "istio-ingressgateway"),
        ("destination_workload", "productpage-v1"),
        ("destination_principal", "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    assert_eq!(series_value(&text, "istio_requests_total", &pp_at_server), vec![12.0]);
    // productpage calls details once per page: the server side names its caller by metadata exchange.
    let details = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        ("destination_workload", "details-v1"),
        ("destination_canonical_service", "details"),
        ("destination_canonical_revision", "v1"),
    ];
    assert_eq!(series_value(&text, "istio_requests_total", &details), vec![12.0]);
    let reviews: f64 = series_value(
        &text,
        "istio_requests_total",
        &[("reporter", "source"), ("source_workload", "productpage-v1"), ("destination_app", "reviews")],
    )
    .iter()
    .sum();
    assert_eq!(reviews, 12.0);
    let nr = [("reporter", "source"), ("response_code", "404"), ("response_flags", "NR")];
    assert_eq!(series_value(&text, "istio_requests_total", &nr), vec![1.0]);
    // Histograms carry the same labels, with Envoy's buckets.
    let count = series_value(&text, "istio_request_duration_milliseconds_count", &gw_to_pp);
    assert_eq!(count, vec![12.0]);
    let inf = series_value(&text, "istio_request_duration_milliseconds_bucket", &[("le", "+Inf")]);
    assert!(!inf.is_empty());
    assert!(text.contains("# TYPE istio_response_bytes histogram"));
    assert!(series_value(&text, "istio_response_bytes_sum", &gw_to_pp)[0] > 12.0 * 1000.0);
    // Envoy's cluster counters, per proxy.
    let gw = get_text(&mesh, "/stats/prometheus?proxy=istio-ingressgateway").await;
    let total = series_value(
        &gw,
        "envoy_cluster_upstream_rq_total",
        &[("cluster_name", "outbound|9080||productpage.default.svc.cluster.local")],
    );
    assert_eq!(total, vec![12.0], "{gw}");
    assert!(gw.contains("envoy_cluster_upstream_rq_pending_overflow{"));
    assert!(!gw.contains("reporter=\"destination\""), "one proxy's scrape holds its own reports only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_gateway_productpage_reviews_and_ratings() {
    let mesh = Mesh::start(TempDir::new());
    // reviews v2 and v3 call ratings; v1 does not. A few pages give at least one such trace.
    let mut found = None;
    for _ in 0..30 {
        let page = mesh.page("/productpage").await;
        if common::reviews_version(&page) != "v1" {
            found = Some(());
            break;
        }
    }
    assert!(found.is_some(), "no page served by reviews v2 or v3");
    let deadline = Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let list = get_json(&mesh, "/meshd/traces").await;
        let mut hit = None;
        for t in list["traces"].as_array().unwrap() {
            let id = t["trace_id"].as_str().unwrap();
            let trace = get_json(&mesh, &format!("/meshd/traces/{id}")).await;
            let spans = trace["spans"].as_array().unwrap().clone();
            let workloads: HashSet<&str> = spans.iter().map(|s| s["workload"].as_str().unwrap()).collect();
            // The gateway's span is the last to end: each worker hands its spans over on its own,
            // so wait until the whole trace has arrived.
            if ["ratings-v1", "productpage-v1", "istio-ingressgateway"].iter().all(|w| workloads.contains(w)) {
                hit = Some(spans);
                break;
            }
        }
        if let Some(spans) = hit {
            break spans;
        }
        assert!(Instant::now() < deadline, "no trace reached ratings: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let workloads: HashSet<&str> = spans.iter().map(|s| s["workload"].as_str().unwrap()).collect();
    assert!(workloads.contains("istio-ingressgateway"), "{workloads:?}");
    assert!(workloads.contains("details-v1"));
    assert!(workloads.iter().any(|w| *w == "reviews-v2" || *w == "reviews-v3"), "{workloads:?}");
    // Each hop has a client span at the caller and a server span at the callee.
    let kinds = |w: &str| -> Vec<&str> {
        spans.iter().filter(|s| s["workload"] == w).map(|s| s["kind"].as_str().unwrap()).collect()
    };
    assert!(kinds("ratings-v1").contains(&"server"));
    assert!(kinds("istio-ingressgateway").contains(&"client"));
    // The spans form one tree: a single root (the gateway's), every other parent is in the trace.
    let ids: HashSet<&str> = spans.iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"].is_null()).collect();
    assert_eq!(roots.len(), 1, "{spans:?}");
    assert_eq!(roots[0]["workload"], "istio-ingressgateway");
    for s in &spans {
        if let Some(p) = s["parent_span_id"].as_str() {
            assert!(ids.contains(p), "orphan span {s}");
        }
    }
    let ratings = spans.iter().find(|s| s["workload"] == "ratings-v1" && s["kind"] == "server").unwrap();
    assert_eq!(ratings["operation"], "ratings.default.svc.cluster.local:9080/*");
    assert_eq!(ratings["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_an_otlp_collector() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.0);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let endpoint = format!("http://{collector}");
    let mesh = Mesh::start_with(TempDir::new(), &["--otlp-endpoint", &endpoint]);
    mesh.page("/productpage").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut services: HashMap<String, usize> = HashMap::new();
    while !services.contains_key("productpage-v1") || !services.contains_key("istio-ingressgateway") {
        assert!(Instant::now() < deadline, "no spans exported: {services:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        services.clear();
        for body in received.lock().unwrap().iter() {
            for rs in body["resourceSpans"].as_array().unwrap() {
                let name = rs["resource"]["attributes"][0]["value"]["stringValue"].as_str().unwrap().to_string();
                let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
                for s in spans {
                    assert_eq!(s["traceId"].as_str().unwrap().len(), 32);
                    assert_eq!(s["spanId"].as_str().unwrap().len(), 16);
                    assert!(s["startTimeUnixNano"].as_str().unwrap().parse::<u128>().is_ok());
                }
                *services.entry(name).or_default() += spans.len();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_istios_keys() {
    let mesh = Mesh::start_with(TempDir::new(), &["--access-log-encoding", "JSON"]);
    let resp = mesh.client().get(mesh.url("/productpage")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let sent = resp.headers()["x-envoy-upstream-service-time"].to_str().unwrap().to_string();
    let line = mesh.proxy_log_line("istio-ingressgateway", &["\"/productpage\""]);
    let j: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["method"], "GET", "{line}");
    assert_eq!(j["response_code"], 200, "{line}");
    assert_eq!(j["response_flags"], "-");
    assert_eq!(j["upstream_cluster"], "outbound|9080||productpage.default.svc.cluster.local");
    assert!(j["request_id"].as_str().unwrap().len() == 36);
    // The service time the proxy put on the response, in milliseconds: at the gateway, the one
    // the client got.
    assert_eq!(j["upstream_service_time"], sent.as_str(), "{line}");
    // The same request id reaches productpage's sidecar, and its log names the inbound cluster.
    let id = j["request_id"].as_str().unwrap();
    let pp = mesh.proxy_log_line("productpage-v1", &[id, "\"inbound|9080||\""]);
    let pj: Value = serde_json::from_str(&pp).unwrap();
    assert_eq!(pj["upstream_cluster"], "inbound|9080||");
    assert!(pj["upstream_service_time"].as_str().is_some_and(|t| t.parse::<u32>().is_ok()), "{pp}");
}
