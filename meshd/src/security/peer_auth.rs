//! PeerAuthentication: which mTLS mode a workload port enforces, with
//! Istio's precedence (workload > namespace > mesh, port-level first) and
//! PERMISSIVE when nothing says otherwise.

use crate::config::api;
use crate::snapshot::{Labels, ROOT_NAMESPACE};

/// The mode in force on an inbound port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// Plaintext only.
    Disable,
    /// mTLS or plaintext.
    Permissive,
    /// mTLS only: a plaintext client's connection is reset.
    Strict,
}

impl MtlsMode {
    /// The mode as PeerAuthentication writes it: `STRICT`, `PERMISSIVE`, `DISABLE`.
    pub fn name(self) -> &'static str {
        match self {
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[derive(Debug, Clone)]
struct Policy {
    /// `name.namespace`, as `istioctl x describe` lists it.
    id: String,
    namespace: String,
    /// None: namespace-wide (or mesh-wide in the root namespace).
    selector: Option<Labels>,
    mode: Option<MtlsMode>,
    ports: Vec<(u16, Option<MtlsMode>)>,
}

/// The mode the mesh-wide, namespace-wide and workload policies make, on `port` if given: the
/// workload's port-level mode first, then the most specific level that sets one.
fn resolve([mesh, ns, workload]: [Option<&Policy>; 3], port: Option<u16>) -> MtlsMode {
    let port_level = workload.zip(port).and_then(|(w, port)| w.ports.iter().find(|(p, _)| *p == port)?.1);
    port_level
        .or(workload.and_then(|p| p.mode))
        .or(ns.and_then(|p| p.mode))
        .or(mesh.and_then(|p| p.mode))
        .unwrap_or(MtlsMode::Permissive)
}

fn mode(m: &Option<api::MutualTls>) -> Option<MtlsMode> {
    match m.as_ref().and_then(|m| m.mode) {
        Some(api::MtlsMode::Disable) => Some(MtlsMode::Disable),
        Some(api::MtlsMode::Permissive) => Some(MtlsMode::Permissive),
        Some(api::MtlsMode::Strict) => Some(MtlsMode::Strict),
        Some(api::MtlsMode::Unset) | None => None,
    }
}

/// Every PeerAuthentication, compiled.
#[derive(Debug, Clone, Default)]
pub struct PeerAuthTable {
    policies: Vec<Policy>,
}

impl PeerAuthTable {
    /// Compiles the policies, in config order (the oldest wins among equals, as in Istio).
    pub fn compile(policies: &[&api::Object<api::PeerAuthenticationSpec>]) -> (PeerAuthTable, Vec<String>) {
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for p in policies {
            let ns = p.metadata.ns().to_string();
            let name = p.metadata.name.clone().unwrap_or_default();
            let selector = p.spec.selector.as_ref().map(|s| s.match_labels.clone()).filter(|l| !l.is_empty());
            if selector.is_some() && ns == ROOT_NAMESPACE {
                warnings.push(format!("PeerAuthentication {ns}/{name}: a selector in the root namespace is ignored"));
                continue;
            }
            let mut ports = Vec::new();
            for (k, v) in &p.spec.port_level_mtls {
                match k.parse::<u16>() {
                    Ok(port) if selector.is_some() => ports.push((port, mode(&Some(v.clone())))),
                    Ok(_) => warnings
                        .push(format!("PeerAuthentication {ns}/{name}: portLevelMtls needs a selector; ignored")),
                    Err(_) => {
                        warnings.push(format!("PeerAuthentication {ns}/{name}: portLevelMtls key {k:?} is not a port"))
                    }
                }
            }
            out.push(Policy { id: format!("{name}.{ns}"), namespace: ns, selector, mode: mode(&p.spec.mtls), ports });
        }
        (PeerAuthTable { policies: out }, warnings)
    }

    /// The mode on container `port` of a workload in `namespace` with `labels` (per connection:
    /// nothing allocated).
    pub fn mode(&self, namespace: &str, labels: &Labels, port: u16) -> MtlsMode {
        resolve(self.levels(namespace, labels), Some(port))
    }

    /// The mode of a workload's ports but those its policy names (`portLevelMtls`).
    pub fn workload_mode(&self, namespace: &str, labels: &Labels) -> MtlsMode {
        resolve(self.levels(namespace, labels), None)
    }

    /// The ports a workload's policy gives a mode of their own.
    pub fn port_modes(&self, namespace: &str, labels: &Labels) -> Vec<(u16, MtlsMode)> {
        let [_, _, workload] = self.levels(namespace, labels);
        workload.into_iter().flat_map(|w| w.ports.iter().filter_map(|(p, m)| Some((*p, (*m)?)))).collect()
    }

    /// Every policy that selects a workload (`name.namespace`), the root namespace's first and
    /// each namespace's by name, as `istioctl x describe` lists them under "Applied
    /// PeerAuthentication" (not only the ones that decide its mode).
    pub fn applied(&self, namespace: &str, labels: &Labels) -> Vec<&str> {
        let selects = |p: &&Policy| p.selector.as_ref().is_none_or(|s| crate::snapshot::selects(s, labels));
        let of = |ns: &str| {
            let mut ids: Vec<&str> =
                self.policies.iter().filter(|p| p.namespace == ns).filter(selects).map(|p| p.id.as_str()).collect();
            ids.sort_unstable();
            ids
        };
        let mut ids = of(ROOT_NAMESPACE);
        if namespace != ROOT_NAMESPACE {
            ids.extend(of(namespace));
        }
        ids
    }

    /// The mesh-wide, namespace-wide and workload policy of a workload (the first of each).
    fn levels(&self, namespace: &str, labels: &Labels) -> [Option<&Policy>; 3] {
        let wide = |ns: &str| self.policies.iter().find(|p| p.namespace == ns && p.selector.is_none());
        let workload = self.policies.iter().find(|p| {
            p.namespace == namespace && p.selector.as_ref().is_some_and(|s| crate::snapshot::selects(s, labels))
        });
        // In the root namespace the namespace-wide policy is the mesh's: listed once.
        let ns = wide(namespace).filter(|_| namespace != ROOT_NAMESPACE);
        [wide(ROOT_NAMESPACE), ns, workload]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-samples/istio.io-tasks/authn-policy/");

    fn load(files: &[&str]) -> PeerAuthTable {
        let objs: Vec<api::Object<api::PeerAuthenticationSpec>> = files
            .iter()
            .map(|f| serde_yaml::from_str(&std::fs::read_to_string(format!("{SAMPLES}{f}")).unwrap()).unwrap())
            .collect();
        let refs: Vec<_> = objs.iter().collect();
        PeerAuthTable::compile(&refs).0
    }

    fn httpbin() -> Labels {
        [("app".to_string(), "httpbin".to_string())].into_iter().collect()
    }

    #[test]
    fn the_authn_task_precedence() {
        assert_eq!(PeerAuthTable::default().mode("foo", &httpbin(), 80), MtlsMode::Permissive);
        let mesh = load(&["01-mesh-strict.yaml"]);
        assert_eq!(mesh.mode("foo", &httpbin(), 80), MtlsMode::Strict);
        assert_eq!(mesh.mode("legacy", &httpbin(), 80), MtlsMode::Strict);
        let foo = load(&["02-namespace-foo-strict.yaml"]);
        assert_eq!(foo.mode("foo", &httpbin(), 80), MtlsMode::Strict);
        assert_eq!(foo.mode("bar", &httpbin(), 80), MtlsMode::Permissive);
        let bar = load(&["02-namespace-foo-strict.yaml", "03-bar-httpbin-strict.yaml"]);
        assert_eq!(bar.mode("bar", &httpbin(), 80), MtlsMode::Strict);
        let port = load(&["02-namespace-foo-strict.yaml", "05-bar-httpbin-strict-port80-disable.yaml"]);
        assert_eq!(port.mode("bar", &httpbin(), 80), MtlsMode::Disable, "port level first");
        assert_eq!(port.mode("bar", &httpbin(), 8080), MtlsMode::Strict);
        // What `describe` prints: the workload's mode, and the ports with one of their own.
        assert_eq!(port.workload_mode("bar", &httpbin()), MtlsMode::Strict);
        assert_eq!(port.port_modes("bar", &httpbin()), [(80, MtlsMode::Disable)]);
        let over = load(&["02-namespace-foo-strict.yaml", "07-foo-overwrite-example-pa.yaml"]);
        assert_eq!(over.mode("foo", &httpbin(), 80), MtlsMode::Disable, "workload beats namespace");
    }

    #[test]
    fn the_policies_that_apply_are_listed_mesh_first_as_istioctl_describe_lists_them() {
        let all = load(&["01-mesh-strict.yaml", "02-namespace-foo-strict.yaml", "07-foo-overwrite-example-pa.yaml"]);
        assert_eq!(all.applied("foo", &httpbin()), ["default.istio-system", "default.foo", "overwrite-example.foo"]);
        assert_eq!(all.applied("bar", &httpbin()), ["default.istio-system"]);
        let other: Labels = [("app".to_string(), "sleep".to_string())].into_iter().collect();
        assert_eq!(all.applied("foo", &other), ["default.istio-system", "default.foo"], "the selector picks");
        assert_eq!(all.applied("istio-system", &other), ["default.istio-system"], "listed once");
        assert!(PeerAuthTable::default().applied("foo", &httpbin()).is_empty());
        // Every policy that selects the workload, by name in its namespace.
        let extra: api::Object<api::PeerAuthenticationSpec> = serde_yaml::from_str(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a-strict, namespace: foo}\nspec: {selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}\n",
        )
        .unwrap();
        let objs: Vec<api::Object<api::PeerAuthenticationSpec>> =
            ["01-mesh-strict.yaml", "07-foo-overwrite-example-pa.yaml", "02-namespace-foo-strict.yaml"]
                .iter()
                .map(|f| serde_yaml::from_str(&std::fs::read_to_string(format!("{SAMPLES}{f}")).unwrap()).unwrap())
                .chain([extra])
                .collect();
        let both = PeerAuthTable::compile(&objs.iter().collect::<Vec<_>>()).0;
        assert_eq!(
            both.applied("foo", &httpbin()),
            ["default.istio-system", "a-strict.foo", "default.foo", "overwrite-example.foo"]
        );
    }
}
