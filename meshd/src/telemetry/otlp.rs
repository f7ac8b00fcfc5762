//! Span export to an OpenTelemetry collector over OTLP/HTTP with JSON
//! encoding (`POST <endpoint>/v1/traces`), batched off the request path.

use serde_json::{json, Value};

use super::trace::{Span, SpanKind};

/// The OTLP/JSON body for `spans` (ids in hex, times in nanoseconds as strings, per the spec).
pub fn body(spans: &[Span]) -> Value {
    let mut by_service: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for s in spans {
        let attr = |k: &str, v: Value| json!({"key": k, "value": v});
        let start = u128::from(s.start_unix_us) * 1000;
        let end = start + u128::from(s.duration_us) * 1000;
        by_service.entry(s.workload.as_str()).or_default().push(json!({
            "traceId": format!("{:0>32}", s.trace_id),
            "spanId": s.span_id,
            "parentSpanId": s.parent_span_id.clone().unwrap_or_default(),
            "name": s.operation,
            "kind": match s.kind { SpanKind::Server => 2, SpanKind::Client => 3 },
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": end.to_string(),
            "attributes": [
                attr("http.status_code", json!({"intValue": s.status.to_string()})),
                attr("response_flags", json!({"stringValue": s.flags})),
                attr("upstream_cluster", json!({"stringValue": s.cluster})),
                attr("node_id", json!({"stringValue": s.proxy})),
                attr("request", json!({"stringValue": s.request})),
            ],
            "status": {"code": if s.status >= 500 { 2 } else { 0 }},
        }));
    }
    let resource_spans: Vec<Value> = by_service
        .into_iter()
        .map(|(service, spans)| {
            json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "meshd"}, "spans": spans}],
            })
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
}

/// Posts one batch; failures are logged, never retried (the spans stay in memory anyway).
pub async fn export(client: &reqwest::Client, endpoint: &str, spans: Vec<Span>) {
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    match client.post(&url).json(&body(&spans)).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(%url, status = %r.status(), "OTLP collector refused spans"),
        Err(e) => tracing::warn!(%url, error = %e, "cannot reach the OTLP collector"),
    }
}
