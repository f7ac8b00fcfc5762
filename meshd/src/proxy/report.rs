//! Which metric label set a request counts in. Built the first time a proxy
//! talks to an endpoint (or a caller reaches an inbound port) and cached
//! beside it, so a request only clones an `Arc`.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::runtime::{ClusterShared, EndpointRt, ProxyRuntime};
use crate::snapshot::{Cluster, Snapshot, SnapshotHandle};
use crate::telemetry::metrics::{DestService, Metrics, Peer, Reporter, Series, SeriesKey, TcpSeries};

/// A report by `rt` as the caller.
fn source_key(
    rt: &ProxyRuntime,
    destination: Peer,
    service: DestService,
    protocol: &'static str,
    mtls: bool,
) -> SeriesKey {
    SeriesKey {
        proxy: rt.name.clone(),
        reporter: Reporter::Source,
        source: Peer::of_workload(&rt.workload, rt.tls.is_some()),
        destination,
        service,
        protocol,
        mtls,
    }
}

/// A report by `rt` as the callee.
fn destination_key(
    rt: &ProxyRuntime,
    source: Peer,
    service: DestService,
    protocol: &'static str,
    mtls: bool,
) -> SeriesKey {
    SeriesKey {
        proxy: rt.name.clone(),
        reporter: Reporter::Destination,
        source,
        destination: Peer::of_workload(&rt.workload, rt.tls.is_some()),
        service,
        protocol,
        mtls,
    }
}

/// The labels of the pod behind an endpoint; unknown outside the mesh.
fn endpoint_peer(snap: &Snapshot, ep: &EndpointRt) -> Peer {
    match snap.pods.iter().find(|p| p.name == ep.pod) {
        Some(p) => Peer::of_pod(p, ep.mtls.is_some()),
        None => Peer::unknown(),
    }
}

/// The caller's (source) report of a request sent to `ep` of `cluster`.
pub fn source(
    metrics: &Metrics,
    snapshots: &SnapshotHandle,
    rt: &ProxyRuntime,
    cluster: &Cluster,
    ep: &EndpointRt,
) -> Arc<Series> {
    ep.series
        .get_or_init(|| {
            let destination = endpoint_peer(&snapshots.load(), ep);
            let service = DestService::from_fqdn(&cluster.service);
            metrics.http(source_key(rt, destination, service, "http", ep.mtls.is_some()))
        })
        .clone()
}

/// The caller's report of a request that reached no endpoint of `cluster` (UH, UO, timeouts before a pick).
pub fn source_no_endpoint(
    metrics: &Metrics,
    rt: &ProxyRuntime,
    cluster: &Cluster,
    shared: &ClusterShared,
) -> Arc<Series> {
    shared
        .series
        .get_or_init(|| {
            metrics.http(source_key(rt, Peer::unknown(), DestService::from_fqdn(&cluster.service), "http", false))
        })
        .clone()
}

/// The caller's report of a request no route took (NR, NC, local replies before routing).
pub fn unrouted(metrics: &Metrics, rt: &ProxyRuntime) -> Arc<Series> {
    rt.unrouted
        .get_or_init(|| metrics.http(source_key(rt, Peer::unknown(), DestService::unknown(), "http", false)))
        .clone()
}

/// The gateway's report of a TCP connection to `ep` of `cluster` (once per connection).
pub fn tcp_source(
    metrics: &Metrics,
    snap: &Snapshot,
    rt: &ProxyRuntime,
    cluster: &Cluster,
    ep: &EndpointRt,
) -> Arc<TcpSeries> {
    let service = DestService::from_fqdn(&cluster.service);
    metrics.tcp(source_key(rt, endpoint_peer(snap, ep), service, "tcp", ep.mtls.is_some()))
}

/// An inbound sidecar's report of a TCP connection; the caller is known by its mTLS principal only.
pub fn tcp_destination(metrics: &Metrics, rt: &ProxyRuntime, principal: Option<&str>) -> Arc<TcpSeries> {
    let source = match principal {
        Some(p) => Peer { principal: format!("spiffe://{p}"), ..Peer::unknown() },
        None => Peer::unknown(),
    };
    metrics.tcp(destination_key(rt, source, DestService::unknown(), "tcp", principal.is_some()))
}

/// Callers seen at one port (node id, over mTLS) and their label sets; a handful, scanned in order.
type Callers = Vec<(Box<str>, bool, Arc<Series>)>;

/// The destination reports of one inbound port, by caller.
#[derive(Debug, Default)]
pub struct InboundSeries {
    by_caller: ArcSwap<Callers>,
    grow: Mutex<()>,
}

impl InboundSeries {
    /// The label set for a caller named by its `x-envoy-peer-metadata-id` (empty: unknown).
    pub fn get(
        &self,
        metrics: &Metrics,
        snapshots: &SnapshotHandle,
        rt: &ProxyRuntime,
        port: u16,
        caller: &str,
        mtls: bool,
    ) -> Arc<Series> {
        let lookup = |m: &Callers| m.iter().find(|(c, t, _)| &**c == caller && *t == mtls).map(|(_, _, s)| s.clone());
        if let Some(s) = lookup(&self.by_caller.load()) {
            return s;
        }
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.by_caller.load_full();
        if let Some(s) = lookup(&current) {
            return s;
        }
        let s = metrics.http(inbound_key(&snapshots.load(), rt, port, caller, mtls));
        let mut next = (*current).clone();
        next.push((caller.into(), mtls, s.clone()));
        self.by_caller.store(Arc::new(next));
        s
    }
}

/// The pod named in a node id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
fn caller_pod(node_id: &str) -> Option<(&str, &str)> {
    let pod_ns = node_id.split('~').nth(2)?;
    pod_ns.rsplit_once('.')
}

fn inbound_key(snap: &Snapshot, rt: &ProxyRuntime, port: u16, caller: &str, mtls: bool) -> SeriesKey {
    let source = match caller_pod(caller) {
        Some((pod, _)) if pod == crate::daemon::GATEWAY_NAME => {
            Peer::of_workload(&crate::daemon::gateway_workload(), mtls)
        }
        Some((pod, ns)) => match snap.pods.iter().find(|p| p.name == pod && p.namespace == ns) {
            Some(p) => Peer::of_pod(p, mtls),
            None => Peer::unknown(),
        },
        None => Peer::unknown(),
    };
    let w = &rt.workload;
    let service = snap
        .pods
        .iter()
        .find(|p| p.name == w.name)
        .and_then(|pod| {
            snap.services_of(pod)
                .into_iter()
                .find(|s| s.ports.iter().any(|sp| pod.resolve_port(&sp.target_port) == Some(port)))
        })
        .map(|s| DestService::from_fqdn(&s.fqdn))
        .unwrap_or_else(DestService::unknown);
    destination_key(rt, source, service, "http", mtls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_name_the_calling_pod() {
        assert_eq!(
            caller_pod("sidecar~127.0.0.1~productpage-v1-123-abc.default~default.svc.cluster.local"),
            Some(("productpage-v1-123-abc", "default"))
        );
        assert_eq!(caller_pod(""), None);
    }
}
