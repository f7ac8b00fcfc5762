//! Configuration: serde mirrors of the Istio and Kubernetes kinds, folder
//! loading with located errors, the built-in sample set, and the watcher.

pub mod api;
pub mod gateway_api;
pub mod load;
pub mod model;
pub mod watch;

use std::collections::{HashMap, HashSet};

pub use load::{ConfigError, Located, Origin};

use api::Resource;

/// The built-in sample set: Bookinfo with its per-version Services (the Gateway API routes'
/// backends), httpbin, the fortio client and Bookinfo's gateway.
const BUILTIN: [(&str, &str); 5] = [
    ("builtin/bookinfo.yaml", include_str!("../../builtin/bookinfo.yaml")),
    ("builtin/bookinfo-versions.yaml", include_str!("../../builtin/bookinfo-versions.yaml")),
    ("builtin/httpbin.yaml", include_str!("../../builtin/httpbin.yaml")),
    ("builtin/fortio-deploy.yaml", include_str!("../../builtin/fortio-deploy.yaml")),
    ("builtin/bookinfo-gateway.yaml", include_str!("../../builtin/bookinfo-gateway.yaml")),
];

/// `Kind ns/name` of a resource: what identifies it for overrides and change reports.
pub fn resource_key(r: &Resource) -> String {
    let m = r.metadata();
    format!("{} {}/{}", r.kind(), m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or(""))
}

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

/// Adds the built-in set under `folder` when the folder has no workloads; the folder's
/// resources override built-in ones of the same kind and name. Returns whether it did.
pub fn with_builtin(folder: load::Loaded) -> (load::Loaded, bool) {
    let has_workloads = folder.resources.iter().any(|r| matches!(r.resource, Resource::Deployment(_)));
    if has_workloads {
        return (folder, false);
    }
    let own: HashSet<String> = folder.resources.iter().map(|r| resource_key(&r.resource)).collect();
    let mut merged = builtin();
    merged.resources.retain(|r| !own.contains(&resource_key(&r.resource)));
    merged.resources.extend(folder.resources);
    merged.not_emulated.extend(folder.not_emulated);
    merged.replaced.extend(folder.replaced);
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
