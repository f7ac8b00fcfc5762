//! Local rate limiting from the EnvoyFilter patterns Istio users paste: an
//! `envoy.filters.http.local_ratelimit` HTTP filter with a token bucket, on
//! the sidecars a selector picks or on the gateway; or the filter without a
//! bucket plus an `HTTP_ROUTE` patch that puts one on an inbound virtual host
//! (`inbound|http|<port>`), as the rate-limit task's second variant does.
//! Every other EnvoyFilter patch is reported as not emulated.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::{Labels, Workload, ROOT_NAMESPACE};
use crate::config::api;

/// Which listeners a patch applies to (`match.context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Every listener.
    Any,
    /// Inbound sidecar listeners.
    Inbound,
    /// Outbound sidecar listeners.
    Outbound,
    /// Gateways.
    Gateway,
}

/// A compiled local rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRateLimit {
    /// `ns/name#patch`, which keys each proxy's bucket.
    pub key: String,
    /// The EnvoyFilter's namespace (the root namespace applies to all).
    pub namespace: String,
    /// `workloadSelector.labels`; empty selects every workload of the namespace.
    pub selector: Labels,
    /// Listeners it applies to.
    pub context: Context,
    /// Bucket size (and initial tokens).
    pub max_tokens: u64,
    /// Tokens added every `fill_interval`.
    pub tokens_per_fill: u64,
    /// Refill period.
    pub fill_interval: Duration,
    /// `filter_enabled` percent: requests checked.
    pub enabled: f64,
    /// `filter_enforced` percent: checked requests actually refused.
    pub enforced: f64,
    /// `response_headers_to_add`, on limited responses.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The inbound port whose virtual host carries it (an `HTTP_ROUTE` patch); None: every
    /// request the listener takes.
    pub port: Option<u16>,
}

impl LocalRateLimit {
    /// Whether it applies to `w` on a listener of kind `ctx`.
    pub fn applies(&self, w: &Workload, ctx: Context) -> bool {
        (self.context == Context::Any || self.context == ctx)
            && (self.namespace == ROOT_NAMESPACE || self.namespace == w.namespace)
            && super::selects(&self.selector, &w.labels)
    }
}

fn duration(v: &Value) -> Option<Duration> {
    let s = v.as_str()?;
    s.parse::<api::Duration>().ok().map(|d| d.0)
}

/// Envoy's FractionalPercent: `{numerator, denominator: HUNDRED|TEN_THOUSAND|MILLION}`, as percent.
fn fraction(v: Option<&Value>) -> f64 {
    let Some(d) = v.and_then(|v| v.get("default_value")) else {
        // Envoy enables and enforces nothing unless told: 0% by default.
        return 0.0;
    };
    let num = d.get("numerator").and_then(Value::as_f64).unwrap_or(0.0);
    let den = match d.get("denominator").and_then(Value::as_str).unwrap_or("HUNDRED") {
        "TEN_THOUSAND" => 10_000.0,
        "MILLION" => 1_000_000.0,
        _ => 100.0,
    };
    (num * 100.0 / den).clamp(0.0, 100.0)
}

/// The LocalRateLimit config inside a filter value, in its TypedStruct or direct form.
fn local_ratelimit_config(value: &Value) -> Option<&Value> {
    if value.get("name").and_then(Value::as_str) != Some("envoy.filters.http.local_ratelimit") {
        return None;
    }
    let typed = value.get("typed_config")?;
    Some(typed.get("value").unwrap_or(typed))
}

/// The inbound port of an `HTTP_ROUTE` patch's virtual host, `inbound|http|<port>`: the name
/// Istio gives a sidecar's inbound HTTP route table.
fn inbound_vhost_port(m: Option<&api::EnvoyConfigObjectMatch>) -> Option<u16> {
    let m = m?;
    if m.context != Some(api::PatchContext::SidecarInbound) {
        return None;
    }
    let vhost = m.route_configuration.as_ref()?.vhost.as_ref()?;
    vhost.name.as_deref()?.strip_prefix("inbound|http|")?.parse().ok()
}

/// The LocalRateLimit config an `HTTP_ROUTE` patch merges into its routes.
fn per_route_config(value: &Value) -> Option<&Value> {
    let typed = value.get("typed_per_filter_config")?.get("envoy.filters.http.local_ratelimit")?;
    Some(typed.get("value").unwrap_or(typed))
}

/// Compiles the EnvoyFilters: rate limits, plus one line per patch that is not emulated.
pub fn compile(filters: &[(&api::Object<api::EnvoyFilterSpec>, String)]) -> (Vec<LocalRateLimit>, Vec<String>) {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    for (ef, origin) in filters {
        let ns = ef.metadata.ns().to_string();
        let name = ef.metadata.name.clone().unwrap_or_default();
        // A route's bucket only counts where the filter runs: Envoy reads the per-route config
        // from the filter in the chain, which this EnvoyFilter must insert.
        let has_filter = has_patch(ef, api::ApplyTo::HttpFilter, local_ratelimit_config);
        let has_route_bucket = has_patch(ef, api::ApplyTo::HttpRoute, per_route_config);
        for (i, p) in ef.spec.config_patches.iter().enumerate() {
            let value = p.patch.as_ref().and_then(|p| p.value.as_ref());
            let not_emulated = |why: String| format!("EnvoyFilter {ns}/{name} ({origin}) configPatches[{i}] ({why})");
            let (cfg, port) =
                match (p.apply_to, value.and_then(local_ratelimit_config), value.and_then(per_route_config)) {
                    (Some(api::ApplyTo::HttpFilter), Some(cfg), _) => {
                        if cfg.get("token_bucket").is_none() && has_route_bucket {
                            // The filter alone, its buckets on routes (below): nothing to limit here.
                            continue;
                        }
                        (cfg, None)
                    }
                    // Descriptors (and the route's `rate_limits` that feed them) pick a bucket per
                    // request attribute: not emulated, so such a patch is reported below.
                    (Some(api::ApplyTo::HttpRoute), _, Some(cfg))
                        if cfg.get("descriptors").is_none()
                            && value.is_some_and(|v| v.get("route").is_none())
                            && has_filter =>
                    {
                        let Some(port) = inbound_vhost_port(p.r#match.as_ref()) else {
                            ignored.push(not_emulated(
                            "HttpRoute: local_ratelimit on a virtual host other than a sidecar's inbound|http|<port>"
                                .into(),
                        ));
                            continue;
                        };
                        (cfg, Some(port))
                    }
                    _ => {
                        ignored.push(not_emulated(format!("{:?}", p.apply_to.unwrap_or(api::ApplyTo::Invalid))));
                        continue;
                    }
                };
            let bucket = cfg.get("token_bucket");
            let get = |k: &str| bucket.and_then(|b| b.get(k));
            let max_tokens = get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
            let tokens_per_fill = get("tokens_per_fill").and_then(Value::as_u64).unwrap_or(1);
            let Some(fill_interval) = get("fill_interval").and_then(duration).filter(|d| !d.is_zero()) else {
                ignored.push(not_emulated("local_ratelimit without a valid token_bucket.fill_interval".into()));
                continue;
            };
            let context = match p.r#match.as_ref().and_then(|m| m.context) {
                Some(api::PatchContext::SidecarInbound) => Context::Inbound,
                Some(api::PatchContext::SidecarOutbound) => Context::Outbound,
                Some(api::PatchContext::Gateway) => Context::Gateway,
                _ => Context::Any,
            };
            let headers = cfg
                .get("response_headers_to_add")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|h| {
                    let h = h.get("header")?;
                    let k = HeaderName::from_bytes(h.get("key")?.as_str()?.to_ascii_lowercase().as_bytes()).ok()?;
                    let v = HeaderValue::from_str(h.get("value")?.as_str()?).ok()?;
                    Some((k, v))
                })
                .collect();
            out.push(LocalRateLimit {
                key: format!("{ns}/{name}#{i}"),
                namespace: ns.clone(),
                selector: ef.spec.workload_selector.as_ref().map(|s| s.labels.clone()).unwrap_or_default(),
                context,
                max_tokens,
                tokens_per_fill,
                fill_interval,
                enabled: fraction(cfg.get("filter_enabled")),
                enforced: fraction(cfg.get("filter_enforced")),
                headers,
                port,
            });
        }
    }
    (out, ignored)
}

/// Whether the EnvoyFilter has a patch of kind `to` whose value `config` finds a local rate
/// limit in.
fn has_patch(ef: &api::Object<api::EnvoyFilterSpec>, to: api::ApplyTo, config: fn(&Value) -> Option<&Value>) -> bool {
    ef.spec
        .config_patches
        .iter()
        .any(|p| p.apply_to == Some(to) && p.patch.as_ref().and_then(|p| p.value.as_ref()).and_then(config).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: 60s
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
    - applyTo: CLUSTER
      patch:
        operation: MERGE
        value: {}
"#;

    #[test]
    fn the_tasks_filter_compiles() {
        let ef: api::Object<api::EnvoyFilterSpec> = serde_yaml::from_str(TASK).unwrap();
        let (limits, ignored) = compile(&[(&ef, "rl.yaml:1".into())]);
        assert_eq!(limits.len(), 1);
        let l = &limits[0];
        assert_eq!((l.max_tokens, l.tokens_per_fill, l.fill_interval), (4, 4, Duration::from_secs(60)));
        assert_eq!((l.enabled, l.enforced, l.context), (100.0, 100.0, Context::Inbound));
        assert_eq!(l.headers[0].0, "x-local-rate-limit");
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert!(ignored[0].contains("Cluster"), "{ignored:?}");
        let w = |app: &str, ns: &str| Workload {
            name: "p".into(),
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            service_account: "sa".into(),
            deployment: "p".into(),
        };
        assert!(l.applies(&w("productpage", "default"), Context::Inbound), "root namespace: every namespace");
        assert!(!l.applies(&w("productpage", "default"), Context::Outbound));
        assert!(!l.applies(&w("reviews", "default"), Context::Inbound));
    }

    /// The rate-limit task's second variant (`snip_local_rate_limit_3`): the filter without a
    /// bucket, the bucket on productpage's inbound virtual host.
    const TASK_PER_ROUTE: &str =
        include_str!("../../../samples/rate-limiting-per-route/filter-local-ratelimit-svc.yaml");

    #[test]
    fn the_tasks_per_route_variant_limits_the_inbound_port_it_names() {
        let ef: api::Object<api::EnvoyFilterSpec> = serde_yaml::from_str(TASK_PER_ROUTE).unwrap();
        let (limits, ignored) = compile(&[(&ef, "rl.yaml:1".into())]);
        assert!(ignored.is_empty(), "{ignored:?}");
        assert_eq!(limits.len(), 1, "the filter alone limits nothing; the route's bucket does");
        let l = &limits[0];
        assert_eq!(
            (l.max_tokens, l.fill_interval, l.context, l.port),
            (4, Duration::from_secs(60), Context::Inbound, Some(9080))
        );
        assert_eq!((l.enabled, l.enforced), (100.0, 100.0));
        assert_eq!(l.headers[0].0, "x-local-rate-limit");
        // Without the filter in the chain a route's bucket is never read: reported, not applied.
        let mut alone = ef.clone();
        alone.spec.config_patches.remove(0);
        let (limits, ignored) = compile(&[(&alone, "rl.yaml:1".into())]);
        assert!(limits.is_empty() && ignored.len() == 1 && ignored[0].contains("HttpRoute"), "{ignored:?}");
    }
}
