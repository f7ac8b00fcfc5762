//! The `meshd` binary.
#![forbid(unsafe_code)]

use clap::Parser;
use meshd::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: the request path allocates and frees small objects on
/// every worker, and glibc's arenas spend a fifth of that path in malloc, consolidation and free.
/// Built with `no_thp`: transparent huge pages under its arenas would double the mesh's RSS.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // fortio's Go-style flags (`-qps 0`) are rewritten for clap after the `load` verb.
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("load") {
        let rest = argv.split_off(2);
        argv.extend(meshd::load::normalize_args(rest));
    }
    let cli = Cli::parse_from(argv);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG").unwrap_or_else(|_| "meshd=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // `MESHD_THREADS`: the data plane's worker threads (default one per core); benchmarks match
    // them with the reference proxy's workers.
    let threads = std::env::var("MESHD_THREADS").ok().and_then(|v| v.parse().ok());
    // `meshd up` runs its control plane (reloads, admin API, telemetry, accepting) on this thread
    // and the proxies on worker threads of their own; the other verbs are clients.
    let mut builder = match cli.command {
        Command::Up { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = threads {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Up {
                dir,
                gateway,
                gateway_tls,
                admin,
                proxy,
                access_log,
                access_log_encoding,
                otlp_endpoint,
                cert_ttl,
            } => {
                let telemetry = meshd::telemetry::Options {
                    print: access_log,
                    json: access_log_encoding.eq_ignore_ascii_case("json"),
                    otlp: otlp_endpoint,
                };
                let workers = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let opts =
                    meshd::daemon::Options { dir, gateway, gateway_tls, admin, proxy, cert_ttl, telemetry, workers };
                meshd::daemon::run(opts).await.map(|_| 0)
            }
            Command::Certs { admin } => meshd::cli::certs(admin).await.map(|_| 0),
            Command::Curl { url, headers, method, data, from, admin } => {
                meshd::cli::curl(&url, &headers, &method, data, from.as_deref(), admin).await
            }
            Command::Load { args, via, admin } => meshd::cli::load(&args, via, admin).await,
            Command::Explain { url, headers, method, from, admin } => {
                meshd::cli::explain(&url, &headers, &method, &from, admin).await
            }
            Command::ProxyConfig { what, pod, admin } => meshd::cli::proxy_config(&what, &pod, admin).await,
            Command::ProxyStatus { admin } => meshd::cli::proxy_status(admin).await.map(|_| 0),
            Command::Describe { pod, admin } => meshd::cli::describe(&pod, admin).await,
            Command::Analyze { dir } => Ok(meshd::cli::analyze(&dir)),
            Command::Status { admin } => meshd::cli::status(admin).await.map(|_| 0),
            Command::Pod { action, pod, admin } => meshd::cli::pod(&action, &pod, admin).await,
            Command::Logs { pod, container, admin } => {
                meshd::cli::logs(&pod, container.as_deref(), admin).await.map(|_| 0)
            }
        }
    });
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("meshd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
