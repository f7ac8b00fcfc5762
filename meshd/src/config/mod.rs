//! Configuration: serde mirrors of the Istio and Kubernetes kinds, folder
//! loading with located errors, the built-in sample set, and the watcher.

pub mod api;
pub mod load;
pub mod model;
pub mod translate_gateway_api;
pub mod watch;

use std::collections::{HashMap, HashSet};

pub use load::{ConfigError, Located, Origin};

/// The Kubernetes cluster domain meshd emulates.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// A Service's name within the cluster: `name.namespace.svc.cluster.local`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.{CLUSTER_DOMAIN}")
}

use api::Resource;

/// The built-in sample set: Bookinfo with its per-version Services (the Gateway API routes'
/// backends), httpbin, the fortio client and Bookinfo's gateway.
const BUILTIN: [(&str, &str); 5] = [
    ("builtin/bookinfo.yaml", include_str!("../../builtin/bookinfo.yaml")),
    ("builtin/bookinfo-versions.yaml", include_str!("../../builtin/bookinfo-versions.yaml")),
    ("builtin/httpbin.yaml", include_str!("../../builtin/httpbin.yaml")),
    ("builtin/fortio-deploy.yaml", include_str!("../../builtin/fortio-deploy.yaml")),
    (BUILTIN_INGRESS, include_str!("../../builtin/bookinfo-gateway.yaml")),
];

/// `Kind ns/name` of a resource: what identifies it for overrides and change reports.
pub fn resource_key(r: &Resource) -> String {
    let m = r.metadata();
    // Istio's and the Gateway API's Gateways are two kinds that share a name, as in kubectl.
    let kind = match r {
        Resource::K8sGateway(_) => "Gateway.gateway.networking.k8s.io",
        _ => r.kind(),
    };
    format!("{kind} {}/{}", m.ns(), m.name())
}

/// The built-in ingress for Bookinfo: its Gateway and VirtualService.
pub const BUILTIN_INGRESS: &str = "builtin/bookinfo-gateway.yaml";

/// The built-in resources.
pub fn builtin() -> load::Loaded {
    let mut loaded = load::Loaded::default();
    let mut errors = Vec::new();
    for (file, text) in BUILTIN {
        load::parse_text(file, text, &mut loaded, &mut errors);
    }
    debug_assert!(errors.is_empty(), "built-in samples must parse: {errors:?}");
    loaded
}

/// The built-in resources a folder's own are run with: none when the folder declares a
/// workload, else the built-in set, less its ingress when the folder brings an ingress of its
/// own (the Gateway API tabs' Bookinfo has no Istio Gateway, and the built-in one would serve
/// beside the folder's). `meshd up` and `meshd analyze` both start from this.
pub fn builtin_for<'r>(own: impl Iterator<Item = &'r Resource> + Clone) -> Vec<Located> {
    if own.clone().any(|r| matches!(r, Resource::Deployment(_))) {
        return Vec::new();
    }
    let own_ingress = own.into_iter().any(is_ingress);
    let mut set = builtin().resources;
    set.retain(|r| !(own_ingress && r.origin.file == BUILTIN_INGRESS));
    set
}

/// Whether a resource is an ingress: a Gateway API Gateway of Istio's class, or an Istio
/// Gateway that selects the ingress gateway.
fn is_ingress(r: &Resource) -> bool {
    const INGRESS: [(&str, &str); 2] = [("istio", "ingressgateway"), ("app", "istio-ingressgateway")];
    match r {
        Resource::K8sGateway(g) => g.spec.gateway_class_name == "istio",
        Resource::Gateway(g) => g.spec.selector.iter().all(|(k, v)| INGRESS.contains(&(k.as_str(), v.as_str()))),
        _ => false,
    }
}

/// Adds the built-in set under `folder` when the folder has no workloads ([`builtin_for`]); the
/// folder's resources override built-in ones of the same kind and name. Returns whether it did.
pub fn with_builtin(folder: load::Loaded) -> (load::Loaded, bool) {
    let mut resources = builtin_for(folder.resources.iter().map(|r| &r.resource));
    if resources.is_empty() {
        return (folder, false);
    }
    let own: HashSet<String> = folder.resources.iter().map(|r| resource_key(&r.resource)).collect();
    resources.retain(|r| !own.contains(&resource_key(&r.resource)));
    resources.extend(folder.resources);
    let merged = load::Loaded { resources, not_emulated: folder.not_emulated, replaced: folder.replaced };
    (merged, true)
}

/// What changed between two configs, as `+ Kind ns/name`, `- ...` and `~ ...` lines.
pub fn diff(old: &[Located], new: &[Located]) -> Vec<String> {
    let fingerprint = |l: &[Located]| -> HashMap<String, String> {
        l.iter().map(|r| (resource_key(&r.resource), format!("{:?}", r.resource))).collect()
    };
    let (a, b) = (fingerprint(old), fingerprint(new));
    let mut out = Vec::new();
    for (k, v) in &b {
        match a.get(k) {
            None => out.push(format!("+ {k}")),
            Some(old) if old != v => out.push(format!("~ {k}")),
            _ => {}
        }
    }
    for k in a.keys() {
        if !b.contains_key(k) {
            out.push(format!("- {k}"));
        }
    }
    out.sort_by(|x, y| x[2..].cmp(&y[2..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(text: &str) -> load::Loaded {
        let (mut loaded, mut errors) = (load::Loaded::default(), Vec::new());
        load::parse_text("folder.yaml", text, &mut loaded, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        loaded
    }

    fn keys(l: &load::Loaded) -> Vec<String> {
        l.resources.iter().map(|r| resource_key(&r.resource)).collect()
    }

    const K8S_GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\nspec: {gatewayClassName: istio}\n";
    const ISTIO_GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\nspec: {selector: {istio: ingressgateway}}\n";

    #[test]
    fn the_two_gateway_kinds_of_one_name_are_two_resources() {
        let both = folder(&format!("{K8S_GATEWAY}---\n{ISTIO_GATEWAY}"));
        let mut l = both.clone();
        l.resources.extend(both.resources);
        l.keep_last();
        assert_eq!(
            keys(&l),
            ["Gateway.gateway.networking.k8s.io default/bookinfo-gateway", "Gateway default/bookinfo-gateway"]
        );
    }

    #[test]
    fn a_folder_with_its_own_gateway_replaces_the_built_in_ingress() {
        let plain = with_builtin(folder("apiVersion: v1\nkind: Namespace\nmetadata: {name: foo}\n")).0;
        assert!(keys(&plain).contains(&"VirtualService default/bookinfo".to_string()));
        let other_class = K8S_GATEWAY.replace("gatewayClassName: istio", "gatewayClassName: other");
        let egress = ISTIO_GATEWAY.replace("istio: ingressgateway", "istio: egressgateway");
        for not_ingress in [other_class, egress] {
            let k = keys(&with_builtin(folder(&not_ingress)).0);
            assert!(k.contains(&"VirtualService default/bookinfo".to_string()), "{not_ingress}: {k:?}");
        }
        for own in [K8S_GATEWAY, ISTIO_GATEWAY] {
            let (merged, used) = with_builtin(folder(own));
            assert!(used);
            let k = keys(&merged);
            assert!(!k.contains(&"VirtualService default/bookinfo".to_string()), "{k:?}");
            assert_eq!(k.iter().filter(|k| k.contains("bookinfo-gateway")).count(), 1, "the folder's own: {k:?}");
            assert!(k.contains(&"Deployment default/reviews-v1".to_string()), "the apps stay");
        }
    }
}
