//! The command line: `meshd up`, and the verbs that talk to a running daemon
//! through its admin API (`curl`, `status`, `logs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::daemon::{Addrs, PodRow};

/// meshd: an Istio-style service mesh on one machine.
#[derive(Debug, Parser)]
#[command(name = "meshd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mesh from a folder of Istio and Kubernetes YAML (an empty folder runs the built-in samples).
    Up {
        /// The folder to read and watch.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Ingress gateway HTTP listener (Gateway servers on port 80 or 8080).
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway: SocketAddr,
        /// Ingress gateway HTTPS listener (Gateway servers on port 443 or 8443).
        #[arg(long, default_value = "127.0.0.1:8443")]
        gateway_tls: SocketAddr,
        /// Admin API and dashboard.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
        /// Outbound listener of the mesh client workload, usable as `http_proxy`.
        #[arg(long, default_value = "127.0.0.1:15001")]
        proxy: SocketAddr,
        /// Print every proxy's access log (Istio's default text format) to stdout too.
        #[arg(long)]
        access_log: bool,
        /// Access-log encoding: TEXT (Istio's default) or JSON (`meshConfig.accessLogEncoding`).
        #[arg(long, default_value = "TEXT", value_parser = ["TEXT", "JSON", "text", "json"])]
        access_log_encoding: String,
        /// Export spans to this OpenTelemetry collector (OTLP/HTTP), e.g. http://127.0.0.1:4318.
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
        /// Lifetime of workload certificates; they rotate at half of it (Istio: 24h).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        cert_ttl: std::time::Duration,
    },
    /// The workload certificates issued so far, and where the root CA is.
    Certs {
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// Send a request from inside the mesh, through the client workload's sidecar.
    Curl {
        /// URL, e.g. http://reviews:9080/reviews/0.
        url: String,
        /// Extra header `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Method.
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        /// Request body.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// Send from this pod (as `kubectl exec POD -- curl`); default: the mesh client.
        #[arg(long)]
        from: Option<String>,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// fortio-style load from inside the mesh (`fortio load` flags, single dash works: `-c 3 -qps 0 -n 20`).
    Load {
        /// fortio's flags and the URL.
        #[command(flatten)]
        args: Box<crate::load::LoadArgs>,
        /// Send to this address instead of the mesh client's sidecar (benchmarks: any HTTP server).
        #[arg(long)]
        via: Option<SocketAddr>,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// Explain every decision the mesh takes for a request: rules tried, destination, policies, mTLS, authorization.
    Explain {
        /// URL, e.g. http://reviews:9080/reviews/0 (or a path such as /productpage with `--from istio-ingressgateway`).
        url: String,
        /// Extra header `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Method.
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        /// The calling pod or workload (`productpage-v1`), or `istio-ingressgateway`; default: the mesh client.
        #[arg(long, default_value = "")]
        from: String,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// Check a folder of Istio YAML as `istioctl analyze` does (offline; exit 79 on errors).
    Analyze {
        /// The folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// A proxy's configuration, as `istioctl proxy-config routes|clusters|endpoints|listeners POD`.
    ProxyConfig {
        /// routes, clusters, endpoints or listeners (singular works too).
        what: String,
        /// Pod name (or its prefix), or `istio-ingressgateway`.
        pod: String,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// Every proxy's sync state, as `istioctl proxy-status`.
    ProxyStatus {
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// A pod's services, DestinationRules, VirtualServices and mTLS, as `istioctl x describe pod`.
    Describe {
        /// Pod name (or its prefix).
        pod: String,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// List the pods, like `kubectl get pods -A -o wide`.
    Status {
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// Make a pod misbehave on purpose: `stop` (connections refused), `fail` (every request 503), `start` (healthy again).
    Pod {
        /// stop, fail or start.
        action: String,
        /// Pod name (as `meshd status` shows it).
        pod: String,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
    /// Print a pod's app log, or its sidecar's access log with `-c istio-proxy`.
    Logs {
        /// Pod name (as `meshd status` shows it; `istio-ingressgateway` for the gateway).
        pod: String,
        /// Container: the app (default) or `istio-proxy`.
        #[arg(short = 'c', long = "container")]
        container: Option<String>,
        /// Admin API of the running daemon.
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHD_ADMIN")]
        admin: SocketAddr,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<crate::config::api::Duration>().map(|d| d.0).map_err(|e| e.to_string())
}

/// One issued certificate, as the admin API lists it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CertRow {
    /// SPIFFE identity.
    pub identity: String,
    /// Seconds since the epoch.
    pub not_before: u64,
    /// Seconds since the epoch.
    pub not_after: u64,
}

/// What `/meshd/certs` answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CertsView {
    /// Path of the root certificate.
    pub root: String,
    /// Issued workload certificates.
    pub certs: Vec<CertRow>,
}

/// `meshd certs`.
pub async fn certs(admin: SocketAddr) -> anyhow::Result<()> {
    let view: CertsView = admin_get(admin, "/meshd/certs").await?;
    println!("root CA: {}", view.root);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let rows: Vec<[String; 3]> = view
        .certs
        .into_iter()
        .map(|c| [c.identity, age(now.saturating_sub(c.not_before)), age(c.not_after.saturating_sub(now))])
        .collect();
    print!("{}", table(&["IDENTITY", "AGE", "EXPIRES IN"], &rows));
    Ok(())
}

fn admin_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

async fn admin_get<T: serde::de::DeserializeOwned>(admin: SocketAddr, path: &str) -> anyhow::Result<T> {
    let url = format!("http://{admin}{path}");
    let resp = admin_client()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("no meshd daemon answers on {admin} (start one with `meshd up`)"))?;
    Ok(resp.error_for_status()?.json().await?)
}

/// `meshd curl`: `fortio curl` output: status and headers on stderr, body on stdout.
pub async fn curl(
    url: &str,
    headers: &[String],
    method: &str,
    data: Option<String>,
    from: Option<&str>,
    admin: SocketAddr,
) -> anyhow::Result<i32> {
    let mut addrs: Addrs = admin_get(admin, "/meshd/info").await?;
    if let Some(pod) = from {
        let pods: Vec<PodRow> = admin_get(admin, "/meshd/pods").await?;
        let Some(row) = pods.iter().find(|p| p.name == pod) else {
            bail!("pod {pod:?} not found (see `meshd status`)")
        };
        let Some(out) = row.outbound.as_deref().and_then(|a| a.parse().ok()) else {
            bail!("pod {pod} has no outbound listener")
        };
        addrs.proxy = out;
    }
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let status =
        crate::load::curl(url, headers, method, data.as_deref().map(str::as_bytes), addrs.proxy, &mut out, &mut err)
            .await?;
    Ok(if (200..300).contains(&status) { 0 } else { 1 })
}

/// `meshd load`: fortio's load test through the mesh client's sidecar.
pub async fn load(args: &crate::load::LoadArgs, via: Option<SocketAddr>, admin: SocketAddr) -> anyhow::Result<i32> {
    let target = match via {
        Some(v) => v,
        None => admin_get::<Addrs>(admin, "/meshd/info").await?.proxy,
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    match crate::load::run(args, target, &mut out, &mut err).await {
        Ok(_) => Ok(0),
        // run() has already said why (fortio's "Aborting because of ...").
        Err(_) => Ok(1),
    }
}

/// `meshd explain`: prints the numbered decisions; exit 1 when the daemon refuses the request.
pub async fn explain(
    url: &str,
    headers: &[String],
    method: &str,
    from: &str,
    admin: SocketAddr,
) -> anyhow::Result<i32> {
    let mut map = std::collections::BTreeMap::new();
    for h in headers {
        let Some((k, v)) = h.split_once(':') else { bail!("header {h:?} is not `name: value`") };
        map.insert(k.trim().to_string(), v.trim().to_string());
    }
    let req =
        crate::explain::ExplainRequest { method: method.into(), url: url.into(), headers: map, from: from.into() };
    let resp = admin_client()?
        .post(format!("http://{admin}/meshd/explain"))
        .json(&req)
        .send()
        .await
        .with_context(|| format!("no meshd daemon answers on {admin} (start one with `meshd up`)"))?;
    if !resp.status().is_success() {
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        eprintln!("meshd: {}", v["error"].as_str().unwrap_or("cannot explain"));
        return Ok(1);
    }
    let e: crate::explain::Explanation = resp.json().await?;
    print!("{}", e.text);
    Ok(0)
}

/// `meshd analyze DIR`: istioctl's output and exit code (79 when an Error was found).
pub fn analyze(dir: &std::path::Path) -> i32 {
    let report = crate::analyze::analyze_dir(dir);
    if report.messages.is_empty() {
        eprintln!("\u{2714} No validation issues found when analyzing {}.", dir.display());
        return 0;
    }
    print!("{report}");
    if report.has_errors() {
        eprintln!("Error: Analyzers found issues when analyzing {}.", dir.display());
        eprintln!(
            "See https://istio.io/docs/reference/config/analysis for more information about causes and resolutions."
        );
        return 79;
    }
    0
}

/// `meshd proxy-config WHAT POD`: istioctl's columns.
pub async fn proxy_config(what: &str, pod: &str, admin: SocketAddr) -> anyhow::Result<i32> {
    use crate::admin::proxy_config::ProxyConfig;
    let c: ProxyConfig = admin_get(admin, &format!("/meshd/proxy-config/{pod}")).await?;
    let text = match what.trim_end_matches('s') {
        "route" => {
            let rows: Vec<[String; 4]> =
                c.routes.into_iter().map(|r| [r.name, r.domains.join(", "), r.matches, r.virtual_service]).collect();
            table(&["NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"], &rows)
        }
        "cluster" => {
            let rows: Vec<[String; 6]> = c
                .clusters
                .into_iter()
                .map(|r| [r.fqdn, r.port, r.subset, r.direction, r.kind, r.destination_rule])
                .collect();
            table(&["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"], &rows)
        }
        "endpoint" => {
            let rows: Vec<[String; 4]> =
                c.endpoints.into_iter().map(|r| [r.endpoint, r.status, r.outlier_check, r.cluster]).collect();
            table(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], &rows)
        }
        "listener" => {
            let rows: Vec<[String; 3]> =
                c.listeners.into_iter().map(|r| [r.address, r.port.to_string(), r.kind]).collect();
            table(&["ADDRESS", "PORT", "TYPE"], &rows)
        }
        other => bail!("unknown proxy-config {other:?}: routes, clusters, endpoints or listeners"),
    };
    print!("{text}");
    Ok(0)
}

/// `meshd proxy-status`.
pub async fn proxy_status(admin: SocketAddr) -> anyhow::Result<()> {
    let rows: Vec<crate::admin::proxy_config::StatusRow> = admin_get(admin, "/meshd/proxy-status").await?;
    let rows: Vec<[String; 7]> = rows
        .into_iter()
        .map(|r| [r.proxy, r.sync.clone(), r.sync.clone(), r.sync.clone(), r.sync, r.pilot, r.version])
        .collect();
    print!("{}", table(&["PROXY", "CDS", "LDS", "EDS", "RDS", "PILOT", "VERSION"], &rows));
    Ok(())
}

/// Prints a text answer of the admin API: the body on stdout (exit 0), or on stderr as `meshd: ...` (exit 1).
async fn print_reply(resp: reqwest::Response) -> anyhow::Result<i32> {
    let ok = resp.status().is_success();
    let text = resp.text().await?;
    if ok {
        print!("{text}");
        Ok(0)
    } else {
        eprint!("meshd: {text}");
        Ok(1)
    }
}

/// `meshd describe POD`.
pub async fn describe(pod: &str, admin: SocketAddr) -> anyhow::Result<i32> {
    let resp = admin_client()?
        .get(format!("http://{admin}/meshd/describe/{pod}"))
        .send()
        .await
        .with_context(|| format!("no meshd daemon answers on {admin}"))?;
    print_reply(resp).await
}

/// `meshd status`.
pub async fn status(admin: SocketAddr) -> anyhow::Result<()> {
    let pods: Vec<PodRow> = admin_get(admin, "/meshd/pods").await?;
    let rows: Vec<[String; 7]> = pods
        .into_iter()
        .map(|p| {
            [
                p.namespace,
                p.name,
                p.ready,
                p.status,
                age(p.age_secs),
                p.ports.join(","),
                p.outbound.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!("{}", table(&["NAMESPACE", "NAME", "READY", "STATUS", "AGE", "PORTS", "OUTBOUND"], &rows));
    Ok(())
}

/// `meshd logs POD`.
pub async fn logs(pod: &str, container: Option<&str>, admin: SocketAddr) -> anyhow::Result<()> {
    let key = match container {
        Some("istio-proxy") => crate::logs::access_name(pod),
        _ => pod.to_string(),
    };
    let text = admin_client()?
        .get(format!("http://{admin}/meshd/logs/{}", key.replace('/', "%2F")))
        .send()
        .await
        .with_context(|| format!("no meshd daemon answers on {admin}"))?
        .text()
        .await?;
    print!("{text}");
    Ok(())
}

/// `meshd pod stop|fail|start POD`.
pub async fn pod(action: &str, pod: &str, admin: SocketAddr) -> anyhow::Result<i32> {
    let resp = admin_client()?
        .post(format!("http://{admin}/meshd/pods/{pod}/{action}"))
        .send()
        .await
        .with_context(|| format!("no meshd daemon answers on {admin}"))?;
    print_reply(resp).await
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// A kubectl-style table: columns padded to the widest cell plus three spaces.
pub fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_pads_columns() {
        let t = super::table(&["NAME", "READY"], &[["reviews-v1-abc".into(), "2/2".into()]]);
        assert_eq!(t, "NAME             READY\nreviews-v1-abc   2/2\n");
    }
}
