//! References from VirtualServices to hosts, subsets and gateways, after Istio's
//! `virtualservice.DestinationHostAnalyzer`, `DestinationRuleAnalyzer` and
//! `GatewayAnalyzer`:
//! - IST0101 `Referenced host not found` (also `mirror host`, `host:port`),
//!   `Referenced host+subset in destinationrule not found`, `Referenced gateway not found`;
//! - IST0112 a destination without port on a service with several ports;
//! - IST0132 VirtualService hosts that no server of a bound gateway exposes.
//!
//! Known hosts are the Services of the analysed set (`name.ns.svc.cluster.local`) and
//! ServiceEntry hosts (wildcards included), with their visibility (`exportTo`).
//! A host is qualified only when it is a short name (no dot), as in Istio; meshd
//! compares hosts in lower case, as it routes.

use super::docs::{Doc, Set};
use super::lines::FieldPath;
use super::{Level, Message};
use crate::config::api;
use crate::snapshot::{resolve_short_name, CLUSTER_DOMAIN};

/// A host of the service registry, visible from `scope` (`*` for every namespace).
struct Entry {
    scope: String,
    host: String,
    ports: Vec<u32>,
}

fn registry(set: &Set<'_>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (d, svc) in set.services() {
        let host = format!("{}.{}.{CLUSTER_DOMAIN}", d.name.to_ascii_lowercase(), d.namespace);
        let ports: Vec<u32> = svc.spec.ports.iter().filter_map(|p| u32::try_from(p.port).ok()).collect();
        let scopes: Vec<String> = match svc.metadata.annotations.get("networking.istio.io/exportTo") {
            None => vec!["*".to_string()],
            Some(list) => list
                .split(',')
                .map(|s| if s.trim() == "." { d.namespace.clone() } else { s.trim().to_string() })
                .collect(),
        };
        for scope in scopes {
            out.push(Entry { scope, host: host.clone(), ports: ports.clone() });
        }
    }
    for (d, se) in set.service_entries() {
        let ports: Vec<u32> = se.spec.ports.iter().map(|p| p.number).collect();
        let scopes: Vec<String> = if se.spec.export_to.is_empty() || se.spec.export_to.iter().any(|e| e == "*") {
            vec!["*".to_string()]
        } else {
            se.spec.export_to.iter().map(|e| if e == "." { d.namespace.clone() } else { e.clone() }).collect()
        };
        for h in &se.spec.hosts {
            for scope in &scopes {
                let host = resolve_short_name(h, &d.namespace);
                out.push(Entry { scope: scope.clone(), host, ports: ports.clone() });
            }
        }
    }
    out
}

/// The registry entry a destination host of a VS in `vs_ns` resolves to.
fn lookup<'r>(registry: &'r [Entry], vs_ns: &str, export_to: &[String], host: &str) -> Option<&'r Entry> {
    let fqdn = resolve_short_name(host, vs_ns);
    let visible = |scope: &str| -> bool {
        scope == "*"
            || if export_to.is_empty() {
                scope == vs_ns
            } else {
                export_to.iter().any(|e| (if e == "." { vs_ns } else { e.as_str() }) == scope)
            }
    };
    if let Some(e) = registry.iter().find(|e| e.host == fqdn && visible(&e.scope)) {
        return Some(e);
    }
    // Wildcard ServiceEntry hosts, last (as Istio does).
    let bare = fqdn.strip_prefix('*').unwrap_or(&fqdn);
    registry.iter().find(|e| {
        (e.scope == "*" || e.scope == vs_ns) && e.host.strip_prefix('*').is_some_and(|suffix| bare.ends_with(suffix))
    })
}

/// A route or mirror destination with the path of its `host` field.
struct Dest<'v> {
    dest: &'v api::Destination,
    host_path: FieldPath,
    mirror: bool,
}

/// Destinations in Istio's order: tcp, tls, http routes, then http mirrors.
fn destinations(vs: &api::VirtualServiceSpec) -> Vec<Dest<'_>> {
    let mut out = Vec::new();
    let route =
        |rule: &str, i: usize, j: usize| FieldPath::parse(&format!("spec.{rule}[{i}].route[{j}].destination.host"));
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push(Dest { dest: &d.destination, host_path: route("tcp", i, j), mirror: false });
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push(Dest { dest: &d.destination, host_path: route("tls", i, j), mirror: false });
        }
    }
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push(Dest { dest: &d.destination, host_path: route("http", i, j), mirror: false });
        }
    }
    for (i, r) in vs.http.iter().enumerate() {
        if let Some(m) = &r.mirror {
            let host_path = FieldPath::parse(&format!("spec.http[{i}].mirror.host"));
            out.push(Dest { dest: m, host_path, mirror: true });
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            let host_path = FieldPath::parse(&format!("spec.http[{i}].mirrors[{j}].destination.host"));
            out.push(Dest { dest: &m.destination, host_path, mirror: true });
        }
    }
    out
}

/// What identifies a host for subset lookups: the FQDN of a Kubernetes service, else
/// the host within a namespace (as Istio's `GetResourceNameFromHost`).
fn subset_key(ns: &str, host: &str) -> String {
    let fqdn = resolve_short_name(host, ns);
    if fqdn.ends_with(&format!(".{CLUSTER_DOMAIN}")) {
        fqdn
    } else {
        format!("{ns}/{fqdn}")
    }
}

/// Runs the reference checks over every VirtualService.
pub(crate) fn check(set: &Set<'_>, out: &mut Vec<Message>) {
    let registry = registry(set);
    let mut subsets: Vec<(String, String)> = Vec::new();
    for (d, dr) in set.destination_rules() {
        let key = subset_key(&d.namespace, &dr.spec.host);
        subsets.extend(dr.spec.subsets.iter().map(|s| (key.clone(), s.name.clone())));
    }
    for (d, vs) in set.virtual_services() {
        if !d.own {
            continue;
        }
        for dst in destinations(&vs.spec) {
            let host = &dst.dest.host;
            match lookup(&registry, &d.namespace, &vs.spec.export_to, host) {
                None => {
                    let what = if dst.mirror { "mirror host" } else { "host" };
                    d.report(
                        out,
                        Level::Error,
                        "IST0101",
                        &dst.host_path,
                        format!("Referenced {what} not found: {host:?}"),
                    );
                }
                Some(entry) => check_port(d, &dst, entry, out),
            }
            if let Some(subset) = dst.dest.subset.as_deref().filter(|s| !s.is_empty()) {
                let key = subset_key(&d.namespace, host);
                if !subsets.iter().any(|(k, s)| *k == key && s == subset) {
                    let what = if dst.mirror { "mirror+subset" } else { "host+subset" };
                    let text = format!("Referenced {what} in destinationrule not found: \"{host}+{subset}\"");
                    d.report(out, Level::Error, "IST0101", &dst.host_path, text);
                }
            }
        }
        check_gateways(set, d, vs, out);
    }
}

/// IST0112 / IST0101 `host:port`, as Istio's `checkServiceEntryPorts`.
fn check_port(d: &Doc, dst: &Dest<'_>, entry: &Entry, out: &mut Vec<Message>) {
    let host = &dst.dest.host;
    match dst.dest.port.map(|p| p.number).filter(|n| *n != 0) {
        None if entry.ports.len() > 1 => {
            let ports: Vec<String> = entry.ports.iter().map(u32::to_string).collect();
            let text = format!(
                "This VirtualService routes to a service {host:?} that exposes multiple ports [{}]. Specifying a port in \
                 the destination is required to disambiguate.",
                ports.join(" ")
            );
            d.report(out, Level::Error, "IST0112", &dst.host_path, text);
        }
        Some(n) if !entry.ports.contains(&n) => {
            let text = format!("Referenced host:port not found: \"{host}:{n}\"");
            d.report(out, Level::Error, "IST0101", &dst.host_path, text);
        }
        _ => {}
    }
}

/// Istio's `host.Name.Matches`: wildcard-aware, in both directions.
pub(crate) fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if a.len() < b.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// IST0101 `gateway` and IST0132 for each gateway a VS binds to.
fn check_gateways(set: &Set<'_>, d: &Doc, vs: &api::Object<api::VirtualServiceSpec>, out: &mut Vec<Message>) {
    for (i, gw) in vs.spec.gateways.iter().enumerate() {
        if gw == "mesh" {
            continue;
        }
        let (gw_ns, gw_name) = gw.split_once('/').unwrap_or((d.namespace.as_str(), gw.as_str()));
        let path = FieldPath::default().key("spec").key("gateways").index(i);
        let found: Vec<(&Doc, &api::Object<api::GatewaySpec>)> =
            set.gateways().filter(|(g, _)| g.namespace == gw_ns && g.name == gw_name).collect();
        if found.is_empty() {
            d.report(out, Level::Error, "IST0101", &path, format!("Referenced gateway not found: {gw:?}"));
        }
        // The hosts the gateway exposes to this VS's namespace (`./h`, `*/h`, `ns/h`).
        let mut names: Vec<String> = Vec::new();
        for (g, obj) in &found {
            for server in &obj.spec.servers {
                for h in &server.hosts {
                    match h.split_once('/') {
                        Some(("*", "*")) => names.push("*".to_string()),
                        Some(("*", host)) => names.push(host.to_string()),
                        Some((".", host)) if g.namespace == d.namespace => names.push(host.to_string()),
                        Some((ns, host)) if ns == d.namespace => names.push(host.to_string()),
                        Some(_) => {}
                        None => names.push(h.clone()),
                    }
                }
            }
        }
        let exposed = names.iter().any(|gh| vs.spec.hosts.iter().any(|vh| host_matches(gh, vh)));
        if !exposed {
            let text = format!(
                "one or more host [{}] defined in VirtualService {} not found in Gateway {gw_ns}/{gw_name}.",
                vs.spec.hosts.join(" "),
                d.full_name()
            );
            d.report(out, Level::Warning, "IST0132", &path, text);
        }
    }
}
