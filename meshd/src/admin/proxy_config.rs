//! What each proxy is configured with, in istioctl's shapes: listeners,
//! routes, clusters and endpoints (`proxy-config`), sync state
//! (`proxy-status`), Envoy's `/config_dump` and `/listeners`, and
//! `x describe pod`. Read from the served snapshot and the proxy's runtime.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::daemon::State as DaemonState;
use crate::snapshot::route::{RouteAction, Target, VirtualHost};
use crate::snapshot::{PodInfo, Snapshot};

/// `proxy-config listeners`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListenerRow {
    /// Bound address.
    pub address: String,
    /// Bound port.
    pub port: u16,
    /// `HTTP` or `TCP`.
    pub kind: String,
    /// Envoy's name: `virtualOutbound`, `virtualInbound|9080`, `0.0.0.0_8080`.
    pub name: String,
}

/// `proxy-config routes` (the verbose columns).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RouteRow {
    /// Route config: the port (`9080`) or `http.8080` at the gateway.
    pub name: String,
    /// Domains of the virtual host.
    pub domains: Vec<String>,
    /// The rule's match.
    pub matches: String,
    /// `name.namespace`, empty for the default route.
    pub virtual_service: String,
}

/// `proxy-config clusters`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterRow {
    /// Service FQDN.
    pub fqdn: String,
    /// Port.
    pub port: String,
    /// Subset or `-`.
    pub subset: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// `EDS`, `ORIGINAL_DST`, `STATIC`.
    pub kind: String,
    /// `name.namespace` or `-`.
    pub destination_rule: String,
}

/// `proxy-config endpoints`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EndpointRow {
    /// `address:port`.
    pub endpoint: String,
    /// `HEALTHY` or `UNHEALTHY`.
    pub status: String,
    /// `OK` or `FAILED`.
    pub outlier_check: String,
    /// Cluster name.
    pub cluster: String,
}

/// Everything `proxy-config` shows of one proxy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProxyConfig {
    /// Proxy (pod) name.
    pub proxy: String,
    /// Config generation.
    pub generation: u64,
    /// Listeners.
    pub listeners: Vec<ListenerRow>,
    /// Routes.
    pub routes: Vec<RouteRow>,
    /// Clusters.
    pub clusters: Vec<ClusterRow>,
    /// Endpoints.
    pub endpoints: Vec<EndpointRow>,
}

fn vs_name(v: &str) -> String {
    match v.split_once('/') {
        Some((ns, name)) => format!("{name}.{ns}"),
        None => v.to_string(),
    }
}

fn route_rows(name: &str, domains: Vec<String>, vhost: &VirtualHost, out: &mut Vec<RouteRow>) {
    for r in vhost.routes.iter() {
        let matches = if r.matches.is_empty() {
            "/*".to_string()
        } else {
            r.matches.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(" | ")
        };
        out.push(RouteRow {
            name: name.to_string(),
            domains: domains.clone(),
            matches,
            virtual_service: vs_name(&r.virtual_service),
        });
    }
}

/// The proxy config of `name`, or None when no such proxy runs.
pub fn build(s: &DaemonState, name: &str) -> Option<ProxyConfig> {
    let snap = s.snapshot.load();
    let gateway = name == crate::daemon::GATEWAY_NAME;
    let pod = if gateway { None } else { Some(snap.find_pod(name)?) };
    let proxy = pod.map_or_else(|| name.to_string(), |p| p.name.clone());
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let mut clusters: Vec<ClusterRow> = Vec::new();
    let addr_row = |a: std::net::SocketAddr, kind: &str, name: String| ListenerRow {
        address: a.ip().to_string(),
        port: a.port(),
        kind: kind.to_string(),
        name,
    };
    match pod {
        None => {
            listeners.push(addr_row(s.addrs.gateway, "HTTP", "0.0.0.0_8080".into()));
            listeners.push(addr_row(s.addrs.gateway_tls, "HTTPS", "0.0.0.0_8443".into()));
            for (p, vh) in &snap.ingress.vhosts {
                route_rows("http.8080", vec![p.to_string()], vh, &mut routes);
            }
            for (p, vh) in &snap.ingress_tls.vhosts {
                route_rows("https.443", vec![p.to_string()], vh, &mut routes);
            }
        }
        Some(p) => {
            if let Some(out) = p.outbound {
                listeners.push(addr_row(out, "HTTP", "virtualOutbound".into()));
            }
            for (port, addr) in &p.inbound {
                listeners.push(addr_row(*addr, "HTTP+TCP", format!("virtualInbound|{port}")));
                clusters.push(ClusterRow {
                    fqdn: String::new(),
                    port: port.to_string(),
                    subset: "-".into(),
                    direction: "inbound".into(),
                    kind: "ORIGINAL_DST".into(),
                    destination_rule: "-".into(),
                });
            }
            if let Some(table) = snap.mesh.get(&p.namespace) {
                // Group the host keys by the virtual host they point at.
                let mut by_vhost: BTreeMap<String, (Vec<String>, Arc<VirtualHost>)> = BTreeMap::new();
                for (host, vh) in &table.hosts {
                    by_vhost.entry(vh.name.clone()).or_insert_with(|| (vec![], vh.clone())).0.push(host.clone());
                }
                for (pattern, vh) in &table.wildcards {
                    by_vhost.entry(vh.name.clone()).or_insert_with(|| (vec![], vh.clone())).0.push(pattern.to_string());
                }
                for (_, (mut domains, vh)) in by_vhost {
                    domains.sort();
                    // Sidecar route configs are named by port, the port of the service they lead to.
                    let port = vh.routes.iter().find_map(|r| match &r.action {
                        RouteAction::Forward { targets, .. } => targets.iter().find_map(|t| match &t.target {
                            Target::Clusters(by_port) => by_port.first().map(|(p, _)| p.to_string()),
                            Target::Missing(_) => None,
                        }),
                        _ => None,
                    });
                    route_rows(&port.unwrap_or_else(|| "80".into()), domains, &vh, &mut routes);
                }
            }
        }
    }
    for c in &snap.clusters {
        clusters.push(ClusterRow {
            fqdn: c.service.clone(),
            port: c.port.to_string(),
            subset: c.subset.clone().unwrap_or_else(|| "-".into()),
            direction: "outbound".into(),
            kind: "EDS".into(),
            destination_rule: c.destination_rule.clone().unwrap_or_else(|| "-".into()),
        });
    }
    for (fqdn, kind) in [("BlackHoleCluster", "STATIC"), ("PassthroughCluster", "ORIGINAL_DST")] {
        let dash = || "-".to_string();
        clusters.push(ClusterRow {
            fqdn: fqdn.into(),
            port: dash(),
            subset: dash(),
            direction: dash(),
            kind: kind.into(),
            destination_rule: dash(),
        });
    }
    let rt = s.registry.all().into_iter().find(|r| r.name == proxy);
    let mut endpoints = Vec::new();
    if let Some(rt) = rt {
        let generation = rt.for_snapshot(&snap);
        for (cluster, crt) in snap.clusters.iter().zip(&generation.clusters) {
            for (ep, ej) in cluster.endpoints.iter().zip(crt.ejected()) {
                endpoints.push(EndpointRow {
                    endpoint: ep.addr.to_string(),
                    status: if ej { "UNHEALTHY" } else { "HEALTHY" }.into(),
                    outlier_check: if ej { "FAILED" } else { "OK" }.into(),
                    cluster: cluster.name.clone(),
                });
            }
        }
    }
    Some(ProxyConfig { proxy, generation: snap.generation, listeners, routes, clusters, endpoints })
}

/// One row of `proxy-status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatusRow {
    /// `pod.namespace`.
    pub proxy: String,
    /// CDS, LDS, EDS, RDS state.
    pub sync: String,
    /// The control plane and its version.
    pub pilot: String,
    /// The proxy's version.
    pub version: String,
}

/// Every proxy: each reads the snapshot atomically per request, so all are in sync with it.
pub fn status(s: &DaemonState) -> Vec<StatusRow> {
    let snap = s.snapshot.load();
    let version = env!("CARGO_PKG_VERSION").to_string();
    let row = |proxy: String| StatusRow {
        proxy,
        sync: format!("SYNCED (generation {})", snap.generation),
        pilot: format!("meshd-{version}"),
        version: version.clone(),
    };
    let mut rows = vec![row(format!("{}.{}", crate::daemon::GATEWAY_NAME, crate::snapshot::ROOT_NAMESPACE))];
    rows.extend(snap.pods.iter().filter(|p| p.sidecar).map(|p| row(format!("{}.{}", p.name, p.namespace))));
    rows
}

/// `istioctl x describe pod` for `name`.
pub fn describe(snap: &Snapshot, name: &str) -> Option<String> {
    let pod = snap.find_pod(name)?;
    let mut o = String::new();
    let _ = writeln!(o, "Pod: {}", pod.name);
    let ports: Vec<String> = pod
        .container_ports
        .iter()
        .map(|(n, p)| {
            format!("{p} ({})", n.clone().unwrap_or_else(|| pod.labels.get("app").cloned().unwrap_or_default()))
        })
        .collect();
    let sidecar = if pod.sidecar { ", 15090 (istio-proxy)" } else { "" };
    let _ = writeln!(o, "   Pod Ports: {}{sidecar}", ports.join(", "));
    if !pod.sidecar {
        let _ = writeln!(o, "WARNING: {} is not part of mesh; no Istio sidecar", pod.name);
    }
    for svc in snap.services_of(pod) {
        let _ = writeln!(o, "--------------------");
        let _ = writeln!(o, "Service: {}", svc.name);
        for sp in &svc.ports {
            let target = pod.resolve_port(&sp.target_port).map(|p| p.to_string()).unwrap_or_else(|| "?".into());
            let proto = if sp.tcp { "TCP" } else { "HTTP" };
            let _ = writeln!(o, "   Port: {} {}/{proto} targets pod port {target}", sp.name, sp.port);
        }
        let mine: Vec<_> = snap.clusters.iter().filter(|c| c.service == svc.fqdn).collect();
        if let Some(dr) = mine.iter().find_map(|c| c.destination_rule.clone()) {
            let _ = writeln!(o, "DestinationRule: {dr} for \"{}\"", svc.name);
            let has = |c: &crate::snapshot::Cluster| c.endpoints.iter().any(|e| e.pod == pod.name);
            let mut matching: Vec<&str> = mine.iter().filter(|c| has(c)).filter_map(|c| c.subset.as_deref()).collect();
            let mut other: Vec<&str> = mine.iter().filter(|c| !has(c)).filter_map(|c| c.subset.as_deref()).collect();
            matching.sort();
            matching.dedup();
            other.sort();
            other.dedup();
            let _ = writeln!(o, "   Matching subsets: {}", matching.join(","));
            if !other.is_empty() {
                let _ = writeln!(o, "      (Non-matching subsets {})", other.join(","));
            }
            let tls = mine.iter().find_map(|c| c.tls_mode.clone()).unwrap_or_else(|| "ISTIO_MUTUAL (auto mTLS)".into());
            let _ = writeln!(o, "   Traffic Policy TLS Mode: {tls}");
        } else {
            let _ = writeln!(o, "   No DestinationRule (auto mTLS)");
        }
        describe_routes(snap, pod, &svc.fqdn, &mut o);
    }
    let _ = writeln!(o, "--------------------");
    let _ = writeln!(o, "Effective PeerAuthentication:");
    let mode = snap.peer_auth.workload_mode(&pod.namespace, &pod.labels).name();
    let _ = writeln!(o, "   Workload mTLS mode: {mode}");
    let ports = snap.peer_auth.port_modes(&pod.namespace, &pod.labels);
    if !ports.is_empty() {
        let _ = writeln!(o, "   Port Level mTLS mode:");
        for (port, mode) in ports {
            let _ = writeln!(o, "      {port}: {}", mode.name());
        }
    }
    let applied = snap.peer_auth.applied(&pod.namespace, &pod.labels);
    if !applied.is_empty() {
        let _ = writeln!(o, "Applied PeerAuthentication:\n   {}", applied.join(", "));
    }
    Some(o)
}

/// The VirtualService routes toward `fqdn`, as seen from the pod's namespace.
fn describe_routes(snap: &Snapshot, pod: &PodInfo, fqdn: &str, o: &mut String) {
    let Some(vh) = snap.mesh.get(&pod.namespace).and_then(|t| t.hosts.get(fqdn)) else { return };
    let named: Vec<_> = vh.routes.iter().filter(|r| !r.virtual_service.is_empty()).collect();
    let Some(first) = named.first() else { return };
    let _ = writeln!(o, "VirtualService: {}", vs_name(&first.virtual_service));
    let mut reaches = false;
    let mut misses = Vec::new();
    for r in &named {
        let RouteAction::Forward { targets, total } = &r.action else { continue };
        for t in targets {
            let Target::Clusters(by_port) = &t.target else { continue };
            let Some((_, c)) = by_port.first() else { continue };
            if c.endpoints.iter().any(|e| e.pod == pod.name) {
                reaches = true;
                if targets.len() > 1 {
                    let _ = writeln!(o, "   Weight {}%", t.weight * 100 / (*total).max(1));
                }
            } else if let Some(subset) = &c.subset {
                let when = if r.matches.is_empty() {
                    "everything".to_string()
                } else {
                    format!("when {}", r.matches.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(" | "))
                };
                misses.push(format!("      Route to non-matching subset {subset} for ({when})"));
            }
        }
    }
    if reaches {
        let _ = writeln!(o, "   {} HTTP route(s)", named.len());
    } else {
        let _ = writeln!(o, "   WARNING: No destinations match pod subsets (checked {} HTTP routes)", named.len());
    }
    for m in misses {
        let _ = writeln!(o, "{m}");
    }
}
