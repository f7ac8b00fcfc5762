//! The admin API on 127.0.0.1:15000 (loopback only): readiness, bound
//! addresses, pods, config errors and app logs; the CLI talks to it.

use std::sync::Arc;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::daemon::{Addrs, PodRow, State as DaemonState};

/// What `/meshd/config` answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ConfigView {
    /// Generation in force.
    pub generation: u64,
    /// Errors of the last reload attempt.
    pub errors: Vec<String>,
    /// Resources in force, `Kind ns/name (file:line)`.
    pub resources: Vec<String>,
    /// Documents not emulated.
    pub not_emulated: Vec<String>,
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<DaemonState>) {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/meshd/info", get(info))
        .route("/meshd/pods", get(pods))
        .route("/meshd/config", get(config))
        .route("/meshd/logs/{pod}", get(logs))
        .route("/meshd/pods/{pod}/{mode}", axum::routing::post(pod_mode))
        .route("/stats", get(stats))
        .route("/meshd/certs", get(certs))
        .route("/clusters", get(clusters))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn ready(State(s): State<Arc<DaemonState>>) -> (http::StatusCode, &'static str) {
    if s.snapshot.load().generation > 0 {
        (http::StatusCode::OK, "LIVE\n")
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
    }
}

async fn info(State(s): State<Arc<DaemonState>>) -> Json<Addrs> {
    Json(s.addrs)
}

async fn pods(State(s): State<Arc<DaemonState>>) -> Json<Vec<PodRow>> {
    Json(s.pods.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

async fn config(State(s): State<Arc<DaemonState>>) -> Json<ConfigView> {
    let snap = s.snapshot.load();
    Json(ConfigView {
        generation: snap.generation,
        errors: s.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        resources: snap.resources.clone(),
        not_emulated: snap.not_emulated.clone(),
    })
}

async fn logs(State(s): State<Arc<DaemonState>>, Path(pod): Path<String>) -> String {
    let mut out = s.logs.lines(&pod).join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// `?proxy=NAME` picks whose stats to show; the default is the mesh client (what
/// `kubectl exec fortio... pilot-agent request GET stats` shows in the tasks).
#[derive(Debug, serde::Deserialize)]
struct ProxyQuery {
    proxy: Option<String>,
}

fn pick_proxy(s: &DaemonState, q: &ProxyQuery) -> Option<Arc<crate::proxy::runtime::ProxyRuntime>> {
    let name = match &q.proxy {
        Some(n) => n.clone(),
        None => s.snapshot.load().mesh_client.as_ref()?.name.clone(),
    };
    s.registry.all().into_iter().find(|r| r.name == name)
}

async fn stats(State(s): State<Arc<DaemonState>>, Query(q): Query<ProxyQuery>) -> (http::StatusCode, String) {
    let Some(rt) = pick_proxy(&s, &q) else {
        return (http::StatusCode::NOT_FOUND, "no such proxy (or it has sent no traffic yet)\n".into());
    };
    let snap = s.snapshot.load();
    let mut out = String::new();
    for (name, c) in rt.clusters() {
        let pool = snap.clusters.iter().find(|x| x.name == name).map(|x| x.pool.clone()).unwrap_or_default();
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let st = &c.stats;
        let remaining = |max: u32, used: u64| u64::from(max).saturating_sub(used);
        let open = |max: u32, used: u64| u64::from(used >= u64::from(max));
        let lines: [(&str, u64); 22] = [
            ("circuit_breakers.default.cx_open", open(pool.max_connections, g(&c.cx_active))),
            ("circuit_breakers.default.cx_pool_open", open(pool.max_connections, g(&c.cx_active))),
            ("circuit_breakers.default.remaining_cx", remaining(pool.max_connections, g(&c.cx_active))),
            ("circuit_breakers.default.remaining_pending", remaining(pool.max_pending, g(&c.rq_pending_active))),
            ("circuit_breakers.default.remaining_retries", remaining(pool.max_retries, g(&c.rq_retry_active))),
            ("circuit_breakers.default.remaining_rq", remaining(pool.max_requests, g(&c.rq_active))),
            ("circuit_breakers.default.rq_open", open(pool.max_requests, g(&c.rq_active))),
            ("circuit_breakers.default.rq_pending_open", open(pool.max_pending, g(&c.rq_pending_active))),
            ("circuit_breakers.default.rq_retry_open", open(pool.max_retries, g(&c.rq_retry_active))),
            ("outlier_detection.ejections_total", g(&st.outlier_detection_ejections_total)),
            ("upstream_cx_active", g(&c.cx_active)),
            ("upstream_cx_connect_fail", g(&st.upstream_cx_connect_fail)),
            ("upstream_cx_total", g(&st.upstream_cx_total)),
            ("upstream_rq_active", g(&c.rq_active)),
            ("upstream_rq_pending_active", g(&c.rq_pending_active)),
            ("upstream_rq_pending_overflow", g(&st.upstream_rq_pending_overflow)),
            ("upstream_rq_pending_total", g(&st.upstream_rq_pending_total)),
            ("upstream_rq_per_try_timeout", g(&st.upstream_rq_per_try_timeout)),
            ("upstream_rq_retry", g(&st.upstream_rq_retry)),
            ("upstream_rq_retry_overflow", g(&st.upstream_rq_retry_overflow)),
            ("upstream_rq_timeout", g(&st.upstream_rq_timeout)),
            ("upstream_rq_total", g(&st.upstream_rq_total)),
        ];
        for (stat, v) in lines {
            let _ = writeln!(out, "cluster.{name}.{stat}: {v}");
        }
    }
    (http::StatusCode::OK, out)
}

async fn clusters(State(s): State<Arc<DaemonState>>, Query(q): Query<ProxyQuery>) -> (http::StatusCode, String) {
    let Some(rt) = pick_proxy(&s, &q) else {
        return (http::StatusCode::NOT_FOUND, "no such proxy (or it has sent no traffic yet)\n".into());
    };
    let snap = s.snapshot.load();
    let generation = rt.for_snapshot(&snap);
    let mut out = String::new();
    for (cluster, crt) in snap.clusters.iter().zip(&generation.clusters) {
        let ejected = crt.ejected();
        for ((ep, ert), ej) in cluster.endpoints.iter().zip(&crt.endpoints).zip(ejected) {
            let p = format!("{}::{}", cluster.name, ep.addr);
            let _ = writeln!(out, "{p}::hostname::{}", ep.pod);
            let _ = writeln!(out, "{p}::rq_active::{}", ert.active.load(Ordering::Relaxed));
            let _ = writeln!(out, "{p}::rq_error::{}", ert.errors.load(Ordering::Relaxed));
            let _ = writeln!(out, "{p}::rq_total::{}", ert.total.load(Ordering::Relaxed));
            let _ = writeln!(out, "{p}::health_flags::{}", if ej { "/failed_outlier_check" } else { "healthy" });
        }
    }
    (http::StatusCode::OK, out)
}

async fn pod_mode(
    State(s): State<Arc<DaemonState>>,
    Path((pod, mode)): Path<(String, String)>,
) -> (http::StatusCode, String) {
    use crate::proxy::PodMode;
    let mode = match mode.as_str() {
        "stop" => PodMode::Stopped,
        "start" => PodMode::Running,
        "fail" => PodMode::Failing,
        other => return (http::StatusCode::BAD_REQUEST, format!("unknown action {other:?}: stop, start or fail\n")),
    };
    let controls = s.controls.lock().unwrap_or_else(|e| e.into_inner());
    match controls.get(&pod) {
        Some(c) => {
            c.set(mode);
            (http::StatusCode::OK, format!("pod/{pod} {mode:?}\n"))
        }
        None => (http::StatusCode::NOT_FOUND, format!("pod {pod:?} not found\n")),
    }
}

async fn certs(State(s): State<Arc<DaemonState>>) -> Json<crate::cli::CertsView> {
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let certs = s
        .registry
        .security()
        .map(|sec| {
            sec.issued()
                .into_iter()
                .map(|(identity, nb, na, _pem)| crate::cli::CertRow {
                    identity,
                    not_before: secs(nb),
                    not_after: secs(na),
                })
                .collect()
        })
        .unwrap_or_default();
    Json(crate::cli::CertsView { root: s.dir.join(".meshd/ca.pem").display().to_string(), certs })
}
