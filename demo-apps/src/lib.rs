//! Demo apps that stand in for the images of Istio's samples: Bookinfo (productpage, details,
//! reviews, ratings), httpbin, a fortio server, curl/sleep clients and tcp-echo.
//!
//! Each app reproduces the observable behaviour of the original (routes, JSON shapes, HTML
//! strings, timeouts, retries, header propagation) as written down in
//! `shared/reference/istio-behaviour.md` section 2.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

mod details;
mod fortio;
mod httpbin;
mod json;
mod productpage;
mod ratings;
mod reviews;
mod sleep;
mod tcp_echo;
mod util;

pub use util::Civil;

#[cfg(test)]
mod testutil;

/// Which built-in app an image runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppKind {
    /// Bookinfo productpage (Python/Flask).
    ProductPage,
    /// Bookinfo details (Ruby).
    Details,
    /// Bookinfo reviews (Java), v1/v2/v3 by env.
    Reviews,
    /// Bookinfo ratings (Node.js).
    Ratings,
    /// go-httpbin, or the older kennethreitz/httpbin.
    Httpbin,
    /// fortio's server side.
    Fortio,
    /// curl/sleep client pods: no server.
    Sleep,
    /// tcp-echo-server.
    TcpEcho,
}

/// Env key that [`image_env`] sets for the `kennethreitz/httpbin` image, so httpbin answers in
/// that older flavour (string header values, gunicorn access log).
pub const HTTPBIN_FLAVOR_ENV: &str = "MESHD_HTTPBIN_FLAVOR";

/// Image path split into registry-less components with tag and digest removed.
fn repo_components(image: &str) -> Vec<&str> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let mut parts: Vec<&str> = no_digest.split('/').filter(|p| !p.is_empty()).collect();
    // A tag can only follow the last slash; a colon before it belongs to a registry port.
    if let Some(last) = parts.last_mut() {
        *last = last.split(':').next().unwrap_or(last);
    }
    // The first component is a registry when it looks like a host (docker's own rule).
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    parts
}

/// Parses `examples-bookinfo-<service>-<version>` into (service, version).
fn bookinfo_image(last: &str) -> Option<(&str, &str)> {
    let rest = last.strip_prefix("examples-bookinfo-")?;
    let (service, version) = rest.split_once('-')?;
    let known = matches!(
        (service, version),
        ("productpage", "v1") | ("details", "v1" | "v2") | ("reviews", "v1" | "v2" | "v3") | ("ratings", "v1" | "v2")
    );
    known.then_some((service, version))
}

impl AppKind {
    /// Maps a container image to an app by its repository name, ignoring registry and tag.
    /// None for unknown images.
    pub fn from_image(image: &str) -> Option<AppKind> {
        let parts = repo_components(image);
        let last = *parts.last()?;
        let owner = parts.len().checked_sub(2).map(|i| parts[i]);
        if let Some((service, _)) = bookinfo_image(last) {
            return match service {
                "productpage" => Some(AppKind::ProductPage),
                "details" => Some(AppKind::Details),
                "reviews" => Some(AppKind::Reviews),
                _ => Some(AppKind::Ratings),
            };
        }
        match (owner, last) {
            (_, "go-httpbin") | (Some("kennethreitz"), "httpbin") => Some(AppKind::Httpbin),
            (Some("fortio"), "fortio") => Some(AppKind::Fortio),
            (_, "curl" | "sleep") => Some(AppKind::Sleep),
            (_, "tcp-echo-server") => Some(AppKind::TcpEcho),
            _ => None,
        }
    }

    /// Short lowercase name (`productpage`, `tcp-echo`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AppKind::ProductPage => "productpage",
            AppKind::Details => "details",
            AppKind::Reviews => "reviews",
            AppKind::Ratings => "ratings",
            AppKind::Httpbin => "httpbin",
            AppKind::Fortio => "fortio",
            AppKind::Sleep => "sleep",
            AppKind::TcpEcho => "tcp-echo",
        }
    }
}

/// Env the image itself implies (baked into the original Dockerfiles); Deployment env overrides it.
///
/// reviews v1 → `ENABLE_RATINGS=false`; v2 → `ENABLE_RATINGS=true, STAR_COLOR=black`;
/// v3 → `ENABLE_RATINGS=true, STAR_COLOR=red`; ratings → `SERVICE_VERSION=v1|v2`;
/// details v2 → `ENABLE_EXTERNAL_BOOK_SERVICE=true`; kennethreitz/httpbin →
/// [`HTTPBIN_FLAVOR_ENV`]`=kennethreitz`.
pub fn image_env(image: &str) -> HashMap<String, String> {
    let parts = repo_components(image);
    let last = parts.last().copied().unwrap_or_default();
    let owner = parts.len().checked_sub(2).map(|i| parts[i]);
    let pairs: &[(&str, &str)] = match bookinfo_image(last) {
        Some(("reviews", "v1")) => &[("ENABLE_RATINGS", "false")],
        Some(("reviews", "v2")) => &[("ENABLE_RATINGS", "true"), ("STAR_COLOR", "black")],
        Some(("reviews", "v3")) => &[("ENABLE_RATINGS", "true"), ("STAR_COLOR", "red")],
        Some(("ratings", "v1")) => &[("SERVICE_VERSION", "v1")],
        Some(("ratings", "v2")) => &[("SERVICE_VERSION", "v2")],
        Some(("details", "v2")) => &[("ENABLE_EXTERNAL_BOOK_SERVICE", "true")],
        _ if owner == Some("kennethreitz") && last == "httpbin" => &[(HTTPBIN_FLAVOR_ENV, "kennethreitz")],
        _ => &[],
    };
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Where app log lines go (httpbin access log, startup lines, ...).
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What a running app instance gets from the pod that runs it.
#[derive(Clone)]
pub struct AppEnv {
    /// Which app to run.
    pub kind: AppKind,
    /// Pod name; the app sees it as HOSTNAME (reviews puts it in `podname`).
    pub hostname: String,
    /// Container env (from the Deployment) plus defaults implied by the image ([`image_env`]).
    pub env: HashMap<String, String>,
    /// Container args (tcp-echo: `["9000,9001,9002", "one"]`).
    pub args: Vec<String>,
    /// The pod's sidecar outbound address; every call the app makes to another service goes
    /// through it as an HTTP proxy. None = call directly (standalone use).
    pub outbound_proxy: Option<SocketAddr>,
    /// Where app log lines go.
    pub log: LogSink,
}

impl std::fmt::Debug for AppEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppEnv")
            .field("kind", &self.kind)
            .field("hostname", &self.hostname)
            .field("env", &self.env)
            .field("args", &self.args)
            .field("outbound_proxy", &self.outbound_proxy)
            .finish_non_exhaustive()
    }
}

impl AppEnv {
    fn log(&self, line: &str) {
        (self.log)(line);
    }
}

/// Serves the app on `listener` (HTTP/1.1 with keep-alive) until the future is dropped; TcpEcho
/// serves raw TCP and Sleep serves nothing. `container_port` is the container port this
/// listener stands for (tcp-echo listens on several; httpbin 8080, or 80 for kennethreitz;
/// bookinfo 9080).
pub async fn serve(env: AppEnv, container_port: u16, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    match env.kind {
        AppKind::ProductPage => {
            let router = productpage::router(&env, productpage::Timing::default())?;
            env.log(&format!(
                "[{} +0000] [1] [INFO] Listening at: http://[::]:{container_port} (1)",
                util::Civil::now().ymd_hms()
            ));
            util::serve_router(router, listener).await
        }
        AppKind::Details => {
            let router = details::router(&env);
            env.log(&format!(
                "[{}] INFO  WEBrick::HTTPServer#start: pid=1 port={container_port}",
                util::Civil::now().ymd_hms()
            ));
            util::serve_router(router, listener).await
        }
        AppKind::Reviews => {
            let router = reviews::router(&env, reviews::Timing::default())?;
            env.log("[AUDIT   ] CWWKF0011I: The defaultServer server is ready to run a smarter planet.");
            util::serve_router(router, listener).await
        }
        AppKind::Ratings => {
            let router = ratings::router(&env, ratings::Timing::default());
            env.log(&format!("Server listening on: http://0.0.0.0:{container_port}"));
            util::serve_router(router, listener).await
        }
        AppKind::Httpbin => {
            let flavor = httpbin::Flavor::of(&env, container_port);
            let router = httpbin::router(&env, flavor);
            httpbin::log_startup(&env, flavor, container_port);
            util::serve_router(router, listener).await
        }
        AppKind::Fortio => {
            let router = fortio::router(&env);
            env.log(&format!("Fortio {} echo server listening on tcp [::]:{container_port}", fortio::VERSION));
            util::serve_router(router, listener).await
        }
        AppKind::Sleep => sleep::serve(listener).await,
        AppKind::TcpEcho => tcp_echo::serve(env, container_port, listener).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_to_apps() {
        let cases = [
            ("registry.istio.io/release/examples-bookinfo-productpage-v1:1.20.3", Some(AppKind::ProductPage)),
            ("registry.istio.io/release/examples-bookinfo-details-v2:1.20.3", Some(AppKind::Details)),
            ("docker.io/istio/examples-bookinfo-reviews-v3", Some(AppKind::Reviews)),
            ("examples-bookinfo-ratings-v2:1.0@sha256:abc", Some(AppKind::Ratings)),
            ("examples-bookinfo-ratings-v9", None),
            ("docker.io/mccutchen/go-httpbin:v2.15.0", Some(AppKind::Httpbin)),
            ("docker.io/kennethreitz/httpbin", Some(AppKind::Httpbin)),
            ("someone/httpbin", None),
            ("docker.io/fortio/fortio:latest_release", Some(AppKind::Fortio)),
            ("docker.io/curlimages/curl:8.16.0", Some(AppKind::Sleep)),
            ("curl", Some(AppKind::Sleep)),
            ("localhost:5000/sleep", Some(AppKind::Sleep)),
            ("registry.istio.io/release/tcp-echo-server:1.3", Some(AppKind::TcpEcho)),
            ("nginx:latest", None),
            ("", None),
        ];
        for (image, want) in cases {
            assert_eq!(AppKind::from_image(image), want, "{image}");
        }
        assert_eq!(AppKind::TcpEcho.name(), "tcp-echo");
        assert_eq!(AppKind::ProductPage.name(), "productpage");
    }

    #[test]
    fn images_imply_env() {
        let get = |image: &str| {
            let mut v: Vec<(String, String)> = image_env(image).into_iter().collect();
            v.sort();
            v
        };
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(
            get("registry.istio.io/release/examples-bookinfo-reviews-v1:1.20.3"),
            pairs(&[("ENABLE_RATINGS", "false")])
        );
        assert_eq!(get("examples-bookinfo-reviews-v2"), pairs(&[("ENABLE_RATINGS", "true"), ("STAR_COLOR", "black")]));
        assert_eq!(get("examples-bookinfo-reviews-v3:1"), pairs(&[("ENABLE_RATINGS", "true"), ("STAR_COLOR", "red")]));
        assert_eq!(get("examples-bookinfo-ratings-v1"), pairs(&[("SERVICE_VERSION", "v1")]));
        assert_eq!(get("examples-bookinfo-ratings-v2:1.20.3"), pairs(&[("SERVICE_VERSION", "v2")]));
        assert_eq!(get("docker.io/kennethreitz/httpbin"), pairs(&[(HTTPBIN_FLAVOR_ENV, "kennethreitz")]));
        assert!(get("docker.io/mccutchen/go-httpbin:v2.15.0").is_empty());
        assert!(get("examples-bookinfo-productpage-v1").is_empty());
    }
}
