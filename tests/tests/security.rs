//! mTLS between sidecars from the built-in CA, and PeerAuthentication, with
//! the task YAML: auto mTLS, STRICT resets plaintext, the CA survives restarts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Mesh, TempDir};

/// The inbound sidecar address of the first pod whose name starts with `prefix`.
fn inbound_of(mesh: &Mesh, prefix: &str) -> std::net::SocketAddr {
    let out = String::from_utf8(mesh.cli(&["status"]).stdout).unwrap();
    let line = out.lines().find(|l| l.split_whitespace().nth(1).is_some_and(|n| n.starts_with(prefix))).unwrap();
    let ports = line.split_whitespace().nth(5).unwrap();
    ports.split(',').next().unwrap().split("->").nth(1).unwrap().parse().unwrap()
}

/// Sends a plaintext request straight to an address; Err when the connection is reset or closed.
fn plaintext_get(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /ip HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without a response"));
    }
    Ok(out)
}

#[tokio::test]
async fn auto_mtls_between_sidecars_sets_xfcc() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("sleep/sleep.yaml");
    let mesh = Mesh::start(dir);
    let v: serde_json::Value =
        mesh.mesh_client().get("http://httpbin:8000/headers").send().await.unwrap().json().await.unwrap();
    let xfcc = v["headers"]["X-Forwarded-Client-Cert"][0].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/httpbin;Hash="), "{xfcc}");
    assert!(xfcc.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep"), "{xfcc}");
    // PERMISSIVE by default: a plaintext client still gets an answer, without XFCC.
    let plain = plaintext_get(inbound_of(&mesh, "httpbin-")).unwrap();
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");

    // Connections between sidecars are pooled: 20 requests, one mTLS handshake.
    for _ in 0..20 {
        assert_eq!(mesh.mesh_client().get("http://httpbin:8000/get").send().await.unwrap().status(), 200);
    }
    assert_eq!(mesh.httpbin_stat("upstream_cx_total").await, 1);
    assert_eq!(mesh.httpbin_stat("upstream_rq_total").await, 21);

    let out = mesh.cli(&["certs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spiffe://cluster.local/ns/default/sa/httpbin"), "{text}");
    assert!(text.contains("spiffe://cluster.local/ns/default/sa/sleep"), "{text}");
    assert!(!text.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn strict_mtls_resets_plaintext_and_bookinfo_still_serves() {
    let dir = TempDir::new();
    dir.add_sample("bookinfo/networking/destination-rule-all-mtls.yaml");
    dir.add_sample("istio.io-tasks/authn-policy/01-mesh-strict.yaml");
    let mesh = Mesh::start(dir);
    let page = mesh.page("/productpage").await;
    assert!(page.contains("<title>Simple Bookstore App</title>"));
    assert!(page.contains("Book Details") && page.contains("Reviews served by: reviews-v"), "the whole mesh over mTLS");
    for prefix in ["productpage-", "details-", "reviews-v1-", "ratings-", "httpbin-"] {
        let err = plaintext_get(inbound_of(&mesh, prefix)).expect_err("STRICT: plaintext is reset");
        assert!(
            matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof),
            "{prefix}: {err}"
        );
    }
    // A client that turns mTLS off toward a STRICT workload gets Envoy's reset answer.
    let mark = mesh.mark();
    mesh.dir.write(
        "dr-disable.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin}\nspec:\n  host: httpbin\n  trafficPolicy: {tls: {mode: DISABLE}}\n",
    );
    mesh.wait_applied(mark);
    let resp = mesh.mesh_client().get("http://httpbin:8000/ip").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("reset reason: connection termination") || body.contains("connection failure"), "{body}");
}

#[tokio::test]
async fn the_root_ca_is_kept_across_restarts() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    let path = dir.0.join(".meshd/ca.pem");
    let mesh = Mesh::start(dir);
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
    let again = Mesh::start(mesh.stop());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    drop(again);
}

#[tokio::test]
async fn certificates_rotate_under_traffic_without_a_failed_request() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("sleep/sleep.yaml");
    // One request per connection: every request makes a fresh mTLS handshake with the current certificates.
    dir.write(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin}\nspec:\n  host: httpbin\n  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}\n",
    );
    let mesh = Mesh::start_with(dir, &["--cert-ttl", "600ms"]);
    let client = mesh.mesh_client();
    // Requests flow until the certificates have rotated at least twice; the deadline only stops a hung run.
    let rotations = || mesh.output().iter().filter(|l| l.contains("workload certificates rotated")).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (before, mut n) = (rotations(), 0);
    while n <= 20 || rotations() < before + 2 {
        assert!(std::time::Instant::now() < deadline, "{n} requests, {} rotations", rotations());
        let resp = client.get("http://httpbin:8000/get").send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {n} failed during rotation");
        n += 1;
    }
}

#[tokio::test]
async fn h2_upgrade_multiplexes_requests_between_sidecars_over_one_connection() {
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.add_sample("sleep/sleep.yaml");
    dir.write(
        "dr-h2.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin}\nspec:\n  host: httpbin\n  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}\n",
    );
    let mesh = Mesh::start(dir);
    // Twenty requests in flight at once (each waits 300 ms at httpbin): over HTTP/1.1 each would
    // need a connection of its own.
    let client = mesh.mesh_client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let resp = client.get("http://httpbin:8000/delay/0.3").send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.json::<serde_json::Value>().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        let v = t.await.unwrap();
        // The app still gets an HTTP/1.1 request with its Host, and the hop stayed mTLS.
        assert_eq!(v["headers"]["Host"][0], "httpbin:8000", "{v}");
        let xfcc = v["headers"]["X-Forwarded-Client-Cert"][0].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/sleep"), "{xfcc}");
    }
    assert_eq!(mesh.httpbin_stat("upstream_rq_total").await, 20);
    assert_eq!(mesh.httpbin_stat("upstream_cx_total").await, 1, "one multiplexed connection");
    // The server sidecar saw HTTP/2 from its peer, as Envoy's inbound access log shows it.
    mesh.proxy_log_line("httpbin-", &["\"GET /delay/0.3 HTTP/2\" 200"]);

    // Without the policy the mesh default applies again: HTTP/1.1 between the sidecars.
    let mark = mesh.mark();
    mesh.dir.remove("dr-h2.yaml");
    mesh.wait_applied(mark);
    assert_eq!(client.get("http://httpbin:8000/get").send().await.unwrap().status(), 200);
    mesh.proxy_log_line("httpbin-", &["\"GET /get HTTP/1.1\" 200"]);
}
