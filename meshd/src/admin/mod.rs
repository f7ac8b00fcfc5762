//! The admin API on 127.0.0.1:15000 (loopback only): readiness, bound
//! addresses, pods, config errors and app logs; the CLI talks to it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::daemon::{Addrs, PodRow, State as DaemonState};

mod envoy;
pub mod proxy_config;

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
        .route("/", get(dashboard))
        .route("/ready", get(ready))
        .route("/meshd/info", get(info))
        .route("/meshd/pods", get(pods))
        .route("/meshd/config", get(config))
        .route("/meshd/logs/{pod}", get(logs))
        .route("/meshd/pods/{pod}/{mode}", axum::routing::post(pod_mode))
        .route("/stats", get(envoy::stats))
        .route("/stats/prometheus", get(envoy::prometheus))
        .route("/clusters", get(envoy::clusters))
        .route("/meshd/certs", get(certs))
        .route("/meshd/graph", get(graph))
        .route("/meshd/traces", get(traces))
        .route("/meshd/traces/{id}", get(trace))
        .route("/meshd/explain", axum::routing::post(explain))
        .route("/meshd/analyze", get(analyze))
        .route("/meshd/proxy-config/{pod}", get(proxy_config))
        .route("/meshd/proxy-status", get(proxy_status))
        .route("/meshd/describe/{pod}", get(describe))
        .route("/config_dump", get(envoy::config_dump))
        .route("/listeners", get(envoy::listeners))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// The dashboard: one self-contained page that polls the JSON endpoints below.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
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

async fn graph(State(s): State<Arc<DaemonState>>) -> Json<crate::telemetry::graph::GraphView> {
    let snap = s.snapshot.load();
    let mode = snap.peer_auth.mode("", &Default::default(), 0).name();
    Json(s.graph.view(&s.telemetry.metrics, snap.generation, mode))
}

#[derive(serde::Serialize)]
struct TraceList {
    traces: Vec<crate::telemetry::trace::TraceSummary>,
}

async fn traces(State(s): State<Arc<DaemonState>>) -> Json<TraceList> {
    Json(TraceList { traces: s.telemetry.traces.list(100) })
}

#[derive(serde::Serialize)]
struct TraceView {
    trace_id: String,
    spans: Vec<crate::telemetry::trace::Span>,
}

async fn trace(
    State(s): State<Arc<DaemonState>>,
    Path(id): Path<String>,
) -> Result<Json<TraceView>, (http::StatusCode, String)> {
    match s.telemetry.traces.get(&id) {
        Some(spans) => Ok(Json(TraceView { trace_id: id.to_ascii_lowercase(), spans })),
        None => Err((http::StatusCode::NOT_FOUND, format!("trace {id} not found (kept: the last 1000)\n"))),
    }
}

async fn analyze(State(s): State<Arc<DaemonState>>) -> Json<serde_json::Value> {
    let a = s.analysis.lock().unwrap_or_else(|e| e.into_inner());
    let messages: Vec<serde_json::Value> = a
        .report
        .messages
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            v["line_text"] = serde_json::Value::String(m.to_string());
            v
        })
        .collect();
    Json(serde_json::json!({ "generation": a.generation, "messages": messages }))
}

async fn proxy_config(
    State(s): State<Arc<DaemonState>>,
    Path(pod): Path<String>,
) -> Result<Json<proxy_config::ProxyConfig>, (http::StatusCode, String)> {
    proxy_config::build(&s, &pod).map(Json).ok_or((http::StatusCode::NOT_FOUND, format!("no proxy {pod:?}\n")))
}

async fn proxy_status(State(s): State<Arc<DaemonState>>) -> Json<Vec<proxy_config::StatusRow>> {
    Json(proxy_config::status(&s))
}

async fn describe(State(s): State<Arc<DaemonState>>, Path(pod): Path<String>) -> (http::StatusCode, String) {
    match proxy_config::describe(&s.snapshot.load(), &pod) {
        Some(text) => (http::StatusCode::OK, text),
        None => (http::StatusCode::NOT_FOUND, format!("pod {pod:?} not found\n")),
    }
}

async fn explain(
    State(s): State<Arc<DaemonState>>,
    Json(req): Json<crate::explain::ExplainRequest>,
) -> Result<Json<crate::explain::Explanation>, (http::StatusCode, Json<serde_json::Value>)> {
    let snap = s.snapshot.load();
    crate::explain::explain(&snap, &req)
        .map(Json)
        .map_err(|e| (http::StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e }))))
}

async fn logs(State(s): State<Arc<DaemonState>>, Path(pod): Path<String>) -> String {
    let mut out = s.logs.lines(&pod).join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
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
