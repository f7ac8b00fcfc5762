//! demo-app: runs one demo app standalone on 127.0.0.1, e.g.
//! `demo-app reviews-v2 --port 9082 --proxy 127.0.0.1:15001`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;

use demo_apps::{image_env, serve, AppEnv, AppKind, LogSink};

const USAGE: &str = "usage: demo-app <productpage|details|reviews-v1|reviews-v2|reviews-v3|ratings|httpbin|tcp-echo> [--port N] [--proxy HOST:PORT] [PREFIX]

  --port N           port to listen on, on 127.0.0.1 (default: 9080 for Bookinfo, 8080 httpbin, 9000 tcp-echo)
  --proxy HOST:PORT  send calls to other services through this HTTP proxy (a meshd sidecar)
  PREFIX             tcp-echo only: reply prefix (default: hello)

The app reads its settings from the environment as the container would
(RATINGS_HOSTNAME, DETAILS_SERVICE_PORT, SERVICE_VERSION, STAR_COLOR, HOSTNAME, ...).";

struct Options {
    app: String,
    port: Option<u16>,
    proxy: Option<SocketAddr>,
    prefix: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut app = None;
    let mut port = None;
    let mut proxy = None;
    let mut prefix = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--port" => {
                let v = it.next().ok_or("--port needs a value")?;
                port = Some(v.parse::<u16>().map_err(|_| format!("bad port {v:?}"))?);
            }
            "--proxy" => {
                let v = it.next().ok_or("--proxy needs HOST:PORT")?;
                let addr = v
                    .to_socket_addrs()
                    .map_err(|e| format!("bad proxy {v:?}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("proxy {v:?} does not resolve"))?;
                proxy = Some(addr);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            word if app.is_none() => app = Some(word.to_string()),
            word if prefix.is_none() => prefix = Some(word.to_string()),
            word => return Err(format!("unexpected argument {word:?}")),
        }
    }
    Ok(Options { app: app.ok_or("missing app name")?, port, proxy, prefix })
}

/// The image each app name stands for, and its usual container port.
fn image_for(app: &str) -> Option<(&'static str, u16)> {
    Some(match app {
        "productpage" => ("examples-bookinfo-productpage-v1", 9080),
        "details" => ("examples-bookinfo-details-v1", 9080),
        "reviews-v1" => ("examples-bookinfo-reviews-v1", 9080),
        "reviews-v2" => ("examples-bookinfo-reviews-v2", 9080),
        "reviews-v3" => ("examples-bookinfo-reviews-v3", 9080),
        "ratings" => ("examples-bookinfo-ratings-v1", 9080),
        "httpbin" => ("mccutchen/go-httpbin", 8080),
        "tcp-echo" => ("tcp-echo-server", 9000),
        _ => return None,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("demo-app: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let Some((image, default_port)) = image_for(&opts.app) else {
        eprintln!("demo-app: unknown app {:?}\n{USAGE}", opts.app);
        return ExitCode::from(2);
    };
    let Some(kind) = AppKind::from_image(image) else {
        eprintln!("demo-app: no app for image {image}");
        return ExitCode::from(2);
    };
    let port = opts.port.unwrap_or(default_port);

    // Image defaults first, then the process environment, as a Deployment's env overrides them.
    let mut env: HashMap<String, String> = image_env(image);
    env.extend(std::env::vars());
    let hostname = env.get("HOSTNAME").cloned().unwrap_or_else(|| format!("{}-standalone", opts.app));
    let container_args = match kind {
        AppKind::TcpEcho => vec![port.to_string(), opts.prefix.clone().unwrap_or_else(|| "hello".to_string())],
        _ => Vec::new(),
    };
    let log: LogSink = Arc::new(|line: &str| println!("{line}"));
    let app_env = AppEnv { kind, hostname, env, args: container_args, outbound_proxy: opts.proxy, log };

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-app: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("demo-app: {} ({}) listening on 127.0.0.1:{}", opts.app, kind.name(), listener.local_addr()?.port());
        tokio::select! {
            r = serve(app_env, port, listener) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}
