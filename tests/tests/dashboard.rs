//! The dashboard in headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`): the graph of real Bookinfo traffic with rates and mTLS locks,
//! the trace list, and a screenshot that is a real, non-blank page.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mesh, TempDir};

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(path.exists(), "{} is missing: `apt-get install chromium` (.ci/run does)", path.display());
    path
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`) and returns stdout.
fn chrome(url: &str, mode: &str, profile: &Path) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_the_live_graph_and_lists_traces() {
    let mesh = Mesh::start(TempDir::new());
    for _ in 0..10 {
        mesh.page("/productpage").await;
    }
    // The rates are differences of once-a-second samples: let one sample pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..10 {
        mesh.page("/productpage").await;
    }
    let base = format!("http://{}/", mesh.admin);
    let profile = mesh.dir.0.join(".chromium");
    let dom = chrome(&base, "--dump-dom", &profile);
    for node in
        ["istio-system/istio-ingressgateway", "default/productpage-v1", "default/details-v1", "default/reviews-v1"]
    {
        assert!(dom.contains(&format!("data-id=\"{node}\"")), "no node {node} in\n{dom}");
    }
    assert!(
        dom.contains("data-source=\"istio-system/istio-ingressgateway\" data-target=\"default/productpage-v1\""),
        "no gateway -> productpage edge"
    );
    assert!(dom.contains("<g class=\"lock\""), "mTLS locks on the edges");
    assert!(dom.contains(" rps</text>") || dom.contains(" rps ·"), "edge labels with the rate");
    assert!(dom.contains("id=\"generation\">1<"), "the generation in the header");

    let traces = chrome(&format!("{base}#traces"), "--dump-dom", &profile);
    assert!(traces.matches("<tr class=\"trace").count() >= 10, "trace rows:\n{traces}");
    assert!(traces.contains("istio-ingressgateway GET /productpage"));

    // The explain form, submitted on load by the `#explain/run` hash, with its default request.
    let explain = chrome(&format!("{base}#explain/run"), "--dump-dom", &profile);
    assert!(explain.contains("<li data-stage=\"virtualservice\""), "explain steps:\n{explain}");
    assert!(explain.contains("outbound|9080||reviews.default.svc.cluster.local"));

    let shot = mesh.dir.0.join("graph.png");
    chrome(&base, &format!("--screenshot={}", shot.display()), &profile);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(png_size(&png), (1400, 900));
    // A blank page of this size compresses to a few KiB; the drawn graph does not.
    assert!(png.len() > 30_000, "screenshot looks blank: {} bytes", png.len());
    if let Ok(dir) = std::env::var("MESHD_SCREENSHOTS") {
        let _ = std::fs::copy(&shot, Path::new(&dir).join("dashboard-graph.png"));
    }
}
