//! The admin API on 127.0.0.1:15000 (loopback only): readiness, bound
//! addresses, pods, config errors and app logs; the CLI talks to it.

use std::sync::Arc;

use axum::extract::{Path, State};
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
