//! Pods: turns Deployments into running replicas, each a demo app behind
//! its own inbound and outbound sidecar listeners, and keeps them in step
//! with the config (replicas up and down, template changes roll pods).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::model::{DeploymentDef, Workloads};
use crate::proxy::{Proxy, Role};
use crate::snapshot::{Labels, PodInfo, TargetPort, Workload};

/// Kubernetes' alphabet for generated name parts (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// How long a removed pod keeps serving requests already in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// The demo apps stand for other containers: they run on their own threads so that a busy app
/// never delays a proxy and each side's CPU can be told apart (threads `meshd-app` and
/// `meshd-proxy`). `MESHD_APP_THREADS` sets how many; the default is one per core.
fn apps() -> &'static tokio::runtime::Runtime {
    static APPS: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    APPS.get_or_init(|| {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = std::env::var("MESHD_APP_THREADS").ok().and_then(|v| v.parse().ok()) {
            b.worker_threads(n);
        }
        b.thread_name("meshd-app").enable_all().build().expect("the demo apps' runtime starts")
    })
}

/// Binds an app's listener on the apps' runtime, so the app's I/O never wakes a proxy's thread.
fn bind_app() -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    l.set_nonblocking(true)?;
    let _apps = apps().enter();
    TcpListener::from_std(l)
}

/// A pod the config asks for.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// `ns/deployment`.
    pub key: String,
    /// The Deployment.
    pub deployment: DeploymentDef,
    /// Hash of the template, as Kubernetes' pod-template-hash.
    pub hash: String,
    /// Container ports to open: declared ones plus Service targetPorts that select the pod.
    pub ports: Vec<(Option<String>, u16)>,
    /// Whether the pod gets a sidecar (Istio's injection rules).
    pub sidecar: bool,
    /// Container ports that Services expose as TCP.
    pub tcp_ports: std::collections::BTreeSet<u16>,
}

/// Istio's injection decision: the pod's `sidecar.istio.io/inject` first, then the namespace's
/// `istio-injection` label. A namespace the folder does not declare counts as labelled for
/// injection, as every tutorial's first step does for `default`.
fn injected(d: &DeploymentDef, namespaces: &std::collections::BTreeMap<String, Labels>) -> bool {
    let explicit = d.annotations.get("sidecar.istio.io/inject").or_else(|| d.labels.get("sidecar.istio.io/inject"));
    match explicit.map(String::as_str) {
        Some("false") => return false,
        Some("true") => return true,
        _ => {}
    }
    match namespaces.get(&d.meta.namespace) {
        None => true,
        Some(labels) => match labels.get("istio-injection").map(String::as_str) {
            Some("enabled") => true,
            Some(_) => false,
            None => labels.contains_key("istio.io/rev"),
        },
    }
}

fn name_part(mut n: u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            let c = NAME_ALPHABET[(n % NAME_ALPHABET.len() as u64) as usize] as char;
            n /= NAME_ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The pods every Deployment asks for.
pub fn plan(workloads: &Workloads) -> Vec<PodTemplate> {
    workloads
        .deployments
        .iter()
        .map(|d| {
            let mut ports: Vec<(Option<String>, u16)> =
                d.containers.iter().flat_map(|c| c.ports.iter().cloned()).collect();
            let mut tcp_ports = std::collections::BTreeSet::new();
            for svc in &workloads.services {
                let selects = svc.meta.namespace == d.meta.namespace
                    && !svc.selector.is_empty()
                    && crate::snapshot::selects(&svc.selector, &d.labels);
                if !selects {
                    continue;
                }
                for p in &svc.ports {
                    let n = match &p.target_port {
                        TargetPort::Number(n) => Some(*n),
                        TargetPort::Name(name) => {
                            ports.iter().find(|(pn, _)| pn.as_deref() == Some(name)).map(|(_, n)| *n)
                        }
                    };
                    if let (true, Some(n)) = (p.tcp, n) {
                        tcp_ports.insert(n);
                    }
                    if let TargetPort::Number(n) = p.target_port {
                        if !ports.iter().any(|(_, q)| *q == n) {
                            ports.push((None, n));
                        }
                    }
                }
            }
            ports.sort_by_key(|p| p.1);
            let mut h = DefaultHasher::new();
            d.containers.hash(&mut h);
            d.labels.hash(&mut h);
            d.service_account.hash(&mut h);
            ports.hash(&mut h);
            let sidecar = injected(d, &workloads.namespaces);
            sidecar.hash(&mut h);
            PodTemplate {
                key: format!("{}/{}", d.meta.namespace, d.meta.name),
                deployment: d.clone(),
                hash: name_part(h.finish(), 10),
                ports,
                sidecar,
                tcp_ports,
            }
        })
        .collect()
}

/// A running pod.
#[derive(Debug)]
pub struct Pod {
    /// Addresses and identity, as the snapshot sees them.
    pub info: PodInfo,
    /// Template hash it was made from.
    pub hash: String,
    /// Demo apps it runs (names), empty for an unknown image.
    pub apps: Vec<String>,
    /// When it started.
    pub started: SystemTime,
    /// Where its apps listen, by container port (behind the inbound sidecar).
    pub app_addrs: BTreeMap<u16, std::net::SocketAddr>,
    /// Its emulated condition (`meshd pod stop|fail|start`).
    pub control: Arc<crate::proxy::PodControl>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pod {
    /// The pod as a calling workload.
    pub fn workload(&self) -> Workload {
        Workload {
            name: self.info.name.clone(),
            namespace: self.info.namespace.clone(),
            labels: self.info.labels.clone(),
            service_account: self.info.service_account.clone(),
            deployment: self.info.workload.clone(),
        }
    }

    /// Stops accepting now; aborts whatever is still running after the drain period.
    fn stop(self) {
        let _ = self.shutdown.send(true);
        let tasks = self.tasks;
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN).await;
            for t in tasks {
                t.abort();
            }
        });
    }
}

async fn bind() -> std::io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", 0)).await
}

/// Starts one replica of `template`.
async fn start_pod(template: &PodTemplate, proxy: &Proxy, log: &crate::logs::Logs) -> std::io::Result<Pod> {
    let d = &template.deployment;
    let name = format!("{}-{}-{}", d.meta.name, template.hash, name_part(fastrand::u64(..), 5));
    let info = PodInfo {
        name: name.clone(),
        namespace: d.meta.namespace.clone(),
        labels: d.labels.clone(),
        service_account: d.service_account.clone(),
        workload: d.meta.name.clone(),
        container_ports: template.ports.clone(),
        inbound: BTreeMap::new(),
        outbound: None,
        sidecar: template.sidecar,
    };
    let (shutdown, rx) = watch::channel(false);
    let mut pod = Pod {
        info,
        hash: template.hash.clone(),
        apps: vec![],
        started: SystemTime::now(),
        control: Arc::default(),
        app_addrs: BTreeMap::new(),
        shutdown,
        tasks: vec![],
    };
    let workload = Arc::new(pod.workload());

    let outbound = bind().await?;
    pod.info.outbound = Some(outbound.local_addr()?);
    // Without a sidecar the app still reaches services by name, as through kube-proxy: no mesh policy, plaintext.
    let rt = if template.sidecar { proxy.registry().get(&workload) } else { proxy.registry().get_plain(&workload) };
    let role = if template.sidecar {
        Role::Outbound { workload: workload.clone(), rt: rt.clone() }
    } else {
        Role::Plain { workload: workload.clone(), rt: rt.clone() }
    };
    pod.tasks.push(tokio::spawn(proxy.clone().serve(outbound, role, rx.clone())));

    let sink = log.sink(&name);
    let spiffe = crate::security::ca::spiffe_id(&d.meta.namespace, &d.service_account);
    let server_tls = proxy.registry().security().and_then(|sec| match sec.server_config(&spiffe) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(%spiffe, error = %e, "cannot issue a workload certificate: plaintext only");
            None
        }
    });
    for container in &d.containers {
        let Some(kind) = demo_apps::AppKind::from_image(&container.image) else {
            tracing::warn!(pod = %name, image = %container.image, "image not emulated: the pod runs without this container");
            continue;
        };
        pod.apps.push(kind.name().to_string());
        let mut env: HashMap<String, String> = demo_apps::image_env(&container.image);
        env.extend(container.env.iter().cloned());
        let app_env = demo_apps::AppEnv {
            kind,
            hostname: name.clone(),
            env,
            args: container.args.clone(),
            outbound_proxy: pod.info.outbound,
            log: sink.clone(),
        };
        // Every container port of the pod gets the app behind an inbound listener; a pod of one
        // container (all samples) owns all of the template's ports.
        let ports: Vec<u16> = if d.containers.len() == 1 {
            template.ports.iter().map(|p| p.1).collect()
        } else {
            container.ports.iter().map(|p| p.1).collect()
        };
        if ports.is_empty() {
            // A client such as sleep: it runs, but serves nothing.
            let env = app_env.clone();
            let listener = bind_app()?;
            pod.tasks.push(apps().spawn(async move {
                let _ = demo_apps::serve(env, 0, listener).await;
            }));
        }
        for port in ports {
            let app_listener = bind_app()?;
            let app_addr = app_listener.local_addr()?;
            pod.app_addrs.insert(port, app_addr);
            let env = app_env.clone();
            let pod_name = name.clone();
            pod.tasks.push(apps().spawn(async move {
                if let Err(e) = demo_apps::serve(env, port, app_listener).await {
                    tracing::warn!(pod = %pod_name, error = %e, "app stopped");
                }
            }));
            if !template.sidecar {
                pod.info.inbound.insert(port, app_addr);
                continue;
            }
            let inbound = bind().await?;
            pod.info.inbound.insert(port, inbound.local_addr()?);
            let tcp = template.tcp_ports.contains(&port);
            let role = Role::inbound(app_addr, port, pod.control.clone(), rt.clone(), server_tls.clone(), tcp);
            pod.tasks.push(tokio::spawn(proxy.clone().serve(inbound, role, rx.clone())));
        }
    }
    Ok(pod)
}

/// Every running pod, by Deployment.
#[derive(Debug, Default)]
pub struct Pods {
    by_deployment: BTreeMap<String, Vec<Pod>>,
}

/// What a reconcile did.
#[derive(Debug, Default)]
pub struct PodChanges {
    /// Names of pods started.
    pub started: Vec<String>,
    /// Pods to stop once the new snapshot is in.
    pub retired: Vec<Pod>,
}

impl Pods {
    /// Starts the pods `plan` asks for that are not running; returns the ones to retire.
    /// Nothing is stopped here: the caller swaps the snapshot first, then retires.
    pub async fn reconcile(
        &mut self,
        plan: &[PodTemplate],
        proxy: &Proxy,
        log: &crate::logs::Logs,
    ) -> std::io::Result<PodChanges> {
        let mut changes = PodChanges::default();
        let wanted: HashMap<&str, &PodTemplate> = plan.iter().map(|t| (t.key.as_str(), t)).collect();
        let keys: Vec<String> = self.by_deployment.keys().cloned().collect();
        for key in keys {
            let template = wanted.get(key.as_str());
            let pods = self.by_deployment.entry(key.clone()).or_default();
            let mut keep = Vec::new();
            for pod in pods.drain(..) {
                match template {
                    Some(t) if t.hash == pod.hash && keep.len() < t.deployment.replicas as usize => keep.push(pod),
                    _ => changes.retired.push(pod),
                }
            }
            *pods = keep;
        }
        for t in plan {
            let pods = self.by_deployment.entry(t.key.clone()).or_default();
            while pods.len() < t.deployment.replicas as usize {
                let pod = start_pod(t, proxy, log).await?;
                changes.started.push(pod.info.name.clone());
                pods.push(pod);
            }
        }
        self.by_deployment.retain(|_, v| !v.is_empty());
        Ok(changes)
    }

    /// Stops retired pods (after the snapshot that drops them is live).
    pub fn retire(pods: Vec<Pod>) {
        for p in pods {
            p.stop();
        }
    }

    /// Every running pod.
    pub fn iter(&self) -> impl Iterator<Item = &Pod> {
        self.by_deployment.values().flatten()
    }

    /// Snapshot view of every running pod.
    pub fn infos(&self) -> Vec<PodInfo> {
        self.iter().map(|p| p.info.clone()).collect()
    }
}

/// Labels of a pod template, for tests and status.
pub fn labels_string(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_use_the_kubernetes_alphabet() {
        let part = name_part(0xdead_beef_1234, 10);
        assert_eq!(part.len(), 10);
        assert!(part.bytes().all(|b| NAME_ALPHABET.contains(&b)));
        assert_ne!(name_part(1, 5), name_part(2, 5));
    }
}
