//! IST0145 ConflictingGateways, after Istio's `gateway.ConflictingGatewayAnalyzer`: two
//! Gateways that select the same gateway workloads and expose the same host (same bind
//! address) on the same port.
//!
//! Selectors are compared as Kubernetes prints them (`k=v,k2=v2`): equal, or one contained
//! in the other while some workload carries both (the workloads are the folder's
//! Deployments and meshd's ingress gateway).

use std::collections::BTreeMap;

use super::docs::Set;
use super::lines::FieldPath;
use super::{Level, Message};
use crate::snapshot::{selects, Labels};

/// `k=v,k2=v2`, sorted by key.
fn selector_string(s: &BTreeMap<String, String>) -> String {
    s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// One server of one Gateway: its hosts and bind address.
struct Known<'a> {
    gateway: String,
    selector: &'a BTreeMap<String, String>,
    selector_str: String,
    port: u32,
    hosts: Vec<(&'a str, &'a str)>,
}

pub(crate) fn check(set: &Set<'_>, out: &mut Vec<Message>) {
    let mut workloads: Vec<Labels> = set.deployments().map(|(_, d)| d.spec.template.metadata.labels.clone()).collect();
    workloads.push(crate::snapshot::compile::ingress_labels());
    let mut known = Vec::new();
    for (d, gw) in set.gateways() {
        for s in &gw.spec.servers {
            let bind = s.bind.as_deref().unwrap_or("");
            known.push(Known {
                gateway: d.full_name(),
                selector: &gw.spec.selector,
                selector_str: selector_string(&gw.spec.selector),
                port: s.port.number,
                hosts: s.hosts.iter().map(|h| (h.as_str(), bind)).collect(),
            });
        }
    }
    for (d, gw) in set.gateways() {
        if !d.own {
            continue;
        }
        let name = d.full_name();
        let sel = selector_string(&gw.spec.selector);
        let same_workloads = |k: &Known<'_>| {
            k.selector_str == sel
                || ((k.selector_str.contains(&sel) || sel.contains(&k.selector_str))
                    && workloads.iter().any(|w| selects(&gw.spec.selector, w) && selects(k.selector, w)))
        };
        for (i, s) in gw.spec.servers.iter().enumerate() {
            let bind = s.bind.as_deref().unwrap_or("");
            let mut others: Vec<&str> = known
                .iter()
                .filter(|k| k.gateway != name && k.port == s.port.number && same_workloads(k))
                .filter(|k| s.hosts.iter().any(|h| k.hosts.contains(&(h.as_str(), bind))))
                .map(|k| k.gateway.as_str())
                .collect();
            if others.is_empty() {
                continue;
            }
            others.sort_unstable();
            others.dedup();
            let text = format!(
                "Conflict with gateways {} (workload selector {sel}, port {}, hosts {}).",
                others.join(","),
                s.port.number,
                s.hosts.join(",")
            );
            let path = FieldPath::default().key("spec").key("servers").index(i);
            d.report(out, Level::Error, "IST0145", &path, text);
        }
    }
}
