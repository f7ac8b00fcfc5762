//! IST0113 MTLSPolicyConflict. Istio retired the analyzer behind this code with the
//! old authentication `Policy`; this keeps its message for the closest current
//! meaning: a DestinationRule that sends plaintext (`tls.mode: DISABLE`) to workloads a
//! PeerAuthentication makes STRICT, or ISTIO_MUTUAL to workloads whose policy is DISABLE.
//! Both fail every request. Policies apply with Istio's precedence (workload selector,
//! then namespace, then mesh-wide in `istio-system`; port-level first) and the
//! DestinationRule's port-level TLS overrides its top-level TLS per service port.

use super::docs::{Doc, Set};
use super::lines::FieldPath;
use super::{Level, Message};
use crate::config::api::{self, IntOrString, MtlsMode, TlsMode};
use crate::snapshot::{resolve_short_name, Labels, CLUSTER_DOMAIN, ROOT_NAMESPACE};

type PaObj = api::Object<api::PeerAuthenticationSpec>;

fn set_mode(m: Option<&api::MutualTls>) -> Option<MtlsMode> {
    m.and_then(|m| m.mode).filter(|m| *m != MtlsMode::Unset)
}

/// The policy deciding the mode of container `port` of a workload, and that mode.
fn effective<'a>(pas: &[(&'a Doc, &'a PaObj)], ns: &str, labels: &Labels, port: u16) -> Option<(&'a Doc, MtlsMode)> {
    fn selector(p: &PaObj) -> Option<&Labels> {
        p.spec.selector.as_ref().map(|s| &s.match_labels).filter(|l| !l.is_empty())
    }
    let workload =
        pas.iter().find(|(d, p)| d.namespace == ns && selector(p).is_some_and(|s| crate::snapshot::selects(s, labels)));
    if let Some((d, p)) = workload {
        if let Some(m) = p.spec.port_level_mtls.get(&port.to_string()).and_then(|m| set_mode(Some(m))) {
            return Some((d, m));
        }
        if let Some(m) = set_mode(p.spec.mtls.as_ref()) {
            return Some((d, m));
        }
    }
    let wide = |scope: &str| {
        pas.iter()
            .find(|(d, p)| d.namespace == scope && selector(p).is_none())
            .and_then(|(d, p)| set_mode(p.spec.mtls.as_ref()).map(|m| (*d, m)))
    };
    wide(ns).or_else(|| wide(ROOT_NAMESPACE))
}

/// The TLS mode a DestinationRule uses toward `port`, with the path of the field that sets it.
fn dr_mode(dr: &api::DestinationRuleSpec, port: u16) -> Option<(TlsMode, FieldPath)> {
    let tp = dr.traffic_policy.as_ref()?;
    let base = FieldPath::default().key("spec").key("trafficPolicy");
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        if pl.port.is_some_and(|p| p.number == u32::from(port)) {
            if let Some(mode) = pl.tls.as_ref().and_then(|t| t.mode) {
                return Some((mode, base.key("portLevelSettings").index(i).key("tls").key("mode")));
            }
        }
    }
    let mode = tp.tls.as_ref().and_then(|t| t.mode)?;
    Some((mode, base.key("tls").key("mode")))
}

pub(crate) fn check(set: &Set<'_>, out: &mut Vec<Message>) {
    let pas: Vec<(&Doc, &PaObj)> = set.peer_authentications().collect();
    if pas.is_empty() {
        return;
    }
    let mut reported: Vec<(usize, String, String)> = Vec::new();
    for (d, dr) in set.destination_rules() {
        if !d.own {
            continue;
        }
        let fqdn = resolve_short_name(&dr.spec.host, &d.namespace);
        for (sd, svc) in set.services() {
            if fqdn != format!("{}.{}.{CLUSTER_DOMAIN}", sd.name.to_ascii_lowercase(), sd.namespace)
                || svc.spec.selector.is_empty()
            {
                continue;
            }
            for p in &svc.spec.ports {
                let Ok(port) = u16::try_from(p.port) else { continue };
                let Some((mode, path)) = dr_mode(&dr.spec, port) else { continue };
                let want_mtls = match mode {
                    TlsMode::Disable => false,
                    TlsMode::IstioMutual => true,
                    _ => continue,
                };
                for (_, dep) in set.deployments() {
                    let labels = &dep.spec.template.metadata.labels;
                    let dep_ns = dep.metadata.ns();
                    if dep_ns != sd.namespace || !crate::snapshot::selects(&svc.spec.selector, labels) {
                        continue;
                    }
                    let target = target_port(p.target_port.as_ref(), port, dep);
                    let Some((pa, pa_mode)) = effective(&pas, &sd.namespace, labels, target) else { continue };
                    let conflict = match pa_mode {
                        MtlsMode::Strict => !want_mtls,
                        MtlsMode::Disable => want_mtls,
                        _ => false,
                    };
                    let line = d.line(&path);
                    let key = (line, pa.full_name(), format!("{fqdn}:{port}"));
                    if !conflict || reported.contains(&key) {
                        continue;
                    }
                    let text = format!(
                        "A DestinationRule and Policy are in conflict with regards to mTLS for host {fqdn}:{port}. The \
                         DestinationRule {:?} specifies that mTLS must be {want_mtls} but the Policy object {:?} \
                         specifies {}.",
                        d.full_name(),
                        pa.full_name(),
                        if pa_mode == MtlsMode::Strict { "STRICT" } else { "DISABLE" }
                    );
                    d.report_at(out, Level::Error, "IST0113", line, text);
                    reported.push(key);
                }
            }
        }
    }
}

/// The container port a service port reaches on a Deployment's pods.
fn target_port(target: Option<&IntOrString>, port: u16, dep: &api::Object<api::DeploymentSpec>) -> u16 {
    match target {
        None => port,
        Some(IntOrString::Int(n)) => u16::try_from(*n).unwrap_or(port),
        Some(IntOrString::String(s)) => s.parse().ok().unwrap_or_else(|| {
            dep.spec
                .template
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .unwrap_or(port)
        }),
    }
}
