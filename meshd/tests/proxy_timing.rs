//! Timeouts and retries on paused tokio time: the whole client side (an
//! outbound sidecar listener) in-process, in front of a fake upstream whose
//! delays are tokio sleeps, so virtual time decides every outcome.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshd::config::load::{parse_text, Loaded};
use meshd::config::model::Workloads;
use meshd::proxy::runtime::Registry;
use meshd::proxy::{Proxy, Role};
use meshd::snapshot::{compile, CompileInput, PodInfo, SnapshotHandle, Workload};
use tokio::net::TcpListener;
use tokio::time::Instant;

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: web}
"#;

/// A fake upstream: answers each request after `delay`, with the status `status(n)` for the n-th request.
async fn upstream(delay: Duration, status: fn(u32) -> u16) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status(n)).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, hits)
}

/// Starts an outbound sidecar listener routing `web` per `vs` to the upstream at `addr`.
async fn sidecar(vs: &str, addr: SocketAddr) -> SocketAddr {
    let mut loaded = Loaded::default();
    let mut errors = vec![];
    parse_text("svc.yaml", SVC, &mut loaded, &mut errors);
    parse_text("vs.yaml", vs, &mut loaded, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let workloads = Workloads::from_resources(&loaded.resources).unwrap();
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into_iter().collect();
    let pod = PodInfo {
        name: "web-1".into(),
        namespace: "default".into(),
        labels,
        service_account: "default".into(),
        workload: "web".into(),
        container_ports: vec![(None, 8080)],
        inbound: [(8080, addr)].into_iter().collect(),
        outbound: None,
        sidecar: false,
    };
    let snap = compile(CompileInput {
        resources: &loaded.resources,
        workloads: &workloads,
        pods: &[pod],
        generation: 1,
        not_emulated: &[],
        base: None,
        jwks: &Default::default(),
    })
    .unwrap();
    let handle = SnapshotHandle::default();
    handle.store(snap);
    let registry = Arc::new(Registry::new(None));
    let client = Workload {
        name: "client-1".into(),
        namespace: "default".into(),
        labels: BTreeMap::new(),
        service_account: "default".into(),
        deployment: "client".into(),
    };
    let rt = registry.get(&client);
    let proxy = Proxy::new(handle, registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep = _tx;
        proxy.serve(listener, Role::Outbound { workload: Arc::new(client), rt }, rx).await
    });
    local
}

/// GET http://web/ through the sidecar; returns status and body.
async fn get(sidecar: SocketAddr) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(sidecar).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("http://web/").header("host", "web").body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  http:\n  - {http}\n    route: [{{destination: {{host: web}}}}]\n")
}

#[tokio::test(start_paused = true)]
async fn route_timeout_answers_504_at_the_deadline() {
    let (addr, _) = upstream(Duration::from_secs(2), |_| 200).await;
    let sc = sidecar(&vs("timeout: 0.5s"), addr).await;
    let start = Instant::now();
    assert_eq!(get(sc).await, (504, "upstream request timeout".into()));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(600), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn no_timeout_by_default() {
    let (addr, _) = upstream(Duration::from_secs(20), |_| 200).await;
    let sc = sidecar(&vs("name: slow"), addr).await;
    let start = Instant::now();
    assert_eq!(get(sc).await, (200, "ok".into()));
    assert!(start.elapsed() >= Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_retries_then_gives_up_within_the_route_timeout() {
    let (addr, hits) = upstream(Duration::from_secs(1), |_| 200).await;
    let sc = sidecar(&vs("retries: {attempts: 5, perTryTimeout: 0.2s, retryOn: 5xx}\n    timeout: 0.5s"), addr).await;
    let start = Instant::now();
    assert_eq!(get(sc).await.0, 504);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(600), "{took:?}");
    let n = hits.load(Ordering::SeqCst);
    assert!((2..=3).contains(&n), "tries of 0.2 s plus backoff fit in 0.5 s: {n}");
}

#[tokio::test(start_paused = true)]
async fn retries_on_5xx_with_backoff_until_success() {
    let (addr, hits) = upstream(Duration::ZERO, |n| if n < 2 { 503 } else { 200 }).await;
    let sc = sidecar(&vs("retries: {attempts: 3, retryOn: 5xx}"), addr).await;
    let start = Instant::now();
    assert_eq!(get(sc).await, (200, "ok".into()));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // Two backoffs: at most 25 ms and at most 75 ms.
    assert!(start.elapsed() <= Duration::from_millis(100), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn default_policy_does_not_retry_a_503_and_attempts_zero_disables() {
    let (addr, hits) = upstream(Duration::ZERO, |_| 503).await;
    let sc = sidecar(&vs("name: plain"), addr).await;
    assert_eq!(get(sc).await.0, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let (addr, hits) = upstream(Duration::ZERO, |_| 503).await;
    let sc = sidecar(&vs("retries: {attempts: 0, retryOn: 5xx}"), addr).await;
    assert_eq!(get(sc).await.0, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn fault_delay_then_abort() {
    let (addr, hits) = upstream(Duration::ZERO, |_| 200).await;
    let sc = sidecar(&vs("fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}}"), addr).await;
    let start = Instant::now();
    assert_eq!(get(sc).await.0, 200);
    assert!(start.elapsed() >= Duration::from_secs(7));
    let sc = sidecar(&vs("fault: {abort: {httpStatus: 555, percentage: {value: 100}}}"), addr).await;
    assert_eq!(get(sc).await, (555, "fault filter abort".into()));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the abort never reaches the upstream");
    let sc = sidecar(&vs("fault: {abort: {httpStatus: 555}}"), addr).await;
    assert_eq!(get(sc).await.0, 200, "no percentage: no fault");
}
