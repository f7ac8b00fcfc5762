//! Istio's secure-gateway task: HTTPS at the ingress gateway with a
//! certificate from a `kubernetes.io/tls` Secret, SIMPLE and MUTUAL, checked
//! with a client that verifies the chain; and `httpsRedirect`. The task's own
//! OpenSSL-made certificates (X.509 v1) with the task's own curl.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{Mesh, Pki, TempDir};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn secret(name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: istio-system\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        STANDARD.encode(cert),
        STANDARD.encode(key)
    );
    if let Some(ca) = ca {
        s.push_str(&format!("  ca.crt: {}\n", STANDARD.encode(ca)));
    }
    s
}

fn gateway(mode: &str, redirect: bool) -> String {
    let mut g = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: {mode}
      credentialName: httpbin-credential
    hosts:
    - httpbin.example.com
"#
    );
    if redirect {
        g.push_str("  - port:\n      number: 80\n      name: http\n      protocol: HTTP\n    tls:\n      httpsRedirect: true\n    hosts:\n    - httpbin.example.com\n");
    }
    g
}

const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"#;

/// GET https://httpbin.example.com{path} at the gateway's HTTPS port, trusting `ca_pem`: the status.
async fn https_get(mesh: &Mesh, ca_pem: &str, client: Option<(&str, &str)>, path: &str) -> Result<u16, String> {
    https_exchange(mesh, ca_pem, client, path, Some("httpbin.example.com")).await.map(|(status, _)| status)
}

/// The same, with the body, and the SNI given (None: the gateway's address, for which a client
/// sends no SNI).
async fn https_exchange(
    mesh: &Mesh,
    ca_pem: &str,
    client: Option<(&str, &str)>,
    path: &str,
    sni: Option<&str>,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(mesh.gateway_tls).await.map_err(|e| e.to_string())?;
    let name = match sni {
        Some(host) => ServerName::try_from(host.to_string()).unwrap(),
        None => ServerName::IpAddress(mesh.gateway_tls.ip().into()),
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", "httpbin.example.com").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned());
    Ok((status, body.unwrap_or_default()))
}

#[tokio::test]
async fn https_at_the_gateway_simple_mutual_and_redirect() {
    let pki = Pki::new("example Inc.");
    let (cert, key) = pki.leaf(&["httpbin.example.com"]);
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    dir.write("secret.yaml", &secret("httpbin-credential", &cert, &key, Some(&pki.ca_pem)));
    dir.write("gateway.yaml", &gateway("SIMPLE", true));
    dir.write("vs.yaml", VS);
    let mesh = Mesh::start(dir);

    assert_eq!(https_get(&mesh, &pki.ca_pem, None, "/status/418").await, Ok(418));
    assert_eq!(https_get(&mesh, &pki.ca_pem, None, "/headers").await, Ok(404), "no route for /headers");
    // The app learns it was reached over HTTPS (httpbin's /delay echoes the request).
    let (status, body) =
        https_exchange(&mesh, &pki.ca_pem, None, "/delay/0", Some("httpbin.example.com")).await.unwrap();
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["X-Forwarded-Proto"][0], "https", "{body}");
    // Without SNI no server for httpbin.example.com matches, as Envoy's filter chains on
    // server_names: the connection closes before any certificate is sent.
    let err = https_exchange(&mesh, &pki.ca_pem, None, "/status/200", None).await.unwrap_err();
    assert!(err.starts_with("handshake") && !err.contains("certificate"), "{err}");
    let stranger = Pki::new("someone else");
    let err = https_get(&mesh, &stranger.ca_pem, None, "/status/200").await.unwrap_err();
    assert!(err.starts_with("handshake"), "a chain from another CA is refused: {err}");

    // httpsRedirect on the HTTP server.
    let resp = mesh.client().get(mesh.url("/status/200")).header("host", "httpbin.example.com").send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "https://httpbin.example.com/status/200");
    // Envoy writes the Host as sent, port and all.
    let resp =
        mesh.client().get(mesh.url("/status/200")).header("host", "httpbin.example.com:80").send().await.unwrap();
    assert_eq!(resp.headers()["location"], "https://httpbin.example.com:80/status/200");

    // MUTUAL: the client must present a certificate from the Secret's CA.
    let mark = mesh.mark();
    mesh.dir.write("gateway.yaml", &gateway("MUTUAL", false));
    mesh.wait_applied(mark);
    assert!(https_get(&mesh, &pki.ca_pem, None, "/status/200").await.is_err(), "no client certificate");
    let (ccert, ckey) = pki.leaf(&["client.example.com"]);
    assert_eq!(https_get(&mesh, &pki.ca_pem, Some((&ccert, &ckey)), "/status/200").await, Ok(200));
}

/// A file of the secure-ingress task's own certificates (`tests/fixtures/secure-ingress`):
/// OpenSSL 3.0's output, whose leaves are X.509 v1, without extensions or subjectAltName.
fn task_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/secure-ingress").join(rel);
    assert!(p.exists(), "{} is missing", p.display());
    p.to_str().unwrap().to_string()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A Secret as `kubectl create secret generic NAME --from-file=KEY=FILE ...` makes it.
fn generic_secret(name: &str, files: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: istio-system\ntype: Opaque\ndata:\n"
    );
    for (key, file) in files {
        s.push_str(&format!("  {key}: {}\n", STANDARD.encode(read(file))));
    }
    s
}

/// The task's own request: `curl -v -HHost:httpbin.example.com --resolve ... --cacert CA
/// https://httpbin.example.com:PORT{path}` plus `extra`, with curl's OpenSSL verifying the
/// gateway's v1 certificate as the task's user's does. The status, or curl's exit code and error.
fn task_curl(mesh: &Mesh, ca: &str, extra: &[&str], path: &str) -> Result<u16, String> {
    let port = mesh.gateway_tls.port();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .arg("-HHost:httpbin.example.com")
        .arg("--resolve")
        .arg(format!("httpbin.example.com:{port}:{}", mesh.gateway_tls.ip()))
        .args(["--cacert", ca])
        .args(extra)
        .arg(format!("https://httpbin.example.com:{port}{path}"))
        .output()
        .expect("run curl (`apt-get install curl`; .ci/run does)");
    if !out.status.success() {
        return Err(format!("curl exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).parse().unwrap())
}

#[tokio::test]
async fn secure_ingress_task_v1_certificates_simple_and_mutual() {
    let ca = task_file("example_certs1/example.com.crt");
    let (cert, key) =
        (task_file("example_certs1/httpbin.example.com.crt"), task_file("example_certs1/httpbin.example.com.key"));
    let dir = TempDir::new();
    dir.add_sample("httpbin/httpbin.yaml");
    // kubectl create -n istio-system secret tls httpbin-credential --key=... --cert=...
    dir.write("secret.yaml", &secret("httpbin-credential", &read(&cert), &read(&key), None));
    dir.write("gateway.yaml", &gateway("SIMPLE", false));
    dir.write("vs.yaml", VS);
    let mesh = Mesh::start(dir);
    assert!(
        !mesh.output().iter().any(|l| l.contains("not served")),
        "the task's v1 certificate is served: {:?}",
        mesh.output()
    );

    assert_eq!(task_curl(&mesh, &ca, &[], "/status/418"), Ok(418));
    assert_eq!(task_curl(&mesh, &ca, &["--tls-max", "1.2"], "/status/418"), Ok(418), "TLS 1.2");
    let stranger = TempDir::new();
    stranger.write("ca.crt", &Pki::new("example Inc.").ca_pem);
    let stranger_ca = stranger.0.join("ca.crt");
    let err = task_curl(&mesh, stranger_ca.to_str().unwrap(), &[], "/status/418").unwrap_err();
    assert!(err.starts_with("curl exit Some(60)"), "another CA does not verify the gateway: {err}");

    // MUTUAL, as the task: the Secret recreated with ca.crt, then the Gateway changed.
    let mark = mesh.mark();
    mesh.dir.write(
        "secret.yaml",
        &generic_secret("httpbin-credential", &[("tls.key", &key), ("tls.crt", &cert), ("ca.crt", &ca)]),
    );
    mesh.wait_applied(mark);
    let mark = mesh.mark();
    mesh.dir.write("gateway.yaml", &gateway("MUTUAL", false));
    mesh.wait_applied(mark);
    assert!(
        !mesh.output()[mark..].iter().any(|l| l.contains("not served")),
        "the MUTUAL server is served: {:?}",
        &mesh.output()[mark..]
    );

    let client = [
        "--cert",
        &task_file("example_certs1/client.example.com.crt"),
        "--key",
        &task_file("example_certs1/client.example.com.key"),
    ];
    assert_eq!(task_curl(&mesh, &ca, &client, "/status/418"), Ok(418), "the task's v1 client certificate");
    let tls12: Vec<&str> = client.iter().copied().chain(["--tls-max", "1.2"]).collect();
    assert_eq!(task_curl(&mesh, &ca, &tls12, "/status/418"), Ok(418), "the task's v1 client certificate, TLS 1.2");

    let err = task_curl(&mesh, &ca, &[], "/status/418").unwrap_err();
    assert!(err.starts_with("curl exit"), "no client certificate: {err}");
    // v1, naming the task's CA as issuer, signed by the second CA of the same name.
    let forged = [
        "--cert",
        &task_file("example_certs2/client.example.com.crt"),
        "--key",
        &task_file("example_certs2/client.example.com.key"),
    ];
    let err = task_curl(&mesh, &ca, &forged, "/status/418").unwrap_err();
    assert!(err.starts_with("curl exit"), "a v1 client certificate of another CA: {err}");
    let err = task_curl(&mesh, &ca, &[&forged[..], &["--tls-max", "1.2"]].concat(), "/status/418").unwrap_err();
    assert!(err.starts_with("curl exit"), "a v1 client certificate of another CA, TLS 1.2: {err}");
    // v3, from an rcgen CA.
    let (ocert, okey) = Pki::new("someone else").leaf(&["client.example.com"]);
    stranger.write("client.crt", &ocert);
    stranger.write("client.key", &okey);
    let (ocert, okey) = (stranger.0.join("client.crt"), stranger.0.join("client.key"));
    let other = ["--cert", ocert.to_str().unwrap(), "--key", okey.to_str().unwrap()];
    let err = task_curl(&mesh, &ca, &other, "/status/418").unwrap_err();
    assert!(err.starts_with("curl exit"), "a v3 client certificate of another CA: {err}");
}
