//! The resilience tasks with Istio's own YAML: fault injection, request
//! timeouts, circuit breaking, mirroring, retries, consistent hashing and
//! outlier detection. Timing assertions are lower bounds only.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{login, reviews_version, Mesh, TempDir};

const NET: &str = "bookinfo/networking/";

async fn page_as(mesh: &Mesh, cookie: Option<&str>) -> (String, Duration) {
    let start = Instant::now();
    let mut req = mesh.client().get(mesh.url("/productpage"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "productpage itself always answers 200");
    let body = resp.text().await.unwrap();
    (body, start.elapsed())
}

#[tokio::test]
async fn fault_injection_delay_gives_jason_the_reviews_error_after_6s() {
    let dir = TempDir::new();
    for f in ["destination-rule-all.yaml", "virtual-service-all-v1.yaml"] {
        dir.add_sample(&format!("{NET}{f}"));
    }
    let mesh = Mesh::start(dir);
    let mark = mesh.mark();
    // test-v2 and ratings-test-delay both replace VirtualServices of all-v1 (same names), as kubectl apply would.
    mesh.dir.add_sample(&format!("{NET}virtual-service-reviews-test-v2.yaml"));
    mesh.dir.add_sample(&format!("{NET}virtual-service-ratings-test-delay.yaml"));
    mesh.wait_applied(mark);
    let jason = login(&mesh, "jason").await;
    let (page, took) = page_as(&mesh, Some(&jason)).await;
    assert!(page.contains("Sorry, product reviews are currently unavailable for this book."), "{page}");
    // productpage gives reviews 3 s and tries twice: about 6 s, not 7.
    assert!(took >= Duration::from_millis(5900), "took {took:?}");
    let (page, _) = page_as(&mesh, None).await;
    assert!(!page.contains("unavailable"), "others are not delayed");
    assert_eq!(reviews_version(&page), "v1");
}

#[tokio::test]
async fn fault_injection_abort_shows_ratings_unavailable_for_jason_only() {
    let dir = TempDir::new();
    for f in [
        "destination-rule-all.yaml",
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-abort.yaml",
    ] {
        dir.add_sample(&format!("{NET}{f}"));
    }
    let mesh = Mesh::start(dir);
    let jason = login(&mesh, "jason").await;
    let (page, _) = page_as(&mesh, Some(&jason)).await;
    assert!(page.contains("Ratings service is currently unavailable"), "{page}");
    assert!(page.contains("Reviews served by: reviews-v2-"));
    let (page, _) = page_as(&mesh, None).await;
    assert!(!page.contains("Ratings service is currently unavailable"));
    // The abort itself, seen from inside the mesh with jason's header.
    let resp =
        mesh.mesh_client().get("http://ratings:9080/ratings/0").header("end-user", "jason").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "fault filter abort");
    mesh.proxy_log_line("reviews-v2-", &["\"GET /ratings/0 HTTP/1.1\" 500 FI fault_filter_abort"]);
}

#[tokio::test]
async fn request_timeouts_task() {
    let dir = TempDir::new();
    // The task starts from all-v1 and applies reviews-v2 over it; in a folder, the task's
    // files alone give the same routes (details, productpage: their only version).
    dir.add_sample(&format!("{NET}destination-rule-all.yaml"));
    dir.add_sample("istio.io-tasks/request-timeouts/1-reviews-v2.yaml");
    dir.add_sample("istio.io-tasks/request-timeouts/2-ratings-delay-2s.yaml");
    let mesh = Mesh::start(dir);
    let (page, took) = page_as(&mesh, None).await;
    assert_eq!(reviews_version(&page), "v2", "black stars after the 2 s delay");
    assert!(took >= Duration::from_millis(1900), "took {took:?}");

    let mark = mesh.mark();
    mesh.dir.add_sample("istio.io-tasks/request-timeouts/3-reviews-timeout-0.5s.yaml");
    mesh.wait_applied(mark);
    let (page, took) = page_as(&mesh, None).await;
    assert!(page.contains("Sorry, product reviews are currently unavailable for this book."), "{page}");
    // Two tries of 0.5 s each.
    assert!(took >= Duration::from_millis(950), "took {took:?}");
    let resp = mesh.mesh_client().get("http://reviews:9080/reviews/0").send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.text().await.unwrap(), "upstream request timeout");
    mesh.proxy_log_line(
        "productpage-v1-",
        &["504 UT upstream_response_timeout", "outbound|9080|v2|reviews.default.svc.cluster.local"],
    );
    // reviews-v2's sidecar saw its caller give up: Envoy logs that request `0 DC`.
    mesh.proxy_log_line("reviews-v2-", &["\"GET /reviews/0 HTTP/1.1\" 0 DC downstream_remote_disconnect"]);
    // The per-request override beats the route timeout.
    let resp = mesh
        .mesh_client()
        .get("http://reviews:9080/reviews/0")
        .header("x-envoy-upstream-rq-timeout-ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn max_connections_on_a_service_of_many_pods_opens_one_to_each_as_envoy_does() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/platform/kube/bookinfo.yaml");
    dir.add_sample("sleep/sleep.yaml");
    dir.write(
        "reviews-pool.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}\n",
    );
    let mesh = Mesh::start(dir);
    // The requests spread over reviews' three pods (least request, at random among the idle):
    // the first pod's idle connection holds the one slot, and Envoy opens one past the limit to
    // a pod that has none rather than leave its requests waiting for a slot never given back.
    let client = mesh.mesh_client();
    for n in 0..30 {
        let resp = tokio::time::timeout(Duration::from_secs(10), client.get("http://reviews:9080/reviews/0").send())
            .await
            .unwrap_or_else(|_| panic!("request {n} left waiting"))
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let stat = |name| mesh.cluster_stat("outbound|9080||reviews.default.svc.cluster.local", name);
    assert_eq!(stat("upstream_cx_total").await, 3, "one connection a pod, each used again");
    assert_eq!(stat("upstream_cx_overflow").await, 2);
    assert_eq!(stat("circuit_breakers.default.remaining_cx").await, 0);
}

#[tokio::test]
async fn circuit_breaking_overflows_with_envoys_answer() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("httpbin/sample-client/fortio-deploy.yaml");
    dir.add_sample("istio.io-tasks/circuit-breaking/destination-rule-httpbin.yaml");
    let mesh = Mesh::start(dir);
    let resp = mesh.mesh_client().get("http://httpbin:8000/get").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "envoy");
    assert!(resp.headers().contains_key("x-envoy-upstream-service-time"));

    // maxConnections 1 / http1MaxPendingRequests 1: one request holds the only connection, a second
    // waits in the pending queue, so a third overflows. The first holds it for ten seconds
    // (httpbin's longest delay): the waits poll the admin API, which a loaded machine (the whole
    // suite on two cores) has kept busy for most of one second, and once for three.
    let until = |name: &'static str, want: u64| {
        let mesh = &mesh;
        async move {
            for _ in 0..500 {
                if mesh.httpbin_stat(name).await == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{name} never reached {want}");
        }
    };
    let send = |path: &'static str| {
        let c = mesh.mesh_client();
        tokio::spawn(async move {
            let r = c.get(format!("http://httpbin:8000{path}")).send().await.unwrap();
            let overloaded = r.headers().get("x-envoy-overloaded").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), overloaded, r.text().await.unwrap())
        })
    };
    // The first request's connection closes after its one request (maxRequestsPerConnection 1),
    // just after the client has the response: until it has, the next request would wait for it,
    // and `upstream_rq_active` counts waiting requests too.
    until("upstream_cx_active", 0).await;
    let holding = send("/delay/10");
    until("upstream_rq_active", 1).await;
    // Connected, and out of the pending queue it passes through while connecting.
    until("upstream_cx_active", 1).await;
    until("upstream_rq_pending_active", 0).await;
    let waiting = send("/get");
    until("upstream_rq_pending_active", 1).await;
    let (status, overloaded, body) = send("/get").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(overloaded.as_deref(), Some("true"));
    assert_eq!(body, "upstream connect error or disconnect/reset before headers. reset reason: overflow");
    assert_eq!(holding.await.unwrap().0, 200);
    assert_eq!(waiting.await.unwrap().0, 200, "the pending request is served once the connection frees");
    mesh.proxy_log_line("fortio-deploy-", &["503 UO upstream_reset_before_response_started{overflow}"]);
    assert_eq!(mesh.httpbin_stat("upstream_rq_pending_overflow").await, 1);

    // The task's own commands: fortio curl, then fortio load with 3 connections.
    let out = mesh.cli(&["curl", "http://httpbin:8000/get"]);
    let head = String::from_utf8_lossy(&out.stderr);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("server: envoy") && head.contains("x-envoy-upstream-service-time: "), "{head}");
    let out =
        mesh.cli(&["load", "-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Warning", "http://httpbin:8000/get"]);
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("Starting at max qps with 3 thread(s)"), "{report}");
    // A missing line is `None`; a line whose count does not parse fails the test.
    let count = |code: &str| -> Option<u64> {
        let prefix = format!("Code {code} : ");
        let line = report.lines().find_map(|l| l.strip_prefix(&prefix))?;
        Some(line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{report}")))
    };
    // How many of the 30 overflow depends on timing (the task's page shows most of them); every 503 is an
    // overflow, counted as such, and none is lost.
    let (ok, overflow) = (count("200").unwrap_or_else(|| panic!("{report}")), count("503").unwrap_or(0));
    assert!(ok > 0 && ok + overflow == 30, "{report}");
    assert_eq!(mesh.httpbin_stat("upstream_rq_pending_overflow").await, 1 + overflow, "{report}");
    assert!(report.contains("All done 30 calls (plus 0 warmup)"), "{report}");
    // fortio closes a socket after a 503, so each overflow costs its thread a new connection.
    let sockets: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("Sockets used: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(sockets >= 3 + overflow.saturating_sub(3), "{sockets} sockets for {overflow} 503s: {report}");

    // The task's `pilot-agent request GET stats | grep httpbin | grep pending`: Envoy's seven lines.
    let stats = mesh.client().get(format!("http://{}/stats", mesh.admin)).send().await.unwrap().text().await.unwrap();
    let pending: Vec<&str> = stats
        .lines()
        .filter(|l| l.contains("httpbin") && l.contains("pending"))
        .filter_map(|l| l.strip_prefix("cluster.outbound|8000||httpbin.default.svc.cluster.local.")?.split(':').next())
        .collect();
    assert_eq!(
        pending,
        [
            "circuit_breakers.default.remaining_pending",
            "circuit_breakers.default.rq_pending_open",
            "circuit_breakers.high.rq_pending_open",
            "upstream_rq_pending_active",
            "upstream_rq_pending_failure_eject",
            "upstream_rq_pending_overflow",
            "upstream_rq_pending_total",
        ],
        "{stats}"
    );
}

#[tokio::test]
async fn mirroring_copies_to_v2_with_the_shadow_host() {
    let dir = TempDir::new();
    for f in [
        "1-httpbin-v1-deployment.yaml",
        "2-httpbin-v2-deployment.yaml",
        "3-httpbin-service.yaml",
        "4-sleep-deployment.yaml",
        "5-default-route-v1.yaml",
    ] {
        dir.add_sample(&format!("istio.io-tasks/mirroring/{f}"));
    }
    let mesh = Mesh::start(dir);
    let pods = String::from_utf8(mesh.cli(&["status"]).stdout).unwrap();
    let pod = |prefix: &str| {
        pods.lines().find_map(|l| l.split_whitespace().nth(1).filter(|n| n.starts_with(prefix))).unwrap().to_string()
    };
    let (v1, v2) = (pod("httpbin-v1-"), pod("httpbin-v2-"));
    let logs = |p: &str| mesh.app_log(p);

    let resp = mesh.mesh_client().get("http://httpbin:8000/headers").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(logs(&v1).contains("GET /headers"));
    assert!(!logs(&v2).contains("GET /headers"), "no mirror yet");

    let mark = mesh.mark();
    // Applied over the default route, as `kubectl apply` does: same VirtualService name, the later file wins.
    mesh.dir.add_sample("istio.io-tasks/mirroring/6-mirror-v2.yaml");
    mesh.wait_applied(mark);
    let resp = mesh.mesh_client().get("http://httpbin:8000/headers").send().await.unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["Host"], "httpbin:8000", "the caller gets v1's answer to its own request");
    let mut seen = false;
    for _ in 0..50 {
        if logs(&v2).contains("GET /headers") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "v2 sees the mirrored request:\n{}", logs(&v2));
    assert_eq!(logs(&v1).matches("GET /headers").count(), 2);
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}]
  selector: {app: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers:
      - name: web
        image: docker.io/mccutchen/go-httpbin:v2.15.0
        ports: [{containerPort: 8080}]
"#;

#[tokio::test]
async fn retries_are_counted_at_the_upstream() {
    let dir = TempDir::new();
    dir.write("web.yaml", &WEB.replace("replicas: 3", "replicas: 1"));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: web}}]\n",
    );
    let mesh = Mesh::start(dir);
    let pods = String::from_utf8(mesh.cli(&["status"]).stdout).unwrap();
    let pod =
        pods.lines().find_map(|l| l.split_whitespace().nth(1).filter(|n| n.starts_with("web-"))).unwrap().to_string();
    let resp = mesh.mesh_client().get("http://web:8000/status/503").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let log = mesh.app_log(&pod);
    mesh.proxy_log_line("meshd-client", &["\"GET /status/503 HTTP/1.1\" 503 URX via_upstream"]);
    let lines = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines(&log, "/status/503"), 4, "1 try + 3 retries:\n{log}");
    // Istio's default policy does not retry a 5xx.
    let before = lines(&log, "/status/");
    let mark = mesh.mark();
    mesh.dir.remove("vs.yaml");
    mesh.wait_applied(mark);
    let resp = mesh.mesh_client().get("http://web:8000/status/500").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let log = mesh.app_log(&pod);
    assert_eq!(lines(&log, "/status/"), before + 1, "{log}");
    // The attempt count reaches the upstream.
    let v: serde_json::Value =
        mesh.mesh_client().get("http://web:8000/headers").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["headers"]["X-Envoy-Attempt-Count"][0], "1");
}

/// The access log's flags as Envoy sets them when retries run out: a per-try timeout on the last
/// attempt, a retry `maxRetries` refuses, and a delay before an abort.
#[tokio::test]
async fn exhausted_retries_and_faults_are_flagged_as_envoy_flags_them() {
    let dir = TempDir::new();
    dir.write("web.yaml", &WEB.replace("replicas: 3", "replicas: 1"));
    dir.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - name: per-try
    match: [{uri: {prefix: /delay}}]
    retries: {attempts: 1, perTryTimeout: 0.2s, retryOn: 5xx}
    headers: {response: {set: {x-route: per-try}}}
    route: [{destination: {host: web}}]
  - name: delayed-abort
    match: [{uri: {prefix: /fault}}]
    fault:
      delay: {fixedDelay: 10ms, percentage: {value: 100}}
      abort: {httpStatus: 503, percentage: {value: 100}}
    route: [{destination: {host: web}}]
  - name: retried
    retries: {attempts: 1, retryOn: 5xx, backoff: 2s}
    route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}
"#,
    );
    let mesh = Mesh::start(dir);
    let c = mesh.mesh_client();
    let resp = c.get("http://web:8000/delay/2").send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-route"], "per-try", "the route's edits on the proxy's own 504");
    mesh.proxy_log_line("meshd-client", &["\"GET /delay/2 HTTP/1.1\" 504 UT,URX upstream_per_try_timeout"]);
    // The fault filter runs after the route is chosen: the log names the route and its cluster.
    let resp = c.get("http://web:8000/fault").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    mesh.proxy_log_line(
        "meshd-client",
        &[
            "\"GET /fault HTTP/1.1\" 503 DI,FI fault_filter_abort",
            "outbound|8000||web.default.svc.cluster.local",
            "delayed-abort",
        ],
    );
    // Four failures at once: the first retry holds the one `maxRetries` slot through its 2 s
    // backoff, so the other three are refused a retry and marked an upstream overflow.
    let sends = (0..4).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.get("http://web:8000/status/503").send().await.unwrap().status().as_u16() })
    });
    for s in sends.collect::<Vec<_>>() {
        assert_eq!(s.await.unwrap(), 503);
    }
    mesh.proxy_log_line("meshd-client", &["\"GET /status/503 HTTP/1.1\" 503 UO via_upstream"]);
    // Three, unless a retry's jittered backoff (uniform up to 2 s) ended within the milliseconds
    // the four took to fail, which frees the slot for another; without the slot held through
    // the backoff, none.
    let overflow =
        mesh.cluster_stat("outbound|8000||web.default.svc.cluster.local", "upstream_rq_retry_overflow").await;
    assert!((1..=3).contains(&overflow), "{overflow}");
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_outliers_are_ejected_and_return() {
    let dir = TempDir::new();
    dir.write("web.yaml", WEB);
    dir.write(
        "dr.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
"#,
    );
    let mesh = Mesh::start(dir);
    let c = mesh.mesh_client();
    let host = |user: &'static str| {
        let c = c.clone();
        async move {
            let v: serde_json::Value =
                c.get("http://web:8000/hostname").header("x-user", user).send().await.unwrap().json().await.unwrap();
            v["hostname"].as_str().unwrap().to_string()
        }
    };
    for user in ["alice", "bob", "carol"] {
        let first = host(user).await;
        for _ in 0..10 {
            assert_eq!(host(user).await, first, "{user} sticks to one replica");
        }
    }
    let mut all = HashSet::new();
    for i in 0..60 {
        let u: &'static str = Box::leak(format!("user{i}").into_boxed_str());
        all.insert(host(u).await);
    }
    assert!(all.len() >= 2, "different users spread: {all:?}");

    // Make alice's replica fail: one 503 ejects it, alice moves to another replica.
    let alice = host("alice").await;
    let out = mesh.cli(&["pod", "fail", &alice]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resp = c.get("http://web:8000/hostname").header("x-user", "alice").send().await.unwrap();
    assert_eq!(resp.status(), 503, "the failing replica answers once");
    let moved = host("alice").await;
    assert_ne!(moved, alice, "ejected: alice is served elsewhere");
    let clusters =
        mesh.client().get(format!("http://{}/clusters", mesh.admin)).send().await.unwrap().text().await.unwrap();
    assert!(clusters.contains("failed_outlier_check"), "{clusters}");
    // Ejection state survives a config reload.
    let mark = mesh.mark();
    mesh.dir.write("web.yaml", &format!("{WEB}# touched\n"));
    mesh.wait_applied(mark);
    assert_ne!(host("alice").await, alice, "still ejected after the reload");
    // Healthy again, and back after the ejection time.
    assert!(mesh.cli(&["pod", "start", &alice]).status.success());
    // Back once baseEjectionTime (2s) has passed and the next 1s interval has run; the deadline only stops a hang.
    let deadline = Instant::now() + Duration::from_secs(15);
    while host("alice").await != alice {
        assert!(Instant::now() < deadline, "the replica returns after baseEjectionTime");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn local_rate_limit_answers_429_after_the_bucket_empties() {
    // The EnvoyFilters of Istio's "Enabling Rate Limits using Envoy" task, as the project's sample
    // folders ship them: the bucket on productpage's sidecar, then on its inbound route.
    for sample in ["rate-limiting", "rate-limiting-per-route"] {
        let dir = TempDir::new();
        let filter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../samples/{sample}/filter-local-ratelimit-svc.yaml"));
        dir.write("ratelimit.yaml", &std::fs::read_to_string(filter).unwrap());
        let mesh = Mesh::start(dir);
        let c = mesh.client();
        let mut codes = Vec::new();
        let mut limited = None;
        for _ in 0..6 {
            let resp = c.get(mesh.url("/productpage")).send().await.unwrap();
            codes.push(resp.status().as_u16());
            if resp.status() == 429 {
                let header = resp.headers().get("x-local-rate-limit").map(|v| v.to_str().unwrap().to_string());
                limited = Some((header, resp.text().await.unwrap()));
            }
        }
        assert_eq!(codes, [200, 200, 200, 200, 429, 429], "{sample}: 4 tokens per minute");
        mesh.proxy_log_line("productpage-v1-", &["429 RL local_rate_limited"]);
        assert_eq!(limited, Some((Some("true".to_string()), "local_rate_limited".to_string())), "{sample}");
        assert!(!mesh.output().join("\n").contains("not emulated"), "{sample}: {:?}", mesh.output());
        // Other workloads are not limited.
        for _ in 0..6 {
            let r = mesh.mesh_client().get("http://reviews:9080/reviews/0").send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
}

/// The per-route variant with a bucket of its own on the listener's filter as well: for the
/// route's requests the route's config replaces the filter's, as in Envoy, so they take
/// tokens from the route's bucket of 4 alone, not also from the listener's 2.
#[tokio::test]
async fn a_routes_own_bucket_replaces_the_listeners() {
    let filter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/rate-limiting-per-route/filter-local-ratelimit-svc.yaml");
    let text = std::fs::read_to_string(filter).unwrap();
    let listener_bucket = "              stat_prefix: http_local_rate_limiter
              token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}
              filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {runtime_key: f, default_value: {numerator: 100, denominator: HUNDRED}}
";
    let both = text.replacen("              stat_prefix: http_local_rate_limiter\n", listener_bucket, 1);
    assert_ne!(both, text);
    let dir = TempDir::new();
    dir.write("ratelimit.yaml", &both);
    let mesh = Mesh::start(dir);
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(mesh.client().get(mesh.url("/productpage")).send().await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 200, 429, 429], "the route's 4 tokens, not the listener's 2");
}

#[tokio::test]
async fn envoy_filter_patches_that_are_not_emulated_are_reported() {
    let dir = TempDir::new();
    dir.add_sample("ratelimit/local-rate-limit-service.yaml");
    let mesh = Mesh::start(dir);
    // The sample's route-level descriptors are not emulated, and said so; its filter-level
    // patch sets no bucket (filter_enabled absent = 0%), so nothing is limited.
    let out = mesh.output().join("\n");
    assert!(
        out.contains("not emulated, ignored: EnvoyFilter istio-system/filter-local-ratelimit-svc")
            && out.contains("configPatches[1] (HttpRoute"),
        "{out}"
    );
    for _ in 0..12 {
        assert_eq!(mesh.client().get(mesh.url("/productpage")).send().await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn a_stopped_pod_refuses_connections_and_comes_back() {
    let dir = TempDir::new();
    dir.write("web.yaml", &WEB.replace("replicas: 3", "replicas: 1"));
    let mesh = Mesh::start(dir);
    let pods = String::from_utf8(mesh.cli(&["status"]).stdout).unwrap();
    let pod =
        pods.lines().find_map(|l| l.split_whitespace().nth(1).filter(|n| n.starts_with("web-"))).unwrap().to_string();
    assert!(mesh.cli(&["pod", "stop", &pod]).status.success());
    let resp = mesh.mesh_client().get("http://web:8000/get").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    // Istio's default retries (connect-failure) ran first.
    assert!(body.starts_with("upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"), "{body}");
    assert!(!mesh.cli(&["pod", "stop", "no-such-pod"]).status.success());
    assert!(mesh.cli(&["pod", "start", &pod]).status.success());
    let mut ok = false;
    for _ in 0..40 {
        if mesh.mesh_client().get("http://web:8000/get").send().await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the pod serves again");
}
