//! `meshd up`: binds the listeners, loads the folder, starts the pods,
//! compiles and swaps snapshots, and reloads on every settled change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, ConfigError, Located};
use crate::logs::Logs;
use crate::proxy::runtime::Registry;
use crate::proxy::{Proxy, Role};
use crate::snapshot::{self, SnapshotHandle, Workload};
use crate::workload::{self, Pods};

/// Where `meshd up` listens.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config folder.
    pub dir: PathBuf,
    /// Ingress gateway HTTP listener (Gateway servers on 80/8080).
    pub gateway: SocketAddr,
    /// Ingress gateway HTTPS listener (Gateway servers on 443/8443).
    pub gateway_tls: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
    /// The mesh client's outbound listener, usable as `http_proxy`.
    pub proxy: SocketAddr,
    /// Lifetime of workload certificates (rotated at half).
    pub cert_ttl: std::time::Duration,
    /// Access-log printing and encoding, and where spans are exported.
    pub telemetry: crate::telemetry::Options,
    /// The data plane's worker threads.
    pub workers: usize,
}

/// A pod as `meshd status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PodRow {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `2/2` (app and sidecar).
    pub ready: String,
    /// `Running`.
    pub status: String,
    /// Seconds since start.
    pub age_secs: u64,
    /// Container ports and the inbound listeners in front of them, `9080->127.0.0.1:40123`.
    pub ports: Vec<String>,
    /// Outbound listener.
    pub outbound: Option<String>,
    /// Pod labels, `k=v,...`.
    pub labels: String,
    /// Where the apps listen, `9080->127.0.0.1:40111` (behind the sidecar; for benchmarks).
    #[serde(default)]
    pub apps: Vec<String>,
}

/// Daemon state the admin API reads.
#[derive(Debug)]
pub struct State {
    /// The live snapshot.
    pub snapshot: SnapshotHandle,
    /// Addresses actually bound.
    pub addrs: Addrs,
    /// Config folder.
    pub dir: PathBuf,
    /// Errors of the last reload (empty when it applied).
    pub errors: Mutex<Vec<String>>,
    /// Pod table, refreshed on each reload.
    pub pods: Mutex<Vec<PodRow>>,
    /// App logs.
    pub logs: Logs,
    /// Every proxy's runtime state (pools, circuit breakers, outlier detection, stats).
    pub registry: Arc<Registry>,
    /// Pod conditions by pod name, for `meshd pod`.
    pub controls: Mutex<std::collections::HashMap<String, Arc<crate::proxy::PodControl>>>,
    /// Metrics, traces and the access-log task.
    pub telemetry: crate::telemetry::Telemetry,
    /// Rate samples for the dashboard's graph.
    pub graph: crate::telemetry::graph::Graph,
    /// The folder's last analysis.
    pub analysis: Mutex<Analysis>,
}

/// Bound addresses.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Addrs {
    /// Gateway.
    pub gateway: SocketAddr,
    /// Gateway, HTTPS.
    pub gateway_tls: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// Mesh client proxy.
    pub proxy: SocketAddr,
}

/// The ingress gateway workload, as Istio's `istio-ingressgateway` deployment.
/// Name of the ingress gateway's proxy (as its pod would be named).
pub const GATEWAY_NAME: &str = "istio-ingressgateway";

/// The gateway as a workload.
pub fn gateway_workload() -> Workload {
    let labels = [("app", "istio-ingressgateway"), ("istio", "ingressgateway")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Workload {
        name: GATEWAY_NAME.into(),
        namespace: snapshot::ROOT_NAMESPACE.into(),
        labels,
        service_account: "istio-ingressgateway-service-account".into(),
        deployment: GATEWAY_NAME.into(),
    }
}

struct Reloader {
    state: Arc<State>,
    proxy: Proxy,
    pods: Pods,
    generation: u64,
    applied: Vec<Located>,
    /// Notes already printed (not-emulated kinds, replaced resources): each is listed once.
    listed: std::collections::HashSet<String>,
    /// A jwksUri could not be fetched before the mesh was up: reload once more after start.
    retry_jwks: bool,
    /// The gateway's TCP listeners, by Gateway server port.
    tcp_listeners: std::collections::BTreeMap<u16, (SocketAddr, watch::Sender<bool>)>,
    /// Bind TCP servers on ephemeral ports (when the gateway itself is on port 0: tests).
    tcp_ephemeral: bool,
    /// Analyses started (each reload starts one).
    analyses: u64,
}

impl Reloader {
    /// Loads the folder and applies it; on any error the live snapshot stays.
    async fn reload(&mut self) -> Result<Vec<String>, Vec<ConfigError>> {
        let folder = config::load::load_dir(&self.state.dir)?;
        let (loaded, used_builtin) = config::with_builtin(folder);
        if used_builtin && self.generation == 0 {
            let ingress = if loaded.resources.iter().any(|r| r.origin.file == config::BUILTIN_INGRESS) {
                "bookinfo-gateway"
            } else {
                "the folder's own gateway"
            };
            println!(
                "meshd: no workloads in {}: running the built-in sample set (Bookinfo, httpbin, fortio) behind {ingress}",
                self.state.dir.display()
            );
        }
        for r in &loaded.replaced {
            if self.listed.insert(r.clone()) {
                println!("meshd: {r}");
            }
        }
        let workloads = config::model::Workloads::from_resources(&loaded.resources)?;
        let jwks = self.fetch_jwks(&loaded.resources).await;
        // Validate everything before touching a pod: an invalid folder changes nothing.
        let infos = self.pods.infos();
        snapshot::compile(snapshot::CompileInput {
            resources: &loaded.resources,
            workloads: &workloads,
            pods: &infos,
            generation: self.generation,
            not_emulated: &loaded.not_emulated,
            base: Some(&self.state.dir),
            jwks: &jwks,
        })?;
        let plan = workload::plan(&workloads);
        let changes = self.pods.reconcile(&plan, &self.proxy, &self.state.logs).await.map_err(|e| {
            vec![ConfigError {
                file: self.state.dir.display().to_string(),
                line: 0,
                field: String::new(),
                message: format!("cannot start pods: {e}"),
            }]
        })?;
        let generation = self.generation + 1;
        let infos = self.pods.infos();
        let snap = snapshot::compile(snapshot::CompileInput {
            resources: &loaded.resources,
            workloads: &workloads,
            pods: &infos,
            generation,
            not_emulated: &loaded.not_emulated,
            base: Some(&self.state.dir),
            jwks: &jwks,
        })?;
        for w in &snap.warnings {
            if self.listed.insert(w.clone()) {
                println!("meshd: warning: {w}");
            }
        }
        for line in &snap.not_emulated {
            if self.listed.insert(line.clone()) {
                println!("meshd: not emulated, ignored: {line}");
            }
        }
        self.state.snapshot.store(snap);
        self.generation = generation;
        let mut summary = config::diff(&self.applied, &loaded.resources);
        summary.extend(changes.started.iter().map(|p| format!("+ Pod {p}")));
        summary.extend(changes.retired.iter().map(|p| format!("- Pod {}", p.info.name)));
        Pods::retire(changes.retired);
        self.sync_tcp_listeners().await;
        let mut live: std::collections::HashSet<String> = self.pods.iter().map(|p| p.info.name.clone()).collect();
        live.insert(GATEWAY_NAME.to_string());
        live.insert(snapshot::MESH_CLIENT.to_string());
        self.proxy.registry().retain(&live);
        self.state.logs.retain(&live);
        self.applied = loaded.resources;
        *self.state.pods.lock().unwrap_or_else(|e| e.into_inner()) = self.pod_rows();
        *self.state.controls.lock().unwrap_or_else(|e| e.into_inner()) =
            self.pods.iter().map(|p| (p.info.name.clone(), p.control.clone())).collect();
        Ok(summary)
    }

    /// Fetches `jwksUri` documents served over HTTP, from inside the mesh (through the
    /// mesh client's sidecar), as istiod fetches them for the proxies.
    async fn fetch_jwks(&mut self, resources: &[Located]) -> std::collections::HashMap<String, Result<String, String>> {
        let ras: Vec<_> = resources
            .iter()
            .filter_map(|r| match &r.resource {
                config::api::Resource::RequestAuthentication(ra) => Some(ra),
                _ => None,
            })
            .collect();
        let mut out = std::collections::HashMap::new();
        for uri in crate::security::jwt::jwks_uris(&ras) {
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                continue; // a file: the compiler reads it
            }
            let fetched = async {
                let client = reqwest::Client::builder()
                    .proxy(
                        reqwest::Proxy::http(format!("http://{}", self.state.addrs.proxy))
                            .map_err(|e| e.to_string())?,
                    )
                    .timeout(std::time::Duration::from_secs(2))
                    .build()
                    .map_err(|e| e.to_string())?;
                let resp = client.get(&uri).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status()));
                }
                resp.text().await.map_err(|e| e.to_string())
            }
            .await
            .map_err(|e| format!("jwksUri {uri}: {e}"));
            if fetched.is_err() && self.generation == 0 {
                // The mesh that serves it may not be up yet: try again once it is.
                self.retry_jwks = true;
            }
            out.insert(uri, fetched);
        }
        out
    }

    /// Opens a listener for every TCP server of the gateway (on its own port, as the ingress
    /// Service maps 31400 to 31400), and closes the ones no Gateway names any more.
    async fn sync_tcp_listeners(&mut self) {
        let snap = self.state.snapshot.load();
        let wanted: std::collections::BTreeSet<u16> = snap.tcp_servers.iter().map(|s| s.port).collect();
        self.tcp_listeners.retain(|port, (_, stop)| {
            let keep = wanted.contains(port);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for port in wanted {
            if self.tcp_listeners.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], if self.tcp_ephemeral { 0 } else { port }));
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    let local = l.local_addr().unwrap_or(addr);
                    let (stop, rx) = watch::channel(false);
                    let role = Role::GatewayTcp { rt: self.proxy.registry().get(&gateway_workload()), port };
                    tokio::spawn(self.proxy.clone().serve(l, role, rx));
                    println!("meshd: gateway tcp {port} listening on {local}");
                    self.tcp_listeners.insert(port, (local, stop));
                }
                Err(e) => eprintln!("meshd: error: cannot listen on {addr} for the gateway's TCP server {port}: {e}"),
            }
        }
    }

    fn pod_rows(&self) -> Vec<PodRow> {
        self.pods
            .iter()
            .map(|p| PodRow {
                namespace: p.info.namespace.clone(),
                name: p.info.name.clone(),
                ready: match (p.info.sidecar, p.apps.is_empty()) {
                    (true, false) => "2/2".into(),
                    (true, true) => "1/2".into(),
                    (false, false) => "1/1".into(),
                    (false, true) => "0/1".into(),
                },
                status: "Running".into(),
                age_secs: p.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                ports: p.info.inbound.iter().map(|(port, addr)| format!("{port}->{addr}")).collect(),
                outbound: p.info.outbound.map(|a| a.to_string()),
                labels: workload::labels_string(&p.info.labels),
                apps: p.app_addrs.iter().map(|(port, addr)| format!("{port}->{addr}")).collect(),
            })
            .collect()
    }

    async fn reload_and_report(&mut self) {
        let started = Instant::now();
        match self.reload().await {
            Ok(summary) => {
                self.state.errors.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let what = if self.generation == 1 {
                    let snap = self.state.snapshot.load();
                    format!("{} resources, {} pods", snap.resources.len(), snap.pods.len())
                } else if summary.is_empty() {
                    "no changes".to_string()
                } else {
                    summary.join(", ")
                };
                println!(
                    "meshd: generation {} applied in {} ms: {what}",
                    self.generation,
                    started.elapsed().as_millis()
                );
            }
            Err(errors) => {
                let lines: Vec<String> = errors.into_iter().map(|e| at_field_line(e).to_string()).collect();
                for l in &lines {
                    eprintln!("meshd: error: {l}");
                }
                if self.generation > 0 {
                    eprintln!("meshd: config rejected; still serving generation {}", self.generation);
                } else {
                    eprintln!("meshd: config rejected; nothing is served until the folder is valid");
                }
                *self.state.errors.lock().unwrap_or_else(|e| e.into_inner()) = lines;
            }
        }
        self.analyze();
    }

    /// Runs `meshd analyze` on the folder off the reload path; prints the messages that are new.
    fn analyze(&mut self) {
        self.analyses += 1;
        let (seq, generation, state) = (self.analyses, self.generation, self.state.clone());
        tokio::task::spawn_blocking(move || {
            let report = crate::analyze::analyze_dir(&state.dir);
            let mut current = state.analysis.lock().unwrap_or_else(|e| e.into_inner());
            if current.seq > seq {
                return; // a later edit's analysis already landed
            }
            for m in report.messages.iter().filter(|m| !current.report.messages.contains(m)) {
                println!("meshd: analyze: {m}");
            }
            *current = Analysis { seq, generation, report };
        });
    }
}

/// The last `meshd analyze` of the folder.
#[derive(Debug, Default)]
pub struct Analysis {
    /// Which reload it belongs to (newer wins).
    pub seq: u64,
    /// The generation served when it ran.
    pub generation: u64,
    /// The messages.
    pub report: crate::analyze::Report,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for the {what}"))
}

/// Runs the daemon until ctrl-c.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let dir = opts.dir.canonicalize().with_context(|| format!("cannot open {}", opts.dir.display()))?;
    let gateway = bind(opts.gateway, "ingress gateway").await?;
    let gateway_tls = bind(opts.gateway_tls, "ingress gateway (HTTPS)").await?;
    let admin = bind(opts.admin, "admin API").await?;
    let client = bind(opts.proxy, "mesh client proxy").await?;
    let addrs = Addrs {
        gateway: gateway.local_addr()?,
        gateway_tls: gateway_tls.local_addr()?,
        admin: admin.local_addr()?,
        proxy: client.local_addr()?,
    };
    // The root CA lives in the folder's state directory, so `curl --cacert DIR/.meshd/ca.pem` keeps working.
    let state_dir = dir.join(".meshd");
    let ca = crate::security::ca::Ca::load_or_create(&state_dir)
        .with_context(|| format!("cannot set up the CA in {}", state_dir.display()))?;
    let security = Arc::new(crate::security::tls::Security::new(ca, opts.cert_ttl));
    {
        let security = security.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(security.rotation_period()).await;
                let n = security.rotate();
                if n > 0 {
                    tracing::info!(rotated = n, "workload certificates rotated");
                }
            }
        });
    }
    let snapshot = SnapshotHandle::default();
    let logs = Logs::default();
    let state = Arc::new(State {
        snapshot: snapshot.clone(),
        addrs,
        dir: dir.clone(),
        errors: Mutex::new(vec![]),
        pods: Mutex::new(vec![]),
        logs: logs.clone(),
        registry: Arc::new(Registry::new(Some(security.clone()))),
        controls: Mutex::default(),
        telemetry: crate::telemetry::Telemetry::start(logs.clone(), opts.telemetry.clone()),
        graph: Default::default(),
        analysis: Mutex::default(),
    });
    let telemetry = state.telemetry.clone();
    let workers = crate::workers::Workers::start(opts.workers, move || telemetry.start_local())
        .context("cannot start the worker threads")?;
    let proxy = Proxy::new(snapshot.clone(), state.registry.clone())
        .with_telemetry(state.telemetry.clone())
        .with_workers(Arc::new(workers));
    let sampled = state.clone();
    tokio::spawn(async move {
        // The dashboard's rates are differences of these samples.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            sampled.graph.sample(&sampled.telemetry.metrics);
        }
    });
    let (_shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(proxy.clone().serve(
        gateway,
        Role::Gateway { workload: Arc::new(gateway_workload()), rt: state.registry.get(&gateway_workload()) },
        shutdown.clone(),
    ));
    tokio::spawn(proxy.clone().serve(
        gateway_tls,
        Role::GatewayTls { workload: Arc::new(gateway_workload()), rt: state.registry.get(&gateway_workload()) },
        shutdown.clone(),
    ));
    tokio::spawn(proxy.clone().serve(client, Role::MeshClient { cache: Default::default() }, shutdown.clone()));
    tokio::spawn(crate::admin::serve(admin, state.clone()));

    let (_watch, mut changes) =
        config::watch::watch(&dir).with_context(|| format!("cannot watch {}", dir.display()))?;
    let mut reloader = Reloader {
        state: state.clone(),
        proxy,
        pods: Pods::default(),
        generation: 0,
        applied: vec![],
        listed: Default::default(),
        retry_jwks: false,
        tcp_listeners: Default::default(),
        tcp_ephemeral: opts.gateway.port() == 0,
        analyses: 0,
    };
    reloader.reload_and_report().await;
    if std::mem::take(&mut reloader.retry_jwks) {
        reloader.reload_and_report().await;
    }
    println!(
        "meshd: ready: gateway http://{} gateway-tls https://{} admin http://{} proxy http://{} (folder {})",
        addrs.gateway,
        addrs.gateway_tls,
        addrs.admin,
        addrs.proxy,
        display(&dir)
    );
    loop {
        tokio::select! {
            batch = changes.recv() => {
                let Some(batch) = batch else { break };
                let files: Vec<String> = batch.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                println!("meshd: change in {}: reloading", files.join(", "));
                reloader.reload_and_report().await;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("meshd: stopping");
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// An error that names its document's first line, moved to the line of the field it names (as
/// `meshd analyze` finds it), so that `meshd up` and `meshd analyze` point at the same line.
fn at_field_line(mut e: ConfigError) -> ConfigError {
    if e.field.is_empty() {
        return e;
    }
    let Ok(text) = std::fs::read_to_string(&e.file) else { return e };
    if let Some((start, doc)) = config::load::split_documents(&text).into_iter().find(|(start, _)| *start == e.line) {
        let path = crate::analyze::lines::FieldPath::parse(&e.field);
        e.line = start + crate::analyze::lines::field_line(doc, &path) - 1;
    }
    e
}
