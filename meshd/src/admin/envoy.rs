//! Envoy's admin endpoints, per proxy: `/stats`, `/stats/prometheus`, `/clusters`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};

use crate::daemon::State as DaemonState;
use crate::proxy::runtime::{ClusterShared, ProxyRuntime};
use crate::snapshot::policy::PoolSettings;

/// `?proxy=NAME` picks whose stats to show; the default is the mesh client (what
/// `kubectl exec fortio... pilot-agent request GET stats` shows in the tasks).
#[derive(Debug, serde::Deserialize)]
pub struct ProxyQuery {
    proxy: Option<String>,
}

/// The proxy a query names, or the mesh client's.
pub fn pick_proxy(s: &DaemonState, q: &ProxyQuery) -> Option<Arc<ProxyRuntime>> {
    let name = match &q.proxy {
        Some(n) => n.clone(),
        None => s.snapshot.load().mesh_client.as_ref()?.name.clone(),
    };
    s.registry.all().into_iter().find(|r| r.name == name)
}

const NO_PROXY: &str = "no such proxy (or it has sent no traffic yet)\n";

/// One cluster's counters and circuit-breaker gauges, as Envoy names them.
fn cluster_stats(c: &ClusterShared, pool: &PoolSettings) -> [(&'static str, u64); 29] {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let st = &c.stats;
    let remaining = |max: u32, used: u64| u64::from(max).saturating_sub(used);
    let open = |max: u32, used: u64| u64::from(used >= u64::from(max));
    [
        ("circuit_breakers.default.cx_open", open(pool.max_connections, g(&c.cx_active))),
        ("circuit_breakers.default.cx_pool_open", open(pool.max_connections, g(&c.cx_active))),
        ("circuit_breakers.default.remaining_cx", remaining(pool.max_connections, g(&c.cx_active))),
        ("circuit_breakers.default.remaining_pending", remaining(pool.max_pending, g(&c.rq_pending_active))),
        ("circuit_breakers.default.remaining_retries", remaining(pool.max_retries, g(&c.rq_retry_active))),
        ("circuit_breakers.default.remaining_rq", remaining(pool.max_requests, g(&c.rq_active))),
        ("circuit_breakers.default.rq_open", open(pool.max_requests, g(&c.rq_active))),
        ("circuit_breakers.default.rq_pending_open", open(pool.max_pending, g(&c.rq_pending_active))),
        ("circuit_breakers.default.rq_retry_open", open(pool.max_retries, g(&c.rq_retry_active))),
        // Istio sets only the default priority's thresholds; no request here is of high priority,
        // so Envoy's high-priority breakers stay closed.
        ("circuit_breakers.high.cx_open", 0),
        ("circuit_breakers.high.cx_pool_open", 0),
        ("circuit_breakers.high.rq_open", 0),
        ("circuit_breakers.high.rq_pending_open", 0),
        ("circuit_breakers.high.rq_retry_open", 0),
        ("outlier_detection.ejections_total", g(&st.outlier_detection_ejections_total)),
        ("upstream_cx_active", g(&c.cx_active)),
        ("upstream_cx_connect_fail", g(&st.upstream_cx_connect_fail)),
        ("upstream_cx_overflow", g(&st.upstream_cx_overflow)),
        ("upstream_cx_total", g(&st.upstream_cx_total)),
        ("upstream_rq_active", g(&c.rq_active)),
        ("upstream_rq_pending_active", g(&c.rq_pending_active)),
        ("upstream_rq_pending_failure_eject", g(&st.upstream_rq_pending_failure_eject)),
        ("upstream_rq_pending_overflow", g(&st.upstream_rq_pending_overflow)),
        ("upstream_rq_pending_total", g(&st.upstream_rq_pending_total)),
        ("upstream_rq_per_try_timeout", g(&st.upstream_rq_per_try_timeout)),
        ("upstream_rq_retry", g(&st.upstream_rq_retry)),
        ("upstream_rq_retry_overflow", g(&st.upstream_rq_retry_overflow)),
        ("upstream_rq_timeout", g(&st.upstream_rq_timeout)),
        ("upstream_rq_total", g(&st.upstream_rq_total)),
    ]
}

/// Each cluster of `rt` with its counters.
fn each_cluster(s: &DaemonState, rt: &ProxyRuntime, mut f: impl FnMut(&str, [(&'static str, u64); 29])) {
    let snap = s.snapshot.load();
    for (name, c) in rt.clusters() {
        let pool = snap.clusters.iter().find(|x| x.name == name).map(|x| x.pool.clone()).unwrap_or_default();
        f(&name, cluster_stats(&c, &pool));
    }
}

/// `/stats`: `cluster.<name>.<stat>: <value>` lines.
pub async fn stats(State(s): State<Arc<DaemonState>>, Query(q): Query<ProxyQuery>) -> (http::StatusCode, String) {
    let Some(rt) = pick_proxy(&s, &q) else {
        return (http::StatusCode::NOT_FOUND, NO_PROXY.into());
    };
    let mut out = String::new();
    each_cluster(&s, &rt, |name, lines| {
        for (stat, v) in lines {
            let _ = writeln!(out, "cluster.{name}.{stat}: {v}");
        }
    });
    (http::StatusCode::OK, out)
}

/// `/stats/prometheus`: Istio's standard metrics and Envoy's cluster counters. `?proxy=NAME`
/// gives one proxy's, as its port 15090 would; without it, every proxy's, each with a `pod`
/// label, as Prometheus would store them after scraping every pod.
pub async fn prometheus(
    State(s): State<Arc<DaemonState>>,
    Query(q): Query<ProxyQuery>,
) -> (http::StatusCode, [(http::HeaderName, &'static str); 1], String) {
    let ct = [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    let proxies = match &q.proxy {
        Some(_) => match pick_proxy(&s, &q) {
            Some(rt) => vec![rt],
            None => return (http::StatusCode::NOT_FOUND, ct, NO_PROXY.into()),
        },
        None => s.registry.all(),
    };
    let mut out = String::new();
    s.telemetry.metrics.prometheus(q.proxy.as_deref(), &mut out);
    let mut by_stat: std::collections::BTreeMap<&'static str, Vec<String>> = Default::default();
    for rt in &proxies {
        let pod = match q.proxy {
            Some(_) => String::new(),
            None => format!(",pod=\"{}\"", rt.name),
        };
        each_cluster(&s, rt, |name, lines| {
            for (stat, v) in lines {
                by_stat.entry(stat).or_default().push(format!("{{cluster_name=\"{name}\"{pod}}} {v}"));
            }
        });
    }
    for (stat, rows) in by_stat {
        let metric = format!("envoy_cluster_{}", stat.replace('.', "_"));
        let kind = if stat.contains("active") || stat.contains("remaining") || stat.ends_with("open") {
            "gauge"
        } else {
            "counter"
        };
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for r in rows {
            let _ = writeln!(out, "{metric}{r}");
        }
    }
    (http::StatusCode::OK, ct, out)
}

/// `/clusters`: per endpoint `rq_total`, `rq_error`, `health_flags`, as Envoy prints them.
pub async fn clusters(State(s): State<Arc<DaemonState>>, Query(q): Query<ProxyQuery>) -> (http::StatusCode, String) {
    let Some(rt) = pick_proxy(&s, &q) else {
        return (http::StatusCode::NOT_FOUND, NO_PROXY.into());
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

/// `/config_dump`: the proxy's listeners, routes, clusters and endpoints under Envoy's type URLs.
pub async fn config_dump(
    State(s): State<Arc<DaemonState>>,
    Query(q): Query<ProxyQuery>,
) -> Result<axum::Json<serde_json::Value>, (http::StatusCode, String)> {
    let rt = pick_proxy(&s, &q).ok_or((http::StatusCode::NOT_FOUND, NO_PROXY.to_string()))?;
    let c = super::proxy_config::build(&s, &rt.name).ok_or((http::StatusCode::NOT_FOUND, NO_PROXY.to_string()))?;
    let t = |k: &str| format!("type.googleapis.com/envoy.admin.v3.{k}");
    Ok(axum::Json(serde_json::json!({
        "configs": [
            { "@type": t("ListenersConfigDump"), "dynamic_listeners": c.listeners },
            { "@type": t("RoutesConfigDump"), "dynamic_route_configs": c.routes },
            { "@type": t("ClustersConfigDump"), "dynamic_active_clusters": c.clusters, "version_info": c.generation.to_string() },
            { "@type": t("EndpointsConfigDump"), "dynamic_endpoint_configs": c.endpoints },
        ]
    })))
}

/// `/listeners`: `name::address:port` lines, as Envoy prints them.
pub async fn listeners(State(s): State<Arc<DaemonState>>, Query(q): Query<ProxyQuery>) -> (http::StatusCode, String) {
    let Some(c) = pick_proxy(&s, &q).and_then(|rt| super::proxy_config::build(&s, &rt.name)) else {
        return (http::StatusCode::NOT_FOUND, NO_PROXY.into());
    };
    let mut out = String::new();
    for l in c.listeners {
        let _ = writeln!(out, "{}::{}:{}", l.name, l.address, l.port);
    }
    (http::StatusCode::OK, out)
}
