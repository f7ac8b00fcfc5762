//! Test helpers: run routers and apps on 127.0.0.1 port 0 and collect their log lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;

use crate::{AppEnv, AppKind, LogSink};

/// Serves a router on an ephemeral loopback port.
pub(crate) async fn spawn(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::util::serve_router(router, listener));
    addr
}

/// A log sink that keeps lines for assertions.
pub(crate) fn log_sink() -> (LogSink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let sink: LogSink = Arc::new(move |l: &str| sink_lines.lock().unwrap().push(l.to_string()));
    (sink, lines)
}

/// An app env with the given env pairs and no sidecar.
pub(crate) fn app_env(kind: AppKind, hostname: &str, pairs: &[(&str, String)]) -> AppEnv {
    let env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    AppEnv { kind, hostname: hostname.to_string(), env, args: Vec::new(), outbound_proxy: None, log: log_sink().0 }
}

/// A client that ignores any proxy settings of the test environment.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GET with [`client`].
pub(crate) async fn get(url: String) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}
